//! The abuse drill: a public server under a hostile crowd, and one patient guest.
//!
//! Three phases on the same servers and database:
//! 1. **quiet** — the guest alone sends `turns` messages, each after the last reply and a pause:
//!    the baseline;
//! 2. **reads** — cookie-less readers alone (the page, `/api/session`, `/api/personas`, the
//!    conversation list) for a few seconds; the database's rows are counted before and after;
//! 3. **flood** — the readers go on and flooders join: each round drops its cookie, takes a
//!    fresh session, starts a conversation and posts a message, ignoring `Retry-After`; the
//!    guest sends `turns` more messages meanwhile.
//!
//! The report: the guest's first-words latency and success in the quiet and the flood, the
//! database's growth in each phase, what the flood's requests were answered (202, or 429/503 by
//! reason) and the servers' own `rapport_rejections_total`. Flooders and readers name their
//! addresses in `X-Forwarded-For`, which the servers this program starts believe from loopback
//! (one address per flooding script by default: a script that drops cookies is still one
//! client).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::{json, Value};

use crate::client::{Ending, Patience, Session};
use crate::server::{ServeSpec, ServerProcess};
use crate::stats::Distribution;

/// What the drill does.
#[derive(Debug, Clone)]
pub struct AbuseConfig {
    /// `rapport serve` arguments (model, limits).
    pub serve_args: Vec<String>,
    /// The database every process shares.
    pub database_url: String,
    /// Server processes on it (the flood and the readers go round-robin over them).
    pub processes: usize,
    /// Persona the guest and the flood talk to.
    pub persona: String,
    /// What the guest says, in order.
    pub messages: Arc<Vec<String>>,
    /// The guest's messages in each of the quiet and the flood phases.
    pub turns: usize,
    /// Concurrent cookie-less read loops, and their total rate.
    pub readers: usize,
    /// Reads per second over all readers.
    pub reads_per_second: f64,
    /// Seconds of the reads-only phase.
    pub reads_secs: u64,
    /// Concurrent flooding loops, and the addresses they spread over (1: one script).
    pub flooders: usize,
    /// Addresses the flooders use.
    pub flood_addresses: usize,
    /// Pause between a flooder's rounds (it ignores `Retry-After`).
    pub flood_pause: Duration,
    /// The guest's pause after each reply before the next message (so the flood runs a while).
    pub guest_pause: Duration,
}

/// The guest's experience in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct GuestPhase {
    /// Messages sent.
    pub sent: usize,
    /// Replies that arrived (`done`).
    pub answered: usize,
    /// Message posted → first words on screen, ms.
    pub first_words_ms: Distribution,
    /// Message posted → whole reply, ms.
    pub whole_reply_ms: Distribution,
    /// Why replies did not arrive.
    pub problems: Vec<String>,
}

/// What the reads did to the database.
#[derive(Debug, Clone, Serialize)]
pub struct ReadsPhase {
    /// Cookie-less reads answered 200.
    pub reads: usize,
    /// Reads answered otherwise.
    pub failed_reads: usize,
    pub seconds: f64,
    /// Rows of each table before and after.
    pub rows_before: Vec<(String, i64)>,
    pub rows_after: Vec<(String, i64)>,
}

impl ReadsPhase {
    /// Whether the reads left the database as it was.
    pub fn wrote_nothing(&self) -> bool {
        self.rows_before == self.rows_after
    }
}

/// The whole drill.
#[derive(Debug, Clone, Serialize)]
pub struct AbuseReport {
    pub processes: usize,
    pub shared_database: String,
    pub quiet: GuestPhase,
    pub reads: ReadsPhase,
    pub flood: GuestPhase,
    /// Seconds the flood ran.
    pub flood_seconds: f64,
    /// Reads during the flood.
    pub flood_reads: usize,
    /// Flood requests by route and answer: `POST /messages 202`, `POST /conversations 429
    /// rate_limited`, …
    pub flood_answers: BTreeMap<String, usize>,
    /// Rows before and after the flood.
    pub rows_before_flood: Vec<(String, i64)>,
    pub rows_after_flood: Vec<(String, i64)>,
    /// `rapport_rejections_total` by reason, summed over the processes.
    pub rejections: BTreeMap<String, f64>,
}

impl AbuseReport {
    /// Flood messages the server took (202).
    pub fn flood_accepted(&self) -> usize {
        self.flood_answers.get("POST /messages 202").copied().unwrap_or(0)
    }

    /// Flood requests refused for load (429 or 503).
    pub fn flood_refused(&self) -> usize {
        self.flood_answers
            .iter()
            .filter(|(k, _)| k.contains(" 429 ") || k.contains(" 503 "))
            .map(|(_, n)| n)
            .sum()
    }

    /// A Markdown summary.
    pub fn markdown(&self) -> String {
        let row = |name: &str, p: &GuestPhase| {
            format!(
                "| {name} | {}/{} | {:.0} | {:.0} | {:.0} | {:.0} |",
                p.answered,
                p.sent,
                p.first_words_ms.p50,
                p.first_words_ms.max,
                p.whole_reply_ms.p50,
                p.whole_reply_ms.max
            )
        };
        let rows = |r: &[(String, i64)]| {
            r.iter().map(|(t, n)| format!("{t} {n}")).collect::<Vec<_>>().join(", ")
        };
        let mut out = format!(
            "Processes: {} on {}\n\n| the guest | answered | first words p50, ms | max | whole reply p50, ms | max |\n|---|---|---|---|---|---|\n{}\n{}\n\n",
            self.processes,
            self.shared_database,
            row("quiet", &self.quiet),
            row("during the flood", &self.flood)
        );
        out.push_str(&format!(
            "Reads alone: {} cookie-less reads in {:.0} s ({} failed); database {} (before: {}; after: {}).\n\n",
            self.reads.reads,
            self.reads.seconds,
            self.reads.failed_reads,
            if self.reads.wrote_nothing() { "unchanged" } else { "CHANGED" },
            rows(&self.reads.rows_before),
            rows(&self.reads.rows_after)
        ));
        out.push_str(&format!("Flood: {:.0} s, {} reads beside it; rows before: {}; after: {}.\n\n| flood request → answer | count |\n|---|---|\n", self.flood_seconds, self.flood_reads, rows(&self.rows_before_flood), rows(&self.rows_after_flood)));
        for (k, n) in &self.flood_answers {
            out.push_str(&format!("| {k} | {n} |\n"));
        }
        out.push_str("\nServer-side refusals (rapport_rejections_total): ");
        out.push_str(
            &self
                .rejections
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        out.push('\n');
        out
    }
}

const GUEST_ADDRESS: &str = "192.0.2.10";
const READER_ADDRESS: &str = "192.0.2.20";

/// Flooder `n`'s address: 203.0.113.0/24 (documentation addresses).
fn flood_address(n: usize, addresses: usize) -> String {
    format!("203.0.113.{}", 1 + n % addresses.clamp(1, 250))
}

/// Runs the drill; the servers are started and stopped here.
pub async fn abuse(config: &AbuseConfig, progress: &ProgressBar) -> anyhow::Result<AbuseReport> {
    let store = rapport_store::Store::connect(&config.database_url).await?;
    let mut servers = Vec::new();
    for _ in 0..config.processes.max(1) {
        let spec = ServeSpec::serve(&config.database_url, &config.serve_args);
        servers.push(tokio::task::spawn_blocking(move || ServerProcess::start(&spec)).await??);
    }
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
    let http = reqwest::Client::new();
    let rows = || async {
        store
            .row_counts()
            .await
            .map(|r| r.into_iter().map(|(t, n)| (t.to_string(), n)).collect::<Vec<_>>())
    };

    // 1. Quiet.
    progress.set_message("quiet: the guest alone");
    let guest =
        Session::open_as(&http, &bases[0], Patience::default(), Some(GUEST_ADDRESS.into())).await?;
    let conversation = guest.create(&config.persona).await?;
    let mut said = config.messages.iter().cycle();
    let quiet =
        guest_phase(&guest, &conversation, config.turns, &mut said, config.guest_pause, progress)
            .await;

    // 2. Reads alone.
    progress.set_message("reads alone");
    let rows_before = rows().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let readers = spawn_readers(config, &http, &bases, &stop);
    tokio::time::sleep(Duration::from_secs(config.reads_secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (reads, failed_reads) = join_counts(readers).await;
    let reads_phase = ReadsPhase {
        reads,
        failed_reads,
        seconds: started.elapsed().as_secs_f64(),
        rows_before,
        rows_after: rows().await?,
    };

    // 3. The flood, with the readers beside it, while the guest talks.
    progress.set_message("flood: the guest among flooders");
    let rows_before_flood = rows().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(BTreeMap::new()));
    let flood_started = Instant::now();
    let readers = spawn_readers(config, &http, &bases, &stop);
    let flooders: Vec<_> = (0..config.flooders)
        .map(|n| {
            let (http, base, address, persona, stop, answers, pause) = (
                http.clone(),
                bases[n % bases.len()].clone(),
                flood_address(n, config.flood_addresses),
                config.persona.clone(),
                stop.clone(),
                answers.clone(),
                config.flood_pause,
            );
            tokio::spawn(async move {
                flood(&http, &base, &address, &persona, &stop, &answers, pause).await
            })
        })
        .collect();
    // Let the flood fill the queue before the guest speaks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let flood_phase =
        guest_phase(&guest, &conversation, config.turns, &mut said, config.guest_pause, progress)
            .await;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    let (flood_reads, _) = join_counts(readers).await;
    let flood_seconds = flood_started.elapsed().as_secs_f64();
    let rows_after_flood = rows().await?;

    let mut rejections = BTreeMap::new();
    for base in &bases {
        if let Ok(text) = http.get(format!("{base}/metrics")).send().await?.text().await {
            for line in text.lines().filter(|l| l.starts_with("rapport_rejections_total{")) {
                let reason = line.split('"').nth(1).unwrap_or("?").to_string();
                let value: f64 =
                    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
                *rejections.entry(reason).or_insert(0.0) += value;
            }
        }
    }
    for mut s in servers {
        tokio::task::spawn_blocking(move || s.stop(Duration::from_secs(20))).await?;
    }
    let flood_answers = answers.lock().expect("answers").clone();
    Ok(AbuseReport {
        processes: bases.len(),
        shared_database: if config.database_url.starts_with("postgres") {
            "PostgreSQL".into()
        } else {
            "SQLite".into()
        },
        quiet,
        reads: reads_phase,
        flood: flood_phase,
        flood_seconds,
        flood_reads,
        flood_answers,
        rows_before_flood,
        rows_after_flood,
        rejections,
    })
}

/// The guest sends `turns` messages, each after the last reply, and times them.
async fn guest_phase<'a>(
    guest: &Session,
    conversation: &str,
    turns: usize,
    said: &mut impl Iterator<Item = &'a String>,
    pause: Duration,
    progress: &ProgressBar,
) -> GuestPhase {
    let (mut first, mut whole, mut problems, mut answered) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    for turn in 0..turns {
        let content = said.next().map(String::as_str).unwrap_or("Hello!");
        let sent = Instant::now();
        let posted = match guest
            .post(conversation, content, &format!("guest-{}-{turn}", rand_key()))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("post: {e}"));
                continue;
            }
        };
        let followed = guest.follow(conversation, &posted.job_id).await;
        match &followed.ending {
            Ending::Done { .. } => {
                answered += 1;
                if let Some(t) = followed.first_text {
                    first.push(t.duration_since(sent).as_secs_f64() * 1000.0);
                }
                whole.push(followed.ended.duration_since(sent).as_secs_f64() * 1000.0);
            }
            other => problems.push(format!("reply: {other:?}")),
        }
        progress.inc(1);
        if turn + 1 < turns {
            tokio::time::sleep(pause).await;
        }
    }
    GuestPhase {
        sent: turns,
        answered,
        first_words_ms: Distribution::of(&first),
        whole_reply_ms: Distribution::of(&whole),
        problems,
    }
}

fn rand_key() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Cookie-less readers, paced to `reads_per_second` in all, until `stop`.
fn spawn_readers(
    config: &AbuseConfig,
    http: &reqwest::Client,
    bases: &[String],
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, usize)>> {
    let every =
        Duration::from_secs_f64(config.readers.max(1) as f64 / config.reads_per_second.max(0.1));
    (0..config.readers)
        .map(|n| {
            let (http, base, stop) = (http.clone(), bases[n % bases.len()].clone(), stop.clone());
            tokio::spawn(async move {
                let paths = ["/", "/api/session", "/api/personas", "/api/conversations"];
                let (mut ok, mut failed) = (0, 0);
                let mut i = n;
                while !stop.load(Ordering::Relaxed) {
                    let path = paths[i % paths.len()];
                    i += 1;
                    match http
                        .get(format!("{base}{path}"))
                        .header("x-forwarded-for", READER_ADDRESS)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => ok += 1,
                        _ => failed += 1,
                    }
                    tokio::time::sleep(every).await;
                }
                (ok, failed)
            })
        })
        .collect()
}

async fn join_counts(tasks: Vec<tokio::task::JoinHandle<(usize, usize)>>) -> (usize, usize) {
    let mut total = (0, 0);
    for t in tasks {
        if let Ok((a, b)) = t.await {
            total = (total.0 + a, total.1 + b);
        }
    }
    total
}

/// One flooding script: fresh session, new conversation, a message; again, until `stop`.
async fn flood(
    http: &reqwest::Client,
    base: &str,
    address: &str,
    persona: &str,
    stop: &AtomicBool,
    answers: &Mutex<BTreeMap<String, usize>>,
    pause: Duration,
) {
    let note = |what: String| *answers.lock().expect("answers").entry(what).or_insert(0) += 1;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(pause).await;
        let Ok(r) =
            http.get(format!("{base}/api/session")).header("x-forwarded-for", address).send().await
        else {
            continue;
        };
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or_default()
            .to_string();
        let Ok(body) = r.json::<Value>().await else { continue };
        let csrf = body["csrf_token"].as_str().unwrap_or_default().to_string();
        let send = |path: String, body: Value| {
            http.post(format!("{base}{path}"))
                .header("x-forwarded-for", address)
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
                .json(&body)
                .send()
        };
        let (status, body) =
            answer(send("/api/conversations".into(), json!({"persona": persona})).await).await;
        if status != 201 {
            note(format!("POST /conversations {status} {}", kind(&body)));
            continue;
        }
        note("POST /conversations 201".into());
        let id = body["conversation"]["id"].as_str().unwrap_or_default().to_string();
        let (status, body) = answer(
            send(format!("/api/conversations/{id}/messages"), json!({"content": "hi hi hi hi hi"}))
                .await,
        )
        .await;
        note(if status == 202 {
            "POST /messages 202".into()
        } else {
            format!("POST /messages {status} {}", kind(&body))
        });
    }
}

async fn answer(r: reqwest::Result<reqwest::Response>) -> (u16, Value) {
    match r {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

fn kind(body: &Value) -> String {
    body["error"]["type"].as_str().unwrap_or("-").to_string()
}
