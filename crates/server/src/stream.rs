//! A reply as Server-Sent Events, from wherever it is being written.
//!
//! The stream follows one job: while queued it reports the position and an estimate of the
//! wait; while running in this process it relays the worker's events (after what was already
//! published, so a reload mid-reply loses nothing); while running in another process it follows
//! the partial text that worker saves with each heartbeat; when done it sends the stored message.
//! Events: `queued`, `started`, `prepared`, `delta`, `replace`, `retract`, `done`, `failed`.
//!
//! `failed` is said only when the job failed or cannot be read (not found, corrupt). A database
//! that is briefly away (a PostgreSQL restart, a pool timeout) is waited out: the worker keeps
//! writing through it, and a `failed` here would have the page offer "try again" for a reply
//! that is still coming — a retry the store then refuses, because that reply is still open.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use rapport_store::{ConversationId, Job, JobId, JobStatus, StoreError};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::live::LiveEvent;
use crate::practice::practice_view;
use crate::state::AppState;

type Tx = mpsc::Sender<Result<Event, Infallible>>;

/// The SSE response following `job` of `conversation`.
pub fn follow(
    app: AppState,
    conversation: ConversationId,
    job: JobId,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut shutdown = app.shutdown.subscribe();
        // Ends when the reply is finished, the client leaves, or the server shuts down (the
        // page reconnects, to another process if there is one).
        tokio::select! {
            _ = run(&app, &conversation, &job, &tx) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => {}
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

struct Gone;

async fn send(tx: &Tx, name: &str, data: Value) -> Result<(), Gone> {
    tx.send(Ok(Event::default().event(name).data(data.to_string()))).await.map_err(|_| Gone)
}

/// What to tell a waiting person: their place and roughly how long.
pub async fn queue_view(app: &AppState, job: &Job) -> Value {
    let position = app.store.position(job).await.ok();
    let mean_ms = app.store.mean_job_ms().await.ok().flatten();
    match position {
        Some(p) => {
            // Jobs ahead plus the ones running, shared among this process's workers (other
            // processes' workers make the real wait shorter; the estimate errs long).
            let eta = mean_ms.map(|ms| {
                ((p.ahead as f64 + p.running.max(1) as f64 / 2.0) * ms
                    / 1000.0
                    / app.config.workers.max(1) as f64)
                    .ceil()
            });
            json!({"position": p.ahead + 1, "running": p.running, "eta_seconds": eta})
        }
        None => json!({"position": null, "running": null, "eta_seconds": null}),
    }
}

async fn run(
    app: &AppState,
    conversation: &ConversationId,
    job_id: &JobId,
    tx: &Tx,
) -> Result<(), Gone> {
    let mut last_queue = Value::Null;
    let mut last_partial: Option<String> = None;
    let mut started = false;
    // Whether this stream has carried any of the reply's text: a reply written entirely between
    // two polls of a queued job (a short one, under light load) would otherwise reach its
    // client as a bare `done`, with no text streamed before it.
    let mut text_sent = false;
    loop {
        // Taken before the read, so that a start between the read and the wait below wakes it.
        let next_start = app.live.next_start();
        let job = match through_outage(tx, || app.store.job(conversation, job_id)).await? {
            Ok(job) => job,
            Err(e) => return send(tx, "failed", json!({"error": e.to_string()})).await,
        };
        match job.status {
            JobStatus::Queued => {
                let view = queue_view(app, &job).await;
                if view != last_queue {
                    send(tx, "queued", view.clone()).await?;
                    last_queue = view;
                }
                // A start here (this job, or one ahead of it, which moves the queue) is seen at
                // once; the poll is for a start in another process. Before, a reply written
                // within one poll interval streamed nothing before `done`, and every reply's
                // first words waited for the poll (up to 0.7 s more time to first text).
                tokio::select! {
                    _ = next_start => {}
                    _ = tokio::time::sleep(Duration::from_millis(700)) => {}
                }
            }
            JobStatus::Running => {
                if !started {
                    send(tx, "started", json!({"attempt": job.attempts})).await?;
                    started = true;
                }
                if let Some((snapshot, receiver)) = app.live.subscribe(job_id) {
                    if let Some(view) = snapshot.prepared {
                        send(tx, "prepared", view).await?;
                    }
                    text_sent = !snapshot.text.trim().is_empty();
                    send(tx, "replace", json!({"text": snapshot.text})).await?;
                    relay(app, job_id, receiver, tx, &mut text_sent).await?;
                    // The job ended here (or the worker dropped it): the database says how,
                    // the same way for every process.
                } else {
                    if last_partial.as_deref() != Some(job.partial.as_str()) {
                        text_sent = !job.partial.trim().is_empty();
                        send(tx, "replace", json!({"text": job.partial})).await?;
                        last_partial = Some(job.partial.clone());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            JobStatus::Done => {
                let Some(reply) = job.reply_message_id else { return send(tx, "failed", json!({"error": "the job has no reply"})).await };
                return match through_outage(tx, || app.store.message(conversation, &reply)).await? {
                    Ok(message) => {
                        if !text_sent && !message.content.trim().is_empty() {
                            send(tx, "replace", json!({"text": message.content})).await?;
                        }
                        let practice = app.store.trace(conversation, &reply).await.ok().and_then(|t| serde_json::from_str(&t).ok()).map(|t| practice_view(&t));
                        send(tx, "done", json!({"message": message, "practice": practice})).await
                    }
                    Err(e) => send(tx, "failed", json!({"error": e.to_string()})).await,
                };
            }
            JobStatus::Failed => return send(tx, "failed", json!({"error": job.error.unwrap_or_else(|| "the reply could not be written".into())})).await,
        }
    }
}

/// Longest wait between reads while the database is away.
const OUTAGE_BACKOFF_CAP: Duration = Duration::from_secs(2);

/// A read that waits out database errors (backing off up to [`OUTAGE_BACKOFF_CAP`]) for as long
/// as the client stays; the store's own answers (not found, corrupt) come back as they are.
async fn through_outage<T, F, Fut>(tx: &Tx, mut read: F) -> Result<Result<T, StoreError>, Gone>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    loop {
        match read().await {
            Err(StoreError::Database(e)) => {
                if !warned {
                    tracing::warn!(error = %e, "a reply stream cannot read the database; waiting for it");
                    warned = true;
                }
                // This loop sends nothing while it waits, so a client that left is noticed
                // here (its receiver is gone), not by a failed send.
                if tx.is_closed() {
                    return Err(Gone);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(OUTAGE_BACKOFF_CAP);
            }
            answer => return Ok(answer),
        }
    }
}

/// Relays this process's events until the job ends here.
async fn relay(
    app: &AppState,
    job_id: &JobId,
    mut receiver: broadcast::Receiver<LiveEvent>,
    tx: &Tx,
    text_sent: &mut bool,
) -> Result<(), Gone> {
    loop {
        match receiver.recv().await {
            Ok(LiveEvent::Prepared(view)) => send(tx, "prepared", view).await?,
            Ok(LiveEvent::Delta(text)) => {
                *text_sent |= !text.trim().is_empty();
                send(tx, "delta", json!({"text": text})).await?
            }
            Ok(LiveEvent::Retract) => {
                // The client clears what it showed; what follows must stream again.
                *text_sent = false;
                send(tx, "retract", json!({})).await?
            }
            Ok(LiveEvent::Done(_)) | Ok(LiveEvent::Failed(_)) => return Ok(()),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Fell behind: resynchronise on the whole text.
                let text = app.live.text(job_id).unwrap_or_default();
                *text_sent = !text.trim().is_empty();
                send(tx, "replace", json!({"text": text})).await?;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}
