//! The shared vocabulary of Rapport: chat messages, sampling parameters, and the [`Generator`]
//! trait that every text-generation backend implements, plus the incremental decoder for the
//! server-sent events those backends and Rapport's own clients read ([`sse`]).
//!
//! This crate sits below everything else. The pipeline builds a [`GenerationRequest`], a backend
//! (embedded mistral.rs, or an OpenAI-compatible server) turns it into a stream of
//! [`GenerationEvent`]s, and the server or terminal forwards those chunks to a person.
//!
//! # Invariants
//! - Never performs IO and never links a model runtime: the trait is defined here so that the
//!   pipeline and the evaluation harness depend on the seam, not on mistral.rs.
//! - A [`GenerationRequest`] is validated once, when it is built ([`GenerationRequest::new`]);
//!   backends may rely on it holding at least one message, a system message first, and sampling
//!   values inside their documented ranges.
#![deny(missing_docs)]

mod generator;
mod message;
pub mod percentile;
mod sampling;
pub mod sse;
mod stop;
pub mod text_stats;

pub use generator::{
    collect_completion, Completion, GenerationError, GenerationEvent, GenerationSummary, Generator,
    StopReason, TextStream, Timings, TokenLogprob, TokenUsage, TopToken,
};
pub use message::{ChatMessage, GenerationRequest, Role, MAX_TOP_LOGPROBS};
pub use sampling::{DryParams, SamplingParams};
pub use sse::{SseDecoder, SseEvent};
pub use stop::{Released, StopFilter};
