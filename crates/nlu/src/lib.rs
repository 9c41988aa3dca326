//! Understanding the user, on candle 0.10.2 (the candle mistral.rs is built on): sentence
//! embeddings with all-MiniLM-L6-v2 ([`SentenceEncoder`]) and emotion recognition on top of them
//! ([`emotion::EmotionClassifier`]), and retrieval of a persona's example exchanges that fit the
//! moment ([`ExampleIndex`]).
//!
//! The pipeline needs two questions answered: "how does this message feel"
//! ([`emotion::EmotionClassifier::classify`], with [`emotion::EmotionTrajectory`] over turns)
//! and "which examples fit" ([`ExampleIndex::search`]).
//!
//! # Invariants
//! - No model is fetched here: weights are read from a directory that `rapport models pull
//!   minilm-l6` filled, and a missing file is an error that says so.
//! - Any text is accepted: empty, arbitrary Unicode, or longer than the model's window (it is
//!   truncated to [`MAX_TOKENS`] tokens, as sentence-transformers does); nothing here panics on
//!   input.
#![deny(missing_docs)]

mod bert;
pub mod emotion;
mod encoder;
mod error;
pub mod goemotions;
mod retrieval;

pub use encoder::{cosine, Embedding, EncoderBranch, SentenceEncoder, EMBEDDING_DIM, MAX_TOKENS};
pub use error::NluError;
pub use retrieval::{ExampleIndex, Exchange, Hit};
