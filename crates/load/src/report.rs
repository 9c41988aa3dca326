//! What a load run measured, as JSON for programs and Markdown for people.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::run::{RunOutcome, Scenario};
use crate::stats::{jain_index, Distribution};

/// The server's resident memory over a run, MiB.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Memory {
    pub start_mib: f64,
    pub peak_mib: f64,
    pub end_mib: f64,
    /// (seconds, MiB) samples.
    pub samples: Vec<(f64, f64)>,
}

impl Memory {
    /// From (seconds, bytes) samples.
    pub fn of(samples: &[(f64, u64)]) -> Memory {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        Memory {
            start_mib: samples.first().map(|s| mib(s.1)).unwrap_or(0.0),
            peak_mib: samples.iter().map(|s| mib(s.1)).fold(0.0, f64::max),
            end_mib: samples.last().map(|s| mib(s.1)).unwrap_or(0.0),
            samples: samples.iter().map(|(t, b)| (*t, mib(*b))).collect(),
        }
    }
}

/// A run summarised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub users: usize,
    /// Messages the plan would send (people × conversations × turns).
    pub planned: usize,
    /// Messages sent (the deadline may cut a run short).
    pub sent: usize,
    /// Replies by outcome: done, fallback, failed, broken, unsent.
    pub outcomes: BTreeMap<String, usize>,
    /// Replies that ended in anything but `done`/`fallback`, plus people who never started.
    pub errors: usize,
    pub wall_s: f64,
    pub replies_per_s: f64,
    pub tokens_per_s: f64,
    pub tokens: u64,
    pub ack_ms: Distribution,
    pub ttft_ms: Distribution,
    pub reply_ms: Distribution,
    pub queue_wait_ms: Distribution,
    /// Jain's index over each person's mean reply time (1 = everyone served alike).
    pub fairness: f64,
    /// Replies whose prompt carried the running memory, and turns folded into it in all.
    pub memory_turns: usize,
    pub folded: u64,
    /// Replies whose job was claimed more than once.
    pub retried_jobs: usize,
    pub memory: Memory,
    /// The first few error messages, for the reader to see what went wrong.
    pub error_examples: Vec<String>,
}

impl Summary {
    /// Summarises a run and the server's memory samples.
    pub fn of(outcome: &RunOutcome, rss: &[(f64, u64)]) -> Summary {
        let r = &outcome.records;
        let answered = |o: &str| o == "done" || o == "fallback";
        let mut outcomes = BTreeMap::new();
        for record in r {
            *outcomes.entry(record.outcome.clone()).or_insert(0) += 1;
        }
        let ok: Vec<_> = r.iter().filter(|x| answered(&x.outcome)).collect();
        let tokens: u64 = ok.iter().filter_map(|x| x.tokens).sum();
        let wall = outcome.wall_s.max(1e-9);
        let mut per_user: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for x in &ok {
            per_user.entry(x.user).or_default().push(x.reply_ms);
        }
        let user_means: Vec<f64> =
            per_user.values().map(|v| v.iter().sum::<f64>() / v.len() as f64).collect();
        let plan = &outcome.plan;
        let mut error_examples: Vec<String> = outcome.setup_errors.clone();
        error_examples
            .extend(r.iter().filter(|x| !answered(&x.outcome)).filter_map(|x| x.error.clone()));
        error_examples.truncate(5);
        Summary {
            scenario: plan.scenario,
            users: plan.users,
            planned: plan.users * plan.conversations * plan.turns,
            sent: r.iter().filter(|x| x.outcome != "unsent").count(),
            errors: r.iter().filter(|x| !answered(&x.outcome)).count() + outcome.setup_errors.len(),
            outcomes,
            wall_s: outcome.wall_s,
            replies_per_s: ok.len() as f64 / wall,
            tokens_per_s: tokens as f64 / wall,
            tokens,
            ack_ms: Distribution::of(
                &r.iter().filter(|x| x.outcome != "unsent").map(|x| x.ack_ms).collect::<Vec<_>>(),
            ),
            ttft_ms: Distribution::of(&ok.iter().filter_map(|x| x.ttft_ms).collect::<Vec<_>>()),
            reply_ms: Distribution::of(&ok.iter().map(|x| x.reply_ms).collect::<Vec<_>>()),
            queue_wait_ms: Distribution::of(
                &ok.iter().filter_map(|x| x.queue_wait_ms).collect::<Vec<_>>(),
            ),
            fairness: jain_index(&user_means),
            memory_turns: ok.iter().filter(|x| x.memory_used).count(),
            folded: ok.iter().map(|x| x.newly_folded).sum(),
            retried_jobs: ok.iter().filter(|x| x.attempts.unwrap_or(1) > 1).count(),
            memory: Memory::of(rss),
            error_examples,
        }
    }

    /// A Markdown block: one table of distributions and a line of totals.
    pub fn markdown(&self) -> String {
        let row = |name: &str, d: &Distribution| {
            format!(
                "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                d.count, d.p50, d.p95, d.p99, d.max
            )
        };
        let mut s =
            String::from("| ms | n | p50 | p95 | p99 | max |\n|---|---:|---:|---:|---:|---:|\n");
        s.push_str(&row("acknowledged", &self.ack_ms));
        s.push_str(&row("first text (TTFT)", &self.ttft_ms));
        s.push_str(&row("whole reply", &self.reply_ms));
        s.push_str(&row("queue wait (server)", &self.queue_wait_ms));
        let outcomes: Vec<String> = self.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        s.push_str(&format!(
            "\n{} people, {} of {} messages sent ({}); errors {}; {:.2} replies/s, {:.1} tokens/s over {:.0} s; fairness (Jain) {:.3}; \
             memory in the prompt on {} replies ({} turns folded); jobs taken again {}; server RSS {:.0} → peak {:.0} → {:.0} MiB.\n",
            self.users,
            self.sent,
            self.planned,
            outcomes.join(", "),
            self.errors,
            self.replies_per_s,
            self.tokens_per_s,
            self.wall_s,
            self.fairness,
            self.memory_turns,
            self.folded,
            self.retried_jobs,
            self.memory.start_mib,
            self.memory.peak_mib,
            self.memory.end_mib
        ));
        for e in &self.error_examples {
            s.push_str(&format!("\n- error: {e}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{ReplyRecord, Scenario};

    fn record(user: usize, outcome: &str, reply_ms: f64, tokens: u64) -> ReplyRecord {
        ReplyRecord {
            user,
            conversation: format!("c{user}"),
            turn: 0,
            sent_s: user as f64,
            ack_ms: 2.0,
            ttft_ms: Some(reply_ms / 2.0),
            reply_ms,
            queue_wait_ms: Some(1.0),
            tokens: Some(tokens),
            outcome: outcome.into(),
            error: (outcome != "done").then(|| format!("{outcome} here")),
            attempts: Some(1),
            memory_used: false,
            newly_folded: 0,
        }
    }

    #[test]
    fn failures_count_as_errors_and_not_as_throughput() {
        let plan = Scenario::Short.plan(Some(3), Some(1));
        let outcome = RunOutcome {
            plan,
            records: vec![
                record(0, "done", 1000.0, 40),
                record(1, "done", 1000.0, 60),
                record(2, "broken", 5000.0, 0),
            ],
            setup_errors: vec![],
            wall_s: 2.0,
        };
        let s = Summary::of(&outcome, &[(0.0, 100 << 20), (1.0, 300 << 20), (2.0, 200 << 20)]);
        assert_eq!(s.errors, 1);
        assert_eq!(s.tokens, 100);
        assert!((s.tokens_per_s - 50.0).abs() < 1e-9);
        assert_eq!(s.reply_ms.count, 2, "a broken stream is not a latency sample");
        assert_eq!(
            (s.memory.start_mib, s.memory.peak_mib, s.memory.end_mib),
            (100.0, 300.0, 200.0)
        );
        assert!(s.markdown().contains("broken here"));
    }
}
