//! The command line of `rapport-load`, in the library so that the documentation check
//! (`rapport`'s `docs_check`) parses the `rapport-load …` lines shown in the docs with the real
//! parser.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::faults::Fault;
use crate::run::Scenario;

#[derive(Parser)]
#[command(
    name = "rapport-load",
    version,
    about = "Load, concurrency and chaos runs against `rapport serve`"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Simulated people chatting at once; prints and saves the latency, throughput and memory.
    Run(RunArgs),
    /// The same load at several concurrency levels, each on a fresh server; saves the table and
    /// the latency/throughput charts.
    Sweep(SweepArgs),
    /// Break something under load, then check every acknowledged message is stored once and
    /// answered once.
    Chaos(ChaosArgs),
    /// A hostile crowd (cookie-less readers, cookie-dropping flooders) beside one patient guest:
    /// the guest's latency quiet and under the flood, database growth, what was refused.
    Abuse(AbuseArgs),
    /// One person's scripted conversation: message → first words and → whole reply per turn,
    /// with each reply's trace (queue, steps, prompt tokens new and cached, TTFT, decode).
    Latency(LatencyArgs),
    /// Draw a saved sweep's table and charts again from its sweep.json.
    Redraw {
        /// The sweep's directory.
        dir: PathBuf,
    },
}

/// How the servers this program starts are set up.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The model preset or GGUF path for `rapport serve`.
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    /// Tokens per reply at most.
    #[arg(long, default_value_t = 48)]
    pub max_tokens: u32,
    /// Further `rapport serve` arguments, e.g. --serve-arg=--lexical-only.
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    /// Persona id the people talk to.
    #[arg(long, default_value = "flirt-partner")]
    pub persona: String,
    /// The server's persona directory (default: the shipped personas). `datasets/load/personas`
    /// holds `brief`, whose short prompt keeps prefill from dominating a load run on a CPU.
    #[arg(long)]
    pub personas: Option<PathBuf>,
    /// Where the reports go.
    #[arg(long, default_value = "benches/results/load")]
    pub out: PathBuf,
}

impl ServerArgs {
    /// The server as deployed: its own limits, not the load runs' raised ones.
    pub fn serve_args_with_limits(&self) -> Vec<String> {
        let mut args: Vec<String> =
            ["--model", &self.model, "--max-tokens", &self.max_tokens.to_string()]
                .iter()
                .map(|s| s.to_string())
                .collect();
        if let Some(dir) = &self.personas {
            args.extend(["--personas".into(), dir.display().to_string()]);
        }
        args.extend(self.serve_args.iter().cloned());
        args
    }

    pub fn serve_args(&self) -> Vec<String> {
        // Load is about the model and the queue, not the per-person rate limit.
        let mut args = self.serve_args_with_limits();
        args.extend(["--rate-per-minute", "100000", "--rate-burst", "100000"].map(String::from));
        args
    }
}

#[derive(Args)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "short")]
    pub scenario: Scenario,
    /// People at once (default: the scenario's).
    #[arg(long)]
    pub users: Option<usize>,
    /// Messages per conversation (default: the scenario's).
    #[arg(long)]
    pub turns: Option<usize>,
    /// Nobody sends anything new after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub max_secs: u64,
    /// A running server to load instead of starting one (its memory is then not sampled unless
    /// --pid is given).
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long, requires = "url")]
    pub pid: Option<u32>,
    /// Workers of the started server.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct SweepArgs {
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    pub levels: Vec<usize>,
    #[arg(long, default_value_t = 2)]
    pub turns: usize,
    /// Conversations measured per level at least.
    #[arg(long, default_value_t = 8)]
    pub min_conversations: usize,
    /// Fixed workers for every level (default: as many as people).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Append every level's server log, with the engine's per-step lines, to this file
    /// (summarised by `python3 benches/engine_steps.py FILE`: time reading prompts against
    /// decoding, batch sizes, cache rebuilds).
    #[arg(long)]
    pub engine_steps: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct AbuseArgs {
    /// Server processes sharing the database (2 on PostgreSQL shows the limits are shared).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Default: a fresh SQLite file.
    #[arg(long)]
    pub database_url: Option<String>,
    /// The guest's messages in the quiet phase and again during the flood.
    #[arg(long, default_value_t = 4)]
    pub turns: usize,
    /// Cookie-less read loops.
    #[arg(long, default_value_t = 4)]
    pub readers: usize,
    /// Reads per second over all readers.
    #[arg(long, default_value_t = 100.0)]
    pub reads_per_second: f64,
    /// Seconds of reads alone, after which the database must be unchanged.
    #[arg(long, default_value_t = 10)]
    pub reads_secs: u64,
    /// Flooding loops (each: fresh session, new conversation, a message; Retry-After ignored).
    #[arg(long, default_value_t = 8)]
    pub flooders: usize,
    /// Addresses the flooders spread over (1: one script on one machine).
    #[arg(long, default_value_t = 1)]
    pub flood_addresses: usize,
    /// Milliseconds between a flooder's rounds.
    #[arg(long, default_value_t = 20)]
    pub flood_pause_ms: u64,
    /// Seconds the guest waits after each reply before writing again (the flood runs on).
    #[arg(long, default_value_t = 5)]
    pub guest_pause_secs: u64,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct LatencyArgs {
    /// The person's messages, one per line.
    #[arg(long, default_value = "datasets/prompts/secret-game-guest.txt")]
    pub script: PathBuf,
    /// Only the first N messages.
    #[arg(long)]
    pub turns: Option<usize>,
    /// Seconds the person waits after each reply.
    #[arg(long, default_value_t = 2)]
    pub pause_secs: u64,
    /// Seconds between the server listening and the first message.
    #[arg(long, default_value_t = 15)]
    pub settle_secs: u64,
    /// Type each message at this many milliseconds per character, sending the draft at each
    /// finished word as the page does (0: each message is sent whole).
    #[arg(long, default_value_t = 0)]
    pub typing_ms_per_char: u64,
    /// Milliseconds from a typed message's last character to pressing Enter (over 300, the
    /// page's pause, the draft marked paused is sent too).
    #[arg(long, default_value_t = 200)]
    pub send_after_ms: u64,
    /// Type at that pace but send no drafts (the control for what drafts save).
    #[arg(long)]
    pub no_drafts: bool,
    /// A name for this configuration in the result files (e.g. "warm-words").
    #[arg(long, default_value = "default")]
    pub label: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct ChaosArgs {
    #[command(subcommand)]
    pub drill: Drill,
}

#[derive(Subcommand)]
pub enum Drill {
    /// SIGKILL the server at random moments and restart it, many times.
    Kill {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        #[arg(long, default_value_t = 4)]
        people: usize,
        /// Milliseconds between a restart and the next kill: a range, uniform.
        #[arg(long, default_value = "500-6000")]
        gap_ms: GapRange,
        /// Default: a fresh SQLite file.
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Generation through a proxy that hangs, resets, answers garbage or 503, in front of a real
    /// `rapport serve-llm`.
    Backend {
        #[arg(long, default_value_t = 3)]
        people: usize,
        #[arg(long, default_value_t = 4)]
        turns: usize,
        #[arg(
            long,
            value_delimiter = ',',
            value_enum,
            default_value = "pass,hang,pass,reset,pass,garbage,unavailable,pass"
        )]
        schedule: Vec<Fault>,
        /// Seconds the server waits for the model server's first byte (and between chunks). Each
        /// injected hang costs this long; too short and a CPU prefill counts as a hang too.
        #[arg(long, default_value_t = 20)]
        timeout_secs: u64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Two server processes writing one SQLite file.
    SqliteWriters {
        #[arg(long, default_value_t = 6)]
        people: usize,
        #[arg(long, default_value_t = 3)]
        turns: usize,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Restart PostgreSQL under load with a command of yours.
    PostgresRestart {
        #[arg(long, env = "RAPPORT_DATABASE_URL")]
        database_url: String,
        /// e.g. "pg_ctlcluster 15 main restart".
        #[arg(long)]
        restart_cmd: String,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 4)]
        people: usize,
        #[arg(long, default_value = "3000-8000")]
        gap_ms: GapRange,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Clone, Copy)]
pub struct GapRange(pub u64, pub u64);

impl std::str::FromStr for GapRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) =
            s.split_once('-').ok_or_else(|| format!("'{s}' is not a range like 500-6000"))?;
        let (a, b): (u64, u64) = (
            a.trim().parse().map_err(|e| format!("{a}: {e}"))?,
            b.trim().parse().map_err(|e| format!("{b}: {e}"))?,
        );
        if a > b {
            return Err(format!("{a} is more than {b}"));
        }
        Ok(GapRange(a, b))
    }
}
