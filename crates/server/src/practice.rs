//! Practice: the panel's view of a turn, scenarios with goals, the coach's tip on each message
//! and its rewrite, and the learner's progress over conversations.
//!
//! Everything a learner is told about how they did is derived from what the server stored (the
//! messages and the pipeline's traces), never from what a client sends: a scenario is won when
//! the stored state and the persona's own replies say so. The tip is lexical and instant; only
//! the rewrite runs the model, after the reply, in a generation slot like any reply.

use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rapport_eval::coach::{self, MessageTip};
use rapport_eval::dialogue::{from_export_rows, Dialogue};
use rapport_eval::scenario::{DebriefLine, Progress, Scenario, ScenarioSummary};
use rapport_pipeline::TurnTrace;
use rapport_store::{ConversationId, ConversationRow, ExportedConversation, MessageId, SessionId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::client::ClientAddress;
use crate::door;
use crate::error::{AppError, AppResult};
use crate::limits::Scope;
use crate::session::CurrentSession;
use crate::state::AppState;

/// Stage, closeness and its decision with reasons, what the message did with the conversation
/// (took up her words, repeated itself, answered her question), the emotion read, the secret's
/// state and the guards that fired on the message.
pub fn practice_view(trace: &TurnTrace) -> Value {
    let mut labels = trace.emotion.labels.clone();
    labels.sort_by(|a, b| b.1.total_cmp(&a.1));
    labels.truncate(3);
    json!({
        "turn": trace.turn,
        "stage": {"from": trace.stage.from.as_str(), "to": trace.stage.to.as_str(), "why": trace.stage.why},
        "closeness": {
            "before": trace.closeness.before.get(),
            "after": trace.closeness.after.get(),
            "decision": trace.closeness.decision.as_str(),
            "reasons": trace.closeness.reasons,
        },
        "listening": trace.signals.thread,
        "emotion": {
            "ekman": trace.emotion.ekman,
            "labels": labels,
            "valence": trace.emotion.valence,
            "arousal": trace.emotion.arousal,
            "mood": trace.emotion.mood,
            "distress": trace.emotion.distress,
        },
        "secret": trace.secret,
        "guards": trace.input_guards.iter().map(|h| h.code()).collect::<Vec<_>>(),
    })
}

/// A scenario conversation's standing, as the page shows it.
#[derive(Debug, Serialize)]
pub struct ScenarioView {
    /// The scenario, as the picker shows it.
    pub scenario: ScenarioSummary,
    /// The level played.
    pub level: String,
    /// The persona's display name.
    pub persona_name: String,
    /// Where the goal stands.
    pub progress: Progress,
    /// Once it is over: each skill against its target, with the learner's words.
    pub debrief: Option<Vec<DebriefLine>>,
    /// How far each skill's score agrees with a person's reading (by skill).
    pub trust:
        std::collections::BTreeMap<rapport_eval::scenario::Skill, rapport_eval::trust::Agreement>,
}

/// The coach's tip on one stored message.
#[derive(Debug, Serialize)]
pub struct SeqTip {
    /// The learner's message's place in the conversation.
    pub seq: i64,
    /// The tip.
    pub tip: MessageTip,
}

/// What the pipeline read after one reply: for following a conversation turn by turn (and
/// comparing a branch with its original).
#[derive(Debug, Serialize)]
pub struct Reading {
    /// The reply's place.
    pub seq: i64,
    /// The stage after it.
    pub stage: &'static str,
    /// Closeness after it.
    pub closeness: u8,
}

/// The practice read of a conversation: the tip on every answered learner message, the
/// pipeline's reading after each reply, and the scenario's standing if it is one.
#[derive(Debug, Serialize)]
pub struct Coaching {
    /// Tips, by message.
    pub tips: Vec<SeqTip>,
    /// Readings, by reply.
    pub readings: Vec<Reading>,
    /// The scenario's standing, for a scenario conversation.
    pub scenario: Option<ScenarioView>,
}

/// The practice read of `export` (see [`Coaching`]).
pub fn coaching(app: &AppState, export: &ExportedConversation) -> Coaching {
    let dialogue = dialogue_of(app, export);
    // The dialogue holds the active messages in order: the same ones, in the same order.
    let active: Vec<_> = export.messages.iter().filter(|m| m.active).collect();
    let tips = coach::message_tips(&dialogue)
        .into_iter()
        .filter_map(|(i, tip)| {
            let m = active.get(i)?;
            Some(SeqTip { seq: m.seq, tip })
        })
        .collect();
    let readings = active
        .iter()
        .zip(&dialogue.turns)
        .filter_map(|(m, t)| {
            let trace = t.trace.as_ref()?;
            Some(Reading {
                seq: m.seq,
                stage: trace.stage.to.as_str(),
                closeness: trace.closeness.after.get(),
            })
        })
        .collect();
    let scenario =
        app.personas.scenarios().of_persona_id(&export.conversation.persona).map(|(s, level)| {
            let progress = s.progress(level, &dialogue);
            let debrief = progress.status.is_over().then(|| s.debrief(&dialogue));
            ScenarioView {
                scenario: s.summary(),
                level: level.to_string(),
                persona_name: dialogue.persona_name.clone().unwrap_or_else(|| s.persona.clone()),
                progress,
                debrief,
                trust: app.personas.coach_trust().clone(),
            }
        });
    Coaching { tips, readings, scenario }
}

/// The stored conversation as the coach reads it: with the persona's name, so that saying it
/// back is not counted as listening.
pub fn dialogue_of(app: &AppState, export: &ExportedConversation) -> Dialogue {
    let mut dialogue = from_export_rows(export);
    dialogue.persona_name = app.personas.display_name(&export.conversation.persona);
    dialogue
}

/// `GET /api/scenarios`: what the picker offers beside free chat.
pub async fn scenarios(State(app): State<AppState>) -> Json<Value> {
    let list: Vec<ScenarioSummary> =
        app.personas.scenarios().iter().map(Scenario::summary).collect();
    Json(json!({"scenarios": list}))
}

/// What a request would do to a scenario conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScenarioWrite {
    /// A new message from the learner.
    Message,
    /// Another reply to the last message, or another of its alternatives.
    Reply,
}

/// A scenario conversation that is over takes no more messages: its outcome is final, and a
/// message after it would neither count nor be coached against the goal. A new message is also
/// refused once the level's messages are used, even while the last one waits for its reply (or
/// after that reply failed: a regeneration may still write it).
///
/// Free chat pays nothing for this: only a scenario's conversation is read.
pub async fn refuse_when_over(
    app: &AppState,
    session: &SessionId,
    conversation: &ConversationRow,
    write: ScenarioWrite,
) -> AppResult<()> {
    let Some((scenario, level)) = app.personas.scenarios().of_persona_id(&conversation.persona)
    else {
        return Ok(());
    };
    // Only the standing: the tips, readings and debrief of the page's read are not needed here.
    let export = app.store.export(session, &conversation.id).await?;
    let p = &scenario.progress(level, &dialogue_of(app, &export));
    let why = match p.status {
        rapport_eval::scenario::Status::Succeeded => Some("goal reached"),
        rapport_eval::scenario::Status::Failed => Some("out of messages"),
        rapport_eval::scenario::Status::Playing
            if write == ScenarioWrite::Message && p.turns_used >= p.max_turns =>
        {
            Some("out of messages")
        }
        rapport_eval::scenario::Status::Playing => None,
    };
    match why {
        Some(why) => Err(AppError::new(
            StatusCode::CONFLICT,
            "scenario_over",
            format!("this scenario is over ({why}): start it again or open a free chat"),
        )),
        None => Ok(()),
    }
}

/// `POST /api/conversations/{id}/messages/{message}/rewrite`: the coach's rewrite of one of the
/// learner's answered messages, after its tip. Costs one message from the session's and the
/// client's limits (it runs the model) and waits for a generation slot like a reply.
pub async fn rewrite(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Extension(client): Extension<ClientAddress>,
    Path((id, message)): Path<(String, String)>,
) -> AppResult<Response> {
    let id = ConversationId(id);
    // The session's own conversation, or not found (another session's ids read as unknown).
    let export = app.store.export(&session.id, &id).await?;
    let tips = coaching(&app, &export).tips;
    let row = app.store.message(&id, &MessageId(message)).await?;
    if row.role != "user" {
        return Err(AppError::unprocessable("only your own messages are rewritten"));
    }
    let Some(tip) = tips.into_iter().find(|t| t.seq == row.seq) else {
        return Err(AppError::new(
            StatusCode::CONFLICT,
            "not_answered",
            "this message has no tip yet: a rewrite follows the reply to it",
        ));
    };
    door::message_limits(&app, &session.id, &client).await?;
    let place = door::enter_in_flight(&app, &client)?;
    let her_last = export
        .messages
        .iter()
        .rfind(|m| m.active && m.seq < row.seq && m.role == "assistant")
        .map(|m| m.content.clone());
    let persona =
        app.personas.persona(&app.store, &export.conversation.persona, Some(&session.id)).await?;
    let started = Instant::now();
    let written = {
        let _place = place;
        let _slot = app.slots.clone().acquire_owned().await.expect("slots are never closed");
        rapport_eval::rewrite::rewrite(
            app.generator.as_ref(),
            &row.content,
            her_last.as_deref(),
            &persona.name,
            &tip.tip,
            rapport_eval::rewrite::REWRITE_ATTEMPTS,
        )
        .await
        .map_err(AppError::internal)?
    };
    let ms = started.elapsed().as_millis() as u64;
    Ok(Json(match written {
        Ok(text) => json!({"tip": tip.tip, "rewrite": text, "refused": null, "ms": ms}),
        Err(why) => json!({"tip": tip.tip, "rewrite": null, "refused": why.0, "ms": ms}),
    })
    .into_response())
}

/// Body of `POST /api/conversations/{id}/branch`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    seq: i64,
}

/// `POST /api/conversations/{id}/branch`: try that again. A new conversation holding the
/// messages before the learner's message at `seq` (with the pipeline's state there), to send a
/// different one; the original is kept for comparison. Counts as a new conversation.
pub async fn branch(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Extension(client): Extension<ClientAddress>,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> AppResult<Response> {
    let body: Branch = crate::body::json_object(body)?;
    let id = ConversationId(id);
    app.store.conversation(&session.id, &id).await?;
    door::limit(&app, Scope::ClientConversations, client.as_str()).await?;
    let conversation = app.store.branch_conversation(&session.id, &id, body.seq).await?;
    opened(&app, &session.id, conversation).await
}

/// 201 with a conversation just opened (a new one or a branch): it, its messages, no reply
/// job yet, and the practice read (tips, readings, the scenario's standing).
pub async fn opened(
    app: &AppState,
    session: &SessionId,
    conversation: ConversationRow,
) -> AppResult<Response> {
    let messages = app.store.messages(&conversation.id).await?;
    let export = app.store.export(session, &conversation.id).await?;
    let read = coaching(app, &export);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "conversation": conversation,
            "messages": messages,
            "job": null,
            "tips": read.tips,
            "readings": read.readings,
            "scenario": read.scenario,
        })),
    )
        .into_response())
}

/// Query of `GET /api/progress`.
#[derive(Deserialize)]
pub struct ProgressQuery {
    /// `1`: as a file download.
    #[serde(default)]
    download: Option<String>,
}

/// `GET /api/progress`: the session's progress over its conversations (JSON; with
/// `?download=1` as a file).
pub async fn progress(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
    Query(q): Query<ProgressQuery>,
) -> AppResult<Response> {
    // A branch retries a moment of another conversation and holds copies of its messages:
    // counting it would count those messages twice.
    let dialogues: Vec<_> = app
        .store
        .export_session(&session.id)
        .await?
        .iter()
        .filter(|export| export.conversation.branch_of.is_none())
        .map(|export| (dialogue_of(&app, export), export.conversation.created_at))
        .collect();
    let report = rapport_eval::progress::progress(&dialogues, app.personas.scenarios());
    let mut response =
        Json(json!({"progress": report, "trust": app.personas.coach_trust()})).into_response();
    if q.download.as_deref() == Some("1") {
        if let Ok(v) = "attachment; filename=\"rapport-progress.json\"".parse() {
            response.headers_mut().insert(axum::http::header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(response)
}

/// `DELETE /api/progress`: deletes the session's progress, which is its conversations (the
/// record is derived from them, so nothing of it is left behind).
pub async fn delete_progress(
    State(app): State<AppState>,
    Extension(CurrentSession(session)): Extension<CurrentSession>,
) -> AppResult<StatusCode> {
    for c in app.store.list_conversations(&session.id).await? {
        app.store.delete_conversation(&session.id, &c.id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
