//! Latency and throughput against concurrency: the same plan at 1, 2, 4 … N people at once,
//! each level on a fresh server and database, so one level's queue never leaks into the next.

use std::path::Path;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::chart::{line_chart, Axes, Series};
use crate::report::Summary;
use crate::run::{run, Plan, Scenario};
use crate::server::{sqlite_url, RssTrace, ServeSpec, ServerProcess};

/// One level of the sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    /// People at once.
    pub concurrency: usize,
    /// Replies the server writes at once (workers; the model batches them).
    pub workers: usize,
    pub summary: Summary,
}

/// How the sweep runs.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub levels: Vec<usize>,
    /// Messages per conversation.
    pub turns: usize,
    /// At low concurrency each person has several conversations one after the other, so that
    /// every level measures at least this many.
    pub min_conversations: usize,
    /// Workers per level: `None` = as many as people (the model batches them all).
    pub workers: Option<usize>,
    /// `rapport serve` arguments besides the database, workers and batch.
    pub serve_args: Vec<String>,
    pub persona: String,
    /// Where each level's server appends its log with the engine's step lines, if anywhere.
    pub engine_steps: Option<std::path::PathBuf>,
}

/// Runs every level and returns its point.
pub async fn sweep(
    config: &SweepConfig,
    messages: &[String],
    bars: &MultiProgress,
) -> anyhow::Result<Vec<Point>> {
    let mut points = Vec::new();
    let overall = bars.add(ProgressBar::new(config.levels.len() as u64));
    overall.set_style(
        ProgressStyle::with_template("sweep {pos}/{len} levels [{elapsed_precise}] {msg}")
            .expect("a valid template"),
    );
    for &level in &config.levels {
        let workers = config.workers.unwrap_or(level).max(1);
        let dir = tempfile::tempdir()?;
        let mut args = config.serve_args.clone();
        args.extend([
            "--workers".into(),
            workers.to_string(),
            "--max-batch".into(),
            workers.to_string(),
        ]);
        let spec = ServeSpec {
            engine_steps: config.engine_steps.clone(),
            ..ServeSpec::serve(&sqlite_url(dir.path()), &args)
        };
        overall.set_message(format!("{level} at once: starting the server"));
        let mut server = tokio::task::spawn_blocking(move || ServerProcess::start(&spec)).await??;
        let (rss, sampler) = RssTrace::sample(server.pid(), std::time::Duration::from_millis(500));
        let mut plan: Plan = Scenario::Burst.plan(Some(level), Some(config.turns));
        plan.scenario = Scenario::Short;
        plan.think_ms = (0, 0);
        plan.ramp_ms = 0;
        plan.persona = config.persona.clone();
        plan.conversations = config.min_conversations.div_ceil(level).max(1);
        let replies =
            bars.add(ProgressBar::new((plan.users * plan.conversations * plan.turns) as u64));
        replies.set_style(
            ProgressStyle::with_template("  {msg} {bar:30} {pos}/{len} replies, {per_sec}")
                .expect("a valid template"),
        );
        replies.set_message(format!("{level} at once"));
        overall.set_message(format!("{level} at once"));
        let outcome = run(&server.base, &plan, messages, Some(replies.clone())).await;
        replies.finish_and_clear();
        sampler.abort();
        server.stop(std::time::Duration::from_secs(20));
        let summary = Summary::of(&outcome, &rss.samples());
        overall.println(format!(
            "{level:>3} at once ({workers} workers): {} replies, {} errors, TTFT p50 {:.2} s p95 {:.2} s, reply p50 {:.2} s p95 {:.2} s, {:.1} tokens/s",
            summary.reply_ms.count,
            summary.errors,
            summary.ttft_ms.p50 / 1000.0,
            summary.ttft_ms.p95 / 1000.0,
            summary.reply_ms.p50 / 1000.0,
            summary.reply_ms.p95 / 1000.0,
            summary.tokens_per_s
        ));
        points.push(Point { concurrency: level, workers, summary });
        overall.inc(1);
    }
    overall.finish_and_clear();
    Ok(points)
}

/// The sweep as a Markdown table, with throughput relative to the first level (one stream).
/// Replies per second is the steadier measure: tokens are counted from the backend's summaries,
/// which a draft cut short (it began the person's next line) does not have.
pub fn markdown(points: &[Point]) -> String {
    let base = points.first().map(|p| p.summary.tokens_per_s).unwrap_or(0.0);
    let base_replies = points.first().map(|p| p.summary.replies_per_s).unwrap_or(0.0);
    let mut s = String::from(
        "| at once | workers | replies | errors | TTFT p50 | TTFT p95 | TTFT p99 | reply p50 | reply p95 | queue wait p95 | replies/s | × one stream | tokens/s | × one stream | fairness | peak RSS |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in points {
        let m = &p.summary;
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.3} | {:.2}× | {:.1} | {:.2}× | {:.3} | {:.0} MiB |\n",
            p.concurrency,
            p.workers,
            m.reply_ms.count,
            m.errors,
            m.ttft_ms.p50 / 1000.0,
            m.ttft_ms.p95 / 1000.0,
            m.ttft_ms.p99 / 1000.0,
            m.reply_ms.p50 / 1000.0,
            m.reply_ms.p95 / 1000.0,
            m.queue_wait_ms.p95 / 1000.0,
            m.replies_per_s,
            if base_replies > 0.0 { m.replies_per_s / base_replies } else { f64::NAN },
            m.tokens_per_s,
            if base > 0.0 { m.tokens_per_s / base } else { f64::NAN },
            m.fairness,
            m.memory.peak_mib
        ));
    }
    s
}

/// Writes sweep.json, sweep.md, latency.svg and throughput.svg into `dir`.
pub fn write(points: &[Point], dir: &Path, context: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("sweep.json"),
        serde_json::to_string_pretty(&serde_json::json!({"context": context, "points": points}))?,
    )?;
    std::fs::write(dir.join("sweep.md"), markdown(points))?;
    let line = |name: &str, f: &dyn Fn(&Point) -> f64| Series {
        name: name.into(),
        points: points.iter().map(|p| (p.concurrency as f64, f(p))).collect(),
    };
    let latency = line_chart(
        &Axes {
            title: "Latency against concurrency".into(),
            x_label: "conversations at once".into(),
            y_label: "seconds".into(),
            log2_x: true,
        },
        &[
            line("TTFT p50", &|p| p.summary.ttft_ms.p50 / 1000.0),
            line("TTFT p95", &|p| p.summary.ttft_ms.p95 / 1000.0),
            line("reply p50", &|p| p.summary.reply_ms.p50 / 1000.0),
            line("reply p95", &|p| p.summary.reply_ms.p95 / 1000.0),
        ],
    );
    std::fs::write(dir.join("latency.svg"), latency)?;
    let throughput = line_chart(
        &Axes {
            title: "Aggregate throughput against concurrency".into(),
            x_label: "conversations at once".into(),
            y_label: "per minute".into(),
            log2_x: true,
        },
        &[
            line("replies/min", &|p| p.summary.replies_per_s * 60.0),
            line("tokens/min ÷ 10", &|p| p.summary.tokens_per_s * 6.0),
        ],
    );
    std::fs::write(dir.join("throughput.svg"), throughput)?;
    Ok(())
}

/// Reads a sweep written by [`write`] and writes its table and charts again (after a change to
/// how they are drawn, without measuring again).
pub fn redraw(dir: &Path) -> anyhow::Result<Vec<Point>> {
    let text = std::fs::read_to_string(dir.join("sweep.json"))?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    let points: Vec<Point> = serde_json::from_value(value["points"].clone())?;
    write(&points, dir, &value["context"])?;
    Ok(points)
}
