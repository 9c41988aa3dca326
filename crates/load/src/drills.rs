//! The chaos drills: what breaks, how often, and what the ledgers say afterwards.
//!
//! - `kill`: SIGKILL the server at random moments (mid-reply, mid-write, mid-load), restart it on
//!   the same address and database, many times;
//! - `backend`: generation on a real `rapport serve-llm` behind a proxy that hangs, resets,
//!   answers garbage or 503 on a schedule;
//! - `sqlite-writers`: two server processes writing one SQLite file (the busy/locked path);
//! - `postgres-restart`: the database restarted under load by a command the caller gives.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::chaos::{chaos_patience, check_all, gaps, settle, steady_person, Integrity, Ledger};
use crate::client::Session;
use crate::faults::{self, Fault};
use crate::server::{ServeSpec, ServerProcess};

/// What a drill did and found.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub drill: String,
    /// Disruptions carried out (kills, database restarts); for `backend`, faulty requests.
    pub disruptions: usize,
    pub people: usize,
    pub seconds: f64,
    pub integrity: Integrity,
    /// Faults the proxy injected, by kind (`backend` only).
    pub injected: std::collections::BTreeMap<String, usize>,
}

impl DrillReport {
    /// One Markdown line.
    pub fn markdown_row(&self) -> String {
        let i = &self.integrity;
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.drill,
            self.disruptions,
            self.people,
            i.acknowledged,
            i.retried_requests,
            i.unacknowledged,
            i.missing,
            i.duplicated,
            i.unanswered,
            i.double_replies,
            i.failed_jobs,
            i.false_failures,
            i.retaken_jobs,
            i.fallbacks,
            if i.holds() { "holds" } else { "BROKEN" }
        )
    }

    /// The header that goes with [`markdown_row`](Self::markdown_row).
    pub fn markdown_header() -> &'static str {
        "| drill | disruptions | people | acknowledged | retried (requests, streams) | refused (told) | missing | stored twice | unanswered | two replies | failed (told) | said failed, was not | jobs retaken | fallback replies | promise |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    }
}

/// Shared settings of the drills.
#[derive(Debug, Clone)]
pub struct DrillConfig {
    /// Arguments every `rapport serve` gets (model, max tokens, lease …).
    pub serve_args: Vec<String>,
    pub people: usize,
    pub persona: String,
    pub messages: Arc<Vec<String>>,
    pub seed: u64,
}

async fn start(spec: ServeSpec) -> anyhow::Result<ServerProcess> {
    // The address may still be held for a moment after a kill: try a few times.
    let mut last = None;
    for _ in 0..10 {
        let s = spec.clone();
        match tokio::task::spawn_blocking(move || ServerProcess::start(&s)).await? {
            Ok(p) => return Ok(p),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last.expect("tried at least once"))
}

/// People chatting on `bases` (round-robin) until `stop`; returns their sessions and ledgers.
fn spawn_people(
    config: &DrillConfig,
    bases: &[String],
    stop: &Arc<AtomicBool>,
    sent: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<(Session, Ledger)>>> {
    let http = reqwest::Client::new();
    (0..config.people)
        .map(|n| {
            let (http, base, persona, messages, stop, sent) = (
                http.clone(),
                bases[n % bases.len()].clone(),
                config.persona.clone(),
                config.messages.clone(),
                stop.clone(),
                sent.clone(),
            );
            tokio::spawn(async move {
                let session = Session::open_as(
                    &http,
                    &base,
                    chaos_patience(),
                    Some(crate::client::person_address(n)),
                )
                .await?;
                let ledger = steady_person(session.clone(), persona, messages, n * 5, stop, sent)
                    .await
                    .map_err(anyhow::Error::msg)?;
                Ok((session, ledger))
            })
        })
        .collect()
}

async fn collect(
    people: Vec<tokio::task::JoinHandle<anyhow::Result<(Session, Ledger)>>>,
) -> anyhow::Result<Vec<(Session, Ledger)>> {
    let mut out = Vec::new();
    for p in people {
        out.push(p.await.context("a person's task")??);
    }
    Ok(out)
}

/// Kills the server `rounds` times at random moments, restarting it each time.
pub async fn kill(
    config: &DrillConfig,
    database_url: &str,
    rounds: usize,
    gap_ms: (u64, u64),
    progress: &ProgressBar,
) -> anyhow::Result<DrillReport> {
    let started = Instant::now();
    let mut server = start(ServeSpec::serve(database_url, &config.serve_args)).await?;
    let spec = ServeSpec::serve(database_url, &config.serve_args).at(&server.base);
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let people = spawn_people(config, std::slice::from_ref(&server.base), &stop, &sent);
    for gap in gaps(config.seed, rounds, gap_ms) {
        tokio::time::sleep(gap).await;
        server.kill();
        progress.inc(1);
        server = start(spec.clone()).await?;
    }
    // Let the last process work off what is left, then stop posting and check.
    stop.store(true, Ordering::Relaxed);
    let people = collect(people).await?;
    settle(&people, Duration::from_secs(300)).await;
    let integrity = check_all(&people).await;
    server.stop(Duration::from_secs(20));
    Ok(DrillReport {
        drill: "kill".into(),
        disruptions: rounds,
        people: config.people,
        seconds: started.elapsed().as_secs_f64(),
        integrity,
        injected: Default::default(),
    })
}

/// Generation through a proxy that injects `schedule`'s faults in front of a real model server.
pub async fn backend(
    config: &DrillConfig,
    database_url: &str,
    model: &str,
    schedule: Vec<Fault>,
    turns: usize,
    timeout_secs: u64,
    progress: &ProgressBar,
) -> anyhow::Result<DrillReport> {
    let started = Instant::now();
    let llm = start(ServeSpec {
        bin: crate::server::rapport_bin(),
        args: vec!["serve-llm".into(), "--model".into(), model.into()],
        listen: "127.0.0.1:0".into(),
        datasets: None,
        engine_steps: None,
    })
    .await?;
    let proxy = faults::start(&llm.base, schedule).await?;
    let mut args = vec![
        "--llm-url".into(),
        proxy.base.clone(),
        "--llm-timeout-secs".into(),
        timeout_secs.to_string(),
    ];
    args.extend(config.serve_args.iter().cloned());
    let mut server = start(ServeSpec::serve(database_url, &args)).await?;
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let people = spawn_people(config, std::slice::from_ref(&server.base), &stop, &sent);
    // Each person sends until the group has sent `turns` messages per person.
    let target = turns * config.people;
    while sent.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_millis(200)).await;
        progress.set_position(sent.load(Ordering::Relaxed) as u64);
        if started.elapsed() > Duration::from_secs(1800) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let people = collect(people).await?;
    settle(&people, Duration::from_secs(300)).await;
    let integrity = check_all(&people).await;
    server.stop(Duration::from_secs(20));
    let injected: std::collections::BTreeMap<String, usize> =
        proxy.injected().into_iter().map(|(f, n)| (format!("{f:?}").to_lowercase(), n)).collect();
    let disruptions = injected.iter().filter(|(k, _)| *k != "pass").map(|(_, n)| n).sum();
    Ok(DrillReport {
        drill: "backend".into(),
        disruptions,
        people: config.people,
        seconds: started.elapsed().as_secs_f64(),
        integrity,
        injected,
    })
}

/// Two server processes on one SQLite file: writers contend for its lock.
pub async fn sqlite_writers(
    config: &DrillConfig,
    database_url: &str,
    turns: usize,
    progress: &ProgressBar,
) -> anyhow::Result<DrillReport> {
    anyhow::ensure!(
        database_url.starts_with("sqlite:"),
        "the sqlite-writers drill needs a sqlite: URL"
    );
    let started = Instant::now();
    let mut a = start(ServeSpec::serve(database_url, &config.serve_args)).await?;
    let mut b = start(ServeSpec::serve(database_url, &config.serve_args)).await?;
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let people = spawn_people(config, &[a.base.clone(), b.base.clone()], &stop, &sent);
    while sent.load(Ordering::Relaxed) < turns * config.people
        && started.elapsed() < Duration::from_secs(1800)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        progress.set_position(sent.load(Ordering::Relaxed) as u64);
    }
    stop.store(true, Ordering::Relaxed);
    let people = collect(people).await?;
    settle(&people, Duration::from_secs(300)).await;
    let integrity = check_all(&people).await;
    a.stop(Duration::from_secs(20));
    b.stop(Duration::from_secs(20));
    Ok(DrillReport {
        drill: "sqlite-writers".into(),
        disruptions: 0,
        people: config.people,
        seconds: started.elapsed().as_secs_f64(),
        integrity,
        injected: Default::default(),
    })
}

/// The database restarted `rounds` times under load by `restart` (a shell command).
pub async fn postgres_restart(
    config: &DrillConfig,
    database_url: &str,
    restart: &str,
    rounds: usize,
    gap_ms: (u64, u64),
    progress: &ProgressBar,
) -> anyhow::Result<DrillReport> {
    let started = Instant::now();
    let mut server = start(ServeSpec::serve(database_url, &config.serve_args)).await?;
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let people = spawn_people(config, std::slice::from_ref(&server.base), &stop, &sent);
    for gap in gaps(config.seed, rounds, gap_ms) {
        tokio::time::sleep(gap).await;
        let status = tokio::process::Command::new("sh")
            .args(["-c", restart])
            .status()
            .await
            .context("running the restart command")?;
        anyhow::ensure!(status.success(), "the restart command failed: {status}");
        progress.inc(1);
    }
    // A few more replies after the last restart show the server came back.
    let after = sent.load(Ordering::Relaxed) + config.people;
    let wait = Instant::now();
    while sent.load(Ordering::Relaxed) < after && wait.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let people = collect(people).await?;
    settle(&people, Duration::from_secs(300)).await;
    let integrity = check_all(&people).await;
    server.stop(Duration::from_secs(20));
    Ok(DrillReport {
        drill: "postgres-restart".into(),
        disruptions: rounds,
        people: config.people,
        seconds: started.elapsed().as_secs_f64(),
        integrity,
        injected: Default::default(),
    })
}
