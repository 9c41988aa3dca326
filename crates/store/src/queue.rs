//! The durable generation queue.
//!
//! A job answers one user message. Workers claim the oldest queued job with one atomic
//! statement (on PostgreSQL the candidate row is locked with `FOR UPDATE SKIP LOCKED`, so
//! claimers on other processes skip it instead of waiting; SQLite has one writer at a time, so
//! the statement is atomic as it is). A claim is a lease: the worker extends it while it works;
//! a job whose lease ran out belongs to a process that died and is claimed again. Each claim
//! carries a fresh token, and a result is committed only together with a check of that token.
//!
//! The queue is bounded and fair. A job is admitted only while the waiting jobs and its
//! client's unfinished ones are under their bounds ([`Admission`]), checked in the transaction
//! that queues it (on PostgreSQL under a transaction-scoped advisory lock, so processes cannot
//! both squeeze past a bound). Each job gets a *turn*: one after its client's previous
//! unfinished job, never behind the turn claimed last; workers take the lowest turn. A client
//! that queues a burst therefore waits behind everyone else's next job, not in front of it.

use std::time::Duration;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::ids::random_hex;
use crate::memories::{remember, NewMemory};
use crate::{now_ms, Backend, ConversationId, JobId, MessageId, Store, StoreError};

/// What a job produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// The first reply to a message.
    Reply,
    /// Another reply to a message already answered (kept as an alternative).
    Regenerate,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a worker.
    Queued,
    /// A worker holds it.
    Running,
    /// The reply is stored.
    Done,
    /// Given up; `error` says why.
    Failed,
}

impl JobKind {
    fn as_str(self) -> &'static str {
        match self {
            JobKind::Reply => "reply",
            JobKind::Regenerate => "regenerate",
        }
    }
}

impl JobStatus {
    fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "done" => JobStatus::Done,
            "failed" => JobStatus::Failed,
            other => return Err(StoreError::Corrupt(format!("job status {other:?}"))),
        })
    }

    /// True once nothing more will happen to the job.
    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Done | JobStatus::Failed)
    }
}

/// A generation job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The message it answers.
    pub user_message_id: MessageId,
    /// Reply or regeneration.
    pub kind: JobKind,
    /// Where it is.
    pub status: JobStatus,
    /// Claims so far (more than one means a worker died holding it).
    pub attempts: i64,
    /// Unix ms.
    pub enqueued_at: i64,
    /// Unix ms of the latest claim.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub finished_at: Option<i64>,
    /// The reply so far, as last saved by the worker.
    pub partial: String,
    /// The stored reply, once done.
    pub reply_message_id: Option<MessageId>,
    /// Why it failed.
    pub error: Option<String>,
    /// Its place in the round-robin (internal: not sent to clients).
    #[serde(skip)]
    pub turn: i64,
}

/// Who asks for a reply and how much of the queue they may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The client (its network address, or what a trusted proxy says it is).
    pub client: String,
    /// Most jobs waiting for a worker, over all clients.
    pub max_queued: i64,
    /// Most unfinished (waiting or running) jobs of one client.
    pub max_per_client: i64,
}

impl Admission {
    /// No bounds, for tools and tests that queue on their own behalf.
    pub fn unbounded(client: impl Into<String>) -> Self {
        Self { client: client.into(), max_queued: i64::MAX, max_per_client: i64::MAX }
    }
}

/// Why a job was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFull {
    /// The client already has `limit` unfinished jobs.
    Client {
        /// Its unfinished jobs, counting the one refused.
        unfinished: i64,
        /// The bound.
        limit: i64,
    },
    /// `limit` jobs are already waiting.
    Server {
        /// Jobs waiting, counting the one refused.
        waiting: i64,
        /// The bound.
        limit: i64,
    },
}

impl std::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueFull::Client { limit, .. } => {
                write!(f, "this address already has {limit} replies waiting or being written")
            }
            QueueFull::Server { limit, .. } => {
                write!(f, "the server is busy: {limit} replies are already waiting")
            }
        }
    }
}

/// Any constant; it names the lock that serialises admissions across processes (PostgreSQL).
const ADMISSION_LOCK: i64 = 0x7261_7070_7175;

/// Queues a job for `admission.client` in `tx` if the bounds allow; the caller commits. The
/// job is inserted first and the bounds checked after (a SQLite transaction that writes first
/// never has to upgrade a read lock, which can fail instead of waiting); the caller's rollback
/// takes it out again when refused.
pub(crate) async fn admit_job(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    conversation: &ConversationId,
    message: &MessageId,
    kind: JobKind,
    now: i64,
    admission: &Admission,
) -> Result<Job, StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ADMISSION_LOCK)
            .execute(&mut **tx)
            .await?;
    }
    let job = insert_job(tx, conversation, message, kind, now, &admission.client).await?;
    let row = sqlx::query("SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued') AS waiting, (SELECT COUNT(*) FROM jobs WHERE client = $1 AND status IN ('queued', 'running')) AS unfinished")
        .bind(&admission.client)
        .fetch_one(&mut **tx)
        .await?;
    let (waiting, unfinished): (i64, i64) = (row.try_get("waiting")?, row.try_get("unfinished")?);
    if unfinished > admission.max_per_client {
        return Err(StoreError::QueueFull(QueueFull::Client {
            unfinished,
            limit: admission.max_per_client,
        }));
    }
    if waiting > admission.max_queued {
        return Err(StoreError::QueueFull(QueueFull::Server {
            waiting,
            limit: admission.max_queued,
        }));
    }
    Ok(job)
}

/// A job a worker holds, with what it needs to run the turn.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job.
    pub job: Job,
    /// This claim's token; every later write about the job must present it.
    pub claim: String,
    /// The persona's id.
    pub persona: String,
    /// The user's message.
    pub message: String,
    /// When it was written, Unix ms.
    pub message_at: i64,
    /// The user's UTC offset then, minutes.
    pub utc_offset_min: i64,
    /// The pipeline state the turn starts from (JSON).
    pub state: String,
}

/// Where a queued job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueuePosition {
    /// Queued jobs that will be taken before it.
    pub ahead: i64,
    /// Jobs being written now.
    pub running: i64,
}

const JOB_COLUMNS: &str = "id, conversation_id, user_message_id, kind, status, attempts, enqueued_at, started_at, finished_at, partial, reply_message_id, error, turn";

fn job_row(row: &AnyRow) -> Result<Job, StoreError> {
    let kind: String = row.try_get("kind")?;
    Ok(Job {
        id: JobId(row.try_get("id")?),
        conversation_id: ConversationId(row.try_get("conversation_id")?),
        user_message_id: MessageId(row.try_get("user_message_id")?),
        kind: match kind.as_str() {
            "reply" => JobKind::Reply,
            "regenerate" => JobKind::Regenerate,
            other => return Err(StoreError::Corrupt(format!("job kind {other:?}"))),
        },
        status: JobStatus::parse(&row.try_get::<String, _>("status")?)?,
        attempts: row.try_get("attempts")?,
        enqueued_at: row.try_get("enqueued_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        partial: row.try_get("partial")?,
        reply_message_id: row.try_get::<Option<String>, _>("reply_message_id")?.map(MessageId),
        error: row.try_get("error")?,
        turn: row.try_get("turn")?,
    })
}

async fn insert_job(
    tx: &mut Transaction<'_, Any>,
    conversation: &ConversationId,
    message: &MessageId,
    kind: JobKind,
    now: i64,
    client: &str,
) -> Result<Job, StoreError> {
    let id = JobId(random_hex());
    // The turn in the same statement as the insert, so no read comes before the write.
    let row = sqlx::query(
        "INSERT INTO jobs (id, conversation_id, user_message_id, kind, status, enqueued_at, attempts, partial, client, turn) \
         SELECT $1, $2, $3, $4, 'queued', $5, 0, '', $6, CASE WHEN mine.t + 1 > claimed.t THEN mine.t + 1 ELSE claimed.t END \
         FROM (SELECT COALESCE(MAX(turn), -1) AS t FROM jobs WHERE client = $6 AND status IN ('queued', 'running')) mine, \
              (SELECT COALESCE(MAX(turn), 0) AS t FROM jobs WHERE started_at IS NOT NULL) claimed \
         RETURNING turn",
    )
    .bind(id.as_str())
    .bind(conversation.as_str())
    .bind(message.as_str())
    .bind(kind.as_str())
    .bind(now)
    .bind(client)
    .fetch_one(&mut **tx)
    .await?;
    let turn: i64 = row.try_get("turn")?;
    Ok(Job {
        id,
        conversation_id: conversation.clone(),
        user_message_id: message.clone(),
        kind,
        status: JobStatus::Queued,
        attempts: 0,
        enqueued_at: now,
        started_at: None,
        finished_at: None,
        partial: String::new(),
        reply_message_id: None,
        error: None,
        turn,
    })
}

pub(crate) async fn job_of_message(
    pool: &AnyPool,
    message: &MessageId,
) -> Result<Option<Job>, StoreError> {
    let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE user_message_id = $1 ORDER BY enqueued_at DESC, id LIMIT 1")).bind(message.as_str()).fetch_optional(pool).await?;
    row.as_ref().map(job_row).transpose()
}

impl Store {
    /// Claims the job with the lowest turn (then the oldest) that is queued or whose holder's
    /// lease ran out, for `lease`.
    /// `worker` names the claimer in the row (for people reading the table).
    pub async fn claim(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedJob>, StoreError> {
        let now = now_ms();
        let claim = format!("{worker}/{}", random_hex());
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET status = 'running', claimed_by = $1, lease_until = $2, attempts = attempts + 1, started_at = $3 \
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued' OR (status = 'running' AND lease_until < $3) \
                         ORDER BY turn, enqueued_at, id LIMIT 1 {lock}) \
             RETURNING {JOB_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&claim)
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let job = job_row(&row)?;
        let found = sqlx::query("SELECT c.persona, m.content, m.created_at, m.utc_offset_min, m.seq FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE m.id = $1")
            .bind(job.user_message_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(found) = found else {
            // The conversation was deleted between the claim and this read.
            self.fail(&job.id, &claim, "the conversation was deleted").await?;
            return Ok(None);
        };
        let seq: i64 = found.try_get("seq")?;
        let state = self.state_after(&job.conversation_id, seq - 1).await?;
        Ok(Some(ClaimedJob {
            job,
            claim,
            persona: found.try_get("persona")?,
            message: found.try_get("content")?,
            message_at: found.try_get("created_at")?,
            utc_offset_min: found.try_get("utc_offset_min")?,
            state,
        }))
    }

    /// Extends the claim's lease; false when the claim is no longer held (taken over or the
    /// conversation deleted), and the worker should stop.
    pub async fn heartbeat(
        &self,
        job: &JobId,
        claim: &str,
        lease: Duration,
        partial: Option<&str>,
    ) -> Result<bool, StoreError> {
        let until = now_ms() + lease.as_millis() as i64;
        let done = match partial {
            Some(text) => {
                sqlx::query("UPDATE jobs SET lease_until = $1, partial = $2 WHERE id = $3 AND claimed_by = $4 AND status = 'running'").bind(until).bind(text).bind(job.as_str()).bind(claim).execute(&self.pool).await?
            }
            None => sqlx::query("UPDATE jobs SET lease_until = $1 WHERE id = $2 AND claimed_by = $3 AND status = 'running'").bind(until).bind(job.as_str()).bind(claim).execute(&self.pool).await?,
        };
        Ok(done.rows_affected() == 1)
    }

    /// Stores the reply, its trace and the pipeline state after it, and what the message
    /// `told` to remember, and closes the job, in one transaction that also checks the claim.
    /// Returns the reply's message, or `Conflict` when
    /// the claim was lost (nothing is written then).
    pub async fn complete(
        &self,
        claimed: &ClaimedJob,
        reply: &str,
        state: &str,
        trace: &str,
        told: &[NewMemory],
    ) -> Result<MessageRow, StoreError> {
        let now = now_ms();
        let reply_id = MessageId(random_hex());
        let mut tx = self.pool.begin().await?;
        let closed = sqlx::query("UPDATE jobs SET status = 'done', finished_at = $1, reply_message_id = $2, partial = $3 WHERE id = $4 AND claimed_by = $5 AND status = 'running'")
            .bind(now)
            .bind(reply_id.as_str())
            .bind(reply)
            .bind(claimed.job.id.as_str())
            .bind(&claimed.claim)
            .execute(&mut *tx)
            .await?;
        if closed.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(StoreError::Conflict(
                "the job's claim was lost; another worker has it".into(),
            ));
        }
        let conversation = claimed.job.conversation_id.as_str();
        let user_seq: i64 = sqlx::query("SELECT seq FROM messages WHERE id = $1")
            .bind(claimed.job.user_message_id.as_str())
            .fetch_one(&mut *tx)
            .await?
            .try_get("seq")?;
        sqlx::query("UPDATE messages SET active = 0 WHERE conversation_id = $1 AND seq = $2")
            .bind(conversation)
            .bind(user_seq + 1)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(
            "INSERT INTO messages (id, conversation_id, seq, alternative, active, role, content, state, trace, utc_offset_min, created_at) \
             SELECT $1, $2, $3, COALESCE(MAX(alternative), -1) + 1, 1, 'assistant', $4, $5, $6, $7, $8 FROM messages WHERE conversation_id = $2 AND seq = $3 RETURNING alternative",
        )
        .bind(reply_id.as_str())
        .bind(conversation)
        .bind(user_seq + 1)
        .bind(reply)
        .bind(state)
        .bind(trace)
        .bind(claimed.utc_offset_min)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let alternative: i64 = row.try_get("alternative")?;
        // What the message told is remembered with its first reply only: a regenerated reply
        // answers the same message, and must not bring back a memory the person deleted.
        if claimed.job.kind == JobKind::Reply {
            remember(&mut tx, conversation, claimed.job.user_message_id.as_str(), told, now)
                .await?;
        }
        sqlx::query("UPDATE conversations SET updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(conversation)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(MessageRow {
            id: reply_id,
            seq: user_seq + 1,
            alternative,
            alternatives: alternative + 1,
            role: "assistant".into(),
            content: reply.into(),
            created_at: now,
            utc_offset_min: claimed.utc_offset_min,
            has_trace: true,
        })
    }

    /// Gives a job up with `error` (when the claim is still held).
    pub async fn fail(&self, job: &JobId, claim: &str, error: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET status = 'failed', finished_at = $1, error = $2 WHERE id = $3 AND claimed_by = $4 AND status = 'running'").bind(now_ms()).bind(error).bind(job.as_str()).bind(claim).execute(&self.pool).await?;
        Ok(())
    }

    /// Puts a held job back in the queue at its old place (a worker shutting down cleanly).
    pub async fn release(&self, job: &JobId, claim: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET status = 'queued', claimed_by = NULL, lease_until = NULL, attempts = attempts - 1, partial = '' WHERE id = $1 AND claimed_by = $2 AND status = 'running'")
            .bind(job.as_str())
            .bind(claim)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A job by id, if it belongs to `conversation`.
    pub async fn job(&self, conversation: &ConversationId, id: &JobId) -> Result<Job, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND conversation_id = $2"
        ))
        .bind(id.as_str())
        .bind(conversation.as_str())
        .fetch_optional(&self.pool)
        .await?;
        job_row(&row.ok_or(StoreError::NotFound("job"))?)
    }

    /// The conversation's unfinished job, if any.
    pub async fn open_job(&self, conversation: &ConversationId) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE conversation_id = $1 AND status IN ('queued', 'running')")).bind(conversation.as_str()).fetch_optional(&self.pool).await?;
        row.as_ref().map(job_row).transpose()
    }

    /// The conversation's most recent job.
    pub async fn latest_job(
        &self,
        conversation: &ConversationId,
    ) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE conversation_id = $1 ORDER BY enqueued_at DESC, id DESC LIMIT 1")).bind(conversation.as_str()).fetch_optional(&self.pool).await?;
        row.as_ref().map(job_row).transpose()
    }

    /// How many queued jobs will be taken before `job` as the queue stands (another client's
    /// next job may still come in ahead of a burst), and how many are running.
    pub async fn position(&self, job: &Job) -> Result<QueuePosition, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND (turn < $3 OR (turn = $3 AND (enqueued_at < $1 OR (enqueued_at = $1 AND id < $2))))) AS ahead, \
                    (SELECT COUNT(*) FROM jobs WHERE status = 'running') AS running",
        )
        .bind(job.enqueued_at)
        .bind(job.id.as_str())
        .bind(job.turn)
        .fetch_one(&self.pool)
        .await?;
        Ok(QueuePosition { ahead: row.try_get("ahead")?, running: row.try_get("running")? })
    }

    /// Jobs queued and running now (for the metrics).
    pub async fn depth(&self) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query("SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued') AS queued, (SELECT COUNT(*) FROM jobs WHERE status = 'running') AS running").fetch_one(&self.pool).await?;
        Ok((row.try_get("queued")?, row.try_get("running")?))
    }

    /// Mean time a worker spent on each of the last 20 finished jobs, ms (for wait estimates).
    pub async fn mean_job_ms(&self) -> Result<Option<f64>, StoreError> {
        let rows = sqlx::query("SELECT finished_at - started_at AS spent FROM jobs WHERE status = 'done' AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT 20").fetch_all(&self.pool).await?;
        let spent: Vec<i64> =
            rows.iter().map(|r| r.try_get::<i64, _>("spent")).collect::<Result<_, _>>()?;
        Ok((!spent.is_empty()).then(|| spent.iter().sum::<i64>() as f64 / spent.len() as f64))
    }
}

use crate::MessageRow;
