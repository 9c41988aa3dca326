//! Best of N: several drafts of one reply written together, the ones the guards reject set
//! aside, and a [`DraftChooser`] picking among the rest.
//!
//! Why: at one prompt a small model's drafts differ a lot. The guards catch what can be named
//! (another identity, a leak, a help-desk line); a scorer can rank what cannot (which draft
//! takes the person up, which sounds like her). The price is time: no word can be shown until
//! every draft is finished and scored, so a turn waits for the whole of the slowest draft
//! instead of its first words. How much that buys and costs on a given machine is measured by
//! `rapport eval best-of` (docs/eval/best-of.md); the default is one draft.
//!
//! The engine ([`crate::engine::Pipeline`]) writes the drafts; this module holds the seam to
//! the scorer and the rule that turns scores into a choice, so that both can be tested without
//! a model.

use rapport_core::ChatMessage;

use crate::Persona;

/// Scores finished drafts of the persona's next reply. The evaluation crate's turn scorer is
/// one (the judge reading one reply in its context); a server may use any.
#[async_trait::async_trait]
pub trait DraftChooser: Send + Sync {
    /// A short name for the trace ("turn scorer: engaging").
    fn name(&self) -> &str;

    /// Scores each of `drafts` as `persona`'s reply to `conversation` (what the person has
    /// seen, their message last); higher is better. One entry per draft, `None` where no score
    /// could be read. An error leaves the choice to the order the drafts were written in.
    async fn score(
        &self,
        persona: &Persona,
        conversation: &[ChatMessage],
        drafts: &[String],
    ) -> Result<Vec<Option<f64>>, String>;
}

/// The index of the draft to keep: the highest score; a draft without a score ranks below any
/// scored one; among equals the earlier draft (the order they were asked in carries no
/// preference, so this only keeps the choice reproducible). `None` for no drafts.
pub fn best(scores: &[Option<f64>]) -> Option<usize> {
    let mut best: Option<(usize, Option<f64>)> = None;
    for (i, &s) in scores.iter().enumerate() {
        let s = s.filter(|v| v.is_finite());
        let better = match best {
            None => true,
            Some((_, None)) => s.is_some(),
            Some((_, Some(b))) => s.is_some_and(|v| v > b),
        };
        if better {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_score_wins_and_ties_go_to_the_earlier_draft() {
        assert_eq!(best(&[Some(3.0), Some(4.5), Some(4.0)]), Some(1));
        assert_eq!(best(&[Some(4.0), Some(4.0)]), Some(0));
        assert_eq!(best(&[]), None);
    }

    #[test]
    fn an_unreadable_score_never_beats_a_read_one() {
        assert_eq!(best(&[None, Some(1.0)]), Some(1));
        assert_eq!(best(&[Some(0.0), None]), Some(0));
        assert_eq!(best(&[None, None]), Some(0));
        assert_eq!(best(&[Some(f64::NAN), Some(1.0)]), Some(1));
    }
}
