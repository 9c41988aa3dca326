//! The product's latency, as one person in the page sees it: a scripted conversation through
//! the page's API on a server of its own, each message sent after the last reply, and for every
//! turn the time from the message to the first words on screen and to the whole reply, beside
//! the reply's trace (queue wait, pipeline steps, prompt tokens read and served from the prefix
//! cache, time to first token, decode rate) so that a slow turn says where its time went.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::client::{Ending, Patience, Session};
use crate::server::{ServeSpec, ServerProcess};
use crate::stats::Distribution;

/// What to run.
#[derive(Debug, Clone)]
pub struct LatencyConfig {
    /// `rapport serve` arguments (model, flags under test).
    pub serve_args: Vec<String>,
    /// A fresh database.
    pub database_url: String,
    /// The persona.
    pub persona: String,
    /// The person's messages, in order.
    pub script: Vec<String>,
    /// The person's pause after each reply (reading, typing).
    pub pause: Duration,
    /// Seconds to let the server settle after it listens (its start-up work, such as warming
    /// the personas, is then not on the first turn's clock unless that is what is measured).
    pub settle: Duration,
    /// Type each message at this pace per character, sending the draft at each finished word
    /// as the page does, and send it this long after its last character (`None`: each message
    /// is sent whole, as a script would).
    pub typing: Option<Typing>,
}

/// How the person types.
#[derive(Debug, Clone, Copy)]
pub struct Typing {
    /// Time per character.
    pub per_char: Duration,
    /// From the last character to pressing Enter.
    pub send_after: Duration,
    /// Send the drafts (false: the same pace without them, the control of what they save).
    pub drafts: bool,
}

/// One turn.
#[derive(Debug, Clone, Serialize)]
pub struct TurnLatency {
    pub turn: usize,
    /// Message sent → first words shown, ms.
    pub first_words_ms: f64,
    /// Message sent → whole reply, ms.
    pub whole_reply_ms: f64,
    /// Stored → claimed by a worker, ms (the server's clock).
    pub queue_ms: Option<i64>,
    /// Steps 1–8, ms; of which understanding the message.
    pub prepare_ms: f64,
    pub understand_ms: f64,
    /// Generation, all attempts, ms.
    pub generate_ms: f64,
    /// Prompt tokens of the first attempt, and those the prefix cache served.
    pub prompt_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    /// The first attempt's time to first token, ms.
    pub ttft_ms: Option<u64>,
    /// Reply tokens per second after the first, first attempt.
    pub decode_tok_s: Option<f64>,
    /// Attempts (2: the first draft was rejected and replaced).
    pub attempts: usize,
    /// Times the page was told to take back what it showed.
    pub retracts: usize,
    pub reply: String,
}

/// The run.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub turns: Vec<TurnLatency>,
    /// First words on the first turn, ms.
    pub first_turn_first_words_ms: f64,
    /// First words from the second turn on.
    pub later_first_words_ms: Distribution,
    /// Whole reply from the second turn on.
    pub later_whole_reply_ms: Distribution,
    /// Problems (a reply that did not arrive).
    pub problems: Vec<String>,
}

impl LatencyReport {
    /// A Markdown table and summary.
    pub fn markdown(&self) -> String {
        let mut out = String::from("| turn | first words, ms | whole reply, ms | queue, ms | prepare, ms | prompt tokens (cached) | new | TTFT, ms | decode, tok/s | attempts | retracts |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        for t in &self.turns {
            let new = match (t.prompt_tokens, t.cached_tokens) {
                (Some(p), Some(c)) => (p.saturating_sub(c)).to_string(),
                _ => "-".into(),
            };
            out.push_str(&format!(
                "| {} | {:.0} | {:.0} | {} | {:.0} | {} ({}) | {new} | {} | {} | {} | {} |\n",
                t.turn,
                t.first_words_ms,
                t.whole_reply_ms,
                t.queue_ms.map_or("-".into(), |q| q.to_string()),
                t.prepare_ms,
                t.prompt_tokens.map_or("-".into(), |p| p.to_string()),
                t.cached_tokens.map_or("-".into(), |c| c.to_string()),
                t.ttft_ms.map_or("-".into(), |v| v.to_string()),
                t.decode_tok_s.map_or("-".into(), |v| format!("{v:.1}")),
                t.attempts,
                t.retracts
            ));
        }
        let d = &self.later_first_words_ms;
        out.push_str(&format!(
            "\nFirst words: first turn {:.0} ms; turns 2–{}: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms (n = {}). Whole reply from turn 2: p50 {:.0} ms, p95 {:.0} ms.\n",
            self.first_turn_first_words_ms,
            self.turns.len(),
            d.p50,
            d.p95,
            d.max,
            d.count,
            self.later_whole_reply_ms.p50,
            self.later_whole_reply_ms.p95
        ));
        out
    }
}

/// Runs the script on a server of its own.
pub async fn latency(config: &LatencyConfig) -> anyhow::Result<LatencyReport> {
    let spec = ServeSpec::serve(&config.database_url, &config.serve_args);
    let mut server = tokio::task::spawn_blocking(move || ServerProcess::start(&spec)).await??;
    tokio::time::sleep(config.settle).await;
    let http = reqwest::Client::new();
    let person = Session::open_as(
        &http,
        &server.base,
        Patience::default(),
        Some(crate::client::person_address(1)),
    )
    .await?;
    let conversation = person.create(&config.persona).await?;
    let mut turns = Vec::new();
    let mut problems = Vec::new();
    for (i, message) in config.script.iter().enumerate() {
        if let Some(typing) = config.typing {
            type_out(&person, &conversation, message, typing).await;
        }
        let sent = Instant::now();
        let posted = person
            .post(&conversation, message, &format!("latency-{i}-{}", std::process::id()))
            .await?;
        let mut retracts = 0;
        let followed = person
            .follow_observed(&conversation, &posted.job_id, |name| {
                retracts += (name == "retract") as usize
            })
            .await;
        let Ending::Done { message_id, text } = &followed.ending else {
            problems.push(format!("turn {}: {:?}", i + 1, followed.ending));
            continue;
        };
        let job = person
            .get(&format!("/api/conversations/{conversation}/jobs/{}", posted.job_id))
            .await?;
        let trace = person
            .get(&format!("/api/conversations/{conversation}/messages/{message_id}/trace"))
            .await?;
        turns.push(turn_latency(
            i + 1,
            sent,
            followed.first_text,
            followed.ended,
            &job["job"],
            &trace["trace"],
            retracts,
            text,
        ));
        tokio::time::sleep(config.pause).await;
    }
    tokio::task::spawn_blocking(move || server.stop(Duration::from_secs(20))).await?;
    let later: Vec<&TurnLatency> = turns.iter().skip(1).collect();
    Ok(LatencyReport {
        first_turn_first_words_ms: turns.first().map_or(f64::NAN, |t| t.first_words_ms),
        later_first_words_ms: Distribution::of(
            &later.iter().map(|t| t.first_words_ms).collect::<Vec<_>>(),
        ),
        later_whole_reply_ms: Distribution::of(
            &later.iter().map(|t| t.whole_reply_ms).collect::<Vec<_>>(),
        ),
        turns,
        problems,
    })
}

/// The page's pause before it sends the draft marked paused (`DRAFT_PAUSE_MS` in app.js).
const DRAFT_PAUSE: Duration = Duration::from_millis(300);

/// Types `message` at the person's pace, sending the draft at each finished word as the page
/// does (the draft's word boundary: a space after it), then waits for the Enter; a person who
/// waits longer than the page's pause before pressing it also sends the paused draft, as the
/// page does. A draft that fails costs only its speed-up, as in the page.
async fn type_out(person: &Session, conversation: &str, message: &str, typing: Typing) {
    let mut typed = String::new();
    for c in message.chars() {
        tokio::time::sleep(typing.per_char).await;
        typed.push(c);
        if typing.drafts && c.is_whitespace() && !typed.trim().is_empty() {
            let _ = person.draft(conversation, typed.trim(), false).await;
        }
    }
    if typing.drafts && typing.send_after > DRAFT_PAUSE {
        let paused = Instant::now() + DRAFT_PAUSE;
        tokio::time::sleep_until(paused.into()).await;
        let _ = person.draft(conversation, typed.trim(), true).await;
        tokio::time::sleep_until((paused + typing.send_after - DRAFT_PAUSE).into()).await;
    } else {
        tokio::time::sleep(typing.send_after).await;
    }
}

#[allow(clippy::too_many_arguments)]
fn turn_latency(
    turn: usize,
    sent: Instant,
    first: Option<Instant>,
    ended: Instant,
    job: &Value,
    trace: &Value,
    retracts: usize,
    reply: &str,
) -> TurnLatency {
    let ms = |t: Instant| t.duration_since(sent).as_secs_f64() * 1000.0;
    let us = |key: &str| trace["timings_us"][key].as_f64().unwrap_or(0.0) / 1000.0;
    let first_attempt = &trace["attempts"][0];
    let ttft = first_attempt["ttft_ms"].as_u64();
    let completion = first_attempt["completion_tokens"].as_f64();
    let total = first_attempt["total_ms"].as_f64();
    let decode = match (completion, total, ttft) {
        (Some(n), Some(total), Some(ttft)) if n > 1.0 && total > ttft as f64 => {
            Some((n - 1.0) / ((total - ttft as f64) / 1000.0))
        }
        _ => None,
    };
    TurnLatency {
        turn,
        first_words_ms: ms(first.unwrap_or(ended)),
        whole_reply_ms: ms(ended),
        queue_ms: match (job["started_at"].as_i64(), job["enqueued_at"].as_i64()) {
            (Some(s), Some(e)) => Some(s - e),
            _ => None,
        },
        prepare_ms: us("prepare"),
        understand_ms: us("understand"),
        generate_ms: us("generate"),
        prompt_tokens: first_attempt["prompt_tokens"].as_u64(),
        cached_tokens: first_attempt["cached_prompt_tokens"].as_u64(),
        ttft_ms: ttft,
        decode_tok_s: decode,
        attempts: trace["attempts"].as_array().map_or(0, Vec::len),
        retracts,
        reply: reply.to_string(),
    }
}
