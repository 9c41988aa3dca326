//! Shared set-up of Rapport's criterion benchmarks: real models from the user's cache and real
//! messages from the data sets, so that the numbers are the ones users get.

use std::path::Path;

use rapport_models::{preset, ModelCache, Puller};
use rapport_nlu::emotion::{EmotionClassifier, EmotionHead};
use rapport_nlu::SentenceEncoder;

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The emotion classifier as the app runs it: MiniLM from the cache, the shipped model.
pub fn classifier() -> EmotionClassifier {
    classifier_with("datasets/emotion/goemotions-tuned")
}

/// The classifier `rapport emotion train` makes (a head on the frozen encoder's last layer), the
/// peer that the shipped, fine-tuned model replaced.
pub fn frozen_feature_classifier() -> EmotionClassifier {
    classifier_with("datasets/emotion/goemotions-mlp")
}

fn classifier_with(head: &str) -> EmotionClassifier {
    let cache = ModelCache::default_location().expect("a cache directory");
    let minilm = Puller::default()
        .quiet()
        .pull(&cache, &preset("minilm-l6").expect("preset"))
        .expect("MiniLM");
    let encoder = SentenceEncoder::load(&minilm.dir).expect("encoder");
    let head = EmotionHead::load(&repo().join(head)).unwrap_or_else(|e| panic!("{head}: {e}"));
    EmotionClassifier::new(encoder, head).expect("the emotion model fits the encoder")
}

/// Up to `n` real user-like messages: GoEmotions dev texts when the shared data is there, else
/// the prompt sets in `datasets/prompts`.
pub fn sample_messages(n: usize) -> Vec<String> {
    let dev = repo().join("datasets/goemotions/dev.tsv");
    let from_dev: Vec<String> = std::fs::read_to_string(dev)
        .map(|t| {
            t.lines().filter_map(|l| l.split('\t').next()).map(str::to_string).take(n).collect()
        })
        .unwrap_or_default();
    if !from_dev.is_empty() {
        return from_dev;
    }
    let probe = std::fs::read_to_string(repo().join("datasets/prompts/sampling-probe.jsonl"))
        .unwrap_or_default();
    probe
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["user"].as_str().map(str::to_string))
        .cycle()
        .take(n)
        .collect()
}
