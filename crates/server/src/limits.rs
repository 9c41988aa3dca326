//! Rate limits: a token bucket per session (the page) or per client (the OpenAI-compatible
//! persona API, which has no session), in this process.
//!
//! Each process limits on its own, so N processes behind a balancer allow up to N times the
//! rate; sticky sessions or a shared limiter would close that (noted in the README).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rapport_store::SessionId;

/// How many messages a session may send.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Sustained rate.
    pub per_minute: u32,
    /// How many may come at once.
    pub burst: u32,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets, one per key (a session, or a client of the API).
pub struct RateLimiter<K = SessionId> {
    limit: RateLimit,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// Limits to `limit`.
    pub fn new(limit: RateLimit) -> Self {
        Self { limit, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `session`, or says how long until one is there.
    pub fn take(&self, session: &K) -> Result<(), Duration> {
        let per_second = self.limit.per_minute.max(1) as f64 / 60.0;
        let burst = self.limit.burst.max(1) as f64;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("limiter lock");
        if buckets.len() > 100_000 {
            // Forget sessions whose buckets have refilled: they are back to the start state.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_second < burst);
        }
        let bucket = buckets.entry(session.clone()).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_next_waits_for_its_token() {
        let limiter = RateLimiter::new(RateLimit { per_minute: 6, burst: 2 });
        let me = SessionId("a".into());
        assert!(limiter.take(&me).is_ok());
        assert!(limiter.take(&me).is_ok());
        let wait = limiter.take(&me).unwrap_err();
        assert!(wait > Duration::from_secs(9) && wait <= Duration::from_secs(10), "{wait:?}");
        assert!(limiter.take(&SessionId("b".into())).is_ok(), "sessions are limited apart");
    }
}
