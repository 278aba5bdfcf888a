//! `ops-db-api dev`: the summit in a box, from this machine's binaries: a durable Redis
//! (AOF, `appendfsync always`), a PostgreSQL primary with a streaming replica (the
//! stand-in ops-db tables loaded and seeded, then migrated; reads come from the replica), an emulated WAN (fault proxy) between the forwarder and the primary, and the
//! service wired to them, with fault drills enabled. Prints `READY {json}` once everything
//! answers; stops everything it started on Ctrl-C or SIGTERM. State lives in `DIR` (Redis
//! AOF, database files, logs) and is reused by the next run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::fault_proxy::FaultProxy;
use crate::local_pg::PgUrl;
use ops_db_service::config::{Config, Scope, SiteMode, Token};
use ops_db_service::startup::Application;
use ops_db_service::token as auth_token;

pub struct DevOptions {
    pub dir: PathBuf,
    pub http_port: u16,
    pub tcp_port: u16,
    /// One-way delay of the emulated WAN (half its round trip).
    pub wan_delay: Duration,
}

pub async fn run(options: DevOptions, stop: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let dir = options.dir.canonicalize()?;
    let (redis, pg) = crate::services::local_services(&dir).await?;
    let primary: SocketAddr = ([127, 0, 0, 1], pg.primary_port()).into();
    let wan = FaultProxy::start(([127, 0, 0, 1], 0).into(), primary)
        .await
        .context("starting the emulated WAN")?;
    wan.set_delay(options.wan_delay);
    // The forwarder reaches the primary only through the emulated WAN.
    let forwarder_url = PgUrl {
        port: wan.addr().port(),
        ..pg.primary_parts()
    };
    let token = auth_token::generate();
    let config = config(
        &options,
        &redis.url(),
        &forwarder_url.to_string(),
        &pg.replica_url(),
        &token,
    )?;
    let app = Application::build(config)
        .await?
        .with_admin_routes(crate::wan::routes(wan.clone()));
    let ready = json!({
        "http": format!("http://{}", app.http_addr()),
        "tcp": app.tcp_addr().to_string(),
        "redis_url": redis.url(),
        "primary_url": pg.primary_url(),
        "replica_url": pg.replica_url(),
        "wan": wan.addr().to_string(),
        "wan_delay": humantime::format_duration(options.wan_delay).to_string(),
        "token": token,
        "dir": dir,
    });
    println!("READY {ready}");
    let result = app.run_until_stopped(stop).await;
    wan.stop().await;
    if let Err(err) = pg.stop().await {
        tracing::warn!(error = %err, "stopping PostgreSQL");
    }
    redis.stop().await;
    result
}

/// The service's config: the local servers, the forwarder through the emulated WAN, one
/// token with every scope, fault drills enabled.
fn config(
    options: &DevOptions,
    redis_url: &str,
    forwarder_url: &str,
    replica_url: &str,
    token: &str,
) -> anyhow::Result<Config> {
    let mut config = Config::defaults("summit");
    config.site.mode = SiteMode::Secondary;
    config.http.listen = ([127, 0, 0, 1], options.http_port).into();
    config.tcp.listen = ([127, 0, 0, 1], options.tcp_port).into();
    config.redis.url = redis_url.to_owned();
    config.forwarder.primary_url = Some(forwarder_url.to_owned());
    config.replica.url = Some(replica_url.to_owned());
    config.auth.tokens = vec![Token {
        name: "dev".to_owned(),
        sha256: auth_token::hash(token),
        scopes: vec![Scope::Write, Scope::Read, Scope::Admin],
    }];
    config.faults.enabled = true;
    config.validate()?;
    Ok(config)
}
