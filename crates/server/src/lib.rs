//! Rapport's HTTP surface.
//!
//! Today this is the OpenAI-compatible API ([`openai`]) over any [`rapport_core::Generator`]:
//! `rapport serve-llm` uses it to put the embedded model on the network, so that other Rapport
//! processes (or any OpenAI client) can move generation to this machine.
//!
//! # Invariants
//! - OpenAI's wire types live only here and are converted by hand into the core's validated
//!   [`rapport_core::GenerationRequest`]; nothing below this crate sees HTTP or JSON DTOs.
//! - Every error leaves as one JSON shape, `{"error": {"message", "type"}}`, with the status
//!   chosen in one place ([`openai::ApiError`]).
#![deny(missing_docs)]

pub mod openai;
