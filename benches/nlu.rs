//! NLU speed on real weights: one message (what a turn waits for), batches (what an
//! evaluation run or a busy server pushes through), and example retrieval (the search over a
//! persona's embedded examples that step 7 runs once the message is encoded).
//!
//! Peers, measured in the same run: candle's `BertModel` on the same weights, run the way
//! Rapport ran it before its fused encoder (padded batch, attention mask, mean pooling); and,
//! for emotions, the head on the frozen encoder's six layers that the shipped fine-tuned
//! branch (one layer, tuned, where the sentence vectors run six) replaced.
//!
//! cargo bench --workspace --bench nlu
//! Needs `rapport models pull minilm-l6` and the trained head in datasets/emotion/.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rapport_benches::{classifier, frozen_feature_classifier, sample_messages};
use rapport_models::{preset, ModelCache, Puller};
use rapport_nlu::{ExampleIndex, Exchange};

/// candle's BERT with the tokenizer padding to the longest text, as the peer.
struct CandleBert {
    model: candle_transformers::models::bert::BertModel,
    tokenizer: tokenizers::Tokenizer,
}

impl CandleBert {
    fn load() -> Self {
        let cache = ModelCache::default_location().expect("a cache directory");
        let dir = Puller::default()
            .quiet()
            .pull(&cache, &preset("minilm-l6").expect("preset"))
            .expect("MiniLM")
            .dir;
        let config =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let vb = unsafe {
            candle_nn::VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
        }
        .unwrap();
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        tokenizer.with_padding(Some(tokenizers::PaddingParams {
            strategy: tokenizers::PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: 256,
                ..Default::default()
            }))
            .unwrap();
        Self {
            model: candle_transformers::models::bert::BertModel::load(vb, &config).unwrap(),
            tokenizer,
        }
    }

    /// Mean-pooled, normalised vectors `[n, 384]`.
    fn encode(&self, texts: &[&str]) -> Tensor {
        let enc = self.tokenizer.encode_batch(texts.to_vec(), true).unwrap();
        let (rows, cols) = (enc.len(), enc[0].get_ids().len());
        let ids = Tensor::from_vec(
            enc.iter().flat_map(|e| e.get_ids().to_vec()).collect::<Vec<u32>>(),
            (rows, cols),
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::from_vec(
            enc.iter().flat_map(|e| e.get_attention_mask().to_vec()).collect::<Vec<u32>>(),
            (rows, cols),
            &Device::Cpu,
        )
        .unwrap();
        let hidden = self.model.forward(&ids, &ids.zeros_like().unwrap(), Some(&mask)).unwrap();
        let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
        let mean = hidden
            .broadcast_mul(&m)
            .unwrap()
            .sum(1)
            .unwrap()
            .broadcast_div(&m.sum(1).unwrap())
            .unwrap();
        let norm = mean.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
        mean.broadcast_div(&norm).unwrap()
    }
}

fn encode(c: &mut Criterion) {
    let classifier = classifier();
    let peer = CandleBert::load();
    let messages = sample_messages(256);
    let one = "I had a really rough day at work and I just want to talk to someone.";

    let mut g = c.benchmark_group("nlu");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode/1 message", |b| b.iter(|| classifier.encoder().encode(one).unwrap()));
    g.bench_function("encode/1 message, candle BertModel (peer)", |b| {
        b.iter(|| peer.encode(&[one]))
    });
    let texts: Vec<&str> = messages.iter().take(64).map(String::as_str).collect();
    g.throughput(Throughput::Elements(64));
    g.bench_with_input(BenchmarkId::new("encode/batch", 64), &texts, |b, texts| {
        b.iter(|| classifier.encoder().encode_batch(texts).unwrap())
    });
    g.bench_with_input(
        BenchmarkId::new("encode/batch, candle BertModel (peer)", 64),
        &texts,
        |b, texts| b.iter(|| peer.encode(texts)),
    );
    let frozen = frozen_feature_classifier();
    g.throughput(Throughput::Elements(1));
    g.bench_function("classify/1 message", |b| b.iter(|| classifier.classify(one).unwrap()));
    g.bench_function("classify/1 message, frozen 6-layer head (peer)", |b| {
        b.iter(|| frozen.classify(one).unwrap())
    });
    // What a turn runs: the sentence vector for retrieval and the emotion, sharing what they can.
    g.bench_function("understand/1 message", |b| b.iter(|| classifier.understand(one).unwrap()));
    g.bench_function("understand/1 message, frozen 6-layer head (peer)", |b| {
        b.iter(|| frozen.understand(one).unwrap())
    });
    for batch in [16usize, 64] {
        let texts: Vec<&str> = messages.iter().take(batch).map(String::as_str).collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("classify/batch", batch), &texts, |b, texts| {
            b.iter(|| classifier.classify_batch(texts).unwrap())
        });
        g.bench_with_input(
            BenchmarkId::new("classify/batch, frozen 6-layer head (peer)", batch),
            &texts,
            |b, texts| b.iter(|| frozen.classify_batch(texts).unwrap()),
        );
    }
    g.finish();
}

/// The search alone (the message is encoded once, before it): over the biggest shipped persona's
/// examples and over 1,000 exchanges, the size of a persona learned from a creator's history.
fn retrieval(c: &mut Criterion) {
    let classifier = classifier();
    let encoder = classifier.encoder();
    let messages = sample_messages(1000);
    let message = encoder
        .encode("I had a really rough day at work and I just want to talk to someone.")
        .unwrap();
    let context = encoder.encode("you always know what to say").unwrap();
    let mut g = c.benchmark_group("retrieval");
    for size in [8usize, 1000] {
        let exchanges: Vec<Exchange> = messages
            .iter()
            .cycle()
            .take(size)
            .enumerate()
            .map(|(i, m)| Exchange { user: format!("{m} {i}"), reply: format!("reply {i}") })
            .collect();
        let index = ExampleIndex::build(encoder, exchanges).unwrap();
        g.bench_with_input(BenchmarkId::new("search k=3", size), &index, |b, index| {
            b.iter(|| index.search(&message, Some(&context), 3))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(8));
    targets = encode, retrieval
}
criterion_main!(benches);
