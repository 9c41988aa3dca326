//! What a persona remembers about the person (issue 34): `GET /api/memories` lists it, `PUT`
//! corrects one memory, `DELETE` forgets one or everything a persona remembers. The facts are
//! written by the [`crate::worker`] with the reply to the message that told them; here the person
//! sees and edits them.
//!
//! A corrected memory goes into later prompts like a told one, so it passes the same check
//! ([`rapport_pipeline::recall::admissible`]): editing a memory is not a way to put
//! instructions, or talk of the secret, into a persona's prompt.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use rapport_pipeline::recall::admissible;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::json_object;
use crate::error::{AppError, AppResult};
use crate::session::CurrentSession;
use crate::state::AppState;

/// Query of `GET` and `DELETE /api/memories`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonaQuery {
    /// The persona whose memories; all of them when absent (`GET` only).
    persona: Option<String>,
}

/// `GET /api/memories[?persona=ID]`: what the personas remember about the session's person,
/// oldest first.
pub async fn list(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Query(query): Query<PersonaQuery>,
) -> AppResult<Json<Value>> {
    let memories = app.store.memories(&session.id, query.persona.as_deref()).await?;
    Ok(Json(json!({ "memories": memories })))
}

/// Body of `PUT /api/memories/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Correction {
    content: String,
}

/// `PUT /api/memories/{id}`: the person corrects what a persona remembers.
pub async fn correct(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> AppResult<Json<Value>> {
    let body: Correction = json_object(body)?;
    let content = body.content.trim();
    admissible(content).map_err(|why| AppError::unprocessable(why.to_string()))?;
    let memory = app.store.correct_memory(&session.id, &id, content).await?;
    Ok(Json(json!({ "memory": memory })))
}

/// `DELETE /api/memories/{id}`: forgets one memory.
pub async fn forget(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    app.store.forget_memory(&session.id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/memories?persona=ID`: forgets everything one persona remembers; the persona
/// must be named (there is no "forget everything" by omission).
pub async fn forget_persona(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Query(query): Query<PersonaQuery>,
) -> AppResult<Json<Value>> {
    let Some(persona) = query.persona else {
        return Err(AppError::unprocessable(
            "name the persona whose memories to forget: DELETE /api/memories?persona=ID",
        ));
    };
    let forgotten = app.store.forget_persona(&session.id, &persona).await?;
    Ok(Json(json!({ "forgotten": forgotten })))
}
