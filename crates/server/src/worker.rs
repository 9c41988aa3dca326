//! Workers: claim a job, run the turn through the pipeline, store the reply.
//!
//! The turn's events go to [`Live`](crate::live::Live) for this process's streams; a heartbeat
//! extends the claim and saves the text so far for streams on other processes. If the
//! heartbeat finds the claim gone (the lease ran out and another process took the job, or the
//! conversation was deleted), the turn is dropped unfinished: the store would refuse its result
//! anyway, and the model's time is better spent on the next job. After a stored reply, with
//! no job waiting, the worker reads the conversation's next turn ahead (`read_ahead`) before it
//! gives its generation slot back.

use std::time::{Duration, Instant};

use chrono::{FixedOffset, TimeZone, Utc};
use rapport_pipeline::engine::TurnEvent;
use rapport_pipeline::recall::{FactKind, Recalled, RecalledFact};
use rapport_pipeline::trace::AttemptOutcome;
use rapport_pipeline::{Conversation, TurnOutcome, TurnTrace};
use rapport_store::{now_ms, ClaimedJob, ConversationId, NewMemory, StoreError};
use tokio::sync::mpsc;

use crate::live::LiveEvent;
use crate::practice::practice_view;
use crate::read_ahead::{self, ReadAhead};
use crate::state::AppState;

/// Claims beyond this many mean the job kills its worker each time: give it up.
const MAX_ATTEMPTS: i64 = 3;

/// Runs one worker until shutdown.
pub async fn run(app: AppState, number: usize) {
    let name = format!("{}-w{number}", app.config.worker_name);
    let mut shutdown = app.shutdown.subscribe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let permit = tokio::select! {
            p = app.slots.clone().acquire_owned() => p.expect("slots are never closed"),
            _ = shutdown.changed() => return,
        };
        match app.store.claim(&name, app.config.lease).await {
            Ok(Some(job)) => {
                let ahead = run_job(&app, job, &mut shutdown).await;
                // Still holding the slot: the next turn is read ahead only if no job waits.
                if let Some(ahead) = ahead.filter(|_| app.config.read_ahead) {
                    if !read_ahead::run(&app, ahead, &mut shutdown).await {
                        return;
                    }
                }
                drop(permit);
            }
            Ok(None) => {
                // Nothing to write: read what someone is typing, if anyone is, still holding
                // the slot (a job queued meanwhile cancels the read).
                if let Some(draft) = app.drafts.take().filter(|_| app.config.read_ahead) {
                    if !read_draft(&app, draft, &mut shutdown).await {
                        return;
                    }
                    drop(permit);
                    continue;
                }
                drop(permit);
                // Jobs posted to this process ring the bell; those posted elsewhere (or whose
                // holder died) are found by the poll. A draft offered here rings its own.
                tokio::select! {
                    _ = app.queued.notified() => {}
                    _ = app.drafts.offered.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Err(e) => {
                drop(permit);
                app.metrics.count("rapport_errors_total", &[("kind", "queue")], 1);
                tracing::error!(error = %e, "claiming a job failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Reads `draft` ahead (`read_ahead`); false when the server is shutting down.
async fn read_draft(
    app: &AppState,
    draft: crate::drafts::Draft,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    match ReadAhead::of_draft(app, draft).await {
        Ok(Some(ahead)) => read_ahead::run(app, ahead, shutdown).await,
        Ok(None) => true,
        Err(e) => {
            app.metrics.count("rapport_draft_reads_total", &[("outcome", "failed")], 1);
            tracing::warn!(error = %e, "reading a draft ahead failed");
            true
        }
    }
}

/// Runs one job; when its reply was stored, returns the conversation for reading its next
/// turn ahead.
async fn run_job(
    app: &AppState,
    job: ClaimedJob,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<ReadAhead> {
    let started = Instant::now();
    let id = job.job.id.clone();
    app.metrics.seconds(
        "rapport_queue_wait_seconds",
        &[],
        (now_ms() - job.job.enqueued_at).max(0) as f64 / 1000.0,
    );
    if job.job.attempts > MAX_ATTEMPTS {
        let _ = app.store.fail(&id, &job.claim, &format!("gave up after {MAX_ATTEMPTS} attempts: the process writing it stopped each time")).await;
        app.live.publish(&id, LiveEvent::Failed("this reply could not be written".into()));
        app.metrics.count("rapport_jobs_total", &[("outcome", "failed")], 1);
        return None;
    }
    app.live.begin(&id);
    tracing::info!(job = %id, attempt = job.job.attempts, persona = %job.persona, "writing a reply");

    let (events, mut received) = mpsc::unbounded_channel::<TurnEvent>();
    let turn = write_reply(app, &job, events);
    tokio::pin!(turn);
    // Every second (or a third of the lease, if shorter): often enough that a stream on
    // another process sees the text grow smoothly, and the lease never lapses on a live worker.
    let beat = (app.config.lease / 3).min(Duration::from_secs(1));
    let mut heartbeat = tokio::time::interval(beat);
    heartbeat.tick().await;
    let deadline = tokio::time::sleep(app.config.turn_timeout);
    tokio::pin!(deadline);
    let result = loop {
        tokio::select! {
            result = &mut turn => break Some(result),
            Some(event) = received.recv() => forward(app, &job, event),
            _ = heartbeat.tick() => {
                let partial = app.live.text(&id);
                // Bounded by one beat: while this arm waits, the loop forwards none of the
                // reply's text to its streams, and a database that is away makes the pool wait
                // 10 s for a connection.
                match tokio::time::timeout(beat, app.store.heartbeat(&id, &job.claim, app.config.lease, partial.as_deref())).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        tracing::warn!(job = %id, "lost the claim; dropping the turn");
                        break None;
                    }
                    Ok(Err(e)) => tracing::warn!(job = %id, error = %e, "heartbeat failed; will retry"),
                    Err(_) => tracing::warn!(job = %id, "heartbeat got no answer within {} ms; will retry", beat.as_millis()),
                }
            }
            _ = &mut deadline => break Some(Err(format!("the reply took longer than {} s", app.config.turn_timeout.as_secs()))),
            _ = shutdown.changed() => {
                // A reply half-written is not kept.
                hand_back(app, &job).await;
                return None;
            }
        }
    };
    while let Ok(event) = received.try_recv() {
        forward(app, &job, event);
    }
    match result {
        None => {
            app.live.abandon(&id);
            app.metrics.count("rapport_jobs_total", &[("outcome", "lost")], 1);
            None
        }
        Some(Ok((outcome, conversation))) => {
            record(app, &outcome.trace);
            let state =
                serde_json::to_string(&conversation).expect("conversation state serialises");
            let trace = serde_json::to_string(&outcome.trace).expect("trace serialises");
            let told = to_remember(app, &job, &outcome.trace);
            let stored = tokio::select! {
                stored = store_reply(app, &job, &outcome.reply, &state, &trace, &told) => stored,
                // Waiting out a database that is away can take the whole retry window; a
                // process asked to stop should not. Abandoning the write midway is safe for
                // the reason retrying it is: the store checks the claim, so a commit that did
                // land closed the job, and one that did not leaves it to be taken again.
                _ = shutdown.changed() => {
                    tracing::warn!(job = %id, "stopping before the reply could be stored; it will be written again");
                    hand_back(app, &job).await;
                    return None;
                }
            };
            match stored {
                Ok(message) => {
                    app.live.publish(&id, LiveEvent::Done(message));
                    let kind = if outcome.trace.fallback.is_some() { "fallback" } else { "done" };
                    app.metrics.count("rapport_jobs_total", &[("outcome", kind)], 1);
                    app.metrics.seconds(
                        "rapport_turn_seconds",
                        &[],
                        started.elapsed().as_secs_f64(),
                    );
                    Some(ReadAhead { persona: job.persona.clone(), conversation, draft: None })
                }
                Err(StoreError::Conflict(_)) => {
                    app.live.abandon(&id);
                    app.metrics.count("rapport_jobs_total", &[("outcome", "lost")], 1);
                    None
                }
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "storing the reply failed; the job will be taken again");
                    app.live.abandon(&id);
                    app.metrics.count("rapport_errors_total", &[("kind", "store")], 1);
                    None
                }
            }
        }
        Some(Err(message)) => {
            tracing::warn!(job = %id, %message, "the turn failed");
            let _ = app.store.fail(&id, &job.claim, &message).await;
            app.live.publish(&id, LiveEvent::Failed(message));
            app.metrics.count("rapport_jobs_total", &[("outcome", "failed")], 1);
            None
        }
    }
}

/// Puts a claimed job back in the queue for the next process, as the process stops. Bounded:
/// with the database away, the release would wait for it, and the job's lease runs out anyway
/// (then any process takes it).
async fn hand_back(app: &AppState, job: &ClaimedJob) {
    let id = &job.job.id;
    if tokio::time::timeout(HAND_BACK_WAIT, app.store.release(id, &job.claim)).await.is_err() {
        tracing::warn!(job = %id, "the database did not take the job back in time; it returns when its lease runs out");
    }
    app.live.abandon(id);
}

/// How long a stopping process tries to hand its job back.
const HAND_BACK_WAIT: Duration = Duration::from_secs(2);

/// How long a finished reply keeps trying to reach the database before it is dropped.
const STORE_RETRY_WINDOW: Duration = Duration::from_secs(30);

/// Stores a finished reply, waiting out a short database outage (a PostgreSQL restart): the
/// reply cost the model seconds, and dropping it means writing it again. Retrying is safe
/// because the store checks the claim: once the lease has lapsed and another worker has taken
/// the job, the write is refused as a conflict, and a write whose commit did land is refused the
/// same way (the job is no longer running) — never stored twice.
async fn store_reply(
    app: &AppState,
    job: &ClaimedJob,
    reply: &str,
    state: &str,
    trace: &str,
    told: &[NewMemory],
) -> Result<rapport_store::MessageRow, StoreError> {
    let give_up = Instant::now() + STORE_RETRY_WINDOW;
    let mut backoff = Duration::from_millis(200);
    loop {
        match app.store.complete(job, reply, state, trace, told).await {
            Err(StoreError::Database(e)) if Instant::now() + backoff < give_up => {
                tracing::warn!(job = %job.job.id, error = %e, "storing the reply failed; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            result => return result,
        }
    }
}

/// The turn itself: state in, reply and state out.
async fn write_reply(
    app: &AppState,
    job: &ClaimedJob,
    events: mpsc::UnboundedSender<TurnEvent>,
) -> Result<(TurnOutcome, Conversation), String> {
    let pipeline = app.personas.pipeline(&app.store, &job.persona).await.map_err(|e| e.message)?;
    let mut conversation: Conversation = serde_json::from_str(&job.state)
        .map_err(|e| format!("the stored conversation state is unreadable: {e}"))?;
    if remembers(app, &job.persona) {
        conversation.recalled = recalled(app, &job.job.conversation_id).await?;
    }
    let offset = zone(job.utc_offset_min);
    let now = Utc
        .timestamp_millis_opt(job.message_at)
        .single()
        .unwrap_or_else(Utc::now)
        .with_timezone(&offset);
    let mut on_event = move |event: TurnEvent| {
        let _ = events.send(event);
    };
    let outcome = pipeline
        .respond(&mut conversation, &job.message, now, app.generator.as_ref(), &mut on_event)
        .await
        .map_err(|e| e.to_string())?;
    Ok((outcome, conversation))
}

/// The person's time zone from their offset in minutes (UTC where it is out of range).
pub(crate) fn zone(utc_offset_min: i64) -> FixedOffset {
    FixedOffset::east_opt((utc_offset_min * 60) as i32)
        .unwrap_or(FixedOffset::east_opt(0).expect("zero offset"))
}

/// Whether `persona` remembers its person across conversations: every persona but a practice
/// scenario's, whose scene starts afresh each time it is played.
pub(crate) fn remembers(app: &AppState, persona: &str) -> bool {
    app.personas.scenarios().of_persona_id(persona).is_none()
}

/// What the persona recalls of the person from their other conversations. Read before every
/// turn, not kept in the state: a memory corrected or deleted in the page counts from the next
/// turn. A row of a kind this version does not know is left out rather than failing the turn.
pub(crate) async fn recalled(
    app: &AppState,
    conversation: &ConversationId,
) -> Result<Recalled, String> {
    let rows = app
        .store
        .recall(conversation)
        .await
        .map_err(|e| format!("reading what the persona remembers failed: {e}"))?;
    Ok(Recalled {
        facts: rows
            .into_iter()
            .filter_map(|m| Some(RecalledFact { kind: FactKind::parse(&m.kind)?, text: m.content }))
            .collect(),
    })
}

/// What the message told, to remember with its reply.
fn to_remember(app: &AppState, job: &ClaimedJob, trace: &TurnTrace) -> Vec<NewMemory> {
    if !remembers(app, &job.persona) {
        return Vec::new();
    }
    trace
        .told
        .iter()
        .map(|t| NewMemory {
            kind: t.kind.as_str().to_string(),
            subject: t.subject.clone(),
            content: t.text.clone(),
        })
        .collect()
}

fn forward(app: &AppState, job: &ClaimedJob, event: TurnEvent) {
    let live = match event {
        TurnEvent::Prepared(trace) => LiveEvent::Prepared(practice_view(&trace)),
        TurnEvent::Delta(text) => LiveEvent::Delta(text),
        TurnEvent::Retract => LiveEvent::Retract,
    };
    app.live.publish(&job.job.id, live);
}

/// Metrics of a finished turn.
fn record(app: &AppState, trace: &TurnTrace) {
    let m = &app.metrics;
    let t = &trace.timings_us;
    for (step, us) in [
        ("prepare", t.prepare),
        ("understand", t.understand),
        ("prompt", t.prompt),
        ("generate", t.generate),
        ("review", t.review),
    ] {
        m.seconds("rapport_pipeline_step_seconds", &[("step", step)], us as f64 / 1e6);
    }
    for hit in &trace.input_guards {
        m.count("rapport_guard_hits_total", &[("guard", hit.code()), ("direction", "message")], 1);
    }
    for attempt in &trace.attempts {
        if let AttemptOutcome::Rejected { hits } = &attempt.outcome {
            for hit in hits {
                m.count(
                    "rapport_guard_hits_total",
                    &[("guard", hit.code()), ("direction", "reply")],
                    1,
                );
            }
        }
        if let Some(ttft) = attempt.ttft_ms {
            m.seconds("rapport_ttft_seconds", &[], ttft as f64 / 1000.0);
            if let Some(tokens) = attempt.completion_tokens.filter(|t| *t > 1) {
                let decode_s = (attempt.total_ms.saturating_sub(ttft)) as f64 / 1000.0;
                if decode_s > 0.0 {
                    m.rate("rapport_decode_tokens_per_second", &[], (tokens - 1) as f64 / decode_s);
                }
            }
        }
    }
}

/// Starts the configured workers.
pub fn spawn_all(app: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    (0..app.config.workers).map(|n| tokio::spawn(run(app.clone(), n))).collect()
}
