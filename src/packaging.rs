//! Keeps `packaging/` true to the binary: the systemd unit runs a command this command line
//! accepts, with the shipped summit config, and has the directives the summit host relies
//! on. (The Redis snippet is checked by the dev kit's tests, against running Redis servers.)

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use ops_db_service::config::Config;

use super::{Cli, Command};

const UNIT: &str = include_str!("../packaging/systemd/ops-db-api.service");
const SUMMIT: &str = include_str!("../config/summit.toml");

/// The unit's settings: section → key → values in file order (a key may repeat).
/// systemd's syntax as far as the unit uses it: `[Section]`, `Key=value`, comments starting
/// with `#` or `;`, a trailing `\` continuing a line.
fn parse(unit: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in unit.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued.trim_end());
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let line = std::mem::take(&mut pending);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not Key=value in [{section}]: {line}"));
        sections
            .entry(section.clone())
            .or_default()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    sections
}

struct Unit(BTreeMap<String, BTreeMap<String, Vec<String>>>);

impl Unit {
    fn load() -> Self {
        Self(parse(UNIT))
    }

    /// The one value of `key` in `section`; fails if it is missing or set twice.
    fn one(&self, section: &str, key: &str) -> &str {
        match self
            .0
            .get(section)
            .and_then(|s| s.get(key))
            .map(Vec::as_slice)
        {
            Some([value]) => value,
            other => panic!("[{section}] {key}= must be set once, is {other:?}"),
        }
    }

    /// Every word of every value of `key` in `section` (list settings like `Wants=`).
    fn words(&self, section: &str, key: &str) -> Vec<&str> {
        self.0
            .get(section)
            .and_then(|s| s.get(key))
            .map(|values| values.iter().flat_map(|v| v.split_whitespace()).collect())
            .unwrap_or_default()
    }
}

fn summit() -> Config {
    Config::from_toml_str(SUMMIT).expect("config/summit.toml loads")
}

#[test]
fn the_unit_starts_a_command_the_binary_accepts_with_the_shipped_summit_config() {
    let unit = Unit::load();
    let exec = unit.one("Service", "ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv[0], "/usr/bin/ops-db-api", "{exec}");
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{exec}: {e}"));
    let Command::Serve { config } = cli.command else {
        panic!("ExecStart must run `serve`: {exec}");
    };
    // The installed copy of config/summit.toml.
    assert_eq!(config, std::path::Path::new("/etc/ops-db-api/summit.toml"));
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(config.file_name().expect("a file name"));
    assert!(shipped.is_file(), "{} is shipped", shipped.display());
}

#[test]
fn the_unit_has_the_directives_the_summit_host_relies_on() {
    let unit = Unit::load();
    for (key, value) in [
        ("Type", "simple"),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "ops-db-api"),
        ("LogsDirectory", "ops-db-api"),
        ("User", "ops-db-api"),
        ("Group", "ops-db-api"),
        // Redis' unix socket is the redis group's (ops-db-api-access.conf).
        ("SupplementaryGroups", "redis"),
        // What `serve` stops on, in order (see stop_on_signals).
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(unit.one("Service", key), value, "[Service] {key}=");
    }
    assert!(
        unit.words("Service", "DynamicUser").is_empty(),
        "a static user: the pgpass file is owned by it"
    );
    let restart_sec =
        humantime::parse_duration(unit.one("Service", "RestartSec")).expect("RestartSec");
    assert!(restart_sec >= Duration::from_secs(1), "{restart_sec:?}");
    // Optional, and never secrets on the command line.
    assert!(unit.one("Service", "EnvironmentFile").starts_with('-'));
    let redis = "redis-server.service";
    assert!(
        unit.words("Unit", "Wants").contains(&redis),
        "Wants={redis}"
    );
    assert!(
        unit.words("Unit", "After").contains(&redis),
        "After={redis}"
    );
    assert!(
        unit.words("Unit", "Requires").is_empty(),
        "a Redis restart must not stop the service"
    );
}

#[test]
fn the_summit_config_reaches_redis_through_the_socket_the_access_snippet_opens_as_its_acl_user() {
    let access = include_str!("../packaging/redis/ops-db-api-access.conf");
    let directive = |name: &str| {
        access
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} in ops-db-api-access.conf"))
    };
    assert_eq!(directive("port"), "0", "no TCP port");
    assert_eq!(directive("unixsocketperm"), "770");
    let url = summit().redis.url;
    let (path, query) = url
        .strip_prefix("unix://")
        .and_then(|rest| rest.split_once('?'))
        .unwrap_or_else(|| panic!("a unix socket URL with a query: {url}"));
    assert_eq!(path, directive("unixsocket"));
    let pairs: Vec<(&str, &str)> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    assert_eq!(
        pairs,
        [("user", ops_db_service::redis_access::USER)],
        "{url}"
    );
}

#[test]
fn the_units_directories_and_limits_fit_the_summit_config() {
    let unit = Unit::load();
    let config = summit();
    let logs = std::path::Path::new("/var/log").join(unit.one("Service", "LogsDirectory"));
    assert_eq!(
        config.log.dir.as_deref(),
        Some(logs.as_path()),
        "log.dir of config/summit.toml is the unit's LogsDirectory"
    );
    let state = std::path::Path::new("/var/lib").join(unit.one("Service", "StateDirectory"));
    assert_eq!(
        std::path::Path::new(unit.one("Service", "WorkingDirectory")),
        state
    );
    // One descriptor per connection and websocket client, and room for Redis, PostgreSQL
    // and files: the service refuses to start below that (`descriptors::check`).
    let nofile: u64 = unit
        .one("Service", "LimitNOFILE")
        .parse()
        .expect("a number");
    if let Err(why) = ops_db_service::descriptors::check(&config, nofile) {
        panic!("LimitNOFILE={nofile}: {why}");
    }
    // The ordered shutdown: HTTP's grace (10 s), then the actors (at most 30 s).
    let stop =
        humantime::parse_duration(unit.one("Service", "TimeoutStopSec")).expect("TimeoutStopSec");
    assert!(stop >= Duration::from_secs(40), "{stop:?}");
}

/// `1G`, `512M`, `1024K` or bytes, as systemd's memory settings take them.
fn memory_bytes(value: &str) -> u64 {
    let (digits, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: u64 = digits.parse().expect("a number");
    n * match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        other => panic!("unit {other:?}"),
    }
}

#[test]
fn the_unit_bounds_its_memory_above_the_worst_case_and_goes_before_redis() {
    let unit = Unit::load();
    let config = summit();
    let high = memory_bytes(unit.one("Service", "MemoryHigh"));
    let max = memory_bytes(unit.one("Service", "MemoryMax"));
    // Every connection sending its largest request at once, and a forwarder batch.
    let in_flight = (config.http.max_connections * config.http.body_limit_bytes
        + config.tcp.max_connections * config.tcp.max_line_bytes) as u64;
    let batch = config.forwarder.batch_max_bytes as u64;
    assert!(
        high >= in_flight + 4 * batch,
        "MemoryHigh={high} for {in_flight} in flight"
    );
    assert!(
        max >= 2 * in_flight + 4 * batch,
        "MemoryMax={max} for {in_flight} in flight"
    );
    assert!(max > high);
    // Redis' unit leaves its score at 0: a positive one makes the kernel pick this first.
    let oom: i32 = unit
        .one("Service", "OOMScoreAdjust")
        .parse()
        .expect("a number");
    assert!(oom > 0 && oom <= 1000, "OOMScoreAdjust={oom}");
    assert_eq!(memory_bytes("512M"), 512 << 20);
}

#[test]
fn the_parser_reads_systemd_syntax_as_used() {
    let unit = parse("# c\n[A]\n; c\nX=1\nX=2 \\\n  3\n[B]\nY = z\n");
    assert_eq!(unit["A"]["X"], ["1", "2 3"]);
    assert_eq!(unit["B"]["Y"], ["z"]);
}

/// systemd itself reads the unit (`systemd-analyze verify`: every directive and its value,
/// the sandboxing options), from a copy whose `ExecStart` names an executable of this
/// machine (`/usr/bin/ops-db-api` exists only where the package is installed). The unit
/// still has not run under systemd as PID 1 here.
#[test]
fn systemd_verifies_the_unit() {
    let exe = std::env::current_exe().expect("this test's executable");
    let (from, to) = (
        "ExecStart=/usr/bin/ops-db-api ",
        format!("ExecStart={} ", exe.display()),
    );
    assert!(UNIT.contains(from), "the unit runs {from}…");
    let dir = std::env::temp_dir().join(format!("opsdb-unit-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("ops-db-api.service");
    std::fs::write(&path, UNIT.replace(from, &to)).expect("the unit's copy");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test runs systemd-analyze (Debian: apt-get install systemd): {e}")
        });
    let _ = std::fs::remove_dir_all(&dir);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}): {said}",
        out.status
    );
}
