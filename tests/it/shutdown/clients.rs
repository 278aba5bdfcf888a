//! Clients that write continuously until the service refuses their connection, and record
//! for every write they sent what came back: an answer, or nothing (the connection was
//! reset or closed after the request went out). HTTP clients start observations, one
//! request at a time on a keep-alive connection; TCP clients start one and then register
//! files in bulk, pipelining their requests, as scripts do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::helpers::file_body;

/// The longest a client writes: a bound in case the service never stops. Far above what
/// the writes take on an idle machine (about 40 s): on a loaded 2-core machine the debug
/// build takes several times as long, and the phases wait for counts, not for time.
const MAX_RUN: Duration = Duration::from_secs(300);
/// Requests a TCP client sends before it reads their replies.
const TCP_WINDOW: usize = 2;
/// Files per bulk registration: a write that takes a while.
const BULK_FILES: usize = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Facade {
    Http,
    Tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Start,
    Bulk,
}

impl Op {
    fn path(self) -> &'static str {
        match self {
            Self::Start => "/executed_obs_units/start",
            Self::Bulk => "/raw_data_files/bulk",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Start => "executed_obs_units.start",
            Self::Bulk => "raw_data_files.bulk",
        }
    }
}

/// What a sent write got.
#[derive(Clone, Debug)]
pub enum Outcome {
    Answered {
        status: u16,
        body: Value,
    },
    /// Sent, then the connection ended (reset, EOF, error) without an answer.
    Dropped(String),
}

#[derive(Clone, Debug)]
pub struct Write {
    pub key: String,
    pub via: Facade,
    pub op: Op,
    pub body: Value,
    pub outcome: Outcome,
}

impl Write {
    pub fn status(&self) -> Option<u16> {
        match &self.outcome {
            Outcome::Answered { status, .. } => Some(*status),
            Outcome::Dropped(_) => None,
        }
    }
}

fn start_body(n: usize) -> Value {
    json!({"obs_unit_id": n % 10 + 1})
}

fn bulk_body(executed_obs_unit: &str, key: &str) -> Value {
    let files: Vec<Value> = (0..BULK_FILES)
        .map(|i| {
            let mut file = file_body(executed_obs_unit);
            file["name"] = json!(format!("{key}_{i}.fits"));
            file
        })
        .collect();
    json!(files)
}

/// One HTTP write, sent once; `None` if the connection was refused (nothing sent).
pub async fn http_write(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    write: &Write,
) -> Option<Outcome> {
    let sent = client
        .post(format!("{base}{}", write.op.path()))
        .bearer_auth(token)
        .header("Idempotency-Key", &write.key)
        .json(&write.body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(err) if err.is_connect() => return None,
        Err(err) => return Some(Outcome::Dropped(format!("{err:?}"))),
    };
    let status = response.status().as_u16();
    Some(match response.text().await {
        Ok(text) => Outcome::Answered {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        },
        Err(err) => Outcome::Dropped(format!("body: {err:?}")),
    })
}

/// Writes over HTTP (keep-alive, one request at a time) until the service refuses to
/// connect.
pub async fn http_client(
    id: usize,
    base: String,
    token: String,
    progress: Arc<AtomicUsize>,
) -> Vec<Write> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let mut writes = Vec::new();
    let started = Instant::now();
    for n in 0.. {
        if started.elapsed() > MAX_RUN {
            break;
        }
        let mut write = Write {
            key: format!("h{id}-{n}"),
            via: Facade::Http,
            op: Op::Start,
            body: start_body(n),
            outcome: Outcome::Dropped("not sent".into()),
        };
        let Some(outcome) = http_write(&client, &base, &token, &write).await else {
            break;
        };
        progress.fetch_add(1, Ordering::Relaxed);
        write.outcome = outcome;
        writes.push(write);
    }
    writes
}

/// One TCP connection of a client that may pipeline.
pub struct TcpConn {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl TcpConn {
    /// Connected and authenticated (so that its lines may be large); `None` if the
    /// connection is refused or closed first.
    pub async fn connect(addr: SocketAddr, token: &str) -> Option<Self> {
        let (read, mut writer) = TcpStream::connect(addr).await.ok()?.into_split();
        let auth = json!({"op": "auth", "token": token, "request_id": "auth"});
        writer
            .write_all(format!("{auth}\n").as_bytes())
            .await
            .ok()?;
        let mut reader = BufReader::new(read);
        let mut reply = String::new();
        reader.read_line(&mut reply).await.ok()?;
        let reply: Value = serde_json::from_str(&reply).ok()?;
        assert_eq!(reply["status"], 200, "auth: {reply}");
        Some(Self { reader, writer })
    }

    /// Sends the writes' lines at once, then reads a reply per line, in order, into each
    /// write's outcome; once the connection ends, the rest were sent and are unanswered.
    /// `false` if it ended.
    pub async fn exchange(&mut self, token: &str, writes: &mut [Write]) -> bool {
        let lines: String = writes.iter().map(|w| tcp_line(token, w)).collect();
        if let Err(err) = self.writer.write_all(lines.as_bytes()).await {
            for w in writes {
                w.outcome = Outcome::Dropped(format!("write: {err}"));
            }
            return false;
        }
        let mut open = true;
        for w in writes {
            if !open {
                w.outcome = Outcome::Dropped("the connection ended earlier".into());
                continue;
            }
            let mut reply = String::new();
            w.outcome = match self.reader.read_line(&mut reply).await {
                Ok(0) => Outcome::Dropped("eof".into()),
                Err(err) => Outcome::Dropped(format!("read: {err}")),
                Ok(_) => parse_reply(&reply, &w.key),
            };
            open = matches!(w.outcome, Outcome::Answered { .. });
        }
        open
    }

    /// How the connection ends once the replies are read: `"eof"` (a FIN), or what came
    /// instead (more data, a reset).
    pub async fn ended(&mut self) -> String {
        let mut rest = String::new();
        match self.reader.read_line(&mut rest).await {
            Ok(0) => "eof".into(),
            Ok(_) => format!("more: {rest}"),
            Err(err) => format!("error: {err}"),
        }
    }
}

fn tcp_line(token: &str, write: &Write) -> String {
    let line = json!({
        "op": write.op.name(), "token": token, "request_id": write.key,
        "idempotency_key": write.key, "body": write.body,
    });
    format!("{line}\n")
}

fn parse_reply(reply: &str, key: &str) -> Outcome {
    let reply: Value = serde_json::from_str(reply).expect("a JSON reply line");
    assert_eq!(
        reply["request_id"],
        json!(key),
        "replies come in order: {reply}"
    );
    let status = reply["status"].as_u64().expect("a status");
    Outcome::Answered {
        status: u16::try_from(status).expect("a status code"),
        body: if reply.get("body").is_some() {
            reply["body"].clone()
        } else {
            reply
        },
    }
}

/// Writes over TCP: one observation started, then bulk registrations of its files,
/// [`TCP_WINDOW`] lines at a time; reconnects whenever the service closes the connection,
/// until it refuses to connect.
pub async fn tcp_client(
    id: usize,
    addr: SocketAddr,
    token: String,
    progress: Arc<AtomicUsize>,
) -> Vec<Write> {
    let mut writes: Vec<Write> = Vec::new();
    // The observation the files belong to, once started.
    let mut observation: Option<String> = None;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < MAX_RUN {
        let Some(mut conn) = TcpConn::connect(addr, &token).await else {
            break;
        };
        while started.elapsed() < MAX_RUN {
            let mut round: Vec<Write> = match &observation {
                None => vec![Write {
                    key: format!("t{id}-{n}"),
                    via: Facade::Tcp,
                    op: Op::Start,
                    body: start_body(n),
                    outcome: Outcome::Dropped("not sent".into()),
                }],
                Some(eou) => (n..n + TCP_WINDOW)
                    .map(|i| {
                        let key = format!("t{id}-{i}");
                        Write {
                            body: bulk_body(eou, &key),
                            key,
                            via: Facade::Tcp,
                            op: Op::Bulk,
                            outcome: Outcome::Dropped("not sent".into()),
                        }
                    })
                    .collect(),
            };
            n += round.len();
            let open = conn.exchange(&token, &mut round).await;
            progress.fetch_add(round.len(), Ordering::Relaxed);
            for w in &round {
                if let (Op::Start, Outcome::Answered { status: 201, body }) = (w.op, &w.outcome) {
                    observation = body["id"].as_str().map(str::to_owned);
                }
            }
            writes.extend(round);
            if !open {
                break;
            }
        }
    }
    writes
}
