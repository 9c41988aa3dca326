//! Is best of N worth its wait? Turns taken from the dialogues of a finished batch are answered
//! twice from the same state — once as every turn is today (one draft, shown as it is
//! written), once with N drafts and the chooser — and the pairwise judge says which reply is
//! better, in both orders; the time each made the person wait is measured alongside.
//!
//! Replaying logged turns, instead of running two batches, keeps the pair honest: both replies
//! answer the same message after the same conversation, so the judge compares replies, not two
//! conversations that drifted apart after their first difference. The state is rebuilt with
//! [`Pipeline::replay`], as the OpenAI-compatible door does: the stage, closeness and notes of
//! the turns before, without the sentence vectors of the earlier replies (the same for both).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, FixedOffset};
use rapport_core::Generator;
use rapport_pipeline::character::lexical_breaks;
use rapport_pipeline::{Pipeline, TurnEvent};
use serde::{Deserialize, Serialize};

use crate::batch::{append_line, brief_of, read_lines};
use crate::dialogue::{Dialogue, Speaker, Turn};
use crate::judge::{Judge, PairOutcome};
use crate::rubric::Criterion;
use crate::stats::{self, Estimate};
use crate::EvalError;

/// One answer to a replayed turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The reply as shown.
    pub reply: String,
    /// From the message to the first words shown, ms.
    pub first_words_ms: u64,
    /// From the message to the whole reply, ms.
    pub total_ms: u64,
    /// Drafts written (N for best of N; 1 or 2 for one draft and its steered redraft).
    pub drafts: usize,
    /// Of the best-of drafts, those the guards set aside.
    pub set_aside: usize,
    /// Which of the best-of drafts was kept (from 0), when one was.
    pub chosen: Option<usize>,
    /// The chooser's scores of the best-of drafts (none for a draft it did not score).
    pub scores: Vec<Option<f64>>,
    /// Reply tokens written for it, every draft counted.
    pub completion_tokens: u32,
    /// Time the chooser spent scoring, ms (best of N with two clean drafts or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chooser_ms: Option<u64>,
}

/// One replayed turn, answered both ways and judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// `dialogue id#turn`.
    pub id: String,
    /// The persona.
    pub persona: String,
    /// The person's message number in the dialogue, from 1.
    pub turn: usize,
    /// The message answered.
    pub message: String,
    /// One draft, as every turn runs by default.
    pub single: Answer,
    /// Best of N.
    pub best: Answer,
    /// By criterion: which reply the judge preferred in both orders (`single`, `best`) or `tie`.
    pub preferred: BTreeMap<String, String>,
}

/// The turns to replay: the person's message number `turns` of each dialogue that has it, in
/// the dialogues' order, at most `limit` dialogues.
pub fn turns_of<'a>(
    dialogues: &'a [Dialogue],
    turns: &[usize],
    limit: usize,
) -> Vec<(&'a Dialogue, usize)> {
    dialogues
        .iter()
        .take(limit)
        .flat_map(|d| {
            let said = d.turns.iter().filter(|t| t.speaker == Speaker::User).count();
            turns.iter().filter(move |&&t| t >= 1 && t <= said).map(move |&t| (d, t))
        })
        .collect()
}

/// The dialogue up to the person's message `turn`: its greeting, the exchanges before, and the
/// message.
pub(crate) fn split(d: &Dialogue, turn: usize) -> (Option<String>, Vec<(String, String)>, String) {
    let greeting =
        d.turns.first().filter(|t| t.speaker == Speaker::Persona).map(|t| t.text.clone());
    let rest = &d.turns[usize::from(greeting.is_some())..];
    let mut exchanges = Vec::new();
    let mut message = String::new();
    let mut said = 0;
    let mut i = 0;
    while i < rest.len() {
        if rest[i].speaker != Speaker::User {
            i += 1;
            continue;
        }
        said += 1;
        if said == turn {
            message = rest[i].text.clone();
            break;
        }
        let reply = rest.get(i + 1).filter(|t| t.speaker == Speaker::Persona);
        exchanges.push((rest[i].text.clone(), reply.map(|t| t.text.clone()).unwrap_or_default()));
        i += 2;
    }
    (greeting, exchanges, message)
}

/// Answers `message` after the conversation `base`, timing the first words and the whole.
async fn answer(
    pipeline: &Pipeline,
    base: &rapport_pipeline::Conversation,
    message: &str,
    now: DateTime<FixedOffset>,
    generator: &dyn Generator,
) -> Result<Answer, EvalError> {
    let mut conversation = base.clone();
    let started = Instant::now();
    let mut first = None;
    let mut on_event = |e: TurnEvent| {
        if let TurnEvent::Delta(t) = e {
            if !t.trim().is_empty() {
                first.get_or_insert_with(|| started.elapsed().as_millis() as u64);
            }
        }
    };
    let outcome = pipeline
        .respond(&mut conversation, message, now, generator, &mut on_event)
        .await
        .map_err(|e| EvalError::Generation(e.to_string()))?;
    let total_ms = started.elapsed().as_millis() as u64;
    let attempts = &outcome.trace.attempts;
    let candidates = attempts.first().map(|a| a.candidates.as_slice()).unwrap_or(&[]);
    Ok(Answer {
        reply: outcome.reply,
        first_words_ms: first.unwrap_or(total_ms),
        total_ms,
        drafts: attempts.iter().map(|a| a.candidates.len().max(1)).sum(),
        set_aside: candidates.iter().filter(|c| !c.hits.is_empty() || c.error.is_some()).count(),
        chosen: candidates.iter().position(|c| c.chosen),
        scores: candidates.iter().map(|c| c.score).collect(),
        completion_tokens: attempts.iter().filter_map(|a| a.completion_tokens).sum(),
        chooser_ms: attempts.first().and_then(|a| a.chooser.as_ref()).map(|c| c.ms),
    })
}

/// Reads the whole prompt of `message`'s turn into the generator's prefix cache.
async fn warm(
    pipeline: &Pipeline,
    base: &rapport_pipeline::Conversation,
    message: &str,
    now: DateTime<FixedOffset>,
    generator: &dyn Generator,
) -> Result<(), EvalError> {
    let read = pipeline
        .draft_read_ahead(base, message, true, now)
        .map_err(|e| EvalError::Invalid(e.to_string()))?;
    if let Some(request) = read {
        rapport_core::collect_completion(generator.generate(request).await?, |_| {}).await?;
    }
    Ok(())
}

/// The dialogue up to the reply, with `reply` as the persona's answer to the message.
fn answered(d: &Dialogue, turn: usize, reply: &str, which: &str) -> Dialogue {
    let (greeting, exchanges, message) = split(d, turn);
    let mut turns = Vec::new();
    let say = |speaker, text: &str| Turn { speaker, text: text.to_string(), trace: None };
    if let Some(g) = greeting {
        turns.push(say(Speaker::Persona, &g));
    }
    for (m, r) in &exchanges {
        turns.push(say(Speaker::User, m));
        turns.push(say(Speaker::Persona, r));
    }
    turns.push(say(Speaker::User, &message));
    turns.push(say(Speaker::Persona, reply));
    Dialogue {
        id: format!("{}#{turn}:{which}", d.id),
        persona: d.persona.clone(),
        persona_name: d.persona_name.clone(),
        simulator: d.simulator.clone(),
        seed: d.seed,
        turns,
        secret: d.secret.clone(),
        outcome: None,
        error: None,
    }
}

/// What the measurement needs: the two pipelines of each persona (one draft, best of N with
/// its chooser), the engine, and the pairwise judge with its criteria.
pub struct Arms<'a> {
    /// By persona id: the pipeline that writes one draft.
    pub single: &'a BTreeMap<String, Pipeline>,
    /// By persona id: the pipeline that writes N and chooses.
    pub best: &'a BTreeMap<String, Pipeline>,
    /// The engine both write with.
    pub generator: &'a dyn Generator,
    /// The pairwise judge.
    pub judge: &'a Judge,
    /// The criteria it compares on.
    pub criteria: &'a [&'a Criterion],
}

/// Replays `turns` (see [`turns_of`]) both ways and judges each pair, appending every item to
/// `out` (a JSONL file) as it is done; items already in `out` are kept and not run again.
/// Returns every item of `out`.
pub async fn run(
    turns: &[(&Dialogue, usize)],
    arms: &Arms<'_>,
    now: DateTime<FixedOffset>,
    out: &Path,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<Vec<Item>, EvalError> {
    let mut items: Vec<Item> = if out.exists() { read_lines(out)? } else { Vec::new() };
    let done: BTreeSet<String> = items.iter().map(|i| i.id.clone()).collect();
    for &(d, turn) in turns {
        let id = format!("{}#{turn}", d.id);
        if done.contains(&id) {
            progress.inspect(|p| p.inc(1));
            continue;
        }
        let (Some(single), Some(best)) = (arms.single.get(&d.persona), arms.best.get(&d.persona))
        else {
            return Err(EvalError::Invalid(format!("no persona '{}' to replay {id}", d.persona)));
        };
        let (greeting, exchanges, message) = split(d, turn);
        let base = single
            .replay(greeting.as_deref(), &exchanges, now)
            .map_err(|e| EvalError::Invalid(format!("{id}: {e}")))?;
        // The turn's whole prompt is read into the prefix cache first, as the page's paused
        // draft does, so that both arms start from the same warm cache: otherwise the first
        // to run reads the replayed conversation cold (10 s and more on 2 cores) and the other
        // finds it cached. Both prompts are the same; what differs is only what follows.
        warm(single, &base, &message, now, arms.generator).await?;
        // Alternate which arm goes first all the same, so that neither always runs second.
        let (one, many) = if items.len().is_multiple_of(2) {
            let one = answer(single, &base, &message, now, arms.generator).await?;
            (one, answer(best, &base, &message, now, arms.generator).await?)
        } else {
            let many = answer(best, &base, &message, now, arms.generator).await?;
            (answer(single, &base, &message, now, arms.generator).await?, many)
        };
        let brief = brief_of(single.persona());
        let a = answered(d, turn, &one.reply, "single");
        let b = answered(d, turn, &many.reply, "best");
        let verdict = arms.judge.compare(&a, &b, arms.criteria, &brief).await?;
        let preferred = verdict
            .into_iter()
            .map(|(c, o)| {
                let who = match o {
                    PairOutcome::A => "single",
                    PairOutcome::B => "best",
                    PairOutcome::Tie => "tie",
                };
                (c, who.to_string())
            })
            .collect();
        let item = Item {
            id,
            persona: d.persona.clone(),
            turn,
            message,
            single: one,
            best: many,
            preferred,
        };
        append_line(out, &item)?;
        items.push(item);
        progress.inspect(|p| p.inc(1));
    }
    Ok(items)
}

/// How often the judge preferred best of N on one criterion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preference {
    /// The criterion.
    pub criterion: String,
    /// Best of N preferred in both orders.
    pub best: usize,
    /// One draft preferred in both orders.
    pub single: usize,
    /// Ties and disagreements between the two orders.
    pub tie: usize,
    /// Mean of +1 (best), −1 (single), 0 (tie) over the items, with a bootstrap interval.
    pub net: Option<Estimate>,
    /// Two-sided sign-flip permutation p-value of `net` against 0.
    pub p_value: Option<f64>,
    /// Holm-adjusted over the criteria.
    pub p_holm: Option<f64>,
}

/// The measurement's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Replayed turns.
    pub n: usize,
    /// By criterion.
    pub preferences: Vec<Preference>,
    /// First words, one draft: median ms.
    pub single_first_words_ms_p50: Option<f64>,
    /// First words, best of N: median ms.
    pub best_first_words_ms_p50: Option<f64>,
    /// Added wait to the first words (best − single), s, mean with a bootstrap interval.
    pub added_first_words_s: Option<Estimate>,
    /// Added wait to the whole reply, s, mean with a bootstrap interval.
    pub added_total_s: Option<Estimate>,
    /// Reply tokens per turn, one draft and best of N (means).
    pub tokens_per_turn: (Option<f64>, Option<f64>),
    /// What writing the N drafts cost against writing one: best of N's time to the whole reply
    /// less the chooser's, over one draft's time to the whole reply (mean ratio with a
    /// bootstrap interval). N for no gain from batching, 1 for a free batch.
    #[serde(default)]
    pub drafting_ratio: Option<Estimate>,
    /// Time the chooser took per turn, s (mean with a bootstrap interval).
    #[serde(default)]
    pub chooser_s: Option<Estimate>,
    /// Best-of drafts the guards set aside, per turn (mean).
    pub set_aside_per_turn: Option<f64>,
    /// Replies sent that break character by the lexical checks ([`lexical_breaks`]), one draft
    /// and best of N (counts; only for personas whose name was given).
    #[serde(default)]
    pub breaks: (usize, usize),
    /// Turns whose chooser kept a draft other than the first clean one.
    pub chose_other_than_first: usize,
    /// Turns whose best-of reply and one-draft reply were the same text.
    pub same_reply: usize,
}

/// Summarises `items`; `names` gives each persona's name (by id) for the character checks;
/// `seed` fixes the resampling.
pub fn summarise(
    items: &[Item],
    criteria: &[&Criterion],
    names: &BTreeMap<String, String>,
    seed: u64,
) -> Summary {
    let broken = |reply: &str, persona: &str| {
        names.get(persona).is_some_and(|name| !lexical_breaks(reply, name).is_empty())
    };
    let mut preferences: Vec<Preference> = criteria
        .iter()
        .map(|c| {
            let votes: Vec<f64> = items
                .iter()
                .filter_map(|i| i.preferred.get(&c.id))
                .map(|w| match w.as_str() {
                    "best" => 1.0,
                    "single" => -1.0,
                    _ => 0.0,
                })
                .collect();
            let zeros = vec![0.0; votes.len()];
            let pairs: Vec<(usize, usize)> = (0..votes.len()).map(|i| (i, i)).collect();
            let d = stats::difference(&zeros, &votes, Some(&pairs), seed);
            Preference {
                criterion: c.id.clone(),
                best: votes.iter().filter(|&&v| v > 0.0).count(),
                single: votes.iter().filter(|&&v| v < 0.0).count(),
                tie: votes.iter().filter(|&&v| v == 0.0).count(),
                net: d.as_ref().map(|d| d.delta),
                p_value: d.map(|d| d.p_value),
                p_holm: None,
            }
        })
        .collect();
    let raw: Vec<f64> = preferences.iter().map(|p| p.p_value.unwrap_or(1.0)).collect();
    for (p, h) in preferences.iter_mut().zip(stats::holm(&raw)) {
        p.p_holm = p.p_value.map(|_| h);
    }
    let ms = |f: fn(&Item) -> u64| items.iter().map(|i| f(i) as f64).collect::<Vec<_>>();
    let added = |a: Vec<f64>, b: Vec<f64>| {
        let d: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (y - x) / 1000.0).collect();
        stats::mean_ci(&d, seed)
    };
    let tokens =
        |f: fn(&Item) -> u32| stats::mean(&items.iter().map(|i| f(i) as f64).collect::<Vec<_>>());
    Summary {
        n: items.len(),
        preferences,
        single_first_words_ms_p50: stats::median(&ms(|i| i.single.first_words_ms)),
        best_first_words_ms_p50: stats::median(&ms(|i| i.best.first_words_ms)),
        added_first_words_s: added(ms(|i| i.single.first_words_ms), ms(|i| i.best.first_words_ms)),
        added_total_s: added(ms(|i| i.single.total_ms), ms(|i| i.best.total_ms)),
        tokens_per_turn: (
            tokens(|i| i.single.completion_tokens),
            tokens(|i| i.best.completion_tokens),
        ),
        drafting_ratio: stats::mean_ci(
            &items
                .iter()
                .filter(|i| i.single.total_ms > 0)
                .map(|i| {
                    let drafting = i.best.total_ms.saturating_sub(i.best.chooser_ms.unwrap_or(0));
                    drafting as f64 / i.single.total_ms as f64
                })
                .collect::<Vec<_>>(),
            seed,
        ),
        chooser_s: stats::mean_ci(
            &items
                .iter()
                .filter_map(|i| i.best.chooser_ms.map(|ms| ms as f64 / 1000.0))
                .collect::<Vec<_>>(),
            seed,
        ),
        breaks: (
            items.iter().filter(|i| broken(&i.single.reply, &i.persona)).count(),
            items.iter().filter(|i| broken(&i.best.reply, &i.persona)).count(),
        ),
        set_aside_per_turn: stats::mean(
            &items.iter().map(|i| i.best.set_aside as f64).collect::<Vec<_>>(),
        ),
        chose_other_than_first: items
            .iter()
            .filter(|i| {
                let first_clean = i.best.scores.iter().position(Option::is_some);
                i.best.chosen.is_some() && first_clean.is_some() && i.best.chosen != first_clean
            })
            .count(),
        same_reply: items.iter().filter(|i| i.single.reply == i.best.reply).count(),
    }
}

/// The summary as Markdown.
pub fn markdown(s: &Summary, n_drafts: usize, chooser: &str) -> String {
    let mut out = format!(
        "Best of {n_drafts} (chooser: {chooser}) against one draft, {} replayed turns.\n\n\
         | criterion | best of {n_drafts} preferred | one draft preferred | tie | net preference [95% CI] | p | Holm p |\n\
         |---|---|---|---|---|---|---|\n",
        s.n
    );
    for p in &s.preferences {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            p.criterion,
            p.best,
            p.single,
            p.tie,
            p.net.map(|e| e.display(2)).unwrap_or_else(|| "—".into()),
            p.p_value.map(|v| format!("{v:.3}")).unwrap_or_else(|| "—".into()),
            p.p_holm.map(|v| format!("{v:.3}")).unwrap_or_else(|| "—".into()),
        ));
    }
    let secs = |v: Option<f64>| v.map(|v| format!("{:.2} s", v / 1000.0)).unwrap_or("—".into());
    let est = |e: Option<Estimate>| e.map(|e| format!("{} s", e.display(2))).unwrap_or("—".into());
    let num = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or("—".into());
    out.push_str(&format!(
        "\nFirst words p50: {} with one draft, {} with best of {n_drafts}; added wait to the first \
         words {}, to the whole reply {}. Writing the drafts took {} times one draft's time; the \
         chooser {} a turn. Replies that break character: {} with one draft, {} with best of \
         {n_drafts}.\nReply tokens per turn: {} against {}. Drafts set aside \
         by the guards per turn: {}. The chooser kept another than the first clean draft in {} \
         of {} turns; the two replies were the same text in {}.\n",
        secs(s.single_first_words_ms_p50),
        secs(s.best_first_words_ms_p50),
        est(s.added_first_words_s),
        est(s.added_total_s),
        s.drafting_ratio.map(|e| e.display(2)).unwrap_or("—".into()),
        est(s.chooser_s),
        s.breaks.0,
        s.breaks.1,
        num(s.tokens_per_turn.0),
        num(s.tokens_per_turn.1),
        num(s.set_aside_per_turn),
        s.chose_other_than_first,
        s.n,
        s.same_reply,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialogue() -> Dialogue {
        Dialogue::of_turns(&[
            (Speaker::Persona, "Hello!"),
            (Speaker::User, "one"),
            (Speaker::Persona, "r1"),
            (Speaker::User, "two"),
            (Speaker::Persona, "r2"),
            (Speaker::User, "three"),
        ])
    }

    #[test]
    fn a_turn_is_replayed_from_the_exchanges_before_it() {
        let d = dialogue();
        let (greeting, exchanges, message) = split(&d, 3);
        assert_eq!(greeting.as_deref(), Some("Hello!"));
        assert_eq!(exchanges, vec![("one".into(), "r1".into()), ("two".into(), "r2".into())]);
        assert_eq!(message, "three");
        let (_, exchanges, message) = split(&d, 1);
        assert!(exchanges.is_empty());
        assert_eq!(message, "one");
        let a = answered(&d, 2, "new", "best");
        let texts: Vec<&str> = a.turns.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["Hello!", "one", "r1", "two", "new"]);
    }

    #[test]
    fn only_turns_the_dialogue_has_are_taken() {
        let d = [dialogue(), dialogue()];
        assert_eq!(turns_of(&d, &[2, 3, 4], 10).len(), 4, "two dialogues, turns 2 and 3");
        assert_eq!(turns_of(&d, &[2, 3, 4], 1).len(), 2);
        assert!(turns_of(&d, &[0], 10).is_empty());
    }
}
