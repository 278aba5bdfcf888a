//! `ops-db-api status`: one screen on a running service, for operators and scripts.
//!
//! Reads `/health/ready`, `/health` and `/health/actors` (open endpoints, no token), each
//! within `--timeout`, into the service's own types (`Readiness`, `HealthReport`,
//! `ActorsReport`, which read an older or newer service's answers too), and prints
//! [`screen::render`] of them (or, with `--json`, the three in one object). The exit code is the verdict, so scripts and monitoring need no
//! parsing: 0 ready, 1 not ready (`/health/ready` answered 503), 2 the service could not be
//! reached or answered something that is not its health (one line on stderr naming the URL).
//! `--watch` samples again every interval until Ctrl-C; the exit code is the last sample's.

mod screen;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use ops_db_service::health_report::{ActorsReport, HealthReport, Readiness};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub use screen::render;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The service's HTTP address (`http://` may be left out).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// How long each of the three requests may take.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Redraw every INTERVAL (default 2s) until Ctrl-C; the exit code is the last sample's.
    #[arg(
        long,
        value_name = "INTERVAL",
        num_args = 0..=1,
        default_missing_value = "2s",
        value_parser = watch_interval
    )]
    watch: Option<Duration>,
    /// Print the three answers as one JSON object (one line per sample with --watch).
    #[arg(long)]
    json: bool,
}

/// A `--watch` interval: at least 100 ms, so a typo cannot hammer the service.
fn watch_interval(s: &str) -> Result<Duration, String> {
    let every = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if every < Duration::from_millis(100) {
        return Err("at least 100ms".to_owned());
    }
    Ok(every)
}

/// What one sample says, as an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ready = 0,
    NotReady = 1,
    Unreachable = 2,
}

impl From<Verdict> for ExitCode {
    fn from(verdict: Verdict) -> Self {
        ExitCode::from(verdict as u8)
    }
}

/// The service's three health answers, read at about the same time.
#[derive(Debug, Clone)]
pub struct Sample {
    pub url: String,
    /// `/health/ready` answered 200 (else 503).
    pub ready: bool,
    /// `/health/ready`'s `reasons` when not ready.
    pub reasons: Vec<String>,
    /// `/health`.
    pub health: HealthReport,
    /// `/health/actors`.
    pub actors: ActorsReport,
    /// The two answers as they came, for `--json`: the typed reports keep only what the
    /// screen shows, and a newer service's fields must not be dropped on the way.
    pub answers: Answers,
}

/// `/health` and `/health/actors` as answered.
#[derive(Debug, Clone, Default)]
pub struct Answers {
    pub health: Value,
    pub actors: Value,
}

impl Sample {
    pub fn verdict(&self) -> Verdict {
        if self.ready {
            Verdict::Ready
        } else {
            Verdict::NotReady
        }
    }

    /// What `--json` prints.
    pub fn to_json(&self) -> Value {
        json!({
            "url": self.url,
            "ready": self.ready,
            "reasons": self.reasons,
            "health": self.answers.health,
            "actors": self.answers.actors,
        })
    }
}

/// Why there is no sample: which URL, and what went wrong, in one line.
#[derive(Debug, Clone)]
pub struct Unreachable {
    pub url: String,
    pub error: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.url, self.error)
    }
}

pub async fn run(args: StatusArgs, stop: CancellationToken) -> ExitCode {
    let client = match reqwest::Client::builder().timeout(args.timeout).build() {
        Ok(client) => client,
        Err(err) => {
            eprintln!("ops-db-api status: http client: {}", root_cause(&err));
            return Verdict::Unreachable.into();
        }
    };
    // `summit:8080` would parse as a URL of scheme `summit`: an address alone means HTTP.
    let url = args.url.trim_end_matches('/');
    let base = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let base = base.as_str();
    let redraw = args.watch.is_some() && !args.json && std::io::stdout().is_terminal();
    let mut verdict = Verdict::Unreachable;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            outcome = sample(&client, base, args.timeout) => outcome,
        };
        verdict = show(&outcome, &args, redraw);
        let Some(every) = args.watch else { break };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    verdict.into()
}

/// Prints one sample (or why there is none) and returns its verdict.
fn show(outcome: &Result<Sample, Unreachable>, args: &StatusArgs, redraw: bool) -> Verdict {
    let mut out = String::new();
    if redraw {
        // Home, then clear: the frame is written in one go, so it does not flicker.
        out.push_str("\x1b[H\x1b[2J");
    }
    let verdict = match outcome {
        Ok(sample) => {
            if args.json {
                out.push_str(&sample.to_json().to_string());
                out.push('\n');
            } else {
                out.push_str(&render(sample, SystemTime::now()));
                if let Some(every) = args.watch {
                    out.push_str(&format!(
                        "every {}, Ctrl-C to stop\n",
                        humantime::format_duration(every)
                    ));
                }
                if !redraw && args.watch.is_some() {
                    out.push('\n');
                }
            }
            sample.verdict()
        }
        Err(_) => Verdict::Unreachable,
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    if let Err(unreachable) = outcome {
        eprintln!("ops-db-api status: {unreachable}");
    }
    verdict
}

/// Reads the three endpoints concurrently.
async fn sample(
    client: &reqwest::Client,
    base: &str,
    timeout: Duration,
) -> Result<Sample, Unreachable> {
    let (ready, health, actors) = tokio::try_join!(
        get(client, base, "/health/ready", timeout),
        get(client, base, "/health", timeout),
        get(client, base, "/health/actors", timeout),
    )?;
    let is_ready = match ready.0 {
        StatusCode::OK => true,
        StatusCode::SERVICE_UNAVAILABLE => false,
        other => return Err(unexpected(format!("{base}/health/ready"), other)),
    };
    // The reasons are a courtesy: an answer without them is still a verdict.
    let reasons = serde_json::from_value::<Readiness>(ready.1)
        .map(|r| r.reasons)
        .unwrap_or_default();
    let answers = Answers {
        health: health.1.clone(),
        actors: actors.1.clone(),
    };
    Ok(Sample {
        url: base.to_owned(),
        ready: is_ready,
        reasons,
        health: typed(base, "/health", health, "a health report")?,
        actors: typed(base, "/health/actors", actors, "an actors report")?,
        answers,
    })
}

/// A 200 answer of `path` read as `T`.
fn typed<T: DeserializeOwned>(
    base: &str,
    path: &str,
    (status, body): (StatusCode, Value),
    what: &str,
) -> Result<T, Unreachable> {
    let url = format!("{base}{path}");
    if status != StatusCode::OK {
        return Err(unexpected(url, status));
    }
    serde_json::from_value(body).map_err(|e| Unreachable {
        url,
        error: format!("answered with JSON that is not {what} ({e})"),
    })
}

fn unexpected(url: String, status: StatusCode) -> Unreachable {
    Unreachable {
        url,
        error: format!("unexpected answer {status}"),
    }
}

/// One GET: its status and JSON body.
async fn get(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, Value), Unreachable> {
    let url = format!("{base}{path}");
    let failed = |error: String| Unreachable {
        url: url.clone(),
        error,
    };
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| failed(describe(&e, timeout)))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| failed(describe(&e, timeout)))?;
    let value = serde_json::from_slice(&body).map_err(|e| {
        failed(format!(
            "answered {status} with a body that is not JSON ({e})"
        ))
    })?;
    Ok((status, value))
}

/// A request error in a few words: reqwest's own message names the URL again and hides the
/// cause in its source chain.
fn describe(err: &reqwest::Error, timeout: Duration) -> String {
    if err.is_timeout() {
        format!("no answer within {}", humantime::format_duration(timeout))
    } else if err.is_connect() {
        format!("cannot connect: {}", root_cause(err))
    } else {
        root_cause(err)
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        status: StatusArgs,
    }

    fn parse(args: &[&str]) -> StatusArgs {
        Cli::try_parse_from([&["status"], args].concat())
            .unwrap()
            .status
    }

    #[test]
    fn watch_takes_an_optional_interval() {
        let once = parse(&[]);
        assert_eq!(once.watch, None);
        assert_eq!(once.timeout, Duration::from_secs(5));
        assert_eq!(once.url, "http://127.0.0.1:8080");
        assert_eq!(parse(&["--watch"]).watch, Some(Duration::from_secs(2)));
        let every = parse(&["--watch", "500ms", "--url", "http://summit:8080", "--json"]);
        assert_eq!(every.watch, Some(Duration::from_millis(500)));
        assert!(every.json);
        assert!(Cli::try_parse_from(["status", "--watch", "soon"]).is_err());
        assert!(Cli::try_parse_from(["status", "--watch", "0s"]).is_err());
    }

    #[test]
    fn the_verdict_is_the_readiness() {
        let original = json!({
            "status": "healthy", "database": "not_configured", "redis": "connected",
            "transaction_buffer": {"size": 0, "failed": 0},
            "background_processor": "not_configured",
        });
        let mut sample = Sample {
            url: "http://x".into(),
            ready: true,
            reasons: vec![],
            health: serde_json::from_value(original.clone()).unwrap(),
            actors: serde_json::from_value(json!({})).unwrap(),
            answers: Answers {
                health: original,
                actors: json!({"supervisor": {"added_later": 1}}),
            },
        };
        assert_eq!(sample.verdict(), Verdict::Ready);
        sample.ready = false;
        assert_eq!(sample.verdict(), Verdict::NotReady);
        assert_eq!(Verdict::Unreachable as u8, 2);
        assert_eq!(sample.to_json()["ready"], false);
    }

    /// `--json` prints the answers whole: fields the reports do not know (a newer
    /// service's) are kept.
    #[test]
    fn json_keeps_what_the_service_answered() {
        let health = json!({
            "status": "healthy", "database": "not_configured", "redis": "connected",
            "transaction_buffer": {"size": 0, "failed": 0},
            "background_processor": "not_configured", "from_a_newer_service": {"x": 1},
        });
        let sample = Sample {
            url: "http://x".into(),
            ready: true,
            reasons: vec![],
            health: serde_json::from_value(health.clone()).unwrap(),
            actors: serde_json::from_value(json!({})).unwrap(),
            answers: Answers {
                health: health.clone(),
                actors: json!({"supervisor": {"added_later": 1}}),
            },
        };
        let printed = sample.to_json();
        assert_eq!(printed["health"], health);
        assert_eq!(printed["actors"]["supervisor"]["added_later"], 1);
    }
}
