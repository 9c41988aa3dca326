//! NLU speed on real weights: one message (what a turn waits for), batches (what an
//! evaluation run or a busy server pushes through), and example retrieval (the search over a
//! persona's embedded examples that step 7 runs once the message is encoded).
//!
//! cargo bench -p rapport-benches --bench nlu
//! Needs `rapport models pull minilm-l6` and the trained head in datasets/emotion/.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rapport_benches::{classifier, sample_messages};
use rapport_nlu::{ExampleIndex, Exchange};

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

/// The search alone (the message is encoded once, before it): over the biggest shipped persona's
/// examples and over 1,000 exchanges, the size of a persona learned from a creator's history.
fn retrieval(c: &mut Criterion) {
    let classifier = classifier();
    let encoder = classifier.encoder();
    let messages = sample_messages(1000);
    let message = encoder.encode("I had a really rough day at work and I just want to talk to someone.").unwrap();
    let context = encoder.encode("you always know what to say").unwrap();
    let mut g = c.benchmark_group("retrieval");
    for size in [8usize, 1000] {
        let exchanges: Vec<Exchange> = messages.iter().cycle().take(size).enumerate().map(|(i, m)| Exchange { user: format!("{m} {i}"), reply: format!("reply {i}") }).collect();
        let index = ExampleIndex::build(encoder, exchanges).unwrap();
        g.bench_with_input(BenchmarkId::new("search k=3", size), &index, |b, index| b.iter(|| index.search(&message, Some(&context), 3)));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(8));
    targets = encode, retrieval
}
criterion_main!(benches);
