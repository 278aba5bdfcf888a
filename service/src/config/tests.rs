use super::*;
use figment::Jail;

const SITE: &str = "[site]\nname = \"summit\"\n";

fn load_err(toml: &str) -> String {
    Config::from_toml_str(toml)
        .expect_err("must fail")
        .to_string()
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail API
fn the_shipped_site_files_load() {
    // In a Jail: Config::load reads the environment, which other tests change.
    Jail::expect_with(|_| {
        for file in ["../config/summit.toml", "../config/cologne.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let config = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!config.site.name.is_empty());
        }
        Ok(())
    });
}

#[test]
fn the_default_schema_is_the_compiled_in_one() {
    let schema = Schema::default();
    let config = Config::from_toml_str(SITE).expect("defaults and a site name");
    assert_eq!(schema.name, "opsdb_api");
    assert_eq!(schema.name, config.schema.name);
    assert_eq!(schema.domain, config.schema.domain);
    assert_eq!(schema.tables, config.schema.tables);
}

#[test]
fn the_defaults_are_what_loading_starts_from() {
    let built = Config::defaults("summit");
    let loaded = Config::from_toml_str(SITE).expect("defaults and a site name");
    let json = |c: &Config| serde_json::to_value(c).expect("config serialises");
    assert_eq!(json(&built), json(&loaded));
    built.validate().expect("the defaults are valid");
}

#[test]
fn a_config_changed_in_rust_is_checked_as_a_loaded_one() {
    let mut config = Config::defaults("summit");
    config.buffer.max_batch = 0;
    let err = config.validate().expect_err("must fail").to_string();
    assert_eq!(err, load_err(&format!("{SITE}[buffer]\nmax_batch = 0\n")));
    let err = Config::defaults("").validate().expect_err("must fail");
    assert!(err.to_string().starts_with("site.name: "), "{err}");
}

#[test]
fn a_missing_site_name_is_named() {
    let err = load_err("");
    assert!(
        err.contains("missing field `name`") && err.contains("site"),
        "{err}"
    );
}

#[test]
fn an_unknown_key_is_named() {
    let err = load_err(&format!("{SITE}[http]\nlisten_addr = \"127.0.0.1:1\"\n"));
    assert!(err.contains("listen_addr") && err.contains("http"), "{err}");
}

#[test]
fn a_bad_duration_is_named() {
    let err = load_err(&format!("{SITE}[redis]\ntimeout = \"5 parsecs\"\n"));
    assert!(
        err.contains("redis.timeout") || err.contains("timeout"),
        "{err}"
    );
    assert!(!err.contains('\n'));
}

#[test]
fn a_secondary_that_forwards_without_a_read_source_is_refused_naming_replica_url() {
    let forwarder =
        "[forwarder]\nprimary_url = \"postgres://f@primary.example/opsdb?sslmode=verify-full\"\n";
    let err = load_err(&format!("{SITE}{forwarder}"));
    assert!(err.starts_with("replica.url: must be set"), "{err}");
    assert!(err.contains("forwarder.primary_url"), "{err}");
    // With a read source, or on the main site (whose read source is the primary), or
    // without forwarding (nothing is released because nothing is forwarded), it loads.
    let replica = "[replica]\nurl = \"postgres://r@127.0.0.1:5433/opsdb\"\n";
    Config::from_toml_str(&format!("{SITE}{forwarder}{replica}")).expect("with a replica");
    Config::from_toml_str(&format!(
        "[site]\nname = \"c\"\nmode = \"main\"\n{forwarder}"
    ))
    .expect("main site");
    Config::from_toml_str(SITE).expect("no forwarding");
}

#[test]
fn the_staleness_limit_must_exceed_the_heartbeat_interval_and_the_error_names_both() {
    let ok = Config::from_toml_str(SITE).expect("defaults");
    assert_eq!(ok.forwarder.heartbeat_interval, Duration::from_secs(10));
    assert_eq!(ok.replica.max_staleness, Duration::from_secs(60));
    let err = load_err(&format!(
        "{SITE}[forwarder]\nheartbeat_interval = \"1m\"\n[replica]\nmax_staleness = \"60s\"\n"
    ));
    assert!(
        err.starts_with(
            "replica.max_staleness: must be longer than forwarder.heartbeat_interval (1m)"
        ),
        "{err}"
    );
    let err = load_err(&format!("{SITE}[replica]\nmax_staleness = \"0s\"\n"));
    assert_eq!(err, "replica.max_staleness: must be longer than zero");
    // A heartbeat of 0 disables it; any positive limit will do then.
    let off = format!(
        "{SITE}[forwarder]\nheartbeat_interval = \"0s\"\n[replica]\nmax_staleness = \"1s\"\n"
    );
    Config::from_toml_str(&off).expect("heartbeat off");
}

#[test]
fn a_remote_primary_needs_verify_full_unless_weak_tls_is_allowed_out_loud() {
    let replica = "[replica]\nurl = \"postgres://r@127.0.0.1:5433/opsdb\"\n";
    for url in [
        "postgres://f@primary.example/opsdb",
        "postgres://f@primary.example/opsdb?sslmode=prefer",
        "postgres://f@primary.example/opsdb?sslmode=require",
        "postgres://f@primary.example/opsdb?sslmode=verify-ca",
        "postgres://f@10.1.2.3:5432/opsdb?sslmode=disable",
    ] {
        let forwarder = format!("[forwarder]\nprimary_url = \"{url}\"\n");
        let err = load_err(&format!("{SITE}{forwarder}{replica}"));
        assert!(err.starts_with("forwarder.primary_url: "), "{url}: {err}");
        assert!(
            err.contains("sslmode=verify-full") && err.contains("allow_weak_tls"),
            "{err}"
        );
        let allowed = format!("{forwarder}allow_weak_tls = true\n");
        Config::from_toml_str(&format!("{SITE}{allowed}{replica}")).expect("allowed out loud");
    }
    let migrate = "[forwarder]\nprimary_url = \"postgres://f@127.0.0.1/opsdb\"\n\
                   migrate_url = \"postgres://o@primary.example/opsdb\"\n";
    let err = load_err(&format!("{SITE}{migrate}{replica}"));
    assert!(err.starts_with("forwarder.migrate_url: "), "{err}");
    // On this host, any sslmode: the path never leaves it.
    for url in [
        "postgres://f@127.0.0.1:5432/opsdb",
        "postgres://f@localhost/opsdb?sslmode=disable",
        "postgres://f@[::1]:5432/opsdb",
        "postgres://f@primary.example/opsdb?sslmode=verify-full",
    ] {
        let forwarder = format!("[forwarder]\nprimary_url = \"{url}\"\n");
        Config::from_toml_str(&format!("{SITE}{forwarder}{replica}")).expect(url);
    }
}

#[test]
fn semantic_errors_name_their_key() {
    let err = load_err(&format!("{SITE}[buffer]\nmax_batch = 0\n"));
    assert_eq!(err, "buffer.max_batch: must be at least 1");
    let err = load_err("[site]\nname = \"has space\"\n");
    assert!(err.starts_with("site.name:"), "{err}");
    let err = load_err(&format!(
        "{SITE}[auth]\ntokens = [{{ name = \"x\", sha256 = \"abc\", scopes = [\"write\"] }}]\n"
    ));
    assert!(err.starts_with("auth.tokens:"), "{err}");
    let err = load_err(&format!(
        "{SITE}[tcp]\nmax_line_bytes = 100\nunauthenticated_line_bytes = 101\n"
    ));
    assert!(err.starts_with("tcp.unauthenticated_line_bytes:"), "{err}");
    let err = load_err(&format!("{SITE}[tcp]\nidle_timeout = \"0s\"\n"));
    assert_eq!(err, "tcp.idle_timeout: must be longer than zero");
    let err = load_err(&format!("{SITE}[log]\nkeep_files = 0\n"));
    assert_eq!(err, "log.keep_files: must be at least 1");
    for fraction in ["0.0", "1.0", "1.5", "-0.2", "nan"] {
        let err = load_err(&format!(
            "{SITE}[buffer]\nmax_memory_fraction = {fraction}\n"
        ));
        assert!(
            err.starts_with("buffer.max_memory_fraction: must be greater than 0 and less than 1"),
            "{fraction}: {err}"
        );
    }
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail API
fn environment_overrides_the_file() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "site.toml",
            &format!("{SITE}[http]\nlisten = \"127.0.0.1:1111\"\n"),
        )?;
        jail.set_env("OPSDB__HTTP__LISTEN", "127.0.0.1:2222");
        jail.set_env("OPSDB__REDIS__TIMEOUT", "250ms");
        jail.set_env("OPSDB__BUFFER__MAX_BATCH", "7");
        let config = Config::load(Some(Path::new("site.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(config.http.listen.port(), 2222);
        assert_eq!(config.redis.timeout, Duration::from_millis(250));
        assert_eq!(config.buffer.max_batch, 7);
        jail.set_env("OPSDB__BUFFER__NOPE", "1");
        let err = Config::load(Some(Path::new("site.toml"))).expect_err("unknown env key");
        assert!(err.to_string().contains("nope"), "{err}");
        Ok(())
    });
}

#[test]
fn restart_policies_share_one_type_and_its_rules() {
    let config = Config::from_toml_str(SITE).expect("defaults");
    assert!(config.supervisor.policy().intensity.is_some());
    assert!(config.forwarder.restart.policy().intensity.is_none());
    assert!(config.replica.restart.policy().intensity.is_none());
    let err = load_err(&format!(
        "{SITE}[forwarder.restart]\nmax_restarts = 5\nwithin = \"1m\"\n"
    ));
    assert!(
        err.starts_with("forwarder.restart: takes no max_restarts"),
        "{err}"
    );
    let err = load_err(&format!(
        "{SITE}[replica.restart]\nbackoff_base = \"2s\"\nbackoff_cap = \"1s\"\n"
    ));
    assert_eq!(
        err,
        "replica.restart: backoff_cap must not be shorter than backoff_base"
    );
    let err = load_err(&format!("{SITE}[supervisor]\nmax_restarts = 0\n"));
    assert!(err.starts_with("supervisor: max_restarts"), "{err}");
    // The old flat keys are refused by name, not ignored.
    let err = load_err(&format!("{SITE}[forwarder]\nbackoff_base = \"1s\"\n"));
    assert!(err.contains("backoff_base"), "{err}");
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail API
fn tokens_come_from_the_environment_too() {
    Jail::expect_with(|jail| {
        let hash = crate::token::hash("from-the-environment");
        jail.set_env("OPSDB__SITE__NAME", "summit");
        jail.set_env(
            "OPSDB__AUTH__TOKENS",
            format!("[{{name=\"env\",sha256=\"{hash}\",scopes=[\"read\",\"write\"]}}]"),
        );
        let config = Config::load(None).expect("loads");
        assert_eq!(config.auth.tokens.len(), 1);
        assert_eq!(config.auth.tokens[0].name, "env");
        assert_eq!(config.auth.tokens[0].sha256, hash);
        assert_eq!(config.auth.tokens[0].scopes, [Scope::Read, Scope::Write]);
        Ok(())
    });
}

#[test]
fn check_config_shows_no_password() {
    let config = Config::from_toml_str(&format!(
        "{SITE}[redis]\nurl = \"redis://:redis-secret@127.0.0.1:6379\"\n\
         [forwarder]\nprimary_url = \"postgres://f:pg-secret@primary.example/opsdb?sslmode=verify-full\"\n\
         migrate_url = \"postgres://o@primary.example/opsdb?password=owner-secret&sslmode=verify-full\"\n\
         [replica]\nurl = \"postgres://r:replica-secret@127.0.0.1:5433/opsdb\"\n"
    ))
    .expect("valid");
    let shown = serde_json::to_string(&config.redacted()).expect("json");
    for secret in [
        "redis-secret",
        "pg-secret",
        "owner-secret",
        "replica-secret",
    ] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("postgres://f:***@primary.example/opsdb?sslmode=verify-full"));
    // The config itself keeps them: it is what connects.
    assert!(config
        .forwarder
        .primary_url
        .as_deref()
        .is_some_and(|u| u.contains("pg-secret")));
}

#[test]
fn the_compiled_in_presets_parse_and_pass_their_check() {
    let presets = parse_presets(Toml::string(PRESETS)).expect("config/presets.toml");
    assert_eq!(presets.0.len(), 6);
}

#[test]
fn the_connection_and_websocket_bounds_name_their_keys() {
    for (section, key, value) in [
        ("http", "max_connections_per_peer", "0"),
        ("tcp", "max_connections_per_peer", "0"),
        ("tcp", "max_unauthenticated", "0"),
        ("events", "max_clients", "0"),
    ] {
        let err = load_err(&format!("{SITE}[{section}]\n{key} = {value}\n"));
        assert_eq!(err, format!("{section}.{key}: must be at least 1"));
    }
    let err = load_err(&format!("{SITE}[tcp]\nauth_timeout = \"0s\"\n"));
    assert_eq!(err, "tcp.auth_timeout: must be longer than zero");
    let err = load_err(&format!(
        "{SITE}[events]\nping_interval = \"30s\"\nidle_timeout = \"30s\"\n"
    ));
    assert!(
        err.starts_with("events.idle_timeout: must be longer than events.ping_interval"),
        "{err}"
    );
}

#[test]
fn the_fast_replica_poll_is_at_most_the_slow_one() {
    let err = load_err(&format!(
        "{SITE}[replica]\npoll_interval = \"100ms\"\nfast_poll_interval = \"200ms\"\n"
    ));
    assert!(
        err.starts_with("replica.fast_poll_interval: must be at most replica.poll_interval"),
        "{err}"
    );
    let err = load_err(&format!("{SITE}[replica]\nfast_poll_interval = \"0s\"\n"));
    assert_eq!(err, "replica.fast_poll_interval: must be longer than zero");
}

#[test]
fn sizes_take_bytes_or_units() {
    let config = Config::from_toml_str(&format!(
        "{SITE}[buffer]\nmin_disk_free_bytes = \"2 GiB\"\n\
         [forwarder]\nbatch_max_bytes = \"16MiB\"\n[resend]\nmax_bytes = 1000\n"
    ))
    .expect("sizes");
    assert_eq!(config.buffer.min_disk_free_bytes, 2 << 30);
    assert_eq!(config.forwarder.batch_max_bytes, 16 << 20);
    assert_eq!(config.resend.max_bytes, 1000);
    let config = Config::from_toml_str(&format!("{SITE}[resend]\nmax_bytes = \"1 MB\"\n"))
        .expect("a decimal unit");
    assert_eq!(config.resend.max_bytes, 1_000_000);
    // Written back as integers: what an older build reads.
    let json = serde_json::to_value(&config).expect("config serialises");
    assert_eq!(json["resend"]["max_bytes"], 1_000_000);
}

#[test]
fn a_bad_size_is_named() {
    let err = load_err(&format!("{SITE}[buffer]\nmin_disk_free_bytes = \"lots\"\n"));
    assert!(err.contains("min_disk_free_bytes"), "{err}");
    let err = load_err(&format!("{SITE}[buffer]\nmin_disk_free_bytes = -1\n"));
    assert!(err.contains("min_disk_free_bytes"), "{err}");
}
