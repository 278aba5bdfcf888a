//! `ops-db-api dev`: the summit in a box. Starts a durable Redis from the machine's
//! binaries and the service wired to it (logs in `DIR/logs`), prints `READY {json}` once everything answers,
//! and stops everything it started on Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::local_redis::{free_port, LocalRedis};
use crate::startup::Application;
use crate::token as auth_token;

pub struct DevOptions {
    pub dir: PathBuf,
    pub http_port: u16,
    pub tcp_port: u16,
}

pub async fn run(options: DevOptions, stop: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let dir = options.dir.canonicalize()?;
    let redis = LocalRedis::start(&dir.join("redis"), free_port()?).await?;
    let token = auth_token::generate();
    let config = Config::from_toml_str(&format!(
        r#"
        [site]
        name = "summit"
        mode = "secondary"
        [http]
        listen = "127.0.0.1:{http}"
        [tcp]
        listen = "127.0.0.1:{tcp}"
        [redis]
        url = "{redis}"
        [auth]
        tokens = [{{ name = "dev", sha256 = "{hash}", scopes = ["write", "admin"] }}]
        [faults]
        enabled = true
        "#,
        http = options.http_port,
        tcp = options.tcp_port,
        redis = redis.url(),
        hash = auth_token::hash(&token),
    ))?;
    let app = Application::build(config).await?;
    let ready = json!({
        "http": format!("http://{}", app.http_addr()),
        "tcp": app.tcp_addr().to_string(),
        "redis_url": redis.url(),
        "token": token,
        "dir": dir,
    });
    println!("READY {ready}");
    let result = app.run_until_stopped(stop).await;
    redis.stop().await;
    result
}
