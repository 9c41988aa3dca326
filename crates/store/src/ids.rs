//! Ids that say what they name, and the clock the rows use.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A session: the SHA-256 of its cookie token, never the token itself.
    SessionId
);
id_type!(
    /// A conversation.
    ConversationId
);
id_type!(
    /// One message (one alternative of a reply).
    MessageId
);
id_type!(
    /// One generation job.
    JobId
);

/// 128 random bits as 32 hex digits: unguessable, so ids in URLs need no other protection
/// beyond the session check.
pub(crate) fn random_hex() -> String {
    hex::encode(rand::rng().random::<[u8; 16]>())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
