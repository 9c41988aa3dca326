//! Calibration: how well does the judge agree with people?
//!
//! Input is JSONL, one rated item per line:
//!
//! ```json
//! {"id": "c1", "context": "A: hi!\nB: hey, how are you?", "response": "optional reply to rate",
//!  "annotations": {"interesting": [7, 8], "upbeat": [6, "n/a"]}}
//! ```
//!
//! `context` is the dialogue so far, one `Speaker: text` line per turn; `response`, when
//! present, is a single reply to rate (turn-level items) and is shown to the judge after the
//! context; `annotations` maps a dimension to human scores, averaged, with non-numeric entries
//! skipped. Dimensions are scored by the rubric criterion with the same id.
//!
//! The judge scores every item; per dimension the report gives Spearman's ρ and Kendall's τ-b
//! between the judge's and the humans' scores, each with a bootstrap 95% interval over items.
//! A judge that gives every item the same score has no correlation (reported as none, not 0).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::judge::{Judge, PersonaBrief};
use crate::rubric::{Criterion, Rubric, Side};
use crate::stats::{self, Estimate, SplitMix64};
use crate::EvalError;

/// One human-rated item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatedItem {
    /// Identifier (its line number when absent).
    #[serde(default)]
    pub id: Option<String>,
    /// The dialogue so far.
    pub context: String,
    /// A single reply to rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// Dimension → human scores.
    pub annotations: BTreeMap<String, Vec<Value>>,
    /// Whose turns the ratings are about: the whole dialogue (the default, speakers `A` and
    /// `B`), or the `user` side of a conversation with a persona (the practice coach's judged
    /// criteria), whose lines read `User: …` and `PERSONA: …`.
    #[serde(default = "dialogue", skip_serializing_if = "is_dialogue")]
    pub side: Side,
    /// With `side`: the persona's name in the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persona: Option<String>,
}

fn dialogue() -> Side {
    Side::Dialogue
}

fn is_dialogue(side: &Side) -> bool {
    *side == Side::Dialogue
}

impl RatedItem {
    /// The mean human score of `dimension`, over numeric entries (numbers, or strings that
    /// are numbers).
    pub fn human_score(&self, dimension: &str) -> Option<f64> {
        let values: Vec<f64> = self
            .annotations
            .get(dimension)?
            .iter()
            .filter_map(|v| match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            })
            .filter(|v| v.is_finite())
            .collect();
        stats::mean(&values)
    }

    /// What the judge reads.
    pub fn transcript(&self, max_chars: usize) -> String {
        let lines: Vec<String> =
            self.context.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
        let mut text = crate::dialogue::fit_lines(&lines, max_chars);
        if let Some(r) = &self.response {
            text.push_str(&format!("\n\nReply to rate: {r}"));
        }
        text
    }
}

/// Reads a rated JSONL file. A line that is not a rated item is an error naming its number.
pub fn read_rated(path: &Path) -> Result<Vec<RatedItem>, EvalError> {
    let mut out = Vec::new();
    for (n, line) in crate::dialogue::jsonl_lines(path)? {
        let mut item: RatedItem = serde_json::from_str(&line).map_err(|e| EvalError::Invalid(format!("{}:{}: {e} (expected {{\"context\": …, \"annotations\": {{dimension: [scores]}}}})", path.display(), n + 1)))?;
        item.id.get_or_insert_with(|| format!("line{}", n + 1));
        if item.side != Side::Dialogue
            && item.persona.as_deref().is_none_or(|p| p.trim().is_empty())
        {
            return Err(EvalError::Invalid(format!(
                "{}:{}: a rated item on the {:?} side names its persona (\"persona\": the name its lines use)",
                path.display(),
                n + 1,
                item.side
            )));
        }
        out.push(item);
    }
    Ok(out)
}

/// Which rated items a calibration judges and reports on.
///
/// Items are assigned to a split by a hash of their id (FNV-1a, [`TRAIN_PERCENT`] in 100 to
/// training), so the assignment never depends on the file's order, on `--limit`, or on which
/// other items are present: an item is in the same split in every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Every item.
    All,
    /// The training split: what a mapping is fitted and a prompt tuned on.
    Train,
    /// The held-out split: what agreement is reported on.
    HeldOut,
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Split::All),
            "train" => Ok(Split::Train),
            "held-out" => Ok(Split::HeldOut),
            other => Err(format!("unknown split '{other}' (all, train, held-out)")),
        }
    }
}

/// Items in 100 that go to the training split.
pub const TRAIN_PERCENT: u64 = 40;

/// The split an item id belongs to.
pub fn split_of(id: &str) -> Split {
    if stats::fnv1a(id) % 100 < TRAIN_PERCENT {
        Split::Train
    } else {
        Split::HeldOut
    }
}

impl Split {
    fn admits(self, id: &str) -> bool {
        self == Split::All || split_of(id) == self
    }
}

/// Agreement on one dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DimensionAgreement {
    /// The dimension (criterion id).
    pub dimension: String,
    /// Items with both a human and a judge score.
    pub n: usize,
    /// Items the judge's answer could not be read for (counted, never dropped silently).
    pub unreadable: usize,
    /// Spearman's ρ with its interval; `None` when undefined (a constant side).
    pub spearman: Option<Estimate>,
    /// Kendall's τ-b with its interval.
    pub kendall: Option<Estimate>,
    /// Mean human score.
    pub human_mean: Option<f64>,
    /// Mean judge score.
    pub judge_mean: Option<f64>,
    /// Distinct scores the judge gave (1 means it said the same thing every time).
    pub judge_distinct: usize,
}

/// One scorer against another on the same items: Spearman's ρ with people of each, and the
/// paired bootstrap of their difference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versus {
    /// The dimension.
    pub dimension: String,
    /// What is compared with what, e.g. "expected − argmax".
    pub what: String,
    /// Items both scored.
    pub n: usize,
    /// ρ of the first scorer (this judge's score, or the calibrated one).
    pub rho: Option<Estimate>,
    /// ρ of the other.
    pub rho_other: Option<Estimate>,
    /// ρ(first) − ρ(other), resampled by item.
    pub difference: Option<Estimate>,
}

/// The calibration report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    /// The rated file.
    pub rated: String,
    /// The judge's model.
    pub judge_model: String,
    /// How scores were read (`json`, `expected`).
    #[serde(default)]
    pub method: String,
    /// The judge's key ([`Judge::key`]): scores and mappings are shared only under it.
    #[serde(default)]
    pub judge_key: String,
    /// The split reported on (`held-out` when a mapping was fitted).
    #[serde(default = "all_split")]
    pub split: Split,
    /// Items in the rated file's reported split.
    pub items: usize,
    /// Per dimension.
    pub dimensions: Vec<DimensionAgreement>,
    /// Judge calls that failed.
    pub failed_calls: usize,
    /// Items judged by this invocation (the rest came from the `--save` file).
    pub judged_now: usize,
    /// Items in the `--save` file judged under another key, and therefore judged again.
    #[serde(default)]
    pub saved_under_other_key: usize,
    /// Seconds this invocation spent judging.
    pub seconds: f64,
    /// With `--per-turn`: the replies this invocation scored one by one (so `seconds` over
    /// this is the turn scorer's cost per reply, each criterion included).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replies_judged: usize,
    /// With the expected-score method: its score against the argmax integer of the same call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_vs_argmax: Vec<Versus>,
    /// With `--baseline`: this judge against the saved one, on the items both scored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versus_baseline: Vec<Versus>,
    /// With `--fit`: the mapping's held-out agreement against the raw scores'.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calibrated_vs_raw: Vec<Versus>,
    /// Where the fitted mapping was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn all_split() -> Split {
    Split::All
}

/// One judged item, as kept in the `--save` file so an interrupted calibration resumes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JudgedItem {
    /// The rated item's id.
    pub id: String,
    /// The judge that scored it ([`Judge::key`]); saved items under another key are not reused.
    #[serde(default)]
    pub judge: String,
    /// By criterion id.
    pub scores: BTreeMap<String, Option<f64>>,
    /// With the expected-score method: the most likely score of the same call.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub argmax: BTreeMap<String, Option<f64>>,
    /// Failed judge calls.
    pub failed_calls: usize,
}

/// How [`calibrate`] runs beyond the judge and the items.
#[derive(Debug, Clone, Default)]
pub struct CalibrateOptions<'a> {
    /// A JSONL file of judged items to resume from and append to.
    pub save: Option<&'a Path>,
    /// Which items to judge and report on (ignored with `fit`, which judges every item).
    pub split: Option<Split>,
    /// Fit a mapping on the training split and write it here; report on the held-out split.
    pub fit: Option<&'a Path>,
    /// Another judge's `--save` file to compare with on the same items.
    pub baseline: Option<&'a Path>,
    /// Judge at most this many training-split items (in file order): a mapping of a few
    /// weights needs far fewer items than an agreement worth reporting.
    pub train_limit: Option<usize>,
    /// Draw a progress bar.
    pub show_progress: bool,
    /// Score each conversation turn by turn with the turn scorer ([`Judge::score_reply`]):
    /// every message after the first, in the context before it, averaged per criterion.
    pub per_turn: bool,
    /// With `per_turn`: at most this many messages of a conversation, evenly spaced (the
    /// first and the last included), so a long conversation costs no more than a short one.
    pub turns_per_conversation: usize,
}

/// Reads a `--save` file: the items judged under `key` (all of them when `key` is `None`), and
/// how many lines were judged under another key.
pub fn read_judged(
    path: &Path,
    key: Option<&str>,
) -> Result<(BTreeMap<String, JudgedItem>, usize), EvalError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EvalError::Io(format!("{}: {e}", path.display())))?;
    let (mut judged, mut other) = (BTreeMap::new(), 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // A torn last line from an interrupted run is skipped; the item is judged again.
        let Ok(j) = serde_json::from_str::<JudgedItem>(line) else { continue };
        if key.is_some_and(|k| k != j.judge) {
            other += 1;
            continue;
        }
        judged.insert(j.id.clone(), j);
    }
    Ok((judged, other))
}

/// The turn scorer over one rated conversation: the messages after the first (at most `most`,
/// evenly spaced), each scored in the context of the lines before it (within the judge's
/// transcript budget), averaged per criterion over the messages it could read. The argmax of
/// each call is averaged alike.
/// Returns the averaged verdict, the averaged argmax by criterion, and how many messages were
/// scored.
async fn score_turns(
    judge: &Judge,
    item: &RatedItem,
    criteria: &[&Criterion],
    persona: &PersonaBrief,
    most: usize,
) -> Result<(crate::judge::Verdict, BTreeMap<String, Option<f64>>, usize), EvalError> {
    let lines: Vec<String> =
        item.context.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    let scored = spaced(1, lines.len(), most);
    let mut out = crate::judge::Verdict::default();
    let mut per_criterion: BTreeMap<String, (Vec<f64>, Vec<f64>, usize)> = BTreeMap::new();
    for &t in &scored {
        let before = crate::dialogue::fit_lines(&lines[..t], judge.config().max_transcript_chars);
        let v = judge.score_reply(&before, &lines[t], criteria, item.side, persona).await?;
        out.calls += v.calls;
        out.failed_calls += v.failed_calls;
        for (id, c) in v.criteria {
            let entry = per_criterion.entry(id).or_default();
            match c.score {
                Some(s) => entry.0.push(s),
                None => entry.2 += 1,
            }
            entry.1.extend(c.distributions.first().map(|d| d.argmax));
        }
    }
    let mut argmax = BTreeMap::new();
    for (id, (scores, argmaxes, unreadable)) in per_criterion {
        argmax.insert(id.clone(), stats::mean(&argmaxes));
        out.criteria.insert(
            id,
            crate::judge::CriterionVerdict {
                score: stats::mean(&scores),
                samples: scores,
                reasons: vec![],
                unreadable,
                distributions: vec![],
            },
        );
    }
    Ok((out, argmax, scored.len()))
}

/// At most `most` indices of `from..to`, evenly spaced, the first and the last included.
fn spaced(from: usize, to: usize, most: usize) -> Vec<usize> {
    let n = to.saturating_sub(from);
    if n <= most {
        return (from..to).collect();
    }
    if most <= 1 {
        return (from..to).rev().take(most).collect();
    }
    (0..most).map(|i| from + (i * (n - 1) + (most - 1) / 2) / (most - 1)).collect()
}

/// Runs the judge on `items` and measures its agreement with the humans on every dimension the
/// rubric has a criterion for.
pub async fn calibrate(
    judge: &Judge,
    rubric: &Rubric,
    items: &[RatedItem],
    rated_name: &str,
    judge_model: &str,
    options: CalibrateOptions<'_>,
) -> Result<CalibrationReport, EvalError> {
    let dimensions: BTreeSet<&str> =
        items.iter().flat_map(|i| i.annotations.keys().map(String::as_str)).collect();
    let criteria: Vec<&Criterion> =
        rubric.criteria.iter().filter(|c| dimensions.contains(c.id.as_str())).collect();
    if criteria.is_empty() {
        return Err(EvalError::Invalid(format!(
            "no dimension of the rated file ({}) is a criterion of rubric {} ({})",
            dimensions.iter().copied().collect::<Vec<_>>().join(", "),
            rubric.id,
            rubric.criteria.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let key = if options.per_turn {
        // How many messages of a conversation are averaged changes the score: part of the key,
        // so a resume never mixes runs that sampled conversations differently.
        format!("{}{}", judge.turn_key(judge_model, &criteria), options.turns_per_conversation)
    } else {
        judge.key(judge_model, &criteria)
    };
    let split =
        if options.fit.is_some() { Split::All } else { options.split.unwrap_or(Split::All) };
    let mut train_left = options.train_limit.unwrap_or(usize::MAX);
    let items: Vec<&RatedItem> = items
        .iter()
        .filter(|i| split.admits(i.id.as_deref().unwrap_or_default()))
        .filter(|i| {
            if split_of(i.id.as_deref().unwrap_or_default()) != Split::Train {
                return true;
            }
            let keep = train_left > 0;
            train_left = train_left.saturating_sub(1);
            keep
        })
        .collect();
    let (mut judged, saved_under_other_key) = match options.save.filter(|p| p.exists()) {
        Some(path) => read_judged(path, Some(&key))?,
        None => (BTreeMap::new(), 0),
    };
    let bar = if options.show_progress {
        ProgressBar::new(items.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "  judging {wide_bar} {pos}/{len} [{elapsed_precise}, eta {eta}]",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let mut judged_now = 0;
    let mut replies_judged = 0;
    let mut out_file = match options.save {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| EvalError::Io(format!("{}: {e}", p.display())))?,
        ),
        None => None,
    };
    for item in &items {
        let id = item.id.clone().unwrap_or_default();
        if judged.contains_key(&id) {
            bar.inc(1);
            continue;
        }
        let persona = PersonaBrief {
            name: item.persona.clone().unwrap_or_default(),
            description: String::new(),
        };
        let (verdict, turn_argmax) = if options.per_turn {
            let (verdict, argmax, replies) =
                score_turns(judge, item, &criteria, &persona, options.turns_per_conversation)
                    .await?;
            replies_judged += replies;
            (verdict, Some(argmax))
        } else {
            let transcript = item.transcript(judge.config().max_transcript_chars);
            (judge.score_transcript(&transcript, &criteria, item.side, &persona).await?, None)
        };
        let scores = verdict.criteria.iter().map(|(k, v)| (k.clone(), v.score)).collect();
        let argmax = if let Some(argmax) = turn_argmax {
            argmax
        } else if judge.config().method == crate::judge::JudgeMethod::Expected {
            verdict
                .criteria
                .iter()
                .map(|(k, v)| (k.clone(), v.distributions.first().map(|d| d.argmax)))
                .collect()
        } else {
            BTreeMap::new()
        };
        let j = JudgedItem {
            id: id.clone(),
            judge: key.clone(),
            scores,
            argmax,
            failed_calls: verdict.failed_calls,
        };
        if let Some(f) = out_file.as_mut() {
            let mut line = serde_json::to_vec(&j).expect("serialises");
            line.push(b'\n');
            f.write_all(&line)
                .and_then(|_| f.sync_data())
                .map_err(|e| EvalError::Io(e.to_string()))?;
        }
        judged.insert(id, j);
        judged_now += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();

    let reported = if options.fit.is_some() { Split::HeldOut } else { split };
    let report_items: Vec<&RatedItem> = items
        .iter()
        .copied()
        .filter(|i| reported.admits(i.id.as_deref().unwrap_or_default()))
        .collect();
    let score_of = |item: &RatedItem, c: &str| {
        judged
            .get(item.id.as_deref().unwrap_or_default())
            .and_then(|j| j.scores.get(c).copied().flatten())
    };
    let mut report = CalibrationReport {
        rated: rated_name.into(),
        judge_model: judge_model.into(),
        method: judge.config().method.as_str().into(),
        judge_key: key.clone(),
        split: reported,
        items: report_items.len(),
        dimensions: vec![],
        failed_calls: judged.values().map(|j| j.failed_calls).sum(),
        judged_now,
        saved_under_other_key,
        seconds: started.elapsed().as_secs_f64(),
        replies_judged,
        expected_vs_argmax: vec![],
        versus_baseline: vec![],
        calibrated_vs_raw: vec![],
        mapping: None,
    };
    for c in &criteria {
        let (mut human, mut machine, mut unreadable) = (Vec::new(), Vec::new(), 0);
        for item in &report_items {
            let Some(h) = item.human_score(&c.id) else { continue };
            match score_of(item, &c.id) {
                Some(m) => {
                    human.push(h);
                    machine.push(m);
                }
                None => unreadable += 1,
            }
        }
        report.dimensions.push(agreement(&c.id, &human, &machine, unreadable));
        // The same call's argmax integer: what the probabilities add over a greedy judge.
        let argmax_of = |item: &RatedItem| {
            judged
                .get(item.id.as_deref().unwrap_or_default())
                .and_then(|j| j.argmax.get(&c.id).copied().flatten())
        };
        if judge.config().method == crate::judge::JudgeMethod::Expected {
            report.expected_vs_argmax.push(versus(
                &c.id,
                "expected − argmax of the same call",
                &report_items,
                |i| score_of(i, &c.id),
                argmax_of,
            ));
        }
    }
    if let Some(path) = options.baseline {
        let (baseline, _) = read_judged(path, None)?;
        let keys: BTreeSet<&str> = baseline.values().map(|j| j.judge.as_str()).collect();
        if keys.len() > 1 {
            return Err(EvalError::Invalid(format!(
                "{} holds items of {} judges; a baseline must be one judge's",
                path.display(),
                keys.len()
            )));
        }
        for c in &criteria {
            report.versus_baseline.push(versus(
                &c.id,
                &format!("this judge − {}", keys.first().copied().unwrap_or("baseline")),
                &report_items,
                |i| score_of(i, &c.id),
                |i| {
                    baseline
                        .get(i.id.as_deref().unwrap_or_default())
                        .and_then(|j| j.scores.get(&c.id).copied().flatten())
                },
            ));
        }
    }
    if let Some(out) = options.fit {
        let features: Vec<String> = criteria.iter().map(|c| c.id.clone()).collect();
        let row = |item: &RatedItem| -> Option<Vec<f64>> {
            features.iter().map(|f| score_of(item, f)).collect()
        };
        let mut mapping = crate::fit::Mapping {
            rubric: rubric.id.clone(),
            judge_key: key.clone(),
            judge_model: judge_model.into(),
            method: judge.config().method.as_str().into(),
            data: rated_name.into(),
            features: features.clone(),
            dimensions: BTreeMap::new(),
            held_out: BTreeMap::new(),
        };
        for c in &criteria {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for item in
                items.iter().filter(|i| Split::Train.admits(i.id.as_deref().unwrap_or_default()))
            {
                if let (Some(r), Some(h)) = (row(item), item.human_score(&c.id)) {
                    x.push(r);
                    y.push(h);
                }
            }
            let Some(fit) = crate::fit::fit_dimension(&x, &y) else { continue };
            let calibrated = |i: &RatedItem| row(i).map(|r| fit.predict(&r));
            let v =
                versus(&c.id, "calibrated − raw (held-out)", &report_items, calibrated, |i| {
                    score_of(i, &c.id)
                });
            mapping.held_out.insert(
                c.id.clone(),
                crate::fit::HeldOutAgreement { n: v.n, raw: v.rho_other, calibrated: v.rho },
            );
            mapping.dimensions.insert(c.id.clone(), fit);
            report.calibrated_vs_raw.push(v);
        }
        let json = serde_json::to_string_pretty(&mapping).expect("serialises");
        std::fs::write(out, json + "\n")
            .map_err(|e| EvalError::Io(format!("{}: {e}", out.display())))?;
        report.mapping = Some(out.display().to_string());
    }
    Ok(report)
}

/// Two scorers on the items both scored, against the human score of `dimension`.
fn versus(
    dimension: &str,
    what: &str,
    items: &[&RatedItem],
    first: impl Fn(&RatedItem) -> Option<f64>,
    other: impl Fn(&RatedItem) -> Option<f64>,
) -> Versus {
    let (mut a, mut b, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for item in items {
        if let (Some(f), Some(o), Some(h)) = (first(item), other(item), item.human_score(dimension))
        {
            a.push(f);
            b.push(o);
            y.push(h);
        }
    }
    let seed =
        dimension.bytes().fold(0xB00Du64, |h, c| h.wrapping_mul(31).wrapping_add(u64::from(c)));
    Versus {
        dimension: dimension.into(),
        what: what.into(),
        n: y.len(),
        rho: stats::correlation_ci(&a, &y, seed, stats::spearman),
        rho_other: stats::correlation_ci(&b, &y, seed, stats::spearman),
        difference: crate::fit::spearman_difference(&b, &a, &y, seed),
    }
}

/// Agreement between paired human and judge scores (public for tests and other callers).
pub fn agreement(
    dimension: &str,
    human: &[f64],
    machine: &[f64],
    unreadable: usize,
) -> DimensionAgreement {
    let seed =
        dimension.bytes().fold(0xCA11u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let distinct: BTreeSet<u64> = machine.iter().map(|v| v.to_bits()).collect();
    DimensionAgreement {
        dimension: dimension.into(),
        n: human.len(),
        unreadable,
        spearman: stats::correlation_ci(machine, human, seed, stats::spearman),
        kendall: stats::correlation_ci(machine, human, seed + 1, stats::kendall_tau_b),
        human_mean: stats::mean(human),
        judge_mean: stats::mean(machine),
        judge_distinct: distinct.len(),
    }
}

/// The report as Markdown.
pub fn markdown(r: &CalibrationReport) -> String {
    let est = |e: &Option<Estimate>| e.map(|e| e.display(2)).unwrap_or_else(|| "undefined".into());
    let split = match r.split {
        Split::All => "all items",
        Split::Train => "the training split",
        Split::HeldOut => "the held-out split",
    };
    let mut out = format!(
        "# Judge calibration\n\nJudge `{}` (method `{}`) on `{}`, {split}: {} items ({} judged now, in {:.0} s).\n\n| dimension | n | Spearman ρ [95% CI] | Kendall τ-b [95% CI] | human mean | judge mean | judge's distinct scores | unreadable |\n|---|---|---|---|---|---|---|---|\n",
        r.judge_model, r.method, r.rated, r.items, r.judged_now, r.seconds
    );
    if r.replies_judged > 0 {
        out.insert_str(
            out.find("\n\n|").unwrap_or(out.len()),
            &format!(
                " Turn by turn: {} messages scored, {:.2} s each (every criterion included), averaged per conversation.",
                r.replies_judged,
                r.seconds / r.replies_judged as f64
            ),
        );
    }
    for d in &r.dimensions {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            d.dimension,
            d.n,
            est(&d.spearman),
            est(&d.kendall),
            d.human_mean.map(|v| format!("{v:.2}")).unwrap_or_default(),
            d.judge_mean.map(|v| format!("{v:.2}")).unwrap_or_default(),
            d.judge_distinct,
            d.unreadable
        ));
    }
    for (title, rows) in [
        ("Expected score against the argmax of the same call", &r.expected_vs_argmax),
        ("Against the baseline judge, same items", &r.versus_baseline),
        ("Calibrated against raw, held-out split", &r.calibrated_vs_raw),
    ] {
        if rows.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\n## {title}\n\n| dimension | compared | n | ρ | ρ other | difference [95% CI, paired bootstrap] |\n|---|---|---|---|---|---|\n"
        ));
        for v in rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                v.dimension,
                v.what,
                v.n,
                est(&v.rho),
                est(&v.rho_other),
                est(&v.difference)
            ));
        }
    }
    if let Some(m) = &r.mapping {
        out.push_str(&format!("\nMapping fitted on the training split, written to `{m}`.\n"));
    }
    if r.saved_under_other_key > 0 {
        out.push_str(&format!(
            "\n{} saved items were judged under another judge, rubric, prompt or method and were judged again.\n",
            r.saved_under_other_key
        ));
    }
    if r.failed_calls > 0 {
        out.push_str(&format!("\n{} judge calls failed.\n", r.failed_calls));
    }
    out
}

/// Converts the chitchat-dataset package's `dataset.json` (a map from conversation id to
/// `{messages: [[{text, sender}…]…], ratings: {witty, upbeat, interesting|int}}`) into rated
/// items: whole conversations, speakers as A and B in order of appearance, consecutive
/// messages of one speaker joined. Conversations without ratings are skipped. `limit` picks
/// that many at random (by `seed`) so a small calibration set is not just the first days of
/// the collection.
pub fn convert_chitchat(
    dataset: &Path,
    out: &Path,
    limit: Option<usize>,
    seed: u64,
) -> Result<usize, EvalError> {
    let text = std::fs::read_to_string(dataset)
        .map_err(|e| EvalError::Io(format!("reading {}: {e}", dataset.display())))?;
    let all: BTreeMap<String, Value> = serde_json::from_str(&text)
        .map_err(|e| EvalError::Invalid(format!("{}: {e}", dataset.display())))?;
    let mut items = Vec::new();
    for (id, convo) in &all {
        let Some(ratings) = convo.get("ratings").and_then(Value::as_object) else { continue };
        let mut annotations = BTreeMap::new();
        for (key, value) in ratings {
            let dimension = if key == "int" { "interesting" } else { key.as_str() };
            annotations.insert(dimension.to_string(), vec![value.clone()]);
        }
        let mut speakers: Vec<String> = Vec::new();
        let mut lines = Vec::new();
        for group in convo.get("messages").and_then(Value::as_array).into_iter().flatten() {
            let parts: Vec<&Value> = group.as_array().into_iter().flatten().collect();
            let Some(sender) = parts.first().and_then(|m| m.get("sender")).and_then(Value::as_str)
            else {
                continue;
            };
            let index = speakers.iter().position(|s| s == sender).unwrap_or_else(|| {
                speakers.push(sender.to_string());
                speakers.len() - 1
            });
            let label = if index == 0 {
                "A"
            } else if index == 1 {
                "B"
            } else {
                "C"
            };
            let words: Vec<&str> = parts
                .iter()
                .filter_map(|m| m.get("text").and_then(Value::as_str))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect();
            if !words.is_empty() {
                lines.push(format!("{label}: {}", words.join(" ").replace('\n', " ")));
            }
        }
        if lines.len() < 2 {
            continue;
        }
        items.push(RatedItem {
            id: Some(id.clone()),
            context: lines.join("\n"),
            response: None,
            annotations,
            side: Side::Dialogue,
            persona: None,
        });
    }
    if let Some(limit) = limit.filter(|&l| l < items.len()) {
        let mut rng = SplitMix64::new(seed);
        for i in (1..items.len()).rev() {
            items.swap(i, rng.below(i + 1));
        }
        items.truncate(limit);
    }
    let mut f = std::fs::File::create(out)
        .map_err(|e| EvalError::Io(format!("creating {}: {e}", out.display())))?;
    for item in &items {
        writeln!(f, "{}", serde_json::to_string(item).expect("serialises"))
            .map_err(|e| EvalError::Io(e.to_string()))?;
    }
    Ok(items.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_scores_average_and_skip_junk() {
        let item: RatedItem = serde_json::from_str(r#"{"context": "A: hi\nB: hey", "annotations": {"witty": [4, "6", "n/a", null, true]}}"#).unwrap();
        assert_eq!(item.human_score("witty"), Some(5.0));
        assert_eq!(item.human_score("upbeat"), None);
        let item: RatedItem =
            serde_json::from_str(r#"{"context": "A: hi", "annotations": {"witty": ["n/a"]}}"#)
                .unwrap();
        assert_eq!(item.human_score("witty"), None);
    }

    #[test]
    fn a_user_side_item_names_its_persona_and_the_default_is_the_whole_dialogue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rated.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"context": "A: hi\nB: hey", "annotations": {"witty": [4]}}"#,
                "\n",
                r#"{"side": "user", "persona": "Alex", "context": "Alex: my dog died\nUser: oh no, I'm so sorry", "annotations": {"empathy_shown": [5]}}"#,
                "\n"
            ),
        )
        .unwrap();
        let items = read_rated(&path).unwrap();
        assert_eq!((items[0].side, items[0].persona.as_deref()), (Side::Dialogue, None));
        assert_eq!((items[1].side, items[1].persona.as_deref()), (Side::User, Some("Alex")));
        // A whole-dialogue item is written as before (no side field).
        assert!(!serde_json::to_string(&items[0]).unwrap().contains("side"));
        std::fs::write(
            &path,
            concat!(
                r#"{"context": "A: hi\nB: hey", "annotations": {"witty": [4]}}"#,
                "\n",
                r#"{"side": "user", "context": "Alex: hi\nUser: hey", "annotations": {"empathy_shown": [3]}}"#,
                "\n"
            ),
        )
        .unwrap();
        let e = read_rated(&path).unwrap_err().to_string();
        assert!(e.contains("rated.jsonl:2") && e.contains("persona"), "{e}");
    }

    #[test]
    fn long_conversations_are_scored_at_evenly_spaced_messages() {
        assert_eq!(spaced(1, 5, 8), vec![1, 2, 3, 4], "short: every message");
        let picked = spaced(1, 31, 8);
        assert_eq!(picked.len(), 8);
        assert_eq!((picked[0], picked[7]), (1, 30), "the first and the last");
        assert!(picked.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= 5), "{picked:?}");
        assert_eq!(spaced(1, 31, 1), vec![30]);
        assert!(spaced(1, 1, 8).is_empty());
    }

    #[test]
    fn agreement_on_known_scores() {
        let human = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let a = agreement("x", &human, &human, 0);
        assert_eq!(a.spearman.unwrap().value, 1.0);
        assert_eq!(a.kendall.unwrap().value, 1.0);
        let constant = agreement("x", &human, &[5.0; 8], 2);
        assert!(constant.spearman.is_none() && constant.kendall.is_none());
        assert_eq!((constant.judge_distinct, constant.unreadable), (1, 2));
    }

    #[test]
    fn chitchat_conversations_become_rated_items() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("dataset.json");
        std::fs::write(&src, r#"{
          "c1": {"ratings": {"witty": "3", "int": 7, "upbeat": 5}, "messages": [
             [{"text": "Hello", "sender": "u1"}, {"text": "how are you?", "sender": "u1"}],
             [{"text": "good!", "sender": "u2"}],
             [{"text": "nice", "sender": "u1"}]]},
          "c2": {"messages": [[{"text": "no ratings", "sender": "u1"}], [{"text": "skip", "sender": "u2"}]]}
        }"#).unwrap();
        let out = dir.path().join("rated.jsonl");
        assert_eq!(convert_chitchat(&src, &out, None, 1).unwrap(), 1);
        let items = read_rated(&out).unwrap();
        assert_eq!(items[0].context, "A: Hello how are you?\nB: good!\nA: nice");
        assert_eq!(items[0].human_score("interesting"), Some(7.0));
        assert_eq!(items[0].human_score("witty"), Some(3.0));
    }
}
