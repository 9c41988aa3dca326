//! Chaos runs: people keep chatting while something breaks under them, then every conversation
//! is checked against what the server acknowledged.
//!
//! The promise under test is the one docs/operate/web-app.md makes: a message the server acknowledged (202)
//! is stored, appears once, and gets exactly one reply, whatever happened in between. People
//! here behave like the page: they retry a post with the same Idempotency-Key until it is
//! acknowledged, and reconnect to a reply stream that broke.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::client::{Ending, Patience, Session};

/// What one chaos run found.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Integrity {
    /// Conversations checked.
    pub conversations: usize,
    /// Messages the server acknowledged.
    pub acknowledged: usize,
    /// Acknowledged messages that are not stored (must be 0).
    pub missing: usize,
    /// Acknowledged messages stored more than once (must be 0).
    pub duplicated: usize,
    /// Stored messages with no reply after the run settled (must be 0).
    pub unanswered: usize,
    /// Replies written twice for one message (must be 0; regeneration is not used here).
    pub double_replies: usize,
    /// Replies that are the persona's fallback line (the model could not be reached).
    pub fallbacks: usize,
    /// Jobs claimed more than once (a worker died holding them).
    pub retaken_jobs: usize,
    /// Jobs that ended `failed` (they tell the person; counted, not hidden).
    pub failed_jobs: usize,
    /// Messages people sent that never got an acknowledgement (the person was told; not a loss).
    pub unacknowledged: usize,
    /// Requests that failed (a 5xx, no connection) and were sent again, and reply streams that
    /// broke and were followed again; the people never saw these, but they are the outage's
    /// size as the clients felt it.
    pub retried_requests: usize,
    /// Reply streams that said `failed` for a job that did not fail (must be 0: the page would
    /// offer "try again" for a reply still on its way, and the store would refuse the retry).
    pub false_failures: usize,
    /// What was wrong, for the first few problems.
    pub problems: Vec<String>,
}

impl Integrity {
    /// Nothing acknowledged was lost, doubled or left without its one reply.
    pub fn holds(&self) -> bool {
        self.missing == 0
            && self.duplicated == 0
            && self.unanswered == 0
            && self.double_replies == 0
            && self.false_failures == 0
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < 10 {
            self.problems.push(p);
        }
    }

    fn merge(&mut self, other: Integrity) {
        self.conversations += other.conversations;
        self.acknowledged += other.acknowledged;
        self.missing += other.missing;
        self.duplicated += other.duplicated;
        self.unanswered += other.unanswered;
        self.double_replies += other.double_replies;
        self.fallbacks += other.fallbacks;
        self.retaken_jobs += other.retaken_jobs;
        self.failed_jobs += other.failed_jobs;
        self.unacknowledged += other.unacknowledged;
        self.false_failures += other.false_failures;
        self.retried_requests += other.retried_requests;
        for p in other.problems {
            self.problem(p);
        }
    }
}

/// One person's record: their conversation and the messages the server acknowledged.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub conversation: String,
    /// (message id, job id) in the order sent.
    pub acknowledged: Vec<(String, String)>,
    pub unacknowledged: usize,
    /// Why each unacknowledged post was given up.
    pub refusals: Vec<String>,
    /// Jobs whose stream said `failed` (checked against the job's stored status).
    pub reported_failed: Vec<String>,
    /// Requests this person sent again after a failure, and streams followed again.
    pub retried_requests: usize,
}

/// A person who keeps chatting until told to stop, surviving restarts: posts are retried under
/// their key until acknowledged; a broken stream is followed again.
pub async fn steady_person(
    session: Session,
    persona: String,
    messages: Arc<Vec<String>>,
    first_line: usize,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> Result<Ledger, String> {
    let conversation = session.create(&persona).await.map_err(|e| e.to_string())?;
    let mut ledger = Ledger { conversation: conversation.clone(), ..Ledger::default() };
    let mut turn = 0;
    while !stop.load(Ordering::Relaxed) {
        let content = &messages[(first_line + turn) % messages.len()];
        let key = format!("chaos-{conversation}-{turn}");
        turn += 1;
        match session.post(&conversation, content, &key).await {
            Ok(posted) => {
                sent.fetch_add(1, Ordering::Relaxed);
                ledger.acknowledged.push((posted.message_id, posted.job_id.clone()));
                if let Ending::Failed(why) = follow_to_the_end(
                    &session,
                    &conversation,
                    &posted.job_id,
                    Duration::from_secs(600),
                )
                .await
                {
                    ledger.reported_failed.push(posted.job_id.clone());
                    // What a person does on the page: press "try again" (regenerate), once.
                    tracing::info!(%why, "the reply failed; asking for it again");
                    if let Ok((_, body)) = session.regenerate(&conversation).await {
                        if let Some(job) = body["job"]["id"].as_str() {
                            ledger.acknowledged.last_mut().expect("just pushed").1 =
                                job.to_string();
                            follow_to_the_end(
                                &session,
                                &conversation,
                                job,
                                Duration::from_secs(600),
                            )
                            .await;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "a message was not acknowledged");
                ledger.unacknowledged += 1;
                ledger.refusals.push(e.to_string());
                // A refusal will not change by asking again at once (a 409 waits for a reply).
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    ledger.retried_requests = session.retried();
    Ok(ledger)
}

/// Follows a reply, reconnecting while the server is away, until `done`/`failed` or `limit`.
pub async fn follow_to_the_end(
    session: &Session,
    conversation: &str,
    job: &str,
    limit: Duration,
) -> Ending {
    let deadline = Instant::now() + limit;
    loop {
        let followed = session.follow(conversation, job).await;
        match followed.ending {
            Ending::Broken(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "the reply stream broke; following again");
                session.note_retry();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            ending => return ending,
        }
    }
}

/// Waits until none of the ledgers' jobs is queued or running (the server works off what the
/// chaos left), up to `limit`.
pub async fn settle(session_of: &[(Session, Ledger)], limit: Duration) {
    let deadline = Instant::now() + limit;
    for (session, ledger) in session_of {
        for (_, job) in &ledger.acknowledged {
            let remaining = deadline.saturating_duration_since(Instant::now());
            follow_to_the_end(session, &ledger.conversation, job, remaining).await;
        }
    }
}

/// Checks one conversation against its ledger.
pub async fn check(session: &Session, ledger: &Ledger) -> Integrity {
    let mut found = Integrity {
        conversations: 1,
        acknowledged: ledger.acknowledged.len(),
        unacknowledged: ledger.unacknowledged,
        retried_requests: ledger.retried_requests,
        ..Integrity::default()
    };
    let convo = match session.get(&format!("/api/conversations/{}", ledger.conversation)).await {
        Ok(c) => c,
        Err(e) => {
            found.missing = ledger.acknowledged.len();
            found.problem(format!("{}: cannot read the conversation: {e}", ledger.conversation));
            return found;
        }
    };
    for why in &ledger.refusals {
        found.problem(format!("{}: a post was not acknowledged: {why}", ledger.conversation));
    }
    for job_id in &ledger.reported_failed {
        let job = job_of(session, &ledger.conversation, job_id).await;
        if job["status"] != "failed" {
            found.false_failures += 1;
            found.problem(format!(
                "{}: the stream said job {job_id} failed, but it is {}",
                ledger.conversation, job["status"]
            ));
        }
    }
    let messages = convo["messages"].as_array().cloned().unwrap_or_default();
    for (index, (message_id, job_id)) in ledger.acknowledged.iter().enumerate() {
        let positions: Vec<usize> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m["id"].as_str() == Some(message_id))
            .map(|(i, _)| i)
            .collect();
        match positions.len() {
            0 => {
                found.missing += 1;
                found.problem(format!(
                    "{}: acknowledged message {index} ({message_id}) is not stored",
                    ledger.conversation
                ));
                continue;
            }
            1 => {}
            n => {
                found.duplicated += 1;
                found.problem(format!(
                    "{}: message {message_id} stored {n} times",
                    ledger.conversation
                ));
            }
        }
        let job = job_of(session, &ledger.conversation, job_id).await;
        if job["attempts"].as_i64().unwrap_or(1) > 1 {
            found.retaken_jobs += 1;
        }
        let next = messages.get(positions[0] + 1);
        match next.filter(|m| m["role"] == "assistant") {
            // A job that gave up told the person so ("failed" on the stream, a retry button on
            // the page): counted on its own, not as a silent loss.
            None if job["status"] == "failed" => {
                found.failed_jobs += 1;
                found.problem(format!(
                    "{}: message {index} failed: {}",
                    ledger.conversation, job["error"]
                ));
            }
            None => {
                found.unanswered += 1;
                found.problem(format!(
                    "{}: message {index} ({message_id}) has no reply (job {})",
                    ledger.conversation, job["status"]
                ));
            }
            Some(reply) => {
                if reply["alternatives"].as_i64().unwrap_or(1) != 1 {
                    found.double_replies += 1;
                    found.problem(format!(
                        "{}: message {index} has {} replies",
                        ledger.conversation, reply["alternatives"]
                    ));
                }
                if let Some(reply_id) = reply["id"].as_str() {
                    if let Ok(t) = session
                        .get(&format!(
                            "/api/conversations/{}/messages/{reply_id}/trace",
                            ledger.conversation
                        ))
                        .await
                    {
                        if !t["trace"]["fallback"].is_null() {
                            found.fallbacks += 1;
                        }
                    }
                }
            }
        }
    }
    // Every user message in the conversation must be one the person sent and saw acknowledged
    // (a retry that was stored twice under different ids would show up here).
    let stored_user = messages.iter().filter(|m| m["role"] == "user").count();
    if stored_user != ledger.acknowledged.len() {
        found.duplicated += stored_user.saturating_sub(ledger.acknowledged.len());
        found.problem(format!(
            "{}: {stored_user} user messages stored, {} acknowledged",
            ledger.conversation,
            ledger.acknowledged.len()
        ));
    }
    found
}

/// A job as the server reports it, or `null` when it cannot be read.
async fn job_of(session: &Session, conversation: &str, job: &str) -> Value {
    session
        .get(&format!("/api/conversations/{conversation}/jobs/{job}"))
        .await
        .map(|j| j["job"].clone())
        .unwrap_or(Value::Null)
}

/// Checks every ledger and adds the findings up.
pub async fn check_all(sessions: &[(Session, Ledger)]) -> Integrity {
    let mut total = Integrity::default();
    for (session, ledger) in sessions {
        total.merge(check(session, ledger).await);
    }
    total
}

/// Deterministic gaps between disruptions (SplitMix64 over a seed), uniform in `range_ms`.
pub fn gaps(seed: u64, count: usize, range_ms: (u64, u64)) -> Vec<Duration> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            Duration::from_millis(range_ms.0 + z % (range_ms.1.saturating_sub(range_ms.0) + 1))
        })
        .collect()
}

/// Patience for chaos: long enough to ride out a restart with a model load.
pub fn chaos_patience() -> Patience {
    Patience { request: Duration::from_secs(120), reply: Duration::from_secs(120) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_in_range_and_repeatable() {
        let a = gaps(7, 50, (500, 4000));
        assert_eq!(a, gaps(7, 50, (500, 4000)));
        assert!(a.iter().all(|g| (500..=4000).contains(&(g.as_millis() as u64))));
        assert_ne!(a, gaps(8, 50, (500, 4000)));
    }

    #[test]
    fn integrity_fails_on_any_loss() {
        let mut i = Integrity::default();
        assert!(i.holds());
        i.unanswered = 1;
        assert!(!i.holds());
        let told_wrong = Integrity { false_failures: 1, ..Integrity::default() };
        assert!(
            !told_wrong.holds(),
            "a stream that says failed for a reply on its way breaks the promise too"
        );
    }
}
