//! `rapport-load`: load runs, the concurrency sweep and the chaos drills, from one command each.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rapport_load::abuse::{abuse, AbuseConfig};
use rapport_load::chart::{line_chart, Axes, Series};
use rapport_load::drills::{self, DrillConfig, DrillReport};
use rapport_load::faults::Fault;
use rapport_load::latency::{latency, LatencyConfig};
use rapport_load::report::Summary;
use rapport_load::run::{run, Scenario};
use rapport_load::server::{sqlite_url, RssTrace, ServeSpec, ServerProcess};
use rapport_load::sweep::{self, SweepConfig};

#[derive(Parser)]
#[command(
    name = "rapport-load",
    version,
    about = "Load, concurrency and chaos runs against `rapport serve`"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
struct ServerArgs {
    /// The model preset or GGUF path for `rapport serve`.
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// Tokens per reply at most.
    #[arg(long, default_value_t = 48)]
    max_tokens: u32,
    /// Further `rapport serve` arguments, e.g. --serve-arg=--lexical-only.
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    serve_args: Vec<String>,
    /// Persona id the people talk to.
    #[arg(long, default_value = "flirt-partner")]
    persona: String,
    /// The server's persona directory (default: the shipped personas). `datasets/load/personas`
    /// holds `brief`, whose short prompt keeps prefill from dominating a load run on a CPU.
    #[arg(long)]
    personas: Option<PathBuf>,
    /// Where the reports go.
    #[arg(long, default_value = "benches/results/load")]
    out: PathBuf,
}

impl ServerArgs {
    /// The server as deployed: its own limits, not the load runs' raised ones.
    fn serve_args_with_limits(&self) -> Vec<String> {
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

    fn serve_args(&self) -> Vec<String> {
        // Load is about the model and the queue, not the per-person rate limit.
        let mut args = self.serve_args_with_limits();
        args.extend(["--rate-per-minute", "100000", "--rate-burst", "100000"].map(String::from));
        args
    }
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "short")]
    scenario: Scenario,
    /// People at once (default: the scenario's).
    #[arg(long)]
    users: Option<usize>,
    /// Messages per conversation (default: the scenario's).
    #[arg(long)]
    turns: Option<usize>,
    /// Nobody sends anything new after this many seconds.
    #[arg(long, default_value_t = 3600)]
    max_secs: u64,
    /// A running server to load instead of starting one (its memory is then not sampled unless
    /// --pid is given).
    #[arg(long)]
    url: Option<String>,
    #[arg(long, requires = "url")]
    pid: Option<u32>,
    /// Workers of the started server.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
struct SweepArgs {
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    levels: Vec<usize>,
    #[arg(long, default_value_t = 2)]
    turns: usize,
    /// Conversations measured per level at least.
    #[arg(long, default_value_t = 8)]
    min_conversations: usize,
    /// Fixed workers for every level (default: as many as people).
    #[arg(long)]
    workers: Option<usize>,
    /// Append every level's server log, with the engine's per-step lines, to this file
    /// (summarised by `python3 benches/engine_steps.py FILE`: time reading prompts against
    /// decoding, batch sizes, cache rebuilds).
    #[arg(long)]
    engine_steps: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
struct AbuseArgs {
    /// Server processes sharing the database (2 on PostgreSQL shows the limits are shared).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Default: a fresh SQLite file.
    #[arg(long)]
    database_url: Option<String>,
    /// The guest's messages in the quiet phase and again during the flood.
    #[arg(long, default_value_t = 4)]
    turns: usize,
    /// Cookie-less read loops.
    #[arg(long, default_value_t = 4)]
    readers: usize,
    /// Reads per second over all readers.
    #[arg(long, default_value_t = 100.0)]
    reads_per_second: f64,
    /// Seconds of reads alone, after which the database must be unchanged.
    #[arg(long, default_value_t = 10)]
    reads_secs: u64,
    /// Flooding loops (each: fresh session, new conversation, a message; Retry-After ignored).
    #[arg(long, default_value_t = 8)]
    flooders: usize,
    /// Addresses the flooders spread over (1: one script on one machine).
    #[arg(long, default_value_t = 1)]
    flood_addresses: usize,
    /// Milliseconds between a flooder's rounds.
    #[arg(long, default_value_t = 20)]
    flood_pause_ms: u64,
    /// Seconds the guest waits after each reply before writing again (the flood runs on).
    #[arg(long, default_value_t = 5)]
    guest_pause_secs: u64,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
struct LatencyArgs {
    /// The person's messages, one per line.
    #[arg(long, default_value = "datasets/prompts/secret-game-guest.txt")]
    script: PathBuf,
    /// Only the first N messages.
    #[arg(long)]
    turns: Option<usize>,
    /// Seconds the person waits after each reply.
    #[arg(long, default_value_t = 2)]
    pause_secs: u64,
    /// Seconds between the server listening and the first message.
    #[arg(long, default_value_t = 15)]
    settle_secs: u64,
    /// A name for this configuration in the result files (e.g. "warm-words").
    #[arg(long, default_value = "default")]
    label: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
struct ChaosArgs {
    #[command(subcommand)]
    drill: Drill,
}

#[derive(Subcommand)]
enum Drill {
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
struct GapRange(u64, u64);

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

fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {what} [{{elapsed_precise}}]"
        ))
        .expect("a valid template"),
    );
    bar
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RAPPORT_LOAD_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => run_load(args).await,
        Command::Sweep(args) => run_sweep(args).await,
        Command::Chaos(args) => run_chaos(args.drill).await,
        Command::Abuse(args) => run_abuse(args).await,
        Command::Latency(args) => run_latency(args).await,
        Command::Redraw { dir } => {
            println!("{}", sweep::markdown(&sweep::redraw(&dir)?));
            Ok(())
        }
    }
}

async fn run_load(args: RunArgs) -> anyhow::Result<()> {
    let messages = rapport_load::default_messages();
    let mut plan = args.scenario.plan(args.users, args.turns);
    plan.max_secs = args.max_secs;
    plan.persona = args.server.persona.clone();
    let dir = tempfile::tempdir()?;
    let (base, pid, mut server) = match &args.url {
        Some(url) => (url.clone(), args.pid, None),
        None => {
            let mut serve_args = args.server.serve_args();
            serve_args.extend(["--workers".into(), args.workers.to_string()]);
            let spec = ServeSpec::serve(&sqlite_url(dir.path()), &serve_args);
            let server = tokio::task::spawn_blocking(move || ServerProcess::start(&spec)).await??;
            (server.base.clone(), Some(server.pid()), Some(server))
        }
    };
    let sampler = pid.map(|p| RssTrace::sample(p, Duration::from_millis(500)));
    let progress = bar((plan.users * plan.conversations * plan.turns) as u64, "replies");
    let outcome = run(&base, &plan, &messages, Some(progress.clone())).await;
    progress.finish_and_clear();
    let samples = sampler.map(|(trace, handle)| {
        handle.abort();
        trace.samples()
    });
    if let Some(s) = server.as_mut() {
        s.stop(Duration::from_secs(20));
    }
    let summary = Summary::of(&outcome, samples.as_deref().unwrap_or_default());
    let name = format!("{:?}", args.scenario).to_lowercase();
    std::fs::create_dir_all(&args.server.out)?;
    let context = serde_json::json!({"model": args.server.model, "max_tokens": args.server.max_tokens, "workers": args.workers, "machine": machine()});
    std::fs::write(
        args.server.out.join(format!("{name}.json")),
        serde_json::to_string_pretty(
            &serde_json::json!({"context": context, "summary": summary, "records": outcome.records}),
        )?,
    )?;
    std::fs::write(args.server.out.join(format!("{name}.md")), summary.markdown())?;
    if !summary.memory.samples.is_empty() {
        let svg = line_chart(
            &Axes {
                title: format!("Server memory, {name} scenario"),
                x_label: "seconds".into(),
                y_label: "RSS, MiB".into(),
                log2_x: false,
            },
            &[Series { name: "RSS".into(), points: summary.memory.samples.clone() }],
        );
        std::fs::write(args.server.out.join(format!("{name}-rss.svg")), svg)?;
    }
    println!("{}", summary.markdown());
    anyhow::ensure!(summary.errors == 0, "{} errors", summary.errors);
    Ok(())
}

async fn run_sweep(args: SweepArgs) -> anyhow::Result<()> {
    let messages = rapport_load::default_messages();
    let config = SweepConfig {
        levels: args.levels.clone(),
        turns: args.turns,
        min_conversations: args.min_conversations,
        workers: args.workers,
        serve_args: args.server.serve_args(),
        persona: args.server.persona.clone(),
        engine_steps: args.engine_steps.clone(),
    };
    let bars = MultiProgress::new();
    let points = sweep::sweep(&config, &messages, &bars).await?;
    let context = serde_json::json!({"model": args.server.model, "max_tokens": args.server.max_tokens, "turns": args.turns, "machine": machine()});
    sweep::write(&points, &args.server.out, &context)?;
    println!("{}", sweep::markdown(&points));
    let errors: usize = points.iter().map(|p| p.summary.errors).sum();
    anyhow::ensure!(errors == 0, "{errors} errors across the sweep");
    Ok(())
}

async fn run_chaos(drill: Drill) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = |server: &ServerArgs, people: usize, extra: &[&str]| {
        let mut serve_args = server.serve_args();
        serve_args.extend(extra.iter().map(|s| s.to_string()));
        DrillConfig {
            serve_args,
            people,
            persona: server.persona.clone(),
            messages: Arc::new(rapport_load::default_messages()),
            seed: 1,
        }
    };
    // A short lease: after a kill the job is taken again within seconds, not half a minute.
    let lease = ["--lease-secs", "3"];
    let (report, out) = match drill {
        Drill::Kill { rounds, people, gap_ms, database_url, seed, server } => {
            let mut c = config(&server, people, &lease);
            c.seed = seed;
            let url = database_url.unwrap_or_else(|| sqlite_url(dir.path()));
            let progress = bar(rounds as u64, "kills");
            (drills::kill(&c, &url, rounds, (gap_ms.0, gap_ms.1), &progress).await?, server.out)
        }
        Drill::Backend { people, turns, schedule, timeout_secs, server } => {
            let c = config(&server, people, &lease);
            let progress = bar((people * turns) as u64, "messages");
            (
                drills::backend(
                    &c,
                    &sqlite_url(dir.path()),
                    &server.model,
                    schedule,
                    turns,
                    timeout_secs,
                    &progress,
                )
                .await?,
                server.out,
            )
        }
        Drill::SqliteWriters { people, turns, server } => {
            let c = config(&server, people, &lease);
            let progress = bar((people * turns) as u64, "messages");
            (
                drills::sqlite_writers(&c, &sqlite_url(dir.path()), turns, &progress).await?,
                server.out,
            )
        }
        Drill::PostgresRestart { database_url, restart_cmd, rounds, people, gap_ms, server } => {
            let c = config(&server, people, &lease);
            let progress = bar(rounds as u64, "restarts");
            (
                drills::postgres_restart(
                    &c,
                    &database_url,
                    &restart_cmd,
                    rounds,
                    (gap_ms.0, gap_ms.1),
                    &progress,
                )
                .await?,
                server.out,
            )
        }
    };
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join(format!("chaos-{}.json", report.drill)),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{}\n{}", DrillReport::markdown_header(), report.markdown_row());
    if !report.injected.is_empty() {
        println!("faults injected: {:?}", report.injected);
    }
    for p in &report.integrity.problems {
        println!("- {p}");
    }
    anyhow::ensure!(report.integrity.holds(), "the promise broke: see the problems above");
    Ok(())
}

async fn run_latency(args: LatencyArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let text = std::fs::read_to_string(&args.script)
        .with_context(|| format!("reading the script {}", args.script.display()))?;
    let mut script: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if let Some(n) = args.turns {
        script.truncate(n);
    }
    anyhow::ensure!(!script.is_empty(), "the script {} has no messages", args.script.display());
    let config = LatencyConfig {
        serve_args: args.server.serve_args_with_limits(),
        database_url: sqlite_url(dir.path()),
        persona: args.server.persona.clone(),
        script,
        pause: Duration::from_secs(args.pause_secs),
        settle: Duration::from_secs(args.settle_secs),
    };
    let report = latency(&config).await?;
    let model = args
        .server
        .model
        .rsplit('/')
        .next()
        .unwrap_or(&args.server.model)
        .trim_end_matches(".gguf")
        .to_string();
    let name = format!("latency-{model}-{}-{}", args.server.persona, args.label);
    std::fs::create_dir_all(&args.server.out)?;
    let context = serde_json::json!({"model": args.server.model, "max_tokens": args.server.max_tokens, "persona": args.server.persona, "serve_args": config.serve_args, "script": args.script, "label": args.label, "machine": machine(), "date": chrono::Utc::now().format("%Y-%m-%d").to_string()});
    std::fs::write(
        args.server.out.join(format!("{name}.json")),
        serde_json::to_string_pretty(&serde_json::json!({"context": context, "report": report}))?,
    )?;
    std::fs::write(args.server.out.join(format!("{name}.md")), report.markdown())?;
    println!("{}", report.markdown());
    anyhow::ensure!(
        report.problems.is_empty(),
        "replies that did not arrive: {:?}",
        report.problems
    );
    Ok(())
}

async fn run_abuse(args: AbuseArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let database_url = args.database_url.clone().unwrap_or_else(|| sqlite_url(dir.path()));
    let config = AbuseConfig {
        serve_args: args.server.serve_args_with_limits(),
        database_url,
        processes: args.processes,
        persona: args.server.persona.clone(),
        messages: Arc::new(rapport_load::default_messages()),
        turns: args.turns,
        readers: args.readers,
        reads_per_second: args.reads_per_second,
        reads_secs: args.reads_secs,
        flooders: args.flooders,
        flood_addresses: args.flood_addresses,
        flood_pause: Duration::from_millis(args.flood_pause_ms),
        guest_pause: Duration::from_secs(args.guest_pause_secs),
    };
    let progress = bar(2 * args.turns as u64, "guest replies");
    progress.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} guest replies · {msg} [{elapsed_precise}]",
        )
        .expect("a valid template"),
    );
    let report = abuse(&config, &progress).await?;
    progress.finish_and_clear();
    let model = args
        .server
        .model
        .rsplit('/')
        .next()
        .unwrap_or(&args.server.model)
        .trim_end_matches(".gguf")
        .to_string();
    let name = format!(
        "abuse-{}-{}x-{}addr-{model}",
        report.shared_database.to_lowercase(),
        report.processes,
        args.flood_addresses
    );
    std::fs::create_dir_all(&args.server.out)?;
    let context = serde_json::json!({"model": args.server.model, "max_tokens": args.server.max_tokens, "serve_args": config.serve_args, "flooders": args.flooders, "flood_addresses": args.flood_addresses, "readers": args.readers, "reads_per_second": args.reads_per_second, "machine": machine(), "date": chrono::Utc::now().format("%Y-%m-%d").to_string()});
    std::fs::write(
        args.server.out.join(format!("{name}.json")),
        serde_json::to_string_pretty(&serde_json::json!({"context": context, "report": report}))?,
    )?;
    std::fs::write(args.server.out.join(format!("{name}.md")), report.markdown())?;
    println!("{}", report.markdown());
    anyhow::ensure!(report.reads.wrote_nothing(), "the cookie-less reads changed the database");
    anyhow::ensure!(
        report.flood.answered == report.flood.sent,
        "the guest lost replies during the flood: {:?}",
        report.flood.problems
    );
    Ok(())
}

/// The machine the numbers come from, for the reports.
fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
    });
    serde_json::json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).ok()})
}
