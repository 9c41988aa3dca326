//! `rapport eval compare RUN_A RUN_B`: which criteria and metrics changed, and whether the
//! change is more than noise.
//!
//! When the two runs hold the same dialogues (same persona, simulator and seed: a batch run
//! again with another prompt or model) the comparison is paired, which is far more sensitive:
//! each dialogue is its own control. Every measure gets a bootstrap interval of the change and
//! a permutation p-value; p-values are Holm-adjusted across all measures, and only an adjusted
//! p below 0.05 is called a change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::html::escape;
use crate::judge::PairOutcome;
use crate::metrics::Metric;
use crate::report::{RunReport, STYLE};
use crate::stats::{self, Difference};
use crate::svg;

/// Significance level after adjustment.
pub const ALPHA: f64 = 0.05;

/// One measure's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Criterion id or metric name.
    pub id: String,
    /// Title.
    pub name: String,
    /// "criterion" or "metric".
    pub kind: String,
    /// Mean in A.
    pub mean_a: f64,
    /// Mean in B.
    pub mean_b: f64,
    /// The difference, its interval and raw p-value.
    pub difference: Difference,
    /// Holm-adjusted p-value.
    pub p_adjusted: f64,
    /// Adjusted p below [`ALPHA`].
    pub significant: bool,
    /// "better", "worse", "changed" (no preferred direction) or "no change".
    pub verdict: String,
    /// Width of the scale, to draw criteria on one axis (metrics: `None`).
    pub scale_width: Option<f64>,
}

/// Pairwise judge results for one criterion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairTally {
    /// A better in both orders.
    pub a: usize,
    /// B better in both orders.
    pub b: usize,
    /// Tie, or the orders disagreed.
    pub tie: usize,
}

impl PairTally {
    /// Adds one outcome.
    pub fn add(&mut self, o: PairOutcome) {
        match o {
            PairOutcome::A => self.a += 1,
            PairOutcome::B => self.b += 1,
            PairOutcome::Tie => self.tie += 1,
        }
    }
}

/// The comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Run A's name.
    pub a: String,
    /// Run B's name.
    pub b: String,
    /// Dialogues present in both (paired when > 0).
    pub paired_dialogues: usize,
    /// Every measure with data in both runs.
    pub changes: Vec<Change>,
    /// Pairwise judge tallies by criterion, when asked for.
    pub pairwise: BTreeMap<String, PairTally>,
}

/// Compares B against A.
pub fn compare(a: &RunReport, b: &RunReport) -> Comparison {
    let index_a: BTreeMap<&str, usize> =
        a.per_dialogue.iter().enumerate().map(|(i, d)| (d.id.as_str(), i)).collect();
    let common: Vec<(usize, usize)> = b
        .per_dialogue
        .iter()
        .enumerate()
        .filter_map(|(j, d)| index_a.get(d.id.as_str()).map(|&i| (i, j)))
        .collect();
    let mut changes = Vec::new();
    let mut raw = Vec::new();

    let mut measure =
        |id: &str,
         name: &str,
         kind: &str,
         higher_better: Option<bool>,
         scale_width: Option<f64>,
         get: &dyn Fn(&crate::report::DialogueScores) -> Option<f64>| {
            let va: Vec<Option<f64>> = a.per_dialogue.iter().map(get).collect();
            let vb: Vec<Option<f64>> = b.per_dialogue.iter().map(get).collect();
            let xa: Vec<f64> = va.iter().flatten().copied().collect();
            let xb: Vec<f64> = vb.iter().flatten().copied().collect();
            if xa.is_empty() || xb.is_empty() {
                return;
            }
            let seed = id.bytes().fold(99u64, |h, c| h.wrapping_mul(31).wrapping_add(u64::from(c)));
            // Pairs where both runs have the value; paired only if most dialogues match.
            let pairs: Vec<(usize, usize)> = common
                .iter()
                .filter(|(i, j)| va[*i].is_some() && vb[*j].is_some())
                .copied()
                .collect();
            let difference = if pairs.len() >= 2 && pairs.len() * 2 >= xa.len().min(xb.len()) {
                let fa: Vec<f64> = va.iter().map(|v| v.unwrap_or(f64::NAN)).collect();
                let fb: Vec<f64> = vb.iter().map(|v| v.unwrap_or(f64::NAN)).collect();
                stats::difference(&fa, &fb, Some(&pairs), seed)
            } else {
                stats::difference(&xa, &xb, None, seed)
            };
            let Some(difference) = difference else { return };
            raw.push(difference.p_value);
            changes.push(Change {
                id: id.into(),
                name: name.into(),
                kind: kind.into(),
                mean_a: stats::mean(&xa).unwrap_or(f64::NAN),
                mean_b: stats::mean(&xb).unwrap_or(f64::NAN),
                difference,
                p_adjusted: 1.0,
                significant: false,
                verdict: match higher_better {
                    Some(true) => "better",
                    Some(false) => "worse",
                    None => "changed",
                }
                .into(),
                scale_width,
            });
        };
    for c in &b.criteria {
        if a.criteria.iter().any(|x| x.id == c.id) {
            let id = c.id.clone();
            measure(
                &c.id,
                &c.name,
                "criterion",
                Some(true),
                Some(c.scale.max - c.scale.min),
                &move |d| d.criteria.get(&id).copied(),
            );
        }
    }
    for m in Metric::ALL {
        let name = m.name();
        let key = name.clone();
        measure(&name, &name, "metric", m.higher_is_better(), None, &move |d| {
            d.metrics.get(&key).copied()
        });
    }
    let adjusted = stats::holm(&raw);
    for (c, p) in changes.iter_mut().zip(adjusted) {
        c.p_adjusted = p;
        c.significant = p < ALPHA;
        let up = c.difference.delta.value > 0.0;
        c.verdict = if !c.significant {
            "no change".into()
        } else {
            match c.verdict.as_str() {
                "better" => {
                    if up {
                        "better"
                    } else {
                        "worse"
                    }
                }
                "worse" => {
                    if up {
                        "worse"
                    } else {
                        "better"
                    }
                }
                _ => "changed",
            }
            .into()
        };
    }
    Comparison {
        a: a.run.clone(),
        b: b.run.clone(),
        paired_dialogues: common.len(),
        changes,
        pairwise: BTreeMap::new(),
    }
}

fn row(c: &Change) -> String {
    let d = &c.difference.delta;
    format!(
        "| {} | {:.2} | {:.2} | {:+.2} [{:+.2}, {:+.2}] | {:.4} | {:.4} | **{}** |\n",
        c.name,
        c.mean_a,
        c.mean_b,
        d.value,
        d.low,
        d.high,
        c.difference.p_value,
        c.p_adjusted,
        c.verdict
    )
}

/// The comparison as Markdown (also what `eval compare` prints).
pub fn markdown(c: &Comparison) -> String {
    let mut out = format!("# {} → {}\n\n", c.a, c.b);
    out.push_str(&if c.paired_dialogues > 0 {
        format!("Paired on {} dialogues present in both runs.", c.paired_dialogues)
    } else {
        "No dialogue in common: independent samples.".to_string()
    });
    let significant: Vec<&Change> = c.changes.iter().filter(|x| x.significant).collect();
    out.push_str(&format!(
        " Holm-adjusted p < {ALPHA}: {} of {} measures changed.\n\n",
        significant.len(),
        c.changes.len()
    ));
    out.push_str("| measure | A | B | B − A [95% CI] | p | p (Holm) | verdict |\n|---|---|---|---|---|---|---|\n");
    for ch in c.changes.iter().filter(|x| x.kind == "criterion") {
        out.push_str(&row(ch));
    }
    for ch in c.changes.iter().filter(|x| x.kind == "metric") {
        out.push_str(&row(ch));
    }
    if !c.pairwise.is_empty() {
        out.push_str("\n## Pairwise judge (both orders must agree)\n\n| criterion | A better | B better | tie or inconsistent |\n|---|---|---|---|\n");
        for (id, t) in &c.pairwise {
            out.push_str(&format!("| {id} | {} | {} | {} |\n", t.a, t.b, t.tie));
        }
    }
    out
}

/// The comparison as HTML with a forest plot of the criteria.
pub fn html(c: &Comparison) -> String {
    let mut out = format!("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} → {}</title><style>{STYLE}</style></head><body><h1>{} → {}</h1>", escape(&c.a), escape(&c.b), escape(&c.a), escape(&c.b));
    out.push_str(&format!("<p>{} dialogues paired. Changes are B − A with 95% bootstrap intervals; bold means Holm-adjusted p &lt; {ALPHA}.</p>", c.paired_dialogues));
    let rows: Vec<svg::ForestRow> = c
        .changes
        .iter()
        .filter(|x| x.kind == "criterion")
        .map(|x| {
            let w = x.scale_width.unwrap_or(1.0).max(f64::EPSILON);
            let d = &x.difference.delta;
            svg::ForestRow {
                label: x.name.clone(),
                delta: d.value / w,
                low: d.low / w,
                high: d.high / w,
                significant: x.significant,
            }
        })
        .collect();
    out.push_str("<h2>Criteria</h2>");
    out.push_str(&svg::forest(&rows));
    out.push_str("<h2>All measures</h2><table><tr><th>measure</th><th>A</th><th>B</th><th>B − A [95% CI]</th><th>p</th><th>p (Holm)</th><th>verdict</th></tr>");
    for x in &c.changes {
        let d = &x.difference.delta;
        let style = if x.significant { " style=\"font-weight:bold\"" } else { "" };
        out.push_str(&format!(
            "<tr{style}><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:+.2} [{:+.2}, {:+.2}]</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>",
            escape(&x.name),
            x.mean_a,
            x.mean_b,
            d.value,
            d.low,
            d.high,
            x.difference.p_value,
            x.p_adjusted,
            escape(&x.verdict)
        ));
    }
    out.push_str("</table>");
    if !c.pairwise.is_empty() {
        out.push_str("<h2>Pairwise judge</h2><table><tr><th>criterion</th><th>A better</th><th>B better</th><th>tie or inconsistent</th></tr>");
        for (id, t) in &c.pairwise {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(id),
                t.a,
                t.b,
                t.tie
            ));
        }
        out.push_str("</table>");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::DialogueScores;
    use crate::rubric::Rubric;

    fn run(name: &str, empathy: &[f64], words: &[f64]) -> RunReport {
        let rubric = Rubric::load("default").unwrap();
        let mut r = crate::report::build(name, &rubric, None, &[], &[], None, &BTreeMap::new());
        r.per_dialogue = empathy
            .iter()
            .zip(words)
            .enumerate()
            .map(|(i, (e, w))| DialogueScores {
                id: format!("p/s/{i}"),
                persona: "p".into(),
                simulator: None,
                criteria: [("empathy".to_string(), *e)].into(),
                reasons: BTreeMap::new(),
                metrics: [("reply_words".to_string(), *w)].into(),
                error: None,
            })
            .collect();
        r
    }

    #[test]
    fn a_real_improvement_is_called_and_noise_is_not() {
        let base: Vec<f64> = (0..24).map(|i| 2.0 + (i % 3) as f64).collect();
        let better: Vec<f64> = base.iter().map(|v| (v + 1.0_f64).min(5.0)).collect();
        let words_a: Vec<f64> = (0..24).map(|i| 20.0 + (i % 5) as f64).collect();
        let words_b: Vec<f64> = (0..24).map(|i| 20.0 + ((i + 2) % 5) as f64).collect();
        let c = compare(&run("A", &base, &words_a), &run("B", &better, &words_b));
        assert_eq!(c.paired_dialogues, 24);
        let empathy = c.changes.iter().find(|x| x.id == "empathy").unwrap();
        assert!(empathy.significant && empathy.verdict == "better", "{empathy:?}");
        assert!(empathy.difference.paired);
        let words = c.changes.iter().find(|x| x.id == "reply_words").unwrap();
        assert!(!words.significant && words.verdict == "no change", "{words:?}");
        let md = markdown(&c);
        assert!(md.contains("**better**") && md.contains("1 of 2 measures changed"), "{md}");
        assert!(html(&c).contains("<svg"));
        // Reversed, the same change is worse.
        let back = compare(&run("B", &better, &words_b), &run("A", &base, &words_a));
        assert_eq!(back.changes.iter().find(|x| x.id == "empathy").unwrap().verdict, "worse");
    }
}
