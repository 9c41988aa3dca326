//! Rate limits every process on one database shares.
//!
//! The algorithm is the generic cell rate algorithm (GCRA): a key's whole state is one time,
//! the *theoretical arrival time* (TAT) of its next request if requests came at exactly the
//! sustained rate. A request at `now` passes when `max(TAT, now) - now` is within the burst's
//! tolerance, and then moves the TAT on by one interval. One number per key makes the shared
//! version a single atomic upsert, and the in-process limiter of the server runs the very same
//! [`Gcra::decide`], so both places refuse the same requests.

use sqlx::Row;

use crate::{now_ms, Backend, Store, StoreError};

/// A rate as GCRA sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Milliseconds between requests at the sustained rate.
    pub interval_ms: i64,
    /// How far ahead of now the TAT may run: `interval × (burst − 1)`.
    pub tolerance_ms: i64,
}

impl Gcra {
    /// `per_minute` sustained, `burst` at once (both at least 1).
    pub fn per_minute(per_minute: u32, burst: u32) -> Self {
        let interval_ms = (60_000 + per_minute.max(1) as i64 - 1) / per_minute.max(1) as i64;
        Self { interval_ms, tolerance_ms: interval_ms * (burst.max(1) as i64 - 1) }
    }

    /// The decision at `now` for a key whose stored TAT is `tat` (none: never seen, or swept):
    /// `Ok(new TAT)` to store, or `Err(ms to wait)`.
    pub fn decide(&self, tat: Option<i64>, now: i64) -> Result<i64, i64> {
        let start = tat.unwrap_or(now).max(now);
        if start - now <= self.tolerance_ms {
            Ok(start + self.interval_ms)
        } else {
            Err(start - now - self.tolerance_ms)
        }
    }
}

impl Store {
    /// Takes one request for `key` under `rate`, in the database: `Ok(Ok(()))` when it passes,
    /// `Ok(Err(ms))` when it must wait. One statement, atomic on both databases (a row lock on
    /// PostgreSQL, the one writer on SQLite), so processes sharing the database share the limit.
    pub async fn take_rate(&self, key: &str, rate: Gcra) -> Result<Result<(), i64>, StoreError> {
        let now = now_ms();
        let greatest = match self.backend {
            Backend::Postgres => "GREATEST",
            Backend::Sqlite => "MAX",
        };
        // The WHERE of the update is GCRA's test; when it fails, nothing is written and no row
        // comes back.
        let sql = format!(
            "INSERT INTO rate_limits (key, tat) VALUES ($1, $2 + $3) \
             ON CONFLICT (key) DO UPDATE SET tat = {greatest}(rate_limits.tat, $2) + $3 \
             WHERE {greatest}(rate_limits.tat, $2) - $2 <= $4 RETURNING tat"
        );
        let passed = sqlx::query(&sql)
            .bind(key)
            .bind(now)
            .bind(rate.interval_ms)
            .bind(rate.tolerance_ms)
            .fetch_optional(&self.pool)
            .await?;
        if passed.is_some() {
            return Ok(Ok(()));
        }
        let tat: Option<i64> = sqlx::query("SELECT tat FROM rate_limits WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("tat"))
            .transpose()?;
        Ok(Err(rate.decide(tat, now).err().unwrap_or(1).max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::Gcra;

    #[test]
    fn a_burst_passes_then_requests_come_at_the_rate() {
        let rate = Gcra::per_minute(6, 3); // one every 10 s, three at once
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(rate.decide(tat, 0).expect("the burst passes"));
        }
        assert_eq!(rate.decide(tat, 0), Err(10_000), "the fourth waits one interval");
        assert_eq!(rate.decide(tat, 9_999), Err(1));
        tat = Some(rate.decide(tat, 10_000).expect("one interval later, one more"));
        assert!(rate.decide(tat, 10_000).is_err());
        assert!(rate.decide(tat, 60_000).is_ok(), "a quiet minute refills");
    }
}
