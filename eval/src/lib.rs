//! The evaluation harness: is this persona, prompt or model better than the last one?
//!
//! A run follows the life of a score:
//!
//! 1. [`dialogue`]: what is scored — simulated dialogues written by a [`batch`] (personas ×
//!    [`simulator`]s × seeds × turns), or logged ones read from the app's database or JSONL.
//! 2. [`rubric`]: what "good" means, criterion by criterion, with anchored scales.
//! 3. Scorers: the [`judge`] (an LLM through [`rapport_core::Generator`], JSON verdicts or
//!    [`expected`] scores read from its probabilities, several samples, position-swapped
//!    pairwise mode) and exact [`metrics`] (diversity,
//!    questions, emotion mirroring, stage timing, guard hits, secret leaks, latency, tokens).
//! 4. [`report`]: JSON, Markdown and self-contained HTML with [`svg`] charts; [`compare`] tells
//!    which criteria changed significantly between two runs, and [`rank`] orders several runs
//!    from the judge's pairwise verdicts (Bradley–Terry, with intervals).
//!
//! [`calibrate`] measures how far the judge can be trusted, against human ratings (the
//! chitchat dataset), and [`coach`] turns the same machinery on the person's side of a
//! conversation for the practice feedback the web app shows (a report per conversation and a
//! tip per message, and [`rewrite`]'s checked "try: …" by the model), and [`scenario`] gives that practice a goal: a persona in a setting, a
//! success check read from the stored state, levels and a debrief. [`memory`] measures whether
//! a persona recalls, in a later conversation, what a person told it in an earlier one.
//! [`stats`] holds the statistics. [`choose`] lends the judge's turn scorer to the pipeline, to
//! pick among the drafts of a best-of-N reply, and [`best_of`] measures whether that is worth its wait; [`turn_breaks`] whether the turn
//! scorer sees a broken character. [`optimize`] searches a persona's prompt choices (examples,
//! note phrasing, layout) by the judge and the exact checks and reports the winner on held-out
//! dialogues.
//!
//! # Invariants
//! - Nothing is guessed: an unreadable judge answer leaves the criterion without a score (and
//!   is counted); a metric that does not apply is absent, not zero.
//! - A batch is reproducible from its spec and seeds, and resumable: finished dialogues and
//!   verdicts are appended whole and synced, and a rerun skips them.
//! - Every mean in a report carries its n and a bootstrap interval; resampling is seeded.
#![deny(missing_docs)]

pub mod batch;
pub mod best_of;
pub mod calibrate;
pub mod choose;
pub mod coach;
pub mod coach_judge;
pub mod compare;
pub mod dialogue;
pub mod expected;
pub mod fit;
pub mod html;
pub mod injection;
pub mod judge;
pub mod memory;
pub mod metrics;
pub mod optimize;
pub mod progress;
pub mod rank;
pub mod report;
pub mod rewrite;
pub mod rubric;
pub mod scenario;
pub mod simulator;
pub mod stats;
pub mod svg;
pub mod trust;
pub mod turn_breaks;

pub use dialogue::{Dialogue, Speaker, Turn};
pub use rubric::Rubric;

/// What can go wrong in an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// An input (rubric, simulator, dialogue, rated item, run directory) is not what it must be.
    #[error("{0}")]
    Invalid(String),
    /// Generation failed where it cannot be recorded and skipped.
    #[error("generation failed: {0}")]
    Generation(String),
    /// The sentence encoder failed.
    #[error("sentence encoder: {0}")]
    Model(String),
}

impl From<rapport_core::GenerationError> for EvalError {
    fn from(e: rapport_core::GenerationError) -> Self {
        EvalError::Generation(e.to_string())
    }
}
