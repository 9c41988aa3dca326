//! How a persona's prompt is laid out and worded, apart from what it says: where the turn's
//! notes and the examples go ([`PromptLayout`]), how the standing note asks her to carry the
//! conversation ([`NotePhrasing`]), and a persona's own choice of these and of its examples
//! ([`PromptTuning`]), which `rapport eval optimize` searches for and writes beside the
//! persona's file (docs/eval/optimize.md).
//!
//! It depends on nothing else in the pipeline, so that both the persona (which carries its
//! tuning) and the prompt (which follows it) can use it without a cycle.

use serde::{Deserialize, Serialize};

/// `Display` and `FromStr` for an enum of named choices (its `ALL` and `as_str`), so that the
/// command line, the files and the errors use one spelling; the error lists every name.
macro_rules! named {
    ($ty:ident, $what:literal) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
                    let names: Vec<&str> = $ty::ALL.iter().map(|v| v.as_str()).collect();
                    format!(concat!("unknown ", $what, " {:?}; one of: {}"), s, names.join(", "))
                })
            }
        }
    };
}

/// Where the turn's notes and the persona's examples go (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptLayout {
    /// Examples for the stage in the system message; the notes after the user's message.
    Cached,
    /// Examples for the stage as earlier exchanges after the system message; the notes after
    /// the user's message. In a judged batch on the default model it cut breaks of character
    /// from 19 to 2 per 100 replies and the prompt tokens read again per turn by 118, with no
    /// significant change in any judged dimension, where `Cached` lost a little
    /// (docs/eval/prompt-layout.md).
    CachedExchanges,
    /// `CachedExchanges` with what holds for the whole stage (`standing.tera`) in the system
    /// message after the examples, and a short note after the message. The default: against
    /// `CachedExchanges` it read 40 fewer new tokens on a later turn (median) with no judged
    /// dimension or break count significantly changed (docs/eval/prompt-layout.md).
    #[default]
    Compact,
    /// `Compact` with each earlier turn's note kept after its message ([`Past::notes`]): the
    /// fewest tokens read on most turns, but in its judged batch breaks of character rose
    /// from 1.7 to 7.9 per 100 replies and stage changes read far more, so not the default.
    CompactHistory,
    /// Examples chosen for the message and the notes in a system message just before it.
    NotesBeforeMessage,
    /// Examples and notes at the end of the first system message.
    NotesInSystem,
}

impl PromptLayout {
    /// Every layout, for help texts and errors.
    pub const ALL: [PromptLayout; 6] = [
        PromptLayout::Cached,
        PromptLayout::CachedExchanges,
        PromptLayout::Compact,
        PromptLayout::CompactHistory,
        PromptLayout::NotesBeforeMessage,
        PromptLayout::NotesInSystem,
    ];

    /// The name the command line and the run files use.
    pub fn as_str(self) -> &'static str {
        match self {
            PromptLayout::Cached => "cached",
            PromptLayout::CachedExchanges => "cached-exchanges",
            PromptLayout::Compact => "compact",
            PromptLayout::CompactHistory => "compact-history",
            PromptLayout::NotesBeforeMessage => "notes-before-message",
            PromptLayout::NotesInSystem => "notes-in-system",
        }
    }

    /// Whether the persona's examples are fixed per stage (in the cached prefix) rather than
    /// chosen for each message.
    pub fn examples_per_stage(self) -> bool {
        matches!(
            self,
            PromptLayout::Cached
                | PromptLayout::CachedExchanges
                | PromptLayout::Compact
                | PromptLayout::CompactHistory
        )
    }

    /// Whether each turn's note comes after its message, so that everything before the message
    /// is the same from one turn to the next (and can be read ahead of it).
    pub fn note_follows_message(self) -> bool {
        matches!(
            self,
            PromptLayout::Cached
                | PromptLayout::CachedExchanges
                | PromptLayout::Compact
                | PromptLayout::CompactHistory
        )
    }

    /// Whether each turn's note stays in the history after its message.
    pub fn keeps_notes(self) -> bool {
        self == PromptLayout::CompactHistory
    }
}

named!(PromptLayout, "prompt layout");

/// How the standing note (and a turn's "hold" note) asks the persona to carry the
/// conversation. The words steer a small model more than their length suggests, so they are
/// one of the things `rapport eval optimize` tries; `Curious` is the wording every persona
/// had before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotePhrasing {
    /// "Keep the conversation going with genuine curiosity about them."
    #[default]
    Curious,
    /// Answer what they said or asked first, then ask one thing back (aimed at questions left
    /// unanswered).
    AnswerFirst,
    /// Talk as a friend would, never as a helper; share something of your own before asking
    /// (aimed at help-desk replies).
    Friend,
}

impl NotePhrasing {
    /// Every phrasing, for help texts, errors and the optimiser's search.
    pub const ALL: [NotePhrasing; 3] =
        [NotePhrasing::Curious, NotePhrasing::AnswerFirst, NotePhrasing::Friend];

    /// The name the files, the templates (`phrasing`) and the command line use.
    pub fn as_str(self) -> &'static str {
        match self {
            NotePhrasing::Curious => "curious",
            NotePhrasing::AnswerFirst => "answer-first",
            NotePhrasing::Friend => "friend",
        }
    }
}

named!(NotePhrasing, "note phrasing");

/// Most examples a stage may show: more than any persona has, few enough that a typo (800)
/// is caught rather than silently meaning "all".
pub const MAX_STAGE_EXAMPLES: usize = 32;

/// A persona's own prompt choices, where they differ from the server's: its `[prompt]` table,
/// or the file `<id>.prompt.toml` beside it that `rapport eval optimize` writes (one or the
/// other; [`crate::persona::Persona::load`] refuses both). Whatever is absent follows the
/// server's settings, so an empty tuning changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTuning {
    /// Where the notes and the examples go, instead of the server's `--layout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<PromptLayout>,
    /// The persona's examples the prompt may show, named by their `user` line, in the order
    /// to show them; every example, in the file's order, when absent. Named by text rather
    /// than by position so that a stale file (the persona's examples edited since) is refused
    /// at load instead of silently showing other examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples: Option<Vec<String>>,
    /// At most this many examples per stage (the layouts that fix them per stage), instead of
    /// the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_examples: Option<usize>,
    /// How the notes ask her to carry the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phrasing: Option<NotePhrasing>,
}

impl PromptTuning {
    /// Whether it changes nothing.
    pub fn is_default(&self) -> bool {
        self == &PromptTuning::default()
    }

    /// One line for logs and reports: what it sets, e.g. `layout=compact examples=3
    /// stage_examples=4 phrasing=friend`, or `as the server` when nothing.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = self.layout {
            parts.push(format!("layout={l}"));
        }
        if let Some(e) = &self.examples {
            parts.push(format!("examples={}", e.len()));
        }
        if let Some(k) = self.stage_examples {
            parts.push(format!("stage_examples={k}"));
        }
        if let Some(p) = self.phrasing {
            parts.push(format!("phrasing={p}"));
        }
        if parts.is_empty() {
            "as the server".into()
        } else {
            parts.join(" ")
        }
    }
}
