//! The supervisor's restart behaviour, end to end with real actors and paused time.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::policy::{Intensity, RestartPolicy};
use super::*;
use crate::backoff::Backoff;
use crate::health::{ActorState, HealthRegistry};
use crate::slot::Slot;

#[derive(Clone)]
struct Worker;

impl Actor for Worker {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

fn policy(intensity: Option<Intensity>) -> RestartPolicy {
    RestartPolicy {
        backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30)),
        intensity,
        reset_after: Duration::from_secs(60),
    }
}

async fn start(
    instance: &str,
    intensity: Option<Intensity>,
) -> (
    ActorRef<SupervisorMsg>,
    tokio::task::JoinHandle<()>,
    Slot<()>,
    Arc<HealthRegistry>,
) {
    let slot = Slot::new();
    let health = Arc::new(HealthRegistry::new());
    let (sup, join) = Actor::spawn(
        Some(format!("{instance}/supervisor")),
        Supervisor,
        SupervisorArgs {
            instance: instance.into(),
            children: vec![Box::new(Child {
                name: "worker".into(),
                actor: Worker,
                args: (),
                slot: slot.clone(),
                policy: policy(intensity),
            })],
            health: Arc::clone(&health),
        },
    )
    .await
    .expect("supervisor starts");
    (sup, join, slot, health)
}

async fn kill(sup: &ActorRef<SupervisorMsg>) -> bool {
    matches!(
        sup.call(
            |r| SupervisorMsg::Kill("worker".into(), r),
            Some(Duration::from_secs(5))
        )
        .await,
        Ok(ractor::rpc::CallResult::Success(true))
    )
}

/// Waits (in paused time: lets the runtime advance) until `cond` holds.
async fn eventually(mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached");
}

#[tokio::test(start_paused = true)]
async fn a_child_without_intensity_limit_is_restarted_forever() {
    let (sup, _join, slot, health) = start("restart-forever", None).await;
    for round in 1..=30u64 {
        let before = slot.get().expect("running").get_id();
        assert!(kill(&sup).await, "round {round}: kill accepted");
        eventually(|| slot.get().is_some_and(|a| a.get_id() != before)).await;
        let row = health.get("worker").expect("registered");
        assert_eq!(row.restarts, round);
        assert_eq!(row.state, ActorState::Running);
        assert!(row
            .last_failure
            .expect("failure recorded")
            .reason
            .contains("killed"));
    }
    assert_eq!(health.escalation(), None);
    sup.stop(None);
}

#[tokio::test(start_paused = true)]
async fn the_slot_is_empty_while_the_child_backs_off() {
    let (sup, _join, slot, health) = start("backoff-gap", None).await;
    // Many quick failures push the backoff ceiling up to the cap, so some delay is long.
    for _ in 0..8 {
        let before = slot.get().expect("running").get_id();
        kill(&sup).await;
        eventually(|| slot.get().is_some_and(|a| a.get_id() != before)).await;
    }
    kill(&sup).await;
    tokio::task::yield_now().await;
    eventually(|| slot.get().is_none()).await;
    // Cleared slot and backoff state are set in the same handler, before any restart.
    assert!(matches!(
        health.get("worker").expect("row").state,
        ActorState::BackingOff { .. }
    ));
    eventually(|| slot.get().is_some()).await;
    sup.stop(None);
}

#[tokio::test(start_paused = true)]
async fn exceeding_the_restart_intensity_stops_the_tree() {
    let limit = Intensity {
        max_restarts: 3,
        within: Duration::from_secs(600),
    };
    let (sup, join, slot, health) = start("escalate", Some(limit)).await;
    for _ in 0..3 {
        let before = slot.get().expect("running").get_id();
        kill(&sup).await;
        eventually(|| slot.get().is_some_and(|a| a.get_id() != before)).await;
    }
    kill(&sup).await;
    tokio::time::timeout(Duration::from_secs(60), join)
        .await
        .expect("the supervisor stops")
        .expect("joins");
    let why = health.escalation().expect("escalation recorded");
    assert!(why.contains("worker"), "{why}");
    assert_eq!(
        health.get("worker").expect("row").state,
        ActorState::Stopped
    );
}
