//! Browser sessions: no login, a random cookie token; the database keeps only its hash, and
//! only once the session has written something.
//!
//! A stranger who only reads must cost no row (a bot's cookie-less requests would otherwise grow
//! the database without bound), yet the page it loads must already carry a working CSRF token
//! for its first write. So a new session is *minted* without a write: its token is a random
//! nonce followed by an HMAC tag under a key every process of the deployment shares (kept in
//! `server_keys`), and its CSRF token is derived from the token under the same key. A signed
//! token proves the server made it, which keeps fixation out (a client cannot pick a token
//! for somebody else), and the row is written on the session's first write ([`Store::save_session`]).
//! Tokens of 32 hex digits from before signing still work while their row exists.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::ids::random_hex;
use crate::{now_ms, Backend, SessionId, Store, StoreError};

type HmacSha256 = Hmac<Sha256>;

/// A session just minted: the token goes into the cookie, the rest stays here.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The cookie's value: 32 hex digits of nonce, 32 of tag.
    pub token: String,
    /// The session (not yet stored).
    pub session: Session,
}

/// A session, stored or only minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// The token a page must echo in `X-CSRF-Token` on every write.
    pub csrf: String,
    /// Unix ms it was last seen at, when its row exists; `None` while it has written nothing.
    pub seen_at: Option<i64>,
}

impl Session {
    /// Whether its row exists.
    pub fn is_stored(&self) -> bool {
        self.seen_at.is_some()
    }
}

/// The id a token maps to.
pub fn session_id_of(token: &str) -> SessionId {
    SessionId(hex::encode(Sha256::digest(token.as_bytes())))
}

/// Signs and checks session tokens with the deployment's key.
#[derive(Clone)]
pub(crate) struct SessionKey(Vec<u8>);

impl SessionKey {
    fn mac(&self, label: &str, text: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(label.as_bytes());
        mac.update(text.as_bytes());
        mac
    }

    fn tag(&self, nonce: &str) -> String {
        hex::encode(&self.mac("session:", nonce).finalize().into_bytes()[..16])
    }

    fn csrf(&self, token: &str) -> String {
        hex::encode(&self.mac("csrf:", token).finalize().into_bytes()[..16])
    }

    /// True when `token` is a nonce and the tag this key gives it (compared in constant time).
    fn signed(&self, token: &str) -> bool {
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
        let (nonce, tag) = token.split_at(32);
        let Ok(tag) = hex::decode(tag) else { return false };
        self.mac("session:", nonce).verify_truncated_left(&tag).is_ok()
    }
}

/// Loads the deployment's session key, making it on the first start. Several processes may
/// start at once: the insert that loses is ignored and everyone reads the winner's key.
pub(crate) async fn load_key(pool: &sqlx::AnyPool) -> Result<SessionKey, StoreError> {
    sqlx::query("INSERT INTO server_keys (name, value, created_at) VALUES ('session', $1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(format!("{}{}", random_hex(), random_hex()))
        .bind(now_ms())
        .execute(pool)
        .await?;
    let value: String = sqlx::query("SELECT value FROM server_keys WHERE name = 'session'")
        .fetch_one(pool)
        .await?
        .try_get("value")?;
    Ok(SessionKey(
        hex::decode(value).map_err(|e| StoreError::Corrupt(format!("server_keys.session: {e}")))?,
    ))
}

/// How long a stored session's `seen_at` may lag before a read refreshes it: reads then cost
/// at most one write an hour per session.
const SEEN_AT_GRANULARITY_MS: i64 = 3_600_000;

impl Store {
    /// A new session, signed, with nothing written: reads never create rows.
    pub fn mint_session(&self) -> NewSession {
        let nonce = random_hex();
        let token = format!("{nonce}{}", self.session_key.tag(&nonce));
        let session = Session {
            id: session_id_of(&token),
            csrf: self.session_key.csrf(&token),
            seen_at: None,
        };
        NewSession { token, session }
    }

    /// Mints a session and stores it at once (tools and tests; the server stores on first write).
    pub async fn create_session(&self) -> Result<NewSession, StoreError> {
        let mut made = self.mint_session();
        self.save_session(&mut made.session).await?;
        Ok(made)
    }

    /// Writes the session's row if it has none yet (its first write); returns whether it wrote
    /// one. Two first writes at once make one row.
    pub async fn save_session(&self, session: &mut Session) -> Result<bool, StoreError> {
        if session.is_stored() {
            return Ok(false);
        }
        let now = now_ms();
        let done = sqlx::query("INSERT INTO sessions (id, csrf, created_at, seen_at) VALUES ($1, $2, $3, $3) ON CONFLICT (id) DO NOTHING")
            .bind(session.id.as_str())
            .bind(&session.csrf)
            .bind(now)
            .execute(&self.pool)
            .await?;
        session.seen_at = Some(now);
        Ok(done.rows_affected() == 1)
    }

    /// The session a cookie token names: a signed token is a session whether or not it has a
    /// row (`seen_at` says); an unsigned one of 32 hex digits (made before signing) only while
    /// its row exists. Anything else is refused before the database is asked.
    pub async fn session_by_token(&self, token: &str) -> Result<Option<Session>, StoreError> {
        let signed = self.session_key.signed(token);
        let legacy = token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit());
        if !signed && !legacy {
            return Ok(None);
        }
        let id = session_id_of(token);
        let row = sqlx::query("SELECT csrf, seen_at FROM sessions WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(Session {
                id,
                csrf: row.try_get("csrf")?,
                seen_at: Some(row.try_get("seen_at")?),
            }),
            None if signed => {
                Some(Session { id, csrf: self.session_key.csrf(token), seen_at: None })
            }
            None => None,
        })
    }

    /// Notes that a stored session was used, at most one write per hour per session; expiry
    /// counts idle time from here.
    pub async fn touch_session(&self, session: &mut Session) -> Result<(), StoreError> {
        let now = now_ms();
        match session.seen_at {
            Some(seen) if now - seen >= SEEN_AT_GRANULARITY_MS => {
                sqlx::query("UPDATE sessions SET seen_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(session.id.as_str())
                    .execute(&self.pool)
                    .await?;
                session.seen_at = Some(now);
            }
            _ => {}
        }
        Ok(())
    }

    /// Rows of each table, for tests and the abuse drill (database growth).
    pub async fn row_counts(&self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        let mut counts = Vec::new();
        for table in
            ["sessions", "personas", "conversations", "messages", "jobs", "rate_limits", "memories"]
        {
            let n: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
            counts.push((table, n));
        }
        Ok(counts)
    }

    /// Deletes what has been idle too long (see [`Expiry`]); returns what went.
    pub async fn expire(&self, policy: &Expiry) -> Result<Expired, StoreError> {
        let now = now_ms();
        let mut expired = Expired::default();
        // A session with no conversation that has a user message is empty: it goes after the
        // short idle time, with its greeting-only conversations.
        if let Some(empty) = policy.empty_idle_ms {
            expired.sessions += sqlx::query(
                "DELETE FROM sessions WHERE seen_at < $1 AND NOT EXISTS \
                 (SELECT 1 FROM conversations c JOIN messages m ON m.conversation_id = c.id WHERE c.session_id = sessions.id AND m.role = 'user')",
            )
            .bind(now - empty)
            .execute(&self.pool)
            .await?
            .rows_affected();
            // Greeting-only conversations of sessions that stay.
            expired.conversations += sqlx::query("DELETE FROM conversations WHERE updated_at < $1 AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = conversations.id AND m.role = 'user')")
                .bind(now - empty)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        if let Some(idle) = policy.session_idle_ms {
            expired.sessions += sqlx::query("DELETE FROM sessions WHERE seen_at < $1")
                .bind(now - idle)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        // A limit's row whose time has passed is the same as no row.
        expired.rate_limits += sqlx::query("DELETE FROM rate_limits WHERE tat < $1")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if self.backend == Backend::Sqlite && expired.sessions + expired.conversations > 0 {
            // Deleted pages go back to the free list; the file does not shrink, but it stops
            // growing until they are used again.
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&self.pool).await?;
        }
        Ok(expired)
    }
}

/// What [`Store::expire`] deletes. A session's conversations, messages, jobs and imported
/// personas go with it (the foreign keys cascade).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// A session unseen this long goes, with everything in it; `None` keeps sessions forever.
    pub session_idle_ms: Option<i64>,
    /// A session with no user message, or a conversation with only the greeting, unseen this
    /// long goes; `None` keeps them.
    pub empty_idle_ms: Option<i64>,
}

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Sessions (with their conversations).
    pub sessions: u64,
    /// Greeting-only conversations of sessions that stay.
    pub conversations: u64,
    /// Rate-limit rows whose time had passed.
    pub rate_limits: u64,
}
