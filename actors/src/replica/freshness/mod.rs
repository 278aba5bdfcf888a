//! The replica's freshness while nobody writes: read from the replica itself, not from
//! the service's own writes.
//!
//! At most every [`OBSERVE_EVERY`] the replica tracker runs one query ([`query`]): the age
//! of the last replayed commit, the WAL receiver, the WAL received but not replayed, and
//! this site's heartbeat row (`<schema>.heartbeat`, written on the primary through the
//! forwarder: `forwarder/heartbeat.rs`) as replayed. [`verdict`] makes of it `fresh` or
//! `stale` with a [`Reason`].
//!
//! Guarantees:
//! - **never fresh on old news**: `/health` and `/metrics` age the last observation by the
//!   time since it was made, and once that exceeds `replica.max_staleness` (the tracker is
//!   down, or its freshness query fails) the verdict is `stale` (`unobserved`);
//! - **events on transitions only**: `replica.stale` when a read by the tracker finds the
//!   replica stale after it was fresh (or at the first read), `replica.fresh` when it
//!   recovers; a tracker that cannot read the replica says so by its own events
//!   (`actor.failed`), not by these;
//! - **never in the way of marking**: a freshness query the replica refuses (the heartbeat
//!   table missing before `migrate`, say) is logged and kept in `last_error`; only a
//!   timeout or a broken connection fails the tracker, as its other queries do.

mod metrics;
mod query;
mod verdict;

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

pub use verdict::{verdict, Observation, Reason, Receiver, Rules, Verdict};

use crate::events::EventSink;
use crate::replica::ReplicaError;

/// How often the tracker reads the replica's freshness (its poll is faster: 100 ms).
pub const OBSERVE_EVERY: Duration = Duration::from_secs(1);

/// What the tracker needs to read freshness: part of its config.
#[derive(Debug, Clone)]
pub struct FreshnessConfig {
    /// The service's schema (`schema.name`, a validated identifier): the heartbeat table's.
    pub schema: String,
    /// This site's name: its heartbeat row.
    pub site: String,
    /// `replica.max_staleness`.
    pub max_staleness: Duration,
    /// Whether a forwarder writes heartbeats (a primary configured and
    /// `forwarder.heartbeat_interval` > 0).
    pub heartbeat: bool,
}

impl FreshnessConfig {
    pub fn rules(&self) -> Rules {
        Rules {
            max_staleness: self.max_staleness.as_secs_f64(),
            heartbeat: self.heartbeat,
        }
    }
}

/// `/health`'s `replica.freshness`: the verdict and what it was made of, as of now.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FreshnessView {
    /// `fresh` or `stale`.
    pub verdict: String,
    /// Why stale; `null` while fresh.
    pub reason: Option<Reason>,
    /// `replica`, or `primary` when the read source is one (the main site: always fresh).
    pub source: Option<String>,
    /// Seconds since the commit of the last transaction the replica replayed.
    pub replay_age_secs: Option<f64>,
    /// Seconds since this site's heartbeat as the replica has replayed it.
    pub heartbeat_age_secs: Option<f64>,
    pub replay_paused: bool,
    /// The WAL receiver's status (`streaming`, ...); `null` without a receiver, `hidden`
    /// when the role lacks `pg_read_all_stats`.
    pub receiver_status: Option<String>,
    /// Seconds since the receiver last heard from the primary.
    pub receiver_last_msg_age_secs: Option<f64>,
    pub receiver_timeline: Option<i32>,
    /// WAL received and not yet replayed.
    pub unreplayed_bytes: Option<u64>,
    pub max_staleness_secs: f64,
    /// Seconds since the tracker last read the replica's freshness (`null`: never).
    pub observed_secs_ago: Option<f64>,
    /// The last freshness query's error, until one succeeds.
    pub last_error: Option<String>,
}

/// The tracker's last reading, shared with `/health` and `/metrics` (in `ReplicaMetrics`).
#[derive(Debug)]
pub struct Freshness {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Set by the tracker at its start; `None`: no view yet.
    rules: Option<Rules>,
    /// When the freshness was first asked for: what `unobserved` is measured from before
    /// any reading.
    since: Instant,
    observed: Option<(Instant, Observation)>,
    last_error: Option<String>,
    /// The last verdict announced by an event.
    announced: Option<Verdict>,
}

impl Default for Freshness {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                rules: None,
                since: Instant::now(),
                observed: None,
                last_error: None,
                announced: None,
            }),
        }
    }
}

impl Freshness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned lock still holds a whole value.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the tracker at its start (again at each restart, same rules).
    pub fn configure(&self, rules: Rules) {
        self.lock().rules = Some(rules);
    }

    /// The tracker's step: reads the replica's freshness if [`OBSERVE_EVERY`] has passed,
    /// records it and announces a change of verdict. Fails only on what would fail the
    /// tracker's other queries (timeout, connection); an error the replica answered with is
    /// kept in `last_error`.
    pub async fn observe(
        &self,
        pg: &mut sqlx::postgres::PgConnection,
        config: &FreshnessConfig,
        timeout: Duration,
        events: &EventSink,
    ) -> Result<(), ReplicaError> {
        let due = self
            .lock()
            .observed
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= OBSERVE_EVERY);
        if !due {
            return Ok(());
        }
        match query::observe(pg, &config.schema, &config.site, timeout).await {
            Ok(observation) => {
                self.record(observation, config.rules(), events);
                Ok(())
            }
            Err(ReplicaError::Database(sqlx::Error::Database(e))) => {
                tracing::warn!(error = %e, "the replica's freshness could not be read");
                self.lock().last_error = Some(format!("replica: {e}"));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn record(&self, observation: Observation, rules: Rules, events: &EventSink) {
        let now = verdict(&observation, rules);
        let mut inner = self.lock();
        inner.rules = Some(rules);
        inner.last_error = None;
        inner.observed = Some((Instant::now(), observation));
        let was = inner.announced.replace(now);
        let view = view_of(&inner, Instant::now());
        drop(inner);
        let changed = match was {
            None => now.is_stale(),
            Some(was) => was.is_stale() != now.is_stale(),
        };
        if changed {
            let kind = format!("replica.{}", now.name());
            events.emit(&kind, serde_json::to_value(view).unwrap_or_default());
        }
    }

    /// The freshness as of now; `None` before the tracker started.
    pub fn view(&self) -> Option<FreshnessView> {
        let inner = self.lock();
        inner.rules?;
        view_of(&inner, Instant::now())
    }

    /// Whether `/health` should say `degraded`: stale as of now.
    pub fn is_stale(&self) -> bool {
        self.view().is_some_and(|v| v.reason.is_some())
    }
}

fn view_of(inner: &Inner, now: Instant) -> Option<FreshnessView> {
    let rules = inner.rules?;
    let since = |at: Instant| now.saturating_duration_since(at).as_secs_f64();
    let unobserved = |o: Option<&Observation>, ago: Option<f64>| FreshnessView {
        verdict: "stale".into(),
        reason: Some(Reason::Unobserved),
        observed_secs_ago: ago,
        ..describe(o, rules, inner)
    };
    let Some((at, observation)) = &inner.observed else {
        return Some(if since(inner.since) > rules.max_staleness {
            unobserved(None, None)
        } else {
            describe(None, rules, inner)
        });
    };
    let ago = since(*at);
    let aged = observation.aged(ago);
    if ago > rules.max_staleness && observation.in_recovery {
        return Some(unobserved(Some(&aged), Some(ago)));
    }
    let v = verdict(&aged, rules);
    Some(FreshnessView {
        verdict: v.name().into(),
        reason: v.reason(),
        observed_secs_ago: Some(ago),
        ..describe(Some(&aged), rules, inner)
    })
}

/// The view's fields from an observation (fresh until the caller says otherwise).
fn describe(o: Option<&Observation>, rules: Rules, inner: &Inner) -> FreshnessView {
    let receiver = o.and_then(|o| o.receiver.as_ref());
    FreshnessView {
        verdict: "fresh".into(),
        reason: None,
        source: o.map(|o| if o.in_recovery { "replica" } else { "primary" }.into()),
        replay_age_secs: o.and_then(|o| o.replay_age),
        heartbeat_age_secs: o.and_then(|o| o.heartbeat_age),
        replay_paused: o.is_some_and(|o| o.replay_paused),
        receiver_status: receiver.map(|r| r.status.clone().unwrap_or_else(|| "hidden".into())),
        receiver_last_msg_age_secs: receiver.and_then(|r| r.last_msg_age),
        receiver_timeline: receiver.and_then(|r| r.timeline),
        unreplayed_bytes: o.and_then(|o| o.unreplayed_bytes),
        max_staleness_secs: rules.max_staleness,
        observed_secs_ago: None,
        last_error: inner.last_error.clone(),
    }
}

#[cfg(test)]
mod tests;
