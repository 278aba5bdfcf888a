//! ReplicaLagActor: knows, by LSN, when each forwarded transaction is visible locally.
//!
//! Every `poll_interval` it reads the local replica's replay position
//! (`pg_last_wal_replay_lsn()`; on the main site, where the "replica" is the primary
//! itself, `pg_current_wal_lsn()`), moves every forwarded transaction whose commit LSN is at
//! or below it to `replicated` in one sorted-set range query, and removes the overlay
//! records whose latest writer it was. It also reports the replica's lag.
//!
//! A replica that is down or not a streaming standby fails the actor; the supervisor
//! restarts it with backoff, cut short by [`probe`] (`reach.rs`) as soon as the replica
//! answers again, so marking resumes within about a second of that whatever the backoff
//! has grown to. Ingest and forwarding are not touched: lifecycles simply stay
//! `forwarded` until the replica catches up.
//!
//! Freshness while nobody writes (`freshness/`): at most every second the same poll reads
//! from the replica itself how old its last replayed commit and this site's heartbeat are,
//! and whether its WAL receiver streams.

pub mod confirm;
mod error;
pub mod freshness;
mod reach;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use redis::aio::MultiplexedConnection;
use sqlx::postgres::PgConnection;
use sqlx::ConnectOptions;

pub use error::ReplicaError;
pub use freshness::{Freshness, FreshnessConfig, FreshnessView};
pub use reach::{probe, PROBE_EVERY};

use crate::history::{History, Side};
use crate::lsn::Lsn;
use crate::overlay::Keys;
use crate::pg::PgTarget;

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The read source: the replica, or on the main site the primary.
    pub source: PgTarget,
    pub redis_url: String,
    pub keys: Keys,
    /// The service's schema (`schema.name`): where the ledger is.
    pub schema: String,
    /// How often it polls while nothing is forwarded and not yet replicated.
    pub poll_interval: Duration,
    /// How often it polls while something is (how soon a replayed commit is seen).
    pub fast_poll_interval: Duration,
    pub connect_timeout: Duration,
    pub redis_timeout: Duration,
    /// How long a replicated transaction's lifecycle stays in Redis.
    pub retention: Duration,
    /// How often `confirm::audit` looks at the newest confirmed transactions again.
    pub audit_interval: Duration,
    /// What the freshness read needs (heartbeat table, site, `max_staleness`).
    pub freshness: FreshnessConfig,
}

/// What `/health` and `/metrics` report (see [`ReplicaMetrics::register`]); written by the
/// actor only.
#[derive(Debug, Default)]
pub struct ReplicaMetrics {
    /// The last replay position read (0 before the first). Not exported: a WAL position is
    /// shown in `/health`, not graphed.
    pub replay_lsn: AtomicU64,
    /// Bytes of WAL between the newest forwarded commit still waiting and the replay
    /// position (0 when nothing waits).
    pub lag_bytes: Gauge<u64, AtomicU64>,
    /// Seconds (to the millisecond) since the oldest transaction still waiting was
    /// forwarded (0 when nothing waits).
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub marked: Counter,
    /// Polls made. Not exported: tests wait on it.
    pub polls: AtomicU64,
    /// The replica's freshness (`/health`'s `replica.freshness`, its own metrics).
    pub freshness: Arc<Freshness>,
}

impl ReplicaMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "opsdb_replica_lag",
            "WAL bytes between the newest forwarded commit and the replica's replay position",
            Unit::Bytes,
            self.lag_bytes.clone(),
        );
        registry.register_with_unit(
            "opsdb_replica_lag",
            "Age of the oldest forwarded transaction not yet seen replicated",
            Unit::Seconds,
            self.lag_seconds.clone(),
        );
        registry.register(
            "opsdb_replicated",
            "Transactions seen replicated",
            self.marked.clone(),
        );
        self.freshness.register(registry);
    }
}

#[derive(Clone)]
pub struct ReplicaLagActor;

#[derive(Clone)]
pub struct ReplicaArgs {
    pub config: Arc<ReplicaConfig>,
    pub metrics: Arc<ReplicaMetrics>,
    /// `tx.replicated`, one per bounded step; `history.*`.
    pub events: Arc<crate::events::EventSink>,
    /// The replica's identity and the ledger gaps (`/health`'s `history`).
    pub history: Arc<History>,
    /// The forwarder's word that transactions wait: ends a slow-pace sleep.
    pub forwarded: Arc<tokio::sync::Notify>,
}

pub struct ReplicaState {
    args: ReplicaArgs,
    pg: Option<PgConnection>,
    redis: Option<MultiplexedConnection>,
    /// When the window was last audited (`confirm::audit`); `None`: at the next poll.
    audited: Option<std::time::Instant>,
    pace: Pace,
}

/// The pace of the polls: the replay position and the newest forwarded commit the last
/// poll saw, and when either last moved (or a poll marked something). The fast pace lasts
/// only while something moves.
#[derive(Debug)]
struct Pace {
    last: Option<(Lsn, Option<u64>)>,
    moved_at: std::time::Instant,
}

/// How long the tracker keeps its fast pace without progress (no replay, no new forward,
/// nothing marked): a replica that does not replay, or transactions its ledger lacks after
/// a restore, do not keep it polling every few milliseconds. The forwarder's next batch
/// brings the fast pace back.
const FAST_WITHOUT_PROGRESS: Duration = Duration::from_secs(1);

/// What a poll saw, for the pace of the next.
struct Seen {
    replay: Lsn,
    /// The newest forwarded transaction's commit position (its score), if any.
    newest: Option<u64>,
    marked: u64,
}

impl Pace {
    fn new(now: std::time::Instant) -> Self {
        Self {
            last: None,
            moved_at: now,
        }
    }

    /// Whether the poll after `seen` (at `now`) comes at the fast pace: transactions wait
    /// for the replay (or this poll marked some, and more may be due), and something
    /// moved within [`FAST_WITHOUT_PROGRESS`].
    fn fast(&mut self, seen: &Seen, now: std::time::Instant) -> bool {
        let position = (seen.replay, seen.newest);
        if self.last != Some(position) || seen.marked > 0 {
            self.moved_at = now;
        }
        self.last = Some(position);
        let waiting = seen.newest.is_some_and(|n| n > seen.replay.0) || seen.marked > 0;
        waiting && now.duration_since(self.moved_at) < FAST_WITHOUT_PROGRESS
    }
}

pub enum ReplicaMsg {
    Poll,
}

impl Actor for ReplicaLagActor {
    type Msg = ReplicaMsg;
    type State = ReplicaState;
    type Arguments = ReplicaArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ReplicaArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Connections are made in the first poll: a replica down at boot is an ordinary
        // crash-and-back-off, not a failure to start the tree. That poll comes at once, not
        // a poll interval later: a restart cut short by the heal probe marks without delay.
        // Each poll then schedules the next (one chain: nothing else sends `Poll`).
        myself.cast(ReplicaMsg::Poll)?;
        args.metrics
            .freshness
            .configure(args.config.freshness.rules());
        Ok(ReplicaState {
            args,
            pg: None,
            redis: None,
            audited: None,
            pace: Pace::new(std::time::Instant::now()),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            // An error fails the actor, on purpose: see `ReplicaError`. The next poll
            // comes soon while transactions wait for the replay and something moves;
            // otherwise at the slow pace, or as soon as the forwarder says it forwarded
            // some. Each poll schedules exactly one next (a dead actor's is dropped).
            ReplicaMsg::Poll => {
                let seen = poll(state).await.map_err(ActorProcessingErr::from)?;
                let fast = state.pace.fast(&seen, std::time::Instant::now());
                let config = &state.args.config;
                if fast {
                    myself.send_after(config.fast_poll_interval, || ReplicaMsg::Poll);
                } else {
                    let (pace, forwarded) =
                        (config.poll_interval, Arc::clone(&state.args.forwarded));
                    tokio::spawn(async move {
                        tokio::select! {
                            () = tokio::time::sleep(pace) => {}
                            () = forwarded.notified() => {}
                        }
                        let _ = myself.cast(ReplicaMsg::Poll);
                    });
                }
                Ok(())
            }
        }
    }
}

async fn connect(
    config: &ReplicaConfig,
) -> Result<(PgConnection, MultiplexedConnection), ReplicaError> {
    let options = config.source.options()?;
    let options = options
        .application_name("ops-db-api replica tracker")
        .log_statements(tracing::log::LevelFilter::Trace);
    let pg = tokio::time::timeout(config.connect_timeout, options.connect())
        .await
        .map_err(|_| ReplicaError::ConnectTimeout(config.connect_timeout))??;
    let timeout = config.redis_timeout;
    let redis = crate::redis_conn::open_url(&config.redis_url, "replica", timeout, timeout).await?;
    Ok((pg, redis))
}

/// The replica's replay position; when the read source is a primary (the main site's,
/// through either URL), its WAL position: visibility then follows the commit.
async fn replay_position(
    pg: &mut PgConnection,
    config: &ReplicaConfig,
) -> Result<Lsn, ReplicaError> {
    let sql = "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
               ELSE pg_current_wal_lsn() END)::text";
    let query = sqlx::query_scalar::<_, Option<String>>(sql).fetch_one(pg);
    let lsn = tokio::time::timeout(config.connect_timeout, query)
        .await
        .map_err(|_| ReplicaError::QueryTimeout(config.connect_timeout))??
        .ok_or(ReplicaError::NothingReplayed)?;
    Ok(lsn.parse()?)
}

/// One poll; what it saw, for the pace of the next.
async fn poll(state: &mut ReplicaState) -> Result<Seen, ReplicaError> {
    let config = Arc::clone(&state.args.config);
    let m = Arc::clone(&state.args.metrics);
    let events = Arc::clone(&state.args.events);
    let history = Arc::clone(&state.args.history);
    let (pg, redis) = match (&mut state.pg, &mut state.redis) {
        (Some(pg), Some(redis)) => (pg, redis),
        (pg, redis) => {
            let (mut new_pg, mut new_redis) = connect(&config).await?;
            // At each connect: a replica re-cloned or re-pointed is seen at once.
            let identity = crate::history::read_identity(&mut new_pg).await?;
            history
                .record(
                    &mut new_redis,
                    &config.keys,
                    Side::Replica,
                    identity,
                    &events,
                )
                .await?;
            (pg.insert(new_pg), redis.insert(new_redis))
        }
    };
    let replay = replay_position(pg, &config).await?;
    m.replay_lsn.store(replay.0, Ordering::Relaxed);
    // At most once a second whatever the pace of the polls (`OBSERVE_EVERY`).
    let timeout = config.connect_timeout;
    (m.freshness)
        .observe(pg, &config.freshness, timeout, &events)
        .await?;
    m.polls.fetch_add(1, Ordering::Relaxed);
    let now = chrono::Utc::now().timestamp_millis();
    let found = confirm::confirm(pg, redis, &config, replay, now, &m, &events).await?;
    history.set_unconfirmed(&found.missing, &events);
    if state
        .audited
        .is_none_or(|at| at.elapsed() >= config.audit_interval)
    {
        let lost = confirm::audit(pg, redis, &config).await?;
        history.set_lost(&lost, &events);
        // Again on the same session: a standby promoted in place keeps its connections.
        let identity = crate::history::read_identity(pg).await?;
        history
            .record(redis, &config.keys, Side::Replica, identity, &events)
            .await?;
        state.audited = Some(std::time::Instant::now());
    }
    let newest = lag(redis, &config, replay, now, &m).await?;
    Ok(Seen {
        replay,
        newest,
        marked: found.marked,
    })
}

/// Lag in bytes (newest waiting commit vs replay position) and in time (oldest waiting);
/// the newest waiting commit's position (`None`: none waits).
async fn lag(
    redis: &mut MultiplexedConnection,
    config: &ReplicaConfig,
    replay: Lsn,
    now: i64,
    m: &ReplicaMetrics,
) -> Result<Option<u64>, ReplicaError> {
    let (newest, oldest): (Vec<(String, f64)>, Vec<String>) = redis::pipe()
        .cmd("ZRANGE")
        .arg(config.keys.forwarded())
        .arg(-1)
        .arg(-1)
        .arg("WITHSCORES")
        .cmd("ZRANGE")
        .arg(config.keys.forwarded())
        .arg(0)
        .arg(0)
        .query_async(redis)
        .await?;
    let newest = newest.first().map(|(_, score)| *score as u64);
    let bytes = newest.map_or(0, |score| score.saturating_sub(replay.0));
    m.lag_bytes.set(bytes);
    let since = match oldest.first() {
        Some(tx) => {
            let id = tx
                .parse()
                .map_err(|source| ReplicaError::BadTransactionId {
                    id: tx.clone(),
                    source,
                })?;
            let at: Option<i64> = redis::cmd("HGET")
                .arg(config.keys.lifecycle(id))
                .arg("forwarded_at")
                .query_async(redis)
                .await?;
            at.map_or(0, |at| (now - at).max(0))
        }
        None => 0,
    };
    m.lag_seconds.set(since as f64 / 1000.0);
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn seen(replay: u64, newest: Option<u64>, marked: u64) -> Seen {
        Seen {
            replay: Lsn(replay),
            newest,
            marked,
        }
    }

    #[test]
    fn fast_while_transactions_wait_for_a_replay_that_moves_slow_at_rest() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        assert!(
            !pace.fast(&seen(100, None, 0), t0),
            "nothing forwarded: rest"
        );
        // A forward: its commit is ahead of the replay.
        assert!(pace.fast(&seen(100, Some(200), 0), t0));
        let t1 = t0 + Duration::from_millis(5);
        assert!(pace.fast(&seen(150, Some(200), 0), t1), "the replay moves");
        // Replayed and marked: the poll after looks again (more may be due).
        assert!(pace.fast(&seen(200, Some(200), 3), t1));
        assert!(!pace.fast(&seen(200, None, 0), t1), "nothing waits: rest");
    }

    #[test]
    fn a_replay_that_does_not_move_or_a_ledger_that_lacks_them_ends_the_fast_pace() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        assert!(pace.fast(&seen(100, Some(200), 0), t0));
        let stuck = t0 + FAST_WITHOUT_PROGRESS / 2;
        assert!(
            pace.fast(&seen(100, Some(200), 0), stuck),
            "not for long yet"
        );
        let later = t0 + FAST_WITHOUT_PROGRESS;
        assert!(
            !pace.fast(&seen(100, Some(200), 0), later),
            "a stalled replay: rest"
        );
        // Due by position but never marked (the ledger lacks them): rest.
        assert!(!pace.fast(&seen(300, Some(200), 0), later + FAST_WITHOUT_PROGRESS));
        // The forwarder's next batch moves the newest commit: fast again.
        let next = later + FAST_WITHOUT_PROGRESS * 3;
        assert!(pace.fast(&seen(300, Some(400), 0), next));
    }
}
