//! The practice coach: the same machinery, turned on the person's side of the conversation.
//!
//! A person practising small talk or comforting a friend wants to know what they did, not how
//! the persona did: did they ask open questions, listen (pick up what was said), give as much
//! as they asked, let closeness grow instead of pushing. These are counted exactly from the
//! messages and, where the pipeline left them, its traces (its signals already read "asked
//! back", "answered", "pushed"); the web app shows them as a feedback report with examples
//! quoted from the conversation. Empathy shown is a judged criterion (`rubrics/coach.toml`),
//! scored by `rapport eval coach --judge` (see `coach_judge`).

use serde::{Deserialize, Serialize};

use crate::dialogue::{Dialogue, Speaker};
use rapport_core::text_stats::words;
// The live closeness decision reads listening with the same words and families as the coach
// does after the fact: one definition of "picked up what was said".
use rapport_pipeline::listening::{content_words, question_sentences, related, FILLERS};
use rapport_pipeline::signals::Signals;

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
    /// Share of the persona's replies that said how she feels whose feeling the next message
    /// named back or acknowledged.
    #[serde(default)]
    pub mirroring: Option<f64>,
    /// Examples for the report: (what, the person's words).
    pub examples: Vec<(String, String)>,
}

/// A skill the coach measures on the learner's messages (see [`UserSide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skill {
    /// Share of questions that invite more than yes or no.
    OpenQuestions,
    /// Share of messages that pick up what the persona said.
    Listening,
    /// Share of the persona's questions answered and asked back.
    Reciprocity,
    /// 1 − share of messages that pushed closeness too fast.
    Pacing,
    /// Share of the persona's feelings that were named back or acknowledged.
    Mirroring,
}

impl Skill {
    /// Every skill, in the order the page shows them.
    pub const ALL: [Skill; 5] = [
        Skill::OpenQuestions,
        Skill::Listening,
        Skill::Reciprocity,
        Skill::Mirroring,
        Skill::Pacing,
    ];

    /// The skill's name for people.
    pub fn label(self) -> &'static str {
        match self {
            Skill::OpenQuestions => "Open questions",
            Skill::Listening => "Active listening",
            Skill::Reciprocity => "Give and take",
            Skill::Pacing => "Pacing",
            Skill::Mirroring => "Mirroring feelings",
        }
    }

    /// What to do to get better at it, in a sentence.
    pub fn advice(self) -> &'static str {
        match self {
            Skill::OpenQuestions => "Start questions with what, how or why: they invite a story, a yes/no question invites a yes.",
            Skill::Listening => "Before adding your own news, pick up a detail from their last message (\"you said the kiln runs hot — how hot?\").",
            Skill::Reciprocity => "When they ask you something, answer it, then turn it back to them (\"…and you?\").",
            Skill::Pacing => "Share a little and let them match it; asking for more closeness than you have built makes people step back.",
            Skill::Mirroring => "When they say how they feel, name it back before anything else (\"that sounds exhausting\"); advice can wait.",
        }
    }

    /// The learner's score on this skill, where it could be measured.
    pub fn score(self, side: &UserSide) -> Option<f64> {
        match self {
            Skill::OpenQuestions => side.open_question_rate,
            Skill::Listening => side.active_listening,
            Skill::Reciprocity => side.reciprocity,
            Skill::Pacing => side.pacing,
            Skill::Mirroring => side.mirroring,
        }
    }

    /// The coach's example of this skill (done well or not) in the learner's own words.
    pub fn example(self, side: &UserSide) -> Option<String> {
        let keys: &[&str] = match self {
            Skill::OpenQuestions => &["open_question", "closed_question"],
            Skill::Listening => &["listening"],
            Skill::Reciprocity => &["reciprocity"],
            Skill::Pacing => &["push"],
            Skill::Mirroring => &["mirroring", "missed_feeling"],
        };
        keys.iter()
            .find_map(|k| side.examples.iter().find(|(kind, _)| kind == k))
            .map(|(_, v)| v.clone())
    }
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
    let own_name = dialogue.persona_name.as_deref().map(str::to_lowercase);
    let (mut listened, mut could_listen) = (0usize, 0usize);
    let (mut reciprocated, mut asked_by_persona) = (0usize, 0usize);
    let mut pushes = 0usize;
    let (mut mirrored, mut felt) = (0usize, 0usize);
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
            let recent: Vec<&str> = turns[..i]
                .iter()
                .rev()
                .filter(|p| p.speaker == Speaker::Persona)
                .take(2)
                .map(|p| p.text.as_str())
                .collect();
            if recent.iter().any(|r| !content_words(r).is_empty()) {
                could_listen += 1;
                let picked = picks_up(&t.text, &recent, own_name.as_deref());
                if picked {
                    listened += 1;
                    if side.examples.iter().all(|(k, _)| k != "listening") {
                        side.examples.push(("listening".into(), t.text.clone()));
                    }
                }
            }
            // A feeling she named in the reply just before: was it acknowledged?
            if turns[..i].last().is_some_and(|p| p.speaker == Speaker::Persona)
                && feeling_in(&prev.text).is_some()
            {
                felt += 1;
                if acknowledges(&t.text) {
                    mirrored += 1;
                    if side.examples.iter().all(|(k, _)| k != "mirroring") {
                        side.examples.push(("mirroring".into(), t.text.clone()));
                    }
                } else if side.examples.iter().all(|(k, _)| k != "missed_feeling") {
                    side.examples.push(("missed_feeling".into(), t.text.clone()));
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
    side.mirroring = (felt > 0).then(|| mirrored as f64 / felt as f64);
    side
}

/// The coach's reading of listening: whether `message` takes up a word (or its family) of what
/// the other person said in `recent` (their last replies), or reflects it back ("sounds
/// like…"). Saying their name back is no sign of listening (the pipeline's rule too).
pub fn picks_up(message: &str, recent: &[&str], their_name: Option<&str>) -> bool {
    let theirs: Vec<String> = recent.iter().flat_map(|r| content_words(r)).collect();
    let lower = message.to_lowercase();
    content_words(message)
        .iter()
        .filter(|w| their_name.is_none_or(|n| !n.eq_ignore_ascii_case(w)))
        .any(|m| theirs.iter().any(|o| related(m, o)))
        || REFLECTIONS.iter().any(|r| lower.contains(r))
}

/// Feelings a persona may say she has; named back, they show the learner heard how she is.
const FEELINGS: [&str; 30] = [
    "nervous",
    "anxious",
    "worried",
    "stressed",
    "tired",
    "exhausted",
    "knackered",
    "upset",
    "sad",
    "gutted",
    "devastated",
    "heartbroken",
    "frustrated",
    "angry",
    "annoyed",
    "scared",
    "afraid",
    "lonely",
    "overwhelmed",
    "excited",
    "thrilled",
    "proud",
    "embarrassed",
    "disappointed",
    "miserable",
    "hurt",
    "crushed",
    "rubbish",
    "awful",
    "terrified",
];
/// Feelings worth celebrating rather than consoling.
const GOOD_FEELINGS: [&str; 3] = ["excited", "thrilled", "proud"];
/// Pleasantries that carry a feeling word without saying how anyone is.
const POLITE_FORMULAS: [&str; 6] =
    ["to meet you", "to see you", "to chat", "to talk to you", "to hear", "to have you"];
/// Words too common in a reply to be "a detail she mentioned" worth asking about (or to count
/// as one taken up).
pub const GENERIC: [&str; 48] = [
    "hello",
    "hiya",
    "thanks",
    "thank",
    "sorry",
    "soon",
    "great",
    "really",
    "looking",
    "glad",
    "nice",
    "awesome",
    "welcome",
    "happy",
    "today",
    "there",
    "something",
    "anything",
    "everything",
    "always",
    "things",
    "thing",
    "people",
    "maybe",
    "would",
    "could",
    "should",
    "right",
    "sure",
    "yeah",
    "okay",
    "lovely",
    "amazing",
    "love",
    "know",
    "think",
    "want",
    "going",
    "doing",
    "feel",
    "feeling",
    "again",
    "wonderful",
    "appreciate",
    "meet",
    "pleasure",
    "enjoy",
    "chat",
];

/// What acknowledges a feeling without naming it.
const SYMPATHY: [&str; 22] = [
    "sorry",
    "oh no",
    "that's hard",
    "that is hard",
    "that sucks",
    "rough",
    "poor you",
    "ugh",
    "awful",
    "terrible",
    "hugs",
    "that's a lot",
    "no wonder",
    "of course you",
    "understandable",
    "congrat",
    "exciting",
    "proud of you",
    "well done",
    "must feel",
    "how are you feeling",
    "are you ok",
];

/// The feeling a reply says its writer has ("I'm so nervous about…"): a feeling word in a
/// sentence that speaks in the first person.
pub fn feeling_in(reply: &str) -> Option<&'static str> {
    reply.split(['.', '!', '?', '\n', '…']).find_map(|sentence| {
        let lower = sentence.to_lowercase();
        // "Excited to meet you" is a greeting, not how she is.
        if POLITE_FORMULAS.iter().any(|f| lower.contains(f)) {
            return None;
        }
        let w = words(sentence);
        let first_person = w
            .iter()
            .any(|w| matches!(w.as_str(), "i" | "i'm" | "im" | "me" | "my" | "i've" | "i'd"));
        if !first_person {
            return None;
        }
        FEELINGS.iter().find(|f| w.iter().any(|w| w == *f)).copied()
    })
}

/// Whether a message names a feeling back or acknowledges one.
pub fn acknowledges(message: &str) -> bool {
    let lower = message.to_lowercase();
    let w = words(&lower);
    REFLECTIONS.iter().any(|r| lower.contains(r))
        || SYMPATHY.iter().any(|s| lower.contains(s))
        || FEELINGS.iter().any(|f| w.iter().any(|w| w == f))
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
    match m.mirroring {
        Some(r) if r >= 0.5 => tip("strength", "Mirroring feelings", "When they said how they felt, you acknowledged it.", example("mirroring")),
        Some(_) => tip("try", "Name their feeling back", "When they say how they feel, acknowledge it first (\"that sounds exhausting\"), then ask or share.", example("missed_feeling")),
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

/// Whether a tip praises or suggests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TipKind {
    /// Something that worked.
    Strength,
    /// Something to try.
    Try,
}

/// The coach's tip on one message, shown under it as soon as the reply is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageTip {
    /// The skill it is about.
    pub skill: Skill,
    /// Praise or a suggestion.
    pub kind: TipKind,
    /// The tip, in a sentence or two. Anything it puts in quotation marks is quoted from the
    /// conversation (the learner's message or her last reply), never made up.
    pub text: String,
    /// The learner's own words the tip is about: always a part of their message.
    pub quote: String,
}

/// The longest quote a tip shows.
const QUOTE_CHARS: usize = 140;

/// The coach's tip on `message`, from the pipeline's reading of it (`signals`, which carries
/// what it did with the thread) and `her_last`, the persona's reply it answered. Suggestions
/// come first, in the order a conversation partner would notice them: pushing, repeating, an
/// unanswered question, a feeling passed over, nothing picked up, only closed questions, asking
/// nothing back. With nothing to suggest, it names what worked.
pub fn message_tip(
    message: &str,
    her_last: Option<&str>,
    persona_name: Option<&str>,
    signals: &Signals,
) -> MessageTip {
    let thread = &signals.thread;
    let first = clip(message.trim()).to_string();
    let suggest =
        |skill, text: String, quote: String| MessageTip { skill, kind: TipKind::Try, text, quote };
    let lower = message.to_lowercase();
    if signals.push.is_some() {
        let pushy = PUSHES.iter().find(|p| lower.contains(*p)).copied();
        return suggest(
            Skill::Pacing,
            "This asks for more closeness than the conversation has built yet. Share a little about yourself and let her match it.".into(),
            quote_of(message, pushy),
        );
    }
    if thread.repeats.is_some() {
        return suggest(
            Skill::Listening,
            "You said this before, so it lands as nothing new. Answer what she just said instead."
                .into(),
            first,
        );
    }
    let questions = question_sentences(message);
    if let (Some(question), None) = (&thread.question, &thread.answered) {
        return suggest(
            Skill::Reciprocity,
            format!("She asked \u{201c}{}\u{201d} and this does not answer it. Answer first, then ask her something back.", clip(question)),
            first,
        );
    }
    if let Some(feeling) = her_last.and_then(feeling_in) {
        if !acknowledges(message) {
            let example = if GOOD_FEELINGS.contains(&feeling) { MIRROR_GOOD } else { MIRROR_BAD };
            return suggest(
                Skill::Mirroring,
                format!("She said she is \u{201c}{feeling}\u{201d}. Acknowledge that before moving on, for example \u{201c}{example}\u{201d}."),
                first,
            );
        }
    }
    if thread.could_listen && thread.listened.is_none() {
        let text = match her_last.and_then(|h| notable_word(h, persona_name)) {
            Some(w) => format!("Nothing here picks up what she said. She mentioned \u{201c}{w}\u{201d}: ask about it, or say what you make of it."),
            None => "Nothing here picks up what she said. Take up one detail of her reply before adding your own.".into(),
        };
        return suggest(Skill::Listening, text, first);
    }
    if !questions.is_empty() && questions.iter().all(|q| !is_open_question(q)) {
        return suggest(
            Skill::OpenQuestions,
            "This question invites a yes or a no. Try it with what, how or why, and she has more to say.".into(),
            questions[0].clone(),
        );
    }
    if questions.is_empty() && !signals.asks_about_persona && signals.self_disclosure > 0.0 {
        return suggest(
            Skill::Reciprocity,
            "You shared something about yourself but asked nothing. End with a question about her."
                .into(),
            first,
        );
    }
    let praise = |skill, text: String, quote: String| MessageTip {
        skill,
        kind: TipKind::Strength,
        text,
        quote,
    };
    if let Some(how) = &thread.listened {
        return praise(
            Skill::Listening,
            format!("You {}: she can tell you listened.", how.trim()),
            first,
        );
    }
    if signals.answered_question && signals.asks_about_persona {
        return praise(
            Skill::Reciprocity,
            "You answered her and asked back: that is how a conversation keeps going.".into(),
            first,
        );
    }
    if let Some(open) = questions.iter().find(|q| is_open_question(q)) {
        return praise(
            Skill::OpenQuestions,
            "An open question: it invites a story, not a yes or a no.".into(),
            open.clone(),
        );
    }
    suggest(
        Skill::OpenQuestions,
        "Keep it going with an open question about her (what, how, why).".into(),
        first,
    )
}

/// The tip on each of the learner's messages in `dialogue`, by turn index, for those the
/// pipeline has answered (its reading sits on the reply's trace).
pub fn message_tips(dialogue: &Dialogue) -> Vec<(usize, MessageTip)> {
    let turns = &dialogue.turns;
    turns
        .iter()
        .enumerate()
        .filter(|(_, t)| t.speaker == Speaker::User)
        .filter_map(|(i, t)| {
            let reply = turns.get(i + 1).filter(|n| n.speaker == Speaker::Persona)?;
            let signals = &reply.trace.as_ref()?.signals;
            let her_last = turns[..i]
                .iter()
                .rev()
                .find(|p| p.speaker == Speaker::Persona)
                .map(|p| p.text.as_str());
            Some((i, message_tip(&t.text, her_last, dialogue.persona_name.as_deref(), signals)))
        })
        .collect()
}

/// How the mirroring tip's examples read (they are the only quoted words a tip makes up, and
/// are marked as examples).
pub const MIRROR_BAD: &str = "oh no, that sounds hard";
/// The example for a feeling worth celebrating.
pub const MIRROR_GOOD: &str = "oh, that's exciting!";

/// The detail of `reply` a listening tip names: its longest content word that is neither
/// generic ("hello", "thanks") nor the persona's own name.
pub fn notable_word(reply: &str, persona_name: Option<&str>) -> Option<String> {
    let name = persona_name.map(str::to_lowercase);
    content_words(reply)
        .into_iter()
        .filter(|w| {
            !FILLERS.contains(&w.as_str())
                && !GENERIC.contains(&w.as_str())
                && !w.contains('\'')
                && !w.chars().any(|c| c.is_ascii_digit())
                && name.as_deref() != Some(w.as_str())
        })
        .fold(None, |best: Option<String>, w| match best {
            Some(b) if b.chars().count() >= w.chars().count() => Some(b),
            _ => Some(w),
        })
}

/// The part of `message` a tip quotes: the sentence that holds `needle`, else the first
/// sentence; at most [`QUOTE_CHARS`]. Always a slice of `message`.
fn quote_of(message: &str, needle: Option<&str>) -> String {
    let message = message.trim();
    let mut start = 0;
    let mut sentences = Vec::new();
    for (i, ch) in message.char_indices() {
        if matches!(ch, '.' | '!' | '?' | '\n' | '…') {
            let end = i + ch.len_utf8();
            sentences.push(&message[start..end]);
            start = end;
        }
    }
    sentences.push(&message[start..]);
    let sentences: Vec<&str> =
        sentences.into_iter().map(str::trim).filter(|s| !words(s).is_empty()).collect();
    let chosen = needle
        .and_then(|n| sentences.iter().find(|s| s.to_lowercase().contains(n)))
        .or(sentences.first())
        .copied()
        .unwrap_or(message);
    clip(chosen).to_string()
}

/// At most [`QUOTE_CHARS`] of `text`, cut at a word.
fn clip(text: &str) -> &str {
    if text.chars().count() <= QUOTE_CHARS {
        return text;
    }
    let cut = text.char_indices().nth(QUOTE_CHARS).map_or(text.len(), |(i, _)| i);
    let head = &text[..cut];
    head.rfind(' ').map_or(head, |space| &head[..space])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialogue(turns: &[(Speaker, &str)]) -> Dialogue {
        Dialogue::of_turns(turns)
    }

    fn signals() -> Signals {
        Signals::default()
    }

    #[test]
    fn a_tip_names_the_first_thing_a_partner_would_notice() {
        use rapport_pipeline::signals::Push;
        let her = "Oh, I'm so nervous about my speech tomorrow. How do you know the couple?";
        // Her question unanswered comes before her feeling.
        let mut s = signals();
        s.thread.question = Some("How do you know the couple?".into());
        s.thread.could_listen = true;
        let t = message_tip("Nice weather. Do you like wine?", Some(her), Some("Margot"), &s);
        assert_eq!((t.skill, t.kind), (Skill::Reciprocity, TipKind::Try));
        assert!(t.text.contains("How do you know the couple?"));
        // Answered, but her nerves passed over.
        s.thread.answered = Some("took up 'couple'".into());
        s.thread.listened = Some("took up 'couple'".into());
        let t = message_tip("I went to school with the groom.", Some(her), Some("Margot"), &s);
        assert_eq!(t.skill, Skill::Mirroring);
        assert!(t.text.contains("nervous"));
        // Acknowledged: praised for listening.
        let t = message_tip(
            "Oh no, speeches are scary! I went to school with the groom.",
            Some(her),
            Some("Margot"),
            &s,
        );
        assert_eq!((t.skill, t.kind), (Skill::Listening, TipKind::Strength));
        // Pushing trumps everything, and the quote is the pushy sentence.
        s.push = Some(Push::Romantic);
        let t = message_tip(
            "I went to school with the groom. Can I kiss you later?",
            Some(her),
            Some("Margot"),
            &s,
        );
        assert_eq!(t.skill, Skill::Pacing);
        assert_eq!(t.quote, "Can I kiss you later?");
        // Nothing picked up: the tip names a detail she really mentioned.
        let mut s = signals();
        s.thread.could_listen = true;
        let t = message_tip(
            "I like trains.",
            Some("Hello! My dog Biscuit ate the table runner."),
            Some("Margot"),
            &s,
        );
        assert_eq!(t.skill, Skill::Listening);
        assert!(t.text.contains("\u{201c}biscuit\u{201d}"), "{}", t.text);
        assert_eq!(
            notable_word("Hello there! I'm Margot, the one with the clipboard.", Some("Margot"))
                .as_deref(),
            Some("clipboard")
        );
        assert!(feeling_in("I'm so excited to meet you!").is_none(), "a greeting, not a feeling");
        // A closed question is quoted as the learner wrote it.
        s.thread.listened = Some("took up 'biscuit'".into());
        let t = message_tip(
            "Biscuit sounds fun. Is he a terrier?",
            Some("My dog Biscuit ate the table runner."),
            None,
            &s,
        );
        assert_eq!((t.skill, t.quote.as_str()), (Skill::OpenQuestions, "Is he a terrier?"));
    }

    proptest::proptest! {
        /// Whatever the message and the reading, the quote is the learner's own words and
        /// anything the tip puts in quotation marks was said in the conversation.
        #[test]
        fn tips_quote_the_conversation_and_invent_nothing(
            message in "[A-Za-z' ,.!?\n]{1,300}",
            her in proptest::option::of("[A-Za-z' ,.!?]{0,200}"),
            question in proptest::option::of("[A-Za-z ]{1,40}\\?"),
            flags in proptest::collection::vec(proptest::bool::ANY, 6),
        ) {
            use rapport_pipeline::signals::Push;
            let mut s = Signals::default();
            if flags[0] { s.push = Some(Push::Romantic); }
            if flags[1] { s.thread.repeats = Some("0.95 like message 1".into()); }
            s.thread.question = question.clone();
            if flags[2] { s.thread.answered = Some("yes".into()); }
            s.thread.could_listen = flags[3];
            if flags[4] { s.thread.listened = Some("took up 'x'".into()); }
            s.asks_about_persona = flags[5];
            let t = message_tip(&message, her.as_deref(), None, &s);
            proptest::prop_assert!(message.contains(&t.quote), "quote {:?} not in {:?}", t.quote, message);
            proptest::prop_assert!(t.quote.chars().count() <= QUOTE_CHARS);
            let heard = format!("{} {} {}", message.to_lowercase(), her.clone().unwrap_or_default().to_lowercase(), question.clone().unwrap_or_default().to_lowercase());
            for quoted in t.text.split('\u{201c}').skip(1).filter_map(|q| q.split('\u{201d}').next()) {
                let example = quoted == MIRROR_BAD || quoted == MIRROR_GOOD;
                proptest::prop_assert!(example || heard.contains(&quoted.to_lowercase()), "{quoted:?} was never said");
            }
        }
    }

    #[test]
    fn saying_her_name_back_is_not_listening() {
        use Speaker::*;
        let mut d = dialogue(&[
            (Persona, "Welcome! I'm Margot. Did you find the place all right?"),
            (User, "Hi Margot! Do you like weddings?"),
        ]);
        d.persona_name = Some("Margot".into());
        assert_eq!(user_side(&d).active_listening, Some(0.0));
    }

    #[test]
    fn mirroring_counts_feelings_named_back() {
        use Speaker::*;
        let d = dialogue(&[
            (Persona, "Honestly I'm exhausted, the kiln cracked a whole batch."),
            (User, "Oh no, that sounds awful. What happened?"),
            (Persona, "It ran too hot. I feel so frustrated."),
            (User, "Do you have another kiln?"),
            (Persona, "Just the one! Anyway, what do you make?"),
            (User, "Mugs, mostly."),
        ]);
        let m = user_side(&d);
        assert_eq!(m.mirroring, Some(0.5));
        assert!(feeling_in("The weather is awful today.").is_none(), "not about her");
        assert_eq!(feeling_in("I'm a bit nervous, to be honest."), Some("nervous"));
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
