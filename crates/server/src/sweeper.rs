//! Expiry: a background task that deletes idle sessions, greeting-only conversations and
//! spent rate-limit rows ([`rapport_store::Store::expire`]).
//!
//! It runs beside the requests, never in them: each sweep is a few `DELETE`s, and on SQLite
//! they take the writer lock only as long as each statement. Every process of a PostgreSQL
//! deployment sweeps; the deletes are idempotent, so two at once only repeat each other.

use std::time::Duration;

use crate::state::AppState;

/// Sweeps every `config.expiry.sweep_every` until shutdown; the first sweep runs a minute after
/// start, out of the way of the start-up's own work.
pub fn spawn(app: &AppState) -> tokio::task::JoinHandle<()> {
    let app = app.clone();
    tokio::spawn(async move {
        let mut shutdown = app.shutdown.subscribe();
        let mut wait = Duration::from_secs(60).min(app.config.expiry.sweep_every);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = app.config.expiry.sweep_every;
            sweep(&app).await;
        }
    })
}

/// One sweep, logged and counted.
pub async fn sweep(app: &AppState) {
    let started = std::time::Instant::now();
    match app.store.expire(&app.config.expiry.policy()).await {
        Ok(gone) => {
            for (what, n) in [
                ("sessions", gone.sessions),
                ("conversations", gone.conversations),
                ("rate_limits", gone.rate_limits),
            ] {
                if n > 0 {
                    app.metrics.count("rapport_expired_total", &[("what", what)], n);
                }
            }
            tracing::info!(
                sessions = gone.sessions,
                conversations = gone.conversations,
                rate_limits = gone.rate_limits,
                ms = started.elapsed().as_millis() as u64,
                "expired idle data"
            );
        }
        Err(e) => {
            app.metrics.count("rapport_errors_total", &[("kind", "sweep")], 1);
            tracing::warn!(error = %e, "expiry sweep failed; trying again at the next");
        }
    }
}
