//! The encoder on the real all-MiniLM-L6-v2 weights (pulled into the user's cache on first use).

use std::sync::OnceLock;

use proptest::prelude::*;
use rapport_models::{preset, ModelCache, Puller};
use rapport_nlu::{cosine, SentenceEncoder, EMBEDDING_DIM};

fn encoder() -> &'static SentenceEncoder {
    static ENCODER: OnceLock<SentenceEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let cache = ModelCache::default_location().unwrap();
        let installed = Puller::default().quiet().pull(&cache, &preset("minilm-l6").unwrap()).unwrap();
        SentenceEncoder::load(&installed.dir).unwrap()
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
fn batching_with_padding_gives_the_same_vectors() {
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let batch = encoder().encode_batch(&texts).unwrap();
    assert_eq!(batch.len(), refs.len());
    for (v, r) in batch.iter().zip(&refs) {
        let c = cosine(&v.0, &r.vector);
        assert!(c >= 0.999, "{:?} in a padded batch: cosine {c}", r.text);
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
