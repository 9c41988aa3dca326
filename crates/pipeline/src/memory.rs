//! The running memory: what the oldest turns said, once they no longer fit in the prompt.
//!
//! Extractive, not generated: the sentences in which the user told something about themselves
//! and the persona told something about itself are kept, newest last, within a fixed size.
//! A summary written by the model would read better, but it would cost another generation on a
//! CPU where one reply already takes seconds, and a small model's summary invents details; the
//! facts people share ("my sister is called Lea") are what a friend is expected to remember.

use rapport_core::{ChatMessage, Role};
use serde::{Deserialize, Serialize};

use crate::signals::{persona_discloses, read_signals};

/// Most remembered sentences about the user.
const ABOUT_THEM: usize = 10;
/// Most remembered sentences of the persona about itself.
const ABOUT_YOU: usize = 5;
/// Longest remembered sentence, in characters.
const SENTENCE_CHARS: usize = 200;

/// What the persona remembers of the turns that left the prompt.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Memory {
    /// Things the user told about themselves.
    pub about_them: Vec<String>,
    /// Things the persona told about itself.
    pub about_you: Vec<String>,
    /// How many messages of the history have been folded in (they start the history).
    pub folded: usize,
}

impl Memory {
    /// Folds messages that leave the prompt into the memory.
    pub fn fold(&mut self, messages: &[ChatMessage]) {
        for m in messages {
            for sentence in crate::cleanup::split_sentences(&m.content) {
                let sentence: String = sentence.trim().chars().take(SENTENCE_CHARS).collect();
                match m.role {
                    Role::User if read_signals(&sentence, None).self_disclosure >= 0.5 => {
                        push_capped(&mut self.about_them, sentence, ABOUT_THEM)
                    }
                    Role::Assistant if persona_discloses(&sentence) => {
                        push_capped(&mut self.about_you, sentence, ABOUT_YOU)
                    }
                    _ => {}
                }
            }
        }
        self.folded += messages.len();
    }

    /// The memory as prompt text, or `None` while it is empty.
    pub fn render(&self) -> Option<String> {
        if self.about_them.is_empty() && self.about_you.is_empty() {
            return None;
        }
        let mut out = String::new();
        if !self.about_them.is_empty() {
            out.push_str("They told you earlier:\n");
            for s in &self.about_them {
                out.push_str(&format!("- \"{s}\"\n"));
            }
        }
        if !self.about_you.is_empty() {
            out.push_str("You told them earlier:\n");
            for s in &self.about_you {
                out.push_str(&format!("- \"{s}\"\n"));
            }
        }
        Some(out.trim_end().to_string())
    }
}

fn push_capped(list: &mut Vec<String>, item: String, cap: usize) {
    if list.contains(&item) {
        return;
    }
    list.push(item);
    if list.len() > cap {
        list.remove(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keeps_what_people_told_about_themselves() {
        let mut m = Memory::default();
        m.fold(&[
            ChatMessage::user("hi. I work as a nurse and my sister Lea just moved to Porto."),
            ChatMessage::assistant("Oh nice. I grew up near the sea myself, so I get it."),
            ChatMessage::user("lol ok"),
        ]);
        assert_eq!(m.folded, 3);
        assert_eq!(
            m.about_them,
            vec!["I work as a nurse and my sister Lea just moved to Porto.".to_string()]
        );
        assert_eq!(m.about_you.len(), 1);
        let text = m.render().unwrap();
        assert!(text.contains("nurse") && text.contains("sea"));
        assert_eq!(Memory::default().render(), None);
    }

    proptest! {
        #[test]
        fn memory_stays_bounded(messages in proptest::collection::vec(".{0,200}", 0..60)) {
            let mut m = Memory::default();
            let msgs: Vec<ChatMessage> = messages.iter().enumerate().map(|(i, t)| if i % 2 == 0 { ChatMessage::user(t.clone()) } else { ChatMessage::assistant(t.clone()) }).collect();
            m.fold(&msgs);
            prop_assert!(m.about_them.len() <= ABOUT_THEM && m.about_you.len() <= ABOUT_YOU);
            prop_assert_eq!(m.folded, msgs.len());
        }
    }
}
