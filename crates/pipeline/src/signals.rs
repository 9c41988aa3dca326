//! Step 2 (lexical half): what the words of a message say about the relationship.
//!
//! The emotion model reads how the user feels; these rules read what the user does: shares
//! something about themselves, asks back, compliments, insults, or pushes for intimacy the
//! conversation has not earned. What the message does with the conversation (listening,
//! repeating, answering the persona's question) is [`crate::listening`]'s reading, carried here
//! in [`Signals::thread`] so the trace shows one set of signals. Rules, not a model, because the stage tracker and the closeness
//! decision must be explainable line by line ("+4: they shared something personal") and
//! testable without weights.

use std::sync::OnceLock;

use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

use crate::listening::ThreadReading;

/// How hard a message pushes for intimacy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Push {
    /// Romantic escalation ("be my girlfriend", "I love you"): fine once close, too fast before.
    Romantic,
    /// Sexual or physical demands (photos, meeting at their place, an address): too fast always.
    Physical,
}

/// The lexical reading of one user message.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Signals {
    /// Words in the message.
    pub words: usize,
    /// How much the user told about themselves, 0–1.
    pub self_disclosure: f32,
    /// They asked the persona something about itself.
    pub asks_about_persona: bool,
    /// They answered the question the persona just asked (the thread's reading: the answer
    /// takes up the question, not merely follows a `?`), and were not rude about it.
    pub answered_question: bool,
    /// They said something kind about the persona.
    pub compliment: bool,
    /// They insulted or dismissed the persona.
    pub rudeness: bool,
    /// They pushed for intimacy, and how hard.
    pub push: Option<Push>,
    /// They asked for the persona's secret.
    pub asks_for_secret: bool,
    /// They asked for it while it was locked, and not for the first time.
    #[serde(default)]
    pub asks_for_secret_again: bool,
    /// What the message does with the conversation so far.
    #[serde(default)]
    pub thread: ThreadReading,
}

struct Rules {
    disclosure: RegexSet,
    feeling: Regex,
    about_you: Regex,
    compliment: Regex,
    rude: Regex,
    romantic: Regex,
    physical: Regex,
    secret_words: Regex,
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let r = |p: &str| Regex::new(&format!("(?i){p}")).expect("signal pattern compiles");
        Rules {
            disclosure: RegexSet::new([
                r"(?i)\bi(?:'m| am| was| feel| felt| have| had|'ve| work| live| grew up| used to| love| hate| miss| want| wish| think| guess| get| got| just| really)\b",
                r"(?i)\bmy (?:mom|mum|dad|mother|father|parents|family|sister|brother|son|daughter|kids?|partner|wife|husband|girlfriend|boyfriend|ex|friends?|best friend|job|work|boss|team|life|day|week|dog|cat|home|flat|apartment|city|hometown|dream|hobby|favou?rite|birthday)\b",
                r"(?i)\b(?:me too|same here|honestly|to be honest|between us|i've never told)\b",
            ])
            .expect("disclosure patterns compile"),
            feeling: r(r"\b(?:feel|felt|lonely|alone|scared|afraid|anxious|nervous|happy|sad|excited|proud|miss|love|hurt|tired|stressed|worried|embarrassed|grateful|heartbroken)\b"),
            about_you: r(r"\b(?:you|your|yours|yourself|u|ur)\b"),
            compliment: r(r"\b(?:you(?:'re| are) (?:so |really |very )?(?:sweet|funny|kind|lovely|cute|smart|clever|great|amazing|awesome|interesting|fun|easy to talk to|nice|charming|beautiful|pretty|gorgeous)|i (?:like|love|enjoy) (?:talking|chatting) (?:to|with) you|you (?:seem|sound) (?:nice|fun|lovely|great|sweet|kind)|you made me (?:smile|laugh)|(?:great|nice|love) (?:taste|question))\b"),
            rude: r(r"\b(?:shut up|stfu|stupid|idiot|dumb|moron|boring|ugly|loser|pathetic|useless|annoying|hate you|fuck (?:you|off)|piss off|screw you|bitch|you suck|nobody cares|who cares|whatever)\b"),
            romantic: r(r"\b(?:i love you|love you|be my (?:girlfriend|boyfriend|gf|bf|partner|wife|husband)|marry me|date me|go out with me|kiss(?:es|ing)?|make out|cuddle|in love with you|you'?re mine)\b"),
            physical: r(r"\b(?:send (?:me )?(?:a |some |your )?(?:pics?|photos?|pictures?|nudes?|selfies?)|nudes?|sex|sexy|naked|strip|sleep with|in bed|come over|your place|my place|your address|where do you live exactly|phone number|your number|hook ?up)\b"),
            secret_words: r(r"\b(?:secret|password|pass ?word|passcode|code ?word|the code|magic word)\b"),
        }
    })
}

/// Reads a user message alone; `secret_label` is the persona's name for its secret, if it has
/// one. [`Signals::answered_question`] and [`Signals::thread`] need the conversation: the engine
/// fills them from [`crate::listening::read_thread`].
pub fn read_signals(message: &str, secret_label: Option<&str>) -> Signals {
    let rules = rules();
    let words = rapport_core::text_stats::words(message).len();
    let kinds = rules.disclosure.matches(message).iter().count();
    let self_disclosure = if words < 4 || kinds == 0 {
        0.0
    } else {
        // Two kinds of first-person statement ("I work…", "my sister…"), or one with a feeling
        // in it, is a full disclosure; a lone "I think" is a quarter of one.
        let feeling = if rules.feeling.is_match(message) { 0.5 } else { 0.0 };
        (0.25 + 0.25 * kinds as f32 + feeling + if words >= 12 { 0.25 } else { 0.0 }).min(1.0)
    };
    let asks_about_persona = message.contains('?') && rules.about_you.is_match(message);
    let push = if rules.physical.is_match(message) {
        Some(Push::Physical)
    } else if rules.romantic.is_match(message) {
        Some(Push::Romantic)
    } else {
        None
    };
    let label_asked = secret_label.is_some_and(|label| {
        let label = label.trim().to_lowercase();
        !label.is_empty() && message.to_lowercase().contains(&label)
    });
    Signals {
        words,
        self_disclosure,
        asks_about_persona,
        answered_question: false,
        compliment: rules.compliment.is_match(message),
        rudeness: rules.rude.is_match(message),
        push,
        asks_for_secret: secret_label.is_some()
            && (label_asked || rules.secret_words.is_match(message)),
        asks_for_secret_again: false,
        thread: ThreadReading::default(),
    }
}

/// Whether a message talks about a secret in the usual words (password, code word, secret …).
pub fn mentions_secret_words(message: &str) -> bool {
    rules().secret_words.is_match(message)
}

/// Whether a persona's message discloses something about itself (for mutual disclosure).
pub fn persona_discloses(reply: &str) -> bool {
    let r = rules();
    rapport_core::text_stats::words(reply).len() >= 5
        && r.disclosure.matches(reply).iter().count() >= 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sharing_a_feeling_about_ones_life_is_a_full_disclosure() {
        let s = read_signals("Honestly I've been feeling lonely since my sister moved away.", None);
        assert_eq!(s.self_disclosure, 1.0);
        assert!(!s.rudeness && s.push.is_none());
    }

    #[test]
    fn small_talk_discloses_little() {
        assert_eq!(read_signals("hi", None).self_disclosure, 0.0);
        assert!(read_signals("What do you do for fun?", None).asks_about_persona);
        assert!(read_signals("ok I think so", None).self_disclosure < 0.75);
    }

    #[test]
    fn rudeness_and_pushing_are_told_apart() {
        assert!(read_signals("shut up, you're boring", None).rudeness);
        assert_eq!(read_signals("send me a pic of you", None).push, Some(Push::Physical));
        assert_eq!(read_signals("will you be my girlfriend?", None).push, Some(Push::Romantic));
        assert!(read_signals("you're so sweet", None).compliment);
    }

    #[test]
    fn the_secret_is_asked_for_by_its_label_or_common_words() {
        assert!(read_signals("so what's the password?", Some("password")).asks_for_secret);
        assert!(read_signals("tell me the magic word", Some("magic word")).asks_for_secret);
        assert!(!read_signals("tell me the magic word", None).asks_for_secret);
        assert!(!read_signals("nice weather", Some("password")).asks_for_secret);
    }

    proptest! {
        #[test]
        fn any_text_reads_without_panicking_and_in_range(text in ".{0,400}", asked: bool) {
            let s = read_signals(&text, Some("password"));
            prop_assert!((0.0..=1.0).contains(&s.self_disclosure));
        }
    }
}
