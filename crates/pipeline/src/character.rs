//! Step 6, on the way out: does the draft still sound like the persona, in the conversation?
//!
//! What a small model does when it loses the thread, seen in real replies of the default model
//! to the wedding host's guests: it claims another identity ("I'm Camille, Margot's older
//! sister"), narrates itself or steps outside the scene ("As Margot, running a weekend like this
//! can be quite challenging"), talks like a help desk ("I'm here to help you out", "Thank you
//! for sharing your experience"), and answers something other than what it was asked. Each is a
//! [`GuardHit`]; the engine writes the draft again with a note that names it.
//!
//! Identity and narration are *hard*: a reply that still has them after the second draft is
//! replaced by the fallback line, like a leak. Assistant-speak and an unanswered question are
//! *soft*: a reply that still has them is kept (the least bad draft), since a fallback line
//! answers nothing either; the trace says so.
//!
//! Every check is lexical first. Assistant-speak is also semantic when sentence vectors are at
//! hand: each sentence of the reply against example service sentences, at a threshold chosen
//! on the training split of `datasets/guards/character.jsonl` and reported on its held-out split
//! (`crates/pipeline/tests/guards.rs`). Whether the reply answers the user's question reuses
//! [`crate::listening::answers`], which was tuned on real question → answer pairs.

use std::sync::OnceLock;

use rapport_nlu::{cosine, SentenceEncoder};
use regex::Regex;

use crate::cleanup::split_sentences;
use crate::guards::GuardHit;
use crate::listening::{answers, question_sentences, KeptVector};
use crate::PipelineError;

/// Similarity of a reply's sentence to a service sentence at or above which it is
/// assistant-speak (chosen on the training split of `datasets/guards/character.jsonl`).
pub const SERVICE_SIMILARITY: f32 = 0.5;

/// How help desks talk; each reply sentence is compared with these when vectors are available.
const SERVICE_EXAMPLES: [&str; 12] = [
    "I'm here to help you with anything you need.",
    "Is there anything else I can help you with?",
    "Thank you for sharing that with me.",
    "Please let me know if you have any other questions.",
    "I hope this information helps you.",
    "I would be happy to assist you with that.",
    "Your feelings are completely valid.",
    "It's important to take care of yourself during this time.",
    "Here are some tips that may help you.",
    "My goal is to make your experience as pleasant as possible.",
    "Don't hesitate to reach out if you need support.",
    "I appreciate you bringing this to my attention.",
];

/// Words that follow "I'm" with a capital and are not names.
const NOT_NAMES: [&str; 40] = [
    "English",
    "British",
    "French",
    "Scottish",
    "Irish",
    "Welsh",
    "American",
    "Canadian",
    "Australian",
    "German",
    "Italian",
    "Spanish",
    "Dutch",
    "Belgian",
    "Swiss",
    "Polish",
    "Greek",
    "Indian",
    "Chinese",
    "Japanese",
    "Korean",
    "Mexican",
    "Brazilian",
    "Quebecois",
    "Québécoise",
    "Catholic",
    "Christian",
    "Jewish",
    "Muslim",
    "Buddhist",
    "Hindu",
    "Vegan",
    "Vegetarian",
    "Libra",
    "Leo",
    "Gemini",
    "Virgo",
    "Aries",
    "Taurus",
    "Scorpio",
];

/// The user's direct question this turn, which the reply should take up.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The question sentence.
    pub question: String,
    /// Its vector, when an encoder is at hand.
    pub vector: Option<KeptVector>,
}

impl Asked {
    /// The last question sentence of the user's message, if it has one worth answering (at
    /// least two words: "?" and "Really?" ask for nothing in particular).
    pub fn from_message(message: &str, encoder: Option<&SentenceEncoder>) -> Option<Self> {
        let question = question_sentences(message)
            .into_iter()
            .rev()
            .find(|q| rapport_core::text_stats::words(q).len() >= 2)?;
        let vector = encoder.and_then(|e| e.encode(&question).ok()).map(|v| KeptVector::new(&v.0));
        Some(Self { question, vector })
    }
}

/// The character checks of one persona.
pub struct CharacterGuard {
    name: String,
    narration: Regex,
    service_vectors: Vec<(Vec<f32>, &'static str)>,
}

struct Rules {
    identity: Regex,
    fourth_wall: Regex,
    service: Regex,
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| Rules {
        // The name keeps its capital (the prefix is case-blind): "I'm sorry" is not a name.
        identity: Regex::new(
            r"(?:\b(?i:my name(?:'s| is)|call me)\s+|(?:^|[^\p{L}])(?i:i'?m|i am)\s+)(?P<name>\p{Lu}\p{Ll}[\p{L}'-]*)",
        )
        .expect("identity pattern compiles"),
        fourth_wall: Regex::new(
            r"(?i)\b(?:this|our) (?:role-?play|simulation|practice session|scenario|chat session)\b|\bmy (?:character|persona)\b|\bin character\b|\bthe user\b|\b(?:i'?m|i am) (?:playing|role-?playing) (?:the role|a character|a role)\b",
        )
        .expect("fourth-wall pattern compiles"),
        service: Regex::new(
            r"(?i)\b(?:i'?m|i am) (?:always |just )?here (?:to|for) (?:help|assist|support)|\bhere to help\b|\bhow (?:can|may|could) i (?:help|assist)\b|\banything (?:else )?i (?:can|could) (?:help|do|assist)\b|\bfeel free to\b|\b(?:don'?t|do not) hesitate\b|\bthank(?:s| you) for (?:sharing|reaching out|your (?:question|message|patience))\b|\bi hope (?:this|that) helps\b|\blet me know (?:if|how) (?:you|i|there)\b|\b(?:great|excellent) question\b|\b(?:i'?d|i would) be (?:happy|glad) to (?:help|assist|provide)\b|\bhappy to (?:help|assist)\b|\bassist(?:ance)?\b|\byour (?:feelings|concerns) are valid\b|\bit'?s (?:important|essential) to (?:remember|note|keep in mind)\b|\bit(?:'s| is) (?:completely |perfectly |totally )?(?:normal|understandable|natural) to feel\b|\bi(?:'ll| will) do my best to help\b|\b(?:my|our) (?:top )?priority\b|\bhere (?:are|is) (?:a few|some) (?:tips|ways|suggestions|steps)\b|\bi appreciate you (?:sharing|bringing|reaching)\b|\bprovide you with\b|\bif you have any (?:other |more |further )?(?:questions|concerns)\b",
        )
        .expect("service pattern compiles"),
    })
}

impl CharacterGuard {
    /// The checks for the persona called `name`; with an encoder, the service examples are
    /// embedded for the semantic assistant-speak check.
    pub fn new(name: &str, encoder: Option<&SentenceEncoder>) -> Result<Self, PipelineError> {
        let escaped = regex::escape(name);
        // "As Margot, …", "(as Margot)", "Margot smiles": the model speaking about her, not as her.
        let narration = Regex::new(&format!(
            r"(?i)(?:^|[.!?(\n]\s*|\bspeaking )as {escaped}\b|\b{escaped} (?:smiles|laughs|grins|nods|says|replies|thinks|sighs|winks|leans|chuckles|giggles|responds|answers)\b"
        ))
        .map_err(|e| PipelineError::InvalidPersona(format!("the name {name:?} in a pattern: {e}")))?;
        let service_vectors = match encoder {
            Some(enc) => enc
                .encode_batch(&SERVICE_EXAMPLES)?
                .into_iter()
                .map(|e| e.0)
                .zip(SERVICE_EXAMPLES)
                .collect(),
            None => Vec::new(),
        };
        Ok(Self { name: name.to_string(), narration, service_vectors })
    }

    /// The hard checks, lexical only: cheap enough to run on every piece of a streaming draft
    /// so that "I'm Camille" stops it before anyone sees it.
    pub fn check_partial(&self, text: &str) -> Vec<GuardHit> {
        let mut hits = Vec::new();
        if let Some(claimed) = self.other_identity(text) {
            hits.push(GuardHit::OtherIdentity { evidence: claimed });
        }
        if let Some(m) = self.narration.find(text).or_else(|| rules().fourth_wall.find(text)) {
            hits.push(GuardHit::Narration {
                evidence: m.as_str().trim_start_matches(|c: char| !c.is_alphanumeric()).into(),
            });
        }
        hits
    }

    /// Every check on a finished draft: the hard ones, assistant-speak (with `encoder`, also by
    /// similarity of each sentence), and whether the user's question was taken up.
    pub fn check(
        &self,
        reply: &str,
        encoder: Option<&SentenceEncoder>,
        reply_vector: Option<&[f32]>,
        asked: Option<&Asked>,
    ) -> Vec<GuardHit> {
        let mut hits = self.check_partial(reply);
        if let Some(evidence) = self.assistant_speak(reply, encoder) {
            hits.push(GuardHit::AssistantSpeak { evidence });
        }
        if let Some(asked) = asked {
            if !takes_up(reply, asked, reply_vector) {
                hits.push(GuardHit::IgnoredQuestion { question: asked.question.clone() });
            }
        }
        hits
    }

    fn other_identity(&self, text: &str) -> Option<String> {
        rules().identity.captures_iter(text).find_map(|c| {
            let name = c.name("name")?.as_str();
            let own = name.eq_ignore_ascii_case(&self.name)
                || self.name.split_whitespace().any(|part| part.eq_ignore_ascii_case(name));
            (!own && !NOT_NAMES.contains(&name)).then(|| c[0].trim().to_string())
        })
    }

    fn assistant_speak(&self, reply: &str, encoder: Option<&SentenceEncoder>) -> Option<String> {
        if let Some(m) = rules().service.find(reply) {
            return Some(format!("'{}'", m.as_str()));
        }
        let (score, sentence, like) = self.service_likeness(reply, encoder?)?;
        (score >= SERVICE_SIMILARITY)
            .then(|| format!("\"{sentence}\" is {score:.2} like \"{like}\""))
    }

    /// The reply's sentence most like a service sentence: its similarity, the sentence and the
    /// service sentence (public for tuning [`SERVICE_SIMILARITY`]).
    pub fn service_likeness(
        &self,
        reply: &str,
        encoder: &SentenceEncoder,
    ) -> Option<(f32, String, &'static str)> {
        let sentences = sentences(reply);
        sentences
            .iter()
            .zip(self.each_sentence_likeness(&sentences, encoder)?)
            .map(|(s, (score, like))| (score, s.to_string(), like))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// For each sentence, its greatest similarity to a service sentence and that sentence;
    /// `None` without service vectors or when encoding fails.
    fn each_sentence_likeness(
        &self,
        sentences: &[&str],
        encoder: &SentenceEncoder,
    ) -> Option<Vec<(f32, &'static str)>> {
        if self.service_vectors.is_empty() {
            return None;
        }
        let vectors = encoder.encode_batch(sentences).ok()?;
        Some(
            vectors
                .iter()
                .map(|v| {
                    self.service_vectors
                        .iter()
                        .map(|(e, ex)| (cosine(&v.0, e), *ex))
                        .max_by(|a, b| a.0.total_cmp(&b.0))
                        .expect("service vectors are not empty")
                })
                .collect(),
        )
    }

    /// The reply without its help-desk sentences, when what is left is still a reply: at least
    /// one sentence of three words or more, and nothing else changed. Last session's batch found
    /// that most help-desk drafts that stayed help-desk after a second draft had a sentence worth
    /// keeping ("Oh, a school trip! Let me know if you need anything." keeps its first half), so
    /// cutting costs nothing where a second draft costs a whole generation. Sentences are the
    /// pipeline's, cut out of the original text, so what remains is the model's own words.
    pub fn without_service(
        &self,
        reply: &str,
        encoder: Option<&SentenceEncoder>,
    ) -> Option<String> {
        let all = sentences(reply);
        let likeness = match encoder {
            Some(enc) if !self.service_vectors.is_empty() => {
                Some(self.each_sentence_likeness(&all, enc)?)
            }
            _ => None,
        };
        let service: Vec<bool> = all
            .iter()
            .enumerate()
            .map(|(i, s)| {
                rules().service.is_match(s)
                    || likeness.as_ref().is_some_and(|l| l[i].0 >= SERVICE_SIMILARITY)
            })
            .collect();
        if !service.contains(&true) {
            return None;
        }
        let kept: Vec<&str> =
            all.iter().zip(&service).filter(|(_, &cut)| !cut).map(|(s, _)| *s).collect();
        let words = |s: &str| s.split_whitespace().count();
        kept.iter().any(|s| words(s) >= 3).then(|| kept.join(" "))
    }

    /// Whether the lexical service phrases match (public for measuring the two halves apart).
    pub fn service_phrase(reply: &str) -> Option<&str> {
        rules().service.find(reply).map(|m| m.as_str())
    }
}

/// Whether the reply takes up the question: the closeness decision's own test of an answer
/// (shared word family, yes/no to a yes/no question, or a similar meaning), or, for a question
/// about her ("how are you?", "what about you?"), a reply that talks about herself.
pub fn takes_up(reply: &str, asked: &Asked, reply_vector: Option<&[f32]>) -> bool {
    if answers(reply, &asked.question, reply_vector, asked.vector.as_ref()).is_some() {
        return true;
    }
    let about_her = rapport_core::text_stats::words(&asked.question)
        .iter()
        .any(|w| matches!(w.as_str(), "you" | "your" | "yours" | "yourself" | "you're" | "u"));
    // The opening two sentences: a greeting ("Hey there!") may come before the answer.
    let opening = sentences(reply).into_iter().take(2).collect::<Vec<_>>().join(" ");
    about_her
        && rapport_core::text_stats::words(&opening).iter().any(|w| {
            matches!(w.as_str(), "i" | "i'm" | "me" | "my" | "i've" | "i'd" | "mine" | "myself")
        })
}

/// A draft that says the person's own name as the persona's, when they asked what their name
/// is ("What's my name?" → "I'm Tom!"), with the pronoun put right ("You're Tom!"); `None` when
/// it has no such slip. The default model makes this slip on about a third of name questions,
/// and written again it most often makes it again, so the person got the fallback line instead
/// of their name (docs/eval/partner-quality.md). Only the name they told is put right, never
/// another: any other name is still another identity. `their_name` is its words, lower case.
pub fn their_name_put_right(text: &str, their_name: &[String]) -> Option<String> {
    static CLAIM: OnceLock<Regex> = OnceLock::new();
    let claim = CLAIM.get_or_init(|| {
        Regex::new(r"(?i)(?P<lead>^|[^\p{L}'])(?P<claim>i'?m|i am|my name's|my name is)(?P<gap>\s+)(?P<name>\p{L}[\p{L}'-]*)")
            .expect("claim pattern compiles")
    });
    if their_name.is_empty() {
        return None;
    }
    let mut changed = false;
    let put_right = claim.replace_all(text, |c: &regex::Captures| {
        let whole = c.get(0).expect("the whole match");
        if !their_name.contains(&c["name"].to_lowercase()) {
            return whole.as_str().to_string();
        }
        changed = true;
        let said = c["claim"].to_lowercase();
        let yours = match said.as_str() {
            "i am" => "you are",
            "my name's" => "your name's",
            "my name is" => "your name is",
            _ => "you're",
        };
        // "My" keeps the case she wrote it in (a persona may write in lower case); "I" is
        // always capital, so "you" is capitalised where a sentence starts.
        let capital = if said.starts_with("my") {
            c["claim"].starts_with('M')
        } else {
            let before = text[..c.get(2).expect("the claim").start()].trim_end();
            before.is_empty() || before.ends_with(['.', '!', '?', ':', '\n'])
        };
        let yours = if capital { format!("Y{}", &yours[1..]) } else { yours.to_string() };
        format!("{}{yours}{}{}", &c["lead"], &c["gap"], &c["name"])
    });
    changed.then(|| put_right.into_owned())
}

/// Lexical character breaks of a finished reply (an AI, another identity, narration,
/// assistant-speak), without vectors: what the evaluation counts in every reply, guard or no
/// guard, so a run with the guard and one without are measured alike.
pub fn lexical_breaks(reply: &str, persona_name: &str) -> Vec<GuardHit> {
    let Ok(guard) = CharacterGuard::new(persona_name, None) else { return Vec::new() };
    let mut hits = guard.check(reply, None, None, None);
    if let Some(evidence) = crate::guards::ai_break(reply) {
        hits.push(GuardHit::CharacterBreak { evidence: evidence.to_string() });
    }
    hits
}

/// The pipeline's sentences ([`split_sentences`]), trimmed, without pieces that hold no word.
fn sentences(text: &str) -> Vec<&str> {
    split_sentences(text)
        .into_iter()
        .map(str::trim)
        .filter(|s| s.chars().any(char::is_alphanumeric))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn their_own_name_said_as_hers_is_put_right_and_no_other_name_is() {
        let tom = vec!["tom".to_string()];
        for (draft, right) in [
            ("I'm Tom!", "You're Tom!"),
            (
                "Of course, I'm Tom. How could I forget?",
                "Of course, you're Tom. How could I forget?",
            ),
            ("Oh hi! I am Tom, remember?", "Oh hi! You are Tom, remember?"),
            ("hello there! my name is tom.", "hello there! your name is tom."),
            ("My name's Tom, silly.", "Your name's Tom, silly."),
        ] {
            assert_eq!(their_name_put_right(draft, &tom).as_deref(), Some(right), "{draft}");
        }
        for draft in [
            "I'm Camille!",
            "Hi Tom, I'm Margot.",
            "I'm tomorrow's host.",
            "You're Tom!",
            "I'm sorry, Tom.",
        ] {
            assert_eq!(their_name_put_right(draft, &tom), None, "{draft}");
        }
        assert_eq!(their_name_put_right("I'm Tom!", &[]), None, "no name asked, nothing put right");
    }

    use super::*;

    fn margot() -> CharacterGuard {
        CharacterGuard::new("Margot", None).unwrap()
    }

    fn codes(hits: &[GuardHit]) -> Vec<&'static str> {
        hits.iter().map(GuardHit::code).collect()
    }

    #[test]
    fn the_replies_from_the_issue_are_caught() {
        let g = margot();
        let hits = g.check(
            "Hey there! I'm Camille, Margot's older sister. I'm here to help you out.",
            None,
            None,
            None,
        );
        assert_eq!(codes(&hits), ["other_identity", "assistant_speak"], "{hits:?}");
        let hits = g.check(
            "As Margot, running a weekend like this can be quite challenging.",
            None,
            None,
            None,
        );
        assert_eq!(codes(&hits), ["narration"]);
        let hits = g.check("Thank you for sharing your experience.", None, None, None);
        assert_eq!(codes(&hits), ["assistant_speak"]);
    }

    #[test]
    fn help_desk_sentences_are_cut_when_a_reply_is_left() {
        let g = margot();
        assert_eq!(
            g.without_service(
                "Oh, a school trip! Sixty kids is brave. Let me know if you need anything.",
                None
            )
            .as_deref(),
            Some("Oh, a school trip! Sixty kids is brave.")
        );
        assert_eq!(
            g.without_service("Thank you for sharing. Feel free to ask me anything!", None),
            None,
            "nothing of her own is left"
        );
        assert_eq!(g.without_service("Yes! I'm here to help.", None), None, "too little is left");
        assert_eq!(g.without_service("I lost the dog twice today.", None), None, "nothing to cut");
    }

    #[test]
    fn her_own_name_and_ordinary_sentences_pass() {
        let g = margot();
        for ok in [
            "I'm Margot, the bride's sister. Did you find the place all right?",
            "I'm sorry, that sounds awful. I'm English on my mother's side, by the way.",
            "Ha, I'm so tired. Camille is somewhere with the florist.",
            "Thanks, I needed that laugh. You can help by finding Uncle Pierre.",
            "My sister Camille planned the menu; I planned the chaos.",
        ] {
            assert!(
                g.check(ok, None, None, None).is_empty(),
                "{ok}: {:?}",
                g.check(ok, None, None, None)
            );
        }
    }

    #[test]
    fn stepping_outside_the_scene_is_narration() {
        let g = margot();
        for bad in [
            "Margot smiles. Welcome!",
            "(as Margot) Oh, hello there.",
            "In this roleplay I play the host.",
            "I can stay in character for you.",
        ] {
            assert_eq!(codes(&g.check_partial(bad)), ["narration"], "{bad}");
        }
    }

    #[test]
    fn a_question_ignored_is_found_and_an_answer_is_not() {
        let g = margot();
        let asked = Asked::from_message(
            "Long drive, honestly. What's the hardest part of organising all this?",
            None,
        )
        .unwrap();
        assert_eq!(asked.question, "What's the hardest part of organising all this?");
        let ignored = g.check("Welcome! The bar opens at six.", None, None, Some(&asked));
        assert_eq!(codes(&ignored), ["ignored_question"]);
        let answered =
            g.check("The seating plan, easily. Organising aunts is war.", None, None, Some(&asked));
        assert!(answered.is_empty(), "{answered:?}");
        let how = Asked::from_message("How are you holding up?", None).unwrap();
        assert!(g.check("Running on coffee, but I'm okay!", None, None, Some(&how)).is_empty());
        assert!(Asked::from_message("Really?", None).is_none());
        assert!(Asked::from_message("I love this place.", None).is_none());
    }

    #[test]
    fn lexical_breaks_need_no_model() {
        assert_eq!(codes(&lexical_breaks("Hi, I'm Camille!", "Margot")), ["other_identity"]);
        assert!(lexical_breaks("Hi, I'm Margot!", "Margot").is_empty());
    }
}
