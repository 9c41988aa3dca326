//! Step 4: how close the persona feels to the user, and what to do about it this turn.
//!
//! The score moves by named contributions so that every decision can be read back as reasons
//! ("+5.0 they shared something personal", "-15 they were rude"). Gains are scaled by the
//! persona's warmth and capped per turn (pacing), losses are not: trust is slow to build and
//! quick to lose, and a practice partner that can be flattered to the top in two messages
//! teaches nothing.

use serde::{Deserialize, Serialize};

use crate::persona::Pacing;
use crate::signals::{Push, Signals};
use crate::stage::{Stage, StageChange};
use crate::understand::EmotionView;

/// Closeness, 0 (a stranger) to 100 (as close as this persona gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Closeness(u8);

impl Closeness {
    /// The highest value.
    pub const MAX: u8 = 100;

    /// A closeness, clamped to 0..=100.
    pub fn new(value: i32) -> Self {
        Self(value.clamp(0, Self::MAX as i32) as u8)
    }

    /// The value.
    pub fn get(self) -> u8 {
        self.0
    }
}

/// What the persona does this turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Keep the current warmth.
    Hold,
    /// Open up a little more.
    GoCloser,
    /// Give space, set a boundary, or comfort.
    StepBack,
}

impl Decision {
    /// The name used in prompts and traces.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Hold => "hold",
            Decision::GoCloser => "go_closer",
            Decision::StepBack => "step_back",
        }
    }
}

/// One reason behind the decision, with its effect on the score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// Stable tag ("self_disclosure", "rudeness", …).
    pub code: String,
    /// Points it added or removed (0 for reasons that only shape the decision).
    pub points: f32,
    /// In words.
    pub detail: String,
}

/// Step 4's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClosenessDecision {
    /// Before the message.
    pub before: Closeness,
    /// After it.
    pub after: Closeness,
    /// What to do.
    pub decision: Decision,
    /// Why, strongest first.
    pub reasons: Vec<Reason>,
}

/// A turn must add at least this much for the persona to go closer.
const GO_CLOSER_POINTS: f32 = 3.0;

/// Step 4.
pub fn decide(before: Closeness, signals: &Signals, emotion: &EmotionView, stage: &StageChange, pacing: &Pacing) -> ClosenessDecision {
    let mut reasons = Vec::new();
    let mut add = |code: &str, points: f32, detail: &str| reasons.push(Reason { code: code.into(), points, detail: detail.into() });

    if signals.words >= 6 {
        add("engaged", 1.0, "they wrote more than a few words");
    }
    if signals.self_disclosure > 0.0 {
        add("self_disclosure", 5.0 * signals.self_disclosure, "they shared something personal");
    }
    if signals.asks_about_persona {
        add("curiosity", 2.0, "they asked about you");
    }
    if signals.answered_question {
        add("reciprocity", 2.0, "they answered your question");
    }
    if signals.compliment {
        add("compliment", 2.0, "they said something kind about you");
    }
    if emotion.valence > 0.2 {
        add("positive_mood", 3.0 * emotion.valence, "they sound happy");
    }
    if emotion.trend < -0.1 {
        add("sinking_mood", -2.0, "their mood has been sinking");
    }
    if signals.rudeness {
        add("rudeness", -15.0, "they were rude");
    }
    match signals.push {
        Some(Push::Physical) => add("pushing", -10.0, "they pushed for physical intimacy"),
        Some(Push::Romantic) if stage.from < Stage::Close => add("pushing", -5.0, "they pushed for romance too early"),
        _ => {}
    }
    if emotion.distress {
        add("distress", 0.0, "they seem to be struggling: comfort them, do not flirt");
    }
    if stage.to != stage.from {
        add("stage", 0.0, &format!("stage {} → {}: {}", stage.from.as_str(), stage.to.as_str(), stage.why));
    }

    let gains: f32 = reasons.iter().map(|r| r.points).filter(|p| *p > 0.0).sum::<f32>() * pacing.warmth;
    let gains = gains.min(pacing.max_gain_per_turn as f32);
    let losses: f32 = reasons.iter().map(|r| r.points).filter(|p| *p < 0.0).sum();
    let delta = gains + losses;
    let after = Closeness::new(before.get() as i32 + delta.round() as i32);

    let bad_sign = reasons.iter().any(|r| matches!(r.code.as_str(), "rudeness" | "pushing" | "distress")) || stage.to < stage.from;
    let decision = if bad_sign {
        Decision::StepBack
    } else if delta >= GO_CLOSER_POINTS || stage.to > stage.from {
        Decision::GoCloser
    } else {
        Decision::Hold
    };
    reasons.sort_by(|a, b| b.points.abs().total_cmp(&a.points.abs()));
    for r in &mut reasons {
        r.points = (r.points * 10.0).round() / 10.0;
    }
    ClosenessDecision { before, after, decision, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::understand::neutral;
    use proptest::prelude::*;

    fn unchanged() -> StageChange {
        StageChange { from: Stage::Casual, to: Stage::Casual, why: String::new() }
    }

    #[test]
    fn opening_up_brings_the_persona_closer_with_reasons() {
        let s = Signals { words: 14, self_disclosure: 1.0, answered_question: true, ..Default::default() };
        let d = decide(Closeness::new(20), &s, &neutral(), &unchanged(), &Pacing::default());
        assert_eq!(d.decision, Decision::GoCloser);
        assert_eq!(d.after.get(), 28, "capped at max_gain_per_turn");
        assert_eq!(d.reasons[0].code, "self_disclosure");
    }

    #[test]
    fn a_slow_persona_warms_slowly() {
        let s = Signals { words: 14, self_disclosure: 0.5, ..Default::default() };
        let slow = Pacing { warmth: 0.5, ..Pacing::default() };
        assert!(decide(Closeness::new(20), &s, &neutral(), &unchanged(), &slow).after < decide(Closeness::new(20), &s, &neutral(), &unchanged(), &Pacing::default()).after);
    }

    #[test]
    fn rudeness_costs_more_than_a_compliment_earns() {
        let s = Signals { words: 6, rudeness: true, compliment: true, ..Default::default() };
        let d = decide(Closeness::new(50), &s, &neutral(), &unchanged(), &Pacing::default());
        assert_eq!(d.decision, Decision::StepBack);
        assert!(d.after.get() < 50);
    }

    #[test]
    fn distress_means_stepping_back_without_a_penalty() {
        let e = EmotionView { distress: true, valence: -0.6, ..neutral() };
        let s = Signals { words: 10, self_disclosure: 1.0, ..Default::default() };
        let d = decide(Closeness::new(40), &s, &e, &unchanged(), &Pacing::default());
        assert_eq!(d.decision, Decision::StepBack);
        assert!(d.after.get() >= 40);
        assert!(d.reasons.iter().any(|r| r.code == "distress"));
    }

    proptest! {
        #[test]
        fn the_score_stays_in_range_and_gains_respect_pacing(
            before in 0u8..=100, words in 0usize..50, disclosure in 0f32..=1.0, flags in any::<[bool; 4]>(),
            valence in -1f32..=1.0, max_gain in 1u8..20, warmth in 0.1f32..3.0,
        ) {
            let s = Signals { words, self_disclosure: disclosure, asks_about_persona: flags[0], answered_question: flags[1], compliment: flags[2], rudeness: flags[3], push: None, asks_for_secret: false };
            let e = EmotionView { valence, ..neutral() };
            let pacing = Pacing { max_gain_per_turn: max_gain, warmth, ..Pacing::default() };
            let d = decide(Closeness::new(before as i32), &s, &e, &unchanged(), &pacing);
            prop_assert!(d.after.get() <= 100);
            prop_assert!(d.after.get() as i32 - before as i32 <= max_gain as i32);
            if flags[3] { prop_assert_eq!(d.decision, Decision::StepBack); }
            // Same input, same output: the decision is a function.
            prop_assert_eq!(d.clone(), decide(Closeness::new(before as i32), &s, &e, &unchanged(), &pacing));
        }
    }
}
