//! `rapport bench llm` (speed), `rapport bench batch` (does writing several replies at once pay?)
//! and `rapport bench sampling` (do replies loop?).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rapport_core::text_stats::{diversity, DiversityReport};
use rapport_core::{collect_completion, ChatMessage, GenerationRequest, SamplingParams};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendArgs};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time to first token, prefill and decode speed over a fixed prompt set (greedy).
    Llm(LlmArgs),
    /// Aggregate throughput of several greedy replies written at once, against one at a time.
    Batch(BatchArgs),
    /// Diversity and repetition of replies under several sampling configurations.
    Sampling(SamplingArgs),
}

#[derive(Args, Debug)]
pub struct BatchArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Replies in flight at once, one measurement per level (1 is the one-stream baseline).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    levels: Vec<usize>,
    /// Replies measured per level (rounded up to whole rounds of the level).
    #[arg(long, default_value_t = 8)]
    replies: usize,
    /// Tokens to generate per reply.
    #[arg(long, default_value_t = 48)]
    max_tokens: u32,
    /// The system prompt every reply shares, as a persona's does.
    #[arg(
        long,
        default_value = "You are Mia, a friendly person chatting by text. Keep replies short and warm."
    )]
    system: String,
    /// Give every reply a user line of its own length, as real conversations do; without it the
    /// lines differ only in a number, so the prompts tokenise to the same length.
    #[arg(long)]
    varied_lengths: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct LlmArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// JSONL prompt set: {"id", "system" | "system_file", "user"} per line.
    #[arg(long, default_value = "datasets/prompts/bench-llm.jsonl")]
    prompts: PathBuf,
    /// Measured runs per prompt, after one unmeasured-for-p50 cold run.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Tokens to generate per run.
    #[arg(long, default_value_t = 48)]
    max_tokens: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct SamplingArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// JSONL prompt set: {"id", "system" | "system_file", "user"} per line.
    #[arg(long, default_value = "datasets/prompts/sampling-probe.jsonl")]
    prompts: PathBuf,
    /// Configurations to compare: `preset` (the model's tuned defaults), `greedy` (mistral.rs's
    /// own default: no sampling, no penalties), `temperature` (0.7 / top-p 0.9, no penalties).
    #[arg(long, value_delimiter = ',', default_value = "greedy,temperature,preset")]
    configs: Vec<String>,
    /// Replies per prompt and configuration.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write every reply to this JSONL file.
    #[arg(long)]
    replies_out: Option<PathBuf>,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Llm(args) => llm(args).await,
        BenchCommand::Batch(args) => batch(args).await,
        BenchCommand::Sampling(args) => sampling(args).await,
    }
}

#[derive(Deserialize)]
struct PromptLine {
    id: String,
    system: Option<String>,
    system_file: Option<PathBuf>,
    user: String,
}

struct Prompt {
    id: String,
    messages: Vec<ChatMessage>,
}

/// Reads a prompt set; `system_file` paths are relative to the prompt file.
fn load_prompts(path: &Path) -> anyhow::Result<Vec<Prompt>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let p: PromptLine =
            serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), n + 1))?;
        let system = match (p.system, p.system_file) {
            (Some(s), None) => s,
            (None, Some(f)) => std::fs::read_to_string(base.join(&f))
                .with_context(|| format!("reading {}", f.display()))?,
            _ => anyhow::bail!(
                "{}:{}: give exactly one of system and system_file",
                path.display(),
                n + 1
            ),
        };
        out.push(Prompt {
            id: p.id,
            messages: vec![ChatMessage::system(system.trim()), ChatMessage::user(p.user)],
        });
    }
    anyhow::ensure!(!out.is_empty(), "{} holds no prompts", path.display());
    Ok(out)
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} [{elapsed_precise}]")
            .expect("static template"),
    );
    bar.set_message(what.to_string());
    bar
}

/// Nearest-rank percentile of unsorted values (`rapport_core::percentile`).
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    rapport_core::percentile::nearest_rank(&v, p)
}

#[derive(Serialize)]
struct PromptSpeed {
    id: String,
    prompt_tokens: u32,
    completion_tokens: u32,
    ttft_cold_s: f64,
    prefill_tok_per_s_cold: f64,
    ttft_p50_s: f64,
    ttft_p95_s: f64,
    decode_tok_per_s_p50: f64,
    decode_tok_per_s_p95: f64,
}

#[derive(Serialize)]
struct LlmReport {
    engine: String,
    model: String,
    max_tokens: u32,
    runs: usize,
    threads: usize,
    prompts: Vec<PromptSpeed>,
}

async fn llm(args: LlmArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    let prompts = load_prompts(&args.prompts)?;
    let backend = args.backend.build().await?;
    let bar = progress((prompts.len() * (args.runs + 1)) as u64, "bench llm");
    let mut results = Vec::new();
    for prompt in &prompts {
        let mut ttfts = Vec::new();
        let mut decode = Vec::new();
        let mut cold = None;
        let mut tokens = (0, 0);
        // Run 0 is cold: nothing of this prompt is cached yet. Runs 1.. send the same system
        // prompt with a different user line, as the next person talking to the same persona
        // does: the shared prefix may come from a cache. (An identical repeat is not what users
        // send, and mistral.rs 0.8.1 never serves one from its prefix cache.)
        for run in 0..=args.runs {
            let messages = with_run_suffix(&prompt.messages, run);
            let (ttft, summary) = timed_greedy(&backend, &messages, args.max_tokens).await?;
            tokens = (summary.usage.prompt_tokens, summary.usage.completion_tokens);
            if run == 0 {
                cold = Some(ttft);
            } else {
                ttfts.push(ttft);
                if let Some(tps) = summary.timings.decode_tokens_per_sec(&summary.usage) {
                    decode.push(tps);
                }
            }
            bar.inc(1);
        }
        let cold = cold.unwrap_or_default();
        results.push(PromptSpeed {
            id: prompt.id.clone(),
            prompt_tokens: tokens.0,
            completion_tokens: tokens.1,
            ttft_cold_s: cold,
            prefill_tok_per_s_cold: if cold > 0.0 { f64::from(tokens.0) / cold } else { 0.0 },
            ttft_p50_s: percentile(&ttfts, 50.0),
            ttft_p95_s: percentile(&ttfts, 95.0),
            decode_tok_per_s_p50: if decode.is_empty() { 0.0 } else { percentile(&decode, 50.0) },
            decode_tok_per_s_p95: if decode.is_empty() { 0.0 } else { percentile(&decode, 95.0) },
        });
    }
    bar.finish_and_clear();
    let report = LlmReport {
        engine: backend.generator.name().to_string(),
        model: backend.model_name.clone(),
        max_tokens: args.max_tokens,
        runs: args.runs,
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        prompts: results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} on {} ({} threads), greedy, {} tokens, {} runs after a cold one",
            report.model, report.engine, report.threads, report.max_tokens, report.runs
        );
        println!(
            "{:<14} {:>7} {:>10} {:>12} {:>10} {:>10} {:>12}",
            "prompt", "tokens", "ttft cold", "prefill t/s", "ttft p50", "ttft p95", "decode p50"
        );
        for p in &report.prompts {
            println!(
                "{:<14} {:>7} {:>9.2}s {:>12.1} {:>9.2}s {:>9.2}s {:>12.1}",
                p.id,
                p.prompt_tokens,
                p.ttft_cold_s,
                p.prefill_tok_per_s_cold,
                p.ttft_p50_s,
                p.ttft_p95_s,
                p.decode_tok_per_s_p50
            );
        }
    }
    Ok(())
}

/// The prompt of run `run`: the user line gets a run number after the first run. The comparison
/// script does the same, so both engines see identical prompts.
fn with_run_suffix(messages: &[ChatMessage], run: usize) -> Vec<ChatMessage> {
    let mut out = messages.to_vec();
    if run > 0 {
        if let Some(last) = out.last_mut() {
            last.content = format!("{} ({run})", last.content);
        }
    }
    out
}

/// A greedy generation and its TTFT in seconds, as the backend measured it (the whole time when
/// the reply was empty).
async fn timed_greedy(
    backend: &Backend,
    messages: &[ChatMessage],
    max_tokens: u32,
) -> anyhow::Result<(f64, rapport_core::GenerationSummary)> {
    let request = GenerationRequest::new(messages.to_vec(), SamplingParams::greedy(max_tokens))?;
    let done = collect_completion(backend.generator.generate(request).await?, |_| {}).await?;
    let t = done.summary.timings;
    Ok((t.time_to_first_token.unwrap_or(t.total).as_secs_f64(), done.summary))
}

/// The user line of reply `i` of a batch bench. Same-length lines differ in a two-digit number
/// only; varied ones repeat a clause `i % 5` extra times, so prompts differ by whole clauses.
fn batch_user_line(i: usize, varied_lengths: bool) -> String {
    if varied_lengths {
        let extra = " and honestly I keep thinking about it".repeat(i % 5);
        format!("Something happened at work today{extra}. Can I tell you? ({i:02})")
    } else {
        format!("Something happened at work today. Can I tell you? ({i:02})")
    }
}

#[derive(Serialize)]
struct BatchLevel {
    at_once: usize,
    replies: usize,
    completion_tokens: u64,
    wall_s: f64,
    replies_per_s: f64,
    tokens_per_s: f64,
    /// Aggregate tokens/s over the one-stream level of the same run.
    tokens_per_s_vs_one: Option<f64>,
    ttft_p50_s: f64,
    ttft_p95_s: f64,
    /// Per reply: tokens after the first over the time after the first.
    decode_tok_per_s_p50: f64,
}

/// Several greedy replies at once, in rounds of `level`, on one backend (so the embedded
/// engine's scheduler sees them together). Each round waits for its slowest reply: that is the
/// batch's throughput, not an open arrival process (`rapport-load sweep` measures that).
async fn batch(args: BatchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.levels.is_empty() && args.levels.iter().all(|&l| l >= 1),
        "--levels must be ≥ 1"
    );
    anyhow::ensure!(args.replies >= 1, "--replies must be at least 1");
    let backend = args.backend.build().await?;
    // Warm-up: the first reply pays one-off costs (allocations, the prefix cache's first entry)
    // that would count against whichever level ran first.
    timed_greedy(
        &backend,
        &[ChatMessage::system(&args.system), ChatMessage::user(batch_user_line(99, false))],
        args.max_tokens,
    )
    .await?;
    let total: usize = args.levels.iter().map(|&l| args.replies.div_ceil(l) * l).sum();
    let bar = progress(total as u64, "bench batch");
    let mut rows: Vec<BatchLevel> = Vec::new();
    let mut counter = 0usize;
    for &level in &args.levels {
        let rounds = args.replies.div_ceil(level);
        let (mut ttfts, mut decode, mut tokens) = (Vec::new(), Vec::new(), 0u64);
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            let round = (0..level).map(|_| {
                counter += 1;
                let messages = vec![
                    ChatMessage::system(&args.system),
                    ChatMessage::user(batch_user_line(counter, args.varied_lengths)),
                ];
                let (backend, bar) = (&backend, &bar);
                async move {
                    let r = timed_greedy(backend, &messages, args.max_tokens).await;
                    bar.inc(1);
                    r
                }
            });
            for result in futures::future::join_all(round).await {
                let (ttft, summary) = result?;
                ttfts.push(ttft);
                tokens += u64::from(summary.usage.completion_tokens);
                if let Some(tps) = summary.timings.decode_tokens_per_sec(&summary.usage) {
                    decode.push(tps);
                }
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let replies = rounds * level;
        let tokens_per_s = tokens as f64 / wall;
        let one = rows.iter().find(|r| r.at_once == 1).map(|r| r.tokens_per_s);
        rows.push(BatchLevel {
            at_once: level,
            replies,
            completion_tokens: tokens,
            wall_s: wall,
            replies_per_s: replies as f64 / wall,
            tokens_per_s,
            tokens_per_s_vs_one: one.map(|o| tokens_per_s / o),
            ttft_p50_s: percentile(&ttfts, 50.0),
            ttft_p95_s: percentile(&ttfts, 95.0),
            decode_tok_per_s_p50: if decode.is_empty() { 0.0 } else { percentile(&decode, 50.0) },
        });
    }
    bar.finish_and_clear();
    let report = serde_json::json!({
        "engine": backend.generator.name(),
        "model": backend.model_name,
        "max_tokens": args.max_tokens,
        "varied_lengths": args.varied_lengths,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "levels": rows,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} on {}, greedy, {} tokens, {} prompt lengths",
            backend.model_name,
            backend.generator.name(),
            args.max_tokens,
            if args.varied_lengths { "varied" } else { "equal" }
        );
        println!(
            "{:>8} {:>8} {:>8} {:>10} {:>10} {:>8} {:>10} {:>10} {:>12}",
            "at once",
            "replies",
            "tokens",
            "replies/s",
            "tokens/s",
            "× one",
            "ttft p50",
            "ttft p95",
            "decode p50"
        );
        for r in &rows {
            let ratio = r.tokens_per_s_vs_one.map_or("-".to_string(), |x| format!("{x:.2}×"));
            println!(
                "{:>8} {:>8} {:>8} {:>10.3} {:>10.1} {:>8} {:>9.2}s {:>9.2}s {:>12.1}",
                r.at_once,
                r.replies,
                r.completion_tokens,
                r.replies_per_s,
                r.tokens_per_s,
                ratio,
                r.ttft_p50_s,
                r.ttft_p95_s,
                r.decode_tok_per_s_p50
            );
        }
    }
    Ok(())
}

fn sampling_config(name: &str, preset: &SamplingParams) -> anyhow::Result<SamplingParams> {
    let max_tokens = preset.max_tokens;
    Ok(match name {
        "preset" => preset.clone(),
        "greedy" => {
            SamplingParams { stop: preset.stop.clone(), ..SamplingParams::greedy(max_tokens) }
        }
        "temperature" => SamplingParams {
            temperature: 0.7,
            top_p: Some(0.9),
            stop: preset.stop.clone(),
            ..SamplingParams::greedy(max_tokens)
        },
        other => {
            anyhow::bail!("unknown sampling configuration '{other}' (preset, greedy, temperature)")
        }
    })
}

#[derive(Serialize)]
struct SamplingRow {
    config: String,
    #[serde(flatten)]
    report: DiversityReport,
}

async fn sampling(args: SamplingArgs) -> anyhow::Result<()> {
    let prompts = load_prompts(&args.prompts)?;
    let backend = args.backend.build().await?;
    let configs: Vec<(String, SamplingParams)> = args
        .configs
        .iter()
        .map(|c| sampling_config(c, &backend.sampling).map(|s| (c.clone(), s)))
        .collect::<anyhow::Result<_>>()?;
    let mut replies_out = match &args.replies_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| p.display().to_string())?,
        )),
        None => None,
    };
    let bar = progress((configs.len() * prompts.len() * args.samples) as u64, "bench sampling");
    let mut rows = Vec::new();
    for (name, params) in &configs {
        let mut replies = Vec::new();
        for prompt in &prompts {
            for _ in 0..args.samples {
                let request = GenerationRequest::new(prompt.messages.clone(), params.clone())?;
                let done =
                    collect_completion(backend.generator.generate(request).await?, |_| {}).await?;
                if let Some(out) = replies_out.as_mut() {
                    use std::io::Write;
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({"config": name, "prompt": prompt.id, "reply": done.text})
                    )?;
                }
                replies.push(done.text);
                bar.inc(1);
            }
        }
        rows.push(SamplingRow { config: name.clone(), report: diversity(&replies) });
    }
    bar.finish_and_clear();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"model": backend.model_name, "rows": rows})
            )?
        );
    } else {
        println!("{} — {} prompts × {} samples", backend.model_name, prompts.len(), args.samples);
        println!(
            "{:<12} {:>10} {:>10} {:>16} {:>14} {:>10}",
            "config", "distinct-1", "distinct-2", "repeated sent.", "looping reps", "words"
        );
        for r in &rows {
            let d = &r.report;
            println!(
                "{:<12} {:>10.3} {:>10.3} {:>15.1}% {:>13.1}% {:>10.1}",
                r.config,
                d.distinct_1,
                d.distinct_2,
                d.repeated_sentence_rate * 100.0,
                d.looping_reply_rate * 100.0,
                d.mean_words
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 95.0), 5.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
    }

    #[test]
    fn the_shipped_prompt_sets_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/prompts");
        assert!(load_prompts(&root.join("bench-llm.jsonl")).unwrap().len() >= 3);
        assert!(load_prompts(&root.join("sampling-probe.jsonl")).unwrap().len() >= 12);
    }

    #[test]
    fn later_runs_vary_only_the_user_line() {
        let m = vec![ChatMessage::system("s"), ChatMessage::user("hi")];
        assert_eq!(with_run_suffix(&m, 0), m);
        let r = with_run_suffix(&m, 2);
        assert_eq!((r[0].content.as_str(), r[1].content.as_str()), ("s", "hi (2)"));
    }

    #[test]
    fn batch_lines_differ_and_only_varied_ones_change_length() {
        assert_ne!(batch_user_line(1, false), batch_user_line(2, false));
        assert_eq!(batch_user_line(1, false).len(), batch_user_line(2, false).len());
        assert_ne!(batch_user_line(1, true).len(), batch_user_line(2, true).len());
    }

    #[test]
    fn unknown_sampling_configs_are_named_in_the_error() {
        let e = sampling_config("nucleus", &SamplingParams::default()).unwrap_err().to_string();
        assert!(e.contains("nucleus"));
    }
}
