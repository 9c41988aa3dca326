//! The JSON API the page uses (and any script may): personas, conversations, messages,
//! regeneration and alternatives, the reply stream, traces, export.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rapport_store::{ConversationId, JobId, MessageId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::json_object;
use crate::client::ClientAddress;
use crate::door;
use crate::drafts::{Offered, Typed};
use crate::error::{AppError, AppResult};
use crate::limits::Scope;
use crate::practice::{coaching, opened, practice_view, refuse_when_over, ScenarioWrite};
use crate::session::CurrentSession;
use crate::state::AppState;
use crate::stream::{follow, queue_view};

/// `GET /api/session`: the CSRF token writes must carry, and the limits.
pub async fn session(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
) -> Json<Value> {
    Json(json!({"csrf_token": session.csrf, "max_message_chars": app.config.max_message_chars}))
}

/// `GET /api/personas`.
pub async fn personas(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
) -> AppResult<Json<Value>> {
    Ok(Json(json!({"personas": app.personas.visible_to(&app.store, &session.id).await?})))
}

/// `POST /api/personas/import`: the body is a Character Card, JSON or PNG.
pub async fn import_persona(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Extension(client): Extension<ClientAddress>,
    body: Bytes,
) -> AppResult<Response> {
    // Charged before the card is read: reading an 8 MiB card is work, and keeping one is a row.
    door::limit(&app, Scope::ClientConversations, client.as_str()).await?;
    if body.is_empty() {
        return Err(AppError::unprocessable(
            "the body is empty: send the card file (JSON or PNG) as the request body",
        ));
    }
    let (persona, warnings) = app.personas.import(&app.store, &session.id, &body).await?;
    Ok((StatusCode::CREATED, Json(json!({"persona": persona, "warnings": warnings})))
        .into_response())
}

/// `GET /api/conversations`.
pub async fn list(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
) -> AppResult<Json<Value>> {
    Ok(Json(json!({"conversations": app.store.list_conversations(&session.id).await?})))
}

/// Body of `POST /api/conversations`: a persona for a free chat, or a scenario and its level.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConversation {
    #[serde(default)]
    persona: Option<String>,
    #[serde(default)]
    scenario: Option<String>,
    #[serde(default)]
    level: Option<String>,
}

impl NewConversation {
    /// The persona id the conversation runs under: the persona's, or the scenario level's.
    fn persona_id(&self, app: &AppState) -> AppResult<String> {
        match (&self.persona, &self.scenario) {
            (Some(p), None) if self.level.is_none() => Ok(p.clone()),
            (None, Some(s)) => {
                let scenario = app
                    .personas
                    .scenarios()
                    .get(s)
                    .ok_or_else(|| AppError::not_found("scenario"))?;
                let level = self.level.as_deref().ok_or_else(|| {
                    AppError::unprocessable(format!(
                        "a scenario needs a level: one of {}",
                        scenario.levels.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                })?;
                if !scenario.levels.contains_key(level) {
                    return Err(AppError::unprocessable(format!(
                        "scenario {s} has no level {level:?}: it has {}",
                        scenario.levels.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
                Ok(scenario.persona_id(level))
            }
            _ => Err(AppError::unprocessable(
                "send either {\"persona\": id} or {\"scenario\": id, \"level\": name}",
            )),
        }
    }
}

/// `POST /api/conversations`: a new conversation, opened with the persona's greeting.
pub async fn create(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Extension(client): Extension<ClientAddress>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> AppResult<Response> {
    let body: NewConversation = json_object(body)?;
    let persona_id = body.persona_id(&app)?;
    let persona = app.personas.persona(&app.store, &persona_id, Some(&session.id)).await?;
    door::limit(&app, Scope::ClientConversations, client.as_str()).await?;
    let pipeline = app.personas.pipeline(&app.store, &persona.id).await?;
    let start = pipeline.start();
    let greeting = start.history.first().map(|m| m.content.clone()).unwrap_or_default();
    let state = serde_json::to_string(&start).map_err(AppError::internal)?;
    let conversation =
        app.store.create_conversation(&session.id, &persona.id, &greeting, &state).await?;
    opened(&app, &session.id, conversation).await
}

/// `GET /api/conversations/{id}`: the conversation, its messages, the reply being written.
pub async fn get(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let id = ConversationId(id);
    let conversation = app.store.conversation(&session.id, &id).await?;
    let messages = app.store.messages(&id).await?;
    let job = app.store.latest_job(&id).await?;
    // The practice panel shows the last turn's reading on reload.
    let practice = match messages.iter().rev().find(|m| m.has_trace) {
        Some(m) => app
            .store
            .trace(&id, &m.id)
            .await
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .map(|t| practice_view(&t)),
        None => None,
    };
    let export = app.store.export(&session.id, &id).await?;
    let read = coaching(&app, &export);
    Ok(Json(json!({
        "conversation": conversation,
        "messages": messages,
        "job": job,
        "practice": practice,
        "tips": read.tips,
        "readings": read.readings,
        "scenario": read.scenario,
    })))
}

/// `DELETE /api/conversations/{id}`.
pub async fn delete(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    let id = ConversationId(id);
    app.store.delete_conversation(&session.id, &id).await?;
    app.drafts.forget(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/conversations/{id}/feedback`: the practice coach's report on the person's side of
/// the conversation (open questions, listening, reciprocity, pacing), from the stored messages
/// and the pipeline's traces; exact counts, no model call, so it is instant.
pub async fn feedback(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Path(id): Path<String>,
) -> AppResult<Json<rapport_eval::coach::CoachReport>> {
    let export = app.store.export(&session.id, &ConversationId(id)).await?;
    Ok(Json(rapport_eval::coach::feedback(&crate::practice::dialogue_of(&app, &export))))
}

/// `GET /api/conversations/{id}/export`: everything, as a JSON download.
pub async fn export(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let export = app.store.export(&session.id, &ConversationId(id.clone())).await?;
    let mut response = Json(export).into_response();
    if let Ok(v) = format!("attachment; filename=\"rapport-{id}.json\"").parse() {
        response.headers_mut().insert(axum::http::header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// Body of `POST /api/conversations/{id}/messages`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    content: String,
    /// The writer's offset from UTC in minutes (JavaScript's `-getTimezoneOffset()`), so that
    /// "good evening" fits their evening.
    #[serde(default)]
    utc_offset_min: i64,
}

/// `POST /api/conversations/{id}/messages`: stores the message and queues its reply. 202 with
/// the message, the job and the queue position; 200 with the same when the `Idempotency-Key`
/// was seen before.
pub async fn post_message(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Extension(client): Extension<ClientAddress>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> AppResult<Response> {
    let body: NewMessage = json_object(body)?;
    let id = ConversationId(id);
    let conversation = app.store.conversation(&session.id, &id).await?;
    refuse_when_over(&app, &session.id, &conversation, ScenarioWrite::Message).await?;
    let content = body.content.trim();
    let chars = content.chars().count();
    if chars == 0 {
        return Err(AppError::unprocessable("the message is empty"));
    }
    within_limits(&app, "message", chars, body.utc_offset_min)?;
    let key = idempotency_key(&headers)?;
    // A retry with a known key is answered before the limiter: retries must not cost a token.
    if key.is_none()
        || !app.store.has_idempotency_key(&id, key.as_deref().unwrap_or_default()).await?
    {
        door::message_limits(&app, &session.id, &client).await?;
    }
    let posted = door::queued(
        &app,
        app.store
            .post_message(
                &id,
                content,
                key.as_deref(),
                body.utc_offset_min,
                &door::admission(&app, &client),
            )
            .await,
    )
    .await?;
    if !posted.duplicate {
        // What they typed is sent: reading it ahead again would only delay the reply.
        app.drafts.forget(&id);
        app.queued.notify_one();
    }
    let queue = queue_view(&app, &posted.job).await;
    let status = if posted.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(json!({"message": posted.message, "job": posted.job, "queue": queue, "duplicate": posted.duplicate}))).into_response())
}

/// What the person has typed so far (`POST /api/conversations/{id}/draft`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDraft {
    content: String,
    /// The person stopped typing: this may be the message they send.
    #[serde(default)]
    paused: bool,
    /// As for a message: the writer's offset from UTC in minutes (a whole turn read ahead
    /// tells the time in its note as the message's turn will).
    #[serde(default)]
    utc_offset_min: i64,
}

/// `POST /api/conversations/{id}/draft`: what the person has typed so far, for an idle worker to
/// read ahead (`drafts`). A hint, not a request: 202 whatever became of it, and the body says
/// what (`waiting`, `unchanged`, `full`, `off`); never stored. Refused like a message when it is
/// too long or the conversation is not the session's.
pub async fn post_draft(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> AppResult<Response> {
    let body: NewDraft = json_object(body)?;
    let id = ConversationId(id);
    let conversation = app.store.conversation(&session.id, &id).await?;
    let chars = body.content.chars().count();
    within_limits(&app, "draft", chars, body.utc_offset_min)?;
    let outcome = if app.config.read_ahead {
        let typed =
            Typed { text: &body.content, whole: body.paused, utc_offset_min: body.utc_offset_min };
        match app.drafts.offer(id, &conversation.persona, typed) {
            Offered::Waiting => "waiting",
            Offered::Unchanged => "unchanged",
            Offered::Full => "full",
        }
    } else {
        "off"
    };
    app.metrics.count("rapport_drafts_total", &[("outcome", outcome)], 1);
    Ok((StatusCode::ACCEPTED, Json(json!({ "draft": outcome }))).into_response())
}

/// What a message and a draft of one must both keep to: the length limit, and a real UTC
/// offset. `what` names it in the error.
fn within_limits(app: &AppState, what: &str, chars: usize, utc_offset_min: i64) -> AppResult<()> {
    if chars > app.config.max_message_chars {
        return Err(AppError::unprocessable(format!(
            "the {what} is {chars} characters long; the limit is {} characters",
            app.config.max_message_chars
        )));
    }
    if !(-14 * 60..=14 * 60).contains(&utc_offset_min) {
        return Err(AppError::unprocessable("utc_offset_min must be between -840 and 840"));
    }
    Ok(())
}

fn idempotency_key(headers: &HeaderMap) -> AppResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key =
        value.to_str().map_err(|_| AppError::bad_request("Idempotency-Key must be ASCII"))?.trim();
    if key.is_empty() || key.len() > 200 {
        return Err(AppError::bad_request("Idempotency-Key must be 1 to 200 characters"));
    }
    Ok(Some(key.to_string()))
}

/// `POST /api/conversations/{id}/regenerate`: another reply to the last message.
pub async fn regenerate(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Extension(client): Extension<ClientAddress>,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let id = ConversationId(id);
    let conversation = app.store.conversation(&session.id, &id).await?;
    // A finished scenario's outcome is final: no reroll of its last reply.
    refuse_when_over(&app, &session.id, &conversation, ScenarioWrite::Reply).await?;
    door::message_limits(&app, &session.id, &client).await?;
    let job = door::queued(&app, app.store.regenerate(&id, &door::admission(&app, &client)).await)
        .await?;
    app.queued.notify_one();
    let queue = queue_view(&app, &job).await;
    Ok((StatusCode::ACCEPTED, Json(json!({"job": job, "queue": queue}))).into_response())
}

/// Body of `POST /api/conversations/{id}/alternatives`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    seq: i64,
    alternative: i64,
}

/// `POST /api/conversations/{id}/alternatives`: show another alternative of the last reply.
pub async fn choose(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> AppResult<Json<Value>> {
    let body: Choice = json_object(body)?;
    let id = ConversationId(id);
    let conversation = app.store.conversation(&session.id, &id).await?;
    refuse_when_over(&app, &session.id, &conversation, ScenarioWrite::Reply).await?;
    Ok(Json(
        json!({"message": app.store.choose_alternative(&id, body.seq, body.alternative).await?}),
    ))
}

/// `GET /api/conversations/{id}/jobs/{job}`: a job and its place in the queue.
pub async fn job(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Path((id, job)): Path<(String, String)>,
) -> AppResult<Json<Value>> {
    let id = ConversationId(id);
    app.store.conversation(&session.id, &id).await?;
    let job = app.store.job(&id, &JobId(job)).await?;
    let queue = queue_view(&app, &job).await;
    Ok(Json(json!({"job": job, "queue": queue})))
}

/// Query of the events stream.
#[derive(Deserialize)]
pub struct EventsQuery {
    job: Option<String>,
}

/// `GET /api/conversations/{id}/events[?job=…]`: SSE of a reply (by default the latest job).
pub async fn events(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> AppResult<Response> {
    let id = ConversationId(id);
    app.store.conversation(&session.id, &id).await?;
    let job = match q.job {
        Some(job) => app.store.job(&id, &JobId(job)).await?.id,
        None => app.store.latest_job(&id).await?.ok_or(AppError::not_found("job"))?.id,
    };
    Ok(follow(app, id, job).into_response())
}

/// `GET /api/conversations/{id}/messages/{message}/trace`: the pipeline's trace of a reply and
/// its practice view.
pub async fn trace(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Path((id, message)): Path<(String, String)>,
) -> AppResult<Json<Value>> {
    let id = ConversationId(id);
    app.store.conversation(&session.id, &id).await?;
    let text = app.store.trace(&id, &MessageId(message)).await?;
    let trace: rapport_pipeline::TurnTrace =
        serde_json::from_str(&text).map_err(AppError::internal)?;
    Ok(Json(json!({"practice": practice_view(&trace), "trace": trace})))
}
