//! The screen on fixed reports (written as the JSON a service answers, read into the
//! types as `status` reads them): layout, tolerance of missing fields, ages and sizes.

use super::*;
use crate::status::Answers;
use serde_json::{json, Value};

/// 2026-12-04T16:45:17Z
fn now() -> SystemTime {
    humantime::parse_rfc3339("2026-12-04T16:45:17Z").unwrap()
}

fn sample(ready: bool, reasons: &[&str], health: Value, actors: Value) -> Sample {
    Sample {
        url: "http://127.0.0.1:8080".to_owned(),
        ready,
        reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
        health: serde_json::from_value(health.clone()).expect("a health report"),
        actors: serde_json::from_value(actors.clone()).expect("an actors report"),
        answers: Answers { health, actors },
    }
}

/// What the original service answers: its five keys and nothing else.
fn original(status: &str) -> Value {
    json!({
        "status": status, "database": "not_configured", "redis": "connected",
        "transaction_buffer": {"size": 0, "failed": 0},
        "background_processor": "not_configured",
    })
}

fn row(name: &str, state: Value, restarts: u64, uptime: Option<f64>) -> Value {
    let mut row = json!({
        "name": name, "restarts": restarts, "last_failure": null, "uptime_secs": uptime,
    });
    for (k, v) in state.as_object().unwrap() {
        row[k] = v.clone();
    }
    row
}

/// A site whose WAN is cut: the forwarder backs off, its last failure a long reason (the
/// answers of `/health` and `/health/actors`).
fn wan_cut() -> (Value, Value) {
    let replica = json!({
        "lag_bytes": 2_621_440, "lag_seconds": 42.5, "last_failure": null,
        "marked_replicated": 3, "replay_lsn": "0/30564E8", "restarts": 0, "state": "running",
    });
    let mut forwarder = row(
        "forwarder",
        json!({"state": "backing_off", "until": "2026-12-04T16:45:35.631232553Z"}),
        7,
        None,
    );
    forwarder["last_failure"] = json!({
        "at": "2026-12-04T16:45:16.798339250Z",
        "reason": "failed: primary:\n  error communicating with database: expected to read 5 \
                   bytes, got 0 bytes at EOF, and more words to make it a little too long",
    });
    let health = json!({
        "status": "healthy", "site": "summit", "mode": "secondary", "database": "unreachable",
        "redis": "connected",
        "redis_durability": {"durable": true, "problems": []},
        "transaction_buffer": {"size": 3, "failed": 0, "limit": 1_000_000,
                               "oldest_unforwarded_secs": 317.2},
        "background_processor": "backing_off",
        "forwarder": {"state": "backing_off", "restarts": 7, "batches": 2, "applied": 3,
                      "skipped": 0, "dead": 0, "last_commit_lsn": "0/30564E8",
                      "role": "active", "lease_holder": "vm/1/abc"},
        "replica": replica,
    });
    let actors = json!({
        "actors": [
            row("buffer", json!({"state": "running"}), 0, Some(43.1)),
            forwarder,
            row("ingest", json!({"state": "running"}), 0, Some(43.1)),
            row("replica", json!({"state": "running"}), 0, Some(3725.0)),
        ],
        "escalation": null,
        "replica": replica,
    });
    (health, actors)
}

fn site_with_wan_cut() -> Sample {
    let (health, actors) = wan_cut();
    sample(true, &[], health, actors)
}

fn assert_fits(screen: &str) {
    assert!(screen.lines().count() <= 25, "{screen}");
    for line in screen.lines() {
        assert!(line.chars().count() <= WIDTH, "too wide: {line}");
    }
}

#[test]
fn a_site_shows_every_section_and_the_whole_tree() {
    let screen = render(&site_with_wan_cut(), now());
    assert_fits(&screen);
    let lines: Vec<&str> = screen.lines().collect();
    assert_eq!(
        lines[0],
        "ops-db-api http://127.0.0.1:8080  site summit (secondary)  2026-12-04T16:45:17Z"
    );
    assert_eq!(lines[1], "ready      yes (healthy)");
    assert_eq!(lines[2], "redis      connected, durable");
    assert_eq!(lines[3], "database   unreachable");
    assert_eq!(
        lines[4],
        "buffer     3 transactions (limit 1000000), oldest unforwarded 5m17s; dead letters 0"
    );
    assert_eq!(
        lines[5],
        "forwarder  role active, batches 2, applied 3, skipped 0, dead 0, last commit 0/30564E8"
    );
    assert_eq!(
        lines[6],
        "replica    lag 2.5 MiB, 42s; replay 0/30564E8; replicated 3"
    );
    assert_eq!(lines[7], "");
    assert_eq!(
        lines[8],
        "tree         state                  restarts  uptime"
    );
    assert_eq!(lines[9], "supervisor");
    assert_eq!(
        lines[10],
        "├─ buffer    running                       0  43s"
    );
    assert_eq!(lines[11], "├─ forwarder backing off, 18s left         7  -");
    assert!(
        lines[12].starts_with(
            "│    0.2s ago: failed: primary: error communicating with database: expected"
        ),
        "the reason is on one line: {screen}"
    );
    assert!(
        lines[12].ends_with('…') && lines[12].chars().count() == WIDTH,
        "a long reason is cut: {screen}"
    );
    assert_eq!(
        lines[13],
        "├─ ingest    running                       0  43s"
    );
    assert_eq!(
        lines[14],
        "└─ replica   running                       0  1h02m"
    );
    assert_eq!(lines.len(), 15);
}

#[test]
fn not_ready_names_the_reasons_and_leaves_out_what_redis_did_not_say() {
    let health = json!({
        "status": "unhealthy", "site": "summit", "mode": "secondary",
        "database": "not_configured", "redis": "disconnected",
        "redis_durability": {"durable": false, "problems": ["redis did not answer"]},
        "transaction_buffer": {"size": null, "failed": null, "limit": 1000,
                               "oldest_unforwarded_secs": null},
        "background_processor": "not_configured",
        "forwarder": null, "replica": null,
    });
    let mut buffer = row("buffer", json!({"state": "stopped"}), 21, None);
    buffer["last_failure"] =
        json!({"reason": "failed: redis: broken pipe", "at": "2026-12-04T16:44:17Z"});
    let actors = json!({
        "actors": [buffer],
        "escalation": "buffer: more than 20 restarts within 60s",
        "replica": null,
    });
    let screen = render(
        &sample(
            false,
            &["redis unreachable", "ingest actors not running"],
            health,
            actors,
        ),
        now(),
    );
    assert_fits(&screen);
    assert!(screen
        .contains("ready      NO: redis unreachable; ingest actors not running (unhealthy)\n"));
    assert!(screen.contains("redis      disconnected\n"), "{screen}");
    assert!(!screen.contains("did not answer"), "{screen}");
    assert!(screen.contains(
        "buffer     - transactions (limit 1000), oldest unforwarded -; dead letters -\n"
    ));
    assert!(screen.contains("forwarder  not configured\n"));
    assert!(screen.contains("replica    not configured\n"));
    assert!(screen.contains("supervisor  GAVE UP: buffer: more than 20 restarts"));
    assert!(
        screen.contains(
            "└─ buffer  stopped                      21  -\n     1m00s ago: failed: redis: broken pipe\n"
        ),
        "{screen}"
    );
}

#[test]
fn redis_that_is_not_durable_gets_a_line_per_problem() {
    let mut health = original("degraded");
    health["redis_durability"] = json!({"durable": false, "problems": [
        "appendfsync is not always: acknowledged writes may be lost in a crash",
        "maxmemory-policy is not noeviction: Redis may evict buffered transactions",
    ]});
    let screen = render(&sample(true, &[], health, json!({})), now());
    assert!(screen
        .contains("redis      connected, NOT DURABLE\n           - appendfsync is not always"));
    assert!(screen.contains("\n           - maxmemory-policy is not noeviction"));
}

#[test]
fn a_standby_forwarder_names_the_lease_holder() {
    let (mut health, actors) = wan_cut();
    health["forwarder"]["role"] = json!("standby");
    health["forwarder"]["lease_holder"] = json!("host-b/4242/0193");
    let screen = render(&sample(true, &[], health, actors), now());
    assert!(
        screen.contains("forwarder  role standby (lease held by host-b/4242/0193), batches 2"),
        "{screen}"
    );
}

#[test]
fn fields_absent_from_an_older_or_newer_service_are_left_out_not_an_error() {
    let (mut health, actors) = wan_cut();
    let f = health["forwarder"].as_object_mut().unwrap();
    f.remove("role");
    f.remove("lease_holder");
    f.remove("skipped");
    f.insert("something_new".into(), json!({"x": 1}));
    let screen = render(&sample(true, &[], health, actors), now());
    assert!(
        screen.contains("forwarder  batches 2, applied 3, dead 0, last commit 0/30564E8\n"),
        "{screen}"
    );

    // The original service: five keys, no actors; words this build does not know.
    let mut old = original("healthy");
    old["database"] = json!("promoting");
    let empty = render(&sample(false, &[], old, json!({})), now());
    assert_fits(&empty);
    assert!(empty.contains("ready      NO (healthy)\n"), "{empty}");
    assert!(empty.contains("site -  "), "{empty}");
    assert!(empty.contains("database   unknown\n"), "{empty}");
    assert!(
        empty.contains(
            "buffer     0 transactions (limit -), oldest unforwarded -; dead letters 0\n"
        ),
        "{empty}"
    );
    assert!(
        empty.contains("supervisor  (no actors reported)\n"),
        "{empty}"
    );
}

#[test]
fn a_backoff_past_its_deadline_is_due() {
    let at = |state: Value| -> ActorHealth {
        serde_json::from_value(row("x", state, 0, None)).expect("a row")
    };
    let due = at(json!({"state": "backing_off", "until": "2026-12-04T16:45:00Z"}));
    assert_eq!(state(&due, now()), "backing off, due");
    let left = at(json!({"state": "backing_off", "until": "2026-12-04T16:46:17Z"}));
    assert_eq!(state(&left, now()), "backing off, 1m00s left");
    assert_eq!(state(&at(json!({"state": "starting"})), now()), "starting");
    assert_eq!(
        state(&at(json!({"state": "hibernating"})), now()),
        "unknown"
    );
}

#[test]
fn ages_and_sizes_for_humans() {
    let ages = [
        (0.04, "0.0s"),
        (9.94, "9.9s"),
        (10.0, "10s"),
        (59.9, "59s"),
        (60.0, "1m00s"),
        (3599.0, "59m59s"),
        (3600.0, "1h00m"),
        (86_399.0, "23h59m"),
        (90_000.0, "1d01h"),
        (-1.0, "-"),
        (f64::NAN, "-"),
    ];
    for (secs, want) in ages {
        assert_eq!(age(secs), want, "{secs}");
    }
    let sizes = [
        (0.0, "0 B"),
        (1023.0, "1023 B"),
        (1024.0, "1.0 KiB"),
        (2_621_440.0, "2.5 MiB"),
        (3.0 * 1024.0 * 1024.0 * 1024.0, "3.0 GiB"),
        (5e13, "45.5 TiB"),
    ];
    for (n, want) in sizes {
        assert_eq!(bytes(n), want, "{n}");
    }
}

#[test]
fn lines_are_cut_to_the_width_with_an_ellipsis() {
    assert_eq!(cut("abc", 3), "abc");
    assert_eq!(cut("abcd", 3), "ab…");
    assert_eq!(cut("├─ éé", 4), "├─ …");
}

#[test]
fn the_registry_a_stale_replica_and_a_history_in_doubt_are_on_the_screen() {
    let (mut health, actors) = wan_cut();
    health["replica"]["freshness"] = json!({
        "verdict": "stale", "reason": "replay_stalled", "source": "replica",
        "replay_age_secs": 75.0, "heartbeat_age_secs": 70.0, "replay_paused": true,
        "receiver_status": "streaming", "receiver_last_msg_age_secs": 0.5,
        "receiver_timeline": 2, "unreplayed_bytes": 8192, "max_staleness_secs": 60.0,
        "observed_secs_ago": 0.25, "last_error": null
    });
    health["history"] = json!({
        "consistent": false, "primary": null, "replica": null,
        "changes": [{"side": "primary", "from": {"system_identifier": "7", "timeline": 1},
                     "to": {"system_identifier": "7", "timeline": 2}, "at": "2026-12-05T14:00:00Z"}],
        "unconfirmed": {"missing": 100, "sample": [], "since": "2026-12-05T14:00:00Z"},
        "lost": {"missing": 7, "sample": [], "since": "2026-12-05T14:00:00Z"}
    });
    health["registry"] = json!({
        "tables": 4, "source": "stored_copy", "read_at": null,
        "skipped": [{"table": "obs_view", "reason": "not a table"}],
        "error": "connection refused"
    });
    let screen = render(&sample(true, &[], health.clone(), actors.clone()), now());
    assert_fits(&screen);
    assert!(screen.contains("; STALE (replay_stalled)\n"), "{screen}");
    assert!(
        screen.contains(
            "registry   4 tables from stored_copy; skipped obs_view; last read failed: \
             connection refused\n"
        ),
        "{screen}"
    );
    assert!(
        screen.contains(
            "history    IN DOUBT: 100 not confirmed, 7 lost, primary timeline 1 -> 2; see the \
             failover runbook\n"
        ),
        "{screen}"
    );
    // Consistent: no history line, and a fresh replica says so.
    health["history"] = json!({"consistent": true, "primary": null, "replica": null,
        "changes": [], "unconfirmed": null, "lost": null});
    health["replica"]["freshness"]["verdict"] = json!("fresh");
    health["replica"]["freshness"]["reason"] = json!(null);
    let screen = render(&sample(true, &[], health, actors), now());
    assert!(!screen.contains("history"), "{screen}");
    assert!(screen.contains("replicated 3; fresh\n"), "{screen}");
}

#[test]
fn how_redis_is_reached_is_a_line_and_an_open_redis_says_so() {
    let mut health = original("healthy");
    health["redis_durability"] = json!({"durable": true, "problems": []});
    health["redis_access"] = json!({"transport": "unix", "user": "opsdb-api",
        "requires_auth": true, "problems": []});
    let screen = render(&sample(true, &[], health.clone(), json!({})), now());
    assert!(
        screen.contains("redis      connected, durable\n           access unix, user opsdb-api, password required\n"),
        "{screen}"
    );
    health["redis_access"] = json!({"transport": "tcp_loopback", "user": null,
        "requires_auth": false, "problems": ["redis answers without a password"]});
    let screen = render(&sample(true, &[], health, json!({})), now());
    assert!(
        screen.contains("access tcp_loopback, user default, OPEN (no password)\n           - redis answers without a password\n"),
        "{screen}"
    );
}
