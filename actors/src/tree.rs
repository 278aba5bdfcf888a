//! The actor tree of one running instance and the calls the facades make into it.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, SpawnErr};
use tokio::sync::watch;

use crate::buffer::memory::BufferMemory;
use crate::buffer::{
    Ack, BufferActor, BufferArgs, BufferConfig, BufferMetrics, BufferMsg, IngestError,
};
use crate::domain::{Limits, Presets};
use crate::events::{EventSink, Hub};
#[cfg(feature = "fault-injection")]
use crate::forwarder::CrashPoints;
use crate::forwarder::{
    ForwarderActor, ForwarderArgs, ForwarderConfig, ForwarderMetrics, ForwarderMsg,
};
use crate::health::HealthRegistry;
use crate::ingest::{IngestActor, IngestArgs, IngestMsg, Write};
use crate::notifier::{NotifierActor, NotifierArgs, NotifierConfig, NotifierMsg};
use crate::references::References;
use crate::registry;
use crate::replica::{ReplicaArgs, ReplicaConfig, ReplicaLagActor, ReplicaMetrics, ReplicaMsg};
use crate::slot::Slot;
use crate::supervisor::policy::RestartPolicy;
use crate::supervisor::{Child, ChildSpec, Probed, Supervisor, SupervisorArgs, SupervisorMsg};

pub const INGEST: &str = "ingest";
pub const BUFFER: &str = "buffer";
pub const FORWARDER: &str = "forwarder";
pub const REPLICA: &str = "replica";
pub const NOTIFIER: &str = "notifier";

/// Upper bounds, in seconds, of the ingest latency buckets: from a write answered by a
/// local Redis (well under a millisecond) to one that waited out the request timeout
/// (`http.request_timeout`, 5 s by default).
const INGEST_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IngestLabels {
    op: &'static str,
    status: u16,
}

/// How long writes took as their callers saw them, by operation and the status code they
/// were answered with. Recorded by the facades' shared write path, which decides that code
/// (this crate knows no status codes); it lives here because every write goes through
/// [`Tree::ingest`].
#[derive(Debug)]
pub struct IngestMetrics {
    duration: Family<IngestLabels, Histogram, fn() -> Histogram>,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self {
            duration: Family::new_with_constructor(|| Histogram::new(INGEST_BUCKETS)),
        }
    }
}

impl IngestMetrics {
    /// Records one answered write: `op` is its `OperationKind::name()`.
    pub fn observe(&self, op: &'static str, status: u16, elapsed: Duration) {
        self.duration
            .get_or_create(&IngestLabels { op, status })
            .observe(elapsed.as_secs_f64());
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "opsdb_ingest_duration",
            "Time to answer a write, by operation and status code",
            Unit::Seconds,
            self.duration.clone(),
        );
    }
}

pub struct TreeConfig {
    /// Unique per running instance: prefixes every actor name.
    pub instance: String,
    pub site: String,
    pub limits: Limits,
    /// How the fixed operations map onto tables and columns.
    pub presets: Arc<Presets>,
    /// The writable tables' shape, kept up to date by the service.
    pub registry: registry::Handle,
    /// Referential checks at ingest (`None`: off).
    pub references: Option<Arc<References>>,
    pub buffer: BufferConfig,
    pub ingest_policy: RestartPolicy,
    pub buffer_policy: RestartPolicy,
    /// `None`: no primary configured, nothing is forwarded.
    pub forwarder: Option<(ForwarderConfig, RestartPolicy)>,
    /// `None`: no read source configured, nothing tracks visibility.
    pub replica: Option<(ReplicaConfig, RestartPolicy)>,
    pub notifier: (NotifierConfig, RestartPolicy),
    /// Most events queued for the notifier (beyond: dropped and counted).
    pub event_queue: usize,
    /// `false`: no events are emitted (the notifier still runs).
    pub events_enabled: bool,
}

/// A running tree. Dropping it does not stop it: call [`Tree::shutdown`].
pub struct Tree {
    pub supervisor: ActorRef<SupervisorMsg>,
    pub health: Arc<HealthRegistry>,
    pub buffer_metrics: Arc<BufferMetrics>,
    /// Redis' memory against the buffer's share of its `maxmemory`.
    pub buffer_memory: Arc<BufferMemory>,
    pub forwarder_metrics: Arc<ForwarderMetrics>,
    pub ingest_metrics: Arc<IngestMetrics>,
    /// Fault tests arm crash points of the forwarder here (`fault-injection` feature).
    #[cfg(feature = "fault-injection")]
    pub crash_points: Arc<CrashPoints>,
    pub has_forwarder: bool,
    pub replica_metrics: Arc<ReplicaMetrics>,
    pub has_replica: bool,
    /// Whether the primary and the replica still hold what was forwarded (`history`).
    pub history: Arc<crate::history::History>,
    /// Where actors and facades emit events (`dlq.retried`, say).
    pub events: Arc<EventSink>,
    /// Where websocket clients subscribe to live events.
    pub hub: Arc<Hub>,
    ingest: Slot<IngestMsg>,
    /// Flips to `true` once the supervisor has stopped, by shutdown or escalation.
    stopped: watch::Receiver<bool>,
    /// The forwarder's config, to give its lease up at shutdown: a forwarder that was
    /// backing off, or killed in a hung batch, never ran its own clean stop.
    forwarder: Option<Arc<ForwarderConfig>>,
}

impl Tree {
    pub async fn start(config: TreeConfig) -> Result<Self, SpawnErr> {
        let shared = Shared::new(
            config.forwarder.is_some(),
            config.replica.is_some(),
            EventSink::with_switch(config.event_queue, config.events_enabled),
            config.buffer.max_memory_fraction,
            config.buffer.min_disk_free_bytes,
        );
        let ingest = Slot::<IngestMsg>::new();
        let instance = config.instance.clone();
        let forwarder = config.forwarder.as_ref().map(|(f, _)| Arc::new(f.clone()));
        let children = children(config, &shared, &ingest);
        let health = Arc::clone(&shared.health);
        let (supervisor, join) = Actor::spawn(
            Some(format!("{instance}/supervisor")),
            Supervisor,
            SupervisorArgs {
                instance,
                children,
                health,
            },
        )
        .await?;
        let (stopped_tx, stopped) = watch::channel(false);
        tokio::spawn(async move {
            let _ = join.await;
            let _ = stopped_tx.send(true);
        });
        Ok(Self {
            supervisor,
            health: shared.health,
            buffer_metrics: shared.buffer_metrics,
            buffer_memory: shared.buffer_memory,
            forwarder_metrics: shared.forwarder_metrics,
            ingest_metrics: Arc::new(IngestMetrics::default()),
            #[cfg(feature = "fault-injection")]
            crash_points: shared.crash_points,
            has_forwarder: shared.has_forwarder,
            replica_metrics: shared.replica_metrics,
            has_replica: shared.has_replica,
            history: shared.history,
            events: shared.events,
            hub: shared.hub,
            ingest,
            stopped,
            forwarder,
        })
    }

    /// Registers every metric of the tree into `registry`. The forwarder's counters are
    /// there even without a primary (all 0); the replica's only with a read source, since a
    /// lag of 0 would claim a replica that does not exist.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.buffer_metrics.register(registry);
        self.buffer_memory.register(registry);
        self.ingest_metrics.register(registry);
        self.forwarder_metrics.register(registry);
        if self.has_replica {
            self.replica_metrics.register(registry);
        }
        self.health.register(registry);
    }

    /// Submits one write and waits (at most `timeout`) for its acknowledgement.
    pub async fn ingest(&self, write: Write, timeout: Duration) -> Result<Ack, IngestError> {
        let actor = self
            .ingest
            .get()
            .ok_or_else(|| IngestError::Unavailable("ingest actor not running".into()))?;
        let call = actor.call(|reply| IngestMsg::Write { write, reply }, Some(timeout));
        match call.await {
            Ok(CallResult::Success(result)) => result,
            // The write was queued or in flight: it may have been stored.
            Ok(CallResult::Timeout) => Err(IngestError::MaybeStored("write timed out".into())),
            Ok(CallResult::SenderError) => Err(IngestError::MaybeStored(
                "an actor died with the write".into(),
            )),
            // The message was never delivered.
            Err(err) => Err(IngestError::Unavailable(format!(
                "ingest actor unreachable: {err}"
            ))),
        }
    }

    /// Fault drills: kills the named child as if it had crashed.
    pub async fn kill(&self, name: &str) -> bool {
        let name = name.to_owned();
        matches!(
            self.supervisor
                .call(
                    |reply| SupervisorMsg::Kill(name, reply),
                    Some(Duration::from_secs(5))
                )
                .await,
            Ok(CallResult::Success(true))
        )
    }

    /// Resolves when the tree has stopped, by shutdown or by escalation.
    pub async fn stopped(&self) {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
    }

    /// Stops the children in reverse start order, then the supervisor. Idempotent.
    pub async fn shutdown(&self) {
        let _ = self
            .supervisor
            .call(SupervisorMsg::Shutdown, Some(Duration::from_secs(30)))
            .await;
        self.stopped().await;
        // The forwarder gives its lease up when it stops cleanly; one that was backing off
        // or was killed in a hung batch did not, and the next instance would stand by for
        // a whole `forwarder.lease_ttl`. Only this instance's lease is deleted.
        if let Some(config) = &self.forwarder {
            crate::forwarder::lease::release(config, &self.forwarder_metrics.lease).await;
        }
    }
}

/// What the actors write and the facades read: health and metrics, shared by `Arc`.
struct Shared {
    health: Arc<HealthRegistry>,
    buffer_metrics: Arc<BufferMetrics>,
    buffer_memory: Arc<BufferMemory>,
    forwarder_metrics: Arc<ForwarderMetrics>,
    replica_metrics: Arc<ReplicaMetrics>,
    history: Arc<crate::history::History>,
    /// The forwarder's word to the replica tracker that transactions now wait to be seen
    /// replicated: it polls fast from then on, not after its slow pace's sleep.
    forwarded: Arc<tokio::sync::Notify>,
    #[cfg(feature = "fault-injection")]
    crash_points: Arc<CrashPoints>,
    has_forwarder: bool,
    has_replica: bool,
    events: Arc<EventSink>,
    hub: Arc<Hub>,
}

impl Shared {
    fn new(
        has_forwarder: bool,
        has_replica: bool,
        events: EventSink,
        max_memory_fraction: f64,
        min_disk_free_bytes: u64,
    ) -> Self {
        let events = Arc::new(events);
        Self {
            health: Arc::new(HealthRegistry::with_events(Arc::clone(&events))),
            events,
            hub: Arc::default(),
            buffer_metrics: Arc::new(BufferMetrics::default()),
            buffer_memory: Arc::new(BufferMemory::new(max_memory_fraction, min_disk_free_bytes)),
            forwarder_metrics: Arc::new(ForwarderMetrics::default()),
            replica_metrics: Arc::new(ReplicaMetrics::default()),
            history: Arc::default(),
            forwarded: Arc::default(),
            #[cfg(feature = "fault-injection")]
            crash_points: Arc::new(CrashPoints::default()),
            has_forwarder,
            has_replica,
        }
    }
}

/// The supervisor's children, in start order: the buffer must run before ingest hands it
/// writes; the forwarder and the replica tracker only if configured.
fn children(
    config: TreeConfig,
    shared: &Shared,
    ingest: &Slot<IngestMsg>,
) -> Vec<Box<dyn ChildSpec>> {
    let buffer = Slot::<BufferMsg>::new();
    let keys = config.buffer.keys.clone();
    let mut children: Vec<Box<dyn ChildSpec>> = vec![
        Box::new(Child {
            name: BUFFER.into(),
            actor: BufferActor,
            args: BufferArgs {
                config: Arc::new(config.buffer),
                metrics: Arc::clone(&shared.buffer_metrics),
                events: Arc::clone(&shared.events),
                memory: Arc::clone(&shared.buffer_memory),
            },
            slot: buffer.clone(),
            policy: config.buffer_policy,
        }),
        Box::new(Child {
            name: INGEST.into(),
            actor: IngestActor,
            args: IngestArgs {
                site: config.site.into(),
                keys,
                limits: config.limits,
                buffer,
                presets: config.presets,
                registry: config.registry,
                references: config.references,
            },
            slot: ingest.clone(),
            policy: config.ingest_policy,
        }),
    ];
    if let Some((forwarder, policy)) = config.forwarder {
        // Over a dead WAN a probe times out rather than fails; a connect and one answer take
        // two round trips, well under 2 s on any link this service is meant for.
        let timeout = forwarder.connect_timeout.min(Duration::from_secs(2));
        let probe = crate::forwarder::probe(&forwarder.primary.url, timeout);
        let child = Child {
            name: FORWARDER.into(),
            actor: ForwarderActor,
            args: ForwarderArgs {
                config: Arc::new(forwarder),
                metrics: Arc::clone(&shared.forwarder_metrics),
                isolation: Arc::default(),
                events: Arc::clone(&shared.events),
                history: Arc::clone(&shared.history),
                forwarded: Arc::clone(&shared.forwarded),
                #[cfg(feature = "fault-injection")]
                crash: Arc::clone(&shared.crash_points),
            },
            slot: Slot::<ForwarderMsg>::new(),
            policy,
        };
        match probe {
            Some(probe) => children.push(Box::new(Probed { child, probe })),
            None => children.push(Box::new(child)),
        }
    }
    if let Some((replica, policy)) = config.replica {
        // The replica is local: a connect and one query take milliseconds when it answers.
        let timeout = replica.connect_timeout.min(Duration::from_secs(2));
        let probe = crate::replica::probe(&replica, timeout);
        let child = Child {
            name: REPLICA.into(),
            actor: ReplicaLagActor,
            args: ReplicaArgs {
                config: Arc::new(replica),
                metrics: Arc::clone(&shared.replica_metrics),
                events: Arc::clone(&shared.events),
                history: Arc::clone(&shared.history),
                forwarded: Arc::clone(&shared.forwarded),
            },
            slot: Slot::<ReplicaMsg>::new(),
            policy,
        };
        children.push(Box::new(Probed { child, probe }));
    }
    let (notifier, policy) = config.notifier;
    children.push(Box::new(Child {
        name: NOTIFIER.into(),
        actor: NotifierActor,
        args: NotifierArgs {
            config: Arc::new(notifier),
            sink: Arc::clone(&shared.events),
            hub: Arc::clone(&shared.hub),
        },
        slot: Slot::<NotifierMsg>::new(),
        policy,
    }));
    children
}
