//! The `ops-db-api` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ops_db_api::config::Config;
use ops_db_api::startup::Application;
use ops_db_api::{bench, dev, telemetry, token};
use tokio_util::sync::CancellationToken;

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
    Dev {
        /// Where Redis keeps its AOF and the service its logs.
        #[arg(long, default_value = ".dev")]
        dir: PathBuf,
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        #[arg(long, default_value_t = 8081)]
        tcp_port: u16,
    },
    /// Check a config file and print the effective configuration (tokens hashed as given).
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a new token; prints it and the line for `auth.tokens`.
    New {
        #[arg(long, default_value = "scripts")]
        name: String,
    },
    /// Print the SHA-256 of an existing token.
    Hash { token: String },
}

/// Cancelled on Ctrl-C or SIGTERM.
fn stop_on_signals() -> CancellationToken {
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("stop signal received, shutting down");
        trigger.cancel();
    });
    stop
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => {
            let config = Config::load(Some(&config)).map_err(|e| anyhow::anyhow!("config: {e}"))?;
            let _guard = telemetry::init(&config.log.level, config.log.dir.as_deref())?;
            let app = Application::build(config).await?;
            app.run_until_stopped(stop_on_signals()).await
        }
        Command::Dev {
            dir,
            http_port,
            tcp_port,
        } => {
            let _guard = telemetry::init("info", Some(&dir.join("logs")))?;
            let options = dev::DevOptions {
                dir,
                http_port,
                tcp_port,
            };
            dev::run(options, stop_on_signals()).await
        }
        Command::CheckConfig { config } => {
            let config = Config::load(Some(&config)).map_err(|e| anyhow::anyhow!("config: {e}"))?;
            println!("{}", serde_json::to_string_pretty(&config)?);
            Ok(())
        }
        Command::Token { command } => {
            match command {
                TokenCommand::New { name } => {
                    let secret = token::generate();
                    println!("token:  {secret}");
                    println!(
                        "config: {{ name = \"{name}\", sha256 = \"{}\", scopes = [\"write\"] }}",
                        token::hash(&secret)
                    );
                }
                TokenCommand::Hash { token: secret } => println!("{}", token::hash(&secret)),
            }
            Ok(())
        }
        Command::Bench { command } => {
            let _guard = telemetry::init("warn", None)?;
            bench::run(command).await
        }
    }
}
