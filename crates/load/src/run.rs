//! A load run: simulated people chatting at once, every reply timed from their side.
//!
//! Each person opens a session, starts conversations and sends messages one after the other,
//! waiting for each reply as a person does (closed loop: load grows with people, not with a
//! request rate the server could never meet). A run is bounded twice: by its plan (people ×
//! conversations × turns) and by a deadline after which nobody sends anything new.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Barrier;

use crate::client::{Ending, Patience, Session};

/// The kinds of load the issue asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Many people, short chats, arriving over a few seconds.
    Short,
    /// A few very long conversations: hundreds of turns, so the prompt's memory folds old turns.
    Long,
    /// Everyone sends at the same instant, wave after wave.
    Burst,
}

/// What a run does.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub scenario: Scenario,
    /// People at once.
    pub users: usize,
    /// Conversations each person has, one after the other.
    pub conversations: usize,
    /// Messages per conversation.
    pub turns: usize,
    /// Persona id.
    pub persona: String,
    /// A person's pause between a reply and their next message, ms (uniform in the range).
    pub think_ms: (u64, u64),
    /// People arrive spread over this many ms.
    pub ramp_ms: u64,
    /// Nobody sends anything new after this many seconds.
    pub max_secs: u64,
    /// Also fetch each reply's job and trace (server-side queue wait, tokens, memory).
    pub details: bool,
    #[serde(skip)]
    pub patience: Patience,
}

impl Scenario {
    /// The scenario's plan with its usual sizes, overridden where given.
    pub fn plan(self, users: Option<usize>, turns: Option<usize>) -> Plan {
        let (default_users, default_turns, think_ms, ramp_ms) = match self {
            Scenario::Short => (16, 3, (500, 2000), 5000),
            Scenario::Long => (2, 200, (0, 0), 0),
            Scenario::Burst => (32, 2, (0, 0), 0),
        };
        Plan {
            scenario: self,
            users: users.unwrap_or(default_users).max(1),
            conversations: 1,
            turns: turns.unwrap_or(default_turns).max(1),
            persona: "flirt-partner".into(),
            think_ms,
            ramp_ms,
            max_secs: 3600,
            details: true,
            patience: Patience::default(),
        }
    }
}

/// One reply as the person saw it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplyRecord {
    pub user: usize,
    pub conversation: String,
    pub turn: usize,
    /// Seconds from the run's start to sending the message.
    pub sent_s: f64,
    /// Sending the message → its acknowledgement.
    pub ack_ms: f64,
    /// Sending → the first text of the reply on screen.
    pub ttft_ms: Option<f64>,
    /// Sending → the stored reply (`done`), or the failure.
    pub reply_ms: f64,
    /// Server's clocks: enqueued → claimed by a worker.
    pub queue_wait_ms: Option<f64>,
    /// Tokens the model wrote for this reply (every attempt).
    pub tokens: Option<u64>,
    /// `done`, `fallback` (the persona's line after the model failed), `failed` or `broken`.
    pub outcome: String,
    pub error: Option<String>,
    /// Claims of the job (more than 1: a worker died holding it).
    pub attempts: Option<i64>,
    /// The prompt carried the running memory of folded turns.
    pub memory_used: bool,
    /// Turns folded into memory on this turn.
    pub newly_folded: u64,
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub plan: Plan,
    pub records: Vec<ReplyRecord>,
    /// People who could not start (no session, no conversation), with why.
    pub setup_errors: Vec<String>,
    /// First message sent → last reply received.
    pub wall_s: f64,
}

/// The messages people send (`datasets/load/messages.txt`, `#` lines are comments).
pub fn read_messages(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Runs `plan` against the server at `base`.
pub async fn run(
    base: &str,
    plan: &Plan,
    messages: &[String],
    progress: Option<ProgressBar>,
) -> RunOutcome {
    assert!(!messages.is_empty(), "no messages to send");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.users.max(8))
        .build()
        .expect("an HTTP client");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(plan.max_secs);
    // Burst waves: everyone posts turn N together.
    let barrier = (plan.scenario == Scenario::Burst).then(|| Arc::new(Barrier::new(plan.users)));
    let messages = Arc::new(messages.to_vec());
    let mut tasks = Vec::new();
    for user in 0..plan.users {
        let (http, base, plan, messages, barrier, progress) = (
            http.clone(),
            base.to_string(),
            plan.clone(),
            messages.clone(),
            barrier.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let arrival = if plan.users > 1 {
                plan.ramp_ms * user as u64 / (plan.users as u64 - 1)
            } else {
                0
            };
            tokio::time::sleep(Duration::from_millis(arrival)).await;
            person(
                user,
                &http,
                &base,
                &plan,
                &messages,
                started,
                deadline,
                barrier.as_deref(),
                progress.as_ref(),
            )
            .await
        }));
    }
    let mut records = Vec::new();
    let mut setup_errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok((r, e)) => {
                records.extend(r);
                setup_errors.extend(e);
            }
            Err(e) => setup_errors.push(format!("a simulated person panicked: {e}")),
        }
    }
    let first = records.iter().map(|r| r.sent_s).fold(f64::INFINITY, f64::min);
    let last = records.iter().map(|r| r.sent_s + r.reply_ms / 1000.0).fold(0.0, f64::max);
    let wall_s = if records.is_empty() { 0.0 } else { last - first };
    records.sort_by(|a, b| a.sent_s.total_cmp(&b.sent_s));
    RunOutcome { plan: plan.clone(), records, setup_errors, wall_s }
}

/// Deterministic pseudo-random numbers (SplitMix64): the same plan sends the same messages
/// with the same pauses, run after run.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[allow(clippy::too_many_arguments)]
async fn person(
    user: usize,
    http: &reqwest::Client,
    base: &str,
    plan: &Plan,
    messages: &[String],
    started: Instant,
    deadline: Instant,
    barrier: Option<&Barrier>,
    progress: Option<&ProgressBar>,
) -> (Vec<ReplyRecord>, Vec<String>) {
    let mut records = Vec::new();
    let mut rng = user as u64 * 7919 + 1;
    let session = match Session::open_as(
        http,
        base,
        plan.patience,
        Some(crate::client::person_address(user)),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            // Still meet the others at every wave, or they would wait forever.
            if let Some(b) = barrier {
                for _ in 0..plan.turns * plan.conversations {
                    b.wait().await;
                }
            }
            return (records, vec![format!("user {user}: {e}")]);
        }
    };
    let mut line = user * 7;
    for round in 0..plan.conversations {
        let conversation = match session.create(&plan.persona).await {
            Ok(c) => c,
            Err(e) => {
                if let Some(b) = barrier {
                    for _ in 0..plan.turns {
                        b.wait().await;
                    }
                }
                return (records, vec![format!("user {user}, conversation {round}: {e}")]);
            }
        };
        for turn in 0..plan.turns {
            if let Some(b) = barrier {
                b.wait().await;
            }
            if Instant::now() > deadline {
                continue;
            }
            let content = &messages[line % messages.len()];
            line += 1;
            let sent = Instant::now();
            let key = format!("load-{user}-{round}-{turn}-{}", started.elapsed().as_nanos());
            let record = match session.post(&conversation, content, &key).await {
                Err(e) => {
                    ReplyRecord::unsent(user, &conversation, turn, started, sent, e.to_string())
                }
                Ok(posted) => {
                    let followed = session.follow(&conversation, &posted.job_id).await;
                    let mut record = ReplyRecord {
                        user,
                        conversation: conversation.clone(),
                        turn,
                        sent_s: (sent - started).as_secs_f64(),
                        ack_ms: ms(posted.acknowledged - sent),
                        ttft_ms: followed.first_text.map(|t| ms(t - sent)),
                        reply_ms: ms(followed.ended - sent),
                        queue_wait_ms: None,
                        tokens: None,
                        outcome: String::new(),
                        error: None,
                        attempts: None,
                        memory_used: false,
                        newly_folded: 0,
                    };
                    match &followed.ending {
                        Ending::Done { message_id, .. } => {
                            record.outcome = "done".into();
                            if plan.details {
                                record
                                    .add_details(
                                        &session,
                                        &conversation,
                                        &posted.job_id,
                                        message_id,
                                    )
                                    .await;
                            }
                        }
                        Ending::Failed(e) => {
                            record.outcome = "failed".into();
                            record.error = Some(e.clone());
                        }
                        Ending::Broken(e) => {
                            record.outcome = "broken".into();
                            record.error = Some(e.clone());
                        }
                    }
                    record
                }
            };
            records.push(record);
            if let Some(p) = progress {
                p.inc(1);
            }
            let (lo, hi) = plan.think_ms;
            if hi > 0 {
                let pause = lo + splitmix(&mut rng) % (hi - lo + 1);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }
    (records, Vec::new())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl ReplyRecord {
    fn unsent(
        user: usize,
        conversation: &str,
        turn: usize,
        started: Instant,
        sent: Instant,
        error: String,
    ) -> ReplyRecord {
        ReplyRecord {
            user,
            conversation: conversation.to_string(),
            turn,
            sent_s: (sent - started).as_secs_f64(),
            ack_ms: ms(sent.elapsed()),
            ttft_ms: None,
            reply_ms: ms(sent.elapsed()),
            queue_wait_ms: None,
            tokens: None,
            outcome: "unsent".into(),
            error: Some(error),
            attempts: None,
            memory_used: false,
            newly_folded: 0,
        }
    }

    /// The server's side of the reply: its queue wait, the tokens written, the memory fold.
    async fn add_details(
        &mut self,
        session: &Session,
        conversation: &str,
        job: &str,
        message: &str,
    ) {
        if let Ok(j) = session.get(&format!("/api/conversations/{conversation}/jobs/{job}")).await {
            let j = &j["job"];
            if let (Some(enq), Some(start)) = (j["enqueued_at"].as_i64(), j["started_at"].as_i64())
            {
                self.queue_wait_ms = Some((start - enq).max(0) as f64);
            }
            self.attempts = j["attempts"].as_i64();
        }
        if let Ok(trace) = session
            .get(&format!("/api/conversations/{conversation}/messages/{message}/trace"))
            .await
        {
            let trace = trace.get("trace").unwrap_or(&trace);
            let attempts = trace["attempts"].as_array().cloned().unwrap_or_default();
            let tokens: u64 = attempts.iter().filter_map(|a| a["completion_tokens"].as_u64()).sum();
            self.tokens = (!attempts.is_empty()).then_some(tokens);
            if !trace["fallback"].is_null() {
                self.outcome = "fallback".into();
                self.error = trace["fallback"]
                    .as_str()
                    .map(str::to_string)
                    .or(Some(Value::to_string(&trace["fallback"])));
            }
            self.memory_used = trace["prompt"]["memory_used"].as_bool().unwrap_or(false);
            self.newly_folded = trace["prompt"]["newly_folded"].as_u64().unwrap_or(0);
        }
    }
}
