//! Step 7: which of the persona's example exchanges to show the model this turn.
//!
//! Examples teach the voice better than adjectives do, but a small model copies whatever it is
//! shown, so the examples must fit the moment: nearest in meaning to what the user just said,
//! not yet too intimate for the stage, and not three paraphrases of one line.

use rapport_nlu::{Embedding, ExampleIndex, Exchange, SentenceEncoder};
use serde::{Deserialize, Serialize};

use crate::persona::Persona;
use crate::stage::Stage;
use crate::PipelineError;

/// One example chosen for the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChosenExample {
    /// Index in the persona's `examples`.
    pub index: usize,
    /// Similarity to the query (0 when chosen without vectors).
    pub score: f32,
    /// What someone said.
    pub user: String,
    /// How the persona answered.
    pub reply: String,
}

/// The persona's examples, embedded when an encoder is available: those its tuning lets the
/// prompt show, in the tuning's order ([`Persona::example_order`]).
pub struct FewShot {
    index: Option<ExampleIndex>,
    exchanges: Vec<Exchange>,
    stages: Vec<Option<Stage>>,
    /// Each exchange's index in the persona's `examples`.
    indices: Vec<usize>,
}

impl FewShot {
    /// Embeds the persona's examples (or keeps them in order, without an encoder).
    pub fn new(
        persona: &Persona,
        encoder: Option<&SentenceEncoder>,
    ) -> Result<Self, PipelineError> {
        let indices = persona.example_order();
        let exchanges: Vec<Exchange> = indices
            .iter()
            .map(|&i| &persona.examples[i])
            .map(|e| Exchange { user: e.user.clone(), reply: e.reply.clone() })
            .collect();
        let stages = indices.iter().map(|&i| persona.examples[i].stage).collect();
        let index = match encoder {
            Some(enc) if !exchanges.is_empty() => {
                Some(ExampleIndex::build(enc, exchanges.clone())?)
            }
            _ => None,
        };
        Ok(Self { index, exchanges, stages, indices })
    }

    /// Step 7: up to `k` examples for this moment, best first.
    pub fn choose(
        &self,
        message: Option<&Embedding>,
        context: Option<&Embedding>,
        stage: Stage,
        k: usize,
    ) -> Vec<ChosenExample> {
        let suits = |i: usize| self.stages[i].is_none_or(|s| s <= stage);
        let pick = |index: usize, score: f32| self.chosen(index, score);
        match (&self.index, message) {
            (Some(index), Some(message)) => {
                // Ask for everything: the stage filter runs after the ranking, and a persona has
                // tens of examples, not thousands.
                index
                    .search(message, context, self.exchanges.len())
                    .into_iter()
                    .filter(|h| suits(h.index))
                    .take(k)
                    .map(|h| pick(h.index, h.score))
                    .collect()
            }
            _ => (0..self.exchanges.len())
                .filter(|&i| suits(i))
                .take(k)
                .map(|i| pick(i, 0.0))
                .collect(),
        }
    }

    /// The cached layout's examples: up to `k` of those that suit `stage`, the same ones every
    /// turn of the stage so that they stay in the prefix cache. Examples for every stage come
    /// first, then each later stage's in turn, so that a new stage adds examples after the
    /// ones already read rather than changing them.
    pub fn for_stage(&self, stage: Stage, k: usize) -> Vec<ChosenExample> {
        let mut suited: Vec<usize> = (0..self.exchanges.len())
            .filter(|&i| self.stages[i].is_none_or(|s| s <= stage))
            .collect();
        suited.sort_by_key(|&i| (self.stages[i], i));
        suited.into_iter().take(k).map(|index| self.chosen(index, 0.0)).collect()
    }

    /// The exchange at `position`, with its similarity to the query (rounded for the trace).
    fn chosen(&self, position: usize, score: f32) -> ChosenExample {
        ChosenExample {
            index: self.indices[position],
            score: (score * 1000.0).round() / 1000.0,
            user: self.exchanges[position].user.clone(),
            reply: self.exchanges[position].reply.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached layout reads a stage's examples once: a later stage keeps the earlier
    /// stage's examples, in the same order, and adds its own after them; none is too intimate
    /// for the stage.
    #[test]
    fn a_later_stage_adds_examples_after_the_earlier_ones() {
        let persona = crate::prompt::tests::host();
        let fewshot = FewShot::new(&persona, None).unwrap();
        let mut previous: Vec<usize> = Vec::new();
        for stage in [Stage::IceBreaker, Stage::Casual, Stage::Close] {
            let chosen: Vec<usize> = fewshot.for_stage(stage, 20).iter().map(|e| e.index).collect();
            assert!(chosen.starts_with(&previous), "{stage:?}: {chosen:?} after {previous:?}");
            assert!(chosen.iter().all(|&i| persona.examples[i].stage.is_none_or(|s| s <= stage)));
            previous = chosen;
        }
        assert_eq!(previous.len(), persona.examples.len(), "the close stage may use every example");
        assert!(fewshot.for_stage(Stage::IceBreaker, 20).len() < persona.examples.len());
        assert_eq!(fewshot.for_stage(Stage::Close, 2).len(), 2, "at most k");
    }

    /// A tuned persona shows only the examples its tuning names, in the tuning's order within
    /// a stage, and each keeps its index in the persona's file (the trace names it).
    #[test]
    fn a_tuning_chooses_and_orders_the_examples() {
        let mut persona = crate::prompt::tests::host();
        let (first, last) = (persona.examples[0].clone(), persona.examples[3].clone());
        assert!(first.stage.is_none() && last.stage.is_none());
        persona.prompt.examples = Some(vec![last.user.clone(), first.user.clone()]);
        persona.validate().unwrap();
        let fewshot = FewShot::new(&persona, None).unwrap();
        let shown = fewshot.for_stage(Stage::Close, 20);
        let users: Vec<&str> = shown.iter().map(|e| e.user.as_str()).collect();
        assert_eq!(users, [last.user.as_str(), first.user.as_str()]);
        assert_eq!(shown[0].index, 3);
        assert_eq!(shown[1].index, 0);
        let chosen = fewshot.choose(None, None, Stage::Close, 20);
        assert_eq!(chosen.len(), 2, "the per-message choice sees only the named examples too");

        persona.prompt.examples = Some(vec!["Nobody ever said this.".into()]);
        let err = persona.validate().unwrap_err().to_string();
        assert!(err.contains("Nobody ever said this"), "{err}");
        persona.prompt.examples = Some(vec![first.user.clone(), first.user.clone()]);
        assert!(persona.validate().unwrap_err().to_string().contains("twice"));
        persona.prompt.examples = Some(Vec::new());
        assert!(persona.validate().is_err(), "an empty list would silently show nothing");
        persona.prompt.examples = None;
        persona.prompt.stage_examples = Some(0);
        assert!(persona.validate().is_err());
        persona.prompt.stage_examples = Some(crate::layout::MAX_STAGE_EXAMPLES + 1);
        assert!(persona.validate().is_err());
    }
}
