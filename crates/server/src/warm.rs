//! Warm personas: at start-up each shipped persona's opening (its system prompt and greeting,
//! which every conversation with it shares) is read once into the generator's prefix cache, so
//! the first person to write to a persona does not wait for it to be read.
//!
//! It runs in the background after the server listens, one persona at a time, each holding a
//! generation slot like a reply (a person who writes meanwhile waits for at most one warm-up,
//! a few seconds, instead of for all of them), and stops at shutdown. Memory stays bounded by
//! the engine's prefix cache, which keeps a fixed number of entries and evicts the oldest
//! (`--prefix-cache`, 16 by default; one entry per persona here). A backend without a prefix
//! cache gains nothing and loses one token's work per persona.

use std::time::Instant;

use futures::StreamExt;
use rapport_core::GenerationEvent;

use crate::state::AppState;

/// Warms every shipped persona, in the background; logs each and the total.
pub fn spawn(app: &AppState) -> tokio::task::JoinHandle<()> {
    let app = app.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let ids: Vec<String> = app.personas.shipped().map(|p| p.id.clone()).collect();
        let mut warmed = 0;
        for id in &ids {
            if *app.shutdown.borrow() {
                return;
            }
            match warm(&app, id).await {
                Ok((ms, tokens)) => {
                    warmed += 1;
                    app.metrics.seconds(
                        "rapport_warm_up_seconds",
                        &[("persona", id)],
                        ms as f64 / 1000.0,
                    );
                    tracing::info!(persona = %id, ms, prompt_tokens = ?tokens, "warmed the persona's opening into the prefix cache");
                }
                Err(e) => {
                    tracing::warn!(persona = %id, error = %e, "could not warm the persona; its first conversation reads it cold")
                }
            }
        }
        tracing::info!(
            personas = warmed,
            of = ids.len(),
            ms = started.elapsed().as_millis() as u64,
            "personas warmed"
        );
    })
}

/// One persona: (ms, prompt tokens the backend counted).
async fn warm(app: &AppState, id: &str) -> Result<(u64, Option<u32>), String> {
    let pipeline = app.personas.pipeline(&app.store, id).await.map_err(|e| e.message)?;
    let request =
        pipeline.warm_up_request(chrono::Utc::now().fixed_offset()).map_err(|e| e.to_string())?;
    let _slot = app.slots.clone().acquire_owned().await.expect("slots are never closed");
    let started = Instant::now();
    let mut stream = app.generator.generate(request).await.map_err(|e| e.to_string())?;
    let mut tokens = None;
    while let Some(event) = stream.next().await {
        if let GenerationEvent::Done(summary) = event.map_err(|e| e.to_string())? {
            tokens = Some(summary.usage.prompt_tokens);
        }
    }
    Ok((started.elapsed().as_millis() as u64, tokens))
}
