//! Shared fixtures: one runtime, the real models loaded once, the shipped personas.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset};
use rapport_core::{
    GenerationError, GenerationEvent, GenerationRequest, GenerationSummary, Generator, StopReason,
    TextStream, Timings, TokenUsage,
};
use rapport_generate::{EmbeddedOptions, MistralRsGenerator};
use rapport_models::{preset, ModelCache, Puller};
use rapport_nlu::emotion::{EmotionClassifier, EmotionHead};
use rapport_nlu::SentenceEncoder;
use rapport_pipeline::prompt::Prompts;
use rapport_pipeline::{Persona, PersonaLibrary, Pipeline, PipelineConfig};
use tokio::runtime::Runtime;

/// The repository's `datasets/`. Read from the environment cargo sets when it runs the test,
/// not baked in at compile time: a test binary reused from a build in another checkout of the
/// same tree (same sources, older mtimes) would otherwise read that checkout's files.
pub fn datasets() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("../../datasets")
}

pub fn personas() -> &'static PersonaLibrary {
    static LIB: OnceLock<PersonaLibrary> = OnceLock::new();
    LIB.get_or_init(|| {
        PersonaLibrary::load_dir(&datasets().join("personas")).expect("the shipped personas load")
    })
}

pub fn persona(id: &str) -> Persona {
    personas().get(id).unwrap().clone()
}

/// One runtime for the binary: the model's engine tasks must outlive any single test.
pub fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap())
}

/// The real emotion model: MiniLM from the cache (pulled on first use) and the shipped head.
pub fn classifier() -> Arc<EmotionClassifier> {
    static NLU: OnceLock<Arc<EmotionClassifier>> = OnceLock::new();
    NLU.get_or_init(|| {
        let cache = ModelCache::default_location().unwrap();
        let dir =
            Puller::default().quiet().pull(&cache, &preset("minilm-l6").unwrap()).unwrap().dir;
        let head = EmotionHead::load(&datasets().join("emotion/goemotions-tuned")).unwrap();
        Arc::new(EmotionClassifier::new(SentenceEncoder::load(&dir).unwrap(), head).unwrap())
    })
    .clone()
}

/// A SmolLM2 engine of the caller's own, with an empty prefix cache (a test about what the
/// cache holds cannot share [`smollm2`]'s, which every other test fills).
pub async fn fresh_smollm2() -> MistralRsGenerator {
    let cache = ModelCache::default_location().unwrap();
    let installed =
        Puller::default().quiet().pull(&cache, &preset("smollm2-135m").unwrap()).unwrap();
    MistralRsGenerator::load(&installed.primary, "smollm2-135m", EmbeddedOptions::default())
        .await
        .unwrap()
}

/// The real SmolLM2, loaded once inside [`rt`].
pub async fn smollm2() -> MistralRsGenerator {
    static MODEL: tokio::sync::OnceCell<MistralRsGenerator> = tokio::sync::OnceCell::const_new();
    MODEL.get_or_init(fresh_smollm2).await.clone()
}

/// Model tests take turns (batch composition changes greedy output).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// The SmolLM2 preset's sampling, greedy so that runs repeat.
pub fn greedy_config() -> PipelineConfig {
    let mut sampling = preset("smollm2-135m").unwrap().sampling.clone().unwrap_or_default();
    sampling.temperature = 0.0;
    sampling.top_p = None;
    sampling.top_k = None;
    sampling.min_p = None;
    sampling.seed = Some(7);
    sampling.max_tokens = 80;
    PipelineConfig {
        sampling,
        backoff: std::time::Duration::from_millis(10),
        ..PipelineConfig::default()
    }
}

pub fn pipeline(id: &str, nlu: bool, config: PipelineConfig) -> Pipeline {
    Pipeline::new(persona(id), nlu.then(classifier), Arc::new(Prompts::embedded()), config).unwrap()
}

pub fn at(minute: u32) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(&format!("2026-11-21T20:{:02}:00+01:00", minute % 60)).unwrap()
}

/// What a scripted generator does on one call.
#[derive(Clone)]
pub enum Script {
    /// Fail before the first token.
    Fail(GenerationError),
    /// Stream this text in word-sized pieces, then finish.
    Say(&'static str),
    /// Hand the request to the real generator.
    Real,
}

/// Fault injection around a real generator: a scripted sequence of failures and canned drafts
/// (the real model cannot be made to time out or to break character on demand), then the real
/// model. Records every request it was given.
pub struct Scripted<G> {
    pub real: G,
    pub script: Mutex<Vec<Script>>,
    pub requests: Mutex<Vec<GenerationRequest>>,
}

impl<G: Generator> Scripted<G> {
    pub fn new(real: G, script: Vec<Script>) -> Self {
        Self { real, script: Mutex::new(script), requests: Mutex::new(Vec::new()) }
    }
}

#[async_trait]
impl<G: Generator> Generator for Scripted<G> {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn generate(&self, request: GenerationRequest) -> Result<TextStream, GenerationError> {
        self.requests.lock().unwrap().push(request.clone());
        let step = {
            let mut s = self.script.lock().unwrap();
            if s.is_empty() {
                Script::Real
            } else {
                s.remove(0)
            }
        };
        match step {
            Script::Fail(e) => Err(e),
            Script::Real => self.real.generate(request).await,
            Script::Say(text) => {
                let mut events: Vec<Result<GenerationEvent, GenerationError>> = text
                    .split_inclusive(' ')
                    .map(|w| Ok(GenerationEvent::Chunk(w.to_string())))
                    .collect();
                events.push(Ok(GenerationEvent::Done(GenerationSummary {
                    stop_reason: StopReason::Stop,
                    usage: TokenUsage {
                        completion_tokens: text.split_whitespace().count() as u32,
                        ..TokenUsage::default()
                    },
                    timings: Timings::default(),
                    logprobs: Vec::new(),
                })));
                Ok(Box::pin(futures::stream::iter(events)))
            }
        }
    }
}
