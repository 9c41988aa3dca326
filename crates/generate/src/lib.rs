//! Text generation backends for Rapport, both implementing [`rapport_core::Generator`]:
//!
//! - [`MistralRsGenerator`]: mistral.rs 0.8.1 running a local GGUF on the CPU, in process;
//! - [`OpenAiCompatGenerator`]: any OpenAI-compatible server (mistral.rs server, vLLM,
//!   llama.cpp server, or `rapport serve-llm`) over HTTP with streaming SSE.
//!
//! # Invariants
//! - This is the only crate that links mistral.rs; everything above it sees the trait.
//! - Backends never retry: whether a failure is worth retrying is the caller's decision
//!   ([`rapport_core::GenerationError::is_transient`]), made with knowledge of the user waiting.
//! - Timings are measured here, at the call, so both backends report TTFT the same way.
#![deny(missing_docs)]

mod embedded;
mod openai;
pub mod repack;
mod sse;

pub use embedded::{Activations, EmbeddedOptions, MistralRsGenerator};
pub use openai::{OpenAiCompatGenerator, OpenAiCompatOptions};
pub use sse::{SseDecoder, SseEvent};
