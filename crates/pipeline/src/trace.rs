//! The record of one turn: what every step saw and decided. The server stores it next to the
//! reply, `rapport chat --trace` prints it, and the evaluation harness reads it back.

use serde::{Deserialize, Serialize};

use crate::closeness::ClosenessDecision;
use crate::context::TurnContext;
use crate::fewshot::ChosenExample;
use crate::guards::GuardHit;
use crate::prompt::PromptStats;
use crate::recall::Told;
use crate::secret::SecretStatus;
use crate::signals::Signals;
use crate::stage::StageChange;
use crate::understand::EmotionView;

/// One turn, step by step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnTrace {
    /// The persona's id.
    pub persona: String,
    /// The user's message number, from 1.
    pub turn: u32,
    /// When the message arrived (RFC 3339, the user's offset).
    pub at: String,
    /// Step 1.
    pub context: TurnContext,
    /// Step 2: emotion.
    pub emotion: EmotionView,
    /// Step 2: lexical signals.
    pub signals: Signals,
    /// Step 3.
    pub stage: StageChange,
    /// Step 4.
    pub closeness: ClosenessDecision,
    /// Step 5.
    pub secret: SecretStatus,
    /// Step 6, on the user's message.
    pub input_guards: Vec<GuardHit>,
    /// Step 7.
    pub examples: Vec<ChosenExample>,
    /// Step 8.
    pub prompt: PromptStats,
    /// Facts from earlier conversations with the person that the prompt carried.
    #[serde(default)]
    pub recalled: usize,
    /// What the person told about themselves in this message, for the caller to remember
    /// ([`crate::recall::told_in`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub told: Vec<Told>,
    /// Step 9: each generation attempt.
    pub attempts: Vec<Attempt>,
    /// Why the fallback line was used, if it was.
    pub fallback: Option<String>,
    /// When no draft was clean but one was rejected only for soft hits (assistant-speak, an
    /// unanswered question), the attempt whose draft was sent instead of the fallback line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_soft: Option<u32>,
    /// The reply as shown.
    pub reply: String,
    /// Microseconds spent in each step.
    pub timings_us: StepTimings,
}

/// One call to the generator (with its retries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first draft, 2 for the regenerated one.
    pub number: u32,
    /// The steering note added for this attempt.
    pub steering: Option<String>,
    /// Retries after transient errors before this attempt produced a draft or gave up.
    pub retries: u32,
    /// What became of it.
    pub outcome: AttemptOutcome,
    /// Fixes the clean-up applied.
    pub cleanup: Vec<String>,
    /// Prompt tokens as the backend counted them.
    pub prompt_tokens: Option<u32>,
    /// Of those, the ones its prefix cache served (not read again).
    #[serde(default)]
    pub cached_prompt_tokens: Option<u32>,
    /// Reply tokens: the backend's count, or for a draft cut short (it began the person's next
    /// line or ran past the sentence budget, and the stream was dropped before any summary) the
    /// chunks it streamed, one per token on the backends Rapport talks to.
    pub completion_tokens: Option<u32>,
    /// Time from the generation call to the first text, ms (retries not included).
    pub ttft_ms: Option<u64>,
    /// Whole attempt, ms (retries included).
    pub total_ms: u64,
    /// With best of N ([`crate::choose`]): every draft written for this attempt, in the order
    /// asked, with its guard hits and score; empty when the attempt wrote one draft.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    /// The chooser that scored the candidates, and how long it took, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chooser: Option<ChooserRun>,
}

impl Attempt {
    /// The record of attempt `number` as it starts: accepted until something says otherwise,
    /// nothing counted yet.
    pub fn started(number: u32, steering: Option<String>) -> Self {
        Attempt {
            number,
            steering,
            retries: 0,
            outcome: AttemptOutcome::Accepted,
            cleanup: Vec::new(),
            prompt_tokens: None,
            cached_prompt_tokens: None,
            completion_tokens: None,
            ttft_ms: None,
            total_ms: 0,
            candidates: Vec::new(),
            chooser: None,
        }
    }
}

/// One of the drafts of a best-of-N attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The draft after clean-up (empty when the guards stopped it while it streamed).
    pub text: String,
    /// The guard hits that ruled it out, by code; empty for a clean draft.
    pub hits: Vec<String>,
    /// The chooser's score (higher is better); absent when it was not scored (not clean, a
    /// single clean draft, no chooser) or the chooser could not read one.
    pub score: Option<f64>,
    /// Reply tokens it cost.
    pub completion_tokens: Option<u32>,
    /// Whether it became the reply (or the soft-hit draft kept in case no later one is clean).
    pub chosen: bool,
    /// Why it was not written, when the generator failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the chooser did in a best-of-N attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChooserRun {
    /// Its name ([`crate::choose::DraftChooser::name`]).
    pub name: String,
    /// Time spent scoring, ms.
    pub ms: u64,
    /// Why it gave no scores, when it failed (the first clean draft was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum AttemptOutcome {
    /// The draft became the reply.
    Accepted,
    /// The guards rejected the draft.
    Rejected {
        /// Why.
        hits: Vec<GuardHit>,
    },
    /// The generator failed.
    Failed {
        /// The error's kind tag.
        kind: String,
        /// Its message.
        message: String,
    },
}

/// Step timings of one turn, µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StepTimings {
    /// Steps 1–8: everything before generation.
    pub prepare: u64,
    /// Of which the emotion model and sentence vector.
    pub understand: u64,
    /// Of which prompt rendering and fitting.
    pub prompt: u64,
    /// Generation, all attempts.
    pub generate: u64,
    /// Clean-up and guards on the reply (the semantic check included).
    pub review: u64,
}
