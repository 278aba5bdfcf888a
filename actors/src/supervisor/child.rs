//! How the supervisor starts one kind of child.

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, SpawnErr};

use super::heal::Probe;
use super::policy::RestartPolicy;
use crate::slot::Slot;

/// A child the supervisor can (re)start. Object-safe so one supervisor holds children of
/// different actor types.
pub trait ChildSpec: Send + Sync + 'static {
    /// The child's short name (`ingest`, `buffer`, ...): its key in the health registry.
    fn name(&self) -> &str;
    fn policy(&self) -> RestartPolicy;
    /// Spawns a new incarnation linked to `supervisor` and publishes it.
    fn start(
        &self,
        supervisor: ActorCell,
        instance: &str,
    ) -> BoxFuture<'_, Result<ActorCell, SpawnErr>>;
    /// The incarnation died: stop publishing it.
    fn stopped(&self);
    /// How to see that what this child depends on is back, to cut its backoff short
    /// (see `heal.rs`). Most children have none.
    fn probe(&self) -> Option<Probe> {
        None
    }
}

/// A child with a [`Probe`] of its remote dependency.
pub struct Probed<C> {
    pub child: C,
    pub probe: Probe,
}

impl<C: ChildSpec> ChildSpec for Probed<C> {
    fn name(&self) -> &str {
        self.child.name()
    }

    fn policy(&self) -> RestartPolicy {
        self.child.policy()
    }

    fn start(
        &self,
        supervisor: ActorCell,
        instance: &str,
    ) -> BoxFuture<'_, Result<ActorCell, SpawnErr>> {
        self.child.start(supervisor, instance)
    }

    fn stopped(&self) {
        self.child.stopped();
    }

    fn probe(&self) -> Option<Probe> {
        Some(self.probe.clone())
    }
}

/// The usual child: an actor value, the arguments of each incarnation, and the slot through
/// which the rest of the process reaches it.
pub struct Child<A: Actor> {
    pub name: String,
    pub actor: A,
    pub args: A::Arguments,
    pub slot: Slot<A::Msg>,
    pub policy: RestartPolicy,
}

impl<A> ChildSpec for Child<A>
where
    A: Actor + Clone,
    A::Arguments: Clone + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn policy(&self) -> RestartPolicy {
        self.policy
    }

    fn start(
        &self,
        supervisor: ActorCell,
        instance: &str,
    ) -> BoxFuture<'_, Result<ActorCell, SpawnErr>> {
        // Names carry the instance id: two trees in one process (tests) must not collide in
        // ractor's global registry.
        let name = format!("{instance}/{}", self.name);
        Box::pin(async move {
            let (actor, _) = A::spawn_linked(
                Some(name),
                self.actor.clone(),
                self.args.clone(),
                supervisor,
            )
            .await?;
            self.slot.set(actor.clone());
            Ok(actor.get_cell())
        })
    }

    fn stopped(&self) {
        self.slot.clear();
    }
}
