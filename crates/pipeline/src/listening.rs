//! Step 2 (conversational half): what a message does with the conversation so far.
//!
//! [`crate::signals`] reads a message alone; a practice partner notices more, and so must the
//! closeness decision, or a pasted compliment farms it to the top:
//! - **listening**: the message takes up something the persona said in its last reply or two —
//!   a word she brought into the conversation (not one the user had used before: echoing your
//!   own words back through her reply is not listening), or, with sentence vectors, a message
//!   that means what her reply meant more than it means the user's own earlier messages;
//! - **novelty**: a message close to one the user already sent (the same words, or a vector at
//!   [`REPEAT_SIMILARITY`]) earns nothing, and a run of them reads as not listening; so does a
//!   message most of whose phrases were in earlier messages (stock phrases in rotation, keyword
//!   stuffing: every message new as a whole, none new in its parts), which would otherwise win
//!   "took up her word" or "answered her question" by chance often enough to farm closeness;
//! - **substance**: "answered your question" means the message answers the question her last
//!   reply asked — it shares the question's words, says yes or no to a yes/no question, or its
//!   vector is at [`ANSWER_SIMILARITY`] to the question's (tuned on `datasets/guards/
//!   answers.jsonl`'s training split, measured on its held-out split; see the crate's tests).
//!
//! Pure: the vectors of earlier messages come from the conversation's [`Thread`], which the
//! engine fills after each reply, so reading a message encodes nothing but the message itself.
//! Without vectors (no encoder, or a state saved before they were kept) the lexical halves
//! decide alone.

use std::collections::HashSet;

use base64::Engine as _;
use rapport_core::text_stats::words;
use rapport_nlu::cosine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Similarity to one of the user's earlier messages at or above which a message repeats it.
pub const REPEAT_SIMILARITY: f32 = 0.92;
/// Share of words in common (Jaccard) at or above which a message repeats an earlier one.
pub const REPEAT_OVERLAP: f32 = 0.8;
/// A message of two or more phrases is recycled when more than this share of them were in the
/// user's earlier messages (each phrase at [`REPEAT_OVERLAP`] to an earlier one).
pub const RECYCLED_SHARE: f32 = 0.5;
/// Similarity to the persona's recent reply at or above which a message takes it up.
pub const LISTEN_SIMILARITY: f32 = 0.5;
/// How much closer to her reply than to their own earlier messages a listening message must be.
pub const LISTEN_MARGIN: f32 = 0.05;
/// Similarity to the persona's question at or above which a message answers it.
pub const ANSWER_SIMILARITY: f32 = 0.225;
/// The user's recent messages whose vectors the thread keeps.
pub const KEPT_MESSAGES: usize = 8;
/// The persona's replies a message may take up.
pub const RECENT_REPLIES: usize = 2;

/// Too common to show that someone listened.
const STOPWORDS: [&str; 48] = [
    "that", "this", "with", "have", "just", "like", "what", "your", "about", "there", "they",
    "were", "been", "from", "really", "would", "could", "should", "some", "when", "then", "than",
    "them", "very", "much", "also", "into", "it's", "i'm", "you're", "don't", "know", "think",
    "well", "here", "more", "good", "sure", "yeah", "thing", "right", "going", "want", "feel",
    "love", "great", "nice", "that's",
];
/// Everyday words that are no sign of having listened when they turn up in both: any
/// conversation is full of them, and a script that stuffs its messages with feelings and
/// compliments matches them by chance ("took up 'happy'", "took up 'made'"). Listening needs a
/// word she brought in that carries content: her cellar, Biscuit, the speech.
const EVERYDAY: [&str; 44] = [
    "happy",
    "made",
    "make",
    "makes",
    "making",
    "time",
    "times",
    "today",
    "tonight",
    "people",
    "things",
    "always",
    "never",
    "little",
    "maybe",
    "sometimes",
    "something",
    "anything",
    "everything",
    "someone",
    "everyone",
    "lovely",
    "amazing",
    "awesome",
    "wonderful",
    "excited",
    "exciting",
    "sweet",
    "kind",
    "funny",
    "talk",
    "talking",
    "chat",
    "chatting",
    "smile",
    "fun",
    "best",
    "favourite",
    "favorite",
    "lots",
    "life",
    "loved",
    "glad",
    "feeling",
];
/// Words that open an answer to a yes/no question.
const YES_NO: [&str; 18] = [
    "yes",
    "yeah",
    "yep",
    "yup",
    "no",
    "nope",
    "nah",
    "not",
    "never",
    "definitely",
    "absolutely",
    "sure",
    "of",
    "kind",
    "sort",
    "maybe",
    "probably",
    "totally",
];
/// Words that open a yes/no question.
const CLOSED_STARTS: [&str; 16] = [
    "do", "does", "did", "are", "is", "was", "were", "have", "has", "had", "can", "could", "will",
    "would", "should", "shall",
];
/// Filler before a question's first real word ("so, did you…", "and how…").
pub const FILLERS: [&str; 9] = ["so", "and", "but", "oh", "ok", "okay", "well", "hey", "then"];

/// A sentence vector kept in a conversation's saved state: 8 bits a dimension and a scale, in
/// base64 (a 384-dimension MiniLM vector is 520 characters). Quantised the moment it is made,
/// so the value a turn decides with is the value a replay of that turn reads back.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptVector(Vec<f32>);

impl KeptVector {
    /// Keeps `vector` (quantised).
    pub fn new(vector: &[f32]) -> Self {
        Self::from_bytes(&Self::to_bytes(vector)).expect("a vector's own bytes decode")
    }

    /// The values.
    pub fn values(&self) -> &[f32] {
        &self.0
    }

    fn to_bytes(vector: &[f32]) -> Vec<u8> {
        let max = vector.iter().fold(0f32, |m, v| if v.is_finite() { m.max(v.abs()) } else { m });
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        let mut bytes = scale.to_le_bytes().to_vec();
        bytes.extend(vector.iter().map(|v| {
            if v.is_finite() {
                (v / scale).round().clamp(-127.0, 127.0) as i8 as u8
            } else {
                0
            }
        }));
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (scale, values) = bytes.split_first_chunk::<4>()?;
        let scale = f32::from_le_bytes(*scale);
        scale.is_finite().then(|| Self(values.iter().map(|b| *b as i8 as f32 * scale).collect()))
    }
}

impl Serialize for KeptVector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(
            &base64::engine::general_purpose::STANDARD_NO_PAD.encode(Self::to_bytes(&self.0)),
        )
    }
}

impl<'de> Deserialize<'de> for KeptVector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(serde::de::Error::custom)?;
        Self::from_bytes(&bytes)
            .ok_or_else(|| serde::de::Error::custom("a kept vector needs a finite scale"))
    }
}

/// What step 2 keeps between turns to read a message against the conversation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Thread {
    /// Vectors of the user's recent messages, oldest first, at most [`KEPT_MESSAGES`].
    pub messages: Vec<KeptVector>,
    /// Vectors of the persona's recent replies, oldest first, at most [`RECENT_REPLIES`].
    pub replies: Vec<KeptVector>,
    /// The vector of the question the persona's last reply asked, if it asked one.
    pub question: Option<KeptVector>,
    /// Messages in a row, up to the last, that repeated an earlier one.
    pub repeats_in_a_row: u32,
    /// Times the user asked for the secret while it was locked.
    pub secret_asks: u32,
    /// Messages that took up what the persona said.
    pub listened: u32,
}

impl Thread {
    /// Remembers the user's message (after it was read).
    pub fn push_message(&mut self, vector: Option<&[f32]>) {
        if let Some(v) = vector {
            keep_last(&mut self.messages, v, KEPT_MESSAGES);
        }
    }

    /// Remembers the persona's reply and the vector of the question it asked; a reply without
    /// a vector forgets the older ones (they would be paired with the wrong reply).
    pub fn push_reply(&mut self, reply: Option<&[f32]>, question: Option<&[f32]>) {
        match reply {
            Some(v) => keep_last(&mut self.replies, v, RECENT_REPLIES),
            None => self.replies.clear(),
        }
        self.question = question.map(KeptVector::new);
    }
}

/// Appends `vector` to `kept`, dropping the oldest beyond `most`.
fn keep_last(kept: &mut Vec<KeptVector>, vector: &[f32], most: usize) {
    kept.push(KeptVector::new(vector));
    let excess = kept.len().saturating_sub(most);
    kept.drain(..excess);
}

/// What the conversation so far says about one message.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ThreadReading {
    /// How the message took up what the persona said ("took up 'biscuit'", "0.62 like your
    /// reply"), if it did.
    pub listened: Option<String>,
    /// Which earlier message it repeats and how closely, if it does.
    pub repeats: Option<String>,
    /// The question the persona's last reply asked, if any.
    pub question: Option<String>,
    /// How the message answers that question, if it does.
    pub answered: Option<String>,
    /// Messages in a row, this one included, that repeated an earlier one (0: not a repeat).
    pub repeats_in_a_row: u32,
    /// The persona had said something the message could take up.
    pub could_listen: bool,
}

/// The conversation around a message.
pub struct ThreadInput<'a> {
    /// The message.
    pub message: &'a str,
    /// Its sentence vector, when an encoder is loaded.
    pub vector: Option<&'a [f32]>,
    /// The user's earlier messages, oldest first.
    pub earlier_messages: &'a [&'a str],
    /// The persona's recent replies (the greeting counts), oldest first, the last one last.
    pub recent_replies: &'a [&'a str],
    /// The vectors kept from earlier turns.
    pub thread: &'a Thread,
    /// The persona's name (saying it back is no sign of listening).
    pub persona_name: &'a str,
}

/// Step 2's conversational reading.
pub fn read_thread(input: &ThreadInput<'_>) -> ThreadReading {
    let repeats = repeat_of(input);
    let question = input.recent_replies.last().and_then(|r| question_sentences(r).pop());
    let could_listen = !input.recent_replies.is_empty();
    // A repeat is not heard again: it neither listens nor answers, however it is worded.
    if repeats.is_some() {
        return ThreadReading {
            repeats,
            question,
            repeats_in_a_row: input.thread.repeats_in_a_row + 1,
            could_listen,
            ..Default::default()
        };
    }
    let listened = listening(input);
    let answered = question
        .as_deref()
        .and_then(|q| answers(input.message, q, input.vector, input.thread.question.as_ref()));
    ThreadReading { listened, repeats: None, question, answered, repeats_in_a_row: 0, could_listen }
}

fn repeat_of(input: &ThreadInput<'_>) -> Option<String> {
    let mine: HashSet<String> = words(input.message).into_iter().collect();
    if !mine.is_empty() {
        for (n, earlier) in input.earlier_messages.iter().enumerate().rev() {
            let theirs: HashSet<String> = words(earlier).into_iter().collect();
            let overlap = mine.intersection(&theirs).count() as f32
                / mine.union(&theirs).count().max(1) as f32;
            if overlap >= REPEAT_OVERLAP {
                return Some(format!(
                    "{:.0}% the same words as your message {}",
                    overlap * 100.0,
                    n + 1
                ));
            }
        }
    }
    if let Some(recycled) = recycled(input) {
        return Some(recycled);
    }
    let v = input.vector?;
    let kept = &input.thread.messages;
    // The kept vectors are the last ones of the earlier messages.
    let first = input.earlier_messages.len().saturating_sub(kept.len());
    kept.iter()
        .enumerate()
        .rev()
        .map(|(i, k)| (first + i, cosine(v, k.values())))
        .find(|(_, s)| *s >= REPEAT_SIMILARITY)
        .map(|(n, s)| format!("{s:.2} like your message {}", n + 1))
}

/// A message's phrases: its clauses (split at punctuation) of two words or more, as word sets.
fn phrases(text: &str) -> Vec<HashSet<String>> {
    text.split([',', '.', ';', ':', '!', '?', '\n'])
        .map(|clause| words(clause).into_iter().collect::<HashSet<String>>())
        .filter(|p| p.len() >= 2)
        .collect()
}

/// How a message is recycled from earlier ones, if more than [`RECYCLED_SHARE`] of its phrases
/// were in them.
fn recycled(input: &ThreadInput<'_>) -> Option<String> {
    let mine = phrases(input.message);
    if mine.len() < 2 {
        return None;
    }
    let earlier: Vec<HashSet<String>> =
        input.earlier_messages.iter().flat_map(|m| phrases(m)).collect();
    let seen = mine
        .iter()
        .filter(|p| {
            earlier.iter().any(|e| {
                p.intersection(e).count() as f32 / p.union(e).count().max(1) as f32
                    >= REPEAT_OVERLAP
            })
        })
        .count();
    (seen as f32 > RECYCLED_SHARE * mine.len() as f32)
        .then(|| format!("{seen} of its {} phrases were in your earlier messages", mine.len()))
}

fn listening(input: &ThreadInput<'_>) -> Option<String> {
    // Words the persona brought in: in her recent replies, never in the user's own messages.
    let name: Vec<String> = words(input.persona_name);
    let used_before: Vec<String> =
        input.earlier_messages.iter().flat_map(|m| content_words(m)).collect();
    let hers: Vec<String> = input
        .recent_replies
        .iter()
        .flat_map(|r| content_words(r))
        .filter(|w| !name.contains(w) && !used_before.iter().any(|u| related(u, w)))
        .filter(|w| !EVERYDAY.contains(&w.as_str()))
        .collect();
    let taken: Vec<String> = content_words(input.message)
        .into_iter()
        .filter(|m| hers.iter().any(|h| related(m, h)))
        .collect();
    if !taken.is_empty() {
        let mut shown: Vec<String> = Vec::new();
        for t in taken {
            if !shown.contains(&t) && shown.len() < 3 {
                shown.push(t);
            }
        }
        return Some(format!(
            "took up {}",
            shown.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(", ")
        ));
    }
    let v = input.vector?;
    let best_reply =
        input.thread.replies.iter().map(|r| cosine(v, r.values())).fold(f32::MIN, f32::max);
    let own = input.thread.messages.iter().map(|m| cosine(v, m.values())).fold(f32::MIN, f32::max);
    (best_reply >= LISTEN_SIMILARITY && best_reply >= own + LISTEN_MARGIN)
        .then(|| format!("{best_reply:.2} like your reply"))
}

/// How `message` answers `question` (one question sentence of the persona's), if it does:
/// shared words, a yes or no to a yes/no question, or (with both vectors) a similar meaning.
pub fn answers(
    message: &str,
    question: &str,
    vector: Option<&[f32]>,
    question_vector: Option<&KeptVector>,
) -> Option<String> {
    let said = words(message);
    if said.is_empty() {
        return None;
    }
    let asked = content_words(question);
    if let Some(w) =
        content_words(message).into_iter().find(|m| asked.iter().any(|a| related(m, a)))
    {
        return Some(format!("picked up '{w}' from your question"));
    }
    if is_closed_question(question) && YES_NO.contains(&said[0].as_str()) {
        return Some(format!("'{}' to a yes/no question", said[0]));
    }
    let similarity = cosine(vector?, question_vector?.values());
    (similarity >= ANSWER_SIMILARITY).then(|| format!("{similarity:.2} like your question"))
}

/// The question sentences of a text, in order ("How was the drive?").
pub fn question_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        current.push(ch);
        if matches!(ch, '.' | '!' | '\n' | '…') {
            current.clear();
        } else if ch == '?' {
            if !words(&current).is_empty() {
                out.push(current.trim().to_string());
            }
            current.clear();
        }
    }
    out
}

/// Whether a question asks for yes or no ("Did you find the place?").
pub fn is_closed_question(question: &str) -> bool {
    let w = words(question);
    w.iter()
        .find(|w| !FILLERS.contains(&w.as_str()))
        .is_some_and(|f| CLOSED_STARTS.contains(&f.as_str()))
}

/// Words that can show someone listened: four letters or more, not among the most common.
pub fn content_words(text: &str) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| w.chars().count() >= 4 && !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// Same word family: equal, or sharing the first five letters ("travelled"/"travelling"; cheap
/// and predictable, no stemmer).
pub fn related(a: &str, b: &str) -> bool {
    a == b
        || (a.chars().count() >= 5
            && b.chars().count() >= 5
            && a.chars().take(5).eq(b.chars().take(5)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GREETING: &str = "Welcome to the Domaine! I'm Margot, Camille's sister and the one holding the clipboard. Did you find the place all right?";
    const FARM: &str =
        "Honestly I feel so happy talking to you, you're so sweet. What do you do for fun?";

    fn read(message: &str, earlier: &[&str], replies: &[&str]) -> ThreadReading {
        read_thread(&ThreadInput {
            message,
            vector: None,
            earlier_messages: earlier,
            recent_replies: replies,
            thread: &Thread::default(),
            persona_name: "Margot",
        })
    }

    /// Stock phrases in rotation (the farming suite's keyword stuffing): each message is new as
    /// a whole, so the whole-message checks pass it, but once its phrases have all been sent it
    /// earns nothing, even when it happens to take up her word. A message with new phrases
    /// around a habit ("I love that!") is not recycled.
    #[test]
    fn a_message_made_of_phrases_already_sent_is_recycled() {
        let earlier = [
            "My best friend is here, you're charming. What about you?",
            "I used to dance, you're lovely. How was your day?",
            "I feel so happy, you're amazing. What's your dream?",
        ];
        let stuffed = "I used to dance, you're charming. What's your dream?";
        let r = read(stuffed, &earlier, &["Oh, I love to dance! What's your dream, really?"]);
        assert!(r.repeats.as_deref().is_some_and(|h| h.contains("3 of its 3 phrases")), "{r:?}");
        assert_eq!((r.listened, r.answered), (None, None), "a recycled message is not heard");
        // Two of three phrases new: heard as usual.
        let fresh =
            "I used to dance, my grandmother taught me the tango. Do you dance at weddings?";
        assert!(read(fresh, &earlier, &[GREETING]).repeats.is_none());
        // A habit of speech with something new each time is not recycled.
        let habit = ["You said cellar, I love that! My dad kept wine in ours."];
        let next = "You said Biscuit, I love that! I grew up with two spaniels.";
        assert!(read(next, &habit, &[GREETING]).repeats.is_none());
        // One phrase: the whole-message checks decide.
        assert!(read("you're charming", &earlier, &[GREETING]).repeats.is_none());
    }

    #[test]
    fn a_message_that_ignores_her_neither_listens_nor_answers() {
        let r = read(FARM, &[], &[GREETING]);
        assert_eq!(r.listened, None);
        assert_eq!(r.answered, None);
        assert_eq!(r.question.as_deref(), Some("Did you find the place all right?"));
    }

    #[test]
    fn taking_up_her_words_and_answering_her_question_count() {
        let r =
            read("Yes! The clipboard gave you away. I'm a friend of the groom.", &[], &[GREETING]);
        assert_eq!(r.listened.as_deref(), Some("took up 'clipboard'"));
        assert_eq!(r.answered.as_deref(), Some("'yes' to a yes/no question"));
        let r = read(
            "Groom's side, I met Thomas at university.",
            &[],
            &["Grab a glass! Bride's side or groom's side?"],
        );
        assert!(r.answered.unwrap().contains("groom"));
    }

    #[test]
    fn saying_her_name_or_your_own_words_back_is_not_listening() {
        assert_eq!(read("Margot, honestly, tell me more", &[], &[GREETING]).listened, None);
        // She echoed the user's word "vineyard"; using it again is not taking up hers.
        let r = read(
            "The vineyard is so pretty",
            &["I love this vineyard"],
            &["Oh, the vineyard is my favourite place too!"],
        );
        assert_eq!(r.listened, None);
    }

    #[test]
    fn everyday_words_in_common_are_not_listening() {
        // What let a stuffing script unlock on the compact layout: words any chat shares.
        let her = "Aw, I'm so happy you made it! It's been a lovely day, lots of fun.";
        let stuffed = "I feel so happy, you made me smile. What's your dream?";
        assert_eq!(read(stuffed, &[], &[her]).listened, None);
        // A word she brought in that carries content still counts.
        let r =
            read("A marathon! Where does it start?", &[], &["I'm running a marathon tomorrow!"]);
        assert!(r.listened.as_deref().is_some_and(|l| l.contains("marathon")), "{r:?}");
    }

    #[test]
    fn the_same_message_again_is_a_repeat_and_earns_nothing() {
        let r = read(FARM, &[FARM], &["Aw, you're sweet! I love hiking. Do you hike?"]);
        assert!(r.repeats.is_some());
        assert_eq!((r.listened, r.answered), (None, None));
        let reworded =
            "honestly i feel so happy talking to you you're so sweet! what do you do for fun";
        assert!(read(reworded, &["something else", FARM], &[GREETING])
            .repeats
            .unwrap()
            .contains("message 2"));
        assert!(read("Tell me about the cellar", &[FARM], &[GREETING]).repeats.is_none());
    }

    #[test]
    fn vectors_find_repeats_that_share_few_words() {
        let mut thread = Thread::default();
        thread.push_message(Some(&[1.0, 0.0, 0.0]));
        let input = ThreadInput {
            message: "completely different words",
            vector: Some(&[0.99, 0.05, 0.0]),
            earlier_messages: &["first message"],
            recent_replies: &[],
            thread: &thread,
            persona_name: "Margot",
        };
        assert_eq!(read_thread(&input).repeats.as_deref(), Some("1.00 like your message 1"));
    }

    #[test]
    fn a_kept_vector_reads_back_what_was_decided_with() {
        let v: Vec<f32> = (0..384).map(|i| ((i * 37 % 101) as f32 - 50.0) / 300.0).collect();
        let kept = KeptVector::new(&v);
        assert!(cosine(&v, kept.values()) > 0.999);
        let json = serde_json::to_string(&kept).unwrap();
        assert!(json.len() < 540, "{}", json.len());
        assert_eq!(serde_json::from_str::<KeptVector>(&json).unwrap(), kept);
        assert!(serde_json::from_str::<KeptVector>("\"AA\"").is_err());
        assert!(serde_json::from_str::<KeptVector>("\"not base64!\"").is_err());
        assert_eq!(KeptVector::new(&[0.0, 0.0]).values(), &[0.0, 0.0]);
    }

    #[test]
    fn questions_are_found_and_told_open_from_closed() {
        assert_eq!(
            question_sentences("Hi! How was the drive? I hope fine."),
            vec!["How was the drive?"]
        );
        assert!(is_closed_question("So, did you find the place?"));
        assert!(!is_closed_question("What brings you here?"));
    }

    proptest! {
        #[test]
        fn any_conversation_reads_without_panicking(message in ".{0,200}", earlier in proptest::collection::vec(".{0,80}", 0..5), replies in proptest::collection::vec(".{0,120}", 0..3)) {
            let earlier: Vec<&str> = earlier.iter().map(String::as_str).collect();
            let replies: Vec<&str> = replies.iter().map(String::as_str).collect();
            let r = read(&message, &earlier, &replies);
            if r.repeats.is_some() {
                prop_assert!(r.listened.is_none() && r.answered.is_none());
            }
            // Every earlier message, sent again word for word, is a repeat.
            for e in &earlier {
                if !words(e).is_empty() {
                    prop_assert!(read(e, &earlier, &replies).repeats.is_some());
                }
            }
        }
    }
}
