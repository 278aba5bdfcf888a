//! Lifecycle and supervision events: emitted by the actors into an in-process queue
//! ([`EventSink`]), published by the NotifierActor to Redis (a site-wide sequence number,
//! a capped stream for resume, the pub/sub channel), and fanned out from the channel to
//! websocket clients through the [`Hub`].
//!
//! Emitting never waits and never touches the network: it appends a JSON object to a
//! bounded queue (dropping, and counting, when the queue is full because the notifier has
//! been down for long). Events are emitted per group commit, per batch, per replication
//! step, not per write. The queue lives outside the notifier, so events emitted while it
//! restarts are published once it is back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::{broadcast, Notify};

/// One published event, as clients receive it.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub kind: String,
    /// The whole event as JSON text (`{"seq":…,"type":…,"at":…,…}`).
    pub json: Arc<str>,
}

impl Event {
    /// Reads `seq` and `type` of a published event's JSON.
    pub fn parse(json: &str) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Head {
            seq: u64,
            #[serde(rename = "type")]
            kind: String,
        }
        let head: Head = serde_json::from_str(json).ok()?;
        Some(Self {
            seq: head.seq,
            kind: head.kind,
            json: json.into(),
        })
    }
}

/// The queue between the actors and the notifier.
#[derive(Debug)]
pub struct EventSink {
    queue: Mutex<VecDeque<String>>,
    capacity: usize,
    /// `false`: every event is ignored (`events.enabled`, for measuring their cost).
    enabled: bool,
    pub(crate) ready: Notify,
    /// Held by the one publishing task.
    pub(crate) publishing: tokio::sync::Mutex<()>,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
}

impl EventSink {
    pub fn new(capacity: usize) -> Self {
        Self::with_switch(capacity, true)
    }

    /// A sink that ignores every event when `enabled` is `false`.
    pub fn with_switch(capacity: usize, enabled: bool) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            enabled,
            ready: Notify::new(),
            publishing: tokio::sync::Mutex::new(()),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event of `kind` with the members of `body` (an object; `seq` is added
    /// when it is published, `at` now).
    pub fn emit(&self, kind: &str, body: Value) {
        if !self.enabled {
            return;
        }
        let mut event = json!({ "type": kind, "at": chrono::Utc::now().timestamp_millis() });
        if let (Some(event), Value::Object(body)) = (event.as_object_mut(), body) {
            event.extend(body);
        }
        let text = event.to_string();
        let mut queue = self.lock();
        if queue.len() >= self.capacity {
            drop(queue);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.push_back(text);
        drop(queue);
        self.ready.notify_one();
    }

    /// Up to `n` queued events, oldest first, left in the queue (see [`EventSink::done`]).
    pub(crate) fn peek(&self, n: usize) -> Vec<String> {
        self.lock().iter().take(n).cloned().collect()
    }

    /// Removes the first `n` events (published).
    pub(crate) fn done(&self, n: usize) {
        let mut queue = self.lock();
        let n = n.min(queue.len());
        queue.drain(..n);
    }

    pub fn queued(&self) -> usize {
        self.lock().len()
    }
}

/// Where websocket clients subscribe: the current notifier's broadcast, if one runs.
#[derive(Debug, Default)]
pub struct Hub {
    current: Mutex<Option<(u64, broadcast::Sender<Event>)>>,
    generation: AtomicU64,
    /// The newest sequence number seen on the channel.
    pub last_seq: AtomicU64,
}

impl Hub {
    /// Installs a notifier's broadcast; returns its generation (for [`Hub::clear`]).
    pub(crate) fn install(&self, sender: broadcast::Sender<Event>) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, sender));
        generation
    }

    /// Removes the broadcast of `generation` if it is still the current one: its clients
    /// see the channel close and reconnect with `since`.
    pub(crate) fn clear(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }

    /// A receiver of live events, or `None` while no notifier runs.
    pub fn subscribe(&self) -> Option<broadcast::Receiver<Event>> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.as_ref().map(|(_, sender)| sender.subscribe())
    }

    /// How many clients are subscribed.
    pub fn clients(&self) -> usize {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.as_ref().map_or(0, |(_, s)| s.receiver_count())
    }
}

/// Whether `kind` passes a `types` filter: exact names, or a prefix ending in `*`.
pub fn matches(filter: &[String], kind: &str) -> bool {
    filter.is_empty()
        || filter.iter().any(|f| match f.strip_suffix('*') {
            Some(prefix) => kind.starts_with(prefix),
            None => f == kind,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let sink = EventSink::new(2);
        for i in 0..3 {
            sink.emit("tx.buffered", json!({ "n": i }));
        }
        assert_eq!(sink.queued(), 2);
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 1);
        let first: Value = serde_json::from_str(&sink.peek(1)[0]).expect("json");
        assert_eq!(first["type"], "tx.buffered");
        assert_eq!(first["n"], 0);
        sink.done(1);
        assert_eq!(sink.queued(), 1);
    }

    #[test]
    fn filters_take_names_and_prefixes() {
        let f = vec!["tx.dead".to_owned(), "actor.*".to_owned()];
        assert!(matches(&f, "tx.dead"));
        assert!(matches(&f, "actor.restarted"));
        assert!(!matches(&f, "tx.buffered"));
        assert!(matches(&[], "anything"));
    }

    #[test]
    fn published_events_parse_their_head() {
        let e = Event::parse(r#"{"seq":7,"type":"link.up","at":1}"#).expect("parses");
        assert_eq!((e.seq, e.kind.as_str()), (7, "link.up"));
        assert!(Event::parse("{}").is_none());
    }
}
