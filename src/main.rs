//! The `ops-db-api` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
#[cfg(feature = "dev")]
use ops_db_devkit::{bench, dev};
use ops_db_service::config::{Config, Scope};
use ops_db_service::redis_access;
use ops_db_service::startup::Application;
use ops_db_service::{db, telemetry, token};
use tokio_util::sync::CancellationToken;

#[cfg(test)]
mod packaging;
mod resend;
mod status;

#[derive(Parser)]
#[command(
    name = "ops-db-api",
    version,
    about = "Operations-database service of a remote observatory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the long-lived service.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Summit in a box: a durable Redis and the service wired to it, on this machine.
    #[cfg(feature = "dev")]
    Dev {
        /// Where Redis keeps its AOF and the service its logs.
        #[arg(long, default_value = ".dev")]
        dir: PathBuf,
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        #[arg(long, default_value_t = 8081)]
        tcp_port: u16,
        /// One-way delay of the emulated WAN to the primary (e.g. 125ms for a 250 ms RTT);
        /// cut and heal it with the admin API (/admin/wan).
        #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
        wan_delay: std::time::Duration,
    },
    /// Bring the service's own schema (schema.name) on the primary up to date and its
    /// allowlist of writable tables in step with schema.tables (as forwarder.migrate_url,
    /// else primary_url). Never creates or alters a table of ops-db.
    Migrate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Dead letters: list, retry or drop them through a running service's admin API, with
    /// the admin token in OPSDB_TOKEN (never an argument: arguments are visible to all).
    Dlq {
        /// The service's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Send again what the primary lost (a failover, a restore): every transaction of the
    /// resend window from --since that the read source's ledger lacks goes back into the
    /// stream (see docs/OPERATIONS.md). Admin token in OPSDB_TOKEN.
    Resend(resend::ResendArgs),
    /// One screen on a running service's health; exit code 0 ready, 1 not ready, 2 unreachable.
    Status(status::StatusArgs),
    /// Check a config file and print the effective configuration (passwords in URLs hidden).
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the ACL file for the summit host's Redis (/etc/redis/users.acl): the default
    /// user off, and the service's user (opsdb-api) limited to its keys and the commands
    /// it sends. Its password is read from standard input (never an argument); give the
    /// service the same password in redis.url (see docs/OPERATIONS.md, Redis access).
    RedisAcl,
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Benchmarks.
    #[cfg(feature = "dev")]
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this dead letter (a previous page's `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Put a dead letter back at the end of the buffer.
    Retry { id: String },
    /// Remove a dead letter for good.
    Drop { id: String },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a new token; prints it and the line for `auth.tokens`.
    New {
        #[arg(long, default_value = "scripts")]
        name: String,
        /// Comma-separated: write, read, admin.
        #[arg(long, value_delimiter = ',', default_value = "write,read")]
        scopes: Vec<String>,
    },
    /// Make a new token in the service's own api_token table on the primary (at the main
    /// site, through forwarder.migrate_url); it replicates to every site. Prints the token
    /// once. Refused where ops-db has its own api_token (ops-db issues tokens then).
    Create {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        name: String,
        /// Comma-separated: write, read, admin.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime, e.g. 90d; none: until revoked.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// Revoke every active token of that name in the service's own api_token table.
    Revoke {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Print the SHA-256 of a token read from standard input (never an argument).
    Hash,
}

/// Cancelled on Ctrl-C or SIGTERM. With `second_exits` (`serve`), a second one while the
/// stop is under way ends the process at once (exit status 130): an operator who does
/// not want to wait out `shutdown.grace`. Nothing acknowledged is lost by that: an
/// acknowledged write is in Redis, and a batch the forwarder abandons is replayed through
/// the ledger; a request still in flight gets no answer, and its client retries with its
/// key. (`dev` stops its own services on the way out, so it always finishes its stop.)
fn stop_on_signals(second_exits: bool) -> CancellationToken {
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        stop_signal().await;
        tracing::info!("stop signal received, shutting down");
        trigger.cancel();
        if second_exits {
            stop_signal().await;
            tracing::warn!("a second stop signal: exiting now, without waiting for the stop");
            eprintln!("a second stop signal: exiting now");
            std::process::exit(130);
        }
    });
    stop
}

/// The next Ctrl-C or SIGTERM (Ctrl-C only where SIGTERM cannot be listened for).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Status(args) => return Ok(status::run(args, stop_on_signals(false)).await),
        Command::Serve { config } => serve(&config).await,
        #[cfg(feature = "dev")]
        Command::Dev {
            dir,
            http_port,
            tcp_port,
            wan_delay,
        } => {
            // Two weeks of daily files, as `log.keep_files` keeps by default.
            let _guard = telemetry::init("info", Some(&dir.join("logs")), 14)?;
            let options = dev::DevOptions {
                dir,
                http_port,
                tcp_port,
                wan_delay,
            };
            dev::run(options, stop_on_signals(false)).await
        }
        Command::Migrate { config } => migrate(&config).await,
        Command::Dlq { url, command } => {
            let token = std::env::var("OPSDB_TOKEN")
                .map_err(|_| anyhow::anyhow!("set OPSDB_TOKEN to a token with the admin scope"))?;
            dlq(&url, &token, command).await
        }
        Command::Resend(args) => {
            let token = std::env::var("OPSDB_TOKEN")
                .map_err(|_| anyhow::anyhow!("set OPSDB_TOKEN to a token with the admin scope"))?;
            resend::run(args, &token).await
        }
        Command::RedisAcl => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(
                password.len() >= 16,
                "the password on standard input has {} characters: give at least 16",
                password.len()
            );
            print!("{}", redis_access::acl_file(password, None));
            Ok(())
        }
        Command::CheckConfig { config } => {
            let config = load(&config)?;
            println!("{}", serde_json::to_string_pretty(&config.redacted())?);
            Ok(())
        }
        Command::Token { command } => tokens(command).await,
        #[cfg(feature = "dev")]
        Command::Bench { command } => {
            let _guard = telemetry::init("error", None, 1)?;
            bench::run(command).await
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(Some(path)).map_err(|e| anyhow::anyhow!("config: {e}"))
}

async fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let log = &config.log;
    let _guard = telemetry::init(&log.level, log.dir.as_deref(), log.keep_files)?;
    let app = Application::build(config).await?;
    app.run_until_stopped(stop_on_signals(true)).await
}

async fn migrate(path: &std::path::Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let target = config.migrate_target().ok_or_else(|| {
        anyhow::anyhow!("config: neither forwarder.migrate_url nor forwarder.primary_url is set")
    })?;
    db::migrate(&target, &config.schema).await?;
    println!(
        "migrated schema {}; writable tables: {}",
        config.schema.name,
        config.schema.tables.join(", ")
    );
    Ok(())
}

fn scopes(names: &[String]) -> anyhow::Result<Vec<Scope>> {
    names
        .iter()
        .map(|n| {
            Scope::from_name(n.trim())
                .ok_or_else(|| anyhow::anyhow!("unknown scope {n:?}: write, read or admin"))
        })
        .collect()
}

async fn tokens(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::New {
            name,
            scopes: names,
        } => {
            let scopes = scopes(&names)?;
            let secret = token::generate();
            let list: Vec<String> = scopes.iter().map(|s| format!("\"{}\"", s.name())).collect();
            println!("token:  {secret}");
            println!(
                "config: {{ name = \"{name}\", sha256 = \"{}\", scopes = [{}] }}",
                token::hash(&secret),
                list.join(", ")
            );
        }
        TokenCommand::Create {
            config,
            name,
            scopes: names,
            expires_in,
        } => {
            let scopes = scopes(&names)?;
            let config = load(&config)?;
            let target = config
                .migrate_target()
                .ok_or_else(|| anyhow::anyhow!("config: forwarder.migrate_url is not set"))?;
            let expires_at = expires_in
                .map(|d| {
                    chrono::Duration::from_std(d)
                        .ok()
                        .and_then(|d| chrono::Utc::now().checked_add_signed(d))
                        .ok_or_else(|| anyhow::anyhow!("--expires-in {d:?} is too far away"))
                })
                .transpose()?;
            let secret = token::create(&target, &config.schema, &name, &scopes, expires_at).await?;
            println!("token:  {secret}");
            println!("name:   {name}");
            match expires_at {
                Some(at) => println!("expires: {}", at.to_rfc3339()),
                None => println!("expires: never (until revoked)"),
            }
        }
        TokenCommand::Revoke { config, name } => {
            let config = load(&config)?;
            let target = config
                .migrate_target()
                .ok_or_else(|| anyhow::anyhow!("config: forwarder.migrate_url is not set"))?;
            let n = token::revoke(&target, &config.schema, &name).await?;
            println!("revoked {n} token(s) named {name:?}");
        }
        TokenCommand::Hash => {
            let mut secret = String::new();
            std::io::stdin().read_line(&mut secret)?;
            println!("{}", token::hash(secret.trim()));
        }
    }
    Ok(())
}

async fn dlq(url: &str, token: &str, command: DlqCommand) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let base = url.trim_end_matches('/');
    let request = match &command {
        DlqCommand::List { limit, cursor } => {
            let after = cursor
                .as_ref()
                .map(|c| format!("&cursor={c}"))
                .unwrap_or_default();
            http.get(format!("{base}/admin/dlq?limit={limit}{after}"))
        }
        DlqCommand::Retry { id } => http.post(format!("{base}/admin/dlq/{id}/retry")),
        DlqCommand::Drop { id } => http.delete(format!("{base}/admin/dlq/{id}")),
    };
    let response = request.bearer_auth(token).send().await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "{status}: {}",
            body["error"]["message"].as_str().unwrap_or("no message")
        );
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}
