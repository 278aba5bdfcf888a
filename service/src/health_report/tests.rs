//! The report's wire shape: a full report survives serde unchanged, the original
//! service's keys are there, and a report of another version reads without an error.

use chrono::TimeZone;
use serde_json::{json, Value};

use super::*;
use ops_db_actors::history::{Change, Gap, Identity, Seen, Side};
use ops_db_actors::replica::freshness::Reason;
use ops_db_actors::replica::FreshnessView;

fn at(secs: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc.timestamp_opt(secs, 0).single().unwrap()
}

fn failure() -> Failure {
    Failure {
        reason: "failed: primary: connection refused".into(),
        at: at(1_765_000_000),
    }
}

fn row(name: &str, state: ActorState, restarts: u64) -> ActorHealth {
    ActorHealth {
        name: name.into(),
        state,
        restarts,
        last_failure: (restarts > 0).then(failure),
        uptime_secs: Some(12.5),
    }
}

/// A report with every section there and every optional value set: what a secondary
/// site with a forwarder, a replica and both token sources reports.
pub(super) fn full() -> HealthReport {
    let rows = vec![
        row("buffer", ActorState::Running, 0),
        row(
            "forwarder",
            ActorState::BackingOff {
                until: at(1_765_000_030),
            },
            3,
        ),
        row("ingest", ActorState::Starting, 0),
        row("notifier", ActorState::Stopped, 1),
        row("replica", ActorState::Running, 0),
    ];
    let token = TokenSourceStatus {
        source: TokenOrigin::StoredCopy,
        read_at: Some(at(1_765_000_001)),
        last_error: Some("connection refused".into()),
    };
    HealthReport {
        status: HealthStatus::Degraded,
        site: Some("summit".into()),
        mode: Some(SiteMode::Secondary),
        database: DatabaseState::Unreachable,
        redis: RedisLink::Connected,
        redis_durability: Some(Durability::judge(
            Some("yes".into()),
            Some("everysec".into()),
            Some("noeviction".into()),
            Some("no".into()),
        )),
        redis_access: Some(RedisAccess {
            transport: "tcp_loopback".into(),
            user: Some("opsdb-api".into()),
            requires_auth: Some(false),
            problems: vec!["redis answers without a password".into()],
        }),
        redis_storage: Some(StorageView {
            aof_last_write_status: Some("ok".into()),
            rewrite_in_progress: Some(false),
            aof_bytes: Some(1 << 20),
            free_bytes: Some(1 << 30),
            min_free_bytes: 1 << 28,
            refusing_writes: false,
        }),
        transaction_buffer: TransactionBuffer {
            size: Some(3),
            failed: Some(1),
            limit: Some(1_000_000),
            oldest_unforwarded_secs: Some(317.25),
            oldest_staging_secs: Some(0.0),
            memory: Some(MemoryView {
                used_bytes: Some(5 << 20),
                max_bytes: Some(1 << 30),
                limit_bytes: Some(858_993_459),
                fraction: 0.8,
                refusing_writes: false,
            }),
        },
        background_processor: ProcessorState::BackingOff,
        forwarder: Some(ForwarderReport {
            state: ActorStatus::BackingOff,
            restarts: Some(3),
            last_failure: Some(failure()),
            batches: Some(2),
            applied: Some(3),
            skipped: Some(1),
            dead: Some(1),
            largest_batch_bytes: Some(4096),
            batch_max_bytes: Some(8 << 20),
            last_commit_lsn: Some("0/30564E8".into()),
            link: Some(Link::Down),
            batch_limit: Some(8),
            role: Some(Role::Standby),
            instance: Some("host-a/42/0193".into()),
            lease_holder: Some("host-b/7/0192".into()),
        }),
        replica: Some(ReplicaReport {
            state: ActorStatus::Running,
            restarts: Some(0),
            last_failure: None,
            replay_lsn: Some("0/30564E8".into()),
            lag_bytes: Some(2_621_440),
            lag_seconds: Some(42.5),
            marked_replicated: Some(3),
            freshness: Some(FreshnessView {
                verdict: "stale".into(),
                reason: Some(Reason::ReplayStalled),
                source: Some("replica".into()),
                replay_age_secs: Some(75.5),
                heartbeat_age_secs: Some(70.25),
                replay_paused: true,
                receiver_status: Some("streaming".into()),
                receiver_last_msg_age_secs: Some(0.5),
                receiver_timeline: Some(2),
                unreplayed_bytes: Some(8192),
                max_staleness_secs: 60.0,
                observed_secs_ago: Some(0.25),
                last_error: None,
            }),
        }),
        history: Some(HistoryView {
            consistent: false,
            primary: Some(Seen {
                identity: Identity {
                    system_identifier: "7400000000000000001".into(),
                    timeline: 2,
                },
                since: "2026-12-05T14:00:00.000Z".into(),
            }),
            replica: None,
            changes: vec![Change {
                side: Side::Primary,
                from: Identity {
                    system_identifier: "7400000000000000001".into(),
                    timeline: 1,
                },
                to: Identity {
                    system_identifier: "7400000000000000001".into(),
                    timeline: 2,
                },
                at: "2026-12-05T14:00:00.000Z".into(),
            }],
            unconfirmed: Some(Gap {
                missing: 2,
                sample: vec!["0193a6c4-0000-7000-8000-000000000001".into()],
                since: "2026-12-05T14:00:01.000Z".into(),
            }),
            lost: None,
        }),
        resend_window: Some(WindowView {
            entries: 12,
            bytes: 4096,
            max_bytes: 1 << 28,
            oldest_at: Some("2026-12-01T00:00:00.000Z".into()),
            window_secs: 604_800,
        }),
        events: Some(EventsReport {
            last_seq: 77,
            clients: 2,
            queued: 1,
            dropped: 0,
        }),
        registry: Some(RegistryReport {
            tables: 4,
            source: RegistrySource::StoredCopy,
            read_at: Some(at(1_765_000_002)),
            skipped: vec![SkippedTable {
                table: "obs_view".into(),
                reason: "not a table (relkind 'v')".into(),
            }],
            error: Some("read source did not answer within 5s".into()),
        }),
        tokens: Some(TokensHealth {
            file: Some(token.clone()),
            table: Some(TokenSourceStatus {
                source: TokenOrigin::Read,
                ..token
            }),
        }),
        actors: rows
            .iter()
            .map(|a| (a.name.clone(), ActorStatus::of(&a.state)))
            .collect(),
        tree: Some(TreeReport {
            actors: rows,
            escalation: Some("buffer: more than 20 restarts within 60s".into()),
        }),
    }
}

#[test]
fn a_full_report_round_trips_through_json_unchanged() {
    let report = full();
    let text = serde_json::to_string(&report).unwrap();
    let back: HealthReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back, report);
    // And through a `Value`, as the health event carries it.
    let value = serde_json::to_value(&report).unwrap();
    assert_eq!(
        serde_json::from_value::<HealthReport>(value).unwrap(),
        report
    );
}

#[test]
fn the_original_services_keys_and_words_are_kept() {
    let v = serde_json::to_value(full()).unwrap();
    for key in [
        "status",
        "database",
        "redis",
        "transaction_buffer",
        "background_processor",
    ] {
        assert!(v.get(key).is_some(), "{key} in {v}");
    }
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["database"], "unreachable");
    assert_eq!(v["redis"], "connected");
    assert_eq!(v["transaction_buffer"]["size"], 3);
    assert_eq!(v["transaction_buffer"]["failed"], 1);
    assert_eq!(v["background_processor"], "backing_off");
    assert_eq!(v["actors"]["forwarder"], "backing_off");
    assert_eq!(v["forwarder"]["link"], "down");
    assert_eq!(v["forwarder"]["role"], "standby");
    assert_eq!(v["registry"]["source"], "stored_copy");
    assert_eq!(v["tokens"]["file"]["source"], "stored_copy");
    // The rows keep `/health/actors`' shape: the state's word and its details flat.
    let forwarder = &v["tree"]["actors"][1];
    assert_eq!(forwarder["state"], "backing_off");
    assert!(forwarder["until"].is_string(), "{forwarder}");
    assert!(v["redis_durability"]["problems"][0]
        .as_str()
        .is_some_and(|p| p.starts_with("appendfsync")));
}

#[test]
fn the_original_services_report_reads_with_the_rest_absent() {
    let original = json!({
        "status": "healthy",
        "database": "connected",
        "redis": "connected",
        "transaction_buffer": {"size": 0, "failed": 0},
        "background_processor": "running",
    });
    let report: HealthReport = serde_json::from_value(original).unwrap();
    assert_eq!(report.status, HealthStatus::Healthy);
    assert_eq!(report.transaction_buffer.size, Some(0));
    assert_eq!(report.transaction_buffer.limit, None);
    assert_eq!(report.forwarder, None);
    assert_eq!(report.tree, None);
    assert!(report.actors.is_empty());
    // Not a health report at all: an error, not an empty report.
    assert!(serde_json::from_value::<HealthReport>(json!({})).is_err());
}

#[test]
fn a_newer_services_words_fields_and_sections_read_without_an_error() {
    let mut v = serde_json::to_value(full()).unwrap();
    v["status"] = json!("critical");
    v["database"] = json!("promoting");
    v["actors"]["forwarder"] = json!("hibernating");
    v["tree"]["actors"][0]["state"] = json!("hibernating");
    v["forwarder"]["link"] = json!("flapping");
    v["forwarder"]["role"] = json!("observer");
    v["replica"]["freshness"] = json!({"replay_age_secs": 3.0});
    v["something_new"] = json!({"x": 1});
    // A section of another shape is left out, not an error.
    v["registry"]["tables"] = json!("many");
    let report: HealthReport = serde_json::from_value(v).unwrap();
    assert_eq!(report.status, HealthStatus::Unknown);
    assert_eq!(report.database, DatabaseState::Unknown);
    assert_eq!(report.actors["forwarder"], ActorStatus::Unknown);
    let tree = report.tree.unwrap();
    assert_eq!(tree.actors[0].state, ActorState::Unknown);
    let forwarder = report.forwarder.unwrap();
    assert_eq!(forwarder.link, Some(Link::Unknown));
    assert_eq!(forwarder.role, Some(Role::Unknown));
    // A freshness of another shape is left out; the rest of the replica section reads.
    let mut replica = full().replica;
    if let Some(r) = replica.as_mut() {
        r.freshness = None;
    }
    assert_eq!(report.replica, replica);
    assert_eq!(report.registry, None);
    assert_eq!(report.events, full().events);
}

#[test]
fn status_is_unhealthy_without_redis_or_ingest_and_degraded_when_not_durable() {
    use HealthStatus::*;
    assert_eq!(HealthStatus::judge(true, true, true), Healthy);
    assert_eq!(HealthStatus::judge(true, true, false), Degraded);
    assert_eq!(HealthStatus::judge(false, true, false), Unhealthy);
    assert_eq!(HealthStatus::judge(true, false, true), Unhealthy);
}

#[test]
fn the_database_and_processor_words_follow_the_forwarders_state() {
    let backing_off = ActorState::BackingOff { until: at(0) };
    let cases = [
        (None, "not_configured", "not_configured"),
        (Some(ActorState::Running), "connected", "running"),
        (Some(backing_off), "unreachable", "backing_off"),
        (Some(ActorState::Starting), "starting", "starting"),
        (Some(ActorState::Stopped), "stopped", "stopped"),
    ];
    for (state, database, processor) in cases {
        let word = |v: Value| v.as_str().unwrap_or_default().to_owned();
        let d = serde_json::to_value(DatabaseState::of(state.as_ref())).unwrap();
        let p = serde_json::to_value(ProcessorState::of(state.as_ref())).unwrap();
        assert_eq!((word(d), word(p)), (database.into(), processor.into()));
    }
}

#[test]
fn the_openapi_document_describes_health_and_actors_with_these_types() {
    let doc = serde_json::to_value(crate::http::openapi::build()).unwrap();
    let schema = |path: &str| {
        doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            ["$ref"]
            .clone()
    };
    assert_eq!(schema("/health"), "#/components/schemas/HealthReport");
    assert_eq!(
        schema("/health/actors"),
        "#/components/schemas/ActorsReport"
    );
    let report = &doc["components"]["schemas"]["HealthReport"];
    for key in [
        "status",
        "database",
        "redis",
        "transaction_buffer",
        "background_processor",
    ] {
        assert!(
            report["required"]
                .as_array()
                .is_some_and(|r| r.contains(&json!(key))),
            "{key} is required: {report}"
        );
    }
    let status = &doc["components"]["schemas"]["HealthStatus"]["enum"];
    assert!(
        status
            .as_array()
            .is_some_and(|s| s.contains(&json!("degraded"))),
        "{status}"
    );
}

#[test]
fn a_health_event_is_emitted_only_while_it_can_be_published() {
    assert!(publishable(true, RedisLink::Connected));
    assert!(
        !publishable(false, RedisLink::Connected),
        "the notifier is down"
    );
    assert!(!publishable(true, RedisLink::Disconnected), "Redis is down");
    assert!(!publishable(false, RedisLink::Disconnected));
}
