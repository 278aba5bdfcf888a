//! Health's view of Redis, over its own connection: a slow or broken health check never
//! shares a connection or a queue with ingestion.
//!
//! The same connection serves reads, `?wait=` and the dead-letter endpoints. It is checked
//! (one `PING`) each time it is handed out and replaced when dead, so that after a Redis
//! restart the next request, whichever it is, gets a live connection on its first try.
//!
//! Redis' status is read at most once per [`STATUS_TTL`], by one caller at a time
//! (`single_flight.rs`): a burst of `/health`, `/health/ready` and `/metrics` requests is
//! one read. The read transfers no entry body: the oldest entries' ids (their age) come
//! from a script that sends back the ids only (`oldest_ids.lua`).

use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use ops_db_actors::overlay::{oldest_ids, Keys};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use utoipa::ToSchema;

use crate::redis_access::{self, RedisAccess};
use crate::single_flight::SingleFlight;

/// How long a status read serves the callers after it.
pub const STATUS_TTL: Duration = Duration::from_millis(250);

pub struct RedisProbe {
    client: redis::Client,
    /// The shared connection and its generation: of several requests that found the same
    /// connection dead, only the first replaces it.
    conn: Mutex<Option<(u64, MultiplexedConnection)>>,
    keys: Keys,
    timeout: Duration,
    /// The last status read, which `/metrics` exports.
    last: LastStatus,
    /// The status reads, one at a time, reused for [`STATUS_TTL`].
    cached: SingleFlight<RedisStatus>,
    /// `redis.url`, for [`RedisProbe::access`].
    url: String,
    /// How the service reaches Redis, read at most once per [`ACCESS_TTL`].
    access: SingleFlight<Option<RedisAccess>>,
}

/// How long a read of [`RedisAccess`] serves: Redis' ACL rarely changes, and each read
/// opens a connection.
pub const ACCESS_TTL: Duration = Duration::from_secs(60);

/// Whether acknowledged writes survive a Redis crash or power loss, and are never evicted
/// (`/health`'s `redis_durability`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[schema(as = RedisDurability)]
pub struct Durability {
    pub appendonly: Option<String>,
    pub appendfsync: Option<String>,
    pub maxmemory_policy: Option<String>,
    pub no_appendfsync_on_rewrite: Option<String>,
    /// `appendonly yes`, `appendfsync always`, `no-appendfsync-on-rewrite no` and
    /// `maxmemory-policy noeviction`: every acknowledged write is on disk and stays in Redis
    /// until the forwarder has settled it.
    pub durable: bool,
    /// What is wrong, for operators; empty when durable.
    pub problems: Vec<String>,
}

impl Durability {
    /// Redis did not answer: nothing is known, nothing is claimed.
    pub fn unknown() -> Self {
        Self {
            appendonly: None,
            appendfsync: None,
            maxmemory_policy: None,
            no_appendfsync_on_rewrite: None,
            durable: false,
            problems: vec!["redis did not answer".to_owned()],
        }
    }

    /// Judges the four settings; an unknown one (CONFIG renamed away) counts as wrong.
    pub fn judge(
        appendonly: Option<String>,
        appendfsync: Option<String>,
        maxmemory_policy: Option<String>,
        no_appendfsync_on_rewrite: Option<String>,
    ) -> Self {
        // In the order of REQUIRED.
        let values = [
            appendonly.as_deref(),
            appendfsync.as_deref(),
            no_appendfsync_on_rewrite.as_deref(),
            maxmemory_policy.as_deref(),
        ];
        let problems: Vec<String> = REQUIRED
            .iter()
            .zip(values)
            .filter(|(required, value)| *value != Some(required.value))
            .map(|(required, _)| required.problem.to_owned())
            .collect();
        Self {
            appendonly,
            appendfsync,
            maxmemory_policy,
            no_appendfsync_on_rewrite,
            durable: problems.is_empty(),
            problems,
        }
    }
}

/// A Redis setting that acknowledged writes rely on.
pub struct Required {
    pub setting: &'static str,
    pub value: &'static str,
    /// What goes wrong otherwise, for `/health`'s `redis_durability.problems`.
    pub problem: &'static str,
}

/// The settings `/health` checks Redis for (`CONFIG GET`): every acknowledged write is on
/// disk and stays in Redis until the forwarder has settled it. The packaged Redis snippet
/// (`packaging/redis/ops-db-api.conf`) sets each of them; a dev kit test checks it.
pub const REQUIRED: [Required; 4] = [
    Required {
        setting: "appendonly",
        value: "yes",
        problem: "appendonly is not yes: acknowledged writes are lost when Redis restarts",
    },
    Required {
        setting: "appendfsync",
        value: "always",
        problem: "appendfsync is not always: acknowledged writes may be lost in a crash",
    },
    Required {
        setting: "no-appendfsync-on-rewrite",
        value: "no",
        problem:
            "no-appendfsync-on-rewrite is not no: writes during an AOF rewrite are not fsynced",
    },
    Required {
        setting: "maxmemory-policy",
        value: "noeviction",
        problem: "maxmemory-policy is not noeviction: Redis may evict buffered transactions",
    },
];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RedisStatus {
    pub reachable: bool,
    pub durability: Durability,
    /// Transactions buffered and not yet forwarded.
    pub buffered: Option<u64>,
    pub dead_letters: Option<u64>,
    /// Age of the oldest transaction not yet forwarded (from its stream id's time).
    pub oldest_unforwarded_secs: Option<f64>,
    /// The resend window: entries, bytes counted, when its oldest entry was settled (ms).
    pub window: Option<(u64, u64, Option<i64>)>,
    /// Age of the oldest large write being staged (0 when none is). One older than
    /// `STAGING_ABANDONED` was left behind, and the buffer's sweep aborts it.
    pub oldest_staging_secs: Option<f64>,
}

impl RedisProbe {
    pub fn new(url: &str, keys: Keys, timeout: Duration) -> RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: Mutex::new(None),
            keys,
            timeout,
            last: LastStatus::default(),
            cached: SingleFlight::new(STATUS_TTL),
            url: url.to_owned(),
            access: SingleFlight::new(ACCESS_TTL),
        })
    }

    /// How the service reaches Redis and whether Redis answers without credentials
    /// (`redis_access`), read now unless a read finished within [`ACCESS_TTL`]; `None`
    /// when `redis.url` cannot be read as an address (never after startup's check).
    pub async fn access(&self) -> Option<RedisAccess> {
        self.access
            .get(|| async { redis_access::probe(&self.url, self.timeout).await.ok() })
            .await
    }

    /// Registers `opsdb_redis_up`, `opsdb_buffer_transactions`,
    /// `opsdb_oldest_unforwarded_seconds` and `opsdb_oldest_staging_seconds`: the last
    /// [`RedisProbe::status`] read, so a scrape reads the status first.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.last.clone()));
    }

    /// Redis' status, read now unless a read finished within [`STATUS_TTL`] (and kept for
    /// `/metrics`).
    pub async fn status(&self) -> RedisStatus {
        self.cached
            .get(|| async {
                let status = self.read_status().await;
                *self.last.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(status.clone());
                status
            })
            .await
    }

    async fn read_status(&self) -> RedisStatus {
        match tokio::time::timeout(self.timeout, self.query()).await {
            Ok(Ok(status)) => status,
            // No reset here: the next `conn` finds the connection dead and replaces it.
            _ => RedisStatus {
                reachable: false,
                durability: Durability::unknown(),
                buffered: None,
                dead_letters: None,
                oldest_unforwarded_secs: None,
                window: None,
                oldest_staging_secs: None,
            },
        }
    }

    /// A live connection for reads, `?wait=` and dead letters: not the ingest path's.
    pub async fn conn(&self) -> RedisResult<MultiplexedConnection> {
        let cached = self.conn.lock().await.clone();
        let stale = match cached {
            Some((generation, mut conn)) => {
                // The lock is not held across the round trip: requests share the check.
                let ping = redis::cmd("PING");
                let ping = ping.query_async::<()>(&mut conn);
                match tokio::time::timeout(self.timeout, ping).await {
                    Ok(Ok(())) => return Ok(conn),
                    _ => Some(generation),
                }
            }
            None => None,
        };
        self.replace(stale).await
    }

    /// Connects anew, unless another request already replaced the `stale` generation.
    async fn replace(&self, stale: Option<u64>) -> RedisResult<MultiplexedConnection> {
        let mut guard = self.conn.lock().await;
        let generation = match guard.as_ref() {
            Some((current, conn)) if Some(*current) != stale => return Ok(conn.clone()),
            Some((current, _)) => current + 1,
            None => 0,
        };
        let conn =
            ops_db_actors::redis_conn::open(&self.client, "http", self.timeout, self.timeout)
                .await?;
        *guard = Some((generation, conn.clone()));
        Ok(conn)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn query(&self) -> RedisResult<RedisStatus> {
        let mut conn = self.conn().await?;
        let conn = &mut conn;
        let mut pipe = redis::pipe();
        pipe.ignore_errors()
            .cmd("PING")
            .cmd("XLEN")
            .arg(self.keys.stream())
            .cmd("XLEN")
            .arg(self.keys.dead_letters());
        for required in &REQUIRED {
            pipe.cmd("CONFIG").arg("GET").arg(required.setting);
        }
        pipe.cmd("XLEN")
            .arg(self.keys.sent())
            .cmd("GET")
            .arg(self.keys.sent_bytes())
            .cmd("ZRANGE")
            .arg(self.keys.staging())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES");
        let replies: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
        let mut replies = replies.into_iter();
        let mut next = || replies.next().and_then(Result::ok);
        let _ping = next();
        let buffered = next().and_then(|v| redis::from_redis_value::<u64>(v).ok());
        let dead_letters = next().and_then(|v| redis::from_redis_value::<u64>(v).ok());
        // CONFIG may be renamed away on a hardened server: then durability is unknown.
        let config = |v: Option<Value>| {
            v.and_then(|v| redis::from_redis_value::<Vec<String>>(v).ok())
                .and_then(|pair| pair.into_iter().nth(1))
        };
        // In the order of REQUIRED.
        let appendonly = config(next());
        let appendfsync = config(next());
        let no_appendfsync_on_rewrite = config(next());
        let maxmemory_policy = config(next());
        let window_len = next().and_then(|v| redis::from_redis_value::<u64>(v).ok());
        let window_bytes = next().and_then(|v| redis::from_redis_value::<Option<u64>>(v).ok());
        // The score is when the staging began (ms).
        let staging = next().and_then(|v| redis::from_redis_value::<Vec<(String, f64)>>(v).ok());
        let now_ms = chrono::Utc::now().timestamp_millis();
        let age = |ms: i64| ((now_ms - ms).max(0)) as f64 / 1000.0;
        let oldest_staging_secs =
            staging.map(|s| s.first().map_or(0.0, |(_, began)| age(*began as i64)));
        // A Redis that refuses the script still reports the rest.
        let (oldest, window_oldest) = oldest_ids(conn, &self.keys).await.unwrap_or_default();
        let (oldest, window_oldest) = (id_ms(oldest), id_ms(window_oldest));
        let oldest_unforwarded_secs = match (buffered, oldest) {
            (Some(0), _) => Some(0.0),
            (_, Some(ms)) => Some(age(ms)),
            _ => None,
        };
        Ok(RedisStatus {
            reachable: true,
            durability: Durability::judge(
                appendonly,
                appendfsync,
                maxmemory_policy,
                no_appendfsync_on_rewrite,
            ),
            buffered,
            dead_letters,
            oldest_unforwarded_secs,
            window: window_len.map(|n| (n, window_bytes.flatten().unwrap_or(0), window_oldest)),
            oldest_staging_secs,
        })
    }
}

/// The milliseconds of a stream id (`<ms>-<seq>`).
fn id_ms(id: Option<String>) -> Option<i64> {
    id?.split('-').next()?.parse().ok()
}

/// The last status read, as metrics. A value Redis did not give (it was down) is left out
/// rather than repeated from an earlier read: its metric has a `# TYPE` line and no sample.
#[derive(Debug, Default, Clone)]
struct LastStatus(Arc<SyncMutex<Option<RedisStatus>>>);

impl Collector for LastStatus {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let last = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let last = last.as_ref();
        let up = last.is_some_and(|s| s.reachable);
        let metric = encoder.encode_descriptor(
            "opsdb_redis_up",
            "Whether Redis answered.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(up)).encode(metric)?;
        let metric = encoder.encode_descriptor(
            "opsdb_buffer_transactions",
            "Transactions buffered and not yet forwarded.",
            None,
            MetricType::Gauge,
        )?;
        if let Some(n) = last.and_then(|s| s.buffered) {
            ConstGauge::new(n).encode(metric)?;
        }
        let metric = encoder.encode_descriptor(
            "opsdb_oldest_unforwarded",
            "Age of the oldest transaction not yet forwarded.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        if let Some(age) = last.and_then(|s| s.oldest_unforwarded_secs) {
            ConstGauge::new(age).encode(metric)?;
        }
        let metric = encoder.encode_descriptor(
            "opsdb_oldest_staging",
            "Age of the oldest large write being staged (0 when none is).",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        if let Some(age) = last.and_then(|s| s.oldest_staging_secs) {
            ConstGauge::new(age).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(last: Option<RedisStatus>) -> String {
        let metrics = LastStatus::default();
        *metrics.0.lock().unwrap() = last;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(metrics));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn durability_needs_all_four_settings_and_names_each_problem() {
        let some = |v: &str| Some(v.to_owned());
        let good = Durability::judge(some("yes"), some("always"), some("noeviction"), some("no"));
        assert!(good.durable && good.problems.is_empty());
        let lru = Durability::judge(some("yes"), some("always"), some("allkeys-lru"), some("no"));
        assert!(!lru.durable);
        assert_eq!(lru.problems.len(), 1);
        assert!(lru.problems[0].starts_with("maxmemory-policy"));
        let rewrite =
            Durability::judge(some("yes"), some("always"), some("noeviction"), some("yes"));
        assert!(!rewrite.durable);
        assert!(rewrite.problems[0].starts_with("no-appendfsync-on-rewrite"));
        let hidden = Durability::judge(None, None, None, None);
        assert_eq!(
            hidden.problems.len(),
            4,
            "CONFIG renamed away: nothing is vouched for"
        );
    }

    #[test]
    fn values_redis_did_not_give_are_left_out_not_repeated() {
        let up = scrape(Some(RedisStatus {
            reachable: true,
            durability: Durability::judge(
                Some("yes".into()),
                Some("always".into()),
                Some("noeviction".into()),
                Some("no".into()),
            ),
            buffered: Some(3),
            dead_letters: Some(0),
            oldest_unforwarded_secs: Some(1.5),
            window: None,
            oldest_staging_secs: Some(0.25),
        }));
        for line in [
            "opsdb_redis_up 1",
            "opsdb_buffer_transactions 3",
            "opsdb_oldest_unforwarded_seconds 1.5",
            "opsdb_oldest_staging_seconds 0.25",
        ] {
            assert!(up.lines().any(|l| l == line), "{line} in\n{up}");
        }
        // Before the first read, or while Redis is down: down, and no stale values.
        let down = scrape(None);
        assert!(down.lines().any(|l| l == "opsdb_redis_up 0"), "{down}");
        for name in [
            "opsdb_buffer_transactions",
            "opsdb_oldest_unforwarded_seconds",
        ] {
            assert!(down.contains(&format!("# TYPE {name} gauge")), "{down}");
            assert!(!down.contains(&format!("\n{name} ")), "{down}");
        }
    }
}
