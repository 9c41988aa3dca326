//! Reading ahead: once a reply is stored, the worker reads the conversation's next prompt, up
//! to the person's next message, into the generator's prefix cache while they read the reply
//! and write theirs. Their next turn then reads only their message and its note, not the reply
//! before it: on 2 cores that is most of the wait for the first words (issue 36).
//!
//! It runs only when nothing else waits: the worker still holds its generation slot, it reads
//! ahead only if no job is queued, and a job queued in this process while it reads cancels it,
//! so a reply someone waits for always goes first (the engine finishes the step it is in; what
//! that step read is kept in the cache). It changes no reply: the prefix cache serves a
//! prompt's tokens only as far as they are the same (`Pipeline::next_turn_read_ahead`). In
//! memory it is one more prefix-cache entry per conversation, within the engine's bound. A
//! backend without a prefix cache gains nothing and loses one token's work per turn; turn it off
//! with `rapport serve --no-read-ahead`.
//!
//! What the person is typing is read the same way ([`crate::drafts`]): the prompt up to their
//! draft instead of up to a stand-in message, so their turn reads only the words typed since.

use std::time::Instant;

use chrono::Utc;
use futures::{FutureExt, StreamExt};
use rapport_core::GenerationEvent;
use rapport_pipeline::Conversation;

use crate::drafts::Draft;
use crate::state::AppState;

/// A conversation whose next turn can be read ahead: what the turn just stored left.
pub struct ReadAhead {
    /// The persona's id.
    pub persona: String,
    /// The conversation after the reply (with what the person told before, as the turn read
    /// it).
    pub conversation: Conversation,
    /// What the person has typed of their next message, if known; else the prompt is read up
    /// to where the message goes.
    pub draft: Option<Draft>,
}

impl ReadAhead {
    /// The counter and histogram this read is counted in.
    fn metrics(&self) -> (&'static str, &'static str) {
        match self.draft {
            None => ("rapport_read_ahead_total", "rapport_read_ahead_seconds"),
            Some(_) => ("rapport_draft_reads_total", "rapport_draft_read_seconds"),
        }
    }

    /// What `draft`'s conversation needs for its read: its state after its last reply, with
    /// what the persona recalls of the person, as its next turn will start. `None` when a
    /// message of theirs is waiting for its reply (the draft is then what they already sent).
    pub async fn of_draft(app: &AppState, draft: Draft) -> Result<Option<Self>, String> {
        let Some(state) = app
            .store
            .next_turn_state(&draft.conversation)
            .await
            .map_err(|e| format!("reading the conversation's state failed: {e}"))?
        else {
            return Ok(None);
        };
        let mut conversation: Conversation = serde_json::from_str(&state)
            .map_err(|e| format!("the stored conversation state is unreadable: {e}"))?;
        if crate::worker::remembers(app, &draft.persona) {
            conversation.recalled = crate::worker::recalled(app, &draft.conversation).await?;
        }
        Ok(Some(Self { persona: draft.persona.clone(), conversation, draft: Some(draft) }))
    }
}

/// Reads `ahead` into the prefix cache if no job is waiting; the caller holds a generation
/// slot. A job queued here meanwhile cancels it, so a hung or slow backend never keeps a person
/// waiting for a read they do not need. Failures cost only the speed-up, so they are logged,
/// never raised. Returns false when the server is shutting down.
pub async fn run(
    app: &AppState,
    ahead: ReadAhead,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    // A notification left from a job that was posted while this worker was busy, and that a
    // worker has claimed since, must not cancel the read: drop it first, then look at the
    // queue. A job posted after this either shows in the depth or rings again.
    let _stale = app.queued.notified().now_or_never();
    let (counter, histogram) = ahead.metrics();
    match app.store.depth().await {
        Ok((0, _)) => {}
        Ok(_) => {
            app.metrics.count(counter, &[("outcome", "skipped")], 1);
            return true;
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the queue's depth failed; not reading ahead");
            return true;
        }
    }
    let started = Instant::now();
    let result = tokio::select! {
        result = read(app, &ahead) => result,
        _ = app.queued.notified() => {
            // The worker claims the job as soon as this returns (it loops straight to a claim
            // and does not wait for this notification).
            app.metrics.count(counter, &[("outcome", "cancelled")], 1);
            return true;
        }
        _ = shutdown.changed() => return false,
    };
    match result {
        Ok(Some(tokens)) => {
            let ms = started.elapsed().as_millis() as u64;
            app.metrics.count(counter, &[("outcome", "read")], 1);
            app.metrics.seconds(histogram, &[], ms as f64 / 1000.0);
            tracing::debug!(persona = %ahead.persona, ms, prompt_tokens = ?tokens, "read the next turn ahead");
        }
        Ok(None) => {}
        Err(e) => {
            app.metrics.count(counter, &[("outcome", "failed")], 1);
            tracing::warn!(persona = %ahead.persona, error = %e, "reading the next turn ahead failed");
        }
    }
    true
}

/// The read itself: `Some(prompt tokens the backend counted)`, or `None` where the layout has
/// nothing to read ahead.
async fn read(app: &AppState, ahead: &ReadAhead) -> Result<Option<Option<u32>>, String> {
    let pipeline =
        app.personas.pipeline(&app.store, &ahead.persona).await.map_err(|e| e.message)?;
    let request = match &ahead.draft {
        // Only the turn's note, which is not read ahead here, tells the time.
        None => pipeline.next_turn_read_ahead(&ahead.conversation, Utc::now().fixed_offset()),
        Some(draft) => {
            // A whole turn's note tells the time as the message's turn will, in their zone.
            let now = Utc::now().with_timezone(&crate::worker::zone(draft.utc_offset_min));
            pipeline.draft_read_ahead(&ahead.conversation, &draft.text, draft.whole, now)
        }
    };
    let Some(request) = request.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let mut stream = app.generator.generate(request).await.map_err(|e| e.to_string())?;
    let mut tokens = None;
    while let Some(event) = stream.next().await {
        if let GenerationEvent::Done(summary) = event.map_err(|e| e.to_string())? {
            tokens = Some(summary.usage.prompt_tokens);
        }
    }
    Ok(Some(tokens))
}
