//! Who the model plays: the persona file format (TOML in `datasets/personas/`) and its checks.
//!
//! A persona is data, not code. Everything the pipeline treats differently per persona (how
//! fast closeness may grow, which topics are off limits, the secret and when it unlocks) is a
//! field here, so a new persona never needs a new branch in the engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout::{PromptTuning, MAX_STAGE_EXAMPLES};
use crate::PipelineError;

/// Where the relationship is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Getting to know each other: light, curious, polite.
    #[default]
    IceBreaker,
    /// Relaxed talk with some personal sharing.
    Casual,
    /// Warm and personal; the only stage where a secret can unlock.
    Close,
}

/// One persona, as written in its TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    /// Stable identifier: the file name without `.toml`; what `--persona` and the API's `model`
    /// name. Filled from the file name when absent.
    #[serde(default)]
    pub id: String,
    /// The name the persona goes by.
    pub name: String,
    /// Who they are, in a few sentences (third person).
    pub bio: String,
    /// Things the persona knows about itself and may share.
    #[serde(default)]
    pub facts: Vec<String>,
    /// How the persona talks.
    #[serde(default)]
    pub voice: Vec<String>,
    /// Ways to open a conversation; the first is the default.
    pub greetings: Vec<String>,
    /// Examples of the persona's voice, the few-shot source.
    #[serde(default)]
    pub examples: Vec<ExampleExchange>,
    /// Topics the persona must not engage in.
    #[serde(default)]
    pub forbidden_topics: Vec<ForbiddenTopic>,
    /// How fast closeness may grow.
    #[serde(default)]
    pub pacing: Pacing,
    /// What each signal is worth to the closeness decision.
    #[serde(default, skip_serializing_if = "Weights::is_default")]
    pub weights: Weights,
    /// What the persona guards, if anything.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// In-character lines for when no good reply could be generated.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Longest reply, in sentences; longer replies are cut at a sentence end.
    #[serde(default = "default_max_sentences")]
    pub max_sentences: usize,
    /// What a Character Card carried that Rapport does not use, kept for export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<CardMeta>,
    /// The persona's own prompt choices (layout, which examples, the notes' wording), where
    /// they differ from the server's: a `[prompt]` table here, or `<id>.prompt.toml` beside
    /// the file as `rapport eval optimize` writes it.
    #[serde(default, skip_serializing_if = "PromptTuning::is_default")]
    pub prompt: PromptTuning,
}

/// The file beside a persona's that holds its prompt tuning (`wedding-host.prompt.toml` for
/// `wedding-host.toml`).
pub fn tuning_path(persona_path: &Path) -> PathBuf {
    let stem = persona_path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    persona_path.with_file_name(format!("{stem}.prompt.toml"))
}

/// Whether `path` is a persona's tuning file rather than a persona.
pub fn is_tuning_file(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".prompt.toml"))
}

fn default_max_sentences() -> usize {
    4
}

/// One example exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleExchange {
    /// What someone said.
    pub user: String,
    /// How the persona answered.
    pub reply: String,
    /// The earliest stage this example suits (an intimate reply is no example for a first hello).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
}

/// A topic the persona stays away from, in the user's message and in its own replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForbiddenTopic {
    /// Short name, shown in traces ("meeting in person").
    pub name: String,
    /// Sentences that are about the topic; a message close to one of them in meaning is on it.
    pub examples: Vec<String>,
    /// Words or phrases that put a message on the topic by themselves (case-insensitive, whole
    /// words).
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Words or phrases that are allowed even though they look like the topic (the one social
    /// platform a creator may mention).
    #[serde(default)]
    pub exceptions: Vec<String>,
    /// How to steer away, in the persona's voice; told to the model when the user raises it.
    pub redirect: String,
}

/// How fast closeness grows, and where the stages begin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pacing {
    /// Multiplies every gain in closeness; below 1 a persona warms slowly.
    pub warmth: f32,
    /// Most closeness one turn can add, however warm the message.
    pub max_gain_per_turn: u8,
    /// Closeness at which the ice-breaker gives way to casual talk.
    pub casual_at: u8,
    /// Closeness at which casual talk can become close.
    pub close_at: u8,
    /// Fewest user turns before casual talk.
    pub min_turns_casual: u32,
    /// Fewest user turns before the close stage.
    pub min_turns_close: u32,
    /// Self-disclosures each side must have made before the close stage.
    pub min_mutual_disclosures: u32,
    /// Messages that took up what the persona said before the close stage: closeness is earned
    /// by listening, and a script that never does cannot get there however warm its words.
    pub min_listening_turns: u32,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            warmth: 1.0,
            max_gain_per_turn: 8,
            casual_at: 15,
            close_at: 55,
            min_turns_casual: 2,
            min_turns_close: 6,
            min_mutual_disclosures: 2,
            min_listening_turns: 3,
        }
    }
}

/// What each signal is worth to the closeness decision, in points before the persona's warmth
/// and the per-turn cap. Gains are zero or more, losses zero or less.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// A message of six words or more.
    pub engaged: f32,
    /// A full self-disclosure (partial ones earn their share).
    pub self_disclosure: f32,
    /// A question about the persona.
    pub curiosity: f32,
    /// An answer to the persona's question.
    pub reciprocity: f32,
    /// Taking up what the persona said.
    pub listening: f32,
    /// A kind word about the persona.
    pub compliment: f32,
    /// A happy message, times its valence.
    pub positive_mood: f32,
    /// A mood that keeps sinking.
    pub sinking_mood: f32,
    /// An insult.
    pub rudeness: f32,
    /// Pushing for physical intimacy.
    pub physical_push: f32,
    /// Pushing for romance before the close stage.
    pub romantic_push: f32,
    /// Each repeat of an earlier message from the second in a row.
    pub repeating: f32,
    /// Asking for the secret again while it is locked.
    pub secret_push: f32,
    /// Share of the gains a message keeps when it neither takes up what the persona said nor
    /// answers her question, 0–1.
    pub unheard_share: f32,
}

impl Weights {
    /// The shipped weights.
    pub const DEFAULT: Weights = Weights {
        engaged: 1.0,
        self_disclosure: 5.0,
        curiosity: 2.0,
        reciprocity: 2.0,
        listening: 3.0,
        compliment: 2.0,
        positive_mood: 3.0,
        sinking_mood: -2.0,
        rudeness: -15.0,
        physical_push: -10.0,
        romantic_push: -5.0,
        repeating: -2.0,
        secret_push: -3.0,
        unheard_share: 0.5,
    };

    fn is_default(&self) -> bool {
        *self == Self::DEFAULT
    }

    /// The first weight with the wrong sign or out of range, named.
    fn invalid(&self) -> Option<String> {
        let gains = [
            ("engaged", self.engaged),
            ("self_disclosure", self.self_disclosure),
            ("curiosity", self.curiosity),
            ("reciprocity", self.reciprocity),
            ("listening", self.listening),
            ("compliment", self.compliment),
            ("positive_mood", self.positive_mood),
        ];
        let losses = [
            ("sinking_mood", self.sinking_mood),
            ("rudeness", self.rudeness),
            ("physical_push", self.physical_push),
            ("romantic_push", self.romantic_push),
            ("repeating", self.repeating),
            ("secret_push", self.secret_push),
        ];
        if let Some((name, v)) =
            gains.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0 && *v <= 100.0))
        {
            return Some(format!("weights.{name} {v} must be a gain in [0, 100]"));
        }
        if let Some((name, v)) =
            losses.iter().find(|(_, v)| !(v.is_finite() && *v <= 0.0 && *v >= -100.0))
        {
            return Some(format!("weights.{name} {v} must be a loss in [-100, 0]"));
        }
        (!(0.0..=1.0).contains(&self.unheard_share))
            .then(|| format!("weights.unheard_share {} must be in [0, 1]", self.unheard_share))
    }
}

impl Default for Weights {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Something the persona knows and shares only with someone it truly likes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// What it is called in conversation ("the password").
    pub label: String,
    /// The secret itself. Never in a prompt before it unlocks.
    pub value: String,
    /// Closeness needed (at the close stage) to unlock it.
    pub unlock_closeness: u8,
    /// What the persona may say about it while it is locked (it exists, it must be earned).
    pub tease: String,
}

/// Character Card fields with no place in a persona, carried for a faithful export.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardMeta {
    /// `creator`.
    #[serde(default)]
    pub creator: String,
    /// `creator_notes`.
    #[serde(default)]
    pub creator_notes: String,
    /// `character_version`.
    #[serde(default)]
    pub character_version: String,
    /// `tags`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// `system_prompt` (the card author's; Rapport's templates take precedence).
    #[serde(default)]
    pub system_prompt: String,
    /// `post_history_instructions`.
    #[serde(default)]
    pub post_history_instructions: String,
    /// `scenario`.
    #[serde(default)]
    pub scenario: String,
    /// `extensions` and other unknown fields, as JSON text: TOML has no null, JSON does, and an
    /// extension written by another tool must come back out byte-for-byte equivalent.
    #[serde(default)]
    pub extra_json: String,
}

impl Persona {
    /// Parses and checks a persona from TOML text; `id` is used when the file sets none.
    pub fn from_toml(text: &str, id: &str) -> Result<Self, PipelineError> {
        let mut persona: Persona =
            toml::from_str(text).map_err(|e| PipelineError::InvalidPersona(e.to_string()))?;
        if persona.id.is_empty() {
            persona.id = id.to_string();
        }
        persona.validate()?;
        Ok(persona)
    }

    /// Reads and checks a persona file, with its tuning file (`<id>.prompt.toml`) when one is
    /// beside it. A persona whose file has a `[prompt]` table and a tuning file as well is
    /// refused: which of the two holds would be a guess.
    pub fn load(path: &Path) -> Result<Self, PipelineError> {
        let err = |message: String| PipelineError::Persona { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let id = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let mut persona = Self::from_toml(&text, id).map_err(|e| match e {
            PipelineError::InvalidPersona(m) => err(m),
            other => other,
        })?;
        let tuning = tuning_path(path);
        if tuning.is_file() {
            let terr = |message: String| PipelineError::Persona { path: tuning.clone(), message };
            if !persona.prompt.is_default() {
                return Err(terr(format!(
                    "{} has a [prompt] table too; keep one of the two",
                    path.display()
                )));
            }
            let text = std::fs::read_to_string(&tuning).map_err(|e| terr(e.to_string()))?;
            persona.prompt = toml::from_str(&text).map_err(|e| terr(e.to_string()))?;
            persona.validate().map_err(|e| match e {
                PipelineError::InvalidPersona(m) => terr(m),
                other => other,
            })?;
        }
        Ok(persona)
    }

    /// The persona as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a persona serialises to TOML")
    }

    /// Checks what the engine relies on. The secret check matters most: a secret that also
    /// appears in the bio, a fact or an example would reach the prompt while locked.
    pub fn validate(&self) -> Result<(), PipelineError> {
        let bad = |m: String| {
            Err(PipelineError::InvalidPersona(format!(
                "{}: {m}",
                if self.id.is_empty() { &self.name } else { &self.id }
            )))
        };
        if !valid_id(&self.id) {
            return bad(format!(
                "id '{}' must be 1-64 characters of a-z, 0-9, '-' or '_'",
                self.id
            ));
        }
        if self.name.trim().is_empty() {
            return bad("name is empty".into());
        }
        if self.greetings.iter().all(|g| g.trim().is_empty()) {
            return bad("needs at least one greeting".into());
        }
        if self.max_sentences == 0 {
            return bad("max_sentences must be at least 1".into());
        }
        let p = &self.pacing;
        if !(p.warmth.is_finite() && p.warmth > 0.0 && p.warmth <= 5.0) {
            return bad(format!("pacing.warmth {} must be in (0, 5]", p.warmth));
        }
        if !(p.casual_at < p.close_at && p.close_at <= 100) {
            return bad(format!(
                "pacing needs casual_at ({}) < close_at ({}) <= 100",
                p.casual_at, p.close_at
            ));
        }
        if p.max_gain_per_turn == 0 {
            return bad("pacing.max_gain_per_turn must be at least 1".into());
        }
        if let Some(m) = self.weights.invalid() {
            return bad(m);
        }
        for t in &self.forbidden_topics {
            if t.name.trim().is_empty()
                || t.examples.iter().all(|e| e.trim().is_empty())
                || t.redirect.trim().is_empty()
            {
                return bad(format!(
                    "forbidden topic '{}' needs a name, at least one example and a redirect",
                    t.name
                ));
            }
        }
        if let Some(s) = &self.secret {
            if s.value.trim().is_empty() || s.label.trim().is_empty() {
                return bad("secret needs a label and a value".into());
            }
            if s.unlock_closeness > 100 {
                return bad(format!("secret.unlock_closeness {} is over 100", s.unlock_closeness));
            }
            let needle = s.value.to_lowercase();
            if let Some(field) = self
                .public_texts()
                .find(|(_, text)| text.to_lowercase().contains(&needle))
                .map(|(f, _)| f)
            {
                return bad(format!(
                    "the secret's value appears in {field}; it would reach the prompt while locked"
                ));
            }
        }
        if let Some(k) = self.prompt.stage_examples {
            if !(1..=MAX_STAGE_EXAMPLES).contains(&k) {
                return bad(format!("prompt.stage_examples {k} must be 1 to {MAX_STAGE_EXAMPLES}"));
            }
        }
        if let Some(lines) = &self.prompt.examples {
            if lines.is_empty() {
                return bad("prompt.examples is empty; leave it out to show every example".into());
            }
            let mut seen = std::collections::BTreeSet::new();
            for line in lines {
                let matches = self.examples.iter().filter(|e| &e.user == line).count();
                if matches != 1 {
                    return bad(format!(
                        "prompt.examples names {line:?}, which {} of the persona's examples",
                        if matches == 0 { "is none" } else { "is more than one" }
                    ));
                }
                if !seen.insert(line) {
                    return bad(format!("prompt.examples names {line:?} twice"));
                }
            }
        }
        Ok(())
    }

    /// The persona's examples the prompt may show, by index, in the order to show them: those
    /// its tuning names, or all of them.
    pub fn example_order(&self) -> Vec<usize> {
        match &self.prompt.examples {
            Some(lines) => lines
                .iter()
                .filter_map(|line| self.examples.iter().position(|e| &e.user == line))
                .collect(),
            None => (0..self.examples.len()).collect(),
        }
    }

    /// Every text that may be placed in a prompt before the secret unlocks, with where it is.
    pub fn public_texts(&self) -> impl Iterator<Item = (&'static str, &str)> {
        std::iter::once(("name", self.name.as_str()))
            .chain(std::iter::once(("bio", self.bio.as_str())))
            .chain(self.facts.iter().map(|t| ("facts", t.as_str())))
            .chain(self.voice.iter().map(|t| ("voice", t.as_str())))
            .chain(self.greetings.iter().map(|t| ("greetings", t.as_str())))
            .chain(self.fallbacks.iter().map(|t| ("fallbacks", t.as_str())))
            .chain(
                self.examples
                    .iter()
                    .flat_map(|e| [("examples", e.user.as_str()), ("examples", e.reply.as_str())]),
            )
            .chain(self.forbidden_topics.iter().map(|t| ("forbidden_topics", t.redirect.as_str())))
            .chain(self.secret.iter().flat_map(|s| {
                [("secret.label", s.label.as_str()), ("secret.tease", s.tease.as_str())]
            }))
    }

    /// The greeting to open with.
    pub fn greeting(&self) -> &str {
        self.greetings.iter().find(|g| !g.trim().is_empty()).map(String::as_str).unwrap_or("Hi!")
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Turns any name into a persona id ("Dr. Ana Lima" → "dr-ana-lima").
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out: String = out.trim_end_matches('-').chars().take(64).collect();
    if out.is_empty() {
        "persona".into()
    } else {
        out
    }
}

/// The personas of a directory, by id.
#[derive(Debug, Clone, Default)]
pub struct PersonaLibrary {
    personas: BTreeMap<String, Persona>,
}

impl PersonaLibrary {
    /// Loads every `*.toml` in `dir` (each `<id>.prompt.toml` as its persona's tuning, not as
    /// a persona). One broken file fails the load: a persona silently missing from the picker
    /// is harder to notice than an error at startup.
    pub fn load_dir(dir: &Path) -> Result<Self, PipelineError> {
        let entries = std::fs::read_dir(dir).map_err(|e| PipelineError::Persona {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let (tunings, mut paths): (Vec<PathBuf>, Vec<PathBuf>) = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .partition(|p| is_tuning_file(p));
        // A tuning file with no persona beside it is a misspelt name or a deleted persona;
        // ignoring it would leave someone believing a persona runs tuned.
        if let Some(orphan) = tunings.iter().find(|t| {
            let name = t.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let stem = name.trim_end_matches(".prompt.toml");
            !paths.contains(&t.with_file_name(format!("{stem}.toml")))
        }) {
            return Err(PipelineError::Persona {
                path: orphan.clone(),
                message: "a prompt tuning with no persona file of the same name beside it".into(),
            });
        }
        paths.sort();
        let mut library = Self::default();
        for path in paths {
            let persona = Persona::load(&path)?;
            if library.personas.contains_key(&persona.id) {
                return Err(PipelineError::Persona {
                    path,
                    message: format!("a second persona with id '{}'", persona.id),
                });
            }
            library.personas.insert(persona.id.clone(), persona);
        }
        Ok(library)
    }

    /// Adds a persona (replacing one with the same id).
    pub fn insert(&mut self, persona: Persona) {
        self.personas.insert(persona.id.clone(), persona);
    }

    /// The persona with this id.
    pub fn get(&self, id: &str) -> Result<&Persona, PipelineError> {
        self.personas.get(id).ok_or_else(|| PipelineError::UnknownPersona {
            name: id.into(),
            known: self.ids().collect::<Vec<_>>().join(", "),
        })
    }

    /// All ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.personas.keys().map(String::as_str)
    }

    /// All personas, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Persona> {
        self.personas.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
name = "Ana"
bio = "Ana is a baker."
greetings = ["Hi!"]
"#;

    /// A tuning file beside a persona is read with it, and the library does not take it for a
    /// persona; a stale one (naming an example the persona no longer has), a broken one, or
    /// one beside a persona that sets `[prompt]` itself is refused with the file's path.
    #[test]
    fn a_tuning_file_beside_a_persona_is_its_tuning() {
        let dir = tempfile::tempdir().unwrap();
        let persona = format!("{MINIMAL}\n[[examples]]\nuser = \"Hello\"\nreply = \"Hi there!\"\n");
        std::fs::write(dir.path().join("ana.toml"), &persona).unwrap();
        let tuning = dir.path().join("ana.prompt.toml");
        std::fs::write(
            &tuning,
            "layout = \"cached-exchanges\"\nexamples = [\"Hello\"]\nstage_examples = 2\nphrasing = \"friend\"\n",
        )
        .unwrap();
        let library = PersonaLibrary::load_dir(dir.path()).unwrap();
        assert_eq!(library.ids().collect::<Vec<_>>(), ["ana"], "the tuning is not a persona");
        let ana = library.get("ana").unwrap();
        assert_eq!(ana.prompt.layout, Some(crate::layout::PromptLayout::CachedExchanges));
        assert_eq!(ana.prompt.phrasing, Some(crate::layout::NotePhrasing::Friend));
        assert_eq!(ana.prompt.stage_examples, Some(2));
        assert_eq!(ana.example_order(), [0]);
        // It survives the persona's own TOML (an export) and reads back the same.
        let again = Persona::from_toml(&ana.to_toml(), "ana").unwrap();
        assert_eq!(&again, ana);

        let refused = |text: &str| {
            std::fs::write(&tuning, text).unwrap();
            let err = Persona::load(&dir.path().join("ana.toml")).unwrap_err().to_string();
            assert!(err.contains("ana.prompt.toml"), "{err}");
            err
        };
        assert!(refused("examples = [\"Goodbye\"]\n").contains("Goodbye"));
        assert!(refused("layout = \"sideways\"\n").contains("sideways"));
        assert!(refused("temperature = 2.0\n").contains("temperature"));
        std::fs::write(&tuning, "stage_examples = 3\n").unwrap();
        std::fs::write(
            dir.path().join("ana.toml"),
            format!("{persona}\n[prompt]\nstage_examples = 2\n"),
        )
        .unwrap();
        let err = Persona::load(&dir.path().join("ana.toml")).unwrap_err().to_string();
        assert!(err.contains("keep one of the two"), "{err}");

        // A tuning whose persona is not there (a misspelt name) stops the library's load.
        std::fs::write(dir.path().join("ana.toml"), &persona).unwrap();
        std::fs::write(dir.path().join("anna.prompt.toml"), "stage_examples = 3\n").unwrap();
        let err = PersonaLibrary::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("anna.prompt.toml") && err.contains("no persona file"), "{err}");
    }

    #[test]
    fn a_minimal_persona_gets_defaults() {
        let p = Persona::from_toml(MINIMAL, "ana").unwrap();
        assert_eq!(p.id, "ana");
        assert_eq!(p.pacing, Pacing::default());
        assert_eq!(p.max_sentences, 4);
    }

    #[test]
    fn a_typo_in_a_field_name_is_an_error_that_names_it() {
        let err = Persona::from_toml(&format!("{MINIMAL}\ngreeting = \"x\""), "ana")
            .unwrap_err()
            .to_string();
        assert!(err.contains("greeting"), "{err}");
    }

    #[test]
    fn a_secret_that_appears_elsewhere_is_rejected() {
        let text = format!("{MINIMAL}\nfacts = [\"My wifi password is swordfish\"]\n[secret]\nlabel = \"password\"\nvalue = \"Swordfish\"\nunlock_closeness = 70\ntease = \"Earn it.\"\n");
        let err = Persona::from_toml(&text, "ana").unwrap_err().to_string();
        assert!(err.contains("facts"), "{err}");
    }

    #[test]
    fn weights_default_and_a_wrong_sign_is_named() {
        let p =
            Persona::from_toml(&format!("{MINIMAL}\n[weights]\nlistening = 4.5\n"), "ana").unwrap();
        assert_eq!(p.weights.listening, 4.5);
        assert_eq!(p.weights.rudeness, Weights::DEFAULT.rudeness);
        assert!(
            !Persona::from_toml(MINIMAL, "ana").unwrap().to_toml().contains("[weights]"),
            "defaults are not written out"
        );
        let err = Persona::from_toml(&format!("{MINIMAL}\n[weights]\nrudeness = 5.0\n"), "ana")
            .unwrap_err()
            .to_string();
        assert!(err.contains("weights.rudeness"), "{err}");
        let err =
            Persona::from_toml(&format!("{MINIMAL}\n[weights]\nunheard_share = 1.5\n"), "ana")
                .unwrap_err()
                .to_string();
        assert!(err.contains("unheard_share"), "{err}");
        assert!(
            Persona::from_toml(&format!("{MINIMAL}\n[weights]\nlistenning = 1.0\n"), "ana")
                .is_err(),
            "a typo is an error"
        );
    }

    #[test]
    fn pacing_must_be_ordered() {
        let text = format!("{MINIMAL}\n[pacing]\ncasual_at = 60\nclose_at = 40\n");
        assert!(Persona::from_toml(&text, "ana").is_err());
    }

    #[test]
    fn an_unknown_persona_names_the_known_ones() {
        let mut library = PersonaLibrary::default();
        library.insert(Persona::from_toml(MINIMAL, "ana").unwrap());
        let err = library.get("bob").unwrap_err().to_string();
        assert!(err.contains("'bob'") && err.contains("ana"), "{err}");
    }

    #[test]
    fn slugs_are_valid_ids() {
        assert_eq!(slug("Dr. Ana Lima"), "dr-ana-lima");
        assert_eq!(slug("!!!"), "persona");
        assert!(valid_id(&slug("Zoë & the 🐙")));
    }

    proptest::proptest! {
        // The persona file's fuzz target: a shipped file with bytes flipped or cut off, and
        // arbitrary text. A bad file is an error naming what is wrong, never a panic.
        #[test]
        fn damaged_persona_files_give_errors_not_panics(flips in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 0..6), cut in proptest::prelude::any::<proptest::sample::Index>(), noise in ".{0,400}") {
            let shipped = include_str!("../../../datasets/personas/wedding-host.toml").as_bytes().to_vec();
            let mut bytes = shipped.clone();
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            if let Ok(text) = std::str::from_utf8(&bytes) {
                if let Err(e) = Persona::from_toml(text, "host") {
                    proptest::prop_assert!(!e.to_string().is_empty());
                }
            }
            let _ = Persona::from_toml(&noise, "noise");
        }
    }
}
