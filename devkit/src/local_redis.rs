//! A Redis server started from the machine's `redis-server` in a directory of ours, on a
//! loopback port, with the summit host's settings: it reads the packaged snippet
//! ([`crate::redis_conf`]: AOF with `appendfsync always`, `noeviction`, ...), written into
//! that directory. Used by `dev`, `bench` and the local test backend; stopped (and its AOF
//! flushed) by [`LocalRedis::stop`], killed on drop.
//!
//! Like the summit host's, it answers no one without a password: its ACL file
//! (`users.acl`, written from the packaged template by
//! [`ops_db_service::redis_access::acl_file`]) has the service's user (`opsdb-api`, limited
//! to its keys and commands: [`LocalRedis::url`]) and an administrator as the `default`
//! user ([`LocalRedis::admin_url`]) for what only a harness does (`CONFIG SET`,
//! `CLIENT PAUSE`, `SHUTDOWN`, ...). The passwords are made at the first start and kept in
//! the directory (`passwords`, mode 0600), so a restart on the same directory keeps them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

use ops_db_service::redis_access;

use crate::redis_conf;

pub struct LocalRedis {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub passwords: Passwords,
}

/// The passwords of a dev kit Redis' two users.
#[derive(Debug, Clone)]
pub struct Passwords {
    /// The service's user, `opsdb-api`.
    pub service: String,
    /// The `default` user, with every right.
    pub admin: String,
}

impl Passwords {
    const FILE: &'static str = "passwords";

    /// Two new passwords (hex: they go into URLs as they are).
    pub fn random() -> Self {
        Self {
            service: format!("{:032x}", rand::random::<u128>()),
            admin: format!("{:032x}", rand::random::<u128>()),
        }
    }

    /// The directory's passwords, made (and kept there) at its first use.
    pub fn of_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(Self::FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Some((service, admin)) = text.trim().split_once(' ') {
                return Ok(Self {
                    service: service.to_owned(),
                    admin: admin.to_owned(),
                });
            }
        }
        let passwords = Self::random();
        write_private(
            &path,
            &format!("{} {}\n", passwords.service, passwords.admin),
        )?;
        Ok(passwords)
    }

    /// The ACL file of a Redis with these passwords.
    pub fn acl_file(&self) -> String {
        redis_access::acl_file(&self.service, Some(&self.admin))
    }
}

/// Writes `text` to a new file at `path` that only its owner can read.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

impl LocalRedis {
    pub async fn start(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let binary = which("redis-server").context(
            "redis-server not found on PATH: install it (Debian: apt-get install redis-server), or run scripts/install-deps.sh",
        )?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Absolute: Redis moves into `--dir` before it reads the ACL file, so a relative
        // path (`dev`'s default `.dev`) would be looked up from inside it.
        let dir = &dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let conf = redis_conf::write_into(dir)
            .with_context(|| format!("writing {} into {}", redis_conf::FILE_NAME, dir.display()))?;
        let passwords = Passwords::of_dir(dir)?;
        let acl = dir.join("users.acl");
        write_private(&acl, &passwords.acl_file())?;
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
            .arg("--aclfile")
            .arg(&acl)
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
            passwords,
        };
        redis.wait_ready().await?;
        Ok(redis)
    }

    /// The service's URL: its user, limited to its keys and commands.
    pub fn url(&self) -> String {
        url(self.port, redis_access::USER, &self.passwords.service)
    }

    /// The administrator's URL (the `default` user, every right): for harnesses only.
    pub fn admin_url(&self) -> String {
        url(self.port, "default", &self.passwords.admin)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.admin_url())?;
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
        if let Ok(client) = redis::Client::open(self.admin_url()) {
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

/// A loopback URL of a Redis on `port` as `user`.
pub fn url(port: u16, user: &str, password: &str) -> String {
    format!("redis://{user}:{password}@127.0.0.1:{port}")
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::free_port;

    /// `dev`'s default directory is relative (`.dev`): Redis must still find its ACL file
    /// (it moves into its `--dir` before reading it).
    #[tokio::test]
    async fn a_redis_in_a_relative_directory_starts_and_answers_its_users() {
        // Under the current directory (the crate's, for its tests), removed at the end.
        let relative = PathBuf::from(format!("opsdb-relative-{:016x}", rand::random::<u64>()));
        let absolute = std::env::current_dir().expect("cwd").join(&relative);
        let redis = LocalRedis::start(&relative, free_port().expect("port"))
            .await
            .expect("redis-server (apt-get install redis-server)");
        for url in [redis.url(), redis.admin_url()] {
            let mut conn = redis::Client::open(url.as_str())
                .expect("url")
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            let () = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        redis.stop().await;
        let _ = std::fs::remove_dir_all(&absolute);
    }
}
