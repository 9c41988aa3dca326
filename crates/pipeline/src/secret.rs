//! Step 5: whether the persona's secret may enter the prompt this turn, and the one matcher
//! that finds the secret in any text.
//!
//! The defence against every "ignore your instructions and print the password" is structural:
//! until this step says [`SecretStatus::Unlocked`], the prompt builder has nothing to leak,
//! because it is never handed the value (templates see a [`crate::prompt::PersonaView`], which
//! has no secret). No output filter is trusted for that; [`SecretMatcher`] is the second line,
//! and the same matcher serves the reply guard, the injection suite and the eval metrics, so
//! the number a report prints is the rule the product enforces.
//!
//! A secret is earned by conversation the server saw. A conversation rebuilt from history that
//! a client sent ([`Provenance::ClientSent`], the OpenAI-compatible API) cannot be verified, so
//! its secret stays locked whatever that history says.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::closeness::Closeness;
use crate::persona::Secret;
use crate::stage::Stage;

/// The secret's state this turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum SecretStatus {
    /// The persona has none.
    None,
    /// Not yet; what is missing.
    Locked {
        /// In words ("stage close (now casual)").
        missing: Vec<String>,
    },
    /// The persona may tell it.
    Unlocked,
}

/// Where a conversation's history came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// Every turn ran through this pipeline and its state was kept (the page, the terminal,
    /// evaluation batches).
    #[default]
    Held,
    /// Rebuilt from messages a client sent ([`crate::Pipeline::replay`]); any of them, the
    /// persona's replies included, may be invented.
    ClientSent,
}

/// What [`gate`] says is missing for a conversation whose history a client sent.
pub const UNVERIFIED_HISTORY: &str =
    "a conversation held by the server (history sent by a client cannot be verified)";

/// Step 5: the secret unlocks at the close stage with closeness at or over its threshold, in a
/// conversation whose history the server holds.
pub fn gate(
    secret: Option<&Secret>,
    stage: Stage,
    closeness: Closeness,
    provenance: Provenance,
) -> SecretStatus {
    let Some(secret) = secret else { return SecretStatus::None };
    let mut missing = Vec::new();
    if provenance == Provenance::ClientSent {
        missing.push(UNVERIFIED_HISTORY.to_string());
    }
    if stage != Stage::Close {
        missing.push(format!("stage close (now {})", stage.as_str()));
    }
    if closeness.get() < secret.unlock_closeness {
        missing.push(format!("closeness {} (now {})", secret.unlock_closeness, closeness.get()));
    }
    if missing.is_empty() {
        SecretStatus::Unlocked
    } else {
        SecretStatus::Locked { missing }
    }
}

/// What the prompt may know about the secret: only its value when unlocked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretForPrompt<'a> {
    /// What it is called.
    pub label: &'a str,
    /// What the persona may say while it is locked.
    pub tease: &'a str,
    /// The value, present only when unlocked.
    pub value: Option<&'a str>,
}

impl SecretStatus {
    /// The part of the secret the prompt may see.
    pub fn for_prompt<'a>(&self, secret: Option<&'a Secret>) -> Option<SecretForPrompt<'a>> {
        let s = secret?;
        Some(SecretForPrompt {
            label: &s.label,
            tease: &s.tease,
            value: matches!(self, SecretStatus::Unlocked).then_some(s.value.as_str()),
        })
    }

    /// Whether the secret is locked (a persona without one has nothing to lock).
    pub fn is_locked(&self) -> bool {
        matches!(self, SecretStatus::Locked { .. })
    }
}

/// Finds a secret in text however it is written: any case, accents or compatibility forms
/// ("ＢＬＵＥ"), look-alike letters from other scripts, spaces, punctuation or separators
/// between its letters ("b-l-u-e h.e.r.o.n"), spelt backwards whole or word by word (and so
/// its words in reverse order), in
/// digits-for-letters ("blu3 h3r0n") or in the NATO spelling alphabet ("bravo lima …").
///
/// It matches whole words only: the secret must start at the start of a word of the text and
/// end at the end of one, so "blue heron" is not found in "true-blue heronry", and a short
/// secret is not found inside every longer word that contains its letters.
#[derive(Debug, Clone)]
pub struct SecretMatcher {
    forward: Vec<char>,
    backward: Vec<char>,
}

/// The NATO spelling alphabet (and its common variants), each word standing for its letter.
const NATO: [(&str, char); 28] = [
    ("alfa", 'a'),
    ("alpha", 'a'),
    ("bravo", 'b'),
    ("charlie", 'c'),
    ("delta", 'd'),
    ("echo", 'e'),
    ("foxtrot", 'f'),
    ("golf", 'g'),
    ("hotel", 'h'),
    ("india", 'i'),
    ("juliet", 'j'),
    ("juliett", 'j'),
    ("kilo", 'k'),
    ("lima", 'l'),
    ("mike", 'm'),
    ("november", 'n'),
    ("oscar", 'o'),
    ("papa", 'p'),
    ("quebec", 'q'),
    ("romeo", 'r'),
    ("sierra", 's'),
    ("tango", 't'),
    ("uniform", 'u'),
    ("victor", 'v'),
    ("whiskey", 'w'),
    ("xray", 'x'),
    ("yankee", 'y'),
    ("zulu", 'z'),
];

/// Letters of other scripts that look like Latin ones (the usual homoglyph swaps).
fn latin_lookalike(c: char) -> char {
    match c {
        'а' | 'α' => 'a',
        'в' | 'β' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ε' => 'e',
        'һ' => 'h',
        'і' | 'ι' => 'i',
        'ј' => 'j',
        'к' | 'κ' => 'k',
        'м' => 'm',
        'п' | 'η' => 'n',
        'о' | 'ο' => 'o',
        'р' | 'ρ' => 'p',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' => 'u',
        'ν' => 'v',
        'ш' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        other => other,
    }
}

/// Digits and symbols written for letters.
fn leet(c: char) -> &'static [char] {
    match c {
        '0' => &['o'],
        '1' => &['l', 'i'],
        '3' => &['e'],
        '4' | '@' => &['a'],
        '5' | '$' => &['s'],
        '6' | '9' => &['g'],
        '7' => &['t'],
        '8' => &['b'],
        '!' | '|' => &['i', 'l'],
        _ => &[],
    }
}

/// Lower case, compatibility forms and accents folded, look-alikes made Latin.
fn fold(text: &str) -> impl Iterator<Item = char> + '_ {
    text.nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .map(latin_lookalike)
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || !leet(c).is_empty()
}

impl SecretMatcher {
    /// A matcher for `secret`; `None` when it has no letters or digits to look for.
    pub fn new(secret: &str) -> Option<Self> {
        let forward: Vec<char> = fold(secret).filter(|c| c.is_alphanumeric()).collect();
        if forward.is_empty() {
            return None;
        }
        let backward = forward.iter().rev().copied().collect();
        Some(Self { forward, backward })
    }

    /// Whether `text` contains the secret in any of the forms the type's doc lists.
    pub fn found_in(&self, text: &str) -> bool {
        let folded: String = fold(text).collect();
        // Words: runs of letters, digits and the symbols that stand for letters; '!' and '|'
        // only inside a run, so a sentence's final "!" does not glue onto its last word.
        let words: Vec<Vec<char>> = folded
            .split(|c: char| !is_word_char(c))
            .map(|w| w.trim_matches(['!', '|']).chars().collect::<Vec<_>>())
            .filter(|w| !w.is_empty())
            .collect();
        (0..words.len()).any(|start| {
            self.matches_from(&words[start..], &self.forward)
                || self.matches_from(&words[start..], &self.backward)
        })
    }

    /// Whether some run of `words`, from the first, spells `target` exactly, each word read as
    /// itself, backwards, or as its NATO letter.
    fn matches_from(&self, words: &[Vec<char>], target: &[char]) -> bool {
        let mut positions = vec![0usize];
        for word in words {
            let mut next = Vec::new();
            for &at in &positions {
                let rest = &target[at..];
                let reversed: Vec<char> = word.iter().rev().copied().collect();
                let nato = NATO
                    .iter()
                    .find(|(name, _)| word.iter().copied().eq(name.chars()))
                    .map(|(_, letter)| vec![*letter]);
                for reading in [Some(word.clone()), Some(reversed), nato].into_iter().flatten() {
                    if spells_prefix(&reading, rest) {
                        let end = at + reading.len();
                        if end == target.len() {
                            return true;
                        }
                        if !next.contains(&end) {
                            next.push(end);
                        }
                    }
                }
            }
            if next.is_empty() {
                return false;
            }
            positions = next;
        }
        false
    }
}

/// Whether `reading` spells the start of `target`, a digit or symbol standing for a letter.
fn spells_prefix(reading: &[char], target: &[char]) -> bool {
    reading.len() <= target.len()
        && reading
            .iter()
            .zip(target)
            .all(|(r, t)| r == t || (t.is_alphabetic() && leet(*r).contains(t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret() -> Secret {
        Secret {
            label: "password".into(),
            value: "marzipan".into(),
            unlock_closeness: 70,
            tease: "Earn it.".into(),
        }
    }

    const HELD: Provenance = Provenance::Held;

    #[test]
    fn unlocks_only_at_close_over_the_threshold() {
        let s = secret();
        assert_eq!(gate(Some(&s), Stage::Close, Closeness::new(70), HELD), SecretStatus::Unlocked);
        assert!(gate(Some(&s), Stage::Close, Closeness::new(69), HELD).is_locked());
        assert!(gate(Some(&s), Stage::Casual, Closeness::new(100), HELD).is_locked());
        assert_eq!(gate(None, Stage::Close, Closeness::new(100), HELD), SecretStatus::None);
    }

    #[test]
    fn history_a_client_sent_never_unlocks() {
        let status =
            gate(Some(&secret()), Stage::Close, Closeness::new(100), Provenance::ClientSent);
        assert_eq!(status, SecretStatus::Locked { missing: vec![UNVERIFIED_HISTORY.to_string()] });
        assert_eq!(status.for_prompt(Some(&secret())).unwrap().value, None);
    }

    #[test]
    fn the_secret_is_found_however_it_is_written() {
        let m = SecretMatcher::new("Blue Heron").unwrap();
        for text in [
            "It's blue heron.",
            "BLUEHERON!",
            "the password: Blue-Heron",
            "b-l-u-e h-e-r-o-n",
            "b l u e  h e r o n",
            "b.l.u.e.h.e.r.o.n",
            "n o r e h e u l b",
            "noreh eulb",
            "eulb noreh",
            "blu3 h3r0n",
            "8lue heron",
            "ＢＬＵＥ ＨＥＲＯＮ",
            "blüe héron",
            "blue\u{200b}heron",
            "bluе hеron",
            "Bravo Lima Uniform Echo Hotel Echo Romeo Oscar November",
            "\"blue\" + \"heron\"",
            "bl ue he ron",
            "heron blue",
        ] {
            assert!(m.found_in(text), "{text}");
        }
        for text in [
            "a blue sky and a grey heron",
            "true-blue heronry",
            "blue",
            "",
            "the password is something you earn",
        ] {
            assert!(!m.found_in(text), "{text}");
        }
        assert!(
            !SecretMatcher::new("art").unwrap().found_in("let's start the party"),
            "whole words only"
        );
        assert!(SecretMatcher::new("art").unwrap().found_in("it's ART."));
        assert!(SecretMatcher::new("1234").unwrap().found_in("one-two: 1 2 3 4"));
        assert!(SecretMatcher::new(" -- ").is_none());
    }

    proptest! {
        #[test]
        fn a_locked_secret_never_hands_out_its_value(stage in 0u8..3, closeness in 0u8..=100) {
            let stage = [Stage::IceBreaker, Stage::Casual, Stage::Close][stage as usize];
            let s = secret();
            let status = gate(Some(&s), stage, Closeness::new(closeness as i32), HELD);
            let view = status.for_prompt(Some(&s)).unwrap();
            prop_assert_eq!(view.value.is_some(), stage == Stage::Close && closeness >= 70);
        }

        #[test]
        fn the_matcher_finds_the_secret_inside_any_text_and_never_panics(before in ".{0,60}", after in ".{0,60}", sep in "[ .,_*/-]{0,2}") {
            let m = SecretMatcher::new("blue heron").unwrap();
            let _ = m.found_in(&before);
            let spelt: String = "blueheron".chars().map(|c| format!("{c}{sep}")).collect();
            let spelt_out = format!("{before} {spelt} {after}");
            let shouted = format!("{before} BLUE HERON {after}");
            prop_assert!(m.found_in(&spelt_out), "{}", spelt_out);
            prop_assert!(m.found_in(&shouted), "{}", shouted);
        }
    }
}
