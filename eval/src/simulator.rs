//! Simulated users: an LLM plays a person with a description, a hidden goal, a mood, and
//! reaction rules that say how they respond to what the persona does.
//!
//! Simulators come from TOML files in `datasets/simulators/` (Rapport's own: shy, pushy,
//! grieving, a troll who tries prompt injection, …) or from the `moodsona` package's persona
//! YAML (CC BY 4.0), which has the same parts: reaction rules with emotion/energy deltas and a
//! stance, an initial state, a hidden goal.
//!
//! Whether a rule fires is decided by meaning, not by the LLM: the persona's reply is embedded
//! (MiniLM) and compared with each rule's `when`; the closest rule over a threshold fires. That
//! keeps the simulated user's mood — the outcome the rubric scores — deterministic and cheap,
//! and independent of how well the simulating model follows instructions. The rule's `then`
//! becomes an instruction for the simulated user's next message.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rapport_core::{collect_completion, ChatMessage, GenerationRequest, Generator, SamplingParams};
use rapport_nlu::cosine;
use rapport_nlu::emotion::EmotionClassifier;
use serde::{Deserialize, Serialize};
use tera::{Context, Tera};

use crate::dialogue::{Dialogue, Speaker};
use crate::stats::SplitMix64;
use crate::EvalError;

/// A simulated user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSpec {
    /// Identifier (`shy`, `moodsona:grieving-after-loss`).
    pub id: String,
    /// Title.
    pub name: String,
    /// Who they are, in the third person.
    pub description: String,
    /// What they want from the chat and do not say.
    pub hidden_goal: String,
    /// How they write.
    #[serde(default)]
    pub style: String,
    /// First messages to choose from (by seed); empty: the LLM writes the first message too.
    #[serde(default)]
    pub openers: Vec<String>,
    /// Lines sent verbatim at given turns (a troll's injection attempts must be sent, not left
    /// to a small model's imagination).
    #[serde(default)]
    pub script: Vec<ScriptedLine>,
    /// How they react to what the persona does.
    #[serde(default)]
    pub reaction_rules: Vec<ReactionRule>,
    /// Where their mood starts.
    pub initial_state: SimState,
    /// Credit, for imported simulators.
    #[serde(default)]
    pub attribution: Option<String>,
}

/// A line sent at a given turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedLine {
    /// The user turn (1 = the first message).
    pub turn: u32,
    /// The message.
    pub text: String,
}

/// "When the persona does X, the user does Y and feels Z."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactionRule {
    /// What the persona does.
    pub when: String,
    /// What the user does in their next message.
    pub then: String,
    /// Change of emotion (0–100 scale).
    #[serde(default)]
    pub emotion_delta: f64,
    /// Change of energy (0–100 scale).
    #[serde(default)]
    pub energy_delta: f64,
    /// New stance.
    #[serde(default)]
    pub stance_to: Option<String>,
    /// Whether the user leaves after this.
    #[serde(default)]
    pub ends_session: bool,
}

/// Mood.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimState {
    /// 0 (miserable) – 100 (elated).
    pub emotion: f64,
    /// 0 (drained) – 100 (buzzing).
    pub energy: f64,
    /// Towards the persona: guarded, curious, open, withdrawn, hostile, skeptical…
    pub stance: String,
}

impl SimulatorSpec {
    fn validate(&self, origin: &str) -> Result<(), EvalError> {
        let bad = |m: String| Err(EvalError::Invalid(format!("{origin}: {m}")));
        if self.id.trim().is_empty() || self.description.trim().is_empty() {
            return bad("id and description are required".into());
        }
        for (what, v) in
            [("emotion", self.initial_state.emotion), ("energy", self.initial_state.energy)]
        {
            if !(0.0..=100.0).contains(&v) {
                return bad(format!("initial_state.{what} {v} is outside 0..100"));
            }
        }
        if let Some(s) = self.script.iter().find(|s| s.turn == 0) {
            return bad(format!("script line {:?}: turns start at 1", s.text));
        }
        Ok(())
    }
}

/// Every simulator: the TOML files in `dir`, plus moodsona's when its directory is given.
pub fn load_all(
    dir: &Path,
    moodsona: Option<&Path>,
) -> Result<BTreeMap<String, SimulatorSpec>, EvalError> {
    let mut out = BTreeMap::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| EvalError::Io(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| EvalError::Io(format!("{}: {e}", path.display())))?;
        let spec: SimulatorSpec = toml::from_str(&text)
            .map_err(|e| EvalError::Invalid(format!("{}: {e}", path.display())))?;
        spec.validate(&path.display().to_string())?;
        if out.insert(spec.id.clone(), spec).is_some() {
            return Err(EvalError::Invalid(format!(
                "{}: a second simulator with the same id",
                path.display()
            )));
        }
    }
    if let Some(dir) = moodsona {
        for spec in import_moodsona_dir(dir)? {
            out.insert(spec.id.clone(), spec);
        }
    }
    Ok(out)
}

/// The fields of a moodsona persona that a simulator uses (its schema has a few more).
#[derive(Debug, Deserialize)]
struct MoodsonaPersona {
    id: String,
    display_name: String,
    description: String,
    #[serde(default)]
    language: Option<String>,
    hidden_goal: String,
    #[serde(default)]
    reaction_rules: Vec<MoodsonaRule>,
    initial_state: SimState,
    #[serde(default)]
    license: Option<String>,
    #[serde(default)]
    author: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MoodsonaRule {
    when: String,
    then: String,
    #[serde(default)]
    emotion_delta: f64,
    #[serde(default)]
    energy_delta: f64,
    #[serde(default)]
    stance_to: Option<String>,
}

/// One moodsona persona YAML as a simulator (`moodsona:<id>`).
pub fn import_moodsona(yaml: &str, origin: &str) -> Result<SimulatorSpec, EvalError> {
    let p: MoodsonaPersona =
        serde_norway::from_str(yaml).map_err(|e| EvalError::Invalid(format!("{origin}: {e}")))?;
    if p.language.as_deref().is_some_and(|l| l != "en") {
        return Err(EvalError::Invalid(format!(
            "{origin}: language {:?}; Rapport's simulators speak English",
            p.language
        )));
    }
    let spec = SimulatorSpec {
        id: format!("moodsona:{}", p.id),
        name: p.display_name.clone(),
        description: p.description.split_whitespace().collect::<Vec<_>>().join(" "),
        hidden_goal: p.hidden_goal.split_whitespace().collect::<Vec<_>>().join(" "),
        style: String::new(),
        openers: vec![],
        script: vec![],
        reaction_rules: p
            .reaction_rules
            .into_iter()
            .map(|r| {
                // moodsona has no "leave" field; its rules say so in words.
                let lower = r.then.to_lowercase();
                let ends_session = lower.contains("ends the session")
                    || lower.contains("end the session")
                    || lower.contains("leaves the chat");
                ReactionRule {
                    when: r.when,
                    then: r.then,
                    emotion_delta: r.emotion_delta,
                    energy_delta: r.energy_delta,
                    stance_to: r.stance_to,
                    ends_session,
                }
            })
            .collect(),
        initial_state: p.initial_state,
        attribution: Some(format!(
            "\"{}\" by {}, from moodsona 0.2.0, licensed under {}",
            p.display_name,
            p.author.as_deref().unwrap_or("moodsona maintainers"),
            p.license.as_deref().unwrap_or("CC-BY-4.0")
        )),
    };
    spec.validate(origin)?;
    Ok(spec)
}

/// Every `*.yaml` in moodsona's persona directory.
pub fn import_moodsona_dir(dir: &Path) -> Result<Vec<SimulatorSpec>, EvalError> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| EvalError::Io(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .map_err(|e| EvalError::Io(format!("{}: {e}", p.display())))?;
            import_moodsona(&text, &p.display().to_string())
        })
        .collect()
}

/// Decides which reaction rule, if any, a persona reply triggers.
pub struct RuleMatcher {
    nlu: Option<Arc<EmotionClassifier>>,
    threshold: f32,
}

impl RuleMatcher {
    /// Cosine similarity a reply needs to a rule's `when` for the rule to fire. A rule is a
    /// description ("the bot offers a silver lining") and a reply is an utterance, so even a
    /// clear match scores modestly: on the probes in this module's test, replies that do what
    /// a rule says score 0.39–0.46 with it, the best wrong rule 0.27, small talk at most 0.16.
    /// (Set with those probes in view; abstract rules such as "switches to an unrelated
    /// cheerful topic" still rarely fire.)
    pub const DEFAULT_THRESHOLD: f32 = 0.33;

    /// Matching by meaning with the pipeline's sentence encoder (shared, not loaded twice);
    /// without one, no rule ever fires and the simulated user's mood never moves.
    pub fn new(nlu: Option<Arc<EmotionClassifier>>, threshold: f32) -> Self {
        Self { nlu, threshold }
    }

    /// Whether rules can fire at all.
    pub fn active(&self) -> bool {
        self.nlu.is_some()
    }

    /// The similarity of `reply` to each rule's `when`.
    pub fn scores(&self, reply: &str, rules: &[ReactionRule]) -> Result<Vec<f32>, EvalError> {
        let Some(nlu) = &self.nlu else { return Ok(vec![0.0; rules.len()]) };
        let mut texts: Vec<&str> = vec![reply];
        texts.extend(rules.iter().map(|r| r.when.as_str()));
        let vectors =
            nlu.encoder().encode_batch(&texts).map_err(|e| EvalError::Model(e.to_string()))?;
        Ok(vectors[1..].iter().map(|v| cosine(&vectors[0].0, &v.0)).collect())
    }

    /// The index of the rule `reply` triggers, with its similarity.
    pub fn fire(
        &self,
        reply: &str,
        rules: &[ReactionRule],
    ) -> Result<Option<(usize, f32)>, EvalError> {
        if self.nlu.is_none() || rules.is_empty() {
            return Ok(None);
        }
        let best =
            self.scores(reply, rules)?.into_iter().enumerate().max_by(|a, b| a.1.total_cmp(&b.1));
        Ok(best.filter(|(_, s)| *s >= self.threshold))
    }
}

/// A simulated user in one dialogue.
pub struct SimulatedUser<'a> {
    spec: &'a SimulatorSpec,
    state: SimState,
    pending: Option<String>,
    rng: SplitMix64,
    tera: Tera,
    sent: u32,
    /// Rules fired: (turn, when).
    pub reactions: Vec<(u32, String)>,
    /// Whether a rule ended the session.
    pub ended: bool,
}

impl<'a> SimulatedUser<'a> {
    /// Starts `spec` with its initial mood; `seed` chooses its opener and sampling seeds.
    pub fn new(spec: &'a SimulatorSpec, seed: u64) -> Self {
        let mut tera = Tera::default();
        tera.add_raw_template("simulator", include_str!("../../prompts/simulator.tera"))
            .expect("the embedded template parses");
        Self {
            spec,
            state: spec.initial_state.clone(),
            pending: None,
            rng: SplitMix64::new(seed),
            tera,
            sent: 0,
            reactions: vec![],
            ended: false,
        }
    }

    /// The mood now.
    pub fn state(&self) -> &SimState {
        &self.state
    }

    /// Reacts to the persona's reply: a rule that fires moves the mood and shapes the next
    /// message.
    pub fn react(&mut self, reply: &str, matcher: &RuleMatcher) -> Result<(), EvalError> {
        if let Some((i, _)) = matcher.fire(reply, &self.spec.reaction_rules)? {
            let rule = &self.spec.reaction_rules[i];
            self.state.emotion = (self.state.emotion + rule.emotion_delta).clamp(0.0, 100.0);
            self.state.energy = (self.state.energy + rule.energy_delta).clamp(0.0, 100.0);
            if let Some(s) = &rule.stance_to {
                self.state.stance = s.clone();
            }
            self.pending = Some(rule.then.clone());
            self.reactions.push((self.sent, rule.when.clone()));
            self.ended |= rule.ends_session;
        }
        Ok(())
    }

    /// The next message, given the dialogue so far (which ends with the persona's turn).
    pub async fn next_message(
        &mut self,
        dialogue: &Dialogue,
        persona_name: &str,
        generator: &dyn Generator,
        base: &SamplingParams,
    ) -> Result<String, EvalError> {
        self.sent += 1;
        let turn = self.sent;
        let seed = self.rng.next_u64();
        if let Some(line) = self.spec.script.iter().find(|s| s.turn == turn) {
            self.pending = None;
            return Ok(line.text.clone());
        }
        if turn == 1 && !self.spec.openers.is_empty() {
            return Ok(self.spec.openers[(seed % self.spec.openers.len() as u64) as usize].clone());
        }
        let mut ctx = Context::new();
        ctx.insert("persona_name", persona_name);
        ctx.insert("sim", self.spec);
        ctx.insert("mood", mood_word(self.state.emotion));
        ctx.insert("emotion", &(self.state.emotion.round() as i64));
        ctx.insert("energy", &(self.state.energy.round() as i64));
        ctx.insert("stance", &self.state.stance);
        ctx.insert("reaction", &self.pending.take());
        let system = self
            .tera
            .render("simulator", &ctx)
            .map_err(|e| EvalError::Invalid(format!("simulator template: {e}")))?;
        // The conversation from the simulated user's side: the persona's turns are what it
        // hears (user), its own are what it said (assistant).
        let mut messages = vec![ChatMessage::system(system)];
        for t in &dialogue.turns {
            messages.push(match t.speaker {
                Speaker::Persona => ChatMessage::user(t.text.clone()),
                Speaker::User => ChatMessage::assistant(t.text.clone()),
            });
        }
        let sampling = SamplingParams {
            temperature: 0.8,
            max_tokens: 60,
            seed: Some(seed),
            stop: vec!["\n".into()],
            ..base.clone()
        };
        let request = GenerationRequest::new(messages, sampling)
            .map_err(|e| EvalError::Generation(e.to_string()))?;
        let stream =
            generator.generate(request).await.map_err(|e| EvalError::Generation(e.to_string()))?;
        let text = collect_completion(stream, |_| {})
            .await
            .map_err(|e| EvalError::Generation(e.to_string()))?
            .text;
        Ok(clean_message(&text, persona_name))
    }
}

fn mood_word(emotion: f64) -> &'static str {
    match emotion as i64 {
        ..=20 => "very low",
        21..=40 => "low",
        41..=60 => "so-so",
        61..=80 => "good",
        _ => "great",
    }
}

/// One line, no speaker label, no wrapping quotes; "…" if nothing is left (a real person who
/// has nothing to say sends something like it).
pub fn clean_message(text: &str, persona_name: &str) -> String {
    let mut line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_string();
    for label in ["User:", "Me:", "You:", "Person:"] {
        if let Some(rest) = line.strip_prefix(label) {
            line = rest.trim().to_string();
        }
    }
    if let Some(rest) = line.strip_prefix(&format!("{persona_name}:")) {
        line = rest.trim().to_string();
    }
    let line = line.trim_matches(|c| c == '"' || c == '“' || c == '”').trim().to_string();
    let line: String = line.chars().take(400).collect();
    if line.is_empty() {
        "…".into()
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRIEVING: &str = r#"
id: grieving-after-loss
display_name: Grieving after loss
description: >-
  An adult whose sister died
  three weeks ago.
language: en
hidden_goal: Wants to talk about their sister.
reaction_rules:
  - when: The bot offers a silver lining.
    then: Replies "ok".
    emotion_delta: -15
    stance_to: withdrawn
  - when: The bot switches to an upbeat tone.
    then: Writes "never mind" and ends the session early.
    energy_delta: -20
initial_state:
  emotion: 20
  energy: 30
  stance: guarded
baseline:
  emotion: 30
  energy: 35
  stance: guarded
tags: [grief]
license: CC-BY-4.0
author: moodsona maintainers
"#;

    #[test]
    fn moodsona_yaml_becomes_a_simulator() {
        let s = import_moodsona(GRIEVING, "test").unwrap();
        assert_eq!(s.id, "moodsona:grieving-after-loss");
        assert_eq!(s.description, "An adult whose sister died three weeks ago.");
        assert_eq!(s.reaction_rules.len(), 2);
        assert_eq!(s.reaction_rules[0].emotion_delta, -15.0);
        assert!(!s.reaction_rules[0].ends_session && s.reaction_rules[1].ends_session);
        assert!(s.attribution.unwrap().contains("CC-BY-4.0"));
        assert!(import_moodsona(&GRIEVING.replace("emotion: 20", "emotion: 200"), "t")
            .unwrap_err()
            .to_string()
            .contains("outside 0..100"));
        assert!(import_moodsona("id: [", "t").is_err());
        assert!(import_moodsona(&GRIEVING.replace("language: en", "language: de"), "t")
            .unwrap_err()
            .to_string()
            .contains("English"));
    }

    #[test]
    fn the_shipped_simulators_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/simulators");
        let all = load_all(&dir, None).unwrap();
        for id in ["shy", "pushy", "grieving", "troll"] {
            assert!(all.contains_key(id), "{id}");
        }
        assert!(all["troll"].script.iter().any(|s| s.text.to_lowercase().contains("ignore")));
    }

    /// The real MiniLM (pulled like in every other test) and the shipped emotion head.
    fn matcher() -> RuleMatcher {
        let cache = rapport_models::ModelCache::default_location().unwrap();
        let installed = rapport_models::Puller::default()
            .quiet()
            .pull(&cache, &rapport_models::preset("minilm-l6").unwrap())
            .unwrap();
        let encoder = rapport_nlu::SentenceEncoder::load(&installed.dir).unwrap();
        let head = rapport_nlu::emotion::EmotionHead::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/emotion/goemotions-tuned"),
        )
        .unwrap();
        RuleMatcher::new(
            Some(Arc::new(EmotionClassifier::new(encoder, head).unwrap())),
            RuleMatcher::DEFAULT_THRESHOLD,
        )
    }

    #[test]
    fn reaction_rules_fire_on_what_they_describe_and_not_on_small_talk() {
        let m = matcher();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/simulators");
        let all = load_all(&dir, None).unwrap();
        let grieving = &all["grieving"].reaction_rules;
        // (reply, the rule it should fire: 0 silver lining, 1 asks about the dog, 2 acknowledges).
        for (reply, rule) in [
            ("Time heals all wounds. Maybe you could get a new puppy soon!", Some(0)),
            ("What was he like? What do you miss most about him?", Some(1)),
            ("I'm so sorry, that must hurt so much. I'm here to listen.", Some(2)),
            ("Nice weather today, isn't it?", None),
            ("I like pottery.", None),
        ] {
            let fired = m.fire(reply, grieving).unwrap();
            assert_eq!(
                fired.map(|(i, _)| i),
                rule,
                "{reply:?}: {:?}",
                m.scores(reply, grieving).unwrap()
            );
        }
    }

    #[test]
    fn messages_are_cleaned() {
        assert_eq!(clean_message("User: \"hey there\"\nMargot: hi", "Margot"), "hey there");
        assert_eq!(clean_message("Margot: so what now", "Margot"), "so what now");
        assert_eq!(clean_message("  \n ", "Margot"), "…");
    }
}
