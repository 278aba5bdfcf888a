//! The process' file descriptors against the connections the config allows: every HTTP and
//! TCP connection and every websocket client is a descriptor, and a process out of them
//! cannot accept, reach Redis or open a log file. So the service refuses to start when
//! `http.max_connections` + `tcp.max_connections` + `events.max_clients` + [`MARGIN`]
//! exceed its `RLIMIT_NOFILE` (the systemd unit's `LimitNOFILE`).

use crate::config::Config;

/// Descriptors kept for everything else: listeners, Redis and PostgreSQL connections (about
/// 20), log files, the websocket clients' Redis reads.
pub const MARGIN: usize = 256;

/// The descriptors the config's connection caps need, with [`MARGIN`].
pub fn needed(config: &Config) -> usize {
    config.http.max_connections + config.tcp.max_connections + config.events.max_clients + MARGIN
}

/// `Err` with one line naming the keys when `limit` (the soft `RLIMIT_NOFILE`) is too low.
pub fn check(config: &Config, limit: u64) -> Result<(), String> {
    let needed = needed(config);
    if (needed as u64) <= limit {
        return Ok(());
    }
    Err(format!(
        "http.max_connections ({}) + tcp.max_connections ({}) + events.max_clients ({}) + {MARGIN} \
         for Redis, PostgreSQL and files need {needed} file descriptors, but the process may \
         open {limit} (RLIMIT_NOFILE): lower those keys or raise the limit (the unit's \
         LimitNOFILE, `ulimit -n`)",
        config.http.max_connections, config.tcp.max_connections, config.events.max_clients
    ))
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits`; `None` where that
/// cannot be read (not Linux): the check is then skipped.
pub fn soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_soft_limit(&limits)
}

fn parse_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(http: usize, tcp: usize, ws: usize) -> Config {
        Config::from_toml_str(&format!(
            "[site]\nname = \"t\"\n[http]\nmax_connections = {http}\n[tcp]\nmax_connections = {tcp}\n\
             [events]\nmax_clients = {ws}\n"
        ))
        .expect("a config")
    }

    #[test]
    fn the_limit_must_cover_every_cap_and_the_margin() {
        let config = config(100, 50, 10);
        assert_eq!(needed(&config), 416);
        assert!(check(&config, 416).is_ok());
        let err = check(&config, 415).expect_err("one short");
        for key in [
            "http.max_connections (100)",
            "tcp.max_connections (50)",
            "events.max_clients (10)",
            "RLIMIT_NOFILE",
        ] {
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn the_soft_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63556                63556                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_soft_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_soft_limit(unlimited), Some(u64::MAX));
        assert_eq!(parse_soft_limit("nothing"), None);
    }
}
