//! The PostgreSQL binaries, and running them as the user that owns the data.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context as _};
use sqlx::{Connection as _, PgConnection};
use tokio::process::Command;

use super::{PgUrl, REPLICA_SLOT};

/// Where Debian's postgresql-15 installs the server binaries (they are not on PATH).
const DEBIAN_BIN: &str = "/usr/lib/postgresql/15/bin";
const INSTALL_HINT: &str =
    "install them (Debian: apt-get install postgresql-15), or run scripts/install-deps.sh";

/// Where the binaries are, and whom they run as.
pub(super) struct Tools {
    bin: PathBuf,
    /// `postgres`' uid and gid when we are root, `None` to run as ourselves.
    owner: Option<(u32, u32)>,
}

impl Tools {
    pub(super) async fn find() -> anyhow::Result<Self> {
        let needed = ["postgres", "initdb", "pg_basebackup"];
        let path = std::env::var_os("PATH").unwrap_or_default();
        let bin = std::iter::once(PathBuf::from(DEBIAN_BIN))
            .chain(std::env::split_paths(&path))
            .find(|dir| needed.iter().all(|name| dir.join(name).is_file()))
            .with_context(|| {
                format!(
                    "PostgreSQL server binaries ({}) not found in {DEBIAN_BIN} or on PATH: {INSTALL_HINT}",
                    needed.join(", ")
                )
            })?;
        let owner = if id(&["-u"]).await? == 0 {
            let uid = id(&["-u", "postgres"]).await;
            let gid = id(&["-g", "postgres"]).await;
            let (uid, gid) = uid.and_then(|u| Ok((u, gid?))).with_context(|| {
                format!(
                    "running as root, PostgreSQL needs a `postgres` user to run as: {INSTALL_HINT}"
                )
            })?;
            Some((uid, gid))
        } else {
            None
        };
        Ok(Self { bin, owner })
    }

    /// One of the binaries, run as their owner, its output appended to `log`.
    pub(super) fn command(&self, program: &str, log: &Path) -> anyhow::Result<Command> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        // Our directory (the logs' parent): the owner must be able to enter it anyway to
        // reach the data directories, and initdb fails in a directory it cannot read.
        if let Some(parent) = log.parent() {
            cmd.current_dir(parent);
        }
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        Ok(cmd)
    }

    /// For error messages: run as root, the tools run as `postgres`, and fail wherever
    /// that user cannot go.
    pub(super) fn hint(&self, log: &Path) -> String {
        match (self.owner, log.parent()) {
            (Some(_), Some(dir)) => format!(
                " (we run as root, so PostgreSQL runs as user postgres, which must be able to enter {})",
                dir.display()
            ),
            _ => String::new(),
        }
    }

    /// Runs a one-shot tool to completion.
    async fn run(
        &self,
        mut cmd: Command,
        what: &str,
        data: &Path,
        log: &Path,
    ) -> anyhow::Result<()> {
        let status = cmd
            .status()
            .await
            .with_context(|| format!("running {what}{}", self.hint(log)))?;
        if !status.success() {
            bail!(
                "{what} into {} failed ({status}); see {}{}",
                data.display(),
                log.display(),
                self.hint(log)
            );
        }
        Ok(())
    }

    /// An empty data directory, mode 0700 (PostgreSQL insists), owned by the owner.
    fn make_data_dir(&self, data: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(data, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to postgres", data.display()))?;
        }
        Ok(())
    }

    pub(super) async fn initdb(&self, data: &Path, log: &Path) -> anyhow::Result<()> {
        self.make_data_dir(data)?;
        // trust for local and host, replication included: initdb's pg_hba.conf already
        // has replication lines for 127.0.0.1/32 and ::1/128.
        let mut cmd = self.command("initdb", log)?;
        cmd.arg("-D").arg(data).args([
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--auth=trust",
        ]);
        self.run(cmd, "initdb", data, log).await
    }

    pub(super) async fn basebackup(
        &self,
        primary_port: u16,
        data: &Path,
        log: &Path,
    ) -> anyhow::Result<()> {
        self.make_data_dir(data)?;
        let mut conn = PgConnection::connect(&PgUrl::opsdb(primary_port).to_string()).await?;
        let slot: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1")
                .bind(REPLICA_SLOT)
                .fetch_optional(&mut conn)
                .await?;
        conn.close().await?;
        let mut cmd = self.pg_basebackup(primary_port, data, log)?;
        cmd.args(["-R", "-S", REPLICA_SLOT]);
        // -C fails on an existing slot (a replica directory deleted, the primary kept).
        if slot.is_none() {
            cmd.arg("-C");
        }
        self.run(cmd, "pg_basebackup", data, log).await
    }

    /// A plain base backup of the primary into `data` (as an operator keeps one to restore
    /// from): WAL streamed along, no replication settings, no slot.
    pub(super) async fn backup(
        &self,
        primary_port: u16,
        data: &Path,
        log: &Path,
    ) -> anyhow::Result<()> {
        self.make_data_dir(data)?;
        let cmd = self.pg_basebackup(primary_port, data, log)?;
        self.run(cmd, "pg_basebackup", data, log).await
    }

    /// `pg_basebackup` of the primary into `data` as `opsdb`, WAL streamed along, after a
    /// fast checkpoint: what every clone and backup here shares.
    fn pg_basebackup(&self, primary_port: u16, data: &Path, log: &Path) -> anyhow::Result<Command> {
        let mut cmd = self.command("pg_basebackup", log)?;
        cmd.arg("-D").arg(data).args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port.to_string(),
            "-U",
            "opsdb",
            "-X",
            "stream",
            "--checkpoint=fast",
        ]);
        Ok(cmd)
    }
}

/// `id ARGS` as a number: our uid, or another user's uid or gid.
async fn id(args: &[&str]) -> anyhow::Result<u32> {
    let out = Command::new("id").args(args).output().await?;
    if !out.status.success() {
        bail!("id {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}
