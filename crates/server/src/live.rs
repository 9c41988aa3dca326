//! Replies being written in this process, for the streams that watch them.
//!
//! A worker publishes each event of its turn here; a stream subscribes and first receives what
//! was already published (so a page that reloads mid-reply sees the text so far), then the rest.
//! Streams on other processes cannot see this; they follow the partial text the worker saves
//! with its heartbeat (the SSE module follows both).

use std::collections::HashMap;
use std::sync::Mutex;

use rapport_store::{JobId, MessageRow};
use serde_json::Value;
use tokio::sync::{broadcast, Notify};

/// One event of a reply being written.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// Steps 1–8 are done: the practice view of the turn.
    Prepared(Value),
    /// More text.
    Delta(String),
    /// Take back the text shown so far.
    Retract,
    /// Stored.
    Done(MessageRow),
    /// Given up.
    Failed(String),
}

/// What a late subscriber needs to catch up.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The practice view, once prepared.
    pub prepared: Option<Value>,
    /// The text shown so far.
    pub text: String,
}

struct Channel {
    snapshot: Snapshot,
    sender: broadcast::Sender<LiveEvent>,
}

/// The replies being written here.
#[derive(Default)]
pub struct Live {
    jobs: Mutex<HashMap<JobId, Channel>>,
    /// Told whenever a worker here starts a job, so that streams of queued jobs look again at
    /// once instead of at their next poll.
    began: Notify,
}

impl Live {
    /// A worker starts on `job`.
    pub fn begin(&self, job: &JobId) {
        // Room for a burst of deltas; a stream that falls further behind resynchronises from
        // the snapshot.
        let (sender, _) = broadcast::channel(256);
        self.jobs
            .lock()
            .expect("live lock")
            .insert(job.clone(), Channel { snapshot: Snapshot::default(), sender });
        self.began.notify_waiters();
    }

    /// Completes when a worker here next starts a job. It counts from this call, polled or not,
    /// so a caller takes it before it reads the job's state: a start between the two is not
    /// missed.
    pub fn next_start(&self) -> tokio::sync::futures::Notified<'_> {
        self.began.notified()
    }

    /// Records and forwards one event; `Done` and `Failed` end the job here.
    pub fn publish(&self, job: &JobId, event: LiveEvent) {
        let mut jobs = self.jobs.lock().expect("live lock");
        let Some(channel) = jobs.get_mut(job) else { return };
        match &event {
            LiveEvent::Prepared(view) => channel.snapshot.prepared = Some(view.clone()),
            LiveEvent::Delta(text) => channel.snapshot.text.push_str(text),
            LiveEvent::Retract => channel.snapshot.text.clear(),
            LiveEvent::Done(_) | LiveEvent::Failed(_) => {}
        }
        let finished = matches!(event, LiveEvent::Done(_) | LiveEvent::Failed(_));
        // No receivers is fine: nobody is watching.
        let _ = channel.sender.send(event);
        if finished {
            jobs.remove(job);
        }
    }

    /// Ends the job here without a final event (its claim was lost; the store decides).
    pub fn abandon(&self, job: &JobId) {
        self.jobs.lock().expect("live lock").remove(job);
    }

    /// The text so far (saved with the heartbeat for other processes).
    pub fn text(&self, job: &JobId) -> Option<String> {
        self.jobs.lock().expect("live lock").get(job).map(|c| c.snapshot.text.clone())
    }

    /// What was published so far and a receiver for the rest, taken atomically so that nothing
    /// falls between them; `None` when the job is not being written here.
    pub fn subscribe(&self, job: &JobId) -> Option<(Snapshot, broadcast::Receiver<LiveEvent>)> {
        let jobs = self.jobs.lock().expect("live lock");
        jobs.get(job).map(|c| (c.snapshot.clone(), c.sender.subscribe()))
    }

    /// How many replies are being written here.
    pub fn len(&self) -> usize {
        self.jobs.lock().expect("live lock").len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
