//! The encoder on the real all-MiniLM-L6-v2 weights (pulled into the user's cache on first use).

use std::sync::OnceLock;

use proptest::prelude::*;
use rapport_models::{preset, ModelCache, Puller};
use rapport_nlu::emotion::{Ekman, EmotionClassifier, EmotionHead, LABELS};
use rapport_nlu::{cosine, ExampleIndex, Exchange, SentenceEncoder, EMBEDDING_DIM};

fn encoder() -> &'static SentenceEncoder {
    static ENCODER: OnceLock<SentenceEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let cache = ModelCache::default_location().unwrap();
        let installed =
            Puller::default().quiet().pull(&cache, &preset("minilm-l6").unwrap()).unwrap();
        SentenceEncoder::load(&installed.dir).unwrap()
    })
}

fn minilm_dir() -> std::path::PathBuf {
    let cache = ModelCache::default_location().unwrap();
    Puller::default().quiet().pull(&cache, &preset("minilm-l6").unwrap()).unwrap().dir
}

/// The shipped emotion model, as the app loads it.
fn classifier() -> &'static EmotionClassifier {
    static CLASSIFIER: OnceLock<EmotionClassifier> = OnceLock::new();
    CLASSIFIER.get_or_init(|| {
        // The path comes from cargo at run time, not compile time: a binary reused from another
        // checkout of the same tree would otherwise read that checkout's files.
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
            .expect("cargo sets CARGO_MANIFEST_DIR for tests");
        let head = EmotionHead::load(
            &std::path::Path::new(&manifest).join("../../datasets/emotion/goemotions-tuned"),
        )
        .expect("the trained head ships in datasets/emotion");
        EmotionClassifier::new(SentenceEncoder::load(&minilm_dir()).unwrap(), head).unwrap()
    })
}

#[derive(serde::Deserialize)]
struct Reference {
    text: String,
    vector: Vec<f32>,
}

/// Vectors from `tests/fixtures/make_minilm_reference.py`, a numpy BERT written independently.
fn references() -> Vec<Reference> {
    serde_json::from_str(include_str!("fixtures/minilm_reference.json")).unwrap()
}

#[test]
fn vectors_match_the_independent_reference() {
    for r in references() {
        let v = encoder().encode(&r.text).unwrap();
        assert_eq!(v.0.len(), EMBEDDING_DIM);
        let c = cosine(&v.0, &r.vector);
        assert!(c >= 0.999, "{:?}: cosine {c}", r.text);
        let norm: f32 = v.0.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
    }
}

#[test]
fn a_batch_gives_each_text_the_vector_it_gets_alone() {
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let batch = encoder().encode_batch(&texts).unwrap();
    assert_eq!(batch.len(), refs.len());
    for ((v, r), text) in batch.iter().zip(&refs).zip(&texts) {
        let c = cosine(&v.0, &r.vector);
        assert!(c >= 0.999, "{:?} in a batch: cosine {c}", r.text);
        let alone = encoder().encode(text).unwrap();
        let diff = v.0.iter().zip(&alone.0).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-6, "{text:?}: batch and alone differ by {diff}");
    }
}

/// Passes from several threads at once (a server's concurrent turns) share rayon's pool, and
/// a pass may run on a thread that is waiting inside another: each must still get exactly the
/// numbers it gets alone (each thread keeps scratch buffers between passes).
#[test]
fn concurrent_passes_give_what_each_gets_alone() {
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let alone: Vec<Vec<f32>> = texts.iter().map(|t| encoder().encode(t).unwrap().0).collect();
    let batch_alone = classifier().classify_batch(&texts).unwrap();
    std::thread::scope(|s| {
        for worker in 0..6 {
            let (texts, alone, batch_alone) = (&texts, &alone, &batch_alone);
            s.spawn(move || {
                for round in 0..10 {
                    if (worker + round) % 2 == 0 {
                        let readings = classifier().classify_batch(texts).unwrap();
                        for (got, want) in readings.iter().zip(batch_alone) {
                            assert_eq!(
                                got.probabilities, want.probabilities,
                                "worker {worker}, round {round}"
                            );
                        }
                    } else {
                        let i = (worker * 7 + round) % texts.len();
                        assert_eq!(
                            encoder().encode(texts[i]).unwrap().0,
                            alone[i],
                            "worker {worker}, round {round}: {:?}",
                            texts[i]
                        );
                    }
                }
            });
        }
    });
}

/// The fused pass against candle's own `BertModel` on the same weights (padded batch with an
/// attention mask, as Rapport ran it before): the mean vectors and the max-over-tokens features
/// the emotion head reads agree to the rounding of the pass's 16-bit integer products.
#[test]
fn fused_encoder_equals_candle_bert() {
    use candle_core::{DType, Device, Tensor};
    use candle_transformers::models::bert::{BertModel, Config};

    let dir = minilm_dir();
    let config: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    let model = BertModel::load(vb, &config).unwrap();
    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tokenizer.with_padding(Some(tokenizers::PaddingParams {
        strategy: tokenizers::PaddingStrategy::BatchLongest,
        ..Default::default()
    }));

    let texts = [
        "hi",
        "I had a really rough day at work and I just want to talk to someone.",
        "",
        "Ça va? 😊 très bien, merci!",
        &"word ".repeat(120),
    ];
    let enc = tokenizer.encode_batch(texts.to_vec(), true).unwrap();
    let (rows, cols) = (enc.len(), enc[0].get_ids().len());
    let ids: Vec<u32> = enc.iter().flat_map(|e| e.get_ids().to_vec()).collect();
    let mask: Vec<u32> = enc.iter().flat_map(|e| e.get_attention_mask().to_vec()).collect();
    let ids = Tensor::from_vec(ids, (rows, cols), &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(mask, (rows, cols), &Device::Cpu).unwrap();
    let hidden = model
        .forward(&ids, &ids.zeros_like().unwrap(), Some(&mask))
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let mask = mask.to_vec2::<u32>().unwrap();

    let fused = encoder().features(&texts).unwrap().to_vec2::<f32>().unwrap();
    for (i, text) in texts.iter().enumerate() {
        let real: Vec<&Vec<f32>> =
            hidden[i].iter().zip(&mask[i]).filter(|(_, &m)| m == 1).map(|(h, _)| h).collect();
        let mut mean = vec![0f32; EMBEDDING_DIM];
        let mut max = vec![f32::NEG_INFINITY; EMBEDDING_DIM];
        for h in &real {
            for d in 0..EMBEDDING_DIM {
                mean[d] += h[d] / real.len() as f32;
                max[d] = max[d].max(h[d]);
            }
        }
        let c = cosine(&fused[i][..EMBEDDING_DIM], &mean);
        assert!(c > 0.9995, "{text:?}: cosine to candle's vector {c}");
        // The fused pass multiplies 16-bit integers (weights to ±511 per column, activations to
        // 11–13 bits per row): on these texts cosines 0.99985–0.99997 and differences up to
        // 0.04 of values that reach ±5; dev macro-F1 moved by 0.0003
        // (docs/dev/understanding.md). The bounds leave ~3× room; a wrong column, scale or bias breaks them.
        let c = cosine(&fused[i][EMBEDDING_DIM..], &max);
        let diff = fused[i][EMBEDDING_DIM..]
            .iter()
            .zip(&max)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            c > 0.9995 && diff < 0.1,
            "{text:?}: max-over-tokens features: cosine {c}, largest difference {diff}"
        );
    }
}

#[test]
fn similar_sentences_are_closer_than_unrelated_ones() {
    let e = encoder();
    let sad = e.encode("I feel so sad and lonely tonight").unwrap();
    let down = e.encode("I'm really down and nobody is around").unwrap();
    let tax = e.encode("The quarterly tax filing deadline is in April").unwrap();
    assert!(cosine(&sad.0, &down.0) > cosine(&sad.0, &tax.0) + 0.2);
}

#[test]
fn a_100_kb_message_is_truncated_not_refused() {
    let long = "this is a very long message ".repeat(4000);
    assert!(long.len() > 100_000);
    let v = encoder().encode(&long).unwrap();
    assert_eq!(v.0.len(), EMBEDDING_DIM);
    assert!(v.0.iter().all(|x| x.is_finite()));
}

#[test]
fn plainly_worded_messages_get_their_emotion() {
    let cases = [
        ("Thank you so much, you really helped me!", "gratitude"),
        ("I'm so scared of what the doctor will say tomorrow.", "fear"),
        ("My dog died this morning and I can't stop crying.", "sadness"),
        ("Wow, that is hilarious, I'm laughing so hard lol", "amusement"),
        ("I love you so much.", "love"),
        ("What time does the store open?", "curiosity"),
    ];
    let texts: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let readings = classifier().classify_batch(&texts).unwrap();
    let mut right = 0;
    for ((text, want), r) in cases.iter().zip(&readings) {
        let top3: Vec<&str> = {
            let mut idx: Vec<usize> = (0..LABELS.len()).collect();
            idx.sort_by(|&a, &b| r.probabilities[b].total_cmp(&r.probabilities[a]));
            idx.into_iter().take(3).map(|i| LABELS[i]).collect()
        };
        if top3.contains(want) {
            right += 1
        } else {
            eprintln!("{text:?}: expected {want}, top 3 {top3:?}")
        }
        assert!(r.probabilities.iter().all(|p| (0.0..=1.0).contains(p)));
    }
    assert!(right >= 5, "{right}/6 plainly worded messages recognised");
}

#[derive(serde::Deserialize)]
struct EmotionReference {
    text: String,
    probabilities: Vec<f32>,
}

/// The shipped model's probabilities computed outside Rapport, by the trainer's definitions in
/// NumPy (`tests/fixtures/make_emotion_reference.py`, itself checked against the PyTorch
/// trainer): Rapport's pass over the tuned branch must give the same numbers, up to the
/// rounding of its 16-bit integer products (0.002 at most on these texts).
#[test]
fn the_tuned_model_agrees_with_an_independent_reference() {
    let references: Vec<EmotionReference> =
        serde_json::from_str(include_str!("fixtures/emotion_reference.json")).unwrap();
    assert!(references.len() >= 40);
    let texts: Vec<&str> = references.iter().map(|r| r.text.as_str()).collect();
    let readings = classifier().classify_batch(&texts).unwrap();
    let mut worst = (0.0f32, "");
    for (r, reading) in references.iter().zip(&readings) {
        for (got, want) in reading.probabilities.iter().zip(&r.probabilities) {
            if (got - want).abs() > worst.0 {
                worst = ((got - want).abs(), r.text.as_str());
            }
        }
    }
    assert!(worst.0 < 0.01, "probabilities differ by {} on {:?}", worst.0, worst.1);
}

/// `understand` shares the layers below the branch between the sentence vector and the
/// emotion; each half must equal what the separate calls give.
#[test]
fn understanding_equals_encoding_plus_classifying() {
    for text in ["My dog died this morning.", "haha that's brilliant", ""] {
        let (vector, reading) = classifier().understand(text).unwrap();
        let alone = encoder().encode(text).unwrap();
        assert!(cosine(&vector.0, &alone.0) > 0.99999, "{text:?}: the vector changed");
        let classified = classifier().classify(text).unwrap();
        let diff = reading
            .probabilities
            .iter()
            .zip(&classified.probabilities)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{text:?}: the emotion changed by {diff}");
    }
}

/// `rapport emotion train`'s kind of head (frozen encoder features, no tuned layers) still
/// loads and reads plain messages.
#[test]
fn the_frozen_feature_head_still_works() {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap();
    let head = EmotionHead::load(
        &std::path::Path::new(&manifest).join("../../datasets/emotion/goemotions-mlp"),
    )
    .unwrap();
    assert!(!head.is_tuned());
    let classifier =
        EmotionClassifier::new(SentenceEncoder::load(&minilm_dir()).unwrap(), head).unwrap();
    let reading = classifier.classify("Thank you so much, you really helped me!").unwrap();
    assert!(reading.label_names().contains(&"gratitude"), "{:?}", reading.label_names());
}

/// A head whose branch names layers the encoder lacks, or whose file lacks them, is refused
/// with the file's name, not run on half a model.
#[test]
fn a_head_with_missing_tuned_layers_is_refused() {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap();
    let shipped = std::path::Path::new(&manifest).join("../../datasets/emotion/goemotions-tuned");
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("broken");
    std::fs::copy(shipped.with_extension("safetensors"), stem.with_extension("safetensors"))
        .unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shipped.with_extension("json")).unwrap())
            .unwrap();
    // The file holds the tuned layers up to `layers` only; ask for one more.
    let layers = meta["encoder"]["layers"].as_u64().unwrap();
    meta["encoder"]["layers"] = serde_json::json!(layers + 1);
    std::fs::write(stem.with_extension("json"), meta.to_string()).unwrap();
    let head = EmotionHead::load(&stem).unwrap();
    let err = EmotionClassifier::new(SentenceEncoder::load(&minilm_dir()).unwrap(), head)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("broken.safetensors") && err.contains(&format!("encoder.layer.{layers}")),
        "{err}"
    );
}

#[test]
fn the_derived_views_follow_the_message() {
    let sad =
        classifier().classify("My grandmother passed away and I miss her every day.").unwrap();
    let glad = classifier().classify("I got the job!!! Best day ever, I'm so happy!").unwrap();
    assert_eq!(sad.dominant_ekman(), Ekman::Sadness, "{:?}", sad.label_names());
    assert_eq!(glad.dominant_ekman(), Ekman::Joy, "{:?}", glad.label_names());
    assert!(sad.valence_arousal().0 < 0.0 && glad.valence_arousal().0 > 0.3);
}

#[test]
fn retrieval_returns_the_exchanges_about_the_same_thing() {
    let exchanges = vec![
        Exchange {
            user: "Do you like hiking?".into(),
            reply: "Love it, the mountains are my happy place.".into(),
        },
        Exchange { user: "What's your job?".into(), reply: "I design parks.".into() },
        Exchange {
            user: "I had a terrible day".into(),
            reply: "Oh no, want to talk about it?".into(),
        },
        Exchange {
            user: "I had a terrible day!!".into(),
            reply: "Oh no! Tell me everything.".into(),
        },
        Exchange { user: "Any pets?".into(), reply: "A dog named Pickle.".into() },
    ];
    let encoder = classifier().encoder();
    let cache = tempfile::tempdir().unwrap();
    let index = ExampleIndex::load_or_build(encoder, exchanges.clone(), cache.path()).unwrap();
    let query = encoder.encode("ugh, today was the worst day").unwrap();
    let hits = index.search(&query, None, 2);
    assert_eq!(hits.len(), 2);
    assert!(hits[0].index == 2 || hits[0].index == 3, "{hits:?}");
    assert!(hits.iter().all(|h| h.score > -1.0 && h.score <= 1.0));
    // The second slot is not the same line again with other punctuation.
    assert!(!(hits.iter().any(|h| h.index == 2) && hits.iter().any(|h| h.index == 3)), "{hits:?}");
    // The index was cached on disk under its content hash and is read back.
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
    let again = ExampleIndex::load_or_build(encoder, exchanges, cache.path()).unwrap();
    assert_eq!(again.search(&query, None, 2), hits);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    /// Classification accepts anything: a reading with probabilities in range, at least one label.
    #[test]
    fn classification_never_panics(text in "\\PC{0,300}|[\\u{0}-\\u{10FFFF}]{0,40}") {
        let r = classifier().classify(&text).unwrap();
        prop_assert_eq!(r.probabilities.len(), LABELS.len());
        prop_assert!(!r.labels.is_empty());
        prop_assert!(r.probabilities.iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p)));
    }
}

#[test]
fn a_100_kb_message_is_classified() {
    let r = classifier().classify(&"so angry right now!!! ".repeat(5000)).unwrap();
    assert!(!r.labels.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    /// Any Unicode, including control characters and the empty string, gives a finite vector.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}|[\\u{0}-\\u{10FFFF}]{0,50}") {
        let v = encoder().encode(&text).unwrap();
        prop_assert_eq!(v.0.len(), EMBEDDING_DIM);
        prop_assert!(v.0.iter().all(|x| x.is_finite()));
    }
}
