//! The practice coach's judged criteria: what the coach cannot count (the `coach` rubric's
//! "empathy shown") scored by the LLM judge on the person's side of a conversation, with how far
//! that judge agrees with a person.
//!
//! The agreement comes from the rubric's saved calibration (`rapport eval calibrate --rubric
//! coach --fit`, on `datasets/coach/empathy.jsonl`), and is stated only when it was measured
//! for the same judge (model, method, prompt): a score from any other judge is shown as
//! uncalibrated rather than borrowing a number it never earned.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::fit::{HeldOutAgreement, Mapping};
use crate::judge::{Judge, PersonaBrief};
use crate::rubric::{Rubric, Side};
use crate::{Dialogue, EvalError};

/// One judged criterion on the person's side.
#[derive(Debug, Clone, Serialize)]
pub struct JudgedSkill {
    /// The criterion's id (`empathy_shown`).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The judge's score on the rubric's scale; `None` when its answer could not be read.
    pub score: Option<f64>,
    /// The scale.
    pub scale: (f64, f64),
    /// The score mapped onto people's ratings by the saved calibration (same judge only).
    pub calibrated: Option<f64>,
    /// The judge's measured agreement with a person on held-out items (same judge only).
    pub agreement: Option<HeldOutAgreement>,
    /// Where that agreement was measured.
    pub data: Option<String>,
}

/// Judges the person's side of `dialogue` on `rubric`'s judged user-side criteria.
/// `judge_model` names the judge's model as its calibration records it; `mapping` is the
/// rubric's saved calibration, if any (used only when fitted for this judge).
pub async fn judge_user_side(
    judge: &Judge,
    judge_model: &str,
    rubric: &Rubric,
    dialogue: &Dialogue,
    mapping: Option<&Mapping>,
) -> Result<Vec<JudgedSkill>, EvalError> {
    let criteria = rubric.judged(Side::User);
    if criteria.is_empty() {
        return Ok(Vec::new());
    }
    let persona = PersonaBrief {
        name: dialogue.persona_name.clone().unwrap_or_else(|| "Persona".to_string()),
        description: String::new(),
    };
    let verdict = judge.score(dialogue, &criteria, Side::User, &persona).await?;
    let key = judge.key(judge_model, &criteria);
    let mapping = mapping.filter(|m| m.judge_key == key);
    let scores: BTreeMap<String, Option<f64>> =
        verdict.criteria.iter().map(|(k, v)| (k.clone(), v.score)).collect();
    Ok(criteria
        .iter()
        .map(|c| JudgedSkill {
            id: c.id.clone(),
            name: c.name.clone(),
            score: scores.get(&c.id).copied().flatten(),
            scale: (c.scale.min, c.scale.max),
            calibrated: mapping.and_then(|m| m.apply(&c.id, &scores)),
            agreement: mapping.and_then(|m| m.held_out.get(&c.id).cloned()),
            data: mapping.filter(|m| m.held_out.contains_key(&c.id)).map(|m| m.data.clone()),
        })
        .collect())
}

/// One line for people: the score, and how far to trust it.
pub fn describe(skill: &JudgedSkill) -> String {
    let score = match skill.score {
        Some(s) => format!("{s:.1} on {}–{}", skill.scale.0, skill.scale.1),
        None => "unreadable (the judge's answer could not be read)".to_string(),
    };
    let trust = match (&skill.agreement, skill.calibrated) {
        (Some(a), calibrated) => {
            let rho = a.raw.as_ref().map_or("undefined".to_string(), |e| e.display(2));
            let mapped =
                calibrated.map(|c| format!("; people would give about {c:.1}")).unwrap_or_default();
            format!(
                "judged; agreement with a person's rating, Spearman ρ {rho} on {} held-out conversations ({}){mapped}",
                a.n,
                skill.data.as_deref().unwrap_or("rated set")
            )
        }
        (None, _) => "judged; not calibrated for this judge: its agreement with people is unmeasured, compare it only with scores from the same judge".to_string(),
    };
    format!("{}: {score} ({trust})", skill.name)
}
