//! What every handler and worker shares.

use std::sync::Arc;
use std::time::Duration;

use rapport_core::Generator;
use rapport_store::Store;
use tokio::sync::{Notify, Semaphore};

use crate::client::ClientPolicy;
use crate::limits::{InFlight, Limits, RateLimit};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::personas::Personas;

/// How the app runs.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Workers in this process (replies written at once). On a CPU one is fastest: two replies
    /// at once share the cores and both finish later.
    pub workers: usize,
    /// How long a claim holds without a heartbeat; after that the job is taken again.
    pub lease: Duration,
    /// Longest user message, characters.
    pub max_message_chars: usize,
    /// Largest request body, bytes (Character Card imports may send up to 8 MiB).
    pub max_body_bytes: usize,
    /// Messages per session.
    pub rate: RateLimit,
    /// Messages per client address, over all its sessions (a script that drops its cookie is
    /// still one client).
    pub client_rate: RateLimit,
    /// Sessions a client address may create (on their first write).
    pub session_rate: RateLimit,
    /// Conversations a client address may start and personas it may import.
    pub conversation_rate: RateLimit,
    /// Most replies waiting for a worker, over all clients; past it, 503 with `Retry-After`.
    pub max_queued: usize,
    /// Most unfinished replies of one client address; past it, 429 with `Retry-After`.
    pub max_queued_per_client: usize,
    /// Where a client's address comes from (the peer, or a trusted proxy's header).
    pub clients: ClientPolicy,
    /// What expires, and how often the server looks.
    pub expiry: ExpiryConfig,
    /// Read each shipped persona's opening into the prefix cache at start-up (`warm`).
    pub warm_personas: bool,
    /// After each stored reply, read the conversation's next prompt up to the person's next
    /// message into the prefix cache while no job waits (`read_ahead`), and the same prompt up
    /// to what they are typing as they type (`drafts`).
    pub read_ahead: bool,
    /// Time limit of ordinary requests (not streams).
    pub request_timeout: Duration,
    /// Longest a whole turn may take before the job is failed.
    pub turn_timeout: Duration,
    /// This process's name in the queue's rows.
    pub worker_name: String,
    /// Mark cookies Secure even without `X-Forwarded-Proto: https`.
    pub secure_cookies: bool,
    /// Bearer token the OpenAI-compatible API requires, if any.
    pub api_key: Option<String>,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            lease: Duration::from_secs(30),
            max_message_chars: 2000,
            max_body_bytes: 64 * 1024,
            rate: RateLimit { per_minute: 20, burst: 6 },
            client_rate: RateLimit { per_minute: 60, burst: 20 },
            session_rate: RateLimit { per_minute: 20, burst: 20 },
            conversation_rate: RateLimit { per_minute: 30, burst: 30 },
            max_queued: 100,
            max_queued_per_client: 4,
            clients: ClientPolicy::default(),
            expiry: ExpiryConfig::default(),
            warm_personas: true,
            read_ahead: true,
            request_timeout: Duration::from_secs(30),
            turn_timeout: Duration::from_secs(600),
            worker_name: format!("pid{}", std::process::id()),
            secure_cookies: false,
            api_key: None,
        }
    }
}

/// What expires (see `rapport_store::Expiry`), and how often the server sweeps.
#[derive(Debug, Clone, Copy)]
pub struct ExpiryConfig {
    /// A session unseen this long goes with everything in it; `None` keeps sessions.
    pub session_idle: Option<Duration>,
    /// A session that never sent a message, or a greeting-only conversation, unseen this long
    /// goes; `None` keeps them.
    pub empty_idle: Option<Duration>,
    /// Time between sweeps (the first runs a minute after start).
    pub sweep_every: Duration,
}

impl Default for ExpiryConfig {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            session_idle: Some(Duration::from_secs(30 * DAY)),
            empty_idle: Some(Duration::from_secs(DAY)),
            sweep_every: Duration::from_secs(600),
        }
    }
}

impl ExpiryConfig {
    /// The store's policy.
    pub fn policy(&self) -> rapport_store::Expiry {
        rapport_store::Expiry {
            session_idle_ms: self.session_idle.map(|d| d.as_millis() as i64),
            empty_idle_ms: self.empty_idle.map(|d| d.as_millis() as i64),
        }
    }
}

/// Shared by handlers and workers.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Personas and their pipelines.
    pub personas: Arc<Personas>,
    /// Writes the replies.
    pub generator: Arc<dyn Generator>,
    /// The settings.
    pub config: Arc<AppConfig>,
    /// Replies being written in this process.
    pub live: Arc<Live>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Rate limits (shared through PostgreSQL, or in this process on SQLite).
    pub limits: Arc<Limits>,
    /// Replies the OpenAI-compatible route is writing or waiting for, per client.
    pub in_flight: Arc<InFlight>,
    /// Generation slots: workers and the OpenAI API take one per reply, so the model never
    /// writes more replies at once than configured.
    pub slots: Arc<Semaphore>,
    /// Rung when a job is queued here, so an idle worker starts at once instead of at its next
    /// poll.
    pub queued: Arc<Notify>,
    /// What people are typing, waiting to be read ahead (`drafts`).
    pub drafts: Arc<crate::drafts::Drafts>,
    /// Set when the server is shutting down.
    pub shutdown: Arc<tokio::sync::watch::Sender<bool>>,
}

impl AppState {
    /// Everything from its parts.
    pub fn new(
        store: Store,
        personas: Personas,
        generator: Arc<dyn Generator>,
        config: AppConfig,
    ) -> Self {
        let workers = config.workers.max(1);
        Self {
            limits: Arc::new(Limits::new(&store)),
            in_flight: Arc::new(InFlight::default()),
            store,
            personas: Arc::new(personas),
            generator,
            config: Arc::new(config),
            live: Arc::new(Live::default()),
            metrics: Arc::new(Metrics::default()),
            slots: Arc::new(Semaphore::new(workers)),
            queued: Arc::new(Notify::new()),
            drafts: Arc::default(),
            shutdown: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}
