//! The front door: what a request must pass before it costs the server anything it cannot
//! spare — the rate limits, the queue's bounds — and what a refused client is told.
//!
//! Every refusal is a 429 (this client asks too much) or a 503 (the server is full) with
//! `Retry-After` and a message that says how long, and is counted in
//! `rapport_rejections_total{reason}`, `reason` being the limit's stable tag.

use axum::http::StatusCode;
use rapport_store::{Admission, QueueFull, StoreError};

use crate::client::ClientAddress;
use crate::error::{AppError, AppResult};
use crate::limits::{Entered, Full, RateLimit, Scope};
use crate::state::AppState;

/// Takes one from `scope`'s limit for `key`, or refuses with 429.
pub async fn limit(app: &AppState, scope: Scope, key: &str) -> AppResult<()> {
    let rate = rate_of(app, scope);
    match app.limits.take(scope, key, rate).await? {
        Ok(()) => Ok(()),
        Err(wait) => {
            refused(app, scope.as_str());
            Err(AppError::rate_limited(wait, scope.what(), rate.per_minute))
        }
    }
}

fn rate_of(app: &AppState, scope: Scope) -> RateLimit {
    match scope {
        Scope::SessionMessages | Scope::ApiRequests => app.config.rate,
        Scope::ClientMessages => app.config.client_rate,
        Scope::ClientSessions => app.config.session_rate,
        Scope::ClientConversations => app.config.conversation_rate,
    }
}

/// A message's cost: one from its session's limit and one from its client's (a script that
/// drops its cookie gets a fresh session each time but stays one client).
pub async fn message_limits(
    app: &AppState,
    session: &rapport_store::SessionId,
    client: &ClientAddress,
) -> AppResult<()> {
    limit(app, Scope::SessionMessages, session.as_str()).await?;
    limit(app, Scope::ClientMessages, client.as_str()).await
}

/// A place among the model calls written while their caller waits, outside the queue (the
/// OpenAI route, the coach's rewrite): the queue's bounds apply to them in this process, held
/// until the call ends or the caller goes.
pub fn enter_in_flight(app: &AppState, client: &ClientAddress) -> AppResult<Entered> {
    app.in_flight
        .enter(
            client.as_str(),
            app.config.max_queued_per_client.max(1),
            app.config.max_queued.max(1),
        )
        .map_err(|full| in_flight_full(app, full))
}

/// The queue's bounds for a job of `client`.
pub fn admission(app: &AppState, client: &ClientAddress) -> Admission {
    Admission {
        client: client.as_str().to_string(),
        max_queued: app.config.max_queued as i64,
        max_per_client: app.config.max_queued_per_client as i64,
    }
}

/// A store result, with a full queue turned into its refusal.
pub async fn queued<T>(app: &AppState, result: Result<T, StoreError>) -> AppResult<T> {
    match result {
        Err(StoreError::QueueFull(full)) => Err(queue_full(app, full).await),
        other => Ok(other?),
    }
}

/// A full queue's refusal: how long until a place is likely free, from the recent time per job.
async fn queue_full(app: &AppState, full: QueueFull) -> AppError {
    let per_job = app.store.mean_job_ms().await.ok().flatten().unwrap_or(10_000.0) / 1000.0;
    let workers = app.config.workers.max(1) as f64;
    let (status, reason, seconds) = match full {
        // One of the client's own replies has to finish.
        QueueFull::Client { .. } => (StatusCode::TOO_MANY_REQUESTS, "client_queue_full", per_job),
        // A worker has to take one of the waiting jobs.
        QueueFull::Server { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "queue_full", per_job / workers)
        }
    };
    refused(app, reason);
    let seconds = seconds.ceil().clamp(1.0, 600.0) as u64;
    let message = format!("{full}; try again in about {seconds} s");
    let mut e = AppError::new(status, reason, message);
    e.retry_after = Some(seconds);
    e
}

/// The OpenAI route's in-flight bound refused.
pub fn in_flight_full(app: &AppState, full: Full) -> AppError {
    let (status, reason, message) = match full {
        Full::Client(n) => (
            StatusCode::TOO_MANY_REQUESTS,
            "client_queue_full",
            format!("this address already has {n} replies waiting or being written"),
        ),
        Full::Server(n) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            format!("the server is busy: {n} replies are already waiting"),
        ),
    };
    refused(app, reason);
    // No job times to go by here: the persona API's replies are written while the caller waits.
    let seconds = 10;
    let mut e = AppError::new(status, reason, format!("{message}; try again in about {seconds} s"));
    e.retry_after = Some(seconds);
    e
}

fn refused(app: &AppState, reason: &str) {
    app.metrics.count("rapport_rejections_total", &[("reason", reason)], 1);
}
