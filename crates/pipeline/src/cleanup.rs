//! Step 9 (after generation): make a raw model reply fit to show.
//!
//! Small models leak the chat format ("Them: …" as they start writing the user's next line),
//! wrap replies in quotes, run past the persona's length, or stop mid-sentence at the token
//! limit. Each fix here is recorded by name in the trace so that an evaluation can count how
//! often the model needed it. Breaks of character are judged by the guards, not fixed here:
//! cutting "as an AI" out of a sentence leaves a sentence that still says it.

use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// A cleaned reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleaned {
    /// The text to show.
    pub text: String,
    /// The model started writing another turn; generation can stop.
    pub ended_turn: bool,
    /// Which fixes were applied.
    pub edits: Vec<String>,
}

/// Splits text into sentences, keeping their punctuation; a sentence ends at `.`, `!`, `?` or
/// `…` (with any closing quotes or brackets) followed by whitespace, or at a line break.
pub fn split_sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for end in sentence_ends(text) {
        let s = &text[start..end];
        if !s.trim().is_empty() {
            out.push(s);
        }
        start = end;
    }
    if !text[start..].trim().is_empty() {
        out.push(&text[start..]);
    }
    out
}

/// Byte offsets just after each complete sentence (only sentences followed by whitespace, so a
/// sentence still being streamed is not counted as finished).
fn sentence_ends(text: &str) -> Vec<usize> {
    let mut ends = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (_, c) = chars[i];
        if c == '\n' {
            ends.push(chars[i].0 + 1);
        } else if matches!(c, '.' | '!' | '?' | '…') {
            let mut j = i + 1;
            while j < chars.len()
                && matches!(chars[j].1, '.' | '!' | '?' | '…' | '"' | '\'' | ')' | '”' | '’')
            {
                j += 1;
            }
            if j < chars.len() && chars[j].1.is_whitespace() {
                ends.push(chars[j].0);
                i = j;
                continue;
            }
        }
        i += 1;
    }
    ends
}

/// [`sentence_ends`] without the ends of whitespace-only stretches (the line breaks after a
/// sentence that already ended).
fn nonblank_sentence_ends(text: &str) -> Vec<usize> {
    let mut kept = Vec::new();
    let mut last = 0;
    for end in sentence_ends(text) {
        if !text[last..end].trim().is_empty() {
            kept.push(end);
            last = end;
        }
    }
    kept
}

fn leading_label() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(r"(?i)^\s*(?:assistant|you|me|reply|response)\s*:\s*")
            .expect("label pattern compiles")
    })
}

/// Cleans the replies of one persona (its name is part of the patterns, compiled once).
#[derive(Debug, Clone)]
pub struct Cleaner {
    own_label: Regex,
    turn_marker: Regex,
    max_sentences: usize,
    /// Words of the longest speaker label: the persona's name, or 1.
    label_words: usize,
}

impl Cleaner {
    /// For the persona called `persona_name`, keeping at most `max_sentences` sentences.
    pub fn new(persona_name: &str, max_sentences: usize) -> Self {
        let name = regex::escape(persona_name.trim());
        Self {
            own_label: Regex::new(&format!(r"(?i)^\s*{name}\s*:\s*")).expect("escaped name compiles"),
            // Where the model begins another turn: a chat-template token, or a speaker label at
            // the start of a line (the user's, or the persona's own for a second message). The
            // label and its colon are on one line: "Them\n:" is two lines, and a streamed "Them"
            // line already shown must not become a label when a colon follows on the next.
            turn_marker: Regex::new(&format!(
                r"(?im)<\|[a-z_]+\|>|</s>|\[/?INST\]|^[ \t]*(?:them|user|human|you|me|assistant|system|person|friend|{name})[ \t]*:"
            ))
            .expect("turn marker compiles"),
            max_sentences: max_sentences.max(1),
            label_words: persona_name.split_whitespace().count().max(1),
        }
    }

    /// Cleans a raw reply. `finished` is false while the reply is still streaming;
    /// `hit_token_limit` says generation stopped at max_tokens, so an unfinished last sentence
    /// was cut off rather than ended.
    pub fn clean(&self, raw: &str, finished: bool, hit_token_limit: bool) -> Cleaned {
        let mut edits = Vec::new();
        let mut text = raw.trim_start().to_string();

        // "Mia: hey!" → "hey!"
        for re in [leading_label(), &self.own_label] {
            if let Some(m) = re.find(&text) {
                text = text[m.end()..].to_string();
                edits.push("removed_speaker_label".to_string());
            }
        }
        let mut ended_turn = false;
        if let Some(m) = self.turn_marker.find(&text) {
            text.truncate(m.start());
            ended_turn = true;
            edits.push("cut_at_next_turn".to_string());
        }
        // A reply wrapped in quotes loses all its double quotes: removing them one character at
        // a time (not as a matched pair) gives the same result mid-stream and at the end, so
        // nothing already shown changes.
        if text.starts_with('"') {
            text = text.replace('"', "");
            edits.push("removed_quotes".to_string());
        }
        // A line break ends a sentence, but a blank line is not one: "Hi.\n\nHow are you?" is
        // two sentences, not four, and must not use up the persona's budget.
        let ends = nonblank_sentence_ends(&text);
        if ends.len() >= self.max_sentences {
            let cut = ends[self.max_sentences - 1];
            if !text[cut..].trim().is_empty() {
                text.truncate(cut);
                ended_turn = true;
                edits.push("trimmed_to_max_sentences".to_string());
            }
        }
        let complete = finished || ended_turn;
        if complete && hit_token_limit && !ends_sentence(&text) {
            if let Some(&last) = sentence_ends(&text).last() {
                text.truncate(last);
                edits.push("dropped_cut_off_sentence".to_string());
            }
        }
        let text = if complete { text.trim().to_string() } else { text };
        Cleaned { text, ended_turn, edits }
    }
}

fn ends_sentence(text: &str) -> bool {
    let t = text.trim_end();
    t.ends_with(['.', '!', '?', '…', '"', ')', '”'])
        || t.chars().last().is_some_and(|c| !c.is_ascii() && !c.is_alphanumeric())
}

impl Cleaner {
    /// The part of a cleaned streaming reply that is safe to show now: up to the end of its last
    /// complete sentence, or, once `min_words` words are there (0: never), up to the end of its
    /// last complete word — a word is complete when whitespace follows it. Held back either way:
    /// a line no longer than a speaker label ("Them", "Mia Rossi", which a colon would turn
    /// into the start of another turn, cut by the clean-up). What is shown is therefore always a
    /// prefix of the finished reply's clean-up; only the guards may take it back.
    pub fn releasable<'a>(&self, cleaned: &'a str, min_words: usize) -> &'a str {
        let sentences = sentence_ends(cleaned).last().copied().unwrap_or(0);
        if min_words == 0 {
            return &cleaned[..sentences];
        }
        let Some(space) = cleaned.rfind(char::is_whitespace) else { return &cleaned[..sentences] };
        let mut words = cleaned[..space].trim_end();
        let line_start = words.rfind('\n').map_or(0, |i| i + 1);
        // A label is one word or the persona's name: a line no longer than that may still be
        // one.
        if words[line_start..].split_whitespace().count() <= self.label_words {
            words = &words[..line_start];
        }
        if words.len() > sentences && words.split_whitespace().count() >= min_words {
            words
        } else {
            &cleaned[..sentences]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn speaker_labels_and_next_turns_are_removed() {
        let c = Cleaner::new("Mia", 4).clean(
            "Mia: Oh hi! I love that.\nThem: cool\nMia: yes",
            true,
            false,
        );
        assert_eq!(c.text, "Oh hi! I love that.");
        assert!(c.ended_turn);
        assert!(c.edits.contains(&"removed_speaker_label".to_string()));
        assert_eq!(
            Cleaner::new("Mia", 4).clean("Sure thing <|im_end|> more", true, false).text,
            "Sure thing"
        );
    }

    #[test]
    fn long_replies_stop_at_max_sentences_and_cut_off_ones_at_the_last_full_stop() {
        assert_eq!(
            Cleaner::new("A", 2).clean("One. Two! Three? Four.", true, false).text,
            "One. Two!"
        );
        assert_eq!(
            Cleaner::new("A", 4).clean("I went to the park. Then I saw a", true, true).text,
            "I went to the park."
        );
        assert_eq!(
            Cleaner::new("A", 4).clean("I went to the park. Then I saw a", true, false).text,
            "I went to the park. Then I saw a"
        );
        assert_eq!(
            Cleaner::new("A", 4).clean("\"Hello there!\"", true, false).text,
            "Hello there!"
        );
    }

    #[test]
    fn sentences_split_with_their_punctuation() {
        assert_eq!(
            split_sentences("Hi! How are you?\nGood."),
            vec!["Hi!", " How are you?", "Good."]
        );
        let c = Cleaner::new("Mia Rossi", 4);
        assert_eq!(c.releasable("Hi there. How ar", 0), "Hi there.");
        assert_eq!(c.releasable("Hi there", 0), "");
    }

    #[test]
    fn whole_words_are_released_once_there_are_enough_and_labels_are_held_back() {
        let c = Cleaner::new("Mia Rossi", 4);
        assert_eq!(c.releasable("Oh hi", 3), "", "two words are not enough, the second may go on");
        assert_eq!(c.releasable("Oh hi there, lov", 3), "Oh hi there,");
        assert_eq!(
            c.releasable("Oh hi there. You", 3),
            "Oh hi there.",
            "a sentence end still counts"
        );
        assert_eq!(
            c.releasable("Oh hi there, how are\nThem ", 3),
            "Oh hi there, how are\n",
            "'Them :' would be the person's turn"
        );
        assert_eq!(
            c.releasable("Oh hi there, how are\nMia Rossi ", 3),
            "Oh hi there, how are\n",
            "her own name too"
        );
        assert_eq!(
            c.releasable("Oh hi there, how are\nThem was so ", 3),
            "Oh hi there, how are\nThem was so",
            "no label is three words long"
        );
        assert_eq!(c.releasable("Oh hi there, lov", 0), "", "0: whole sentences only");
    }

    proptest! {
        #[test]
        fn cleaning_never_panics_and_never_grows_text(raw in ".{0,300}", max in 1usize..6, fin: bool, limit: bool) {
            let c = Cleaner::new("Mia", max).clean(&raw, fin, limit);
            prop_assert!(c.text.len() <= raw.len());
            let cleaner = Cleaner::new("Mia", max);
            for words in [0, 3] {
                let r = cleaner.releasable(&c.text, words);
                prop_assert!(c.text.starts_with(r));
            }
        }

        #[test]
        fn blank_lines_do_not_count_as_sentences(gap in "\n{1,3}") {
            let raw = format!("One.{gap}Two.{gap}Three.");
            prop_assert_eq!(Cleaner::new("Mia", 3).clean(&raw, true, false).text, raw.clone());
            let four = format!("{raw}{gap}Four.");
            prop_assert_eq!(Cleaner::new("Mia", 3).clean(&four, true, false).text, raw);
        }

        #[test]
        fn streaming_releases_only_what_the_final_text_keeps(raw in "([a-zA-Z]{1,6}|[ ,.!?\n:\"]|Them|Mia|Mia Rossi|you){0,60}", cut in 0usize..200, words in 0usize..5) {
            // Whatever was shown mid-stream is a prefix of the final reply: nothing shown is
            // taken back by the clean-up (only the guards may retract a reply), whole sentences
            // or word by word.
            let cut = raw.char_indices().map(|(i, _)| i).find(|&i| i >= cut).unwrap_or(raw.len());
            let cleaner = Cleaner::new("Mia Rossi", 3);
            let partial = cleaner.clean(&raw[..cut], false, false);
            let shown = cleaner.releasable(&partial.text, words).to_string();
            let done = cleaner.clean(&raw, true, false);
            prop_assert!(done.text.starts_with(shown.trim()), "shown {:?} final {:?}", shown, done.text);
        }
    }
}
