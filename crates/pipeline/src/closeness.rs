//! Step 4: how close the persona feels to the user, and what to do about it this turn.
//!
//! The score moves by named contributions so that every decision can be read back as reasons
//! ("+5.0 they shared something personal", "-15 they were rude"); what each is worth is the
//! persona's [`Weights`]. Gains are scaled by the persona's warmth and capped per turn (pacing),
//! losses are not: trust is slow to build and quick to lose, and a practice partner that can be
//! flattered to the top in two messages teaches nothing.
//!
//! Gains must be earned by conversation, not by pasting: a message that repeats an earlier one
//! earns nothing (and a run of them costs), a message that neither takes up what the persona
//! said nor answers her question keeps only [`Weights::unheard_share`] of what it earned, and
//! asking for the secret again while it is locked costs a little each time.

use serde::{Deserialize, Serialize};

use crate::persona::{Pacing, Weights};
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
pub fn decide(
    before: Closeness,
    signals: &Signals,
    emotion: &EmotionView,
    stage: &StageChange,
    pacing: &Pacing,
    weights: &Weights,
) -> ClosenessDecision {
    let mut reasons = Vec::new();
    fn add(reasons: &mut Vec<Reason>, code: &str, points: f32, detail: &str) {
        reasons.push(Reason { code: code.into(), points, detail: detail.into() });
    }
    let w = weights;
    let thread = &signals.thread;
    // A message that neither takes up what she said nor answers her question.
    let unheard = thread.could_listen && thread.listened.is_none() && !signals.answered_question;
    // What "not listening" takes back from the message's gains (before warmth and the cap).
    let mut taken_back = 0.0;

    if let Some(repeat) = &thread.repeats {
        // Nothing a repeated message says is heard again; a run of them is not listening.
        if thread.repeats_in_a_row >= 2 {
            add(
                &mut reasons,
                "repeating",
                w.repeating,
                &format!(
                    "they keep sending the same message ({repeat}; {} in a row)",
                    thread.repeats_in_a_row
                ),
            );
        } else {
            add(
                &mut reasons,
                "repeating",
                0.0,
                &format!("they said this before ({repeat}): it earns nothing again"),
            );
        }
    } else {
        if signals.words >= 6 {
            add(&mut reasons, "engaged", w.engaged, "they wrote more than a few words");
        }
        if signals.self_disclosure > 0.0 {
            add(
                &mut reasons,
                "self_disclosure",
                w.self_disclosure * signals.self_disclosure,
                "they shared something personal",
            );
        }
        if signals.asks_about_persona {
            add(&mut reasons, "curiosity", w.curiosity, "they asked about you");
        }
        if let Some(how) = &thread.listened {
            add(
                &mut reasons,
                "listening",
                w.listening,
                &format!("they took up what you said ({how})"),
            );
        }
        if signals.answered_question {
            let how = thread.answered.as_deref().unwrap_or("answered");
            add(
                &mut reasons,
                "reciprocity",
                w.reciprocity,
                &format!("they answered your question ({how})"),
            );
        }
        if signals.compliment {
            add(&mut reasons, "compliment", w.compliment, "they said something kind about you");
        }
        if emotion.valence > 0.2 {
            add(
                &mut reasons,
                "positive_mood",
                w.positive_mood * emotion.valence,
                "they sound happy",
            );
        }
        let earned: f32 = reasons.iter().map(|r| r.points).filter(|p| *p > 0.0).sum();
        if unheard && earned > 0.0 {
            let share = w.unheard_share;
            taken_back = earned * (1.0 - share);
            add(&mut reasons, "not_listening", -taken_back, &format!("they did not take up anything you said or answer your question: {:.0}% of the rest counts, and never past {}", share * 100.0, pacing.close_at));
        }
    }
    if emotion.trend < -0.1 {
        add(&mut reasons, "sinking_mood", w.sinking_mood, "their mood has been sinking");
    }
    if signals.rudeness {
        add(&mut reasons, "rudeness", w.rudeness, "they were rude");
    }
    match signals.push {
        Some(Push::Physical) => {
            add(&mut reasons, "pushing", w.physical_push, "they pushed for physical intimacy")
        }
        Some(Push::Romantic) if stage.from < Stage::Close => {
            add(&mut reasons, "pushing", w.romantic_push, "they pushed for romance too early")
        }
        _ => {}
    }
    if signals.asks_for_secret_again {
        add(
            &mut reasons,
            "secret_push",
            w.secret_push,
            "they keep asking for your secret before you offered it",
        );
    }
    if emotion.distress {
        add(
            &mut reasons,
            "distress",
            0.0,
            "they seem to be struggling: comfort them, do not flirt",
        );
    }
    if stage.to != stage.from {
        add(
            &mut reasons,
            "stage",
            0.0,
            &format!("stage {} → {}: {}", stage.from.as_str(), stage.to.as_str(), stage.why),
        );
    }

    // "Not listening" takes back part of what the message earned, so it counts against the
    // gains (before warmth and the cap); every other loss counts in full.
    let earned: f32 = reasons.iter().map(|r| r.points).filter(|p| *p > 0.0).sum();
    let gains =
        ((earned - taken_back).max(0.0) * pacing.warmth).min(pacing.max_gain_per_turn as f32);
    let losses: f32 =
        reasons.iter().map(|r| r.points).filter(|p| *p < 0.0).sum::<f32>() + taken_back;
    let delta = gains + losses;
    let mut after = Closeness::new(before.get() as i32 + delta.round() as i32);
    if unheard && thread.repeats.is_none() {
        // The closeness of the close stage is earned only by listening: however many warm
        // words a message stacks up, if it ignores her it cannot lift the score past close_at.
        let ceiling = pacing.close_at.saturating_sub(1).max(before.get());
        after = after.min(Closeness::new(ceiling as i32));
    }

    let bad_sign =
        reasons.iter().any(|r| matches!(r.code.as_str(), "rudeness" | "pushing" | "distress"))
            || stage.to < stage.from;
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
    use crate::listening::ThreadReading;
    use crate::understand::neutral;
    use proptest::prelude::*;

    const W: Weights = Weights::DEFAULT;

    fn unchanged() -> StageChange {
        StageChange { from: Stage::Casual, to: Stage::Casual, why: String::new() }
    }

    #[test]
    fn opening_up_brings_the_persona_closer_with_reasons() {
        let s = Signals {
            words: 14,
            self_disclosure: 1.0,
            answered_question: true,
            ..Default::default()
        };
        let d = decide(Closeness::new(20), &s, &neutral(), &unchanged(), &Pacing::default(), &W);
        assert_eq!(d.decision, Decision::GoCloser);
        assert_eq!(d.after.get(), 28, "capped at max_gain_per_turn");
        assert_eq!(d.reasons[0].code, "self_disclosure");
    }

    #[test]
    fn a_slow_persona_warms_slowly() {
        let s = Signals { words: 14, self_disclosure: 0.5, ..Default::default() };
        let slow = Pacing { warmth: 0.5, ..Pacing::default() };
        assert!(
            decide(Closeness::new(20), &s, &neutral(), &unchanged(), &slow, &W).after
                < decide(Closeness::new(20), &s, &neutral(), &unchanged(), &Pacing::default(), &W)
                    .after
        );
    }

    #[test]
    fn rudeness_costs_more_than_a_compliment_earns() {
        let s = Signals { words: 6, rudeness: true, compliment: true, ..Default::default() };
        let d = decide(Closeness::new(50), &s, &neutral(), &unchanged(), &Pacing::default(), &W);
        assert_eq!(d.decision, Decision::StepBack);
        assert!(d.after.get() < 50);
    }

    #[test]
    fn asking_for_the_secret_again_costs_and_says_why() {
        let s = Signals {
            words: 6,
            asks_for_secret: true,
            asks_for_secret_again: true,
            ..Default::default()
        };
        let d = decide(Closeness::new(30), &s, &neutral(), &unchanged(), &Pacing::default(), &W);
        assert!(d.after.get() < 30);
        assert!(
            d.reasons.iter().any(|r| r.code == "secret_push" && r.points < 0.0),
            "{:?}",
            d.reasons
        );
    }

    #[test]
    fn distress_means_stepping_back_without_a_penalty() {
        let e = EmotionView { distress: true, valence: -0.6, ..neutral() };
        let s = Signals { words: 10, self_disclosure: 1.0, ..Default::default() };
        let d = decide(Closeness::new(40), &s, &e, &unchanged(), &Pacing::default(), &W);
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
            let s = Signals { words, self_disclosure: disclosure, asks_about_persona: flags[0], answered_question: flags[1], compliment: flags[2], rudeness: flags[3], ..Signals::default() };
            let e = EmotionView { valence, ..neutral() };
            let pacing = Pacing { max_gain_per_turn: max_gain, warmth, ..Pacing::default() };
            let d = decide(Closeness::new(before as i32), &s, &e, &unchanged(), &pacing, &W);
            prop_assert!(d.after.get() <= 100);
            prop_assert!(d.after.get() as i32 - before as i32 <= max_gain as i32);
            if flags[3] { prop_assert_eq!(d.decision, Decision::StepBack); }
            // Same input, same output: the decision is a function.
            prop_assert_eq!(d.clone(), decide(Closeness::new(before as i32), &s, &e, &unchanged(), &pacing, &W));
        }

        #[test]
        fn a_repeat_never_gains_and_ignoring_her_earns_at_most_the_unheard_share(
            before in 0u8..=100, words in 0usize..50, disclosure in 0f32..=1.0, flags in any::<[bool; 3]>(), valence in -1f32..=1.0, run in 1u32..5,
        ) {
            let heard = Signals { words, self_disclosure: disclosure, asks_about_persona: flags[0], compliment: flags[1], ..Signals::default() };
            let e = EmotionView { valence, ..neutral() };
            let mut repeat = heard.clone();
            repeat.thread = ThreadReading { repeats: Some("the same".into()), repeats_in_a_row: run, could_listen: true, ..Default::default() };
            let d = decide(Closeness::new(before as i32), &repeat, &e, &unchanged(), &Pacing::default(), &W);
            prop_assert!(d.after <= d.before, "{:?}", d.reasons);
            if run >= 2 && before > 0 {
                prop_assert!(d.after < d.before, "a run of repeats costs");
            }
            let mut unheard = heard.clone();
            unheard.thread.could_listen = true;
            let mut listened = unheard.clone();
            listened.thread.listened = Some("took up 'cellar'".into());
            let wide = Pacing { max_gain_per_turn: 100, ..Pacing::default() };
            let gain = |s: &Signals| decide(Closeness::new(0), s, &e, &unchanged(), &wide, &W).after.get() as f32;
            let full = gain(&heard);
            prop_assert!(gain(&unheard) <= (full * W.unheard_share).round() + 1.0, "{} of {}", gain(&unheard), full);
            prop_assert!(gain(&listened) >= full, "listening never earns less");
            let from_high = decide(Closeness::new(before as i32), &unheard, &e, &unchanged(), &wide, &W).after.get();
            prop_assert!(from_high <= before.max(Pacing::default().close_at - 1), "ignoring her never lifts closeness past close_at: {} from {}", from_high, before);
            let _ = flags[2];
        }
    }
}
