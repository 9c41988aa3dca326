//! What can go wrong with the database, in terms the HTTP layer can turn into a status.

/// A storage error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL or the options are wrong.
    #[error("{0}")]
    Config(String),
    /// The thing does not exist, or belongs to another session (the two are not told apart, so
    /// that ids cannot be probed).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request clashes with the conversation's state (a reply is still being written, the
    /// last message has no reply).
    #[error("{0}")]
    Conflict(String),
    /// The queue, or the client's share of it, is at its bound; nothing was queued.
    #[error("{0}")]
    QueueFull(crate::QueueFull),
    /// A stored value is not what this version wrote.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// True when a unique constraint refused a write.
    pub(crate) fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => {
                e.is_unique_violation()
                    || e.message().contains("UNIQUE constraint failed")
                    || e.message().contains("duplicate key value")
            }
            _ => false,
        }
    }
}
