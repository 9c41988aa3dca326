//! The memory of the person: what someone told a persona about themselves, per session and
//! persona, written with the reply that answered it ([`Store::complete`]) and read back before
//! each turn of their other conversations with that persona.
//!
//! What counts as a fact, and whether a text may be remembered at all, is the pipeline's
//! decision (`rapport_pipeline::recall`); this module only keeps the rows and their
//! boundaries: a session sees, corrects and deletes only its own memories, and deleting the
//! conversation a memory came from (or the session) deletes the memory with it.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::ids::random_hex;
use crate::{now_ms, ConversationId, SessionId, Store, StoreError};

/// Most memories kept per session and persona; the oldest go first. A person's facts are a
/// handful; the bound keeps a script that pastes facts in a loop from growing the table.
pub const MEMORIES_KEPT: i64 = 50;

/// A fact to remember, as the pipeline read it from a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMemory {
    /// What it is about (`name`, `work`, `pet` …).
    pub kind: String,
    /// What an older memory with the same subject is replaced by this one ("pet:cat").
    pub subject: Option<String>,
    /// The sentence.
    pub content: String,
}

/// A remembered fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryRow {
    /// Its id.
    pub id: String,
    /// The persona that remembers it.
    pub persona: String,
    /// The conversation it was told in.
    pub conversation_id: ConversationId,
    /// What it is about.
    pub kind: String,
    /// The sentence (as told, or as the person corrected it).
    pub content: String,
    /// The person corrected it by hand.
    pub edited: bool,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the last correction.
    pub updated_at: i64,
}

const MEMORY_COLUMNS: &str =
    "id, persona, conversation_id, kind, content, edited, created_at, updated_at";

fn memory_row(row: &AnyRow) -> Result<MemoryRow, StoreError> {
    Ok(MemoryRow {
        id: row.try_get("id")?,
        persona: row.try_get("persona")?,
        conversation_id: ConversationId(row.try_get("conversation_id")?),
        kind: row.try_get("kind")?,
        content: row.try_get("content")?,
        edited: row.try_get::<i64, _>("edited")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Writes what the message of a conversation told, inside the transaction that stores its
/// reply: a newer fact replaces the older ones of its subject, and the oldest go beyond
/// [`MEMORIES_KEPT`].
pub(crate) async fn remember(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    conversation: &str,
    message: &str,
    told: &[NewMemory],
    now: i64,
) -> Result<(), StoreError> {
    if told.is_empty() {
        return Ok(());
    }
    let row = sqlx::query("SELECT session_id, persona FROM conversations WHERE id = $1")
        .bind(conversation)
        .fetch_one(&mut **tx)
        .await?;
    let session: String = row.try_get("session_id")?;
    let persona: String = row.try_get("persona")?;
    for (i, fact) in told.iter().enumerate() {
        // One message's facts keep the order they were told in: each a millisecond after the
        // one before, since listings order by the time (ids are random).
        let at = now + i as i64;
        if let Some(subject) = &fact.subject {
            sqlx::query(
                "DELETE FROM memories WHERE session_id = $1 AND persona = $2 AND subject = $3",
            )
            .bind(&session)
            .bind(&persona)
            .bind(subject)
            .execute(&mut **tx)
            .await?;
        }
        sqlx::query("INSERT INTO memories (id, session_id, persona, conversation_id, message_id, kind, subject, content, edited, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $9)")
            .bind(random_hex())
            .bind(&session)
            .bind(&persona)
            .bind(conversation)
            .bind(message)
            .bind(&fact.kind)
            .bind(fact.subject.as_deref())
            .bind(&fact.content)
            .bind(at)
            .execute(&mut **tx)
            .await?;
    }
    // The same statement on both databases: keep the newest MEMORIES_KEPT.
    sqlx::query("DELETE FROM memories WHERE session_id = $1 AND persona = $2 AND id NOT IN (SELECT id FROM memories WHERE session_id = $1 AND persona = $2 ORDER BY created_at DESC, id DESC LIMIT $3)")
        .bind(&session)
        .bind(&persona)
        .bind(MEMORIES_KEPT)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    /// The session's memories, of one persona or of all, oldest first.
    pub async fn memories(
        &self,
        session: &SessionId,
        persona: Option<&str>,
    ) -> Result<Vec<MemoryRow>, StoreError> {
        let rows = match persona {
            Some(persona) => sqlx::query(&format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE session_id = $1 AND persona = $2 ORDER BY created_at, id"))
                .bind(session.as_str())
                .bind(persona)
                .fetch_all(&self.pool)
                .await?,
            None => sqlx::query(&format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE session_id = $1 ORDER BY persona, created_at, id"))
                .bind(session.as_str())
                .fetch_all(&self.pool)
                .await?,
        };
        rows.iter().map(memory_row).collect()
    }

    /// What the persona of `conversation` recalls of its person from their *other*
    /// conversations, oldest first: what was told in this conversation is in its history (or
    /// its running memory), and a branch does not recall what was said after the place it
    /// branched from, so the conversation it came from is left out too.
    pub async fn recall(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<MemoryRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE session_id = (SELECT session_id FROM conversations WHERE id = $1) AND persona = (SELECT persona FROM conversations WHERE id = $1) AND conversation_id <> $1 AND conversation_id <> COALESCE((SELECT branch_of FROM conversations WHERE id = $1), '') ORDER BY created_at, id"))
            .bind(conversation.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(memory_row).collect()
    }

    /// The memories told in one conversation, oldest first (for its export).
    pub async fn memories_of_conversation(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<MemoryRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE conversation_id = $1 ORDER BY created_at, id"))
            .bind(conversation.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(memory_row).collect()
    }

    /// Replaces the text of one of the session's memories with the person's correction; the
    /// caller has checked that the text may be remembered. Another session's reads as not found.
    pub async fn correct_memory(
        &self,
        session: &SessionId,
        id: &str,
        content: &str,
    ) -> Result<MemoryRow, StoreError> {
        let row = sqlx::query(&format!("UPDATE memories SET content = $1, edited = 1, updated_at = $2 WHERE id = $3 AND session_id = $4 RETURNING {MEMORY_COLUMNS}"))
            .bind(content)
            .bind(now_ms())
            .bind(id)
            .bind(session.as_str())
            .fetch_optional(&self.pool)
            .await?;
        memory_row(&row.ok_or(StoreError::NotFound("memory"))?)
    }

    /// Deletes one of the session's memories. Another session's reads as not found.
    pub async fn forget_memory(&self, session: &SessionId, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM memories WHERE id = $1 AND session_id = $2")
            .bind(id)
            .bind(session.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("memory"));
        }
        Ok(())
    }

    /// Deletes everything one persona remembers of the session's person; returns how many.
    pub async fn forget_persona(
        &self,
        session: &SessionId,
        persona: &str,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM memories WHERE session_id = $1 AND persona = $2")
            .bind(session.as_str())
            .bind(persona)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
