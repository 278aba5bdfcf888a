//! The Redis settings the service relies on: `packaging/redis/ops-db-api.conf`, the snippet
//! the summit host's Redis includes, compiled in. Every Redis the dev kit starts reads this
//! very file (written next to its AOF), and the test image runs with a copy of it, so
//! `dev`, the tests and the summit host cannot drift apart. [`mismatches`] checks a
//! running Redis against it.

use std::path::{Path, PathBuf};

use redis::aio::MultiplexedConnection;

/// The snippet's text.
pub const SNIPPET: &str = include_str!("../../packaging/redis/ops-db-api.conf");

/// Its name, in `/etc/redis/` on the summit host and in the dev kit's Redis directories.
pub const FILE_NAME: &str = "ops-db-api.conf";

/// The snippet's directives in file order, as (setting, value): one per line, comments and
/// blank lines skipped, double quotes around the value removed (`save ""` is `("save", "")`).
pub fn directives() -> Vec<(&'static str, &'static str)> {
    SNIPPET
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (setting, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (setting, value)
        })
        .collect()
}

/// Writes the snippet into `dir`, for `redis-server <path>` to read.
pub fn write_into(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(FILE_NAME);
    std::fs::write(&path, SNIPPET)?;
    Ok(path)
}

/// Every directive of the snippet that the Redis behind `conn` does not have, as
/// `setting: want "…", has "…"` (`CONFIG GET`); empty when it runs with all of them.
pub async fn mismatches(conn: &mut MultiplexedConnection) -> redis::RedisResult<Vec<String>> {
    let mut wrong = Vec::new();
    for (setting, want) in directives() {
        let pair: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(setting)
            .query_async(conn)
            .await?;
        let has = pair.get(1).map(String::as_str);
        if has != Some(want) {
            wrong.push(format!("{setting}: want {want:?}, has {has:?}"));
        }
    }
    Ok(wrong)
}

#[cfg(test)]
mod tests {
    use ops_db_service::redis_probe::REQUIRED;

    use super::*;
    use crate::local_redis::LocalRedis;
    use crate::ports::free_port;

    #[test]
    fn the_snippet_sets_every_setting_health_checks_redis_for() {
        let directives = directives();
        for required in &REQUIRED {
            let set: Vec<_> = directives
                .iter()
                .filter(|(setting, _)| *setting == required.setting)
                .collect();
            assert_eq!(
                set,
                [&(required.setting, required.value)],
                "{} must be set once, to {}",
                required.setting,
                required.value
            );
        }
    }

    #[test]
    fn directives_are_read_as_redis_reads_them() {
        let directives = directives();
        assert!(directives.contains(&("save", "")), "{directives:?}");
        let mut settings: Vec<_> = directives.iter().map(|(s, _)| *s).collect();
        settings.sort_unstable();
        settings.dedup();
        assert_eq!(settings.len(), directives.len(), "each setting once");
        // Host-specific, so only recommended in a comment (see the snippet).
        assert!(!settings.contains(&"maxmemory"));
    }

    #[tokio::test]
    async fn the_dev_kits_redis_runs_with_exactly_the_snippet() {
        let dir =
            std::env::temp_dir().join(format!("opsdb-redis-conf-{:016x}", rand::random::<u64>()));
        let redis = LocalRedis::start(&dir, free_port().expect("port"))
            .await
            .expect("redis-server (apt-get install redis-server)");
        let mut conn = redis::Client::open(redis.admin_url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let wrong = mismatches(&mut conn).await.expect("CONFIG GET");
        assert_eq!(
            std::fs::read_to_string(dir.join(FILE_NAME)).expect("the file it read"),
            SNIPPET
        );
        redis.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(wrong.is_empty(), "{wrong:?}");
    }
}
