//! `rapport serve`: the chat app. SQLite in the user's data dir and the local default model
//! unless told otherwise; `--database-url postgres://…` and `--llm-url` scale it out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rapport_pipeline::prompt::{PromptLayout, Prompts, TokenBudget};
use rapport_pipeline::{PersonaLibrary, PipelineConfig};
use rapport_server::{AppConfig, AppState, CoachTrust, Personas, RateLimit};
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
    /// Do not read each shipped persona's opening into the prefix cache at start-up (the first
    /// conversation with each then reads it cold).
    #[arg(long)]
    no_warm: bool,
    /// Do not read a conversation's next prompt, up to the person's next message, into the
    /// prefix cache after each reply, nor up to what they are typing as the page sends it
    /// (their next turn then reads her reply and their whole message before it starts
    /// writing).
    #[arg(long)]
    no_read_ahead: bool,
    /// Show a reply word by word once this many words have passed the guards; 0 shows it
    /// sentence by sentence.
    #[arg(long, default_value_t = 3)]
    stream_words: usize,
    /// Do not check replies for breaks of character and unanswered questions: no second draft
    /// for a help-desk reply (faster on a CPU; a third of the default model's first drafts
    /// are written again, docs/eval/partner-quality.md). Leaks, topics and the secret are
    /// still checked.
    #[arg(long)]
    no_character_guard: bool,
    /// Write a help-desk draft again instead of cutting its help-desk sentences when the rest
    /// of it is a reply (the cut is on by default since its judged batch).
    #[arg(long)]
    no_cut_service: bool,
    /// Where each turn's notes and the persona's examples go (docs/eval/prompt-layout.md):
    /// `compact-history`, `compact`, `cached-exchanges`, `cached`, `notes-before-message`, or
    /// `notes-in-system` (for chat templates that allow only one system message). Default:
    /// `compact`, or `notes-in-system` for a model whose chat template needs it.
    #[arg(long)]
    layout: Option<PromptLayout>,
    #[command(flatten)]
    best_of: crate::eval::BestOfArgs,
    #[command(flatten)]
    door: DoorArgs,
}

/// Limits that follow the client's address, the queue's bounds, and expiry (docs/operate/open.md).
#[derive(Args, Debug)]
#[command(next_help_heading = "Running in the open")]
pub struct DoorArgs {
    /// Messages one client address may send per minute over all its sessions (sustained).
    #[arg(long, default_value_t = 60)]
    client_rate_per_minute: u32,
    /// Messages one client address may send at once.
    #[arg(long, default_value_t = 20)]
    client_rate_burst: u32,
    /// Sessions one client address may create per minute (a session is created by its first
    /// write; reads create nothing).
    #[arg(long, default_value_t = 20)]
    session_rate_per_minute: u32,
    /// Sessions one client address may create at once.
    #[arg(long, default_value_t = 20)]
    session_rate_burst: u32,
    /// Conversations one client address may start (and Character Cards it may import) per
    /// minute.
    #[arg(long, default_value_t = 30)]
    conversation_rate_per_minute: u32,
    /// Conversations one client address may start at once.
    #[arg(long, default_value_t = 30)]
    conversation_rate_burst: u32,
    /// Most replies waiting for a worker; past it new messages get 503 with Retry-After.
    #[arg(long, default_value_t = 100)]
    max_queued: usize,
    /// Most unfinished replies of one client address; past it, 429 with Retry-After. Guests
    /// behind one NAT (a venue's Wi-Fi) share it: raise it for them.
    #[arg(long, default_value_t = 4)]
    max_queued_per_client: usize,
    /// Header a trusted reverse proxy puts the client's address in (X-Forwarded-For or
    /// X-Real-IP). Off by default: the TCP peer is the client.
    #[arg(long, env = "RAPPORT_CLIENT_IP_HEADER")]
    client_ip_header: Option<String>,
    /// Proxies whose --client-ip-header is believed (addresses or networks, comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1,::1",
        env = "RAPPORT_TRUSTED_PROXIES"
    )]
    trusted_proxies: Vec<rapport_server::client::Network>,
    /// A session unused this long is deleted with its conversations: 30d, 12h, 90m, 45s; 0
    /// keeps sessions forever.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    session_ttl: Duration,
    /// A session that never sent a message, and a conversation with only the greeting, unused
    /// this long is deleted; 0 keeps them.
    #[arg(long, default_value = "1d", value_parser = parse_duration)]
    empty_ttl: Duration,
    /// Time between expiry sweeps.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    sweep_every: Duration,
}

impl DoorArgs {
    fn apply(&self, config: &mut AppConfig) -> anyhow::Result<()> {
        config.client_rate =
            RateLimit { per_minute: self.client_rate_per_minute, burst: self.client_rate_burst };
        config.conversation_rate = RateLimit {
            per_minute: self.conversation_rate_per_minute,
            burst: self.conversation_rate_burst,
        };
        config.session_rate =
            RateLimit { per_minute: self.session_rate_per_minute, burst: self.session_rate_burst };
        config.max_queued = self.max_queued.max(1);
        config.max_queued_per_client = self.max_queued_per_client.max(1);
        config.clients = rapport_server::client::ClientPolicy {
            header: self.client_ip_header.as_deref().map(|h| h.parse()).transpose().with_context(
                || format!("--client-ip-header {:?} is not a header name", self.client_ip_header),
            )?,
            trusted: self.trusted_proxies.clone(),
        };
        let keep = |d: Duration| (!d.is_zero()).then_some(d);
        config.expiry = rapport_server::state::ExpiryConfig {
            session_idle: keep(self.session_ttl),
            empty_idle: keep(self.empty_ttl),
            sweep_every: self.sweep_every.max(Duration::from_secs(1)),
        };
        Ok(())
    }
}

/// `30d`, `12h`, `90m`, `45s`, or `0`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("{text:?}: write a whole number and a unit, like 30d, 12h, 90m or 45s")
    })?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d (like 30d)")),
    };
    Ok(Duration::from_secs(n * seconds))
}

fn default_database() -> anyhow::Result<String> {
    let dir = dirs::data_dir()
        .context("no data directory for this user; pass --database-url")?
        .join("rapport");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(format!("sqlite://{}", dir.join("rapport.db").display()))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.best_of.check()?;
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => default_database()?,
    };
    let store = Store::connect(&url)
        .await
        .with_context(|| format!("opening the database {}", redact(&url)))?;
    let personas_dir = crate::persona_chat::personas_dir(args.personas.clone());
    let library = PersonaLibrary::load_dir(&personas_dir)?;
    // Scenarios live beside the personas they are played with (datasets/scenarios); a persona
    // directory of one's own without that sibling offers free chat only.
    let scenarios_dir = personas_dir.parent().map(|p| p.join("scenarios")).unwrap_or_default();
    let scenarios = rapport_eval::scenario::ScenarioLibrary::load_dir(&scenarios_dir, &library)
        .with_context(|| format!("loading the scenarios in {}", scenarios_dir.display()))?;
    let backend = args.backend.build().await?;
    let layout = backend.layout(args.layout)?;
    let mut sampling = backend.sampling.clone();
    if let Some(n) = args.max_tokens {
        sampling.max_tokens = n;
    }
    let nlu = if args.lexical_only {
        None
    } else {
        Some(Arc::new(tokio::task::spawn_blocking(|| crate::emotion::classifier(None)).await??))
    };
    let mut config = PipelineConfig {
        budget: TokenBudget {
            context_tokens: args.context_tokens,
            reply_tokens: sampling.max_tokens as usize,
        },
        sampling,
        stream_words: args.stream_words,
        character_guard: !args.no_character_guard,
        cut_service: !args.no_cut_service,
        layout,
        ..PipelineConfig::default()
    };
    // How far the coach's skill scores agree with a person's labels, measured from the shipped
    // labels so the page never shows a stale figure. The labels are read now (a bad file stops
    // the start with its line); the measurement (about a second of sentence encodings) runs
    // in the background and does not hold the port.
    let labels = personas_dir.parent().map(|p| p.join("coach/agreement.jsonl")).unwrap_or_default();
    let trust = if labels.is_file() {
        let items = rapport_eval::trust::load(&labels)?;
        let nlu = nlu.clone();
        CoachTrust::measured_by(move || {
            let encoder = nlu.as_deref().map(|c| c.encoder());
            match rapport_eval::trust::measure(&items, 39, encoder) {
                Ok(agreements) => rapport_eval::trust::by_skill(&agreements),
                Err(e) => {
                    tracing::warn!(error = %e, "the coach's agreement could not be measured");
                    Default::default()
                }
            }
        })
    } else {
        CoachTrust::none()
    };
    // The turn scorer judges with the persona's own engine: on one machine there is no other.
    let chooser = args.best_of.apply(
        &mut config,
        backend.generator.clone(),
        rapport_eval::judge::JudgeConfig::default(),
    )?;
    let mut personas = Personas::new(library, nlu, Arc::new(Prompts::embedded()), config)
        .with_scenarios(scenarios)
        .with_coach_trust(trust);
    if let Some(chooser) = chooser {
        personas = personas.with_chooser(chooser);
    }
    let mut app_config = AppConfig {
        workers: args.workers.max(1),
        lease: Duration::from_secs(args.lease_secs.max(2)),
        max_message_chars: args.max_message_chars,
        rate: RateLimit { per_minute: args.rate_per_minute, burst: args.rate_burst },
        secure_cookies: args.secure_cookies,
        api_key: args.api_key.clone(),
        warm_personas: !args.no_warm,
        read_ahead: !args.no_read_ahead,
        ..AppConfig::default()
    };
    args.door.apply(&mut app_config)?;
    let tls = match store.encrypted().await {
        Ok(Some(true)) => " (TLS)",
        Ok(Some(false)) => " (not encrypted: add ?sslmode=verify-full&sslrootcert=… to the URL)",
        _ => "",
    };
    eprintln!(
        "model {} · database {}{tls} · {} worker(s)",
        backend.model_name,
        redact(&url),
        app_config.workers
    );
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

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_with_their_unit() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("3 weeks").unwrap_err().contains("unit"));
        assert!(parse_duration("d").unwrap_err().contains("whole number"));
    }
}
