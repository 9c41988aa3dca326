//! Rapport's durable state: browser sessions, conversations and their messages (with the
//! pipeline's state and trace per reply), imported personas, and the generation queue.
//!
//! One [`Store`] talks to SQLite (the default: one file, one machine) or PostgreSQL (several
//! `rapport serve` processes sharing the work). Both sit behind sqlx's `Any` pool and one schema
//! of TEXT and BIGINT columns, so every statement is written once; the only dialect difference
//! is how the queue claims a job ([`queue`]).
//!
//! # Invariants
//! - A user's message and the job that answers it are committed in one transaction before the
//!   server acknowledges the message: an acknowledged message is never lost.
//! - At most one unfinished job per conversation (a unique partial index), so turns are answered
//!   in order.
//! - A job's result is committed only by the worker that holds its claim (the claim token is
//!   checked in the same transaction); a worker whose lease ran out and was taken over commits
//!   nothing. A reply is therefore written at most once, and, because expired claims are taken
//!   again, at least once while the job is retried.
//! - Every read or write a browser asks for is scoped by its session id.
//! - Reads never write: a session's row is written on its first write, and a stranger who only
//!   reads leaves the database as it was.
//! - A job is queued only if the queue, and its client's share of it, are under their bounds,
//!   checked in the transaction that queues it; workers take jobs round-robin across clients.
#![deny(missing_docs)]

mod conversations;
mod error;
mod ids;
mod limits;
mod memories;
mod queue;
mod schema;
mod sessions;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use conversations::{ConversationRow, ExportedConversation, MessageRow, Posted, StoredPersona};
pub use error::StoreError;
pub use ids::{now_ms, ConversationId, JobId, MessageId, SessionId};
pub use limits::Gcra;
pub use memories::{MemoryRow, NewMemory, MEMORIES_KEPT};
pub use queue::{Admission, ClaimedJob, Job, JobKind, JobStatus, QueueFull, QueuePosition};
pub use sessions::{session_id_of, Expired, Expiry, NewSession, Session};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One file, one machine.
    Sqlite,
    /// Shared by several processes.
    Postgres,
}

/// The database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    session_key: sessions::SessionKey,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish()
    }
}

impl Store {
    /// Opens `url` (`sqlite:///path/to/file.db` or `postgres://user:pass@host/db`), creating a
    /// SQLite file if needed, and applies the migrations the database lacks.
    ///
    /// PostgreSQL connections use TLS (rustls) as the URL's `sslmode` says: `prefer` (the
    /// default) encrypts when the server offers it, `require` refuses a server that does not,
    /// `verify-ca` and `verify-full` also check the certificate against `sslrootcert` (or the
    /// Mozilla roots built in) and, for `verify-full`, the host name.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Config(format!("unsupported database URL {url:?}: use sqlite:///path/file.db or postgres://user:password@host/db")));
        };
        let url = match backend {
            // Create the file on first start; `mode=rwc` is SQLite's open-or-create.
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| StoreError::Config(format!("bad database URL: {e}")))?;
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers (the page, the SSE streams) run beside the one writer;
                        // the busy timeout makes a second writer wait instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        schema::migrate(&pool, backend).await?;
        let session_key = sessions::load_key(&pool).await?;
        Ok(Self { pool, backend, session_key })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs one statement outside any session's scope (tests and operators: `CREATE DATABASE`).
    pub async fn execute_admin(&self, sql: &str) -> Result<(), StoreError> {
        sqlx::query(sql).execute(&self.pool).await?;
        Ok(())
    }

    /// Whether this pool's connection to the database is encrypted, as PostgreSQL sees it
    /// (`None` on SQLite, a local file). Logged at start so an operator sees what `sslmode`
    /// gave them.
    pub async fn encrypted(&self) -> Result<Option<bool>, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let row = sqlx::query("SELECT CAST(CASE WHEN ssl THEN 1 ELSE 0 END AS BIGINT) AS tls FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(&self.pool).await?;
        Ok(Some(sqlx::Row::try_get::<i64, _>(&row, "tls")? == 1))
    }

    /// Succeeds when the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
