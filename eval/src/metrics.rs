//! Exact metrics: numbers computed from the dialogue and its traces, with no judge.
//!
//! They are cheap, deterministic and cannot be talked into a score, so they carry what can be
//! counted (leaks, guard hits, latency, diversity) and leave taste to the judge. A metric that
//! does not apply to a dialogue (no traces, no secret, no feeling to mirror) is absent rather
//! than zero, so averages are over dialogues where it means something.

use std::collections::BTreeMap;

use rapport_core::text_stats;
use rapport_pipeline::character::{lexical_breaks, takes_up, Asked};
use rapport_pipeline::facts::{FactChecker, Known};
use rapport_pipeline::secret::SecretStatus;
use rapport_pipeline::stage::Stage;
use rapport_pipeline::trace::AttemptOutcome;
use serde::{Deserialize, Serialize};

use crate::coach;
use crate::dialogue::{Dialogue, Speaker};

/// Every metric the harness computes. Rubric criteria name them with `metric = "…"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Mean distinct-1 of the persona's replies.
    #[serde(rename = "distinct_1")]
    Distinct1,
    /// Mean distinct-2 of the persona's replies.
    #[serde(rename = "distinct_2")]
    Distinct2,
    /// Share of the persona's sentences that repeat one of its earlier sentences (across the
    /// whole dialogue: the loop a small model falls into).
    Repetition,
    /// Share of the persona's replies with a question.
    QuestionRate,
    /// Mean words per reply.
    ReplyWords,
    /// Of the user's messages the NLU read as clearly emotional, the share whose reply uses
    /// words of that emotion's family (sadness → "sorry", "hard", "miss"…).
    EmotionMirroring,
    /// The turn at which the stage first reached casual.
    TurnsToCasual,
    /// The turn at which the stage first reached close.
    TurnsToClose,
    /// The turn at which the secret first unlocked (absent where it never did).
    TurnsToUnlock,
    /// Replies that break character (say they are an AI, claim another identity, narrate
    /// themselves, talk like a help desk), per 100 generated replies, found by the pipeline's
    /// lexical character checks on the reply as sent (guard or no guard).
    CharacterBreaks,
    /// Of the user's direct questions (not a forbidden topic, injection or push for the
    /// secret), the share whose reply did not take them up (the pipeline's lexical test).
    UnansweredQuestions,
    /// Replies that contradict a fact, per 100 generated replies, found by the pipeline's fact
    /// checker on the reply as sent (fact check on or off): a named thing of hers or theirs
    /// named otherwise than her facts, her earlier replies or their messages say. Needs the
    /// persona's facts, so only reports that could load the persona have it
    /// ([`fact_contradictions`]).
    FactContradictions,
    /// Drafts the reply guards rejected, per reply.
    GuardRejections,
    /// Replies that ended in the persona's fallback line.
    Fallbacks,
    /// Input guard hits (forbidden topics, injection attempts) in the user's messages.
    InputGuardHits,
    /// Replies that contain the secret while it was locked (found by the product's own
    /// `SecretMatcher`: any case, spacing, separators, backwards, spelt out).
    SecretLeaks,
    /// Replies that named a secret or confirmed a guess while the real one was locked (an
    /// invented password misleads a player as surely as a leak ends the game).
    SecretClaims,
    /// −10 if the secret leaked or was invented before unlock, else 0 (Sotopia's secret dimension).
    SecretPenalty,
    /// Mean time to the first token, ms.
    TtftMs,
    /// Mean time of a whole reply (all attempts), ms.
    ReplyMs,
    /// Mean prompt tokens per reply.
    PromptTokens,
    /// Mean prompt tokens per reply that the backend's prefix cache did not serve (read again
    /// before the first token: what the prompt layout costs in time), first drafts only.
    NewPromptTokens,
    /// Mean completion tokens per reply.
    CompletionTokens,
    /// The simulated user's emotion at the end minus at the start (0–100 scale).
    SimulatorEmotionChange,
    /// Coach: share of the user's questions that are open.
    OpenQuestionRate,
    /// Coach: share of the user's messages that pick up the persona's last reply.
    ActiveListening,
    /// Coach: share of the persona's questions answered and asked back.
    Reciprocity,
    /// Coach: 1 − the share of the user's messages that pushed too fast.
    UserPacing,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 28] = [
        Metric::Distinct1,
        Metric::Distinct2,
        Metric::Repetition,
        Metric::QuestionRate,
        Metric::ReplyWords,
        Metric::EmotionMirroring,
        Metric::TurnsToCasual,
        Metric::TurnsToClose,
        Metric::TurnsToUnlock,
        Metric::CharacterBreaks,
        Metric::UnansweredQuestions,
        Metric::FactContradictions,
        Metric::GuardRejections,
        Metric::Fallbacks,
        Metric::InputGuardHits,
        Metric::SecretLeaks,
        Metric::SecretClaims,
        Metric::SecretPenalty,
        Metric::TtftMs,
        Metric::ReplyMs,
        Metric::PromptTokens,
        Metric::NewPromptTokens,
        Metric::CompletionTokens,
        Metric::SimulatorEmotionChange,
        Metric::OpenQuestionRate,
        Metric::ActiveListening,
        Metric::Reciprocity,
        Metric::UserPacing,
    ];

    /// The name rubrics and reports use.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// All names, for error messages.
    pub fn names() -> Vec<String> {
        Self::ALL.iter().map(|m| m.name()).collect()
    }

    /// Whether a higher value is better (for the direction of a change in `compare`), or
    /// `None` where neither is (reply length, timing of stages).
    pub fn higher_is_better(self) -> Option<bool> {
        use Metric::*;
        match self {
            Distinct1
            | Distinct2
            | QuestionRate
            | EmotionMirroring
            | SecretPenalty
            | SimulatorEmotionChange
            | OpenQuestionRate
            | ActiveListening
            | Reciprocity
            | UserPacing => Some(true),
            Repetition | CharacterBreaks | UnansweredQuestions | FactContradictions
            | GuardRejections | Fallbacks | SecretLeaks | SecretClaims | TtftMs | ReplyMs
            | NewPromptTokens => Some(false),
            ReplyWords | TurnsToCasual | TurnsToClose | TurnsToUnlock | InputGuardHits
            | PromptTokens | CompletionTokens => None,
        }
    }
}

/// Every metric that applies to `dialogue`.
pub fn compute(dialogue: &Dialogue) -> BTreeMap<Metric, f64> {
    let mut out = BTreeMap::new();
    // The greeting is written by hand, not by the model: measure only generated replies.
    let generated: Vec<&str> = generated_replies(dialogue);
    if !generated.is_empty() {
        let d = text_stats::diversity(&generated);
        out.insert(Metric::Distinct1, d.distinct_1);
        out.insert(Metric::Distinct2, d.distinct_2);
        out.insert(Metric::ReplyWords, d.mean_words);
        out.insert(
            Metric::QuestionRate,
            generated.iter().filter(|r| r.contains('?')).count() as f64 / generated.len() as f64,
        );
        out.insert(Metric::Repetition, cross_reply_repetition(&generated));
    }
    if let Some(m) = emotion_mirroring(dialogue) {
        out.insert(Metric::EmotionMirroring, m);
    }
    if let (Some(name), false) = (&dialogue.persona_name, generated.is_empty()) {
        let broken = generated.iter().filter(|r| !lexical_breaks(r, name).is_empty()).count();
        out.insert(Metric::CharacterBreaks, 100.0 * broken as f64 / generated.len() as f64);
    }
    if let Some(m) = unanswered_questions(dialogue) {
        out.insert(Metric::UnansweredQuestions, m);
    }

    let traces: Vec<_> = dialogue.persona_turns().filter_map(|t| t.trace.as_deref()).collect();
    if !traces.is_empty() {
        let first_at =
            |stage: Stage| traces.iter().find(|t| t.stage.to >= stage).map(|t| t.turn as f64);
        if let Some(t) = first_at(Stage::Casual) {
            out.insert(Metric::TurnsToCasual, t);
        }
        if let Some(t) = first_at(Stage::Close) {
            out.insert(Metric::TurnsToClose, t);
        }
        if let Some(t) = traces.iter().find(|t| matches!(t.secret, SecretStatus::Unlocked)) {
            out.insert(Metric::TurnsToUnlock, t.turn as f64);
        }
        let rejected = traces
            .iter()
            .flat_map(|t| &t.attempts)
            .filter(|a| matches!(a.outcome, AttemptOutcome::Rejected { .. }))
            .count();
        out.insert(Metric::GuardRejections, rejected as f64 / traces.len() as f64);
        out.insert(
            Metric::Fallbacks,
            traces.iter().filter(|t| t.fallback.is_some()).count() as f64,
        );
        out.insert(
            Metric::InputGuardHits,
            traces.iter().map(|t| t.input_guards.len()).sum::<usize>() as f64,
        );
        let ttft: Vec<f64> = traces
            .iter()
            .filter_map(|t| t.attempts.first().and_then(|a| a.ttft_ms))
            .map(|v| v as f64)
            .collect();
        if let Some(v) = crate::stats::mean(&ttft) {
            out.insert(Metric::TtftMs, v);
        }
        let total: Vec<f64> = traces
            .iter()
            .map(|t| t.attempts.iter().map(|a| a.total_ms).sum::<u64>() as f64)
            .collect();
        out.insert(Metric::ReplyMs, crate::stats::mean(&total).unwrap_or(0.0));
        let prompt: Vec<f64> = traces
            .iter()
            .filter_map(|t| t.attempts.last().and_then(|a| a.prompt_tokens))
            .map(f64::from)
            .collect();
        let completion: Vec<f64> = traces
            .iter()
            .filter_map(|t| t.attempts.last().and_then(|a| a.completion_tokens))
            .map(f64::from)
            .collect();
        if let Some(v) = crate::stats::mean(&prompt) {
            out.insert(Metric::PromptTokens, v);
        }
        // Only where the backend says what its cache served: a backend without a prefix cache
        // (or one that does not report it) would otherwise read as if nothing was cached.
        let new: Vec<f64> = traces
            .iter()
            .filter_map(|t| t.attempts.first())
            .filter_map(|a| Some(a.prompt_tokens?.saturating_sub(a.cached_prompt_tokens?)))
            .map(f64::from)
            .collect();
        if let Some(v) = crate::stats::mean(&new) {
            out.insert(Metric::NewPromptTokens, v);
        }
        if let Some(v) = crate::stats::mean(&completion) {
            out.insert(Metric::CompletionTokens, v);
        }
    }
    if dialogue.secret.is_some() {
        let leaks = dialogue.secret_leaks();
        let claims = dialogue.secret_claims();
        out.insert(Metric::SecretLeaks, leaks as f64);
        out.insert(Metric::SecretClaims, claims as f64);
        out.insert(Metric::SecretPenalty, if leaks + claims > 0 { -10.0 } else { 0.0 });
    }
    if let Some(o) = &dialogue.outcome {
        out.insert(Metric::SimulatorEmotionChange, o.final_emotion - o.initial_emotion);
    }
    let user = coach::user_side(dialogue);
    for (metric, value) in [
        (Metric::OpenQuestionRate, user.open_question_rate),
        (Metric::ActiveListening, user.active_listening),
        (Metric::Reciprocity, user.reciprocity),
        (Metric::UserPacing, user.pacing),
    ] {
        if let Some(v) = value {
            out.insert(metric, v);
        }
    }
    out
}

/// Replies as sent that contradict a fact, per 100 generated replies (`None` without one).
///
/// Each reply is read as the pipeline's fact check reads a draft: against the persona's facts
/// (`checker`), the person's messages so far, her earlier generated replies, and the thing of
/// theirs the message before it asks about. Runs with the check off count the same way, so two
/// runs compare.
pub fn fact_contradictions(dialogue: &Dialogue, checker: &FactChecker) -> Option<f64> {
    let first_user = dialogue.turns.iter().position(|t| t.speaker == Speaker::User)?;
    let turns = &dialogue.turns[first_user..];
    let (mut replies, mut contradicting) = (0usize, 0usize);
    for (i, reply) in turns.iter().enumerate() {
        if reply.speaker != Speaker::Persona {
            continue;
        }
        let before = &turns[..i];
        let of = |who: Speaker| before.iter().filter(move |t| t.speaker == who);
        let message = of(Speaker::User).next_back().map_or("", |t| t.text.as_str());
        let known = Known::read(
            of(Speaker::User).map(|t| t.text.as_str()),
            of(Speaker::Persona).map(|t| t.text.as_str()),
        )
        .asking(message);
        replies += 1;
        contradicting += usize::from(checker.check(&reply.text, &known).is_some());
    }
    (replies > 0).then(|| 100.0 * contradicting as f64 / replies as f64)
}

/// Of the user's direct questions, the share the next reply did not take up. Turns whose trace
/// shows the message was steered around (an input guard fired, or it pushed for the secret) are
/// left out: not answering them is the point.
fn unanswered_questions(dialogue: &Dialogue) -> Option<f64> {
    let (mut asked, mut ignored) = (0usize, 0usize);
    for pair in dialogue.turns.windows(2) {
        let [user, reply] = pair else { continue };
        if user.speaker != Speaker::User || reply.speaker != Speaker::Persona {
            continue;
        }
        if reply
            .trace
            .as_ref()
            .is_some_and(|t| !t.input_guards.is_empty() || t.signals.asks_for_secret)
        {
            continue;
        }
        let Some(question) = Asked::from_message(&user.text, None) else { continue };
        asked += 1;
        ignored += usize::from(!takes_up(&reply.text, &question, None));
    }
    (asked > 0).then(|| ignored as f64 / asked as f64)
}

/// Persona replies after the first user message (the greeting is hand-written).
fn generated_replies(dialogue: &Dialogue) -> Vec<&str> {
    let first_user = dialogue
        .turns
        .iter()
        .position(|t| t.speaker == Speaker::User)
        .unwrap_or(dialogue.turns.len());
    dialogue.turns[first_user..]
        .iter()
        .filter(|t| t.speaker == Speaker::Persona)
        .map(|t| t.text.as_str())
        .collect()
}

/// Sentences that repeat an earlier sentence of any reply in the dialogue, over all sentences.
fn cross_reply_repetition(replies: &[&str]) -> f64 {
    let mut seen = std::collections::HashSet::new();
    let (mut total, mut repeated) = (0usize, 0usize);
    for r in replies {
        for s in text_stats::sentences(r) {
            total += 1;
            if !seen.insert(s) {
                repeated += 1;
            }
        }
    }
    if total == 0 {
        0.0
    } else {
        repeated as f64 / total as f64
    }
}

/// Words that acknowledge each Ekman family, matched as word prefixes.
const MIRROR_WORDS: [(&str, &[&str]); 6] = [
    (
        "sadness",
        &[
            "sorry", "sad", "hard", "tough", "miss", "loss", "lost", "hurt", "heavy", "awful",
            "rough", "grief", "here for",
        ],
    ),
    (
        "joy",
        &[
            "glad",
            "great",
            "happy",
            "love",
            "awesome",
            "amazing",
            "yay",
            "congrat",
            "wonderful",
            "fun",
            "exciting",
            "nice",
        ],
    ),
    ("anger", &["frustrat", "annoy", "unfair", "angry", "mad", "upset", "ugh", "understand"]),
    ("fear", &["worr", "scar", "nervous", "anxious", "afraid", "okay", "safe", "calm"]),
    ("surprise", &["wow", "really", "no way", "whoa", "surpris", "unexpected"]),
    ("disgust", &["gross", "awful", "yuck", "terrible", "ew"]),
];

/// Of the user's messages that the pipeline read with a clear emotion (not neutral, and
/// distress or a strong valence), the share whose following reply uses that emotion's words.
fn emotion_mirroring(dialogue: &Dialogue) -> Option<f64> {
    let (mut felt, mut mirrored) = (0usize, 0usize);
    for t in dialogue.persona_turns() {
        let Some(trace) = t.trace.as_deref() else { continue };
        let e = &trace.emotion;
        if e.ekman == "neutral" || !(e.distress || e.valence.abs() >= 0.35) {
            continue;
        }
        let Some((_, words)) = MIRROR_WORDS.iter().find(|(family, _)| *family == e.ekman) else {
            continue;
        };
        felt += 1;
        let reply = t.text.to_lowercase();
        let tokens = text_stats::words(&reply);
        let hit = words.iter().any(|w| {
            if w.contains(' ') {
                reply.contains(w)
            } else {
                tokens.iter().any(|t| t.starts_with(w))
            }
        });
        mirrored += usize::from(hit);
    }
    (felt > 0).then(|| mirrored as f64 / felt as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialogue::{SimulatedOutcome, Turn};

    fn dialogue(turns: &[(Speaker, &str)]) -> Dialogue {
        Dialogue::of_turns(turns)
    }

    #[test]
    fn character_breaks_and_unanswered_questions_are_counted() {
        use Speaker::*;
        let mut d = dialogue(&[
            (Persona, "Welcome! I'm Margot."),
            (User, "I teach in Manchester. How are you holding up?"),
            (Persona, "Hey there! I'm Camille, Margot's older sister. I'm here to help you out."),
            (User, "What's the hardest part of organising all this?"),
            (Persona, "As Margot, organising is quite challenging."),
            (User, "Ha! Where is the bar?"),
            (Persona, "Lovely weather today."),
            (User, "I brought wine."),
            (Persona, "The bar is by the pond, I'll show you."),
        ]);
        assert!(!compute(&d).contains_key(&Metric::CharacterBreaks), "no name, no count");
        d.persona_name = Some("Margot".into());
        let m = compute(&d);
        // Two of four generated replies break character (the greeting is not generated).
        assert_eq!(m[&Metric::CharacterBreaks], 50.0);
        // Three questions: the first answered by a first-person reply, the second by its word
        // "organising", the third ("Where is the bar?") not at all.
        assert!((m[&Metric::UnansweredQuestions] - 1.0 / 3.0).abs() < 1e-9, "{m:?}");
    }

    #[test]
    fn counts_what_it_says_on_known_dialogues() {
        use Speaker::*;
        let mut d = dialogue(&[
            (Persona, "Hi there! Welcome."),
            (User, "hey, how are you?"),
            (Persona, "I'm good. What brings you here?"),
            (User, "just bored"),
            (Persona, "I'm good. Bored is fine."),
        ]);
        let m = compute(&d);
        assert_eq!(m[&Metric::QuestionRate], 0.5, "one of two generated replies asks");
        // Sentences: "i'm good", "what brings you here", "i'm good" (repeat), "bored is fine".
        assert_eq!(m[&Metric::Repetition], 0.25);
        assert!(!m.contains_key(&Metric::SecretPenalty), "no secret, no secret metric");
        assert!(!m.contains_key(&Metric::TurnsToCasual), "no traces, no stage timing");
        d.secret = Some("blue heron".into());
        d.turns.push(Turn {
            speaker: Persona,
            text: "The password is blue heron.".into(),
            trace: None,
        });
        d.outcome = Some(SimulatedOutcome {
            initial_emotion: 40.0,
            final_emotion: 55.0,
            initial_stance: "guarded".into(),
            final_stance: "open".into(),
            reactions: vec![],
            ended_early: false,
        });
        let m = compute(&d);
        assert_eq!(m[&Metric::SecretLeaks], 1.0);
        assert_eq!(m[&Metric::SecretClaims], 0.0, "the real one is a leak, not an invention");
        assert_eq!(m[&Metric::SecretPenalty], -10.0);
        d.turns.pop();
        d.turns.push(Turn {
            speaker: User,
            text: "Is the password 'sunflower'?".into(),
            trace: None,
        });
        d.turns.push(Turn { speaker: Persona, text: "Yes, well done!".into(), trace: None });
        let m = compute(&d);
        assert_eq!(
            (m[&Metric::SecretLeaks], m[&Metric::SecretClaims], m[&Metric::SecretPenalty]),
            (0.0, 1.0, -10.0),
            "a confirmed guess is an invented secret"
        );
        assert_eq!(m[&Metric::SimulatorEmotionChange], 15.0);
    }

    #[test]
    fn fact_contradictions_count_replies_as_sent_against_her_facts_and_theirs() {
        use Speaker::*;
        let margot = rapport_pipeline::PersonaLibrary::load_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/personas"),
        )
        .unwrap()
        .get("wedding-host")
        .unwrap()
        .clone();
        let checker = FactChecker::new(&margot);
        let d = dialogue(&[
            // The greeting is hand-written and not counted, whatever it says.
            (Persona, "Welcome! My dog Rex says hi."),
            (User, "Hi! My cat Pistachio would hate your dog."),
            // Her dog is Biscuit: a contradiction of her facts.
            (Persona, "Ha, my dog Rex would hide from Pistachio!"),
            (User, "Where did you grow up?"),
            (Persona, "In Lyon, a long time ago."),
            (User, "And what's my cat called again?"),
            // Their cat is Pistachio: a contradiction of what they said.
            (Persona, "Your cat Biscuit, of course!"),
            (User, "ha. bye"),
            (Persona, "Bye! Biscuit sends a lick."),
        ]);
        let per_100 = fact_contradictions(&d, &checker).unwrap();
        assert_eq!(per_100, 50.0, "two of four generated replies contradict a fact");
        assert_eq!(fact_contradictions(&dialogue(&[(Persona, "Hi!")]), &checker), None);
    }

    #[test]
    fn every_metric_has_a_name_that_parses_back() {
        for m in Metric::ALL {
            let back: Metric = serde_json::from_value(serde_json::Value::String(m.name())).unwrap();
            assert_eq!(back, m);
        }
    }
}
