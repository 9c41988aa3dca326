//! Every error the app returns, as one JSON shape with the status chosen in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rapport_pipeline::PipelineError;
use rapport_store::StoreError;
use serde_json::json;

/// An error on its way to the client: `{"error": {"message", "type"}}`.
#[derive(Debug)]
pub struct AppError {
    /// The status.
    pub status: StatusCode,
    /// A stable tag clients can branch on.
    pub kind: &'static str,
    /// What happened and what to do, for people.
    pub message: String,
    /// Seconds to wait before trying again (429).
    pub retry_after: Option<u64>,
}

impl AppError {
    /// A status, a tag and a message.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), retry_after: None }
    }

    /// 422: the request is well-formed but its content is refused.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", message)
    }

    /// 429 with `Retry-After`: `what` ("messages") came faster than `per_minute`.
    pub fn rate_limited(wait: std::time::Duration, what: &str, per_minute: u32) -> Self {
        let seconds = wait.as_secs_f64().ceil() as u64;
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many {what}: wait {seconds} s (the limit is {per_minute} per minute)"),
        );
        e.retry_after = Some(seconds.max(1));
        e
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 404.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    /// 500, logged here so that the client's copy can stay short.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!(%message, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "something went wrong on the server; the request was not completed",
        )
    }
}

/// A body that is not the JSON object a route takes: 400 bad syntax, 415 wrong content type,
/// 422 wrong shape, 413 too large.
impl From<crate::body::BodyError> for AppError {
    fn from(e: crate::body::BodyError) -> Self {
        let kind = if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "invalid_request_error"
        };
        AppError::new(e.status, kind, e.message)
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => AppError::not_found(what),
            StoreError::Conflict(message) => {
                AppError::new(StatusCode::CONFLICT, "conflict", message)
            }
            // Routes that queue map this with a wait estimate (`door::queued`); this is the rest.
            StoreError::QueueFull(full) => {
                AppError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_full", full.to_string())
            }
            StoreError::Config(_) | StoreError::Corrupt(_) | StoreError::Database(_) => {
                AppError::internal(e)
            }
        }
    }
}

impl From<PipelineError> for AppError {
    fn from(e: PipelineError) -> Self {
        match &e {
            PipelineError::UnknownPersona { .. } => {
                AppError::new(StatusCode::NOT_FOUND, "model_not_found", e.to_string())
            }
            PipelineError::PromptTooLong { .. }
            | PipelineError::Card(_)
            | PipelineError::InvalidPersona(_)
            | PipelineError::Persona { .. } => AppError::unprocessable(e.to_string()),
            _ => AppError::internal(e),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, Json(json!({"error": {"message": self.message, "type": self.kind}})))
                .into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// What handlers return.
pub type AppResult<T> = Result<T, AppError>;
