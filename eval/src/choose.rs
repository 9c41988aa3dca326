//! The turn scorer as the pipeline's draft chooser: each clean draft of a best-of-N turn is
//! scored by [`Judge::score_reply`] in the context of what the person saw, on one or more of a
//! rubric's persona criteria, and the pipeline keeps the best ([`rapport_pipeline::choose`]).
//!
//! The drafts share the whole conversation before them, so the judge's prompts for them differ
//! only from the reply on: the engine's prefix cache reads the conversation once per turn
//! (and, turn after turn, mostly only what was added). Scoring runs one draft after the other
//! for that reason: started together, each would read the conversation itself.

use rapport_core::{ChatMessage, Role};
use rapport_pipeline::choose::DraftChooser;
use rapport_pipeline::Persona;

use crate::batch::brief_of;
use crate::dialogue::fit_lines;
use crate::judge::{Judge, JudgeMethod};
use crate::rubric::{Criterion, Rubric, Side};
use crate::EvalError;

/// Scores drafts with the judge's turn scorer: the mean of the chosen criteria's expected
/// scores.
pub struct TurnScorerChooser {
    judge: Judge,
    criteria: Vec<Criterion>,
    name: String,
}

impl TurnScorerChooser {
    /// The judge scoring on `rubric`'s persona criteria named in `ids` (all of its judged
    /// persona criteria when empty). The judge must read probabilities (method `expected`).
    pub fn new(judge: Judge, rubric: &Rubric, ids: &[String]) -> Result<Self, EvalError> {
        if judge.config().method != JudgeMethod::Expected {
            return Err(EvalError::Invalid(
                "choosing between drafts reads the judge's probabilities: use the expected method"
                    .into(),
            ));
        }
        let criteria: Vec<Criterion> = if ids.is_empty() {
            rubric.judged(Side::Persona).into_iter().cloned().collect()
        } else {
            rubric.judged_named(Side::Persona, ids)?.into_iter().cloned().collect()
        };
        if criteria.is_empty() {
            return Err(EvalError::Invalid(format!(
                "rubric '{}' has no judged persona criteria to choose by",
                rubric.id
            )));
        }
        let name = format!(
            "turn scorer: {}",
            criteria.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
        );
        Ok(Self { judge, criteria, name })
    }
}

/// The transcript the judge reads before a reply: what the person saw of `conversation` (its
/// system messages left out), as `Name: text` lines within `max_chars` (the latest kept).
pub(crate) fn transcript(name: &str, conversation: &[ChatMessage], max_chars: usize) -> String {
    let lines: Vec<String> = conversation
        .iter()
        .filter(|m| m.role != Role::System)
        .map(|m| {
            let who = if m.role == Role::User { "User" } else { name };
            format!("{who}: {}", m.content.replace('\n', " "))
        })
        .collect();
    fit_lines(&lines, max_chars)
}

#[async_trait::async_trait]
impl DraftChooser for TurnScorerChooser {
    fn name(&self) -> &str {
        &self.name
    }

    async fn score(
        &self,
        persona: &Persona,
        conversation: &[ChatMessage],
        drafts: &[String],
    ) -> Result<Vec<Option<f64>>, String> {
        let brief = brief_of(persona);
        let before =
            transcript(&persona.name, conversation, self.judge.config().max_transcript_chars);
        let criteria: Vec<&Criterion> = self.criteria.iter().collect();
        let mut scores = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let verdict = self
                .judge
                .score_reply(&before, &draft.replace('\n', " "), &criteria, Side::Persona, &brief)
                .await
                .map_err(|e| e.to_string())?;
            let read: Vec<f64> = verdict.criteria.values().filter_map(|c| c.score).collect();
            // A draft is scored only where every criterion was read: a mean over fewer would
            // not be comparable with the others'.
            scores
                .push((read.len() == criteria.len()).then(|| crate::stats::mean(&read)).flatten());
        }
        Ok(scores)
    }
}
