//! The actor tree of one running instance and the calls the facades make into it.

use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, SpawnErr};
use tokio::sync::watch;

use crate::buffer::{
    Ack, BufferActor, BufferArgs, BufferConfig, BufferMetrics, BufferMsg, IngestError,
};
use crate::domain::{IdempotencyKey, Limits, Operation};
#[cfg(feature = "fault-injection")]
use crate::forwarder::CrashPoints;
use crate::forwarder::{
    ForwarderActor, ForwarderArgs, ForwarderConfig, ForwarderMetrics, ForwarderMsg,
};
use crate::health::HealthRegistry;
use crate::ingest::{IngestActor, IngestArgs, IngestMsg};
use crate::replica::{ReplicaArgs, ReplicaConfig, ReplicaLagActor, ReplicaMetrics, ReplicaMsg};
use crate::slot::Slot;
use crate::supervisor::policy::RestartPolicy;
use crate::supervisor::{Child, ChildSpec, Supervisor, SupervisorArgs, SupervisorMsg};

pub const INGEST: &str = "ingest";
pub const BUFFER: &str = "buffer";
pub const FORWARDER: &str = "forwarder";
pub const REPLICA: &str = "replica";

pub struct TreeConfig {
    /// Unique per running instance: prefixes every actor name.
    pub instance: String,
    pub site: String,
    pub limits: Limits,
    pub buffer: BufferConfig,
    pub ingest_policy: RestartPolicy,
    pub buffer_policy: RestartPolicy,
    /// `None`: no primary configured, nothing is forwarded.
    pub forwarder: Option<(ForwarderConfig, RestartPolicy)>,
    /// `None`: no read source configured, nothing tracks visibility.
    pub replica: Option<(ReplicaConfig, RestartPolicy)>,
}

/// A running tree. Dropping it does not stop it: call [`Tree::shutdown`].
pub struct Tree {
    pub supervisor: ActorRef<SupervisorMsg>,
    pub health: Arc<HealthRegistry>,
    pub buffer_metrics: Arc<BufferMetrics>,
    pub forwarder_metrics: Arc<ForwarderMetrics>,
    /// Fault tests arm crash points of the forwarder here (`fault-injection` feature).
    #[cfg(feature = "fault-injection")]
    pub crash_points: Arc<CrashPoints>,
    pub has_forwarder: bool,
    pub replica_metrics: Arc<ReplicaMetrics>,
    pub has_replica: bool,
    ingest: Slot<IngestMsg>,
    /// Flips to `true` once the supervisor has stopped, by shutdown or escalation.
    stopped: watch::Receiver<bool>,
}

impl Tree {
    pub async fn start(config: TreeConfig) -> Result<Self, SpawnErr> {
        let health = Arc::new(HealthRegistry::new());
        let buffer_metrics = Arc::new(BufferMetrics::default());
        let keys = config.buffer.keys.clone();
        let buffer_slot = Slot::<BufferMsg>::new();
        let ingest_slot = Slot::<IngestMsg>::new();
        let forwarder_metrics = Arc::new(ForwarderMetrics::default());
        #[cfg(feature = "fault-injection")]
        let crash_points = Arc::new(CrashPoints::default());
        let has_forwarder = config.forwarder.is_some();
        let replica_metrics = Arc::new(ReplicaMetrics::default());
        let has_replica = config.replica.is_some();
        // Start order matters: the buffer must run before ingest hands it writes.
        let mut children: Vec<Box<dyn ChildSpec>> = vec![
            Box::new(Child {
                name: BUFFER.into(),
                actor: BufferActor,
                args: BufferArgs {
                    config: Arc::new(config.buffer),
                    metrics: Arc::clone(&buffer_metrics),
                },
                slot: buffer_slot.clone(),
                policy: config.buffer_policy,
            }),
            Box::new(Child {
                name: INGEST.into(),
                actor: IngestActor,
                args: IngestArgs {
                    site: config.site.into(),
                    keys,
                    limits: config.limits,
                    buffer: buffer_slot,
                },
                slot: ingest_slot.clone(),
                policy: config.ingest_policy,
            }),
        ];
        if let Some((forwarder, policy)) = config.forwarder {
            children.push(Box::new(Child {
                name: FORWARDER.into(),
                actor: ForwarderActor,
                args: ForwarderArgs {
                    config: Arc::new(forwarder),
                    metrics: Arc::clone(&forwarder_metrics),
                    #[cfg(feature = "fault-injection")]
                    crash: Arc::clone(&crash_points),
                },
                slot: Slot::<ForwarderMsg>::new(),
                policy,
            }));
        }
        if let Some((replica, policy)) = config.replica {
            children.push(Box::new(Child {
                name: REPLICA.into(),
                actor: ReplicaLagActor,
                args: ReplicaArgs {
                    config: Arc::new(replica),
                    metrics: Arc::clone(&replica_metrics),
                },
                slot: Slot::<ReplicaMsg>::new(),
                policy,
            }));
        }
        let (supervisor, join) = Actor::spawn(
            Some(format!("{}/supervisor", config.instance)),
            Supervisor,
            SupervisorArgs {
                instance: config.instance,
                children,
                health: Arc::clone(&health),
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
            health,
            buffer_metrics,
            forwarder_metrics,
            #[cfg(feature = "fault-injection")]
            crash_points,
            has_forwarder,
            replica_metrics,
            has_replica,
            ingest: ingest_slot,
            stopped,
        })
    }

    /// Submits one write and waits (at most `timeout`) for its acknowledgement.
    pub async fn ingest(
        &self,
        op: Operation,
        idempotency: Option<IdempotencyKey>,
        timeout: Duration,
    ) -> Result<Ack, IngestError> {
        let actor = self
            .ingest
            .get()
            .ok_or_else(|| IngestError::Unavailable("ingest actor not running".into()))?;
        let call = actor.call(
            |reply| IngestMsg::Write {
                op,
                idempotency,
                reply,
            },
            Some(timeout),
        );
        match call.await {
            Ok(CallResult::Success(result)) => result,
            Ok(CallResult::Timeout) => Err(IngestError::Unavailable("write timed out".into())),
            Ok(CallResult::SenderError) => Err(IngestError::Unavailable(
                "an actor died with the write".into(),
            )),
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
    }
}
