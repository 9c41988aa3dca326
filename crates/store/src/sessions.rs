//! Browser sessions: no login, a random cookie token; the database keeps only its hash.

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::ids::random_hex;
use crate::{now_ms, SessionId, Store, StoreError};

/// A session just made: the token goes into the cookie, the rest stays here.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The cookie's value (128 random bits, hex).
    pub token: String,
    /// The session.
    pub session: Session,
}

/// A known session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// The token a page must echo in `X-CSRF-Token` on every write.
    pub csrf: String,
}

/// The id a token maps to.
pub fn session_id_of(token: &str) -> SessionId {
    SessionId(hex::encode(Sha256::digest(token.as_bytes())))
}

impl Store {
    /// Makes a new session.
    pub async fn create_session(&self) -> Result<NewSession, StoreError> {
        let token = random_hex();
        let session = Session { id: session_id_of(&token), csrf: random_hex() };
        let now = now_ms();
        sqlx::query("INSERT INTO sessions (id, csrf, created_at, seen_at) VALUES ($1, $2, $3, $3)").bind(session.id.as_str()).bind(&session.csrf).bind(now).execute(&self.pool).await?;
        Ok(NewSession { token, session })
    }

    /// The session a cookie token names, if any. Tokens that are not 32 hex digits are refused
    /// before the database is asked.
    pub async fn session_by_token(&self, token: &str) -> Result<Option<Session>, StoreError> {
        if token.len() != 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let id = session_id_of(token);
        let row = sqlx::query("SELECT csrf FROM sessions WHERE id = $1").bind(id.as_str()).fetch_optional(&self.pool).await?;
        Ok(match row {
            Some(row) => Some(Session { id, csrf: row.try_get("csrf")? }),
            None => None,
        })
    }
}
