//! Conversations, their messages (with alternatives), and imported personas.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::ids::random_hex;
use crate::memories::MemoryRow;
use crate::queue::{admit_job, job_of_message, Admission, Job, JobKind};
use crate::{now_ms, ConversationId, MessageId, SessionId, Store, StoreError};

/// A conversation as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationRow {
    /// Its id.
    pub id: ConversationId,
    /// The persona's id.
    pub persona: String,
    /// The start of the user's first message ("" until there is one).
    pub title: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the last message.
    pub updated_at: i64,
    /// For a branch: the conversation it was started from (which may since be deleted).
    pub branch_of: Option<ConversationId>,
    /// For a branch: the place of the learner's message it tries again.
    pub branch_seq: Option<i64>,
}

/// The columns [`conversation_row`] reads.
const CONVERSATION_COLUMNS: &str =
    "id, persona, title, created_at, updated_at, branch_of, branch_seq";

/// One message as shown: the active alternative of its slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageRow {
    /// Its id.
    pub id: MessageId,
    /// Position in the conversation (the greeting is 0).
    pub seq: i64,
    /// Which alternative of the slot this is (0 for the first).
    pub alternative: i64,
    /// How many alternatives the slot has.
    pub alternatives: i64,
    /// "user" or "assistant".
    pub role: String,
    /// The text.
    pub content: String,
    /// Unix ms.
    pub created_at: i64,
    /// The user's UTC offset when it was written, minutes.
    pub utc_offset_min: i64,
    /// Whether a pipeline trace is stored for it.
    pub has_trace: bool,
}

/// A message just posted, with the job that will answer it.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The message.
    pub message: MessageRow,
    /// Its job.
    pub job: Job,
    /// True when the idempotency key named a message posted before: nothing new was created.
    pub duplicate: bool,
}

/// An imported persona.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPersona {
    /// Its id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// The persona as TOML.
    pub body: String,
}

/// Everything about a conversation, for download.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedConversation {
    /// The conversation.
    pub conversation: ConversationRow,
    /// Every message, every alternative, in order.
    pub messages: Vec<ExportedMessage>,
    /// What the person told in it that the persona remembers.
    pub memories: Vec<MemoryRow>,
}

/// One message of an export.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedMessage {
    /// Position.
    pub seq: i64,
    /// Alternative number within the slot.
    pub alternative: i64,
    /// Whether it is the one shown.
    pub active: bool,
    /// "user" or "assistant".
    pub role: String,
    /// The text.
    pub content: String,
    /// Unix ms.
    pub created_at: i64,
    /// The pipeline's trace of the turn that produced it.
    pub trace: Option<serde_json::Value>,
}

/// One exported message from a row of `messages` (the export's columns).
fn exported_message(row: &AnyRow) -> Result<ExportedMessage, StoreError> {
    let trace: Option<String> = row.try_get("trace")?;
    Ok(ExportedMessage {
        seq: row.try_get("seq")?,
        alternative: row.try_get("alternative")?,
        active: row.try_get::<i64, _>("active")? != 0,
        role: row.try_get("role")?,
        content: row.try_get("content")?,
        created_at: row.try_get("created_at")?,
        trace: trace
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
    })
}

const MESSAGE_COLUMNS: &str = "m.id, m.seq, m.alternative, m.role, m.content, m.created_at, m.utc_offset_min, \
     CAST(CASE WHEN m.trace IS NULL THEN 0 ELSE 1 END AS BIGINT) AS has_trace, \
     (SELECT COUNT(*) FROM messages a WHERE a.conversation_id = m.conversation_id AND a.seq = m.seq) AS alternatives";

pub(crate) fn message_row(row: &AnyRow) -> Result<MessageRow, StoreError> {
    Ok(MessageRow {
        id: MessageId(row.try_get("id")?),
        seq: row.try_get("seq")?,
        alternative: row.try_get("alternative")?,
        alternatives: row.try_get("alternatives")?,
        role: row.try_get("role")?,
        content: row.try_get("content")?,
        created_at: row.try_get("created_at")?,
        utc_offset_min: row.try_get("utc_offset_min")?,
        has_trace: row.try_get::<i64, _>("has_trace")? != 0,
    })
}

fn conversation_row(row: &AnyRow) -> Result<ConversationRow, StoreError> {
    Ok(ConversationRow {
        id: ConversationId(row.try_get("id")?),
        persona: row.try_get("persona")?,
        title: row.try_get("title")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        branch_of: row.try_get::<Option<String>, _>("branch_of")?.map(ConversationId),
        branch_seq: row.try_get("branch_seq")?,
    })
}

impl Store {
    /// Starts a conversation with `persona`, opened by its `greeting`; `state` is the pipeline's
    /// initial state.
    pub async fn create_conversation(
        &self,
        session: &SessionId,
        persona: &str,
        greeting: &str,
        state: &str,
    ) -> Result<ConversationRow, StoreError> {
        let id = ConversationId(random_hex());
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO conversations (id, session_id, persona, title, created_at, updated_at) VALUES ($1, $2, $3, '', $4, $4)")
            .bind(id.as_str())
            .bind(session.as_str())
            .bind(persona)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO messages (id, conversation_id, seq, alternative, active, role, content, state, utc_offset_min, created_at) VALUES ($1, $2, 0, 0, 1, 'assistant', $3, $4, 0, $5)")
            .bind(random_hex())
            .bind(id.as_str())
            .bind(greeting)
            .bind(state)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ConversationRow {
            id,
            persona: persona.into(),
            title: String::new(),
            created_at: now,
            updated_at: now,
            branch_of: None,
            branch_seq: None,
        })
    }

    /// A branch of one of the session's conversations at `seq`, the place of one of the
    /// learner's messages: a new conversation holding copies of the messages before it (each
    /// with the pipeline's state and trace, so the next turn starts exactly where that message
    /// did), ready for a different message there. The original is not changed.
    pub async fn branch_conversation(
        &self,
        session: &SessionId,
        id: &ConversationId,
        seq: i64,
    ) -> Result<ConversationRow, StoreError> {
        let original = self.conversation(session, id).await?;
        let mut tx = self.pool.begin().await?;
        let at = sqlx::query(
            "SELECT role FROM messages WHERE conversation_id = $1 AND seq = $2 AND active = 1",
        )
        .bind(id.as_str())
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await?;
        match at {
            None => return Err(StoreError::NotFound("message")),
            Some(row) if row.try_get::<String, _>("role")? != "user" => {
                return Err(StoreError::Conflict(format!(
                    "message {seq} is not yours: a branch tries one of your messages again"
                )))
            }
            Some(_) => {}
        }
        let branch = ConversationId(random_hex());
        let now = now_ms();
        sqlx::query("INSERT INTO conversations (id, session_id, persona, title, created_at, updated_at, branch_of, branch_seq) VALUES ($1, $2, $3, $4, $5, $5, $6, $7)")
            .bind(branch.as_str())
            .bind(session.as_str())
            .bind(&original.persona)
            .bind(&original.title)
            .bind(now)
            .bind(id.as_str())
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query("SELECT seq, role, content, state, trace, utc_offset_min, created_at FROM messages WHERE conversation_id = $1 AND active = 1 AND seq < $2 ORDER BY seq")
            .bind(id.as_str())
            .bind(seq)
            .fetch_all(&mut *tx)
            .await?;
        for row in &rows {
            sqlx::query("INSERT INTO messages (id, conversation_id, seq, alternative, active, role, content, state, trace, utc_offset_min, created_at) VALUES ($1, $2, $3, 0, 1, $4, $5, $6, $7, $8, $9)")
                .bind(random_hex())
                .bind(branch.as_str())
                .bind(row.try_get::<i64, _>("seq")?)
                .bind(row.try_get::<String, _>("role")?)
                .bind(row.try_get::<String, _>("content")?)
                .bind(row.try_get::<Option<String>, _>("state")?)
                .bind(row.try_get::<Option<String>, _>("trace")?)
                .bind(row.try_get::<i64, _>("utc_offset_min")?)
                .bind(row.try_get::<i64, _>("created_at")?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(ConversationRow {
            id: branch,
            persona: original.persona,
            title: original.title,
            created_at: now,
            updated_at: now,
            branch_of: Some(id.clone()),
            branch_seq: Some(seq),
        })
    }

    /// A session's conversations, the most recent first.
    pub async fn list_conversations(
        &self,
        session: &SessionId,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE session_id = $1 ORDER BY updated_at DESC, id"))
            .bind(session.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(conversation_row).collect()
    }

    /// One of the session's conversations; another session's reads as not found.
    pub async fn conversation(
        &self,
        session: &SessionId,
        id: &ConversationId,
    ) -> Result<ConversationRow, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1 AND session_id = $2"
        ))
        .bind(id.as_str())
        .bind(session.as_str())
        .fetch_optional(&self.pool)
        .await?;
        conversation_row(&row.ok_or(StoreError::NotFound("conversation"))?)
    }

    /// Deletes one of the session's conversations with its messages and jobs (a job being
    /// written finds its claim gone and commits nothing).
    pub async fn delete_conversation(
        &self,
        session: &SessionId,
        id: &ConversationId,
    ) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM conversations WHERE id = $1 AND session_id = $2")
            .bind(id.as_str())
            .bind(session.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("conversation"));
        }
        Ok(())
    }

    /// The messages as shown (the active alternative of each slot), in order.
    pub async fn messages(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = $1 AND m.active = 1 ORDER BY m.seq"))
            .bind(conversation.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(message_row).collect()
    }

    /// One message by id, within a conversation.
    pub async fn message(
        &self,
        conversation: &ConversationId,
        id: &MessageId,
    ) -> Result<MessageRow, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = $1 AND m.id = $2"
        ))
        .bind(conversation.as_str())
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        message_row(&row.ok_or(StoreError::NotFound("message"))?)
    }

    /// Stores a user's message and queues its reply, in one transaction, if `admission`'s
    /// bounds allow (else `QueueFull` and nothing is stored). With an idempotency key that was
    /// seen before, returns the first message and its job and creates nothing.
    pub async fn post_message(
        &self,
        conversation: &ConversationId,
        content: &str,
        idempotency_key: Option<&str>,
        utc_offset_min: i64,
        admission: &Admission,
    ) -> Result<Posted, StoreError> {
        if let Some(key) = idempotency_key {
            if let Some(posted) = self.posted_with_key(conversation, key).await? {
                return Ok(posted);
            }
        }
        let messages = self.messages(conversation).await?;
        match messages.last() {
            Some(last) if last.role == "assistant" => {}
            Some(_) => {
                return Err(StoreError::Conflict(
                    "the last message has no reply yet: regenerate it before writing another"
                        .into(),
                ))
            }
            None => return Err(StoreError::NotFound("conversation")),
        }
        let message_id = MessageId(random_hex());
        let now = now_ms();
        let attempt = async {
            let mut tx = self.pool.begin().await?;
            // The job first: its unique index refuses a second open job before anything else is
            // written, and on SQLite a transaction that writes first never has to upgrade a read
            // lock (which can fail instead of waiting).
            let job = admit_job(&mut tx, self.backend, conversation, &message_id, JobKind::Reply, now, admission).await?;
            let row = sqlx::query(
                "INSERT INTO messages (id, conversation_id, seq, alternative, active, role, content, idempotency_key, utc_offset_min, created_at) \
                 SELECT $1, $2, COALESCE(MAX(seq), -1) + 1, 0, 1, 'user', $3, $4, $5, $6 FROM messages WHERE conversation_id = $2 RETURNING seq",
            )
            .bind(message_id.as_str())
            .bind(conversation.as_str())
            .bind(content)
            .bind(idempotency_key)
            .bind(utc_offset_min)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let seq: i64 = row.try_get("seq")?;
            let title: String = content.chars().take(60).collect();
            sqlx::query("UPDATE conversations SET updated_at = $1, title = CASE WHEN title = '' THEN $2 ELSE title END WHERE id = $3")
                .bind(now)
                .bind(title)
                .bind(conversation.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, StoreError>((job, seq))
        }
        .await;
        match attempt {
            Ok((job, seq)) => Ok(Posted {
                message: MessageRow {
                    id: message_id,
                    seq,
                    alternative: 0,
                    alternatives: 1,
                    role: "user".into(),
                    content: content.into(),
                    created_at: now,
                    utc_offset_min,
                    has_trace: false,
                },
                job,
                duplicate: false,
            }),
            Err(e) if e.is_unique_violation() => {
                // Either the same key raced in from another request (answer as a duplicate) or
                // a reply is still open.
                if let Some(key) = idempotency_key {
                    if let Some(posted) = self.posted_with_key(conversation, key).await? {
                        return Ok(posted);
                    }
                }
                Err(StoreError::Conflict("a reply is still being written in this conversation: wait for it before sending another message".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a message with this idempotency key exists in the conversation.
    pub async fn has_idempotency_key(
        &self,
        conversation: &ConversationId,
        key: &str,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 AS found FROM messages WHERE conversation_id = $1 AND idempotency_key = $2",
        )
        .bind(conversation.as_str())
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn posted_with_key(
        &self,
        conversation: &ConversationId,
        key: &str,
    ) -> Result<Option<Posted>, StoreError> {
        let row = sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = $1 AND m.idempotency_key = $2"))
            .bind(conversation.as_str())
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let message = message_row(&row)?;
        let job = job_of_message(&self.pool, &message.id)
            .await?
            .ok_or(StoreError::Corrupt(format!("message {} has no job", message.id)))?;
        Ok(Some(Posted { message, job, duplicate: true }))
    }

    /// Queues another reply to the last user message (kept beside the earlier ones as
    /// alternatives), or the first reply when the last attempt failed, if `admission`'s bounds
    /// allow.
    pub async fn regenerate(
        &self,
        conversation: &ConversationId,
        admission: &Admission,
    ) -> Result<Job, StoreError> {
        let messages = self.messages(conversation).await?;
        let last = messages.last().ok_or(StoreError::NotFound("conversation"))?;
        let (user_message, kind) = if last.role == "user" {
            (last.id.clone(), JobKind::Reply)
        } else if last.seq == 0 {
            return Err(StoreError::Conflict(
                "nothing to regenerate: the conversation has only the greeting".into(),
            ));
        } else {
            let user = messages
                .iter()
                .rev()
                .find(|m| m.seq == last.seq - 1)
                .ok_or(StoreError::Corrupt("a reply without its message".into()))?;
            (user.id.clone(), JobKind::Regenerate)
        };
        let mut tx = self.pool.begin().await?;
        let job = match admit_job(
            &mut tx,
            self.backend,
            conversation,
            &user_message,
            kind,
            now_ms(),
            admission,
        )
        .await
        {
            Err(e) if e.is_unique_violation() => {
                return Err(StoreError::Conflict(
                    "a reply is still being written in this conversation".into(),
                ))
            }
            other => other?,
        };
        tx.commit().await?;
        Ok(job)
    }

    /// Shows alternative `alternative` of the last reply instead of the current one; the next
    /// turn continues from it.
    pub async fn choose_alternative(
        &self,
        conversation: &ConversationId,
        seq: i64,
        alternative: i64,
    ) -> Result<MessageRow, StoreError> {
        let messages = self.messages(conversation).await?;
        let last = messages.last().ok_or(StoreError::NotFound("conversation"))?;
        if last.seq != seq || last.role != "assistant" {
            return Err(StoreError::Conflict(
                "only the last reply's alternatives can be chosen".into(),
            ));
        }
        if !(0..last.alternatives).contains(&alternative) {
            return Err(StoreError::NotFound("alternative"));
        }
        if self.open_job(conversation).await?.is_some() {
            return Err(StoreError::Conflict(
                "a reply is still being written in this conversation".into(),
            ));
        }
        sqlx::query("UPDATE messages SET active = CASE WHEN alternative = $3 THEN 1 ELSE 0 END WHERE conversation_id = $1 AND seq = $2")
            .bind(conversation.as_str())
            .bind(seq)
            .bind(alternative)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = $1 AND m.seq = $2 AND m.active = 1"))
            .bind(conversation.as_str())
            .bind(seq)
            .fetch_one(&self.pool)
            .await?;
        message_row(&row)
    }

    /// The pipeline trace stored with a reply.
    pub async fn trace(
        &self,
        conversation: &ConversationId,
        message: &MessageId,
    ) -> Result<String, StoreError> {
        let row = sqlx::query("SELECT trace FROM messages WHERE conversation_id = $1 AND id = $2")
            .bind(conversation.as_str())
            .bind(message.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.and_then(|r| r.try_get::<Option<String>, _>("trace").ok().flatten())
            .ok_or(StoreError::NotFound("trace"))
    }

    /// The pipeline state the conversation's next turn would start from: the state after its
    /// last active message when that is a reply (the greeting included), else `None` (a
    /// message is waiting for its reply, or the conversation is gone).
    pub async fn next_turn_state(
        &self,
        conversation: &ConversationId,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT role, state FROM messages WHERE conversation_id = $1 AND active = 1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(conversation.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        if row.try_get::<String, _>("role")? == "user" {
            return Ok(None);
        }
        Ok(row.try_get::<Option<String>, _>("state")?)
    }

    /// The pipeline state after the active reply at `seq` (the state the next turn starts from).
    pub async fn state_after(
        &self,
        conversation: &ConversationId,
        seq: i64,
    ) -> Result<String, StoreError> {
        let row = sqlx::query(
            "SELECT state FROM messages WHERE conversation_id = $1 AND seq = $2 AND active = 1",
        )
        .bind(conversation.as_str())
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.and_then(|r| r.try_get::<Option<String>, _>("state").ok().flatten())
            .ok_or(StoreError::Corrupt(format!("no pipeline state at message {seq}")))
    }

    /// Every message, alternative and trace of one of the session's conversations.
    pub async fn export(
        &self,
        session: &SessionId,
        id: &ConversationId,
    ) -> Result<ExportedConversation, StoreError> {
        let conversation = self.conversation(session, id).await?;
        let rows = sqlx::query("SELECT seq, alternative, active, role, content, created_at, trace FROM messages WHERE conversation_id = $1 ORDER BY seq, alternative")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await?;
        let messages = rows.iter().map(exported_message).collect::<Result<_, _>>()?;
        let memories = self.memories_of_conversation(id).await?;
        Ok(ExportedConversation { conversation, messages, memories })
    }

    /// Every conversation of `session` as [`Store::export`] gives it, in the order of
    /// [`Store::list_conversations`]: three queries however many conversations there are.
    pub async fn export_session(
        &self,
        session: &SessionId,
    ) -> Result<Vec<ExportedConversation>, StoreError> {
        let conversations = self.list_conversations(session).await?;
        let rows = sqlx::query("SELECT m.conversation_id, m.seq, m.alternative, m.active, m.role, m.content, m.created_at, m.trace FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE c.session_id = $1 ORDER BY m.conversation_id, m.seq, m.alternative")
            .bind(session.as_str())
            .fetch_all(&self.pool)
            .await?;
        let mut by_conversation: HashMap<String, Vec<ExportedMessage>> = HashMap::new();
        for row in &rows {
            let id: String = row.try_get("conversation_id")?;
            by_conversation.entry(id).or_default().push(exported_message(row)?);
        }
        let mut memories_by_conversation: HashMap<ConversationId, Vec<MemoryRow>> = HashMap::new();
        for memory in self.memories(session, None).await? {
            memories_by_conversation
                .entry(memory.conversation_id.clone())
                .or_default()
                .push(memory);
        }
        Ok(conversations
            .into_iter()
            .map(|conversation| {
                let messages = by_conversation.remove(conversation.id.as_str()).unwrap_or_default();
                let memories =
                    memories_by_conversation.remove(&conversation.id).unwrap_or_default();
                ExportedConversation { conversation, messages, memories }
            })
            .collect())
    }

    /// Every session's conversations, the most recently updated first, at most `limit`: for
    /// researchers scoring logged conversations with direct access to the database.
    pub async fn recent_conversations(
        &self,
        limit: i64,
    ) -> Result<Vec<ConversationId>, StoreError> {
        let rows =
            sqlx::query("SELECT id FROM conversations ORDER BY updated_at DESC, id LIMIT $1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| Ok(ConversationId(r.try_get("id")?))).collect()
    }

    /// The session that owns a conversation (for workers, which act for whoever wrote).
    pub async fn session_of(&self, id: &ConversationId) -> Result<SessionId, StoreError> {
        let row = sqlx::query("SELECT session_id FROM conversations WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(SessionId(row.ok_or(StoreError::NotFound("conversation"))?.try_get("session_id")?))
    }

    /// Keeps a persona a session imported.
    pub async fn save_persona(
        &self,
        session: &SessionId,
        persona: &StoredPersona,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO personas (id, session_id, name, body, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&persona.id)
            .bind(session.as_str())
            .bind(&persona.name)
            .bind(&persona.body)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The personas a session imported.
    pub async fn personas_of(&self, session: &SessionId) -> Result<Vec<StoredPersona>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, body FROM personas WHERE session_id = $1 ORDER BY created_at, id",
        )
        .bind(session.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredPersona {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    body: r.try_get("body")?,
                })
            })
            .collect()
    }

    /// An imported persona by id, with the session that owns it.
    pub async fn imported_persona(
        &self,
        id: &str,
    ) -> Result<Option<(SessionId, StoredPersona)>, StoreError> {
        let row = sqlx::query("SELECT id, session_id, name, body FROM personas WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok((
                SessionId(r.try_get("session_id")?),
                StoredPersona {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    body: r.try_get("body")?,
                },
            ))
        })
        .transpose()
    }
}
