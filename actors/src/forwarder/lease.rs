//! One forwarder per site: a lease in Redis (`opsdb:{site}:forwarder:lease`, value = the
//! holder's instance id, expiring after `forwarder.lease_ttl`).
//!
//! Two services on one site's Redis (a second one started by mistake, or an old one not
//! yet stopped during an upgrade) would read the same consumer group as the same consumer
//! and settle the same entries twice. The ledger keeps the primary exact either way, but a
//! dead transaction would be dead-lettered twice. So only the lease holder forwards; the
//! other one is `standby`: it says so in `/health` and takes over when the lease expires.
//!
//! A task renews the lease every third of its TTL. It is started by the first forwarder
//! incarnation and runs until the forwarder stops cleanly (then it gives the lease up), so
//! the instance keeps the lease while its forwarder crashes and backs off (a WAN outage is
//! no reason to hand forwarding to another instance). The forwarder starts a batch only
//! while the last renewal is younger than half the TTL, and settles it only under the
//! same condition: a holder that lost Redis for longer stops before its lease can pass to
//! another instance.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::Script;
use tokio::task::JoinHandle;

use super::{connect_redis, ForwarderConfig, ForwarderMetrics};

/// Takes or renews the lease if it is free or ours; returns the holder. Flagged
/// `allow-oom` (a few bytes): over Redis' `maxmemory` the forwarder must keep its lease to
/// drain the buffer, which is what frees memory.
///
/// KEYS[1] lease; ARGV[1] our instance id, ARGV[2] TTL (ms).
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "#!lua flags=allow-oom\n\
         local holder = redis.call('GET', KEYS[1]) \
         if not holder or holder == ARGV[1] then \
           redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return ARGV[1] end \
         return holder",
    )
});

/// Gives the lease up if it is still ours (a clean stop: the standby need not wait out
/// the TTL).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end \
         return 0",
    )
});

/// What `/health` shows of the lease, shared by the forwarder's incarnations.
#[derive(Debug)]
pub struct LeaseStatus {
    /// This process's instance id.
    pub instance: String,
    inner: Mutex<Inner>,
    /// The renewal task, once started.
    renewal: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// When this instance last took or renewed the lease.
    renewed: Option<Instant>,
    /// The holder as last read (`None` before the first answer).
    holder: Option<String>,
}

impl Default for LeaseStatus {
    fn default() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".into());
        Self {
            instance: format!(
                "{host}/{}/{}",
                std::process::id(),
                uuid::Uuid::now_v7().simple()
            ),
            inner: Mutex::default(),
            renewal: Mutex::default(),
        }
    }
}

/// `active`, `standby`, or `unknown` (no answer from Redis yet, or too long ago; also
/// what a client reads for a role this build does not know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = ForwarderRole))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Active,
    Standby,
    #[serde(other)]
    Unknown,
}

impl LeaseStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this instance holds the lease, renewed within `fresh`.
    pub fn held(&self, fresh: Duration) -> bool {
        self.lock().renewed.is_some_and(|at| at.elapsed() < fresh)
    }

    pub fn role(&self, ttl: Duration) -> Role {
        let inner = self.lock();
        match &inner.holder {
            _ if inner.renewed.is_some_and(|at| at.elapsed() < ttl / 2) => Role::Active,
            Some(holder) if *holder != self.instance => Role::Standby,
            _ => Role::Unknown,
        }
    }

    pub fn holder(&self) -> Option<String> {
        self.lock().holder.clone()
    }

    fn answered(&self, holder: String, asked_at: Instant) {
        let mut inner = self.lock();
        if holder == self.instance {
            inner.renewed = Some(asked_at);
        } else {
            inner.renewed = None;
        }
        inner.holder = Some(holder);
    }
}

/// Starts the renewal task unless it runs already.
pub fn ensure_renewal(config: &Arc<ForwarderConfig>, metrics: &Arc<ForwarderMetrics>) {
    let mut renewal = metrics
        .lease
        .renewal
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if renewal.as_ref().is_some_and(|task| !task.is_finished()) {
        return;
    }
    let (config, metrics) = (Arc::clone(config), Arc::clone(metrics));
    *renewal = Some(tokio::spawn(async move {
        let status = &metrics.lease;
        let every = config.lease_ttl / 3;
        let mut conn: Option<MultiplexedConnection> = None;
        loop {
            let asked_at = Instant::now();
            match renew(&config, status, &mut conn).await {
                Ok(holder) => status.answered(holder, asked_at),
                Err(e) => {
                    conn = None;
                    tracing::debug!(error = %e, "forwarder lease: no answer from redis");
                }
            }
            tokio::time::sleep(every).await;
        }
    }));
}

async fn renew(
    config: &ForwarderConfig,
    status: &LeaseStatus,
    conn: &mut Option<MultiplexedConnection>,
) -> Result<String, super::ForwardError> {
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(connect_redis(config, "lease", config.redis_timeout).await?),
    };
    let ttl_ms = config.lease_ttl.as_millis().max(1) as u64;
    Ok(ACQUIRE
        .key(config.keys.forwarder_lease())
        .arg(&status.instance)
        .arg(ttl_ms)
        .invoke_async(conn)
        .await?)
}

/// Stops the renewal and gives the lease up if it is ours (best effort: it expires anyway).
pub async fn release(config: &ForwarderConfig, status: &LeaseStatus) {
    if let Some(task) = status
        .renewal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        task.abort();
    }
    let run = async {
        let mut conn = connect_redis(config, "lease", config.redis_timeout).await?;
        let _: i64 = RELEASE
            .key(config.keys.forwarder_lease())
            .arg(&status.instance)
            .invoke_async(&mut conn)
            .await?;
        Ok::<_, super::ForwardError>(())
    };
    if let Ok(Err(e)) = tokio::time::timeout(config.redis_timeout, run).await {
        tracing::debug!(error = %e, "forwarder lease: not released, it will expire");
    }
    status.lock().renewed = None;
}
