//! NLU speed on real weights: one message (what a turn waits for) and batches (what an
//! evaluation run or a busy server pushes through).
//!
//! cargo bench -p rapport-benches --bench nlu
//! Needs `rapport models pull minilm-l6` and the trained head in datasets/emotion/.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rapport_benches::{classifier, sample_messages};

fn encode(c: &mut Criterion) {
    let classifier = classifier();
    let messages = sample_messages(256);
    let one = "I had a really rough day at work and I just want to talk to someone.";

    let mut g = c.benchmark_group("nlu");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode/1 message", |b| b.iter(|| classifier.encoder().encode(one).unwrap()));
    g.bench_function("classify/1 message", |b| b.iter(|| classifier.classify(one).unwrap()));
    for batch in [16usize, 64] {
        let texts: Vec<&str> = messages.iter().take(batch).map(String::as_str).collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("classify/batch", batch), &texts, |b, texts| {
            b.iter(|| classifier.classify_batch(texts).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(8));
    targets = encode
}
criterion_main!(benches);
