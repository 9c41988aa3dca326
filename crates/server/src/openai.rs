//! `POST /v1/chat/completions` (streaming and not) and `GET /v1/models`, OpenAI's wire format.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use rapport_core::{
    collect_completion, ChatMessage, DryParams, GenerationError, GenerationEvent,
    GenerationRequest, Generator, Role, SamplingParams, StopReason, TokenUsage,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// What the OpenAI router serves.
#[derive(Clone)]
pub struct OpenAiState {
    generator: Arc<dyn Generator>,
    model_id: String,
    defaults: SamplingParams,
    default_system: String,
}

impl OpenAiState {
    /// Serves `generator` under the model id `model_id`; fields a request leaves out take their
    /// values from `defaults`.
    pub fn new(
        generator: Arc<dyn Generator>,
        model_id: impl Into<String>,
        defaults: SamplingParams,
    ) -> Self {
        Self {
            generator,
            model_id: model_id.into(),
            defaults,
            // Some chat templates (Qwen2.5's) insert a vendor identity when no system message is
            // sent; a neutral one keeps clients that send none from getting it.
            default_system: "You are a helpful assistant.".into(),
        }
    }
}

/// The router: `/v1/chat/completions` and `/v1/models`.
pub fn router(state: OpenAiState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .with_state(state)
}

/// An error as OpenAI clients expect it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
        }
    }
}

impl From<GenerationError> for ApiError {
    fn from(e: GenerationError) -> Self {
        let status = match &e {
            GenerationError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            GenerationError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GenerationError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self { status, kind: e.kind(), message: e.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": {"message": self.message, "type": self.kind}})))
            .into_response()
    }
}

#[derive(Deserialize)]
pub(crate) struct WireMessage {
    pub(crate) role: String,
    pub(crate) content: Value,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct WireStreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct ChatCompletionRequest {
    model: Option<String>,
    messages: Vec<WireMessage>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<WireStreamOptions>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<Stop>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    dry_multiplier: Option<f32>,
    dry_base: Option<f32>,
    dry_allowed_length: Option<usize>,
    n: Option<u32>,
}

/// Text content: a string, or OpenAI's list of `{"type":"text","text":…}` parts.
pub(crate) fn content_text(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str))
                {
                    (Some("text"), Some(t)) => Ok(t),
                    _ => Err(ApiError::invalid("only text content parts are supported")),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join("")),
        Value::Null => Ok(String::new()),
        _ => Err(ApiError::invalid("message content must be a string or a list of text parts")),
    }
}

impl ChatCompletionRequest {
    fn into_generation(
        self,
        state: &OpenAiState,
    ) -> Result<(GenerationRequest, bool, bool), ApiError> {
        if let Some(model) = &self.model {
            if model != &state.model_id {
                return Err(ApiError {
                    status: StatusCode::NOT_FOUND,
                    kind: "model_not_found",
                    message: format!(
                        "model '{model}' is not served here; this server serves '{}'",
                        state.model_id
                    ),
                });
            }
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("only n = 1 is supported"));
        }
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        for m in &self.messages {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => return Err(ApiError::invalid(format!("unsupported role '{other}'"))),
            };
            messages.push(ChatMessage { role, content: content_text(&m.content)? });
        }
        if messages.first().map(|m| m.role) != Some(Role::System) {
            messages.insert(0, ChatMessage::system(state.default_system.clone()));
        }
        let d = &state.defaults;
        let dry = match self.dry_multiplier {
            Some(m) if m <= 0.0 => None,
            Some(m) => Some(DryParams {
                multiplier: m,
                base: self.dry_base.unwrap_or(1.75),
                allowed_length: self.dry_allowed_length.unwrap_or(2),
            }),
            None => d.dry.clone(),
        };
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.or(d.top_p),
            top_k: self.top_k.or(d.top_k),
            min_p: self.min_p.or(d.min_p),
            repetition_penalty: self.repetition_penalty.or(d.repetition_penalty),
            frequency_penalty: self.frequency_penalty.or(d.frequency_penalty),
            presence_penalty: self.presence_penalty.or(d.presence_penalty),
            dry,
            max_tokens: self.max_completion_tokens.or(self.max_tokens).unwrap_or(d.max_tokens),
            stop: match self.stop {
                None => d.stop.clone(),
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(v)) => v,
            },
            seed: self.seed.or(d.seed),
        };
        let include_usage = self.stream_options.is_some_and(|o| o.include_usage);
        Ok((GenerationRequest::new(messages, sampling)?, self.stream, include_usage))
    }
}

/// OpenAI's usage object, with the prompt tokens the backend's prefix cache served where
/// OpenAI puts them (`prompt_tokens_details.cached_tokens`).
fn usage_json(u: &TokenUsage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
           "total_tokens": u.prompt_tokens + u.completion_tokens,
           "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens}})
}

pub(crate) fn finish_reason(reason: &StopReason) -> &str {
    match reason {
        StopReason::Stop => "stop",
        StopReason::Length => "length",
        StopReason::Cancelled => "canceled",
        StopReason::Other(s) => s,
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn chat_completions(
    State(state): State<OpenAiState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body: ChatCompletionRequest = crate::body::json_object(body).map_err(|e| ApiError {
        status: e.status,
        kind: "invalid_request_error",
        message: e.message,
    })?;
    let (request, stream, include_usage) = body.into_generation(&state)?;
    let id = format!("chatcmpl-{:x}", rand_id());
    let created = now_secs();
    let model = state.model_id.clone();
    let events = state.generator.generate(request).await?;

    if !stream {
        let done = collect_completion(events, |_| {}).await?;
        let u = done.summary.usage;
        return Ok(Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                         "finish_reason": finish_reason(&done.summary.stop_reason)}],
            "usage": usage_json(&u),
        }))
        .into_response());
    }

    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let first = chunk.clone()(json!({"role": "assistant", "content": ""}), None);
    let sse = futures::stream::once(async move { first })
        .chain(events.flat_map(move |event| {
            let out: Vec<Value> = match event {
                Ok(GenerationEvent::Chunk(text)) => vec![chunk(json!({"content": text}), None)],
                Ok(GenerationEvent::Done(summary)) => {
                    let mut v = vec![chunk(json!({}), Some(finish_reason(&summary.stop_reason)))];
                    if include_usage {
                        let u = summary.usage;
                        let mut usage = chunk(json!({}), None);
                        usage["choices"] = json!([]);
                        usage["usage"] = usage_json(&u);
                        v.push(usage);
                    }
                    v
                }
                // Headers are sent already; the error travels as an event, as OpenAI's does.
                Err(e) => vec![json!({"error": {"message": e.to_string(), "type": e.kind()}})],
            };
            futures::stream::iter(out)
        }))
        .map(|v| Ok::<_, Infallible>(Event::default().data(v.to_string())))
        .chain(futures::stream::once(async { Ok(Event::default().data("[DONE]")) }));
    Ok(Sse::new(sse).keep_alive(KeepAlive::default()).into_response())
}

async fn models(State(state): State<OpenAiState>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": state.model_id, "object": "model", "created": 0, "owned_by": "rapport"}]}),
    )
}

/// A request id: unique enough to tell requests apart in logs, with no RNG dependency.
pub(crate) fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> OpenAiState {
        struct Never;
        #[async_trait::async_trait]
        impl Generator for Never {
            fn name(&self) -> &str {
                "never"
            }
            async fn generate(
                &self,
                _: GenerationRequest,
            ) -> Result<rapport_core::TextStream, GenerationError> {
                Err(GenerationError::Unavailable("not in this test".into()))
            }
        }
        OpenAiState::new(Arc::new(Never), "m", SamplingParams::default())
    }

    fn parse(v: Value) -> Result<(GenerationRequest, bool, bool), ApiError> {
        serde_json::from_value::<ChatCompletionRequest>(v).unwrap().into_generation(&state())
    }

    #[test]
    fn a_missing_system_message_gets_a_neutral_one() {
        let (req, stream, usage) =
            parse(json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!(req.messages()[0].role, Role::System);
        assert_eq!(req.messages()[1].content, "hi");
        assert!(!stream && !usage);
    }

    #[test]
    fn fields_override_defaults_and_stop_accepts_a_string() {
        let (req, _, _) = parse(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                                       "temperature": 0, "max_tokens": 5, "stop": "X", "dry_multiplier": 0}))
        .unwrap();
        assert_eq!(req.messages()[1].content, "ab");
        assert_eq!(req.sampling().temperature, 0.0);
        assert_eq!(req.sampling().max_tokens, 5);
        assert_eq!(req.sampling().stop, ["X"]);
        assert!(req.sampling().dry.is_none());
    }

    #[test]
    fn bad_requests_are_refused_with_reasons() {
        let e = parse(json!({"model": "other", "messages": [{"role": "user", "content": "hi"}]}))
            .unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let e = parse(json!({"messages": [{"role": "tool", "content": "hi"}]})).unwrap_err();
        assert!(e.message.contains("tool"));
        let e = parse(json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}))
            .unwrap_err();
        assert!(e.message.contains("temperature"));
        let e =
            parse(json!({"messages": [{"role": "user", "content": "hi"}], "n": 2})).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
