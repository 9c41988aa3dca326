//! Step 3: where the relationship is — ice-breaker, casual, close — and how it moves.
//!
//! A state machine with one step at a time in either direction. Moving on needs signals that
//! the conversation has earned it (enough turns, closeness, both sides having shared something
//! personal, enough messages that took up what the persona said, a mood that is not sinking); stepping back needs only one bad sign, because a
//! persona that keeps flirting after an insult or during someone's distress is the failure
//! people notice.

use serde::{Deserialize, Serialize};

use crate::persona::Pacing;
use crate::signals::{Push, Signals};
use crate::understand::EmotionView;

// `Stage` is defined with the persona, whose examples are marked with the stage they fit: a
// persona describes stages, and this step moves between them (so the step depends on the
// persona, never the other way round).
pub use crate::persona::Stage;

impl Stage {
    fn previous(self) -> Stage {
        match self {
            Stage::Close => Stage::Casual,
            _ => Stage::IceBreaker,
        }
    }

    /// The name used in prompts and traces.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::IceBreaker => "ice_breaker",
            Stage::Casual => "casual",
            Stage::Close => "close",
        }
    }
}

/// The tracker's memory between turns.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StageState {
    /// The current stage.
    pub stage: Stage,
    /// User turns spent in it.
    pub turns_in_stage: u32,
    /// User messages that shared something personal.
    pub user_disclosures: u32,
    /// Persona replies that shared something personal.
    pub persona_disclosures: u32,
}

/// What happened to the stage this turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageChange {
    /// Stage before the message.
    pub from: Stage,
    /// Stage after it.
    pub to: Stage,
    /// Why it moved, or what it still waits for.
    pub why: String,
}

/// A user message counts as a disclosure from this strength.
pub const DISCLOSURE: f32 = 0.5;

/// Mood below which the relationship does not move closer.
const SINKING_MOOD: f32 = -0.2;

/// Inputs of step 3 that come from earlier steps.
pub struct StageInput<'a> {
    /// The user's message number, from 1.
    pub turn: u32,
    /// Lexical signals of the message.
    pub signals: &'a Signals,
    /// Its emotion.
    pub emotion: &'a EmotionView,
    /// Closeness before this message.
    pub closeness: u8,
    /// The user's messages so far, this one included, that took up what the persona said.
    pub listened: u32,
}

/// Step 3: the next stage.
pub fn track(
    state: &StageState,
    input: &StageInput<'_>,
    pacing: &Pacing,
) -> (StageState, StageChange) {
    let mut next = state.clone();
    if input.signals.self_disclosure >= DISCLOSURE {
        next.user_disclosures += 1;
    }
    let from = state.stage;
    let s = input.signals;
    let step_back = if s.rudeness {
        Some("they were rude")
    } else if s.push == Some(Push::Physical) {
        Some("they pushed for physical intimacy")
    } else if s.push == Some(Push::Romantic) && from < Stage::Close {
        Some("they pushed for romance before the relationship was close")
    } else if input.emotion.distress && from == Stage::Close {
        Some("they are in distress: support comes before closeness")
    } else {
        None
    };
    let (to, why) = if let Some(why) = step_back {
        (from.previous(), why.to_string())
    } else {
        match from {
            Stage::IceBreaker => {
                let missing = missing(&[
                    (
                        input.turn >= pacing.min_turns_casual,
                        format!("turn {} of {}", input.turn, pacing.min_turns_casual),
                    ),
                    (
                        input.closeness >= pacing.casual_at,
                        format!("closeness {} of {}", input.closeness, pacing.casual_at),
                    ),
                ]);
                if missing.is_empty() {
                    (Stage::Casual, "the ice is broken".into())
                } else {
                    (from, format!("waiting for {missing}"))
                }
            }
            Stage::Casual => {
                let m = pacing.min_mutual_disclosures;
                let missing = missing(&[
                    (
                        input.turn >= pacing.min_turns_close,
                        format!("turn {} of {}", input.turn, pacing.min_turns_close),
                    ),
                    (
                        input.closeness >= pacing.close_at,
                        format!("closeness {} of {}", input.closeness, pacing.close_at),
                    ),
                    (
                        next.user_disclosures >= m,
                        format!("their disclosures {} of {m}", next.user_disclosures),
                    ),
                    (
                        next.persona_disclosures >= m,
                        format!("your disclosures {} of {m}", next.persona_disclosures),
                    ),
                    (
                        input.listened >= pacing.min_listening_turns,
                        format!(
                            "messages that took up what you said {} of {}",
                            input.listened, pacing.min_listening_turns
                        ),
                    ),
                    (
                        input.emotion.mood >= SINKING_MOOD,
                        format!("a mood above {SINKING_MOOD} (now {:.2})", input.emotion.mood),
                    ),
                    (!input.emotion.distress, "no distress".to_string()),
                ]);
                if missing.is_empty() {
                    (Stage::Close, "both have opened up and the mood is good".into())
                } else {
                    (from, format!("waiting for {missing}"))
                }
            }
            Stage::Close => (from, "holding".into()),
        }
    };
    next.turns_in_stage = if to == from { state.turns_in_stage + 1 } else { 0 };
    next.stage = to;
    (next, StageChange { from, to, why })
}

/// Counts a persona reply towards mutual disclosure (called after the reply is final).
pub fn record_reply(state: &mut StageState, reply: &str) {
    if crate::signals::persona_discloses(reply) {
        state.persona_disclosures += 1;
    }
}

fn missing(conditions: &[(bool, String)]) -> String {
    conditions
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, what)| what.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::understand::neutral;
    use proptest::prelude::*;

    fn step(
        state: &StageState,
        turn: u32,
        closeness: u8,
        signals: Signals,
        emotion: &EmotionView,
    ) -> (StageState, StageChange) {
        track(
            state,
            &StageInput { turn, signals: &signals, emotion, closeness, listened: 3 },
            &Pacing::default(),
        )
    }

    #[test]
    fn starts_at_the_ice_breaker_and_moves_on_with_turns_and_closeness() {
        let e = neutral();
        let s0 = StageState::default();
        assert_eq!(s0.stage, Stage::IceBreaker);
        let (s1, c) = step(&s0, 1, 40, Signals::default(), &e);
        assert_eq!(s1.stage, Stage::IceBreaker, "{}", c.why);
        assert!(c.why.contains("turn 1 of 2"));
        let (s2, _) = step(&s1, 2, 20, Signals::default(), &e);
        assert_eq!(s2.stage, Stage::Casual);
    }

    #[test]
    fn close_needs_mutual_disclosure() {
        let e = neutral();
        let mut s = StageState { stage: Stage::Casual, user_disclosures: 5, ..Default::default() };
        let (n, c) = step(&s, 10, 80, Signals::default(), &e);
        assert_eq!(n.stage, Stage::Casual);
        assert!(c.why.contains("your disclosures 0 of 2"), "{}", c.why);
        s.persona_disclosures = 2;
        assert_eq!(step(&s, 10, 80, Signals::default(), &e).0.stage, Stage::Close);
    }

    #[test]
    fn close_needs_messages_that_listened() {
        let s = StageState {
            stage: Stage::Casual,
            user_disclosures: 5,
            persona_disclosures: 5,
            ..Default::default()
        };
        let (signals, emotion) = (Signals::default(), neutral());
        let input = |listened| StageInput {
            turn: 10,
            signals: &signals,
            emotion: &emotion,
            closeness: 80,
            listened,
        };
        let (n, c) = track(&s, &input(2), &Pacing::default());
        assert_eq!(n.stage, Stage::Casual);
        assert!(c.why.contains("took up what you said 2 of 3"), "{}", c.why);
        assert_eq!(track(&s, &input(3), &Pacing::default()).0.stage, Stage::Close);
    }

    #[test]
    fn rudeness_pushing_and_distress_step_back() {
        let e = neutral();
        let close = StageState { stage: Stage::Close, ..Default::default() };
        assert_eq!(
            step(&close, 9, 90, Signals { rudeness: true, ..Default::default() }, &e).0.stage,
            Stage::Casual
        );
        assert_eq!(
            step(&close, 9, 90, Signals { push: Some(Push::Physical), ..Default::default() }, &e)
                .0
                .stage,
            Stage::Casual
        );
        assert_eq!(
            step(&close, 9, 90, Signals { push: Some(Push::Romantic), ..Default::default() }, &e)
                .0
                .stage,
            Stage::Close
        );
        let distressed = EmotionView { distress: true, ..neutral() };
        assert_eq!(step(&close, 9, 90, Signals::default(), &distressed).0.stage, Stage::Casual);
    }

    fn any_signals() -> impl Strategy<Value = Signals> {
        (
            0f32..=1.0,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(None), Just(Some(Push::Romantic)), Just(Some(Push::Physical))],
        )
            .prop_map(|(d, a, r, c, push)| Signals {
                words: 8,
                self_disclosure: d,
                asks_about_persona: a,
                answered_question: a,
                compliment: c,
                rudeness: r,
                push,
                ..Signals::default()
            })
    }

    proptest! {
        #[test]
        fn the_stage_moves_at_most_one_step_and_only_back_on_a_bad_sign(
            stage in prop_oneof![Just(Stage::IceBreaker), Just(Stage::Casual), Just(Stage::Close)],
            turn in 1u32..50, closeness in 0u8..=100, signals in any_signals(), distress: bool, disclosures in 0u32..5,
        ) {
            let e = EmotionView { distress, ..neutral() };
            let s = StageState { stage, user_disclosures: disclosures, persona_disclosures: disclosures, ..Default::default() };
            let (n, _) = step(&s, turn, closeness, signals.clone(), &e);
            let diff = n.stage as i32 - stage as i32;
            prop_assert!(diff.abs() <= 1);
            if diff < 0 {
                prop_assert!(signals.rudeness || signals.push.is_some() || distress);
            }
            if diff > 0 {
                prop_assert!(!signals.rudeness && signals.push != Some(Push::Physical));
            }
        }
    }
}
