//! Does the turn scorer see a broken character? Every generated reply of a batch is scored by
//! [`Judge::score_reply`] in the context before it, and the scores are set against what the
//! lexical character checks ([`lexical_breaks`]: another identity, narration, "as an AI",
//! help-desk lines) say of the same reply. The measure is the AUC: the chance that a reply the
//! checks pass scores higher than one they flag (ties half), 0.5 for a scorer blind to it.
//!
//! A scorer that picks among drafts has to prefer the in-character one; a whole-conversation
//! judge that cannot tell 29 breaks per 100 replies from 3 (docs/eval/partner-quality.md) is no
//! evidence that the one-reply scorer can or cannot, so it is measured here.

use std::collections::BTreeSet;
use std::path::Path;

use rapport_pipeline::character::lexical_breaks;
use serde::{Deserialize, Serialize};

use crate::batch::{append_line, read_lines};
use crate::dialogue::{fit_lines, Dialogue, Speaker};
use crate::judge::{Judge, PersonaBrief};
use crate::rubric::{Criterion, Side};
use crate::stats::{self, Estimate};
use crate::EvalError;

/// One generated reply, what the checks found in it, and its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredReply {
    /// `dialogue id#index of the turn`.
    pub id: String,
    /// The checks' hits, by code (empty: in character by the checks).
    pub breaks: Vec<String>,
    /// The turn scorer's expected score; `None` when unreadable.
    pub score: Option<f64>,
}

/// The generated replies of `dialogues` (the greeting is written by hand and left out), at most
/// `limit`, in order.
pub fn replies(dialogues: &[Dialogue], limit: usize) -> Vec<(&Dialogue, usize)> {
    dialogues
        .iter()
        .filter(|d| d.persona_name.is_some())
        .flat_map(|d| {
            d.turns
                .iter()
                .enumerate()
                .filter(|(i, t)| *i > 0 && t.speaker == Speaker::Persona)
                .map(move |(i, _)| (d, i))
        })
        .take(limit)
        .collect()
}

/// Scores `replies` on `criterion`, appending each to `out` (JSONL) as it is done; replies
/// already there are kept and not scored again. Returns every reply of `out`.
pub async fn score(
    replies: &[(&Dialogue, usize)],
    judge: &Judge,
    criterion: &Criterion,
    brief_of: impl Fn(&Dialogue) -> PersonaBrief,
    out: &Path,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<Vec<ScoredReply>, EvalError> {
    let mut scored: Vec<ScoredReply> = if out.exists() { read_lines(out)? } else { Vec::new() };
    let done: BTreeSet<String> = scored.iter().map(|s| s.id.clone()).collect();
    for &(d, i) in replies {
        let id = format!("{}#{i}", d.id);
        if done.contains(&id) {
            progress.inspect(|p| p.inc(1));
            continue;
        }
        let brief = brief_of(d);
        let name = d.persona_name.clone().unwrap_or_else(|| brief.name.clone());
        let lines: Vec<String> = d.turns[..i]
            .iter()
            .map(|t| {
                let who = if t.speaker == Speaker::User { "User" } else { name.as_str() };
                format!("{who}: {}", t.text.replace('\n', " "))
            })
            .collect();
        let before = fit_lines(&lines, judge.config().max_transcript_chars);
        let reply = &d.turns[i].text;
        let verdict = judge
            .score_reply(&before, &reply.replace('\n', " "), &[criterion], Side::Persona, &brief)
            .await?;
        let item = ScoredReply {
            id,
            breaks: lexical_breaks(reply, &name).iter().map(|h| h.code().to_string()).collect(),
            score: verdict.criteria.get(&criterion.id).and_then(|c| c.score),
        };
        append_line(out, &item)?;
        scored.push(item);
        progress.inspect(|p| p.inc(1));
    }
    Ok(scored)
}

/// The chance that a score from `clean` exceeds one from `broken` (ties count half); `None`
/// when either is empty.
pub fn auc(clean: &[f64], broken: &[f64]) -> Option<f64> {
    if clean.is_empty() || broken.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for c in clean {
        for b in broken {
            wins += if c > b {
                1.0
            } else if c == b {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (clean.len() * broken.len()) as f64)
}

/// How well the scores separate the replies the checks flag from the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Separation {
    /// Replies with a readable score.
    pub n: usize,
    /// Of those, flagged by the checks.
    pub broken: usize,
    /// Replies whose score could not be read (left out of everything else).
    pub unreadable: usize,
    /// AUC with a bootstrap interval over replies (resamples without a flagged or without a
    /// clean reply are undefined and counted in the estimate).
    pub auc: Option<Estimate>,
    /// Mean score of the clean replies.
    pub mean_clean: Option<f64>,
    /// Mean score of the flagged ones.
    pub mean_broken: Option<f64>,
}

/// The separation over `scored`; `seed` fixes the resampling.
pub fn separation(scored: &[ScoredReply], seed: u64) -> Separation {
    let read: Vec<(f64, bool)> =
        scored.iter().filter_map(|s| s.score.map(|v| (v, !s.breaks.is_empty()))).collect();
    let split = |idx: &[usize]| {
        let (mut clean, mut broken) = (Vec::new(), Vec::new());
        for &i in idx {
            let (v, b) = read[i];
            if b {
                broken.push(v)
            } else {
                clean.push(v)
            }
        }
        (clean, broken)
    };
    let all: Vec<usize> = (0..read.len()).collect();
    let (clean, broken) = split(&all);
    Separation {
        n: read.len(),
        broken: broken.len(),
        unreadable: scored.len() - read.len(),
        auc: stats::bootstrap(read.len(), 2000, seed, |idx| {
            let (c, b) = split(idx);
            auc(&c, &b)
        }),
        mean_clean: stats::mean(&clean),
        mean_broken: stats::mean(&broken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_is_the_chance_a_clean_reply_scores_higher() {
        assert_eq!(auc(&[4.0, 5.0], &[1.0, 2.0]), Some(1.0));
        assert_eq!(auc(&[1.0], &[2.0]), Some(0.0));
        assert_eq!(auc(&[3.0, 1.0], &[3.0, 2.0]), Some(0.375));
        assert_eq!(auc(&[], &[1.0]), None);
    }

    #[test]
    fn unreadable_scores_are_counted_and_left_out() {
        let r = |breaks: &[&str], score| ScoredReply {
            id: String::new(),
            breaks: breaks.iter().map(|s| s.to_string()).collect(),
            score,
        };
        let s = separation(
            &[
                r(&[], Some(4.0)),
                r(&["character_break"], Some(2.0)),
                r(&[], None),
                r(&[], Some(3.0)),
            ],
            1,
        );
        assert_eq!((s.n, s.broken, s.unreadable), (3, 1, 1));
        assert_eq!(s.auc.map(|e| e.value), Some(1.0));
        assert_eq!(s.mean_clean, Some(3.5));
    }
}
