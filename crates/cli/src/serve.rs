//! `rapport serve`: the chat app. SQLite in the user's data dir and the local default model
//! unless told otherwise; `--database-url postgres://…` and `--llm-url` scale it out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rapport_pipeline::prompt::{Prompts, TokenBudget};
use rapport_pipeline::{PersonaLibrary, PipelineConfig};
use rapport_server::{AppConfig, AppState, Personas, RateLimit};
use rapport_store::Store;

use crate::backend::BackendArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Address to listen on. Port 0 picks a free one (printed on start).
    #[arg(long, default_value = "127.0.0.1:8080", env = "RAPPORT_LISTEN")]
    listen: SocketAddr,
    /// Where conversations live: sqlite:///path/file.db (default: rapport.db in the user's data
    /// dir) or postgres://user:password@host/db to share the work among several processes.
    #[arg(long, env = "RAPPORT_DATABASE_URL")]
    database_url: Option<String>,
    /// Where persona ids are looked up.
    #[arg(long, env = "RAPPORT_PERSONAS")]
    personas: Option<PathBuf>,
    /// Replies written at once by this process (on a CPU, 1 is fastest per reply).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Upper bound on tokens per reply (defaults to the model's preset).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Context window the prompt may fill, in tokens.
    #[arg(long, default_value_t = 2048)]
    context_tokens: usize,
    /// Skip the emotion model and sentence vectors (lexical guards and neutral emotion only).
    #[arg(long)]
    lexical_only: bool,
    /// Seconds a worker's claim on a job holds without a heartbeat; after a crash the job is
    /// taken again this long after the last heartbeat.
    #[arg(long, default_value_t = 30)]
    lease_secs: u64,
    /// Longest user message, in characters.
    #[arg(long, default_value_t = 2000)]
    max_message_chars: usize,
    /// Messages a session may send per minute (sustained).
    #[arg(long, default_value_t = 20)]
    rate_per_minute: u32,
    /// Messages a session may send at once before the rate applies.
    #[arg(long, default_value_t = 6)]
    rate_burst: u32,
    /// Mark the session cookie Secure even without `X-Forwarded-Proto: https`.
    #[arg(long)]
    secure_cookies: bool,
    /// Require this bearer token on the OpenAI-compatible API (/v1).
    #[arg(long, env = "RAPPORT_API_KEY")]
    api_key: Option<String>,
}

fn default_database() -> anyhow::Result<String> {
    let dir = dirs::data_dir().context("no data directory for this user; pass --database-url")?.join("rapport");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(format!("sqlite://{}", dir.join("rapport.db").display()))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => default_database()?,
    };
    let store = Store::connect(&url).await.with_context(|| format!("opening the database {}", redact(&url)))?;
    let library = PersonaLibrary::load_dir(&crate::persona_chat::personas_dir(args.personas.clone()))?;
    let backend = args.backend.build().await?;
    let mut sampling = backend.sampling.clone();
    if let Some(n) = args.max_tokens {
        sampling.max_tokens = n;
    }
    let nlu = if args.lexical_only { None } else { Some(Arc::new(tokio::task::spawn_blocking(|| crate::emotion::classifier(None)).await??)) };
    let config = PipelineConfig { budget: TokenBudget { context_tokens: args.context_tokens, reply_tokens: sampling.max_tokens as usize }, sampling, ..PipelineConfig::default() };
    let personas = Personas::new(library, nlu, Arc::new(Prompts::embedded()), config);
    let app_config = AppConfig {
        workers: args.workers.max(1),
        lease: Duration::from_secs(args.lease_secs.max(2)),
        max_message_chars: args.max_message_chars,
        rate: RateLimit { per_minute: args.rate_per_minute, burst: args.rate_burst },
        secure_cookies: args.secure_cookies,
        api_key: args.api_key.clone(),
        ..AppConfig::default()
    };
    eprintln!("model {} · database {} · {} worker(s)", backend.model_name, redact(&url), app_config.workers);
    let app = AppState::new(store, personas, backend.generator, app_config);
    rapport_server::serve(app, args.listen).await?;
    Ok(())
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
