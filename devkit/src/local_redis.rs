//! A Redis server started from the machine's `redis-server` in a directory of ours, on a
//! loopback port, with the summit host's settings: it reads the packaged snippet
//! ([`crate::redis_conf`]: AOF with `appendfsync always`, `noeviction`, ...), written into
//! that directory. Used by `dev`, `bench` and the local test backend; stopped (and its AOF
//! flushed) by [`LocalRedis::stop`], killed on drop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

use crate::redis_conf;

pub struct LocalRedis {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl LocalRedis {
    pub async fn start(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let binary = which("redis-server").context(
            "redis-server not found on PATH: install it (Debian: apt-get install redis-server), or run scripts/install-deps.sh",
        )?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf = redis_conf::write_into(dir)
            .with_context(|| format!("writing {} into {}", redis_conf::FILE_NAME, dir.display()))?;
        // The file first (redis-server reads a config file only as its first argument), then
        // what is this server's own.
        let child = Command::new(binary)
            .arg(conf)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(dir)
            .args(["--logfile", "redis.log", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        let mut redis = Self {
            child,
            port,
            dir: dir.to_owned(),
        };
        redis.wait_ready().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.url())?;
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "redis-server exited ({status}); see {}",
                    self.dir.join("redis.log").display()
                );
            }
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "redis-server on port {} did not answer within 10 s",
            self.port
        )
    }

    /// Kills the server without warning (SIGKILL): only what was fsynced survives.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Asks Redis to shut down (it flushes its AOF), then waits for it.
    pub async fn stop(mut self) {
        if let Ok(client) = redis::Client::open(self.url()) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let _ = redis::cmd("SHUTDOWN").query_async::<()>(&mut conn).await;
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
