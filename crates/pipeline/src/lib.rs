//! The agent pipeline: everything Rapport does around one reply of the language model.
//!
//! One turn flows through the modules in this order, each a step with its own input and output
//! types:
//!
//! 1. [`context`]: time of day, weekday, how long the conversation has run, the gap since the
//!    last message, the turn count.
//! 2. [`understand`]: the emotion of the user's message and its trajectory over the conversation,
//!    plus the lexical [`signals`] (self-disclosure, rudeness, pushing too fast) and what the
//!    message does with the conversation, [`listening`] (takes up what the persona said, repeats
//!    itself, answers her question).
//! 3. [`stage`]: ice-breaker → casual → close, and back.
//! 4. [`closeness`]: a score and a decision (hold / go closer / step back) with its reasons.
//! 5. [`secret`]: whether the persona's secret may enter the prompt this turn.
//! 6. [`guards`]: forbidden topics and prompt injection on the way in; forbidden topics, leaks
//!    and breaks of character on the way out, the last by [`character`] (another identity,
//!    narration, assistant-speak, the user's question left unanswered), and [`facts`] that a
//!    draft contradicts (hers, her earlier words, what the person told).
//! 7. [`fewshot`]: the persona's example exchanges that fit this moment.
//! 8. [`prompt`]: tera templates rendered within a token budget, oldest turns folded into a
//!    running [`memory`], and what the person told in earlier conversations ([`recall`]).
//! 9. Generation (any [`rapport_core::Generator`]) and [`cleanup`] of the reply.
//!
//! [`engine::Pipeline`] runs the steps; [`trace::TurnTrace`] records what each decided. With
//! best of N, [`choose`] holds the seam to the scorer that picks among several drafts.
//!
//! # Invariants
//! - Steps 1–8 are pure functions of their inputs: no IO, no clock, no randomness. The engine
//!   reads the clock once per turn and passes it in, which is why every decision can be
//!   replayed from a trace.
//! - The secret's text is in a prompt only when [`secret::SecretStatus::Unlocked`]: templates see a
//!   [`prompt::PersonaView`], which has no secret. Nothing the user writes can make a locked
//!   secret leak, because the model never saw it; a conversation rebuilt from client-sent
//!   history ([`secret::Provenance::ClientSent`]) never unlocks. [`secret::SecretMatcher`] is
//!   the one way to find the secret in a text, for the guards and the evaluation alike.
//! - This crate never links a model runtime: the engine takes `&dyn Generator`.
#![deny(missing_docs)]

pub mod card;
pub mod character;
pub mod choose;
pub mod cleanup;
pub mod closeness;
pub mod context;
pub mod engine;
mod error;
pub mod facts;
pub mod fewshot;
pub mod guards;
pub mod layout;
pub mod listening;
pub mod memory;
pub mod persona;
mod png;
pub mod prompt;
pub mod recall;
pub mod secret;
pub mod signals;
pub mod stage;
pub mod trace;
pub mod understand;

pub use engine::{Conversation, Pipeline, PipelineConfig, TurnEvent, TurnOutcome};
pub use error::PipelineError;
pub use persona::{Persona, PersonaLibrary};
pub use trace::TurnTrace;
