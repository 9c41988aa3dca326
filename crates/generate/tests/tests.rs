//! Integration tests of both backends.
//!
//! The embedded backend runs the real SmolLM2 (pulled into the user's cache on first use, as
//! `rapport models pull smollm2-135m` does). The OpenAI-compatible client is tested against
//! Rapport's own OpenAI-compatible server in front of that same model, and against a small
//! server that injects the faults a real one cannot produce on demand.

mod embedded;
mod remote;

use std::sync::OnceLock;

use rapport_core::{ChatMessage, GenerationRequest, SamplingParams};
use rapport_generate::{EmbeddedOptions, MistralRsGenerator};
use rapport_models::{preset, ModelCache, Puller};
use tokio::runtime::Runtime;

/// One runtime for the whole binary: the model is loaded once and its engine's tasks must
/// outlive any single test.
pub fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap())
}

/// The real SmolLM2, loaded once (inside [`rt`], whose tasks serve it).
pub async fn smollm2() -> MistralRsGenerator {
    static MODEL: tokio::sync::OnceCell<MistralRsGenerator> = tokio::sync::OnceCell::const_new();
    MODEL
        .get_or_init(|| async {
            let cache = ModelCache::default_location().unwrap();
            let installed =
                Puller::default().quiet().pull(&cache, &preset("smollm2-135m").unwrap()).unwrap();
            MistralRsGenerator::load(&installed.primary, "smollm2-135m", EmbeddedOptions::default())
                .await
                .unwrap()
        })
        .await
        .clone()
}

/// Model tests take turns: mistral.rs batches concurrent requests, and a different batch
/// composition changes the arithmetic enough to change a greedy reply. Tests that compare two
/// greedy replies need the engine to themselves.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

pub fn request(user: &str, sampling: SamplingParams) -> GenerationRequest {
    GenerationRequest::new(
        vec![
            ChatMessage::system("You are a helpful assistant. Answer briefly."),
            ChatMessage::user(user),
        ],
        sampling,
    )
    .unwrap()
}
