//! Rate limits and the OpenAI route's in-flight bound.
//!
//! Each limit is a [`Scope`] keyed by a session or a client address, decided by the generic
//! cell rate algorithm ([`rapport_store::Gcra`]). On PostgreSQL the state lives in the database
//! so that every process behind a balancer shares it; on SQLite (one process) it lives in this
//! process and a check writes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rapport_store::{now_ms, Backend, Gcra, Store, StoreError};

/// How often something may happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate.
    pub per_minute: u32,
    /// How many may come at once.
    pub burst: u32,
}

impl RateLimit {
    fn gcra(self) -> Gcra {
        Gcra::per_minute(self.per_minute, self.burst)
    }
}

/// What a limit counts, and what it is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Messages and regenerations of one session.
    SessionMessages,
    /// Messages and regenerations from one client address, whatever its cookies.
    ClientMessages,
    /// Sessions one client address creates (a session is created by its first write).
    ClientSessions,
    /// Conversations started and personas imported from one client address: writes that store
    /// data without a reply, which a stored session could otherwise repeat without end.
    ClientConversations,
    /// Requests to the OpenAI-compatible persona API from one API key and address.
    ApiRequests,
}

impl Scope {
    /// The stable tag used in keys, metrics and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::SessionMessages => "session_messages",
            Scope::ClientMessages => "client_messages",
            Scope::ClientSessions => "client_sessions",
            Scope::ClientConversations => "client_conversations",
            Scope::ApiRequests => "api_requests",
        }
    }

    /// What a person is told was too many.
    pub fn what(self) -> &'static str {
        match self {
            Scope::SessionMessages => "messages from this session",
            Scope::ClientMessages => "messages from this address",
            Scope::ClientSessions => "new sessions from this address",
            Scope::ClientConversations => "new conversations and imports from this address",
            Scope::ApiRequests => "requests",
        }
    }
}

/// The limits of this deployment.
pub struct Limits {
    shared: Option<Store>,
    local: Mutex<HashMap<(Scope, String), i64>>,
}

impl Limits {
    /// Shared through `store` when it is PostgreSQL, in this process otherwise.
    pub fn new(store: &Store) -> Self {
        Self {
            shared: (store.backend() == Backend::Postgres).then(|| store.clone()),
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Whether several processes share these limits.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Takes one for `key` in `scope` under `rate`: `Ok(Ok(()))`, or `Ok(Err(wait))`.
    pub async fn take(
        &self,
        scope: Scope,
        key: &str,
        rate: RateLimit,
    ) -> Result<Result<(), Duration>, StoreError> {
        let decided = match &self.shared {
            Some(store) => {
                store.take_rate(&format!("{}:{key}", scope.as_str()), rate.gcra()).await?
            }
            None => self.take_here(scope, key, rate.gcra(), now_ms()),
        };
        Ok(decided.map_err(|ms| Duration::from_millis(ms.max(1) as u64)))
    }

    fn take_here(&self, scope: Scope, key: &str, rate: Gcra, now: i64) -> Result<(), i64> {
        let mut times = self.local.lock().expect("limiter lock");
        if times.len() > 100_000 {
            // A time in the past is the same as no entry: forgetting those changes no decision.
            times.retain(|_, tat| *tat > now);
        }
        let key = (scope, key.to_string());
        let next = rate.decide(times.get(&key).copied(), now)?;
        times.insert(key, next);
        Ok(())
    }
}

/// Replies the OpenAI-compatible route is writing or waiting to write, per client: that route
/// does not go through the queue, so it has its own bound with the queue's numbers.
#[derive(Default)]
pub struct InFlight {
    counts: Mutex<(usize, HashMap<String, usize>)>,
}

/// Why [`InFlight::enter`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The client has this many already.
    Client(usize),
    /// The server has this many already.
    Server(usize),
}

/// One reply in flight; leaving it (dropping) frees the place.
pub struct Entered {
    owner: Arc<InFlight>,
    client: String,
}

impl InFlight {
    /// A place for `client`, if it has fewer than `per_client` and the server fewer than `total`.
    pub fn enter(
        self: &Arc<Self>,
        client: &str,
        per_client: usize,
        total: usize,
    ) -> Result<Entered, Full> {
        let mut counts = self.counts.lock().expect("in-flight lock");
        let mine = counts.1.get(client).copied().unwrap_or(0);
        if mine >= per_client {
            return Err(Full::Client(mine));
        }
        if counts.0 >= total {
            return Err(Full::Server(counts.0));
        }
        counts.0 += 1;
        *counts.1.entry(client.to_string()).or_default() += 1;
        Ok(Entered { owner: self.clone(), client: client.to_string() })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().expect("in-flight lock");
        counts.0 -= 1;
        if let Some(n) = counts.1.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                counts.1.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { shared: None, local: Mutex::new(HashMap::new()) }
    }

    #[test]
    fn a_burst_passes_then_the_next_waits_for_its_turn() {
        let limits = limits();
        let rate = RateLimit { per_minute: 6, burst: 2 }.gcra();
        assert!(limits.take_here(Scope::SessionMessages, "a", rate, 0).is_ok());
        assert!(limits.take_here(Scope::SessionMessages, "a", rate, 0).is_ok());
        assert_eq!(limits.take_here(Scope::SessionMessages, "a", rate, 0), Err(10_000));
        assert!(
            limits.take_here(Scope::SessionMessages, "b", rate, 0).is_ok(),
            "keys are limited apart"
        );
        assert!(
            limits.take_here(Scope::ClientMessages, "a", rate, 0).is_ok(),
            "scopes are limited apart"
        );
        assert!(limits.take_here(Scope::SessionMessages, "a", rate, 10_000).is_ok());
    }

    #[test]
    fn in_flight_places_are_bounded_per_client_and_in_all_and_freed_on_drop() {
        let places = Arc::new(InFlight::default());
        let a1 = places.enter("a", 2, 3).unwrap();
        let _a2 = places.enter("a", 2, 3).unwrap();
        assert_eq!(places.enter("a", 2, 3).err(), Some(Full::Client(2)));
        let _b1 = places.enter("b", 2, 3).unwrap();
        assert_eq!(places.enter("c", 2, 3).err(), Some(Full::Server(3)));
        drop(a1);
        assert!(places.enter("c", 2, 3).is_ok());
    }
}
