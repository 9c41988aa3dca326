//! `rapport eval optimize`: program the prompt, let the metric choose it, report the gain on
//! dialogues the search never saw.
//!
//! In the spirit of DSPy's optimisers, the prompt is not written longer by hand: a persona's
//! choices — which of its examples to show and in what order, how many per stage, how the
//! notes ask her to carry the conversation, the layout — form a search space
//! ([`Space`]), each point of which is a [`PromptTuning`]. Candidates are drawn from it
//! ([`candidates`]; the persona as it is, `c0`, is always one) and scored on turns of a
//! finished batch's simulated dialogues: each candidate answers the logged message after the
//! logged conversation ([`Pipeline::replay`], as `eval best-of` does), so every candidate
//! answers the same messages and the comparison is paired. A reply's value ([`Scored::value`])
//! is the judge's turn score on the chosen criteria, less a cost for what the exact checks
//! find: a sent reply that breaks character, a first draft the guards had to reject.
//!
//! The dialogues are split by simulator × seed ([`split`]): the search uses only the training
//! cells, by successive halving ([`Plan`]; every candidate on a few turns, the better half on
//! twice as many, until one is left), and the winner and `c0` are then scored on the held-out
//! cells, whose paired difference is the result. A number taken from the turns the search
//! chose on would flatter the winner by exactly the luck that made it win.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, FixedOffset};
use rapport_core::{ChatMessage, Generator};
use rapport_pipeline::character::lexical_breaks;
use rapport_pipeline::layout::{NotePhrasing, PromptLayout, PromptTuning};
use rapport_pipeline::trace::AttemptOutcome;
use rapport_pipeline::{Persona, Pipeline};
use serde::{Deserialize, Serialize};

use crate::batch::{append_line, brief_of, read_lines};
use crate::best_of::split as split_turn;
use crate::choose::transcript;
use crate::dialogue::Dialogue;
use crate::judge::Judge;
use crate::rubric::{Criterion, Side};
use crate::stats::{self, Estimate, SplitMix64};
use crate::EvalError;

/// What the search may change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Space {
    /// Layouts to try.
    pub layouts: Vec<PromptLayout>,
    /// Examples per stage to try.
    pub stage_examples: Vec<usize>,
    /// Note phrasings to try.
    pub phrasings: Vec<NotePhrasing>,
    /// Whether to draw subsets (and orders) of the persona's examples; otherwise every
    /// example, in the file's order.
    pub example_subsets: bool,
}

impl Space {
    /// Checks that every dimension has something to draw.
    pub fn check(&self) -> Result<(), EvalError> {
        if self.layouts.is_empty() || self.stage_examples.is_empty() || self.phrasings.is_empty() {
            return Err(EvalError::Invalid(
                "the search space needs at least one layout, one examples-per-stage count and one phrasing"
                    .into(),
            ));
        }
        if let Some(k) = self
            .stage_examples
            .iter()
            .find(|&&k| !(1..=rapport_pipeline::layout::MAX_STAGE_EXAMPLES).contains(&k))
        {
            return Err(EvalError::Invalid(format!(
                "examples per stage {k} must be 1 to {}",
                rapport_pipeline::layout::MAX_STAGE_EXAMPLES
            )));
        }
        Ok(())
    }
}

/// One point of the space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// `c0` for the persona as it is, then `c1`, `c2`, …
    pub id: String,
    /// What it sets.
    pub tuning: PromptTuning,
}

/// `c0` (the persona's own tuning, often none) and up to `count` distinct draws from `space`.
/// Every draw sets every choice, so nothing of the persona's own tuning carries over. A drawn
/// subset of examples keeps at least one example for every stage (so no stage is left
/// without any) and is shuffled, since the order of examples steers a small model too.
/// Fewer than `count` come back when the space has fewer distinct points.
pub fn candidates(persona: &Persona, space: &Space, count: usize, seed: u64) -> Vec<Candidate> {
    let mut out = vec![Candidate { id: "c0".into(), tuning: persona.prompt.clone() }];
    let mut rng = SplitMix64::new(seed);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    seen.insert(toml::to_string(&persona.prompt).unwrap_or_default());
    let pick = |rng: &mut SplitMix64, n: usize| rng.below(n);
    // Bounded: a small space runs out of new points long before this.
    for _ in 0..count.saturating_mul(50) {
        if out.len() > count {
            break;
        }
        let examples = space.example_subsets.then(|| example_subset(persona, &mut rng));
        let tuning = PromptTuning {
            layout: Some(space.layouts[pick(&mut rng, space.layouts.len())]),
            examples: examples.flatten(),
            stage_examples: Some(space.stage_examples[pick(&mut rng, space.stage_examples.len())]),
            phrasing: Some(space.phrasings[pick(&mut rng, space.phrasings.len())]),
        };
        if seen.insert(toml::to_string(&tuning).unwrap_or_default()) {
            out.push(Candidate { id: format!("c{}", out.len()), tuning });
        }
    }
    out
}

/// A shuffled subset of the persona's examples by `user` line, at least half of them and at
/// least one of each stage they name; `None` for a persona with fewer than two examples
/// (nothing to choose).
fn example_subset(persona: &Persona, rng: &mut SplitMix64) -> Option<Vec<String>> {
    let n = persona.examples.len();
    if n < 2 {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let keep = n.div_ceil(2) + rng.below(n - n.div_ceil(2) + 1);
    let mut chosen: Vec<usize> = order[..keep].to_vec();
    let stages: BTreeSet<_> = persona.examples.iter().map(|e| e.stage).collect();
    for stage in stages {
        if !chosen.iter().any(|&i| persona.examples[i].stage == stage) {
            let first = order.iter().find(|&&i| persona.examples[i].stage == stage);
            chosen.extend(first);
        }
    }
    Some(chosen.into_iter().map(|i| persona.examples[i].user.clone()).collect())
}

/// Which simulator × seed cells train the search and which judge its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// `simulator/seed` cells the search scores candidates on.
    pub train: Vec<String>,
    /// `simulator/seed` cells only the winner and `c0` are scored on, after the search.
    pub held_out: Vec<String>,
}

impl Split {
    /// Whether dialogue `d` belongs to the held-out cells.
    pub fn is_held_out(&self, d: &Dialogue) -> bool {
        self.held_out.contains(&cell(d))
    }
}

/// A dialogue's simulator × seed cell.
fn cell(d: &Dialogue) -> String {
    format!(
        "{}/{}",
        d.simulator.as_deref().unwrap_or("logged"),
        d.seed.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
    )
}

/// Splits the cells of `dialogues` at random (by `seed`): `held_out_share` of them, rounded
/// up, are held out. Refused when either side would be empty.
pub fn split(dialogues: &[Dialogue], held_out_share: f64, seed: u64) -> Result<Split, EvalError> {
    if !(held_out_share > 0.0 && held_out_share < 1.0) {
        return Err(EvalError::Invalid(format!(
            "the held-out share {held_out_share} must be between 0 and 1"
        )));
    }
    let mut cells: Vec<String> =
        dialogues.iter().map(cell).collect::<BTreeSet<_>>().into_iter().collect();
    let n = cells.len();
    let held = ((n as f64) * held_out_share).ceil() as usize;
    if n < 2 || held >= n {
        return Err(EvalError::Invalid(format!(
            "{n} simulator × seed cell(s) cannot be split into training and held-out ones: run the batch with more simulators or seeds"
        )));
    }
    let mut rng = SplitMix64::new(seed);
    for i in (1..n).rev() {
        cells.swap(i, rng.below(i + 1));
    }
    let mut held_out = cells.split_off(n - held);
    cells.sort();
    held_out.sort();
    Ok(Split { train: cells, held_out })
}

/// One candidate's answer to one replayed turn, scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// The candidate.
    pub candidate: String,
    /// `dialogue id#turn`.
    pub item: String,
    /// The reply as sent.
    pub reply: String,
    /// By criterion: the judge's expected score (none where it could not be read).
    pub scores: BTreeMap<String, Option<f64>>,
    /// Lexical breaks of character in the sent reply ([`lexical_breaks`]).
    pub breaks: usize,
    /// The guards rejected the first draft (a redraft, or a fallback line, was sent).
    pub redrafted: bool,
    /// What they rejected it for ([`rapport_pipeline::guards::GuardHit::code`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_draft_hits: Vec<String>,
    /// Prompt tokens of the first attempt as the backend counted them (missing when the
    /// draft was cut short and its stream dropped before the count, as most are).
    pub prompt_tokens: Option<u32>,
    /// The pipeline's estimate of the prompt's tokens, there for every answer.
    #[serde(default)]
    pub estimated_prompt_tokens: Option<u32>,
    /// From the message to the whole reply, ms.
    pub reply_ms: u64,
}

impl Scored {
    /// The reply's judged score (mean over the criteria; none unless every one was read).
    pub fn judged(&self) -> Option<f64> {
        let read: Vec<f64> = self.scores.values().filter_map(|s| *s).collect();
        (!read.is_empty() && read.len() == self.scores.len()).then(|| stats::mean(&read)).flatten()
    }

    /// Faults the exact checks found: a sent reply that breaks character counts 1, a first
    /// draft the guards rejected half (it was caught, but it cost the person a redraft's wait,
    /// and it says the prompt drew a bad draft).
    pub fn faults(&self) -> f64 {
        f64::from(u8::from(self.breaks > 0)) + 0.5 * f64::from(u8::from(self.redrafted))
    }

    /// What the search maximises: the judged score less `fault_cost` per fault. None when the
    /// judge's score could not be read.
    pub fn value(&self, fault_cost: f64) -> Option<f64> {
        self.judged().map(|j| j - fault_cost * self.faults())
    }
}

/// What scoring needs: a pipeline per candidate, the engine, the judge and its criteria.
pub struct Bench<'a> {
    /// By candidate id: the persona with that candidate's tuning.
    pub pipelines: &'a BTreeMap<String, Pipeline>,
    /// The engine every candidate writes with.
    pub generator: &'a dyn Generator,
    /// The judge's turn scorer.
    pub judge: &'a Judge,
    /// The criteria it scores.
    pub criteria: &'a [&'a Criterion],
}

/// Candidate `id` answers turn `turn` of `d`, and the judge scores the reply.
async fn score_one(
    bench: &Bench<'_>,
    id: &str,
    d: &Dialogue,
    turn: usize,
    now: DateTime<FixedOffset>,
) -> Result<Scored, EvalError> {
    let item = format!("{}#{turn}", d.id);
    let pipeline = bench
        .pipelines
        .get(id)
        .ok_or_else(|| EvalError::Invalid(format!("no pipeline for candidate {id}")))?;
    let persona = pipeline.persona();
    let (greeting, exchanges, message) = split_turn(d, turn);
    let mut conversation = pipeline
        .replay(greeting.as_deref(), &exchanges, now)
        .map_err(|e| EvalError::Invalid(format!("{item}: {e}")))?;
    let mut seen = conversation.history.clone();
    seen.push(ChatMessage::user(message.clone()));
    let started = Instant::now();
    let outcome = pipeline
        .respond(
            &mut conversation,
            &message,
            now,
            bench.generator,
            &mut |_: rapport_pipeline::TurnEvent| {},
        )
        .await
        .map_err(|e| EvalError::Generation(format!("{item}, {id}: {e}")))?;
    let reply_ms = started.elapsed().as_millis() as u64;
    let first = outcome.trace.attempts.first();
    let first_draft_hits: Vec<String> = match first.map(|a| &a.outcome) {
        Some(AttemptOutcome::Rejected { hits }) => hits.iter().map(|h| h.code().into()).collect(),
        _ => Vec::new(),
    };
    let redrafted = outcome.trace.attempts.len() > 1
        || first.is_some_and(|a| !matches!(a.outcome, AttemptOutcome::Accepted));
    let transcript = transcript(&persona.name, &seen, bench.judge.config().max_transcript_chars);
    let verdict = bench
        .judge
        .score_reply(
            &transcript,
            &outcome.reply.replace('\n', " "),
            bench.criteria,
            Side::Persona,
            &brief_of(persona),
        )
        .await?;
    Ok(Scored {
        candidate: id.to_string(),
        item,
        breaks: lexical_breaks(&outcome.reply, &persona.name).len(),
        reply: outcome.reply,
        scores: verdict.criteria.into_iter().map(|(c, v)| (c, v.score)).collect(),
        redrafted,
        first_draft_hits,
        prompt_tokens: first.and_then(|a| a.prompt_tokens),
        estimated_prompt_tokens: u32::try_from(outcome.trace.prompt.estimated_tokens).ok(),
        reply_ms,
    })
}

/// Everything scored so far, kept in a JSONL file as it is done, so that a search stopped
/// half-way resumes where it stopped.
pub struct Ledger {
    path: std::path::PathBuf,
    scored: Vec<Scored>,
}

impl Ledger {
    /// Opens `path` (read back when it exists).
    pub fn open(path: &Path) -> Result<Self, EvalError> {
        let scored = if path.exists() { read_lines(path)? } else { Vec::new() };
        Ok(Self { path: path.to_path_buf(), scored })
    }

    /// Everything scored.
    pub fn scored(&self) -> &[Scored] {
        &self.scored
    }

    fn has(&self, candidate: &str, item: &str) -> bool {
        self.scored.iter().any(|s| s.candidate == candidate && s.item == item)
    }

    /// Scores each of `ids` on each of `turns` not scored yet; one turn at a time, its
    /// candidates in an order that rotates from turn to turn, so that none is always first
    /// to read a conversation into the prefix cache.
    pub async fn score(
        &mut self,
        bench: &Bench<'_>,
        ids: &[String],
        turns: &[(&Dialogue, usize)],
        now: DateTime<FixedOffset>,
        progress: Option<&indicatif::ProgressBar>,
    ) -> Result<(), EvalError> {
        for (k, &(d, turn)) in turns.iter().enumerate() {
            let item = format!("{}#{turn}", d.id);
            for j in 0..ids.len() {
                let id = &ids[(j + k) % ids.len()];
                if !self.has(id, &item) {
                    let scored = score_one(bench, id, d, turn, now).await?;
                    append_line(&self.path, &scored)?;
                    self.scored.push(scored);
                }
                progress.inspect(|p| p.inc(1));
            }
        }
        Ok(())
    }

    /// Candidate `id`'s values on `items`, in their order (none where it has no readable
    /// score).
    pub fn values(&self, id: &str, items: &[String], fault_cost: f64) -> Vec<Option<f64>> {
        self.answers(id, items).into_iter().map(|s| s.and_then(|s| s.value(fault_cost))).collect()
    }

    /// Candidate `id`'s scored answers on `items`, in their order.
    pub fn answers<'a>(&'a self, id: &str, items: &[String]) -> Vec<Option<&'a Scored>> {
        items
            .iter()
            .map(|item| self.scored.iter().find(|s| s.candidate == id && &s.item == item))
            .collect()
    }
}

/// The successive-halving schedule: how many training turns each round scores its candidates
/// on (cumulative: a round adds turns to the last one's), and how many go on to the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// By round: (turns scored on by the end of the round, candidates in the round).
    pub rounds: Vec<(usize, usize)>,
}

impl Plan {
    /// `candidates` candidates, `first` turns in the first round, `available` training turns:
    /// each round doubles the turns and halves the candidates (rounding up) until one is left
    /// or the turns run out. A last round with several candidates is decided on every turn.
    pub fn new(candidates: usize, first: usize, available: usize) -> Self {
        let mut rounds = Vec::new();
        let (mut n, mut turns) = (candidates, first.clamp(1, available.max(1)));
        while n > 1 {
            rounds.push((turns.min(available), n));
            if turns >= available {
                break;
            }
            n = n.div_ceil(2);
            turns = turns.saturating_mul(2);
        }
        Self { rounds }
    }
}

/// One candidate's standing after a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    /// The candidate.
    pub candidate: String,
    /// What it sets ([`PromptTuning::describe`]).
    pub tuning: String,
    /// Mean value over the round's turns, with a bootstrap interval.
    pub value: Option<Estimate>,
    /// Mean judged score.
    pub judged: Option<f64>,
    /// Faults per reply (see [`Scored::faults`]).
    pub faults: Option<f64>,
    /// Went on to the next round (or won the last).
    pub kept: bool,
}

/// One round of the search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// Training turns scored on.
    pub turns: usize,
    /// Its candidates, best first.
    pub standings: Vec<Standing>,
}

/// Ranks `ids` on `items` by mean value, best first (a candidate with no readable value
/// last); ties keep `ids`' order, so `c0` wins a tie against a draw.
pub fn rank(
    ledger: &Ledger,
    ids: &[String],
    items: &[String],
    fault_cost: f64,
) -> Vec<(String, Option<f64>)> {
    let mut ranked: Vec<(String, Option<f64>)> = ids
        .iter()
        .map(|id| {
            let v: Vec<f64> = ledger.values(id, items, fault_cost).into_iter().flatten().collect();
            (id.clone(), stats::mean(&v))
        })
        .collect();
    ranked.sort_by(|a, b| {
        let key = |v: Option<f64>| v.unwrap_or(f64::NEG_INFINITY);
        key(b.1).total_cmp(&key(a.1))
    });
    ranked
}

/// A round's standings, for the report.
pub fn standings(
    ledger: &Ledger,
    candidates: &[Candidate],
    ranked: &[(String, Option<f64>)],
    items: &[String],
    kept: usize,
    fault_cost: f64,
    seed: u64,
) -> Vec<Standing> {
    ranked
        .iter()
        .enumerate()
        .map(|(i, (id, _))| {
            let answers: Vec<&Scored> = ledger.answers(id, items).into_iter().flatten().collect();
            let values: Vec<f64> = answers.iter().filter_map(|s| s.value(fault_cost)).collect();
            let judged: Vec<f64> = answers.iter().filter_map(|s| s.judged()).collect();
            let faults: Vec<f64> = answers.iter().map(|s| s.faults()).collect();
            Standing {
                candidate: id.clone(),
                tuning: candidates
                    .iter()
                    .find(|c| &c.id == id)
                    .map(|c| c.tuning.describe())
                    .unwrap_or_default(),
                value: stats::mean_ci(&values, seed),
                judged: stats::mean(&judged),
                faults: stats::mean(&faults),
                kept: i < kept,
            }
        })
        .collect()
}

/// One measure of the held-out comparison: winner − `c0`, paired by turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gain {
    /// What is compared: `value`, a criterion's id, `faults`, `breaks`, `redrafts`,
    /// `prompt_tokens` or `estimated_prompt_tokens`.
    pub measure: String,
    /// Mean for `c0`.
    pub before: Option<f64>,
    /// Mean for the winner.
    pub after: Option<f64>,
    /// Winner − `c0`, mean of per-turn differences with a bootstrap interval.
    pub delta: Option<Estimate>,
    /// Sign-flip permutation p-value.
    pub p_value: Option<f64>,
    /// Holm-adjusted over the judged measures and `value`.
    pub p_holm: Option<f64>,
    /// Turns both have a number for.
    pub n: usize,
}

/// The winner against `c0` on the held-out `items`, measure by measure.
pub fn held_out_gains(
    ledger: &Ledger,
    winner: &str,
    items: &[String],
    criteria: &[&Criterion],
    fault_cost: f64,
    seed: u64,
) -> Vec<Gain> {
    let before = ledger.answers("c0", items);
    let after = ledger.answers(winner, items);
    let measure = |name: &str, f: &dyn Fn(&Scored) -> Option<f64>| {
        let pairs: Vec<(f64, f64)> =
            before.iter().zip(&after).filter_map(|(a, b)| Some((f((*a)?)?, f((*b)?)?))).collect();
        let (a, b): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
        let index: Vec<(usize, usize)> = (0..pairs.len()).map(|i| (i, i)).collect();
        let d = stats::difference(&a, &b, Some(&index), seed);
        Gain {
            measure: name.to_string(),
            before: stats::mean(&a),
            after: stats::mean(&b),
            delta: d.as_ref().map(|d| d.delta),
            p_value: d.map(|d| d.p_value),
            p_holm: None,
            n: pairs.len(),
        }
    };
    let mut gains = vec![measure("value", &|s| s.value(fault_cost))];
    for c in criteria {
        gains.push(measure(&c.id, &|s| s.scores.get(&c.id).copied().flatten()));
    }
    let raw: Vec<f64> = gains.iter().map(|g| g.p_value.unwrap_or(1.0)).collect();
    for (g, h) in gains.iter_mut().zip(stats::holm(&raw)) {
        g.p_holm = g.p_value.map(|_| h);
    }
    gains.push(measure("faults", &|s| Some(s.faults())));
    gains.push(measure("breaks", &|s| Some(f64::from(u8::from(s.breaks > 0)))));
    gains.push(measure("redrafts", &|s| Some(f64::from(u8::from(s.redrafted)))));
    gains.push(measure("prompt_tokens", &|s| s.prompt_tokens.map(f64::from)));
    gains.push(measure("estimated_prompt_tokens", &|s| s.estimated_prompt_tokens.map(f64::from)));
    gains
}

/// The search's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The persona searched for.
    pub persona: String,
    /// The split.
    pub split: Split,
    /// Training and held-out turns.
    pub train_turns: usize,
    /// Held-out turns.
    pub held_out_turns: usize,
    /// Every round of the search.
    pub rounds: Vec<Round>,
    /// The candidate the search kept.
    pub winner: Candidate,
    /// The winner against `c0` on the held-out turns (empty when `c0` won).
    pub held_out: Vec<Gain>,
    /// What a fault costs in judged points.
    pub fault_cost: f64,
}

impl Outcome {
    /// Whether the held-out turns show the winner better than `c0` by value, beyond chance
    /// (Holm-adjusted p below 0.05 and a positive difference).
    pub fn significant_gain(&self) -> bool {
        self.held_out.iter().find(|g| g.measure == "value").is_some_and(|g| {
            g.p_holm.is_some_and(|p| p < 0.05) && g.delta.is_some_and(|d| d.value > 0.0)
        })
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let num = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into());
        let mut out = format!(
            "# Prompt search for `{}`\n\nSplit by simulator × seed: trained on {} ({} turns), \
             held out {} ({} turns). Value = judged score (1–5, mean of the criteria) − {} × \
             faults (a sent break of character 1, a first draft rejected ½).\n\n## Search \
             (training turns only)\n",
            self.persona,
            self.split.train.join(", "),
            self.train_turns,
            self.split.held_out.join(", "),
            self.held_out_turns,
            self.fault_cost,
        );
        for (i, r) in self.rounds.iter().enumerate() {
            out.push_str(&format!(
                "\nRound {} — {} turns\n\n| candidate | tuning | value [95% CI] | judged | faults / reply | kept |\n|---|---|---|---|---|---|\n",
                i + 1,
                r.turns
            ));
            for s in &r.standings {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    s.candidate,
                    s.tuning,
                    s.value.map(|e| e.display(2)).unwrap_or_else(|| "—".into()),
                    num(s.judged),
                    num(s.faults),
                    if s.kept { "yes" } else { "" }
                ));
            }
        }
        out.push_str(&format!(
            "\n## Held out\n\nWinner `{}` ({}).\n",
            self.winner.id,
            self.winner.tuning.describe()
        ));
        if self.held_out.is_empty() {
            out.push_str(
                "\nThe persona as it is (`c0`) won the search: there is nothing to compare, \
                 and no tuning file is written.\n",
            );
            return out;
        }
        out.push_str(
            "\n| measure | c0 | winner | winner − c0 [95% CI] | p | Holm p | n |\n|---|---|---|---|---|---|---|\n",
        );
        for g in &self.held_out {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                g.measure,
                num(g.before),
                num(g.after),
                g.delta.map(|e| e.display(2)).unwrap_or_else(|| "—".into()),
                g.p_value.map(|v| format!("{v:.3}")).unwrap_or_else(|| "—".into()),
                g.p_holm.map(|v| format!("{v:.3}")).unwrap_or_else(|| "—".into()),
                g.n,
            ));
        }
        out.push_str(if self.significant_gain() {
            "\nThe winner is better than the persona as it is on turns the search never saw.\n"
        } else {
            "\nOn the held-out turns the winner is not significantly better than the persona as \
             it is: its tuning file is written, but adopting it is not supported by this run.\n"
        });
        out
    }

    /// The tuning file for the winner: its choices, and in comments how they were found and
    /// what the held-out turns showed. None when `c0` won.
    pub fn tuning_file(&self, command: &str) -> Option<String> {
        if self.winner.id == "c0" {
            return None;
        }
        let value = self.held_out.iter().find(|g| g.measure == "value");
        let mut head = format!(
            "# Prompt tuning for the persona '{}', written by `rapport eval optimize`.\n# {command}\n",
            self.persona
        );
        if let Some(g) = value {
            head.push_str(&format!(
                "# Held-out value (winner − as it was), n = {}: {} (Holm p {}){}.\n",
                g.n,
                g.delta.map(|e| e.display(2)).unwrap_or_else(|| "—".into()),
                g.p_holm.map(|p| format!("{p:.3}")).unwrap_or_else(|| "—".into()),
                if self.significant_gain() { "" } else { ", not significant" }
            ));
        }
        head.push_str(
            "# Put it beside the persona's file as <id>.prompt.toml to use it; delete it to undo.\n",
        );
        Some(head + &toml::to_string(&self.winner.tuning).expect("a tuning serialises"))
    }
}

/// The turns of `dialogues` (see [`crate::best_of::turns_of`]) in an order drawn by `seed`,
/// so that each round's first turns are a spread of dialogues and turns, not the first
/// dialogue's.
pub fn shuffled<T>(mut turns: Vec<T>, seed: u64) -> Vec<T> {
    let mut rng = SplitMix64::new(seed);
    for i in (1..turns.len()).rev() {
        turns.swap(i, rng.below(i + 1));
    }
    turns
}

/// What [`search`] is given.
pub struct Search<'a> {
    /// The persona.
    pub persona: &'a str,
    /// The candidates ([`candidates`]).
    pub candidates: &'a [Candidate],
    /// The split.
    pub split: &'a Split,
    /// Training turns, in the order rounds take them.
    pub train: &'a [(&'a Dialogue, usize)],
    /// Held-out turns.
    pub held_out: &'a [(&'a Dialogue, usize)],
    /// Turns of the first round.
    pub first_round: usize,
    /// Judged points a fault costs.
    pub fault_cost: f64,
    /// Resampling seed.
    pub seed: u64,
}

/// Runs the search and the held-out comparison, scoring into `ledger` (what it already holds
/// is not run again).
pub async fn search(
    s: &Search<'_>,
    bench: &Bench<'_>,
    ledger: &mut Ledger,
    now: DateTime<FixedOffset>,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<Outcome, EvalError> {
    let item = |(d, t): &(&Dialogue, usize)| format!("{}#{t}", d.id);
    let plan = Plan::new(s.candidates.len(), s.first_round, s.train.len());
    let mut alive: Vec<String> = s.candidates.iter().map(|c| c.id.clone()).collect();
    let mut rounds = Vec::new();
    for (i, &(turns, _)) in plan.rounds.iter().enumerate() {
        let train = &s.train[..turns];
        ledger.score(bench, &alive, train, now, progress).await?;
        let items: Vec<String> = train.iter().map(item).collect();
        let ranked = rank(ledger, &alive, &items, s.fault_cost);
        if ranked.iter().all(|(_, v)| v.is_none()) {
            // Ranking on nothing would hand the search to whichever candidate is listed first.
            return Err(EvalError::Invalid(format!(
                "the judge read no score for any answer of round {} ({} turns): its model gives the digits too little probability to read; use a larger judge (--judge-model, --judge-url). The answers are kept in the directory",
                i + 1,
                turns
            )));
        }
        let keep = plan.rounds.get(i + 1).map(|r| r.1).unwrap_or(1);
        rounds.push(Round {
            turns,
            standings: standings(ledger, s.candidates, &ranked, &items, keep, s.fault_cost, s.seed),
        });
        alive = ranked.into_iter().take(keep).map(|(id, _)| id).collect();
    }
    let winner = s
        .candidates
        .iter()
        .find(|c| alive.first() == Some(&c.id))
        .cloned()
        .unwrap_or_else(|| s.candidates[0].clone());
    let mut held_out = Vec::new();
    if winner.id != "c0" {
        let ids = vec!["c0".to_string(), winner.id.clone()];
        ledger.score(bench, &ids, s.held_out, now, progress).await?;
        let items: Vec<String> = s.held_out.iter().map(item).collect();
        held_out = held_out_gains(ledger, &winner.id, &items, bench.criteria, s.fault_cost, s.seed);
    }
    Ok(Outcome {
        persona: s.persona.to_string(),
        split: s.split.clone(),
        train_turns: s.train.len(),
        held_out_turns: s.held_out.len(),
        rounds,
        winner,
        held_out,
        fault_cost: s.fault_cost,
    })
}

/// How many answers [`search`] may score at most: for a progress bar.
pub fn most_answers(candidates: usize, first_round: usize, train: usize, held_out: usize) -> u64 {
    let plan = Plan::new(candidates, first_round, train);
    let searched: usize = plan.rounds.iter().map(|&(turns, n)| turns * n).sum();
    (searched + 2 * held_out) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialogue::Speaker;

    fn host() -> Persona {
        Persona::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/personas/wedding-host.toml"),
        )
        .unwrap()
    }

    fn space() -> Space {
        Space {
            layouts: vec![PromptLayout::Compact, PromptLayout::CachedExchanges],
            stage_examples: vec![3, 8],
            phrasings: NotePhrasing::ALL.to_vec(),
            example_subsets: true,
        }
    }

    /// The persona as it is comes first; the draws are distinct, valid for the persona (it
    /// loads them), keep an example for every stage, and are the same for the same seed.
    #[test]
    fn candidates_are_distinct_valid_draws_after_the_persona_as_it_is() {
        let persona = host();
        let drawn = candidates(&persona, &space(), 6, 7);
        assert_eq!(drawn.len(), 7);
        assert_eq!(drawn[0].id, "c0");
        assert_eq!(drawn[0].tuning, persona.prompt);
        let distinct: BTreeSet<String> =
            drawn.iter().map(|c| toml::to_string(&c.tuning).unwrap()).collect();
        assert_eq!(distinct.len(), drawn.len());
        let stages: BTreeSet<_> = persona.examples.iter().map(|e| e.stage).collect();
        for c in &drawn[1..] {
            let mut tuned = persona.clone();
            tuned.prompt = c.tuning.clone();
            tuned.validate().unwrap();
            let shown: BTreeSet<_> =
                tuned.example_order().iter().map(|&i| persona.examples[i].stage).collect();
            assert_eq!(shown, stages, "{}: a stage lost all its examples", c.id);
            assert!(c.tuning.layout.is_some() && c.tuning.phrasing.is_some());
        }
        assert_eq!(drawn, candidates(&persona, &space(), 6, 7));
        assert_ne!(drawn, candidates(&persona, &space(), 6, 8));
        // A space of one point has one draw to give, whatever is asked.
        let tiny = Space {
            layouts: vec![PromptLayout::Compact],
            stage_examples: vec![8],
            phrasings: vec![NotePhrasing::Curious],
            example_subsets: false,
        };
        assert_eq!(candidates(&persona, &tiny, 5, 1).len(), 2);
        assert!(Space { phrasings: vec![], ..tiny.clone() }.check().is_err());
        assert!(Space { stage_examples: vec![0], ..tiny }.check().is_err());
    }

    fn dialogue(simulator: &str, seed: u64) -> Dialogue {
        let mut d = Dialogue::of_turns(&[
            (Speaker::Persona, "Hello!"),
            (Speaker::User, "one"),
            (Speaker::Persona, "r1"),
            (Speaker::User, "two"),
        ]);
        d.id = format!("{simulator}-{seed}");
        d.simulator = Some(simulator.into());
        d.seed = Some(seed);
        d
    }

    /// Cells are split whole (no cell on both sides), reproducibly, and a split that would
    /// leave a side empty is refused.
    #[test]
    fn the_split_keeps_each_simulator_and_seed_on_one_side() {
        let dialogues: Vec<Dialogue> = ["shy", "pushy", "troll", "curious", "grieving"]
            .iter()
            .flat_map(|s| [dialogue(s, 1), dialogue(s, 2), dialogue(s, 2)])
            .collect();
        let split = split(&dialogues, 0.5, 3).unwrap();
        assert_eq!(split.train.len() + split.held_out.len(), 10);
        assert_eq!(split.held_out.len(), 5);
        assert!(split.train.iter().all(|c| !split.held_out.contains(c)));
        assert_eq!(split, super::split(&dialogues, 0.5, 3).unwrap());
        let held = dialogues.iter().filter(|d| split.is_held_out(d)).count();
        assert!(held > 0 && held < dialogues.len());
        assert!(super::split(&dialogues[..1], 0.5, 3).is_err(), "one cell");
        assert!(super::split(&dialogues, 0.0, 3).is_err());
        assert!(super::split(&dialogues, 1.0, 3).is_err());
    }

    /// Each round doubles the turns and halves the candidates; the last round is decided on
    /// every turn when the turns run out first; one candidate needs no round.
    #[test]
    fn successive_halving_doubles_turns_and_halves_candidates() {
        assert_eq!(Plan::new(7, 4, 40).rounds, [(4, 7), (8, 4), (16, 2)]);
        assert_eq!(Plan::new(7, 4, 10).rounds, [(4, 7), (8, 4), (10, 2)]);
        assert_eq!(Plan::new(7, 4, 5).rounds, [(4, 7), (5, 4)]);
        assert!(Plan::new(1, 4, 40).rounds.is_empty());
        assert_eq!(Plan::new(2, 50, 10).rounds, [(10, 2)]);
        assert_eq!(most_answers(7, 4, 40, 10), (28 + 32 + 32 + 20) as u64);
    }

    fn scored(candidate: &str, item: &str, score: f64, breaks: usize, redrafted: bool) -> Scored {
        Scored {
            candidate: candidate.into(),
            item: item.into(),
            reply: String::new(),
            scores: [("in_role".to_string(), Some(score)), ("engaging".to_string(), Some(score))]
                .into(),
            breaks,
            redrafted,
            first_draft_hits: Vec::new(),
            prompt_tokens: Some(100),
            estimated_prompt_tokens: Some(90),
            reply_ms: 1,
        }
    }

    /// A reply's value is its judged score less the cost of its faults; a reply the judge
    /// could not read has none, and ranking puts the better mean first with ties to `c0`.
    #[test]
    fn faults_cost_value_and_ranking_prefers_the_persona_on_a_tie() {
        let clean = scored("c1", "a#1", 4.0, 0, false);
        assert_eq!(clean.value(1.0), Some(4.0));
        assert_eq!(scored("c1", "a#1", 4.0, 2, false).value(1.0), Some(3.0));
        assert_eq!(scored("c1", "a#1", 4.0, 1, true).value(2.0), Some(1.0));
        let mut unread = clean.clone();
        unread.scores.insert("engaging".into(), None);
        assert_eq!(unread.value(1.0), None, "a mean over fewer criteria is not comparable");

        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("scored.jsonl")).unwrap();
        for s in [
            scored("c0", "a#1", 4.0, 0, false),
            scored("c0", "a#2", 4.0, 0, false),
            scored("c1", "a#1", 4.5, 0, false),
            scored("c1", "a#2", 4.5, 1, false),
            scored("c2", "a#1", 5.0, 0, false),
            scored("c2", "a#2", 3.0, 0, false),
        ] {
            ledger.scored.push(s);
        }
        let ids: Vec<String> = ["c2", "c0", "c1"].iter().map(|s| s.to_string()).collect();
        let items = vec!["a#1".to_string(), "a#2".to_string()];
        let ranked = rank(&ledger, &ids, &items, 1.0);
        // With a fault costing 1 all three average 4.0: the order of `ids` decides, and a
        // search lists c0 first.
        assert_eq!(ranked.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["c2", "c0", "c1"]);
        assert_eq!(rank(&ledger, &ids, &items, 0.0)[0].0, "c1");

        let gains = held_out_gains(&ledger, "c1", &items, &[], 1.0, 1);
        let value = &gains[0];
        assert_eq!(value.measure, "value");
        assert_eq!((value.before, value.after, value.n), (Some(4.0), Some(4.0), 2));
        let breaks = gains.iter().find(|g| g.measure == "breaks").unwrap();
        assert_eq!(breaks.after, Some(0.5));
    }

    /// The tuning file loads as the persona's tuning and says what the held-out turns showed;
    /// when the persona as it is won, there is no file.
    #[test]
    fn the_winners_tuning_file_is_one_the_persona_loads() {
        let persona = host();
        let drawn = candidates(&persona, &space(), 3, 11);
        let outcome = Outcome {
            persona: persona.id.clone(),
            split: Split { train: vec!["a/1".into()], held_out: vec!["b/1".into()] },
            train_turns: 4,
            held_out_turns: 4,
            rounds: Vec::new(),
            winner: drawn[2].clone(),
            held_out: Vec::new(),
            fault_cost: 1.0,
        };
        let file = outcome.tuning_file("rapport eval optimize …").unwrap();
        assert!(file.starts_with("# Prompt tuning for the persona 'wedding-host'"));
        let dir = tempfile::tempdir().unwrap();
        let src =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/personas/wedding-host.toml");
        std::fs::copy(&src, dir.path().join("wedding-host.toml")).unwrap();
        std::fs::write(dir.path().join("wedding-host.prompt.toml"), &file).unwrap();
        let tuned = Persona::load(&dir.path().join("wedding-host.toml")).unwrap();
        assert_eq!(tuned.prompt, drawn[2].tuning);
        assert!(!outcome.significant_gain());
        assert!(outcome.markdown().contains("Winner `c2`"));
        let kept = Outcome { winner: drawn[0].clone(), ..outcome };
        assert!(kept.tuning_file("…").is_none());
        assert!(kept.markdown().contains("no tuning file is written"));
    }
}
