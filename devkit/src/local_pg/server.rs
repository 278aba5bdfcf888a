//! One postmaster of ours: started with our settings, waited for, shut down.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sqlx::{Connection as _, PgConnection};
use tokio::process::{Child, Command};

use super::bootstrap_url;
use super::tools::Tools;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of both servers. They go on the command line at every start rather than into
/// postgresql.conf, so a data directory made by an older version runs with today's.
const SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    // No sockets: Debian's default socket directory may be missing or not ours.
    ("unix_socket_directories", ""),
    ("wal_level", "replica"),
    ("max_wal_senders", "10"),
    ("max_replication_slots", "10"),
    ("hot_standby", "on"),
    // The default 5 s between a replica's reconnection attempts would make every test
    // that restarts the primary 5 s slower.
    ("wal_retrieve_retry_interval", "1s"),
];

/// PostgreSQL's shutdown modes that we use, by the signal that asks for them.
#[derive(Clone, Copy)]
pub(super) enum Shutdown {
    /// SIGINT: clients disconnected, a shutdown checkpoint written.
    Fast,
    /// SIGQUIT: no checkpoint (crash recovery at the next start); the postmaster still
    /// waits for its children, so nothing is left holding the data directory.
    Immediate,
}

impl Shutdown {
    fn signal(self) -> &'static str {
        match self {
            Self::Fast => "INT",
            Self::Immediate => "QUIT",
        }
    }
}

/// One postmaster: its data directory and port, and its process while it runs.
pub(super) struct Server {
    name: &'static str,
    pub(super) data: PathBuf,
    log: PathBuf,
    pub(super) port: u16,
    /// Settings of this server only (the replica's primary), written into its
    /// `postgresql.auto.conf` before every start: there `ALTER SYSTEM` and a reload can
    /// change them while it runs, as on a real replica (a `-c` setting would win over
    /// both).
    auto: Vec<(String, String)>,
    child: Option<Child>,
}

impl Server {
    pub(super) fn new(
        dir: &Path,
        name: &'static str,
        port: u16,
        auto: Vec<(String, String)>,
    ) -> Self {
        Self {
            name,
            data: dir.join(name),
            log: dir.join(format!("{name}.log")),
            port,
            auto,
            child: None,
        }
    }

    /// Puts [`Self::auto`] into `postgresql.auto.conf` in place of any earlier value of
    /// the same settings (`pg_basebackup -R` wrote the first run's), keeping the rest.
    fn write_auto_conf(&self) -> anyhow::Result<()> {
        if self.auto.is_empty() {
            return Ok(());
        }
        let path = self.data.join("postgresql.auto.conf");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let ours = |line: &str| {
            let key = line.split(['=', ' ', '\t']).next().unwrap_or("");
            self.auto.iter().any(|(k, _)| k == key)
        };
        let mut kept: Vec<String> = text
            .lines()
            .filter(|line| !ours(line.trim_start()))
            .map(str::to_owned)
            .collect();
        for (key, value) in &self.auto {
            kept.push(format!("{key} = '{}'", value.replace('\'', "''")));
        }
        std::fs::write(&path, kept.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }

    pub(super) fn has_data(&self) -> bool {
        self.data.join("PG_VERSION").is_file()
    }

    /// Whether the postmaster runs (it may have exited on its own).
    pub(super) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Starts the postmaster and waits until it accepts connections (for a replica: until
    /// it has reached a consistent state and allows read-only ones).
    pub(super) async fn start(&mut self, tools: &Tools) -> anyhow::Result<()> {
        self.write_auto_conf()?;
        let mut cmd = tools.command("postgres", &self.log)?;
        cmd.arg("-D").arg(&self.data);
        cmd.arg("-c").arg(format!("port={}", self.port));
        for (key, value) in SETTINGS {
            cmd.arg("-c").arg(format!("{key}={value}"));
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting the {} postgres{}",
                self.name,
                tools.hint(&self.log)
            )
        })?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "the {} postgres on port {} exited ({status}); see {}",
                        self.name,
                        self.port,
                        self.log.display()
                    );
                }
            }
            // A server still starting up or recovering refuses connections.
            if let Ok(conn) = PgConnection::connect(&bootstrap_url(self.port)).await {
                let _ = conn.close().await;
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "the {} postgres on port {} did not accept connections within {START_TIMEOUT:?}; see {}",
                    self.name,
                    self.port,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks the postmaster to shut down and waits for it; it exits only after all its
    /// children. SIGKILL after [`STOP_TIMEOUT`]. Does nothing to a stopped server.
    pub(super) async fn shut_down(&mut self, mode: Shutdown) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            // No libc (and no unsafe code) here: kill(1) sends the signal.
            let sent = Command::new("kill")
                .args(["-s", mode.signal(), &pid.to_string()])
                .status()
                .await;
            if !sent.is_ok_and(|s| s.success()) {
                child.kill().await?;
            }
        }
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            child.kill().await?;
            bail!(
                "the {} postgres did not stop within {STOP_TIMEOUT:?}: killed",
                self.name
            );
        }
        Ok(())
    }
}

impl Drop for Server {
    /// Immediate shutdown, waited for (briefly, blocking): the caller may remove the
    /// directory or start a server on it right after the drop.
    fn drop(&mut self) {
        let Some(child) = &mut self.child else {
            return;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        let quit = child.id().is_some_and(|pid| {
            std::process::Command::new("kill")
                .args(["-s", Shutdown::Immediate.signal(), &pid.to_string()])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !quit {
            let _ = child.start_kill();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.start_kill();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
