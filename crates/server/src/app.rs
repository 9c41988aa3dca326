//! The router, the middleware around it, and `serve`: the pieces put together.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tower_http::timeout::TimeoutLayer;

use crate::error::AppError;
use crate::state::AppState;
use crate::{api, client, companion, memory, page, practice, session, sweeper, warm, worker};

/// Largest Character Card upload (PNG cards carry a picture).
const MAX_CARD_BYTES: usize = 8 * 1024 * 1024;

/// Every route. Streams (SSE and streamed completions) are outside the request time limit.
pub fn router(app: AppState) -> Router {
    let timeout =
        TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, app.config.request_timeout);
    let with_session = Router::new()
        .route("/", get(page::index))
        .route("/api/session", get(api::session))
        .route("/api/personas", get(api::personas))
        .route(
            "/api/personas/import",
            post(api::import_persona).layer(DefaultBodyLimit::max(MAX_CARD_BYTES)),
        )
        .route("/api/conversations", get(api::list).post(api::create))
        .route("/api/conversations/{id}", get(api::get).delete(api::delete))
        .route("/api/conversations/{id}/export", get(api::export))
        .route("/api/conversations/{id}/feedback", get(api::feedback))
        .route("/api/conversations/{id}/messages", post(api::post_message))
        .route("/api/conversations/{id}/draft", post(api::post_draft))
        .route("/api/conversations/{id}/regenerate", post(api::regenerate))
        .route("/api/conversations/{id}/alternatives", post(api::choose))
        .route("/api/conversations/{id}/jobs/{job}", get(api::job))
        .route("/api/conversations/{id}/messages/{message}/trace", get(api::trace))
        .route("/api/conversations/{id}/messages/{message}/rewrite", post(practice::rewrite))
        .route("/api/conversations/{id}/branch", post(practice::branch))
        .route("/api/scenarios", get(practice::scenarios))
        .route("/api/progress", get(practice::progress).delete(practice::delete_progress))
        .route("/api/memories", get(memory::list).delete(memory::forget_persona))
        .route("/api/memories/{id}", put(memory::correct).delete(memory::forget))
        .layer(timeout)
        .route("/api/conversations/{id}/events", get(api::events))
        .route_layer(from_fn_with_state(app.clone(), session::sessions));
    let open = Router::new()
        .route("/static/app.js", get(page::app_js))
        .route("/static/app.css", get(page::app_css))
        .route("/api/openapi.json", get(page::openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(companion::models))
        .layer(timeout)
        .route("/v1/chat/completions", post(companion::chat_completions));
    with_session
        .merge(open)
        .fallback(|| async { AppError::not_found("route") })
        .layer(DefaultBodyLimit::max(app.config.max_body_bytes))
        .layer(from_fn(json_errors))
        .layer(from_fn_with_state(app.clone(), client::identify))
        .layer(from_fn_with_state(app.clone(), measure))
        .with_state(app)
}

/// Counts and times every request by its route pattern (not its URL, which holds ids).
async fn measure(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    app.metrics.count(
        "rapport_http_requests_total",
        &[("route", &route), ("method", &method), ("status", &status)],
        1,
    );
    app.metrics.seconds(
        "rapport_http_request_seconds",
        &[("route", &route)],
        started.elapsed().as_secs_f64(),
    );
    if response.status().is_server_error() {
        app.metrics.count("rapport_errors_total", &[("kind", "http_5xx")], 1);
    }
    response
}

/// Rejections that axum and tower answer in plain text (body too large, timeout, wrong method)
/// get the same JSON shape as every other error.
async fn json_errors(request: Request, next: Next) -> Response {
    let limit = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str() == "/api/personas/import");
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(response.status().is_client_error() || response.status().is_server_error()) {
        return response;
    }
    let (kind, message) = match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            if limit {
                format!("the card is larger than {} MiB", MAX_CARD_BYTES >> 20)
            } else {
                "the request body is too large".to_string()
            },
        ),
        StatusCode::REQUEST_TIMEOUT => {
            ("timeout", "the request took too long and was stopped".to_string())
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", "this route does not take that method".to_string())
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send JSON with 'Content-Type: application/json'".to_string(),
        ),
        status => ("error", status.canonical_reason().unwrap_or("error").to_lowercase()),
    };
    let mut rewritten = AppError::new(response.status(), kind, message).into_response();
    if let Some(v) = response.headers().get(header::RETRY_AFTER) {
        rewritten.headers_mut().insert(header::RETRY_AFTER, v.clone());
    }
    rewritten
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the database answers.
async fn readyz(State(app): State<AppState>) -> Response {
    match app.store.ping().await {
        Ok(()) => Json(json!({"ready": true})).into_response(),
        Err(e) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false, "error": e.to_string()})))
                .into_response()
        }
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    let (queued, running) = app.store.depth().await.unwrap_or((-1, -1));
    let text = app.metrics.render(&[
        ("rapport_queue_depth", vec![("state", "queued")], queued as f64),
        ("rapport_queue_depth", vec![("state", "running")], running as f64),
    ]);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// Serves `app` on `addr` with its workers until Ctrl-C or SIGTERM; then the workers put their
/// unfinished jobs back in the queue for the next process. Prints the address it listens on.
pub async fn serve(app: AppState, addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let mut workers = worker::spawn_all(&app);
    workers.push(sweeper::spawn(&app));
    if app.config.warm_personas {
        // Not waited for at shutdown: it stops between personas, and a warm-up cut short costs
        // nothing.
        warm::spawn(&app);
    }
    println!("listening on http://{local}");
    tracing::info!(%local, workers = workers.len() - 1, database = ?app.store.backend(), shared_limits = app.limits.is_shared(), "serving");
    let shutdown = app.shutdown.clone();
    // The peer's address is the client the limits follow (`client::identify`).
    axum::serve(listener, router(app).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            stop_signal().await;
            tracing::info!("shutting down: putting unfinished replies back in the queue");
            shutdown.send_replace(true);
        })
        .await?;
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
    }
    Ok(())
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
