//! PostgreSQL 15 from the machine's binaries: a primary and a streaming replica of it,
//! each on its own loopback port, with their data in a directory of ours. Used by the
//! tests' local backend (and available to `dev`).
//!
//! Layout of the directory: `primary/` and `replica/` (data directories), `primary.log`,
//! `replica.log`, `initdb.log`, `basebackup.log`.
//!
//! Guarantees:
//! - Both servers listen on 127.0.0.1 only, over TCP only (no Unix sockets), with trust
//!   authentication: for tests and development, never for production.
//! - The primary has a database `opsdb` owned by the role `opsdb` (a superuser with the
//!   replication attribute); the bootstrap superuser is `postgres`, as in the test image.
//! - An existing data directory is reused as it is, so state survives runs. The ports may
//!   change from run to run: the replica is told where its primary is at every start, in
//!   its `postgresql.auto.conf` (where `ALTER SYSTEM` writes, so a test can change it while
//!   the replica runs, as on a real one).
//! - The replica streams through the physical slot [`REPLICA_SLOT`]: the primary keeps
//!   every WAL segment the replica has not received, however long the replica is down.
//! - [`LocalPostgres::stop`] shuts both servers down fast (clients disconnected, a
//!   shutdown checkpoint written). Dropping without `stop` is an immediate shutdown: no
//!   checkpoint, so the next start runs crash recovery, as after a kill; but unlike a
//!   SIGKILL of the postmaster it leaves no orphaned backend holding the data directory.
//! - Run as root, every PostgreSQL process runs as the `postgres` user (PostgreSQL refuses
//!   to run as root) and the data directories are owned by that user.

use std::path::Path;

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};

use crate::ports::free_port;
use server::{Server, Shutdown};
use tools::Tools;

mod server;
mod tools;

/// The physical replication slot the replica streams through.
pub const REPLICA_SLOT: &str = "opsdb_replica";

/// A primary and its streaming replica; see the module documentation.
pub struct LocalPostgres {
    tools: Tools,
    primary: Server,
    replica: Server,
}

impl LocalPostgres {
    /// Starts (creating them if `dir` has none) a primary and its replica on free ports.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let primary_port = free_port()?;
        // Two calls may (rarely) hand out the same port.
        let mut replica_port = free_port()?;
        while replica_port == primary_port {
            replica_port = free_port()?;
        }
        Self::start_on(dir, primary_port, replica_port).await
    }

    /// As [`LocalPostgres::start`], on the given loopback ports.
    pub async fn start_on(
        dir: &Path,
        primary_port: u16,
        replica_port: u16,
    ) -> anyhow::Result<Self> {
        let tools = Tools::find().await?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = std::path::absolute(dir)?;

        let mut primary = Server::new(&dir, "primary", primary_port, Vec::new());
        if !primary.has_data() {
            tools.initdb(&primary.data, &dir.join("initdb.log")).await?;
        }
        primary.start(&tools).await?;
        ensure_role_and_database(primary_port).await?;

        let mut replica = Server::new(
            &dir,
            "replica",
            replica_port,
            replica_settings(primary_port),
        );
        if !replica.has_data() {
            tools
                .basebackup(primary_port, &replica.data, &dir.join("basebackup.log"))
                .await?;
        }
        replica.start(&tools).await?;
        Ok(Self {
            tools,
            primary,
            replica,
        })
    }

    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    pub fn replica_port(&self) -> u16 {
        self.replica.port
    }

    /// `postgres://opsdb@127.0.0.1:PORT/opsdb` of the primary.
    pub fn primary_url(&self) -> String {
        self.primary_parts().to_string()
    }

    /// `postgres://opsdb@127.0.0.1:PORT/opsdb` of the replica (read-only).
    pub fn replica_url(&self) -> String {
        self.replica_parts().to_string()
    }

    /// The primary's URL, in parts.
    pub fn primary_parts(&self) -> PgUrl {
        PgUrl::opsdb(self.primary.port)
    }

    /// The replica's URL, in parts.
    pub fn replica_parts(&self) -> PgUrl {
        PgUrl::opsdb(self.replica.port)
    }

    /// Immediate shutdown of the primary (SIGQUIT): no checkpoint, so the next start runs
    /// crash recovery; returns once every process of it has exited.
    pub async fn kill_primary(&mut self) -> anyhow::Result<()> {
        self.primary.shut_down(Shutdown::Immediate).await
    }

    /// Starts the primary again, on the same port and data; a running primary is first
    /// shut down fast. Returns once it accepts connections.
    pub async fn restart_primary(&mut self) -> anyhow::Result<()> {
        self.primary.shut_down(Shutdown::Fast).await?;
        self.primary.start(&self.tools).await
    }

    /// Fast shutdown of the replica; the primary keeps its WAL in the slot meanwhile.
    pub async fn stop_replica(&mut self) -> anyhow::Result<()> {
        self.replica.shut_down(Shutdown::Fast).await
    }

    /// Starts the stopped replica again (a running one is left alone).
    pub async fn start_replica(&mut self) -> anyhow::Result<()> {
        if self.replica.is_running() {
            return Ok(());
        }
        self.replica.start(&self.tools).await
    }

    /// A base backup of the primary into `dest` (which must not exist yet), as an operator
    /// keeps one: for [`LocalPostgres::restore_primary`].
    pub async fn backup_primary(&self, dest: &Path) -> anyhow::Result<()> {
        let log = self.dir().join("backup.log");
        self.tools.backup(self.primary.port, dest, &log).await
    }

    /// Restores the primary from `backup` (made by [`LocalPostgres::backup_primary`] in this
    /// directory; moved, not copied): the primary is shut down immediately, its data
    /// replaced, and started: it recovers to the end of the backup and goes on as a primary
    /// on the same timeline, without whatever was committed after the backup. The replica
    /// is left as it is (it is ahead of the restored primary: re-clone it).
    pub async fn restore_primary(&mut self, backup: &Path) -> anyhow::Result<()> {
        self.primary.shut_down(Shutdown::Immediate).await?;
        std::fs::remove_dir_all(&self.primary.data)
            .with_context(|| format!("removing {}", self.primary.data.display()))?;
        std::fs::rename(backup, &self.primary.data)
            .with_context(|| format!("moving {} into place", backup.display()))?;
        self.primary.start(&self.tools).await
    }

    /// Replaces the replica with a new clone of the primary as it is now (after a restore
    /// or a failover): stopped, its data removed, cloned again (its slot made if missing),
    /// started.
    pub async fn reclone_replica(&mut self) -> anyhow::Result<()> {
        self.replica.shut_down(Shutdown::Fast).await?;
        std::fs::remove_dir_all(&self.replica.data)
            .with_context(|| format!("removing {}", self.replica.data.display()))?;
        let log = self.dir().join("basebackup.log");
        self.tools
            .basebackup(self.primary.port, &self.replica.data, &log)
            .await?;
        self.replica.start(&self.tools).await
    }

    /// The directory both data directories are in.
    fn dir(&self) -> &Path {
        self.primary.data.parent().unwrap_or(Path::new("."))
    }

    /// Fast shutdown of both servers, the primary first: its walsender then hands the
    /// shutdown checkpoint to the replica, so both stop at the same point.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let primary = self.primary.shut_down(Shutdown::Fast).await;
        let replica = self.replica.shut_down(Shutdown::Fast).await;
        primary.and(replica)
    }
}

/// A URL of the database `opsdb` of a local server, built from its parts: a harness that
/// reaches the server another way (through a proxy's port, as another role, by a host
/// name its certificate names) changes a part, never the text of a finished URL.
///
/// ```
/// use ops_db_devkit::local_pg::PgUrl;
/// let through_proxy = PgUrl { port: 6000, ..PgUrl::opsdb(5432) };
/// assert_eq!(through_proxy.to_string(), "postgres://opsdb@127.0.0.1:6000/opsdb");
/// let checked = PgUrl { host: "localhost".into(), sslmode: Some("verify-full"), ..through_proxy };
/// assert_eq!(checked.to_string(), "postgres://opsdb@localhost:6000/opsdb?sslmode=verify-full");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// The role connecting (trust authentication: no password).
    pub user: String,
    pub host: String,
    pub port: u16,
    /// `sslmode`, when the URL names one.
    pub sslmode: Option<&'static str>,
}

impl PgUrl {
    /// `postgres://opsdb@127.0.0.1:PORT/opsdb`: the role `opsdb` over loopback.
    pub fn opsdb(port: u16) -> Self {
        Self {
            user: "opsdb".to_owned(),
            host: "127.0.0.1".to_owned(),
            port,
            sslmode: None,
        }
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            user, host, port, ..
        } = self;
        write!(f, "postgres://{user}@{host}:{port}/opsdb")?;
        match self.sslmode {
            Some(mode) => write!(f, "?sslmode={mode}"),
            None => Ok(()),
        }
    }
}

/// The bootstrap superuser's URL: the only role and database of a fresh cluster.
fn bootstrap_url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// Written into the replica's postgresql.auto.conf at every start, over what
/// `pg_basebackup -R` wrote there, which names the primary's port of the first run.
fn replica_settings(primary_port: u16) -> Vec<(String, String)> {
    vec![
        (
            "primary_conninfo".into(),
            format!("host=127.0.0.1 port={primary_port} user=opsdb application_name=replica"),
        ),
        ("primary_slot_name".into(), REPLICA_SLOT.into()),
    ]
}

/// Idempotent, so it also completes a first run that stopped half-way.
async fn ensure_role_and_database(port: u16) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&bootstrap_url(port))
        .await
        .context("connecting to the primary as postgres")?;
    let role: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = 'opsdb'")
        .fetch_optional(&mut conn)
        .await?;
    if role.is_none() {
        sqlx::query("CREATE ROLE opsdb LOGIN SUPERUSER REPLICATION")
            .execute(&mut conn)
            .await
            .context("creating role opsdb")?;
    }
    let db: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = 'opsdb'")
        .fetch_optional(&mut conn)
        .await?;
    if db.is_none() {
        sqlx::query("CREATE DATABASE opsdb OWNER opsdb")
            .execute(&mut conn)
            .await
            .context("creating database opsdb")?;
    }
    conn.close().await?;
    Ok(())
}
