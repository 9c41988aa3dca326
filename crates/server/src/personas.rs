//! The personas the app offers — the shipped ones and the Character Cards each session
//! imported — and one ready [`Pipeline`] per persona, built on first use.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use rapport_eval::scenario::{ScenarioLibrary, Skill};
use rapport_eval::trust::Agreement;
use rapport_nlu::emotion::EmotionClassifier;
use rapport_pipeline::choose::DraftChooser;
use rapport_pipeline::prompt::Prompts;
use rapport_pipeline::{Persona, PersonaLibrary, Pipeline, PipelineConfig, PipelineError};
use rapport_store::{SessionId, Store, StoredPersona};
use serde::Serialize;

use crate::error::{AppError, AppResult};

/// What the persona picker shows.
#[derive(Debug, Clone, Serialize)]
pub struct PersonaSummary {
    /// The id (also the OpenAI `model` name of shipped personas).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Who they are.
    pub bio: String,
    /// How they open.
    pub greeting: String,
    /// Whether the persona plays the secret game.
    pub has_secret: bool,
    /// Imported by this session (not shipped).
    pub imported: bool,
}

impl PersonaSummary {
    fn of(persona: &Persona, imported: bool) -> Self {
        Self {
            id: persona.id.clone(),
            name: persona.name.clone(),
            bio: persona.bio.clone(),
            greeting: persona.greeting().to_string(),
            has_secret: persona.secret.is_some(),
            imported,
        }
    }
}

/// Personas and their pipelines.
pub struct Personas {
    shipped: PersonaLibrary,
    nlu: Option<Arc<EmotionClassifier>>,
    prompts: Arc<Prompts>,
    config: PipelineConfig,
    pipelines: Mutex<HashMap<String, Arc<Pipeline>>>,
    scenarios: ScenarioLibrary,
    trust: Arc<CoachTrust>,
    /// Picks among the drafts when `config.best_of` asks for several.
    chooser: Option<Arc<dyn DraftChooser>>,
}

/// How far the coach's scores agree with a person's labels, measured once: in the background
/// from start-up (about a second of sentence encodings that the port need not wait for), or by
/// the first reader, who waits for a measurement already under way rather than starting
/// another.
pub struct CoachTrust {
    measured: OnceLock<BTreeMap<Skill, Agreement>>,
    measure: Mutex<Option<Measure>>,
}

type Measure = Box<dyn FnOnce() -> BTreeMap<Skill, Agreement> + Send>;

impl CoachTrust {
    /// Nothing to measure: no labels were shipped.
    pub fn none() -> Self {
        Self::measured_by(BTreeMap::new)
    }

    /// Measured by `measure`, when first asked for.
    pub fn measured_by(
        measure: impl FnOnce() -> BTreeMap<Skill, Agreement> + Send + 'static,
    ) -> Self {
        Self { measured: OnceLock::new(), measure: Mutex::new(Some(Box::new(measure))) }
    }

    /// The agreement by skill; measures it (or waits for the measurement under way) first.
    pub fn get(&self) -> &BTreeMap<Skill, Agreement> {
        self.measured.get_or_init(|| {
            let measure = self.measure.lock().unwrap_or_else(|e| e.into_inner()).take();
            measure.map(|m| m()).unwrap_or_default()
        })
    }
}

impl Personas {
    /// The shipped `library`, run with `nlu`, `prompts` and `config`.
    pub fn new(
        shipped: PersonaLibrary,
        nlu: Option<Arc<EmotionClassifier>>,
        prompts: Arc<Prompts>,
        config: PipelineConfig,
    ) -> Self {
        Self {
            shipped,
            nlu,
            prompts,
            config,
            pipelines: Mutex::new(HashMap::new()),
            scenarios: ScenarioLibrary::default(),
            trust: Arc::new(CoachTrust::none()),
            chooser: None,
        }
    }

    /// Lets `chooser` pick among the drafts of every persona's best-of-N turns.
    pub fn with_chooser(mut self, chooser: Arc<dyn DraftChooser>) -> Self {
        self.chooser = Some(chooser);
        self
    }

    /// How far each of the coach's skill scores agrees with a person's reading
    /// ([`rapport_eval::trust`]), shown beside the scores.
    /// Measured in the background from now on (see [`CoachTrust`]).
    pub fn with_coach_trust(mut self, trust: CoachTrust) -> Self {
        let trust = Arc::new(trust);
        let background = trust.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let skills = background.get().len();
            tracing::info!(skills, secs = started.elapsed().as_secs_f64(), "coach trust measured");
        });
        self.trust = trust;
        self
    }

    /// The coach's measured agreement, by skill (empty when no labels were shipped).
    pub fn coach_trust(&self) -> &BTreeMap<Skill, Agreement> {
        self.trust.get()
    }

    /// Offers `scenarios` (checked against the shipped personas when they were loaded): each
    /// level's persona is derived from a shipped one, under the id
    /// [`rapport_eval::scenario::Scenario::persona_id`].
    pub fn with_scenarios(mut self, scenarios: ScenarioLibrary) -> Self {
        self.scenarios = scenarios;
        self
    }

    /// The practice scenarios.
    pub fn scenarios(&self) -> &ScenarioLibrary {
        &self.scenarios
    }

    /// The name the persona of `id` goes by, for shipped personas and scenarios (imported ones:
    /// `None`; reading them needs the store).
    pub fn display_name(&self, id: &str) -> Option<String> {
        self.shipped.get(self.scenarios.base_persona(id)).ok().map(|p| p.name.clone())
    }

    /// The shipped personas.
    pub fn shipped(&self) -> impl Iterator<Item = &Persona> {
        self.shipped.iter()
    }

    /// What `session` may pick: the shipped personas, then its own imports.
    pub async fn visible_to(
        &self,
        store: &Store,
        session: &SessionId,
    ) -> AppResult<Vec<PersonaSummary>> {
        let mut out: Vec<PersonaSummary> =
            self.shipped.iter().map(|p| PersonaSummary::of(p, false)).collect();
        for stored in store.personas_of(session).await? {
            out.push(PersonaSummary::of(&parse(&stored)?, true));
        }
        Ok(out)
    }

    /// The persona `id` if `session` may use it (`None` for workers, which act for whoever
    /// wrote the message).
    pub async fn persona(
        &self,
        store: &Store,
        id: &str,
        session: Option<&SessionId>,
    ) -> AppResult<Persona> {
        if let Ok(p) = self.shipped.get(id) {
            return Ok(p.clone());
        }
        // A scenario's persona is derived from a shipped one: anyone may play it.
        if let Some((scenario, level)) = self.scenarios.of_persona_id(id) {
            let base = self.shipped.get(&scenario.persona)?;
            return scenario.persona(base, level).map_err(AppError::internal);
        }
        match store.imported_persona(id).await? {
            Some((owner, stored)) if session.is_none_or(|s| *s == owner) => parse(&stored),
            _ => Err(AppError::not_found("persona")),
        }
    }

    /// The ready pipeline of persona `id`. Building one embeds its examples with the sentence
    /// model (tens of ms), so it is done once and kept.
    pub async fn pipeline(&self, store: &Store, id: &str) -> AppResult<Arc<Pipeline>> {
        if let Some(p) = self.pipelines.lock().expect("pipelines lock").get(id) {
            return Ok(p.clone());
        }
        let persona = self.persona(store, id, None).await?;
        let (nlu, prompts, config) = (self.nlu.clone(), self.prompts.clone(), self.config.clone());
        let mut pipeline =
            tokio::task::spawn_blocking(move || Pipeline::new(persona, nlu, prompts, config))
                .await
                .map_err(AppError::internal)??;
        if let Some(chooser) = &self.chooser {
            pipeline = pipeline.with_chooser(chooser.clone());
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines.lock().expect("pipelines lock").insert(id.to_string(), pipeline.clone());
        Ok(pipeline)
    }

    /// Imports a Character Card (JSON or PNG bytes) for `session`, under a fresh id so that it
    /// can never shadow a shipped persona or another session's import.
    pub async fn import(
        &self,
        store: &Store,
        session: &SessionId,
        bytes: &[u8],
    ) -> AppResult<(PersonaSummary, Vec<String>)> {
        let imported = rapport_pipeline::card::import_bytes(bytes)?;
        let mut persona = imported.persona;
        persona.id =
            format!("{}-{}", rapport_pipeline::persona::slug(&persona.name), &rand_hex()[..8]);
        persona.validate()?;
        store
            .save_persona(
                session,
                &StoredPersona {
                    id: persona.id.clone(),
                    name: persona.name.clone(),
                    body: persona.to_toml(),
                },
            )
            .await?;
        Ok((PersonaSummary::of(&persona, true), imported.warnings))
    }
}

fn parse(stored: &StoredPersona) -> AppResult<Persona> {
    Persona::from_toml(&stored.body, &stored.id).map_err(|e: PipelineError| {
        AppError::internal(format!("stored persona {}: {e}", stored.id))
    })
}

fn rand_hex() -> String {
    use rand::Rng;
    format!("{:016x}", rand::rng().random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_coach_trust_is_measured_once_and_readers_wait_for_it() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let trust = Arc::new(CoachTrust::measured_by(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            // Long enough that the readers below arrive while it runs.
            std::thread::sleep(std::time::Duration::from_millis(200));
            [(Skill::Listening, sample())].into()
        }));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let t = trust.clone();
                std::thread::spawn(move || t.get().len())
            })
            .collect();
        for r in readers {
            assert_eq!(r.join().unwrap(), 1, "every reader sees the measurement");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "measured once");
        assert!(CoachTrust::none().get().is_empty());
    }

    fn sample() -> Agreement {
        Agreement {
            detector: "d".into(),
            skill: Some(Skill::Listening),
            n: 1,
            positives: 1,
            agreement: 1.0,
            agreement_ci: (1.0, 1.0),
            kappa: None,
            kappa_ci: None,
            confusion: [1, 0, 0, 0],
        }
    }
}
