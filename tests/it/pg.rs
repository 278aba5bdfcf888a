//! Test harness: a PostgreSQL primary and its streaming replica of the test's own.
//!
//! Docker backend (default): two `opsdb-postgres:test` containers on a network of the
//! test's own, where the replica reaches the primary by its container name. testcontainers
//! creates that network with the first container and removes it after the last one, and
//! removes both containers when the [`TestPg`] is dropped.
//!
//! Local backend (`OPSDB_TEST_BACKEND=local`): [`LocalPostgres`] in a temporary directory;
//! the replica reaches the primary on 127.0.0.1.
//!
//! In both, each server has a fixed loopback port for the whole test, so the URLs stay
//! valid across a kill and a restart.

use std::sync::Arc;
use std::time::Duration;

use ops_db_devkit::local_pg::{LocalPostgres, PgUrl, REPLICA_SLOT};
use ops_db_devkit::ports::free_port;
use sqlx::{Connection as _, PgConnection};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::sync::Mutex;

use crate::helpers::{backend_is_local, eventually, tempdir};

const PG_IMAGE: (&str, &str) = ("opsdb-postgres", "test");
/// Printed on stdout by the image's entrypoint (postgres itself logs to stderr).
const READY: &str = "OPSDB-POSTGRES-READY";
/// The same as [`LocalPostgres`]: tests that restart the primary should not wait 5 s for
/// the replica's next attempt to reconnect.
const SERVER_ARGS: [&str; 2] = ["-c", "wal_retrieve_retry_interval=1s"];

#[allow(clippy::large_enum_variant)] // one per test, never moved around
enum Backend {
    Docker {
        primary: ContainerAsync<GenericImage>,
        replica: ContainerAsync<GenericImage>,
    },
    Local {
        // Before `dir`: fields drop in order, and the servers must stop before their
        // directory is removed.
        pg: LocalPostgres,
        _dir: tempdir::Dir,
    },
}

pub struct TestPg {
    primary_port: u16,
    replica_port: u16,
    backend: Mutex<Backend>,
}

impl TestPg {
    /// A primary with the database `opsdb` and a replica streaming from it, both ready.
    pub async fn start() -> Arc<Self> {
        Self::start_with(None).await
    }

    /// As [`TestPg::start`], both servers also accepting TLS with this certificate and key
    /// (PEM). Docker backend only.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Arc<Self> {
        Self::start_with(Some((cert_pem.to_owned(), key_pem.to_owned()))).await
    }

    async fn start_with(tls: Option<(String, String)>) -> Arc<Self> {
        let primary_port = free_port().expect("a free port");
        // Two calls may (rarely) hand out the same port.
        let replica_port = std::iter::repeat_with(|| free_port().expect("a free port"))
            .find(|&port| port != primary_port)
            .expect("a second free port");
        let backend = if backend_is_local() {
            assert!(
                tls.is_none(),
                "the TLS tests need the Docker backend (unset OPSDB_TEST_BACKEND): the local \
                 backend's servers have no certificates"
            );
            let dir = tempdir::Dir::new();
            let pg = LocalPostgres::start_on(&dir.0, primary_port, replica_port)
                .await
                .unwrap_or_else(|e| panic!("OPSDB_TEST_BACKEND=local needs PostgreSQL 15: {e:#}"));
            Backend::Local { pg, _dir: dir }
        } else {
            start_containers(primary_port, replica_port, tls).await
        };
        let pg = Arc::new(Self {
            primary_port,
            replica_port,
            backend: Mutex::new(backend),
        });
        pg.wait_ready(&pg.primary_url()).await;
        pg.wait_ready(&pg.replica_url()).await;
        pg
    }

    #[allow(dead_code)] // for tests that put a proxy or the application in front of it
    pub fn primary_port(&self) -> u16 {
        self.primary_port
    }

    pub fn primary_url(&self) -> String {
        self.primary_parts().to_string()
    }

    pub fn replica_url(&self) -> String {
        self.replica_parts().to_string()
    }

    /// The primary's URL in parts: for a test that reaches it another way (through a
    /// proxy, as another role, by another host name).
    pub fn primary_parts(&self) -> PgUrl {
        PgUrl::opsdb(self.primary_port)
    }

    /// The replica's URL in parts.
    pub fn replica_parts(&self) -> PgUrl {
        PgUrl::opsdb(self.replica_port)
    }

    pub async fn primary(&self) -> PgConnection {
        PgConnection::connect(&self.primary_url())
            .await
            .expect("connect to the test primary")
    }

    pub async fn replica(&self) -> PgConnection {
        PgConnection::connect(&self.replica_url())
            .await
            .expect("connect to the test replica")
    }

    /// Kills the primary without warning: no checkpoint, crash recovery at the restart.
    /// Docker: SIGKILL of the container. Local: an immediate shutdown (SIGQUIT), which
    /// skips the checkpoint just the same but takes the backends down with the postmaster.
    pub async fn kill_primary(&self) {
        match &mut *self.backend.lock().await {
            Backend::Docker { primary, .. } => primary
                .stop_with_timeout(Some(0))
                .await
                .expect("docker kill primary"),
            Backend::Local { pg, .. } => pg.kill_primary().await.expect("kill primary"),
        }
    }

    /// Starts the primary again (a running one is first shut down fast), same port and
    /// data; returns once it accepts connections.
    pub async fn restart_primary(&self) {
        match &mut *self.backend.lock().await {
            Backend::Docker { primary, .. } => {
                // `start` would leave a running container alone: stop it (fast) first.
                if primary.is_running().await.expect("docker inspect primary") {
                    primary
                        .stop_with_timeout(Some(30))
                        .await
                        .expect("docker stop primary");
                }
                primary.start().await.expect("docker start primary");
            }
            Backend::Local { pg, .. } => pg.restart_primary().await.expect("restart primary"),
        }
        self.wait_ready(&self.primary_url()).await;
    }

    /// Fast shutdown of the replica; the primary keeps WAL for it in its slot.
    pub async fn stop_replica(&self) {
        match &mut *self.backend.lock().await {
            Backend::Docker { replica, .. } => replica
                .stop_with_timeout(Some(30))
                .await
                .expect("docker stop replica"),
            Backend::Local { pg, .. } => pg.stop_replica().await.expect("stop replica"),
        }
    }

    pub async fn start_replica(&self) {
        match &mut *self.backend.lock().await {
            Backend::Docker { replica, .. } => replica.start().await.expect("docker start replica"),
            Backend::Local { pg, .. } => pg.start_replica().await.expect("start replica"),
        }
        self.wait_ready(&self.replica_url()).await;
    }

    /// The primary's current WAL position (`pg_lsn` as text), e.g. after a commit.
    pub async fn current_lsn(&self) -> String {
        sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut self.primary().await)
            .await
            .expect("pg_current_wal_lsn")
    }

    /// The replica's replay position, `None` if it has replayed nothing yet.
    pub async fn replay_lsn(&self) -> Option<String> {
        sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()::text")
            .fetch_one(&mut self.replica().await)
            .await
            .expect("pg_last_wal_replay_lsn")
    }

    /// Waits until the replica has replayed the WAL up to `lsn` (from [`Self::current_lsn`]).
    pub async fn wait_for_replay(&self, lsn: &str) {
        let what = format!("the replica replays up to {lsn}");
        eventually(&what, Duration::from_secs(30), || async {
            // Connection errors count as "not yet": the replica may be restarting.
            let mut conn = PgConnection::connect(&self.replica_url()).await.ok()?;
            let replayed: Option<bool> =
                sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                    .bind(lsn)
                    .fetch_one(&mut conn)
                    .await
                    .ok()?;
            replayed.filter(|&done| done)
        })
        .await;
    }

    async fn wait_ready(&self, url: &str) {
        eventually(
            &format!("{url} accepts connections"),
            Duration::from_secs(60),
            || async {
                let mut conn = PgConnection::connect(url).await.ok()?;
                sqlx::query("SELECT 1").execute(&mut conn).await.ok()
            },
        )
        .await;
    }
}

/// The primary, then the replica cloning it (the entrypoint waits for the primary, but a
/// replica started first would count that wait against its own startup timeout).
async fn start_containers(
    primary_port: u16,
    replica_port: u16,
    tls: Option<(String, String)>,
) -> Backend {
    let tag = format!("opsdb-pg-{:08x}", rand::random::<u32>());
    let primary_name = format!("{tag}-primary");
    let with_tls = |request: testcontainers::ContainerRequest<GenericImage>| match &tls {
        Some((cert, key)) => request
            .with_env_var("SSL_CERT_PEM", cert)
            .with_env_var("SSL_KEY_PEM", key),
        None => request,
    };
    let primary = with_tls(image(&tag, &primary_name, primary_port))
        .start()
        .await;
    let primary = primary.unwrap_or_else(|e| docker_missing(&e));
    let replica = with_tls(image(&tag, &format!("{tag}-replica"), replica_port))
        .with_env_var("PRIMARY_HOST", &primary_name)
        .with_env_var("PRIMARY_SLOT_NAME", REPLICA_SLOT)
        .start()
        .await
        .unwrap_or_else(|e| docker_missing(&e));
    Backend::Docker { primary, replica }
}

/// One server on the test's network: reachable by `name` from its peer, and on
/// `host_port` from the test. The fixed mapping survives a `docker stop`/`start`.
fn image(
    network: &str,
    name: &str,
    host_port: u16,
) -> testcontainers::ContainerRequest<GenericImage> {
    GenericImage::new(PG_IMAGE.0, PG_IMAGE.1)
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stdout(READY))
        .with_network(network)
        .with_container_name(name)
        .with_mapped_port(host_port, 5432.tcp())
        .with_cmd(SERVER_ARGS)
        .with_startup_timeout(Duration::from_secs(60))
}

fn docker_missing(e: &testcontainers::TestcontainersError) -> ! {
    panic!(
        "cannot start a {}:{} container ({e}). The tests need a running Docker engine and \
         the test images: run `scripts/install-deps.sh && scripts/start-docker.sh && \
         scripts/build-images.sh` (as root), or use OPSDB_TEST_BACKEND=local with \
         PostgreSQL 15 installed (apt-get install postgresql-15)",
        PG_IMAGE.0, PG_IMAGE.1
    )
}

/// Pauses (`false`) or resumes (`true`) WAL replay on the replica `replica` is connected
/// to (as a superuser).
pub async fn set_replay(replica: &mut PgConnection, on: bool) {
    let sql = if on {
        "SELECT pg_wal_replay_resume()"
    } else {
        "SELECT pg_wal_replay_pause()"
    };
    sqlx::query(sql)
        .execute(replica)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}
