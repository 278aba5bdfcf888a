//! NotifierActor: publishes the tree's events to Redis and fans the site's channel out to
//! websocket clients.
//!
//! Two tasks of one incarnation, started by its first message (Redis down at boot is an
//! ordinary crash-and-back-off):
//! - **publisher**: takes queued events from the [`EventSink`] (at most 100 per call) and
//!   runs `events.lua` (sequence number, capped stream, `PUBLISH`); an event leaves the
//!   queue only once Redis answered, so a crash publishes it after the restart;
//! - **subscriber**: the site's channel (subscribed before the hub accepts clients), each
//!   message into the broadcast that websocket clients receive from.
//!
//! The periodic `health` event is not built here: the service emits its health report
//! into the sink like any other event (this crate knows nothing of that report).
//!
//! Any task's failure fails the actor (let it crash); its broadcast goes with it, so its
//! clients see the stream close and reconnect with `since`, reading what they missed from
//! the capped stream. Nothing here is on the ingest path: actors only append to the sink.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::events::{Event, EventSink, Hub};
use crate::overlay::scripts::EVENTS;
use crate::overlay::Keys;
use crate::redis_conn;

/// Most events one `events.lua` call publishes, and most bytes of them (at least one event
/// goes): the call stores and publishes each, and Redis runs it alone.
const EVENTS_PER_CALL: usize = 100;
const BYTES_PER_CALL: usize = 256 * 1024;

/// How long the publisher lets events gather before a call, unless a call's worth is
/// queued already. Each call is a write to an `appendfsync always` Redis, so one fsync:
/// publishing each group commit's event at once would double the fsyncs of a busy ingest.
const LINGER: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct NotifierConfig {
    pub redis_url: String,
    pub keys: Keys,
    pub redis_timeout: Duration,
    /// How many recent events the capped stream keeps (approximately, never fewer).
    pub stream_cap: usize,
    /// Events a websocket client may fall behind by before it is disconnected.
    pub client_buffer: usize,
}

#[derive(Clone)]
pub struct NotifierArgs {
    pub config: Arc<NotifierConfig>,
    pub sink: Arc<EventSink>,
    pub hub: Arc<Hub>,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: {0} timed out")]
    RedisTimeout(&'static str),
    #[error("redis: the event subscription ended")]
    SubscriptionEnded,
    #[error("{0}")]
    Task(String),
}

pub enum NotifierMsg {
    /// Connect, subscribe, start the tasks (the first message).
    Start,
    /// A task failed: fail the actor with its reason.
    Failed(String),
}

#[derive(Clone)]
pub struct NotifierActor;

/// One incarnation's tasks and its place in the hub; both go when the state is dropped,
/// however the actor ends.
pub struct NotifierState {
    args: NotifierArgs,
    generation: Option<u64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for NotifierState {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(generation) = self.generation {
            self.args.hub.clear(generation);
        }
    }
}

impl Actor for NotifierActor {
    type Msg = NotifierMsg;
    type State = NotifierState;
    type Arguments = NotifierArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: NotifierArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.cast(NotifierMsg::Start)?;
        Ok(NotifierState {
            args,
            generation: None,
            tasks: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NotifierMsg::Start => start(myself, state).await?,
            NotifierMsg::Failed(reason) => return Err(NotifierError::Task(reason).into()),
        }
        Ok(())
    }
}

async fn start(
    myself: ActorRef<NotifierMsg>,
    state: &mut NotifierState,
) -> Result<(), NotifierError> {
    let args = state.args.clone();
    let config = Arc::clone(&args.config);
    let timeout = config.redis_timeout;
    let conn = redis_conn::open_url(&config.redis_url, "notifier", timeout, timeout).await?;
    let client = redis::Client::open(config.redis_url.as_str())?;
    let subscribe = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(config.keys.events_channel()).await?;
        Ok::<_, NotifierError>(pubsub)
    };
    let pubsub = tokio::time::timeout(config.redis_timeout, subscribe)
        .await
        .map_err(|_| NotifierError::RedisTimeout("subscribing to the event channel"))??;
    // Subscribed: from here on every published event reaches the broadcast, so clients
    // may come (what was published before, they read from the capped stream).
    let (sender, _) = broadcast::channel(config.client_buffer.max(1));
    state.generation = Some(args.hub.install(sender.clone()));

    let hub = Arc::clone(&args.hub);
    state.tasks.push(supervised(myself.clone(), async move {
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let payload: String = message.get_payload()?;
            if let Some(event) = Event::parse(&payload) {
                hub.last_seq.fetch_max(event.seq, Ordering::Relaxed);
                // No receivers is fine: nobody is watching.
                let _ = sender.send(event);
            }
        }
        Err(NotifierError::SubscriptionEnded)
    }));
    state
        .tasks
        .push(supervised(myself, publish(config, args.sink, conn)));
    Ok(())
}

/// Runs `task`; its error fails the actor.
fn supervised(
    myself: ActorRef<NotifierMsg>,
    task: impl std::future::Future<Output = Result<(), NotifierError>> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = task.await {
            let _ = myself.cast(NotifierMsg::Failed(e.to_string()));
        }
    })
}

async fn publish(
    config: Arc<NotifierConfig>,
    sink: Arc<EventSink>,
    mut conn: MultiplexedConnection,
) -> Result<(), NotifierError> {
    // One publisher at a time, even while an aborted incarnation's task winds down.
    let _publishing = sink.publishing.lock().await;
    loop {
        if sink.queued() == 0 {
            sink.ready.notified().await;
            continue;
        }
        if sink.queued() < EVENTS_PER_CALL {
            tokio::time::sleep(LINGER).await;
        }
        let mut batch = sink.peek(EVENTS_PER_CALL);
        let mut bytes = 0;
        let fits = batch
            .iter()
            .take_while(|e| {
                bytes += e.len();
                bytes <= BYTES_PER_CALL
            })
            .count();
        // Never empty: only this task takes events out of the queue.
        batch.truncate(fits.max(1));
        let mut invocation = EVENTS.prepare_invoke();
        invocation
            .key(config.keys.events_seq())
            .key(config.keys.events())
            .arg(config.keys.events_channel())
            .arg(config.stream_cap.max(1));
        for event in coalesce(&batch) {
            invocation.arg(event);
        }
        let _: u64 = tokio::time::timeout(config.redis_timeout, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| NotifierError::RedisTimeout("publishing events"))??;
        sink.done(batch.len());
    }
}

/// Adjacent `tx.buffered` events become one (their `transactions` joined, the first `at`
/// kept), and so do adjacent `tx.replicated` ones (the last `replay_lsn` kept): a busy
/// ingest makes a group commit every few milliseconds, and every event is one message
/// to every websocket client. Order is kept: only neighbours merge.
fn coalesce(batch: &[String]) -> Vec<String> {
    const MERGED: [&str; 2] = ["tx.buffered", "tx.replicated"];
    let mut out: Vec<String> = Vec::with_capacity(batch.len());
    let mut open: Option<Value> = None;
    for text in batch {
        let event: Option<Value> = serde_json::from_str(text).ok();
        let kind = event
            .as_ref()
            .and_then(|e| e["type"].as_str())
            .filter(|k| MERGED.contains(k))
            .map(str::to_owned);
        match (kind, event, open.as_mut()) {
            (Some(kind), Some(event), Some(current)) if current["type"] == kind.as_str() => {
                if let (Some(all), Some(more)) = (
                    current["transactions"].as_array_mut(),
                    event["transactions"].as_array(),
                ) {
                    all.extend(more.iter().cloned());
                }
                if kind == "tx.replicated" {
                    current["replay_lsn"] = event["replay_lsn"].clone();
                }
            }
            (Some(_), Some(event), _) => {
                if let Some(done) = open.replace(event) {
                    out.push(done.to_string());
                }
            }
            _ => {
                if let Some(done) = open.take() {
                    out.push(done.to_string());
                }
                out.push(text.clone());
            }
        }
    }
    if let Some(done) = open {
        out.push(done.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_buffered_and_replicated_events_merge_in_order() {
        let batch: Vec<String> = [
            r#"{"type":"tx.buffered","at":1,"transactions":[{"id":"a"}]}"#,
            r#"{"type":"tx.buffered","at":2,"transactions":[{"id":"b"}]}"#,
            r#"{"type":"tx.forwarded","at":3,"commit_lsn":"0/1","transactions":["a","b"]}"#,
            r#"{"type":"tx.buffered","at":4,"transactions":[{"id":"c"}]}"#,
            r#"{"type":"tx.replicated","at":5,"replay_lsn":"0/1","transactions":["a"]}"#,
            r#"{"type":"tx.replicated","at":6,"replay_lsn":"0/2","transactions":["b"]}"#,
        ]
        .map(String::from)
        .to_vec();
        let merged: Vec<Value> = coalesce(&batch)
            .iter()
            .map(|t| serde_json::from_str(t).expect("json"))
            .collect();
        let kinds: Vec<&str> = merged
            .iter()
            .map(|e| e["type"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            kinds,
            [
                "tx.buffered",
                "tx.forwarded",
                "tx.buffered",
                "tx.replicated"
            ]
        );
        assert_eq!(
            merged[0]["transactions"],
            serde_json::json!([{"id": "a"}, {"id": "b"}])
        );
        assert_eq!(merged[0]["at"], 1, "the first emission's time");
        assert_eq!(merged[3]["transactions"], serde_json::json!(["a", "b"]));
        assert_eq!(merged[3]["replay_lsn"], "0/2");
    }
}
