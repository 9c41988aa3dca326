//! Reports of a run: JSON for programs, Markdown for pull requests, self-contained HTML with
//! SVG charts for product teams.
//!
//! Every mean comes with its bootstrap 95% interval and its n, because a mean of six
//! dialogues that moved by 0.3 is noise, and a report that hides that invites wrong decisions.

use std::collections::BTreeMap;

use rapport_pipeline::facts::FactChecker;
use serde::{Deserialize, Serialize};

use crate::batch::VerdictLine;
use crate::dialogue::{Dialogue, Speaker};
use crate::html::escape;
use crate::judge::number;
use crate::metrics::{self, Metric};
use crate::rubric::{Rubric, Scale, Scorer, Side};
use crate::stats::{self, Estimate};
use crate::svg;

/// One dialogue's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialogueScores {
    /// Its id.
    pub id: String,
    /// Persona.
    pub persona: String,
    /// Simulator.
    pub simulator: Option<String>,
    /// Criterion id → score (judged or exact).
    pub criteria: BTreeMap<String, f64>,
    /// The judge's first reason per criterion.
    pub reasons: BTreeMap<String, String>,
    /// Metric name → value.
    pub metrics: BTreeMap<String, f64>,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// One criterion across the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriterionSummary {
    /// Id.
    pub id: String,
    /// Title.
    pub name: String,
    /// Judge or metric.
    pub scorer: Scorer,
    /// Its scale.
    pub scale: Scale,
    /// Mean over dialogues with a score, with its interval.
    pub overall: Option<Estimate>,
    /// Dialogues without a score (unreadable judge answers, or the metric did not apply).
    pub missing: usize,
    /// Score → dialogues with it (scores rounded to the nearest integer).
    pub histogram: BTreeMap<String, usize>,
    /// Mean per persona.
    pub per_persona: BTreeMap<String, Estimate>,
    /// With a calibration mapping fitted for this judge: the mean calibrated score (what people
    /// would have given, by the mapping), beside the raw one above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrated: Option<Estimate>,
}

/// How far one judged criterion can be trusted: its measured agreement with people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriterionTrust {
    /// The criterion.
    pub criterion: String,
    /// Held-out agreement of the calibration this judge was fitted with; `None`: the judge has
    /// no measured agreement with people on this criterion.
    pub agreement: Option<crate::fit::HeldOutAgreement>,
    /// The human-rated set that agreement was measured on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// One metric across the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    /// Name.
    pub metric: String,
    /// Mean with its interval over the dialogues where it applies.
    pub overall: Option<Estimate>,
    /// Mean per persona.
    pub per_persona: BTreeMap<String, f64>,
}

/// How reliable the judge was.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeStats {
    /// Dialogues judged.
    pub dialogues: usize,
    /// Generation calls.
    pub calls: usize,
    /// Calls that failed.
    pub failed_calls: usize,
    /// Criterion scores that could not be read.
    pub unreadable: usize,
    /// Criterion scores read.
    pub readable: usize,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The run's name (its directory's name).
    pub run: String,
    /// Rubric id and title.
    pub rubric: (String, String),
    /// The batch spec, when the run was a batch.
    pub spec: Option<serde_json::Value>,
    /// Dialogues.
    pub dialogues: usize,
    /// Dialogues that stopped early with an error.
    pub failed_dialogues: usize,
    /// Per criterion.
    pub criteria: Vec<CriterionSummary>,
    /// Per metric.
    pub metrics: Vec<MetricSummary>,
    /// The judge.
    pub judge: JudgeStats,
    /// Per judged criterion, how far its scores can be trusted.
    #[serde(default)]
    pub trust: Vec<CriterionTrust>,
    /// Per dialogue.
    pub per_dialogue: Vec<DialogueScores>,
}

/// Builds the report of `dialogues` with their `verdicts`, scored on the persona's side of
/// `rubric` (the coach's user side has its own report).
///
/// `mapping`, the rubric's calibration, is applied only when it was fitted under the judge key
/// the run's spec records; otherwise the judged criteria are marked uncalibrated. `facts` holds
/// the fact checker of each persona the caller could load, by id; dialogues of other personas
/// have no [`Metric::FactContradictions`].
pub fn build(
    run: &str,
    rubric: &Rubric,
    spec: Option<serde_json::Value>,
    dialogues: &[Dialogue],
    verdicts: &[VerdictLine],
    mapping: Option<&crate::fit::Mapping>,
    facts: &BTreeMap<String, FactChecker>,
) -> RunReport {
    let run_key = spec.as_ref().and_then(|s| s.get("judge_key")).and_then(|k| k.as_str());
    let mapping = mapping.filter(|m| Some(m.judge_key.as_str()) == run_key);
    let by_id: BTreeMap<&str, &VerdictLine> =
        verdicts.iter().map(|v| (v.dialogue.as_str(), v)).collect();
    let mut judge = JudgeStats::default();
    let mut per_dialogue = Vec::new();
    for d in dialogues {
        let mut m = metrics::compute(d);
        if let Some(v) = facts.get(&d.persona).and_then(|c| metrics::fact_contradictions(d, c)) {
            m.insert(Metric::FactContradictions, v);
        }
        let mut criteria = BTreeMap::new();
        let mut reasons = BTreeMap::new();
        for c in rubric.criteria.iter().filter(|c| c.side != Side::User) {
            match c.scorer {
                Scorer::Metric => {
                    if let Some(v) = c.metric.and_then(|metric| m.get(&metric)) {
                        criteria.insert(c.id.clone(), *v);
                    }
                }
                Scorer::Judge => {
                    if let Some(cv) =
                        by_id.get(d.id.as_str()).and_then(|v| v.verdict.criteria.get(&c.id))
                    {
                        if let Some(s) = cv.score {
                            criteria.insert(c.id.clone(), s);
                        }
                        if let Some(r) = cv.reasons.iter().find(|r| !r.is_empty()) {
                            reasons.insert(c.id.clone(), r.clone());
                        }
                        judge.unreadable += cv.unreadable;
                        judge.readable += cv.samples.len();
                    }
                }
            }
        }
        if let Some(v) = by_id.get(d.id.as_str()) {
            judge.dialogues += 1;
            judge.calls += v.verdict.calls;
            judge.failed_calls += v.verdict.failed_calls;
        }
        per_dialogue.push(DialogueScores {
            id: d.id.clone(),
            persona: d.persona.clone(),
            simulator: d.simulator.clone(),
            criteria,
            reasons,
            metrics: m.into_iter().map(|(k, v)| (k.name(), v)).collect(),
            error: d.error.clone(),
        });
    }

    let seed_of =
        |s: &str| s.bytes().fold(17u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b)));
    let criteria = rubric
        .criteria
        .iter()
        .filter(|c| c.side != Side::User)
        .map(|c| {
            let values: Vec<(&str, f64)> = per_dialogue
                .iter()
                .filter_map(|d| d.criteria.get(&c.id).map(|v| (d.persona.as_str(), *v)))
                .collect();
            let all: Vec<f64> = values.iter().map(|(_, v)| *v).collect();
            let mut histogram = BTreeMap::new();
            for v in &all {
                *histogram.entry(number(v.round())).or_insert(0) += 1;
            }
            let mut per_persona = BTreeMap::new();
            for p in personas(&per_dialogue) {
                let mine: Vec<f64> =
                    values.iter().filter(|(q, _)| *q == p).map(|(_, v)| *v).collect();
                if let Some(e) = stats::mean_ci(&mine, seed_of(&c.id)) {
                    per_persona.insert(p.to_string(), e);
                }
            }
            let calibrated = mapping.and_then(|m| {
                let values: Vec<f64> = per_dialogue
                    .iter()
                    .filter_map(|d| {
                        let scores =
                            d.criteria.iter().map(|(k, v)| (k.clone(), Some(*v))).collect();
                        m.apply(&c.id, &scores)
                    })
                    .collect();
                stats::mean_ci(&values, seed_of(&c.id))
            });
            CriterionSummary {
                id: c.id.clone(),
                name: c.name.clone(),
                scorer: c.scorer,
                scale: c.scale,
                overall: stats::mean_ci(&all, seed_of(&c.id)),
                missing: per_dialogue.len() - all.len(),
                histogram,
                per_persona,
                calibrated,
            }
        })
        .collect();

    let metrics = Metric::ALL
        .iter()
        .filter(|m| {
            !matches!(
                m,
                Metric::OpenQuestionRate
                    | Metric::ActiveListening
                    | Metric::Reciprocity
                    | Metric::UserPacing
            )
        })
        .filter_map(|m| {
            let name = m.name();
            let values: Vec<(&str, f64)> = per_dialogue
                .iter()
                .filter_map(|d| d.metrics.get(&name).map(|v| (d.persona.as_str(), *v)))
                .collect();
            if values.is_empty() {
                return None;
            }
            let all: Vec<f64> = values.iter().map(|(_, v)| *v).collect();
            let per_persona = personas(&per_dialogue)
                .into_iter()
                .filter_map(|p| {
                    stats::mean(
                        &values
                            .iter()
                            .filter(|(q, _)| *q == p)
                            .map(|(_, v)| *v)
                            .collect::<Vec<_>>(),
                    )
                    .map(|v| (p.to_string(), v))
                })
                .collect();
            Some(MetricSummary {
                metric: name.clone(),
                overall: stats::mean_ci(&all, seed_of(&name)),
                per_persona,
            })
        })
        .collect();

    let trust = rubric
        .criteria
        .iter()
        .filter(|c| c.side != Side::User && c.scorer == Scorer::Judge)
        .map(|c| CriterionTrust {
            criterion: c.id.clone(),
            agreement: mapping.and_then(|m| m.held_out.get(&c.id).cloned()),
            data: mapping.filter(|m| m.held_out.contains_key(&c.id)).map(|m| m.data.clone()),
        })
        .collect();
    RunReport {
        trust,
        run: run.into(),
        rubric: (rubric.id.clone(), rubric.name.clone()),
        spec,
        dialogues: dialogues.len(),
        failed_dialogues: dialogues.iter().filter(|d| d.error.is_some()).count(),
        criteria,
        metrics,
        judge,
        per_dialogue,
    }
}

fn personas(per_dialogue: &[DialogueScores]) -> Vec<&str> {
    let mut out: Vec<&str> = per_dialogue.iter().map(|d| d.persona.as_str()).collect();
    out.sort();
    out.dedup();
    out
}

fn estimate(e: &Option<Estimate>) -> String {
    match e {
        Some(e) if e.n > 1 => format!("{:.2} [{:.2}, {:.2}]", e.value, e.low, e.high),
        Some(e) => format!("{:.2}", e.value),
        None => "—".into(),
    }
}

/// The report as Markdown.
pub fn markdown(r: &RunReport) -> String {
    let mut out =
        format!("# Evaluation: {}\n\nRubric **{}**; {} dialogues", r.run, r.rubric.1, r.dialogues);
    if r.failed_dialogues > 0 {
        out.push_str(&format!(" ({} stopped early with an error)", r.failed_dialogues));
    }
    out.push_str(".\n");
    if let Some(spec) = &r.spec {
        out.push_str(&format!("\nBatch: {}\n", spec_line(spec)));
    }
    let personas = personas(&r.per_dialogue);
    out.push_str("\n## Criteria (mean [95% bootstrap CI])\n\n| criterion | scale | all |");
    for p in &personas {
        out.push_str(&format!(" {p} |"));
    }
    out.push_str(" missing |\n|---|---|---|");
    for _ in &personas {
        out.push_str("---|");
    }
    out.push_str("---|\n");
    for c in &r.criteria {
        out.push_str(&format!(
            "| {} ({}) | {}..{} | {} |",
            c.name,
            if c.scorer == Scorer::Judge { "judge" } else { "exact" },
            number(c.scale.min),
            number(c.scale.max),
            estimate(&c.overall)
        ));
        for p in &personas {
            out.push_str(&format!(
                " {} |",
                c.per_persona
                    .get(*p)
                    .map(|e| format!("{:.2}", e.value))
                    .unwrap_or_else(|| "—".into())
            ));
        }
        out.push_str(&format!(" {} |\n", c.missing));
    }
    out.push_str("\n## Exact metrics\n\n| metric | all |");
    for p in &personas {
        out.push_str(&format!(" {p} |"));
    }
    out.push_str("\n|---|---|");
    for _ in &personas {
        out.push_str("---|");
    }
    out.push('\n');
    for m in &r.metrics {
        out.push_str(&format!("| {} | {} |", m.metric, estimate(&m.overall)));
        for p in &personas {
            out.push_str(&format!(
                " {} |",
                m.per_persona.get(*p).map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into())
            ));
        }
        out.push('\n');
    }
    let j = &r.judge;
    if j.dialogues > 0 {
        let share = if j.readable + j.unreadable == 0 {
            0.0
        } else {
            j.readable as f64 / (j.readable + j.unreadable) as f64
        };
        out.push_str(&format!("\nJudge: {} dialogues, {} calls ({} failed); {:.0}% of criterion scores readable ({} of {}).\n", j.dialogues, j.calls, j.failed_calls, share * 100.0, j.readable, j.readable + j.unreadable));
    } else {
        out.push_str("\nNo judge ran: judged criteria are empty; exact metrics only.\n");
    }
    if j.dialogues > 0 && !r.trust.is_empty() {
        out.push_str("\n## How far to trust the judged scores\n\n");
        out.push_str(&trust_lines(r).join("\n"));
        out.push('\n');
    }
    out
}

/// One line per judged criterion: the judge, its method and its measured agreement with people,
/// or that it has none.
pub fn trust_lines(r: &RunReport) -> Vec<String> {
    let judge = r
        .spec
        .as_ref()
        .map(|s| {
            format!(
                "`{}` ({})",
                s.get("judge_model").and_then(|v| v.as_str()).unwrap_or("?"),
                s.get("judge_method").and_then(|v| v.as_str()).unwrap_or("json")
            )
        })
        .unwrap_or_else(|| "the judge".into());
    r.trust
        .iter()
        .map(|t| match (&t.agreement, &t.data) {
            (Some(a), Some(data)) => format!(
                "- **{}**: judge {judge}; Spearman ρ with people on {} held-out conversations of `{data}`: raw {}, calibrated {}.",
                t.criterion,
                a.n,
                a.raw.map(|e| e.display(2)).unwrap_or_else(|| "undefined".into()),
                a.calibrated.map(|e| e.display(2)).unwrap_or_else(|| "undefined".into()),
            ),
            _ => format!(
                "- **{}**: judge {judge}; **not calibrated**: its agreement with people on this criterion has not been measured. Compare runs judged alike; do not read the number as what people would say.",
                t.criterion
            ),
        })
        .collect()
}

fn spec_line(spec: &serde_json::Value) -> String {
    let list = |k: &str| {
        spec.get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .map(|x| x.to_string().trim_matches('"').to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    format!(
        "personas {} × simulators {} × seeds {} × {} turns; persona model `{}`, judge `{}`.",
        list("personas"),
        list("simulators"),
        list("seeds"),
        spec.get("turns").map(|v| v.to_string()).unwrap_or_default(),
        spec.get("model").and_then(|v| v.as_str()).unwrap_or(""),
        spec.get("judge_model").and_then(|v| v.as_str()).unwrap_or("none")
    )
}

/// The page's style, shared with the comparison report.
pub const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1d2330}\
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #dde}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #dde;padding:4px 8px;text-align:left}th{background:#f4f5fa}.charts{display:flex;flex-wrap:wrap;gap:16px}\
.chart{border:1px solid #e4e6ef;border-radius:6px;padding:8px}details{margin:6px 0}summary{cursor:pointer}\
.t{margin:2px 0 2px 1em}.u{color:#345}.p{color:#6a2c70}.meta{color:#667;font-size:.9em}svg text{font:11px system-ui,sans-serif}";

/// The report as one HTML file with inline SVG charts and no external resources.
pub fn html(r: &RunReport, dialogues: &[Dialogue]) -> String {
    let mut out = format!("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Evaluation: {}</title><style>{STYLE}</style></head><body>", escape(&r.run));
    out.push_str(&format!(
        "<h1>Evaluation: {}</h1><p>Rubric <b>{}</b>; {} dialogues",
        escape(&r.run),
        escape(&r.rubric.1),
        r.dialogues
    ));
    if r.failed_dialogues > 0 {
        out.push_str(&format!(" ({} stopped early with an error)", r.failed_dialogues));
    }
    out.push_str(".</p>");
    if let Some(spec) = &r.spec {
        out.push_str(&format!("<p class=\"meta\">{}</p>", escape(&spec_line(spec))));
    }

    out.push_str("<h2>Per persona</h2><p class=\"meta\">Mean of each criterion per persona, as a share of its scale (0 = worst, 1 = best), with 95% bootstrap intervals.</p>");
    let personas = personas(&r.per_dialogue);
    let groups: Vec<svg::Group> = r
        .criteria
        .iter()
        .filter(|c| c.overall.is_some())
        .map(|c| svg::Group {
            label: c.name.clone(),
            bars: personas
                .iter()
                .map(|p| {
                    let e = c.per_persona.get(*p);
                    svg::Bar {
                        series: p.to_string(),
                        value: e.map(|e| c.scale.normalise(e.value)),
                        low: e.map(|e| c.scale.normalise(e.low)),
                        high: e.map(|e| c.scale.normalise(e.high)),
                    }
                })
                .collect(),
        })
        .collect();
    out.push_str(&svg::grouped_bars(
        &groups,
        &personas.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    ));

    out.push_str("<h2>Distributions</h2><div class=\"charts\">");
    for c in &r.criteria {
        if c.histogram.is_empty() {
            continue;
        }
        let counts: Vec<(String, usize)> =
            c.histogram.iter().map(|(k, v)| (k.clone(), *v)).collect();
        out.push_str(&format!(
            "<div class=\"chart\"><b>{}</b> <span class=\"meta\">mean {}</span>{}</div>",
            escape(&c.name),
            escape(&estimate(&c.overall)),
            svg::histogram(&counts)
        ));
    }
    out.push_str("</div>");

    out.push_str("<h2>Criteria</h2><table><tr><th>criterion</th><th>scorer</th><th>scale</th><th>mean [95% CI]</th><th>n</th><th>missing</th></tr>");
    for c in &r.criteria {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}..{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&c.name),
            if c.scorer == Scorer::Judge { "judge" } else { "exact" },
            number(c.scale.min),
            number(c.scale.max),
            escape(&estimate(&c.overall)),
            c.overall.map(|e| e.n).unwrap_or(0),
            c.missing
        ));
    }
    out.push_str("</table><h2>Exact metrics</h2><table><tr><th>metric</th><th>mean [95% CI]</th>");
    for p in &personas {
        out.push_str(&format!("<th>{}</th>", escape(p)));
    }
    out.push_str("</tr>");
    for m in &r.metrics {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td>",
            escape(&m.metric),
            escape(&estimate(&m.overall))
        ));
        for p in &personas {
            out.push_str(&format!(
                "<td>{}</td>",
                m.per_persona.get(*p).map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into())
            ));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    let j = &r.judge;
    out.push_str(&format!("<p class=\"meta\">Judge: {} dialogues, {} calls ({} failed), {} criterion scores read, {} unreadable.</p>", j.dialogues, j.calls, j.failed_calls, j.readable, j.unreadable));
    if j.dialogues > 0 && !r.trust.is_empty() {
        out.push_str("<h2>How far to trust the judged scores</h2><ul>");
        for line in trust_lines(r) {
            let text = escape(line.trim_start_matches("- ")).replace("**", "").replace('`', "");
            out.push_str(&format!("<li>{text}</li>"));
        }
        out.push_str("</ul>");
    }

    out.push_str("<h2>Dialogues</h2>");
    let by_id: BTreeMap<&str, &DialogueScores> =
        r.per_dialogue.iter().map(|d| (d.id.as_str(), d)).collect();
    for d in dialogues {
        let scores = by_id.get(d.id.as_str());
        let summary = scores
            .map(|s| {
                s.criteria
                    .iter()
                    .map(|(k, v)| format!("{k} {}", number((v * 100.0).round() / 100.0)))
                    .collect::<Vec<_>>()
                    .join(" · ")
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "<details><summary><b>{}</b> <span class=\"meta\">{}</span></summary>",
            escape(&d.id),
            escape(&summary)
        ));
        if let Some(e) = &d.error {
            out.push_str(&format!("<p class=\"meta\">Stopped early: {}</p>", escape(e)));
        }
        for t in &d.turns {
            let (class, who) =
                if t.speaker == Speaker::User { ("u", "User") } else { ("p", d.persona.as_str()) };
            out.push_str(&format!(
                "<div class=\"t {class}\"><b>{}:</b> {}</div>",
                escape(who),
                escape(&t.text)
            ));
        }
        if let Some(s) = scores {
            for (k, reason) in &s.reasons {
                out.push_str(&format!(
                    "<div class=\"meta\">{}: {}</div>",
                    escape(k),
                    escape(reason)
                ));
            }
        }
        if let Some(o) = &d.outcome {
            out.push_str(&format!(
                "<div class=\"meta\">Simulated user: emotion {} → {}, {} → {}; reactions: {}</div>",
                number(o.initial_emotion),
                number(o.final_emotion),
                escape(&o.initial_stance),
                escape(&o.final_stance),
                o.reactions.len()
            ));
        }
        out.push_str("</details>");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialogue::Turn;
    use crate::judge::{CriterionVerdict, Verdict};

    fn dialogue(id: &str, persona: &str, reply: &str) -> Dialogue {
        Dialogue {
            id: id.into(),
            persona: persona.into(),
            persona_name: None,
            simulator: Some("shy".into()),
            seed: Some(1),
            turns: vec![
                Turn { speaker: Speaker::Persona, text: "Hi!".into(), trace: None },
                Turn {
                    speaker: Speaker::User,
                    text: "<script>alert(1)</script>".into(),
                    trace: None,
                },
                Turn { speaker: Speaker::Persona, text: reply.into(), trace: None },
            ],
            secret: None,
            outcome: None,
            error: None,
        }
    }

    #[test]
    fn the_report_summarises_escapes_and_charts() {
        let rubric = Rubric::load("default").unwrap();
        let ds =
            vec![dialogue("a/shy/1", "a", "Oh? Tell me more."), dialogue("b/shy/1", "b", "Okay.")];
        let verdict = |score: f64| Verdict {
            criteria: [(
                "empathy".to_string(),
                CriterionVerdict {
                    score: Some(score),
                    samples: vec![score],
                    reasons: vec!["because".into()],
                    unreadable: 0,
                    distributions: vec![],
                },
            )]
            .into(),
            calls: 1,
            failed_calls: 0,
        };
        let vs = vec![
            VerdictLine { dialogue: "a/shy/1".into(), verdict: verdict(4.0) },
            VerdictLine { dialogue: "b/shy/1".into(), verdict: verdict(2.0) },
        ];
        let r = build("run1", &rubric, None, &ds, &vs, None, &BTreeMap::new());
        let empathy = r.criteria.iter().find(|c| c.id == "empathy").unwrap();
        assert_eq!(empathy.overall.unwrap().value, 3.0);
        assert_eq!(empathy.per_persona["a"].value, 4.0);
        assert_eq!(empathy.histogram["2"], 1);
        let in_role = r.criteria.iter().find(|c| c.id == "in_role").unwrap();
        assert_eq!(in_role.missing, 2, "the judge never answered in_role");
        assert_eq!(r.judge.calls, 2);
        let page = html(&r, &ds);
        assert!(page.contains("<svg") && page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("<script>"), "dialogue text is escaped");
        let md = markdown(&r);
        assert!(md.contains("| Empathy (judge) | 1..5 | 3.00 [2.00, 4.00] |"), "{md}");
        assert!(md.contains("**empathy**: judge the judge; **not calibrated**"), "{md}");

        // A mapping fitted for this judge is applied and its agreement stated; one fitted for
        // another judge (another key) is not.
        let fit = crate::fit::ridge(&[vec![1.0], vec![2.0], vec![3.0]], &[2.0, 4.0, 6.0], 0.0);
        let rho = Estimate { value: 0.4, low: 0.3, high: 0.5, n: 300, dropped: 0, resamples: 1000 };
        let mapping = crate::fit::Mapping {
            rubric: "default".into(),
            judge_key: "m|expected|1".into(),
            judge_model: "m".into(),
            method: "expected".into(),
            data: "chitchat".into(),
            features: vec!["empathy".into()],
            dimensions: [("empathy".to_string(), fit)].into(),
            held_out: [(
                "empathy".to_string(),
                crate::fit::HeldOutAgreement { n: 300, raw: Some(rho), calibrated: Some(rho) },
            )]
            .into(),
        };
        let spec = |key: &str| {
            Some(
                serde_json::json!({"judge_model": "m", "judge_method": "expected", "judge_key": key}),
            )
        };
        let r = build(
            "run1",
            &rubric,
            spec("m|expected|1"),
            &ds,
            &vs,
            Some(&mapping),
            &BTreeMap::new(),
        );
        let empathy = r.criteria.iter().find(|c| c.id == "empathy").unwrap();
        assert!((empathy.calibrated.unwrap().value - 6.0).abs() < 1e-9, "(4·2 + 2·2) / 2");
        let md = markdown(&r);
        assert!(md.contains("Spearman ρ with people on 300 held-out conversations of `chitchat`: raw +0.40 [+0.30, +0.50]"), "{md}");
        assert!(md.contains("**in_role**: judge `m` (expected); **not calibrated**"), "{md}");
        let r =
            build("run1", &rubric, spec("m|json|2"), &ds, &vs, Some(&mapping), &BTreeMap::new());
        assert!(r.trust.iter().all(|t| t.agreement.is_none()));
        assert!(r.criteria.iter().all(|c| c.calibrated.is_none()));
    }
}
