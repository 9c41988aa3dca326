//! Rubrics: what "good" means, criterion by criterion, with anchored scales.
//!
//! A rubric is a TOML file. Each criterion is scored either by the LLM judge (reading the
//! anchors) or by an exact metric (no judge), and concerns either the persona's side of the
//! dialogue or the user's (the practice coach). Anchors are what make judge scores comparable
//! between runs: a 4 means the text next to 4, not the judge's mood.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::metrics::Metric;
use crate::EvalError;

/// A set of criteria.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rubric {
    /// Short name, used in run directories and reports.
    pub id: String,
    /// Title for reports.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// The criteria, in report order.
    #[serde(rename = "criterion")]
    pub criteria: Vec<Criterion>,
}

/// One thing to score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    /// Identifier: lower-case letters, digits and `_` (the judge answers with it as a JSON key).
    pub id: String,
    /// Title.
    pub name: String,
    /// The question the judge answers, about the side being scored.
    pub question: String,
    /// The lowest and highest score.
    pub scale: Scale,
    /// Who scores it.
    #[serde(default)]
    pub scorer: Scorer,
    /// For `scorer = "metric"`: which one.
    #[serde(default)]
    pub metric: Option<Metric>,
    /// Whose turns are scored.
    #[serde(default)]
    pub side: Side,
    /// What scores mean; required for judged criteria (at least the two ends).
    #[serde(default, rename = "anchor")]
    pub anchors: Vec<Anchor>,
}

/// A closed range of scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// Worst.
    pub min: f64,
    /// Best.
    pub max: f64,
}

impl Scale {
    /// Whether `score` is on the scale.
    pub fn contains(&self, score: f64) -> bool {
        score >= self.min && score <= self.max
    }

    /// `score` mapped to 0..=1, for charts that put criteria side by side.
    pub fn normalise(&self, score: f64) -> f64 {
        if self.max == self.min {
            0.0
        } else {
            (score - self.min) / (self.max - self.min)
        }
    }
}

/// Who scores a criterion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scorer {
    /// The LLM judge, from the question and anchors.
    #[default]
    Judge,
    /// An exact metric computed from the dialogue and its traces.
    Metric,
}

/// Whose turns a criterion is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The persona's replies (evaluation of Rapport).
    #[default]
    Persona,
    /// The person's messages (the practice coach).
    User,
    /// The conversation as a whole (human-rated calibration sets).
    Dialogue,
}

/// What one score means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// The score.
    pub score: f64,
    /// What a dialogue that earns it looks like.
    pub text: String,
}

const DEFAULT: &str = include_str!("../rubrics/default.toml");
const COACH: &str = include_str!("../rubrics/coach.toml");
const CHITCHAT: &str = include_str!("../rubrics/chitchat.toml");

/// Where a rubric's calibration mapping lives: next to a rubric file (`x.toml` →
/// `x.calibration.json`), or for a shipped rubric in `eval/rubrics/` of the source tree.
pub fn mapping_path(name_or_path: &str) -> std::path::PathBuf {
    match name_or_path {
        "default" | "coach" | "chitchat" => {
            Path::new("eval/rubrics").join(format!("{name_or_path}.calibration.json"))
        }
        path => Path::new(path).with_extension("calibration.json"),
    }
}

impl Rubric {
    /// A shipped rubric by id (`default`, `coach`, `chitchat`), or a TOML file by path.
    pub fn load(name_or_path: &str) -> Result<Self, EvalError> {
        let text = match name_or_path {
            "default" => DEFAULT.to_string(),
            "coach" => COACH.to_string(),
            "chitchat" => CHITCHAT.to_string(),
            path => std::fs::read_to_string(Path::new(path)).map_err(|e| {
                EvalError::Io(format!(
                    "reading rubric {path}: {e} (shipped rubrics: default, coach, chitchat)"
                ))
            })?,
        };
        Self::parse(&text).map_err(|e| match e {
            EvalError::Invalid(m) => EvalError::Invalid(format!("rubric {name_or_path}: {m}")),
            other => other,
        })
    }

    /// Parses and validates a rubric.
    pub fn parse(text: &str) -> Result<Self, EvalError> {
        let rubric: Rubric = toml::from_str(text).map_err(|e| EvalError::Invalid(e.to_string()))?;
        rubric.validate()?;
        Ok(rubric)
    }

    fn validate(&self) -> Result<(), EvalError> {
        let bad = |m: String| Err(EvalError::Invalid(m));
        if self.criteria.is_empty() {
            return bad("has no [[criterion]]".into());
        }
        let mut seen = BTreeSet::new();
        for c in &self.criteria {
            if c.id.is_empty()
                || !c
                    .id
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
            {
                return bad(format!(
                    "criterion id {:?}: use lower-case letters, digits and _",
                    c.id
                ));
            }
            if !seen.insert(c.id.as_str()) {
                return bad(format!("criterion id {:?} appears twice", c.id));
            }
            if c.scale.min.partial_cmp(&c.scale.max) != Some(std::cmp::Ordering::Less)
                || !c.scale.min.is_finite()
                || !c.scale.max.is_finite()
            {
                return bad(format!("criterion {}: scale min must be below max", c.id));
            }
            for a in &c.anchors {
                if !c.scale.contains(a.score) {
                    return bad(format!(
                        "criterion {}: anchor {} is off the scale {}..{}",
                        c.id, a.score, c.scale.min, c.scale.max
                    ));
                }
            }
            match c.scorer {
                Scorer::Judge => {
                    if c.metric.is_some() {
                        return bad(format!("criterion {}: a judged criterion names no metric (set scorer = \"metric\")", c.id));
                    }
                    let has = |s: f64| c.anchors.iter().any(|a| a.score == s);
                    if !has(c.scale.min) || !has(c.scale.max) {
                        return bad(format!("criterion {}: a judged criterion needs anchors for both ends ({} and {})", c.id, c.scale.min, c.scale.max));
                    }
                }
                Scorer::Metric => {
                    if c.metric.is_none() {
                        return bad(format!(
                            "criterion {}: scorer = \"metric\" needs metric = one of {}",
                            c.id,
                            Metric::names().join(", ")
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The criteria the judge scores on `side`.
    pub fn judged(&self, side: Side) -> Vec<&Criterion> {
        self.criteria.iter().filter(|c| c.scorer == Scorer::Judge && c.side == side).collect()
    }

    /// The judged criteria on `side` named by `ids`, in that order, or an error naming the one
    /// it lacks and the ones it has.
    pub fn judged_named(&self, side: Side, ids: &[String]) -> Result<Vec<&Criterion>, EvalError> {
        let judged = self.judged(side);
        ids.iter()
            .map(|id| {
                judged.iter().copied().find(|c| c.id == *id).ok_or_else(|| {
                    EvalError::Invalid(format!(
                        "the {} rubric has no judged {} criterion '{id}' (it has: {})",
                        self.id,
                        format!("{side:?}").to_lowercase(),
                        judged.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
                    ))
                })
            })
            .collect()
    }

    /// One criterion by id.
    pub fn criterion(&self, id: &str) -> Option<&Criterion> {
        self.criteria.iter().find(|c| c.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_rubrics_are_valid() {
        for name in ["default", "coach", "chitchat"] {
            let r = Rubric::load(name).unwrap();
            assert!(!r.criteria.is_empty(), "{name}");
        }
        let d = Rubric::load("default").unwrap();
        let secret = d.criterion("secret_keeping").unwrap();
        assert_eq!((secret.scale.min, secret.scale.max), (-10.0, 0.0));
        assert_eq!(secret.scorer, Scorer::Metric);
        assert_eq!(
            Rubric::load("coach").unwrap().criteria.iter().filter(|c| c.side == Side::User).count(),
            Rubric::load("coach").unwrap().criteria.len()
        );
    }

    #[test]
    fn mistakes_are_named() {
        let base = |extra: &str| {
            format!("id = \"r\"\nname = \"R\"\n[[criterion]]\nid = \"ok\"\nname = \"OK\"\nquestion = \"?\"\nscale = {{ min = 1, max = 5 }}\n{extra}")
        };
        let err = |t: String| Rubric::parse(&t).unwrap_err().to_string();
        assert!(err(base("")).contains("anchors for both ends"));
        assert!(
            err(base("[[criterion.anchor]]\nscore = 9\ntext = \"x\"")).contains("off the scale")
        );
        assert!(err(base("scorer = \"metric\"")).contains("needs metric"));
        assert!(err(base("scorer = \"metric\"\nmetric = \"vibes\"")).contains("unknown variant"));
        assert!(err(base("colour = \"red\"")).contains("unknown field"));
        assert!(err(base("").replace("id = \"ok\"", "id = \"Bad Id\"")).contains("lower-case"));
        assert!(Rubric::load("/no/such/rubric.toml")
            .unwrap_err()
            .to_string()
            .contains("shipped rubrics"));
    }
}
