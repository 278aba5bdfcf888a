//! The root supervisor: starts its children, restarts each by its own policy, keeps the
//! health registry.
//!
//! ractor links actors and reports their deaths but has no restart strategies; this module
//! is that strategy. Guarantees:
//! - a child that fails or is killed is restarted after a full-jitter backoff delay, its
//!   slot empty in between (callers answer 503 rather than wait);
//! - a child whose policy has no intensity limit is restarted forever;
//! - a child with a probe of its remote dependency restarts as soon as the probe sees that
//!   dependency come back, before its backoff elapses (see `heal.rs`);
//! - a child that exceeds its intensity limit stops the whole tree, and
//!   [`HealthRegistry::escalation`] says why, so the process exits non-zero and its service
//!   manager restarts it.

mod child;
pub mod heal;
pub mod policy;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::time::Instant;

pub use child::{Child, ChildSpec, Probed};
use heal::{HealWatch, Step};
use policy::{Decision, RestartTracker};

use crate::health::HealthRegistry;

pub struct Supervisor;

pub struct SupervisorArgs {
    /// Prefix of every actor name of this tree, unique per running instance.
    pub instance: String,
    /// Started in this order; stopped in reverse.
    pub children: Vec<Box<dyn ChildSpec>>,
    pub health: Arc<HealthRegistry>,
}

pub struct SupervisorState {
    instance: String,
    children: Vec<ChildEntry>,
    health: Arc<HealthRegistry>,
    rng: SmallRng,
    shutting_down: bool,
}

struct ChildEntry {
    spec: Box<dyn ChildSpec>,
    cell: Option<ActorCell>,
    started: Instant,
    tracker: RestartTracker,
    /// Counts deaths: a scheduled restart or probe for an earlier death is stale.
    generation: u64,
    heal: HealWatch,
    /// Probing the dependency during this wait (the child has a probe and it has not
    /// said `Stop`).
    probing: bool,
}

pub enum SupervisorMsg {
    /// A child's backoff has elapsed (or its dependency is back): start it again, if
    /// the generation is still the child's.
    Restart(String, u64),
    /// Time to probe a backing-off child's dependency.
    Probe(String, u64),
    /// A probe's result.
    Probed(String, u64, bool),
    /// Fault drills: kill a child as if it had crashed. Replies `false` for an unknown or
    /// not-running child.
    Kill(String, RpcReplyPort<bool>),
    /// Stop every child in reverse start order, then the supervisor.
    Shutdown(RpcReplyPort<()>),
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut children = Vec::with_capacity(args.children.len());
        for spec in args.children {
            let name = spec.name().to_owned();
            args.health.starting(&name);
            // A child that cannot start at boot is a configuration or environment problem:
            // fail the tree at once rather than hide it behind restarts.
            let cell = spec.start(myself.get_cell(), &args.instance).await?;
            args.health.running(&name);
            tracing::info!(actor = %name, "started");
            children.push(ChildEntry {
                tracker: RestartTracker::new(spec.policy()),
                spec,
                cell: Some(cell),
                started: Instant::now(),
                generation: 0,
                heal: HealWatch::default(),
                probing: false,
            });
        }
        Ok(SupervisorState {
            instance: args.instance,
            children,
            health: args.health,
            rng: SmallRng::from_os_rng(),
            shutting_down: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Restart(name, generation) => {
                if let Some(index) = waiting(state, &name, generation) {
                    restart(&myself, state, index).await;
                }
            }
            SupervisorMsg::Probe(name, generation) => probe(&myself, state, name, generation),
            SupervisorMsg::Probed(name, generation, reachable) => {
                probed(&myself, state, name, generation, reachable).await;
            }
            SupervisorMsg::Kill(name, reply) => {
                let cell = state
                    .children
                    .iter()
                    .find(|c| c.spec.name() == name)
                    .and_then(|c| c.cell.clone());
                if let Some(cell) = &cell {
                    tracing::warn!(actor = %name, "killing actor on request (fault drill)");
                    cell.kill();
                }
                let _ = reply.send(cell.is_some());
            }
            SupervisorMsg::Shutdown(reply) => {
                shutdown(state).await;
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!(
                    "terminated: {}",
                    reason.unwrap_or_else(|| "no reason".into())
                ),
            ),
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            _ => return Ok(()),
        };
        if state.shutting_down {
            return Ok(());
        }
        let Some(index) = state
            .children
            .iter()
            .position(|c| c.cell.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        child_died(&myself, state, index, reason)
    }
}

/// Records a child's death and schedules its restart, or escalates.
fn child_died(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    index: usize,
    reason: String,
) -> Result<(), ActorProcessingErr> {
    let child = &mut state.children[index];
    child.cell = None;
    child.spec.stopped();
    let name = child.spec.name().to_owned();
    let ran_for = child.started.elapsed();
    child.generation += 1;
    let generation = child.generation;
    child
        .heal
        .on_failure(ran_for >= child.tracker.policy().reset_after);
    child.probing = child.spec.probe().is_some();
    let probing = child.probing;
    match child
        .tracker
        .on_failure(Instant::now(), ran_for, &mut state.rng)
    {
        Decision::Restart(delay) => {
            tracing::warn!(actor = %name, %reason, delay_ms = delay.as_millis() as u64, "actor died, restarting after backoff");
            let until = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            state.health.failed(&name, reason, until);
            if probing {
                let _ = myself.cast(SupervisorMsg::Probe(name.clone(), generation));
            }
            myself.send_after(delay, move || SupervisorMsg::Restart(name, generation));
            Ok(())
        }
        Decision::Escalate => {
            let why =
                format!("actor {name} exceeded its restart intensity (last failure: {reason})");
            tracing::error!(actor = %name, %reason, "restart intensity exceeded, stopping the tree");
            state.health.stopped(&name, Some(reason));
            state.health.escalate(why.clone());
            Err(why.into())
        }
    }
}

/// The index of child `name` if it is still waiting for the restart of `generation`.
fn waiting(state: &SupervisorState, name: &str, generation: u64) -> Option<usize> {
    if state.shutting_down {
        return None;
    }
    state
        .children
        .iter()
        .position(|c| c.spec.name() == name)
        .filter(|&i| {
            let c = &state.children[i];
            c.cell.is_none() && c.generation == generation
        })
}

/// Starts one probe of a waiting child's dependency, off the supervisor's mailbox (a probe
/// over a dead link takes its whole timeout), and schedules the next one.
fn probe(myself: &ActorRef<SupervisorMsg>, state: &SupervisorState, name: String, generation: u64) {
    let Some(index) = waiting(state, &name, generation) else {
        return;
    };
    if !state.children[index].probing {
        return;
    }
    let Some(probe) = state.children[index].spec.probe() else {
        return;
    };
    let reply = myself.clone();
    let check = probe.check;
    let tick = name.clone();
    tokio::spawn(async move {
        let reachable = check().await;
        let _ = reply.cast(SupervisorMsg::Probed(name, generation, reachable));
    });
    myself.send_after(probe.every, move || SupervisorMsg::Probe(tick, generation));
}

async fn probed(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    name: String,
    generation: u64,
    reachable: bool,
) {
    // After a `Stop`, results of probes still in flight (overlapping ones) are ignored.
    let Some(index) = waiting(state, &name, generation).filter(|&i| state.children[i].probing)
    else {
        return;
    };
    match state.children[index].heal.on_probe(reachable) {
        Step::RestartNow => {
            tracing::info!(actor = %name, "dependency reachable again, restarting before the backoff ends");
            restart(myself, state, index).await;
        }
        Step::ProbeAgain => {}
        // The scheduled restart still happens; only the probes stop.
        Step::Stop => state.children[index].probing = false,
    }
}

async fn restart(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState, index: usize) {
    let name = state.children[index].spec.name().to_owned();
    let name = name.as_str();
    state.health.starting(name);
    let started = state.children[index]
        .spec
        .start(myself.get_cell(), &state.instance)
        .await;
    match started {
        Ok(cell) => {
            let child = &mut state.children[index];
            child.cell = Some(cell);
            child.started = Instant::now();
            state.health.restarted(name);
            state.health.running(name);
            tracing::info!(actor = %name, "restarted");
        }
        Err(err) => {
            // A failed start counts as another failure of the child.
            if let Err(why) = child_died(myself, state, index, format!("start failed: {err}")) {
                myself.stop(Some(why.to_string()));
            }
        }
    }
}

/// Stops the children in reverse start order, each within a grace period.
async fn shutdown(state: &mut SupervisorState) {
    const GRACE: Duration = Duration::from_secs(5);
    state.shutting_down = true;
    for child in state.children.iter_mut().rev() {
        child.spec.stopped();
        if let Some(cell) = child.cell.take() {
            if cell
                .stop_and_wait(Some("shutdown".into()), Some(GRACE))
                .await
                .is_err()
            {
                cell.kill();
            }
        }
        state.health.stopped(child.spec.name(), None);
    }
}

#[cfg(test)]
mod tests;
