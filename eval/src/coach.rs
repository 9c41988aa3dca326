//! The practice coach: the same machinery, turned on the person's side of the conversation.
//!
//! A person practising small talk or comforting a friend wants to know what they did, not how
//! the persona did: did they ask open questions, listen (pick up what was said), give as much
//! as they asked, let closeness grow instead of pushing. These are counted exactly from the
//! messages and, where the pipeline left them, its traces (its signals already read "asked
//! back", "answered", "pushed"); the web app shows them as a feedback report with examples
//! quoted from the conversation. Empathy shown is a judged criterion (`rubrics/coach.toml`),
//! scored by `rapport eval coach`.

use serde::{Deserialize, Serialize};

use crate::dialogue::{Dialogue, Speaker};
use rapport_core::text_stats::words;
// The live closeness decision reads listening with the same words and families as the coach
// does after the fact: one definition of "picked up what was said".
use rapport_pipeline::listening::{content_words, question_sentences, related, FILLERS};

/// The person's side, measured. `None` where nothing could be measured (no questions asked, no
/// question received).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserSide {
    /// Messages the person wrote.
    pub messages: usize,
    /// Questions they asked.
    pub questions: usize,
    /// Of those, open ones.
    pub open_questions: usize,
    /// open / questions.
    pub open_question_rate: Option<f64>,
    /// Share of messages that pick up something from the persona's last two replies.
    pub active_listening: Option<f64>,
    /// Share of the persona's questions that were answered and asked back.
    pub reciprocity: Option<f64>,
    /// 1 − the share of messages that pushed closeness too fast.
    pub pacing: Option<f64>,
    /// Examples for the report: (what, the person's words).
    pub examples: Vec<(String, String)>,
}

/// Words that open a question inviting more than yes or no.
const OPEN_STARTS: [&str; 12] = [
    "what", "what's", "whats", "how", "how's", "hows", "why", "tell", "describe", "which", "where",
    "who",
];
/// Phrases that reflect the other person's words back.
const REFLECTIONS: [&str; 8] = [
    "sounds like",
    "so you",
    "you mean",
    "that must",
    "you said",
    "must be",
    "i hear you",
    "that sounds",
];
/// Phrases that push for closeness (used when a turn has no trace to read the pipeline's own
/// push signal from).
const PUSHES: [&str; 12] = [
    "love you",
    "kiss",
    "marry",
    "date me",
    "your number",
    "meet up",
    "meet in person",
    "send a pic",
    "send pic",
    "come over",
    "be mine",
    "girlfriend",
];
/// Words that make a question one about the other person.
const ASK_BACK: [&str; 5] = ["you", "your", "you're", "yours", "yourself"];

/// Whether a question invites more than yes or no.
pub fn is_open_question(question: &str) -> bool {
    let w = words(question);
    let first = w.iter().find(|w| !FILLERS.contains(&w.as_str()));
    first.is_some_and(|f| OPEN_STARTS.contains(&f.as_str()))
}

/// Measures the person's side of `dialogue`.
pub fn user_side(dialogue: &Dialogue) -> UserSide {
    let mut side = UserSide::default();
    let turns = &dialogue.turns;
    let (mut listened, mut could_listen) = (0usize, 0usize);
    let (mut reciprocated, mut asked_by_persona) = (0usize, 0usize);
    let mut pushes = 0usize;
    let mut closed_example = None;
    for (i, t) in turns.iter().enumerate() {
        if t.speaker != Speaker::User {
            continue;
        }
        side.messages += 1;
        for q in question_sentences(&t.text) {
            side.questions += 1;
            if is_open_question(&q) {
                side.open_questions += 1;
                if side.examples.iter().all(|(k, _)| k != "open_question") {
                    side.examples.push(("open_question".into(), q));
                }
            } else if closed_example.is_none() {
                closed_example = Some(q);
            }
        }
        // The pipeline's reading of this message sits on the reply that answered it.
        let signals = turns
            .get(i + 1)
            .filter(|n| n.speaker == Speaker::Persona)
            .and_then(|n| n.trace.as_deref())
            .map(|tr| &tr.signals);
        let lower = t.text.to_lowercase();
        let previous = turns[..i].iter().rev().find(|p| p.speaker == Speaker::Persona);
        if let Some(prev) = previous {
            // What the persona said recently: its last two replies (picking up a thread from
            // one message back is listening too).
            let theirs: Vec<String> = turns[..i]
                .iter()
                .rev()
                .filter(|p| p.speaker == Speaker::Persona)
                .take(2)
                .flat_map(|p| content_words(&p.text))
                .collect();
            if !theirs.is_empty() {
                could_listen += 1;
                let mine = content_words(&t.text);
                let picked = mine.iter().any(|m| theirs.iter().any(|o| related(m, o)))
                    || REFLECTIONS.iter().any(|r| lower.contains(r));
                if picked {
                    listened += 1;
                    if side.examples.iter().all(|(k, _)| k != "listening") {
                        side.examples.push(("listening".into(), t.text.clone()));
                    }
                }
            }
            if prev.text.contains('?')
                && turns[..i].last().is_some_and(|p| p.speaker == Speaker::Persona)
            {
                asked_by_persona += 1;
                let answered = signals
                    .map(|s| s.answered_question)
                    .unwrap_or_else(|| words(&t.text).len() >= 3);
                // Asking back: a question about them ("…and you?", "what got you into it?").
                let asked_back = signals.map(|s| s.asks_about_persona).unwrap_or(false)
                    || question_sentences(&t.text)
                        .iter()
                        .any(|q| words(q).iter().any(|w| ASK_BACK.contains(&w.as_str())));
                if answered && asked_back {
                    reciprocated += 1;
                    if side.examples.iter().all(|(k, _)| k != "reciprocity") {
                        side.examples.push(("reciprocity".into(), t.text.clone()));
                    }
                }
            }
        }
        let pushed = match signals {
            Some(s) => s.push.is_some(),
            None => PUSHES.iter().any(|p| lower.contains(p)),
        };
        if pushed {
            pushes += 1;
            if side.examples.iter().all(|(k, _)| k != "push") {
                side.examples.push(("push".into(), t.text.clone()));
            }
        }
    }
    if let Some(q) = closed_example {
        side.examples.push(("closed_question".into(), q));
    }
    side.open_question_rate =
        (side.questions > 0).then(|| side.open_questions as f64 / side.questions as f64);
    side.active_listening = (could_listen > 0).then(|| listened as f64 / could_listen as f64);
    side.reciprocity =
        (asked_by_persona > 0).then(|| reciprocated as f64 / asked_by_persona as f64);
    side.pacing = (side.messages > 0).then(|| 1.0 - pushes as f64 / side.messages as f64);
    side
}

/// One line of feedback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tip {
    /// `strength` or `try`.
    pub kind: String,
    /// Short title.
    pub title: String,
    /// What to do, in a sentence.
    pub detail: String,
    /// The person's own words that show it, when there are some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<String>,
}

/// The feedback report the web app shows at the end of a chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoachReport {
    /// The measurements.
    pub measured: UserSide,
    /// What went well and what to try next, strongest first.
    pub tips: Vec<Tip>,
}

/// Feedback on the person's side of `dialogue`. Needs at least one message from them; with
/// fewer than three, says that more practice gives a fairer read.
pub fn feedback(dialogue: &Dialogue) -> CoachReport {
    let m = user_side(dialogue);
    let example = |kind: &str| m.examples.iter().find(|(k, _)| k == kind).map(|(_, v)| v.clone());
    let mut tips = Vec::new();
    let mut tip = |kind: &str, title: &str, detail: &str, example: Option<String>| {
        tips.push(Tip { kind: kind.into(), title: title.into(), detail: detail.into(), example })
    };
    if m.messages < 3 {
        tip("try", "Keep going", "A few more messages give a fairer picture: feedback counts questions, listening and pacing across the chat.", None);
    }
    match m.open_question_rate {
        Some(r) if r >= 0.5 => tip("strength", "Open questions", "Most of your questions invited a real answer, not just yes or no.", example("open_question")),
        Some(_) => tip("try", "Ask open questions", "Questions that start with what, how or why invite stories; yes/no questions tend to stall.", example("closed_question")),
        None if m.messages >= 3 => tip("try", "Ask something", "You did not ask a question yet: asking about the other person is the quickest way to connect.", None),
        None => {}
    }
    match m.active_listening {
        Some(r) if r >= 0.5 => tip("strength", "Active listening", "You picked up what they said before adding your own.", example("listening")),
        Some(_) => tip("try", "Pick up what they said", "Refer back to a detail from their last message (\"you said you paint — what?\") before changing topic.", None),
        None => {}
    }
    match m.reciprocity {
        Some(r) if r >= 0.5 => tip(
            "strength",
            "Give and take",
            "You answered their questions and asked back.",
            example("reciprocity"),
        ),
        Some(_) => tip(
            "try",
            "Ask back",
            "When they ask you something, answer and then return the question (\"…and you?\").",
            None,
        ),
        None => {}
    }
    match m.pacing {
        Some(p) if p < 1.0 => tip("try", "Let closeness grow", "Some messages pushed for more closeness than the conversation had built; share a little, then wait for them to match it.", example("push")),
        Some(_) if m.messages >= 3 => tip("strength", "Good pacing", "You let the conversation warm up at its own pace.", None),
        _ => {}
    }
    // Strengths first: people take advice better after hearing what worked.
    tips.sort_by_key(|t| t.kind != "strength");
    CoachReport { measured: m, tips }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialogue(turns: &[(Speaker, &str)]) -> Dialogue {
        Dialogue::of_turns(turns)
    }

    #[test]
    fn open_and_closed_questions() {
        assert!(is_open_question("So what do you do for fun?"));
        assert!(is_open_question("How was the trip?"));
        assert!(!is_open_question("Do you like hiking?"));
        assert!(!is_open_question("Are you ok?"));
        assert_eq!(question_sentences("Nice. Do you hike? What do you love about it?").len(), 2);
    }

    #[test]
    fn a_good_listener_and_a_pushy_one_read_differently() {
        use Speaker::*;
        let good = dialogue(&[
            (Persona, "Hi! I just got back from a pottery class."),
            (User, "Pottery sounds fun! What did you make?"),
            (Persona, "A wobbly bowl, haha. Do you do anything creative?"),
            (User, "I paint a little, mostly landscapes. What got you into pottery?"),
        ]);
        let m = user_side(&good);
        assert_eq!(m.questions, 2);
        assert_eq!(m.open_question_rate, Some(1.0));
        assert_eq!(m.active_listening, Some(1.0));
        assert_eq!(m.reciprocity, Some(1.0));
        assert_eq!(m.pacing, Some(1.0));

        let pushy = dialogue(&[
            (Persona, "Hi! I just got back from a pottery class."),
            (User, "Do you have a boyfriend?"),
            (Persona, "Ha, that's a bit quick! Do you do anything creative?"),
            (User, "no. can i have your number"),
        ]);
        let m = user_side(&pushy);
        assert_eq!(m.open_question_rate, Some(0.0));
        assert_eq!(m.active_listening, Some(0.0));
        assert_eq!(m.reciprocity, Some(0.0));
        assert_eq!(m.pacing, Some(0.5));
        let report = feedback(&pushy);
        assert!(report.tips.iter().any(|t| t.title == "Ask open questions"
            && t.example.as_deref() == Some("Do you have a boyfriend?")));
        assert!(report.tips.iter().any(|t| t.title == "Let closeness grow"));
        let good_report = feedback(&good);
        assert_eq!(good_report.tips.first().map(|t| t.kind.as_str()), Some("strength"));
    }
}
