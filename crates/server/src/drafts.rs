//! What the person is typing, read ahead. The page sends its message box as the person types
//! (`POST /api/conversations/{id}/draft`); an idle worker reads the next turn's prompt up to
//! that text into the prefix cache ([`crate::read_ahead`]), so that when they send, the turn
//! reads only the words typed since and its note (issue 36: on 2 cores the message was most of
//! what a later turn still read before its first token). A draft sent once the person has
//! stopped typing is marked `whole`, and its turn's whole prompt is read, note included: sent
//! as it is, the turn then finds its whole prompt in the cache.
//!
//! A draft lives only here, in this process's memory: the latest text per conversation, never
//! stored, logged or shown, and forgotten once read, once the message is sent, or after a
//! minute. Reading one is best effort and never in anyone's way: a worker reads it only when it
//! has a free generation slot and no job waits, and a job queued meanwhile cancels the read. A
//! draft is cut to [`MAX_DRAFT_CHARS`], so the engine step a waiting job may have to let finish
//! stays short. What a flood of drafts can buy is bounded the same way: the latest text of each
//! of at most [`MAX_PENDING`] conversations, read one at a time while the model is idle.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rapport_store::ConversationId;
use tokio::sync::Notify;

/// Characters of a draft that are read ahead (about 100 tokens; a longer message's end is read
/// with its turn, as every message's was before).
pub const MAX_DRAFT_CHARS: usize = 400;

/// Conversations with a draft waiting to be read; a draft for another is turned away.
pub const MAX_PENDING: usize = 256;

/// A draft older than this is dropped unread: its person has stopped typing or gone.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// A draft to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// Its conversation.
    pub conversation: ConversationId,
    /// The conversation's persona.
    pub persona: String,
    /// What the person has typed, trimmed and cut to [`MAX_DRAFT_CHARS`] at a word's end.
    pub text: String,
    /// They stopped typing: read the turn as if this were the message, note included (never
    /// for a draft that was cut).
    pub whole: bool,
    /// Their offset from UTC, minutes.
    pub utc_offset_min: i64,
}

/// What the page sent.
#[derive(Debug, Clone, Copy)]
pub struct Typed<'a> {
    /// The message box.
    pub text: &'a str,
    /// They stopped typing.
    pub whole: bool,
    /// Their offset from UTC, minutes.
    pub utc_offset_min: i64,
}

/// What became of an offered draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// It waits for a worker.
    Waiting,
    /// Nothing new to read: empty, or what was last read for this conversation.
    Unchanged,
    /// Too many conversations have drafts waiting.
    Full,
}

struct Waiting {
    draft: Draft,
    since: Instant,
    latest: Instant,
}

#[derive(Default)]
struct Inner {
    /// Drafts waiting, by conversation: the latest text, when the conversation's first waiting
    /// draft was offered (its place in line: typing on does not send a person to the back),
    /// and when the latest was.
    waiting: HashMap<ConversationId, Waiting>,
    /// What was last read for each conversation, and whether whole, so that the same is not
    /// read twice.
    read: HashMap<ConversationId, (String, bool)>,
}

/// Drafts waiting to be read ahead, shared by the handlers and the workers of this process.
#[derive(Default)]
pub struct Drafts {
    inner: Mutex<Inner>,
    /// Rung when a draft is offered, so an idle worker reads it at once.
    pub offered: Notify,
}

impl Drafts {
    /// Keeps what was typed as the conversation's latest draft (replacing the one before).
    pub fn offer(&self, conversation: ConversationId, persona: &str, typed: Typed) -> Offered {
        let trimmed = typed.text.trim();
        let text = cut(trimmed);
        let whole = typed.whole && text.len() == trimmed.len();
        if text.is_empty() {
            return Offered::Unchanged;
        }
        let mut inner = self.inner.lock().expect("drafts lock");
        if inner
            .read
            .get(&conversation)
            .is_some_and(|(last, was_whole)| *last == text && (*was_whole || !whole))
        {
            inner.waiting.remove(&conversation);
            return Offered::Unchanged;
        }
        let now = Instant::now();
        inner.waiting.retain(|_, w| now.duration_since(w.latest) < STALE_AFTER);
        if inner.waiting.len() >= MAX_PENDING && !inner.waiting.contains_key(&conversation) {
            return Offered::Full;
        }
        let draft = Draft {
            conversation: conversation.clone(),
            persona: persona.to_string(),
            text,
            whole,
            utc_offset_min: typed.utc_offset_min,
        };
        let since = inner.waiting.get(&conversation).map_or(now, |w| w.since);
        inner.waiting.insert(conversation, Waiting { draft, since, latest: now });
        drop(inner);
        self.offered.notify_one();
        Offered::Waiting
    }

    /// The draft of the conversation waiting longest, marked as read (a text is read at most
    /// once).
    pub fn take(&self) -> Option<Draft> {
        let mut inner = self.inner.lock().expect("drafts lock");
        let now = Instant::now();
        inner.waiting.retain(|_, w| now.duration_since(w.latest) < STALE_AFTER);
        let oldest = inner.waiting.iter().min_by_key(|(_, w)| w.since).map(|(id, _)| id.clone())?;
        let draft = inner.waiting.remove(&oldest)?.draft;
        if inner.read.len() >= 4 * MAX_PENDING {
            inner.read.clear();
        }
        inner.read.insert(oldest, (draft.text.clone(), draft.whole));
        Some(draft)
    }

    /// Forgets the conversation's draft: its message was sent, or it was deleted.
    pub fn forget(&self, conversation: &ConversationId) {
        let mut inner = self.inner.lock().expect("drafts lock");
        inner.waiting.remove(conversation);
        inner.read.remove(conversation);
    }

    /// Drafts waiting.
    pub fn waiting(&self) -> usize {
        self.inner.lock().expect("drafts lock").waiting.len()
    }
}

/// `text` cut to [`MAX_DRAFT_CHARS`] at the end of a word (the word being typed past the limit
/// would read as another token than the finished one).
fn cut(text: &str) -> String {
    if text.chars().count() <= MAX_DRAFT_CHARS {
        return text.to_string();
    }
    let head: String = text.chars().take(MAX_DRAFT_CHARS + 1).collect();
    match head.rfind(char::is_whitespace) {
        Some(end) => head[..end].trim_end().to_string(),
        None => head.chars().take(MAX_DRAFT_CHARS).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ConversationId {
        ConversationId(s.to_string())
    }

    fn typed(text: &str, whole: bool) -> Typed<'_> {
        Typed { text, whole, utc_offset_min: 60 }
    }

    #[test]
    fn the_latest_draft_of_each_conversation_is_read_once_oldest_first() {
        let drafts = Drafts::default();
        assert_eq!(drafts.offer(id("a"), "p", typed("I teach", false)), Offered::Waiting);
        assert_eq!(drafts.offer(id("b"), "p", typed("Hello", false)), Offered::Waiting);
        assert_eq!(
            drafts.offer(id("a"), "p", typed("  I teach primary  ", false)),
            Offered::Waiting
        );
        assert_eq!(drafts.waiting(), 2, "one draft per conversation, the latest");
        let first = drafts.take().unwrap();
        assert_eq!((first.conversation, first.text.as_str()), (id("a"), "I teach primary"));
        assert_eq!(drafts.take().unwrap().conversation, id("b"));
        assert_eq!(drafts.take(), None);
        // The same text again is not read again, unless it now comes whole; new text is.
        assert_eq!(drafts.offer(id("a"), "p", typed("I teach primary", false)), Offered::Unchanged);
        assert_eq!(drafts.offer(id("a"), "p", typed("   ", false)), Offered::Unchanged);
        assert_eq!(drafts.offer(id("a"), "p", typed("I teach primary", true)), Offered::Waiting);
        assert!(drafts.take().unwrap().whole);
        assert_eq!(drafts.offer(id("a"), "p", typed("I teach primary", true)), Offered::Unchanged);
        assert_eq!(drafts.offer(id("a"), "p", typed("I teach primary", false)), Offered::Unchanged);
        assert_eq!(
            drafts.offer(id("a"), "p", typed("I teach primary school", false)),
            Offered::Waiting
        );
        drafts.forget(&id("a"));
        assert_eq!(drafts.take(), None, "a sent message takes its draft with it");
    }

    #[test]
    fn drafts_are_bounded_in_number_and_length() {
        let drafts = Drafts::default();
        for n in 0..MAX_PENDING {
            assert_eq!(drafts.offer(id(&n.to_string()), "p", typed("hi", false)), Offered::Waiting);
        }
        assert_eq!(drafts.offer(id("one more"), "p", typed("hi", false)), Offered::Full);
        assert_eq!(
            drafts.offer(id("0"), "p", typed("hi there", false)),
            Offered::Waiting,
            "a waiting one may change"
        );
        let long = "word ".repeat(200);
        assert_eq!(drafts.offer(id("0"), "p", typed(&long, true)), Offered::Waiting);
        let read =
            std::iter::from_fn(|| drafts.take()).find(|d| d.conversation == id("0")).unwrap();
        assert!(read.text.chars().count() <= MAX_DRAFT_CHARS, "{}", read.text.len());
        assert!(
            read.text.ends_with("word"),
            "cut at a word's end: {:?}",
            &read.text[read.text.len() - 8..]
        );
        assert!(!read.whole, "a cut draft is not what they will send");
        assert_eq!(cut("ab".repeat(300).as_str()).chars().count(), MAX_DRAFT_CHARS);
    }
}
