//! Practice scenarios: a persona in a setting, a goal for the learner, a check that says when
//! the goal is reached, a turn limit, and the skills the debrief looks at.
//!
//! A scenario is a TOML file in `datasets/scenarios/`, checked like a persona file (unknown keys
//! and impossible values are errors naming the file). Each has levels (`easy`, `hard`) that
//! override how the persona paces closeness and how much she says.
//!
//! The scenario's persona is derived from a shipped one ([`Scenario::persona`]): the setting is
//! added to her bio, the level's pacing replaces hers, and her secret is **never** the shipped
//! persona's. A secret-game scenario plays for a practice password of its own; any other
//! scenario plays without one. An easy level lowers the bar for closeness, so it must never
//! lower the bar for the real party password: a scenario is practice, not a door.
//!
//! Whether the goal is reached is read from what the server stored, never from what a client
//! says ([`Scenario::progress`]): the pipeline's saved state (stage, closeness), the persona's
//! own replies (a practice password counts only when *she* said it) and the coach's
//! measurements of the learner's messages.

use std::collections::BTreeMap;
use std::path::Path;

use rapport_pipeline::persona::Stage;
use rapport_pipeline::{Persona, PersonaLibrary};
use serde::{Deserialize, Serialize};

use crate::coach::user_side;
pub use crate::coach::Skill;
use crate::dialogue::{Dialogue, Speaker};
use crate::EvalError;

/// What kind of practice a scenario is, for the picker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioKind {
    /// Getting a conversation going with someone new.
    SmallTalk,
    /// Warming up to someone, at her pace.
    Flirting,
    /// Finding out what is wrong and being there for a friend.
    Comforting,
    /// Earning the host's practice password.
    SecretGame,
}

/// How hard a level is: the persona's pacing and how long the learner has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// One line for the picker ("she warms up quickly; 12 messages").
    pub description: String,
    /// The learner's messages before the scenario ends.
    pub max_turns: u32,
    /// Replaces the persona's warmth (multiplier on every closeness gain).
    #[serde(default)]
    pub warmth: Option<f32>,
    /// Replaces the persona's cap on closeness gained per turn.
    #[serde(default)]
    pub max_gain_per_turn: Option<u8>,
    /// Replaces how many sentences she says (how much she volunteers).
    #[serde(default)]
    pub max_sentences: Option<usize>,
}

/// When the goal is reached: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Success {
    /// The conversation reached this stage (or a later one).
    #[serde(default)]
    pub stage: Option<Stage>,
    /// Closeness reached at least this (0–100).
    #[serde(default)]
    pub closeness: Option<u8>,
    /// The persona told her practice password (said it in a reply).
    #[serde(default)]
    pub password_told: bool,
    /// Skill scores the learner's messages must reach (0–1), measured by the coach.
    #[serde(default)]
    pub skills: BTreeMap<Skill, f64>,
    /// Learner messages before skill scores count (a fair read needs a few). Default 3.
    #[serde(default = "default_min_messages")]
    pub min_messages: u32,
}

fn default_min_messages() -> u32 {
    3
}

/// A practice scenario, as written in its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The file name without `.toml`.
    #[serde(default)]
    pub id: String,
    /// Title for the picker.
    pub title: String,
    /// What kind of practice.
    pub kind: ScenarioKind,
    /// The shipped persona it is played with.
    pub persona: String,
    /// Where and when, told to the learner and added to the persona's bio.
    pub setting: String,
    /// What the persona knows about the scene that the learner does not (added to her facts,
    /// never shown to the learner): why she is upset, what is on her mind.
    #[serde(default)]
    pub persona_facts: Vec<String>,
    /// The learner's goal, in one sentence.
    pub goal: String,
    /// When the goal is reached.
    pub success: Success,
    /// Levels by name (`easy`, `hard`).
    pub levels: BTreeMap<String, Level>,
    /// The practice password of a secret-game scenario (never the shipped persona's).
    #[serde(default)]
    pub practice_password: Option<String>,
    /// The skills the debrief looks at, with the score to aim for.
    pub debrief: BTreeMap<Skill, f64>,
}

/// The longest scenario: the conversation is short practice, and the secret's own pacing needs
/// well under this.
pub const MAX_TURNS: u32 = 40;

impl Scenario {
    /// Parses and checks a scenario; `id` names it and its errors. `personas` are the shipped
    /// personas it may be played with.
    pub fn from_toml(text: &str, id: &str, personas: &PersonaLibrary) -> Result<Self, EvalError> {
        let bad = |m: String| EvalError::Invalid(format!("scenario {id}: {m}"));
        let mut s: Scenario = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if s.id.is_empty() {
            s.id = id.to_string();
        }
        if !s.id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || s.id.contains("--")
            || s.id.len() > 40
        {
            return Err(bad("the id may hold only a-z, 0-9 and single dashes, 40 at most".into()));
        }
        for (what, text) in [("title", &s.title), ("setting", &s.setting), ("goal", &s.goal)] {
            if text.trim().is_empty() {
                return Err(bad(format!("{what} is empty")));
            }
        }
        let base = personas
            .get(&s.persona)
            .map_err(|_| bad(format!("persona {:?} is not a shipped persona", s.persona)))?;
        if s.levels.is_empty() {
            return Err(bad("it needs at least one level ([levels.easy])".into()));
        }
        for (name, level) in &s.levels {
            if name.is_empty() || name.len() > 10 || !name.chars().all(|c| c.is_ascii_lowercase()) {
                return Err(bad(format!("level {name:?}: names are 1 to 10 lowercase letters")));
            }
            if !(1..=MAX_TURNS).contains(&level.max_turns) {
                return Err(bad(format!("level {name}: max_turns must be 1 to {MAX_TURNS}")));
            }
        }
        let success = &s.success;
        if success.stage.is_none()
            && success.closeness.is_none()
            && !success.password_told
            && success.skills.is_empty()
        {
            return Err(bad(
                "success names no condition: it could never be told apart from failure".into(),
            ));
        }
        if success.closeness.is_some_and(|c| c > 100) {
            return Err(bad("success.closeness is 0 to 100".into()));
        }
        for (skill, target) in success.skills.iter().chain(&s.debrief) {
            if !(0.0..=1.0).contains(target) {
                return Err(bad(format!("{}: a target is 0 to 1", skill.label())));
            }
        }
        if s.debrief.is_empty() {
            return Err(bad("debrief names no skill".into()));
        }
        match (&s.practice_password, success.password_told) {
            (None, true) => {
                return Err(bad("success.password_told needs a practice_password".into()))
            }
            (Some(p), _) => {
                if p.trim().chars().count() < 4 {
                    return Err(bad("practice_password is shorter than 4 characters".into()));
                }
                if base.secret.as_ref().is_none_or(|real| real.value.eq_ignore_ascii_case(p)) {
                    return Err(bad("practice_password needs a persona that plays the secret game, and must differ from her real password".into()));
                }
            }
            (None, false) => {}
        }
        // Every level's persona must be one the engine accepts (the secret checks included).
        for level in s.levels.keys() {
            s.persona(base, level)?;
        }
        Ok(s)
    }

    /// Reads and checks a scenario file.
    pub fn load(path: &Path, personas: &PersonaLibrary) -> Result<Self, EvalError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EvalError::Io(format!("{}: {e}", path.display())))?;
        let id = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        Self::from_toml(&text, id, personas)
    }

    /// The persona id a conversation of this scenario at `level` runs under.
    pub fn persona_id(&self, level: &str) -> String {
        format!("{SCENARIO_PREFIX}{}--{level}", self.id)
    }

    /// The persona played at `level`, derived from `base` (the shipped persona): the setting in
    /// her bio, the scene's facts added, the level's pacing, and only the practice password.
    pub fn persona(&self, base: &Persona, level: &str) -> Result<Persona, EvalError> {
        let bad = |m: String| EvalError::Invalid(format!("scenario {}: {m}", self.id));
        let l = self.levels.get(level).ok_or_else(|| {
            bad(format!(
                "no level {level:?} (it has {})",
                self.levels.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let mut p = base.clone();
        p.id = self.persona_id(level);
        p.bio = format!("{} Right now: {}", p.bio, self.setting);
        p.facts.extend(self.persona_facts.iter().cloned());
        if let Some(w) = l.warmth {
            p.pacing.warmth = w;
        }
        if let Some(g) = l.max_gain_per_turn {
            p.pacing.max_gain_per_turn = g;
        }
        if let Some(n) = l.max_sentences {
            p.max_sentences = n;
        }
        // The shipped password never travels into a scenario: the practice one replaces it, or
        // the scenario plays without a secret.
        p.secret = match (&self.practice_password, p.secret.take()) {
            (Some(practice), Some(mut secret)) => {
                secret.value = practice.clone();
                Some(secret)
            }
            _ => None,
        };
        p.validate().map_err(|e| bad(format!("level {level}: {e}")))?;
        Ok(p)
    }

    /// Where a conversation of this scenario stands after the turns stored so far: the stage
    /// and closeness the pipeline recorded in its last reply's trace (the greeting alone: the
    /// start), the persona's replies and the learner's messages.
    pub fn progress(&self, level: &str, dialogue: &Dialogue) -> Progress {
        let (stage, closeness) = standing(dialogue);
        self.progress_at(level, stage, closeness, dialogue)
    }

    /// [`Scenario::progress`] at a given stage and closeness.
    pub fn progress_at(
        &self,
        level: &str,
        now_stage: Stage,
        closeness: u8,
        dialogue: &Dialogue,
    ) -> Progress {
        let max_turns = self.levels.get(level).map_or(0, |l| l.max_turns);
        let side = user_side(dialogue);
        let used = side.messages as u32;
        let mut checks = Vec::new();
        if let Some(stage) = self.success.stage {
            let now = now_stage;
            checks.push(Check {
                what: format!("reach the {} stage", stage.as_str().replace('_', " ")),
                met: now >= stage,
                now: now.as_str().replace('_', " "),
            });
        }
        if let Some(c) = self.success.closeness {
            let now = closeness;
            checks.push(Check {
                what: format!("closeness {c} or more"),
                met: now >= c,
                now: now.to_string(),
            });
        }
        if self.success.password_told {
            let told = self.practice_password.as_deref().is_some_and(|p| {
                dialogue.turns.iter().any(|t| {
                    t.speaker == Speaker::Persona
                        && t.text.to_lowercase().contains(&p.to_lowercase())
                })
            });
            checks.push(Check {
                what: "she tells you the password".into(),
                met: told,
                now: if told { "told".into() } else { "not yet".into() },
            });
        }
        for (&skill, &target) in &self.success.skills {
            let score = skill.score(&side);
            let enough = used >= self.success.min_messages;
            checks.push(Check {
                what: format!("{} at {:.0}% or more", skill.label().to_lowercase(), target * 100.0),
                met: enough && score.is_some_and(|s| s >= target),
                now: match score {
                    Some(s) if enough => format!("{:.0}%", s * 100.0),
                    Some(s) => format!(
                        "{:.0}% (counts from message {})",
                        s * 100.0,
                        self.success.min_messages
                    ),
                    None => "not measured yet".into(),
                },
            });
        }
        // The last message's reply may still reach the goal: out of messages only once it came.
        let answered = dialogue.turns.last().is_none_or(|t| t.speaker == Speaker::Persona);
        let status = if checks.iter().all(|c| c.met) {
            Status::Succeeded
        } else if used >= max_turns && answered {
            Status::Failed
        } else {
            Status::Playing
        };
        Progress { status, turns_used: used, max_turns, checks }
    }

    /// The debrief: each skill the scenario looks at, the learner's score against the target,
    /// their own words as the example, and what to try.
    pub fn debrief(&self, dialogue: &Dialogue) -> Vec<DebriefLine> {
        let side = user_side(dialogue);
        self.debrief
            .iter()
            .map(|(&skill, &target)| {
                let score = skill.score(&side);
                DebriefLine {
                    skill,
                    label: skill.label().into(),
                    score,
                    target,
                    met: score.is_some_and(|s| s >= target),
                    example: skill.example(&side),
                    advice: skill.advice().into(),
                }
            })
            .collect()
    }

    /// What the picker shows (nothing of what only the persona knows).
    pub fn summary(&self) -> ScenarioSummary {
        ScenarioSummary {
            id: self.id.clone(),
            title: self.title.clone(),
            kind: self.kind,
            persona: self.persona.clone(),
            setting: self.setting.clone(),
            goal: self.goal.clone(),
            levels: self
                .levels
                .iter()
                .map(|(name, l)| LevelSummary {
                    name: name.clone(),
                    description: l.description.clone(),
                    max_turns: l.max_turns,
                })
                .collect(),
        }
    }
}

/// The stage and closeness after the last reply the pipeline wrote (its trace), or the start.
pub fn standing(dialogue: &Dialogue) -> (Stage, u8) {
    dialogue
        .turns
        .iter()
        .rev()
        .find_map(|t| t.trace.as_ref())
        .map_or((Stage::default(), 0), |t| (t.stage.to, t.closeness.after.get()))
}

/// The prefix of a scenario persona's id: `scenario--<scenario>--<level>` (a persona id allows
/// only a-z, 0-9, `-` and `_`, so the parts are joined by `--`, which a scenario id may not hold).
pub const SCENARIO_PREFIX: &str = "scenario--";

/// The picker's view of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioSummary {
    /// Its id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Kind of practice.
    pub kind: ScenarioKind,
    /// The persona's id.
    pub persona: String,
    /// The scene.
    pub setting: String,
    /// The learner's goal.
    pub goal: String,
    /// Its levels.
    pub levels: Vec<LevelSummary>,
}

/// A level, for the picker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelSummary {
    /// `easy`, `hard`.
    pub name: String,
    /// One line.
    pub description: String,
    /// Messages the learner has.
    pub max_turns: u32,
}

/// Where a scenario stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Goal not reached, messages left.
    Playing,
    /// Every condition met.
    Succeeded,
    /// Out of messages.
    Failed,
}

impl Status {
    /// Whether the scenario is over.
    pub fn is_over(self) -> bool {
        self != Status::Playing
    }
}

/// One condition of the goal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The condition, in words.
    pub what: String,
    /// Whether it holds now.
    pub met: bool,
    /// Where it stands now, in words.
    pub now: String,
}

/// A scenario's standing after the stored turns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Playing, succeeded or failed.
    pub status: Status,
    /// The learner's messages so far.
    pub turns_used: u32,
    /// The level's limit.
    pub max_turns: u32,
    /// Each condition of the goal.
    pub checks: Vec<Check>,
}

/// One skill in the debrief.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DebriefLine {
    /// The skill.
    pub skill: Skill,
    /// Its name.
    pub label: String,
    /// The learner's score (None: not measured, e.g. no question was asked).
    pub score: Option<f64>,
    /// What the scenario aims for.
    pub target: f64,
    /// Score ≥ target.
    pub met: bool,
    /// The learner's own words that show it.
    pub example: Option<String>,
    /// What to try.
    pub advice: String,
}

/// The shipped scenarios.
#[derive(Debug, Clone, Default)]
pub struct ScenarioLibrary {
    scenarios: BTreeMap<String, Scenario>,
}

impl ScenarioLibrary {
    /// Every `*.toml` in `dir`, checked against `personas`. A missing directory is an empty
    /// library (an install without scenarios still chats).
    pub fn load_dir(dir: &Path, personas: &PersonaLibrary) -> Result<Self, EvalError> {
        let mut scenarios = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Self::default()) };
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let s = Scenario::load(&path, personas)?;
            scenarios.insert(s.id.clone(), s);
        }
        Ok(Self { scenarios })
    }

    /// The scenarios, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Scenario> {
        self.scenarios.values()
    }

    /// One scenario.
    pub fn get(&self, id: &str) -> Option<&Scenario> {
        self.scenarios.get(id)
    }

    /// The shipped persona a persona id is played as: a scenario's base persona, or the id
    /// itself.
    pub fn base_persona<'a>(&'a self, persona_id: &'a str) -> &'a str {
        self.of_persona_id(persona_id).map_or(persona_id, |(s, _)| s.persona.as_str())
    }

    /// The scenario and level a persona id names (`scenario--<id>--<level>`), if it names one.
    pub fn of_persona_id<'a>(&'a self, persona_id: &'a str) -> Option<(&'a Scenario, &'a str)> {
        let rest = persona_id.strip_prefix(SCENARIO_PREFIX)?;
        let (id, level) = rest.rsplit_once("--")?;
        let s = self.scenarios.get(id)?;
        s.levels.contains_key(level).then_some((s, level))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn library() -> PersonaLibrary {
        PersonaLibrary::load_dir(&datasets().join("personas")).expect("shipped personas load")
    }

    fn datasets() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets")
    }

    fn shipped() -> ScenarioLibrary {
        ScenarioLibrary::load_dir(&datasets().join("scenarios"), &library())
            .expect("shipped scenarios load")
    }

    const MINIMAL: &str = r#"
title = "t"
kind = "small_talk"
persona = "wedding-host"
setting = "s"
goal = "g"
debrief = { listening = 0.5 }
[success]
stage = "casual"
[levels.easy]
description = "d"
max_turns = 5
"#;

    #[test]
    fn the_shipped_scenarios_cover_every_kind_at_two_levels() {
        let lib = shipped();
        assert!(lib.iter().count() >= 6, "at least six scenarios");
        for kind in [
            ScenarioKind::SmallTalk,
            ScenarioKind::Flirting,
            ScenarioKind::Comforting,
            ScenarioKind::SecretGame,
        ] {
            assert!(lib.iter().any(|s| s.kind == kind), "{kind:?} has a scenario");
        }
        for s in lib.iter() {
            assert!(s.levels.contains_key("easy") && s.levels.contains_key("hard"), "{}", s.id);
            assert!(
                s.levels["hard"].max_turns <= s.levels["easy"].max_turns,
                "{}: hard gives no more messages than easy",
                s.id
            );
        }
    }

    #[test]
    fn a_scenario_never_carries_the_real_password() {
        let personas = library();
        for s in shipped().iter() {
            let base = personas.get(&s.persona).unwrap();
            for level in s.levels.keys() {
                let p = s.persona(base, level).unwrap();
                let text = p.to_toml();
                if let Some(real) = &base.secret {
                    assert!(
                        !text.to_lowercase().contains(&real.value.to_lowercase()),
                        "{} {level} carries the real password",
                        s.id
                    );
                }
                match (&s.practice_password, &p.secret) {
                    (Some(practice), Some(secret)) => assert_eq!(&secret.value, practice),
                    (None, None) => {}
                    other => panic!("{} {level}: {other:?}", s.id),
                }
                // Nothing only she knows reaches the picker.
                let summary = serde_json::to_string(&s.summary()).unwrap();
                for fact in &s.persona_facts {
                    assert!(!summary.contains(fact.as_str()));
                }
                if let Some(practice) = &s.practice_password {
                    assert!(!summary.to_lowercase().contains(&practice.to_lowercase()));
                }
            }
        }
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_reason() {
        let personas = library();
        let err = |text: &str| {
            Scenario::from_toml(text, "x", &personas).expect_err("refused").to_string()
        };
        assert!(Scenario::from_toml(MINIMAL, "x", &personas).is_ok());
        assert!(err(&MINIMAL.replace("wedding-host", "nobody")).contains("not a shipped persona"));
        assert!(err(&MINIMAL.replace("max_turns = 5", "max_turns = 0")).contains("max_turns"));
        assert!(err(&MINIMAL.replace("stage = \"casual\"", "")).contains("no condition"));
        assert!(err(&MINIMAL.replace("stage = \"casual\"", "password_told = true"))
            .contains("practice_password"));
        assert!(err(&format!("practice_password = \"blue heron\"\n{MINIMAL}"))
            .contains("differ from her real password"));
        assert!(err(&MINIMAL.replace("listening = 0.5", "listening = 1.5")).contains("0 to 1"));
        assert!(err(&format!("{MINIMAL}\nsurprise = 1")).contains("unknown field"));
        let jade = MINIMAL.replace("wedding-host", "creator");
        assert!(
            err(&format!("practice_password = \"silver kiln\"\n{jade}")).contains("secret game")
        );
    }

    fn at(stage: Stage) -> Stage {
        stage
    }

    #[test]
    fn the_goal_is_read_from_her_replies_and_the_state_not_from_the_learner() {
        let personas = library();
        let text = r#"
title = "t"
kind = "secret_game"
persona = "wedding-host"
setting = "s"
goal = "g"
practice_password = "silver lantern"
debrief = { listening = 0.5 }
[success]
password_told = true
[levels.easy]
description = "d"
max_turns = 3
"#;
        let s = Scenario::from_toml(text, "x", &personas).unwrap();
        use Speaker::*;
        // The learner saying the password is not her telling it.
        let said_by_learner = Dialogue::of_turns(&[
            (Persona, "Welcome!"),
            (User, "The password is silver lantern, right?"),
            (Persona, "Nice try!"),
        ]);
        let state = at(Stage::Close);
        let p = s.progress_at("easy", state, 80, &said_by_learner);
        assert_eq!(p.status, Status::Playing);
        assert_eq!(p.turns_used, 1);
        let told = Dialogue::of_turns(&[
            (Persona, "Welcome!"),
            (User, "I loved your speech."),
            (Persona, "Alright, you earned it: Silver Lantern."),
        ]);
        assert_eq!(s.progress_at("easy", state, 80, &told).status, Status::Succeeded);
        // Out of messages without it: failed.
        let out = Dialogue::of_turns(&[
            (Persona, "Welcome!"),
            (User, "a"),
            (Persona, "b"),
            (User, "c"),
            (Persona, "d"),
            (User, "e"),
            (Persona, "f"),
        ]);
        assert_eq!(s.progress_at("easy", state, 80, &out).status, Status::Failed);
        // The last message sent but not yet answered: still playing (her reply may tell it).
        let pending = Dialogue::of_turns(
            &out.turns[..6].iter().map(|t| (t.speaker, t.text.as_str())).collect::<Vec<_>>(),
        );
        assert_eq!(s.progress_at("easy", state, 80, &pending).status, Status::Playing);
    }

    #[test]
    fn stage_closeness_and_skills_all_have_to_hold() {
        let personas = library();
        let text = MINIMAL.replace(
            "stage = \"casual\"",
            "stage = \"casual\"\ncloseness = 20\nskills = { listening = 0.5 }\nmin_messages = 2",
        );
        let s = Scenario::from_toml(&text, "x", &personas).unwrap();
        use Speaker::*;
        let good = Dialogue::of_turns(&[
            (Persona, "Hi! I just got back from a pottery class."),
            (User, "Pottery sounds fun! What did you make?"),
            (Persona, "A wobbly bowl, haha. Do you do anything creative?"),
            (User, "I paint a little. What colour is the wobbly bowl?"),
        ]);
        let p = s.progress_at("easy", at(Stage::Casual), 25, &good);
        assert_eq!(p.status, Status::Succeeded, "{p:?}");
        assert_eq!(p.checks.len(), 3);
        let p = s.progress_at("easy", at(Stage::IceBreaker), 25, &good);
        assert_eq!(p.status, Status::Playing);
        assert!(!p.checks[0].met && p.checks[1].met && p.checks[2].met);
        let p = s.progress_at("easy", at(Stage::Close), 19, &good);
        assert_eq!(p.status, Status::Playing);
        // One message is too few for a skill to count, however well it listened.
        let short = Dialogue::of_turns(
            &good.turns[..2].iter().map(|t| (t.speaker, t.text.as_str())).collect::<Vec<_>>(),
        );
        let p = s.progress_at("easy", at(Stage::Close), 50, &short);
        assert_eq!(p.status, Status::Playing);
        assert!(p.checks[2].now.contains("counts from message 2"), "{:?}", p.checks[2]);
        let lines = s.debrief(&good);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].skill, Skill::Listening);
        assert!(lines[0].met);
        assert!(lines[0]
            .example
            .as_deref()
            .is_some_and(|e| good.turns.iter().any(|t| t.text == e)));
    }

    #[test]
    fn persona_ids_name_a_scenario_and_a_level_or_nothing() {
        let lib = shipped();
        let s = lib.iter().next().unwrap();
        let id = s.persona_id("easy");
        assert_eq!(
            lib.of_persona_id(&id).map(|(s, l)| (s.id.clone(), l)),
            Some((s.id.clone(), "easy"))
        );
        assert!(lib.of_persona_id(&s.persona_id("impossible")).is_none());
        assert!(lib.of_persona_id("scenario--nope--easy").is_none());
        assert!(lib.of_persona_id("wedding-host").is_none());
        assert_eq!(lib.base_persona(&id), s.persona);
        assert_eq!(lib.base_persona("wedding-host"), "wedding-host");
    }
}
