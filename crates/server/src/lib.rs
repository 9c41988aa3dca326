//! Rapport's HTTP surface: the chat app and the workers that write its replies.
//!
//! A request flows: [`client`] (whose address) → [`session`] (cookie, CSRF; a stranger's reads
//! write nothing) → [`api`] (validation, then [`door`]: rate limits per session and per client,
//! the queue's bounds) → the store (message and job committed together) → 202. Then a [`worker`] claims the job, runs the
//! pipeline, and stores the reply, then (with no job waiting) reads the conversation's next turn ahead
//! into the prefix cache ([`read_ahead`]), as it does what the person is typing ([`drafts`]); [`stream`] relays the reply to the page as Server-Sent
//! Events from wherever it is being written ([`live`] in this process, the job's saved partial
//! text from another). [`companion`] offers the personas to OpenAI clients; [`openai`] offers a
//! bare model (`rapport serve-llm`).
//!
//! # Invariants
//! - A message is acknowledged only after it and its job are committed: a crash after the 202
//!   loses nothing, and the job is picked up again.
//! - Handlers never run the model; only workers (and the OpenAI endpoints, through the same
//!   generation slots) do, so the number of replies written at once is bounded.
//! - Every conversation read or write goes through the session's id; another session's ids
//!   read as not found.
//! - Every error leaves as `{"error": {"message", "type"}}` (axum's own rejections included).
//! - A request without a stored session that only reads writes nothing to the database.
//! - Every refusal for load (429, 503) carries `Retry-After` and is counted by reason.
#![deny(missing_docs)]

pub mod api;
pub mod app;
pub mod body;
pub mod client;
pub mod companion;
pub mod door;
pub mod drafts;
pub mod error;
pub mod limits;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod openai;
pub mod page;
pub mod personas;
pub mod practice;
pub mod read_ahead;
pub mod session;
pub mod state;
pub mod stream;
pub mod sweeper;
pub mod warm;
pub mod worker;

pub use app::{router, serve};
pub use limits::RateLimit;
pub use personas::{CoachTrust, Personas};
pub use state::{AppConfig, AppState};
