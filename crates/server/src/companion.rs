//! The OpenAI-compatible API with personas as models: `POST /v1/chat/completions` where
//! `model` names a shipped persona, and `GET /v1/models` listing them. SillyTavern, Open WebUI
//! or any OpenAI client can then chat with a persona through the whole pipeline.
//!
//! Such clients send the whole conversation each time and keep nothing here, so the pipeline's
//! state (stage, closeness, mood) is rebuilt by replaying steps 1–8 over the history; the
//! replies the client shows are taken as they are. Any of that history may be invented — nine
//! made-up exchanges of a perfect guest would otherwise walk the wedding host to her password —
//! so a persona's secret never unlocks here ([`rapport_pipeline::secret::Provenance`]): the
//! secret game is played in conversations the server holds (the page and its JSON API). The
//! persona's own sampling applies; a client's sampling fields are ignored. A stream sends the
//! reply only once it has passed the guards on the reply, because an OpenAI client has no way
//! to take back text it was shown. Each client (API key and address) is rate-limited like a
//! session of the page, and holds at most as many replies in flight as it may queue.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use rapport_pipeline::TurnOutcome;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::client::ClientAddress;
use crate::door;
use crate::error::{AppError, AppResult};
use crate::limits::Scope;
use crate::openai::{content_text, now_secs, rand_id, WireMessage};
use crate::practice::practice_view;
use crate::state::AppState;

/// Exchanges replayed at most; older ones are dropped (the pipeline folds them into memory
/// anyway, and each replayed turn costs a pass of the sentence model).
const MAX_REPLAYED: usize = 40;

/// The fields this endpoint reads; OpenAI's other fields are accepted and ignored.
#[derive(Deserialize)]
pub struct PersonaRequest {
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    stream: bool,
}

fn authorise(app: &AppState, headers: &HeaderMap) -> AppResult<()> {
    let Some(key) = &app.config.api_key else { return Ok(()) };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if sent == Some(key.as_str()) {
        Ok(())
    } else {
        Err(AppError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "send the server's API key as 'Authorization: Bearer KEY'",
        ))
    }
}

/// Takes one from this client's limit: the API key it authenticated with (or none) and its
/// address. Checked before the body is read, so a flood of bad requests is limited too.
async fn limit(app: &AppState, headers: &HeaderMap, client: &ClientAddress) -> AppResult<()> {
    let who = if app.config.api_key.is_some() && headers.contains_key(header::AUTHORIZATION) {
        "key"
    } else {
        "open"
    };
    door::limit(app, Scope::ApiRequests, &format!("{who}@{}", client.as_str())).await
}

/// The conversation a request describes: the greeting (a leading assistant message), the
/// finished exchanges, and the message to answer.
type Described = (Option<String>, Vec<(String, String)>, String);

fn describe(messages: &[WireMessage]) -> AppResult<Described> {
    let mut turns: Vec<(bool, String)> = Vec::new();
    for m in messages {
        let is_user = match m.role.as_str() {
            "system" | "developer" => continue, // the persona is the system prompt
            "user" => true,
            "assistant" => false,
            other => return Err(AppError::bad_request(format!("unsupported role '{other}'"))),
        };
        let text = content_text(&m.content).map_err(|e| AppError::bad_request(e.message))?;
        match turns.last_mut() {
            // Two in a row from one side read as one message.
            Some((last_is_user, last)) if *last_is_user == is_user => {
                last.push('\n');
                last.push_str(&text);
            }
            _ => turns.push((is_user, text)),
        }
    }
    let Some((true, message)) = turns.pop() else {
        return Err(AppError::bad_request("the last message must be the user's"));
    };
    let greeting = match turns.first() {
        Some((false, _)) => Some(turns.remove(0).1),
        _ => None,
    };
    let exchanges = turns.chunks(2).filter_map(|pair| match pair {
        [(true, user), (false, reply)] => Some((user.clone(), reply.clone())),
        _ => None,
    });
    let exchanges: Vec<_> = exchanges.collect();
    let skip = exchanges.len().saturating_sub(MAX_REPLAYED);
    Ok((greeting, exchanges[skip..].to_vec(), message))
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(app): State<AppState>,
    Extension(client): Extension<ClientAddress>,
    headers: HeaderMap,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> AppResult<Response> {
    authorise(&app, &headers)?;
    limit(&app, &headers, &client).await?;
    let request: PersonaRequest = crate::body::json_object(body)?;
    if !app.personas.shipped().any(|p| p.id == request.model) {
        let known: Vec<&str> = app.personas.shipped().map(|p| p.id.as_str()).collect();
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("no persona '{}'; the models here are: {}", request.model, known.join(", ")),
        ));
    }
    let (greeting, exchanges, message) = describe(&request.messages)?;
    let chars = message.chars().count();
    if chars > app.config.max_message_chars {
        return Err(AppError::unprocessable(format!(
            "the message is {chars} characters long; the limit is {} characters",
            app.config.max_message_chars
        )));
    }
    // This route writes its reply while the caller waits, outside the queue: the queue's bounds
    // apply to it in this process, held until the reply is written or the caller goes.
    let place = door::enter_in_flight(&app, &client)?;
    let pipeline = app.personas.pipeline(&app.store, &request.model).await?;
    let now = Utc::now().fixed_offset();
    let mut conversation = pipeline.replay(greeting.as_deref(), &exchanges, now)?;
    let id = format!("chatcmpl-{:x}", rand_id());
    let created = now_secs();
    let model = request.model.clone();

    let turn = {
        let app = app.clone();
        async move {
            // Wait for a generation slot like any queued job, so the model is never asked for
            // more replies at once than it was configured for.
            let _place = place;
            let _slot = app.slots.clone().acquire_owned().await.expect("slots are never closed");
            let mut ignore = |_| {};
            pipeline
                .respond(&mut conversation, &message, now, app.generator.as_ref(), &mut ignore)
                .await
        }
    };

    if !request.stream {
        let outcome = turn.await?;
        return Ok(Json(completion(&id, created, &model, &outcome)).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(16);
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Option<&str>| json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        let data = |v: Value| Ok(Event::default().data(v.to_string()));
        let _ = tx.send(data(chunk(json!({"role": "assistant", "content": ""}), None))).await;
        match turn.await {
            Ok(outcome) => {
                for piece in sentence_pieces(&outcome.reply) {
                    let _ = tx.send(data(chunk(json!({"content": piece}), None))).await;
                }
                let _ = tx.send(data(chunk(json!({}), Some("stop")))).await;
            }
            Err(e) => {
                let _ = tx
                    .send(data(json!({"error": {"message": e.to_string(), "type": e.kind()}})))
                    .await;
            }
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Ok(Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response())
}

fn completion(id: &str, created: u64, model: &str, outcome: &TurnOutcome) -> Value {
    let accepted = outcome.trace.attempts.last();
    let prompt = accepted.and_then(|a| a.prompt_tokens).unwrap_or(0);
    let completion = accepted.and_then(|a| a.completion_tokens).unwrap_or(0);
    let cached = accepted.and_then(|a| a.cached_prompt_tokens).unwrap_or(0);
    json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.reply}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                  "prompt_tokens_details": {"cached_tokens": cached}},
        // Not OpenAI's: what the engine read and decided, for clients that want it.
        "rapport": {"practice": practice_view(&outcome.trace), "fallback": outcome.trace.fallback},
    })
}

/// The reply in sentence-sized pieces (a stream of one chunk looks frozen in some clients).
fn sentence_pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if matches!(c, '.' | '!' | '?' | '\n') {
            pieces.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// `GET /v1/models`: the shipped personas.
pub async fn models(State(app): State<AppState>, headers: HeaderMap) -> AppResult<Json<Value>> {
    authorise(&app, &headers)?;
    let data: Vec<Value> = app.personas.shipped().map(|p| json!({"id": p.id, "object": "model", "created": 0, "owned_by": "rapport", "name": p.name, "description": p.bio})).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(pairs: &[(&str, &str)]) -> Vec<WireMessage> {
        pairs
            .iter()
            .map(|(r, c)| WireMessage {
                role: r.to_string(),
                content: Value::String(c.to_string()),
            })
            .collect()
    }

    #[test]
    fn a_history_becomes_greeting_exchanges_and_the_message() {
        let (greeting, exchanges, message) = describe(&wire(&[
            ("system", "ignored"),
            ("assistant", "Hi!"),
            ("user", "a"),
            ("assistant", "b"),
            ("user", "c"),
            ("user", "d"),
        ]))
        .unwrap();
        assert_eq!(greeting.as_deref(), Some("Hi!"));
        assert_eq!(exchanges, [("a".to_string(), "b".to_string())]);
        assert_eq!(message, "c\nd");
        assert!(
            describe(&wire(&[("user", "a"), ("assistant", "b")])).is_err(),
            "the last message must be the user's"
        );
        assert!(describe(&wire(&[("tool", "a")])).is_err());
    }

    #[test]
    fn pieces_put_back_together_are_the_reply() {
        let text = "Hello there! How are you? Fine.";
        assert_eq!(sentence_pieces(text).concat(), text);
        assert_eq!(sentence_pieces(text).len(), 3);
    }
}
