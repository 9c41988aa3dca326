//! `rapport-load`: load runs, the concurrency sweep and the chaos drills, from one command each.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rapport_load::abuse::{abuse, AbuseConfig};
use rapport_load::chart::{line_chart, Axes, Series};
use rapport_load::cli::{
    AbuseArgs, Cli, Command, Drill, LatencyArgs, RunArgs, ServerArgs, SweepArgs,
};
use rapport_load::drills::{self, DrillConfig, DrillReport};
use rapport_load::latency::{latency, LatencyConfig, Typing};
use rapport_load::report::Summary;
use rapport_load::run::run;
use rapport_load::server::{sqlite_url, RssTrace, ServeSpec, ServerProcess};
use rapport_load::sweep::{self, SweepConfig};

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
        typing: (args.typing_ms_per_char > 0).then(|| Typing {
            per_char: Duration::from_millis(args.typing_ms_per_char),
            send_after: Duration::from_millis(args.send_after_ms),
            drafts: !args.no_drafts,
        }),
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
    let context = serde_json::json!({"model": args.server.model, "max_tokens": args.server.max_tokens, "persona": args.server.persona, "serve_args": config.serve_args, "script": args.script, "label": args.label, "typing_ms_per_char": args.typing_ms_per_char, "send_after_ms": args.send_after_ms, "drafts": args.typing_ms_per_char > 0 && !args.no_drafts, "machine": machine(), "date": chrono::Utc::now().format("%Y-%m-%d").to_string()});
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
