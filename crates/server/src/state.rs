//! What every handler and worker shares.

use std::sync::Arc;
use std::time::Duration;

use rapport_core::Generator;
use rapport_store::Store;
use tokio::sync::{Notify, Semaphore};

use crate::limits::{RateLimit, RateLimiter};
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
            request_timeout: Duration::from_secs(30),
            turn_timeout: Duration::from_secs(600),
            worker_name: format!("pid{}", std::process::id()),
            secure_cookies: false,
            api_key: None,
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
    /// Per-session limits.
    pub limiter: Arc<RateLimiter>,
    /// Per-client limits of the OpenAI-compatible persona API (the same rate as a session's).
    pub api_limiter: Arc<RateLimiter<String>>,
    /// Generation slots: workers and the OpenAI API take one per reply, so the model never
    /// writes more replies at once than configured.
    pub slots: Arc<Semaphore>,
    /// Rung when a job is queued here, so an idle worker starts at once instead of at its next
    /// poll.
    pub queued: Arc<Notify>,
    /// Set when the server is shutting down.
    pub shutdown: Arc<tokio::sync::watch::Sender<bool>>,
}

impl AppState {
    /// Everything from its parts.
    pub fn new(store: Store, personas: Personas, generator: Arc<dyn Generator>, config: AppConfig) -> Self {
        let workers = config.workers.max(1);
        Self {
            store,
            personas: Arc::new(personas),
            generator,
            limiter: Arc::new(RateLimiter::new(config.rate)),
            api_limiter: Arc::new(RateLimiter::new(config.rate)),
            config: Arc::new(config),
            live: Arc::new(Live::default()),
            metrics: Arc::new(Metrics::default()),
            slots: Arc::new(Semaphore::new(workers)),
            queued: Arc::new(Notify::new()),
            shutdown: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}
