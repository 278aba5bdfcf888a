//! `ops-db-api status`: the binary itself against a running service, a dead port and a
//! server that answers garbage. The exit code is the contract scripts rely on: 0 ready,
//! 1 not ready, 2 unreachable or not a health answer.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ops_db_devkit::ports::free_port;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::helpers::{eventually, start_obs_unit, TestApp};
use crate::site::Site;

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `ops-db-api status ARGS` to its end.
async fn status(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ops-db-api"))
        .arg("status")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run ops-db-api status");
    let output = Output {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!(
        "status {args:?} exited {}\n{}{}",
        output.code, output.stdout, output.stderr
    );
    output
}

/// The names of the actors in `/health/actors`.
async fn actor_names(app: &TestApp) -> Vec<String> {
    let actors = app.get("/health/actors").await;
    actors.body["actors"]
        .as_array()
        .expect("actor rows")
        .iter()
        .map(|a| a["name"].as_str().expect("name").to_owned())
        .collect()
}

fn assert_names_every_actor(stdout: &str, names: &[String]) {
    for name in names {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("├─ {name} "))
                    || l.starts_with(&format!("└─ {name} "))),
            "{name} is not in the tree:\n{stdout}"
        );
    }
}

/// Waits until `/health` counts `n` buffered transactions (a status read is reused for up
/// to `STATUS_TTL`).
async fn buffered(app: &TestApp, n: u64) {
    eventually("buffered counted", Duration::from_secs(5), || async {
        let h = app.get("/health").await;
        (h.body["transaction_buffer"]["size"] == n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ready_service_exits_0_with_its_tree_and_buffer_depth_on_one_screen() {
    let app = TestApp::spawn().await;
    for obs_unit in 1..=3 {
        start_obs_unit(&app, obs_unit).await;
    }
    buffered(&app, 3).await;

    let out = status(&["--url", &app.http]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert!(
        out.stdout.contains("ready      yes (healthy)\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("redis      connected, durable\n"));
    assert!(
        out.stdout.contains("buffer     3 transactions "),
        "{}",
        out.stdout
    );
    let names = actor_names(&app).await;
    assert_eq!(names, ["buffer", "ingest", "notifier"]);
    assert_names_every_actor(&out.stdout, &names);
    assert!(out.stdout.lines().count() <= 25);
    assert!(out.stdout.lines().all(|l| l.chars().count() <= 100));

    let json = status(&["--url", &format!("{}/", app.http), "--json"]).await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: Value = serde_json::from_str(&json.stdout).expect("one JSON object");
    assert_eq!(v["ready"], true);
    assert_eq!(v["health"]["transaction_buffer"]["size"], 3);
    assert_eq!(v["actors"]["actors"].as_array().map(Vec::len), Some(3));
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_with_its_wan_cut_is_ready_and_shows_why_the_forwarder_fails() {
    let site = Site::start(true, |_| {}).await;
    let app = &site.app;
    start_obs_unit(app, 1).await;
    site.drained(Duration::from_secs(20)).await;
    site.wan.as_ref().expect("wan").cut();
    for obs_unit in 2..=3 {
        start_obs_unit(app, obs_unit).await;
    }
    eventually(
        "the forwarder fails on the cut",
        Duration::from_secs(20),
        || async {
            let h = app.get("/health").await;
            let size = &h.body["transaction_buffer"]["size"];
            (h.body["database"] == "unreachable" && *size == 2).then_some(())
        },
    )
    .await;

    let out = status(&["--url", &app.http]).await;
    assert_eq!(out.code, 0, "buffering on is ready: {}", out.stderr);
    let names = actor_names(app).await;
    assert_eq!(
        names,
        ["buffer", "forwarder", "ingest", "notifier", "replica"]
    );
    assert_names_every_actor(&out.stdout, &names);
    assert!(
        out.stdout.contains("buffer     2 transactions "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("forwarder  ") && l.contains("batches 1, applied 1,")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("replica    lag "), "{}", out.stdout);
    let forwarder = out
        .stdout
        .lines()
        .position(|l| l.starts_with("├─ forwarder "))
        .expect("forwarder row");
    let lines: Vec<&str> = out.stdout.lines().collect();
    // Between two attempts it runs for a moment: its state and `database` may say either;
    // its last failure stays, under it.
    assert!(
        lines[forwarder + 1].starts_with("│    ") && lines[forwarder + 1].contains("primary"),
        "the last failure is under its actor: {}",
        out.stdout
    );
    assert!(out.stdout.lines().count() <= 25);
    assert!(out.stdout.lines().all(|l| l.chars().count() <= 100));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_whose_redis_is_down_exits_1_and_says_why() {
    let app = TestApp::spawn().await;
    app.redis.kill().await;
    // A status read within STATUS_TTL before the kill may still be served.
    eventually("not ready", Duration::from_secs(5), || async {
        (app.get("/health/ready").await.status == 503).then_some(())
    })
    .await;

    let out = status(&["--url", &app.http]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("ready      NO: redis unreachable (unhealthy)\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("redis      disconnected\n"));
    assert!(out.stdout.contains("buffer     - transactions "));
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_listening_exits_2_with_one_line_naming_the_url() {
    let url = format!("http://127.0.0.1:{}", free_port().expect("a free port"));
    let out = status(&["--url", &url]).await;
    assert_eq!(out.code, 2);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with(&format!("ops-db-api status: {url}/health")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

/// A server that answers every connection with `response` (or, if `None`, never answers).
async fn fake_server(response: Option<&'static str>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                match response {
                    Some(r) => {
                        let _ = socket.write_all(r.as_bytes()).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_answers_garbage_or_nothing_exits_2() {
    let html = fake_server(Some(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 13\r\n\
         connection: close\r\n\r\n<html></html>",
    ))
    .await;
    let out = status(&["--url", &html]).await;
    assert_eq!(out.code, 2);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains(&html), "{}", out.stderr);
    assert!(out.stderr.contains("not JSON"), "{}", out.stderr);

    let other = fake_server(Some(
        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\
         connection: close\r\n\r\n{}",
    ))
    .await;
    let out = status(&["--url", &other]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("404"), "{}", out.stderr);

    let silent = fake_server(None).await;
    let started = std::time::Instant::now();
    let out = status(&["--url", &silent, "--timeout", "300ms"]).await;
    assert_eq!(out.code, 2);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        out.stderr.contains("no answer within 300ms"),
        "{}",
        out.stderr
    );
}

/// `status --watch` running in the background, its stdout collected line by line.
struct Watch {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    fn start(url: &str, every: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ops-db-api"))
            .args(["status", "--url", url, "--watch", every])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn status --watch");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().expect("lines").push(line);
            }
        });
        Self { child, lines }
    }

    /// How many screens have been printed so far, and whether the latest says `text`.
    fn screens(&self, text: &str) -> (usize, bool) {
        let lines = self.lines.lock().expect("lines");
        let starts: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with("ops-db-api http"))
            .collect();
        let latest = starts.last().map_or(&lines[..0], |&s| &lines[s..]);
        (starts.len(), latest.iter().any(|l| l.contains(text)))
    }

    /// Ctrl-C, then its exit.
    async fn interrupt(mut self) -> ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill -INT");
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .expect("status --watch stops on Ctrl-C")
            .expect("wait")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_redraws_until_ctrl_c_and_exits_with_the_last_samples_code() {
    let app = TestApp::spawn().await;
    let watch = Watch::start(&app.http, "100ms");
    eventually("two ready screens", Duration::from_secs(10), || async {
        let (count, ready) = watch.screens("ready      yes");
        (count >= 2 && ready).then_some(())
    })
    .await;

    app.redis.kill().await;
    eventually(
        "a screen that is not ready",
        Duration::from_secs(10),
        || async {
            watch
                .screens("ready      NO: redis unreachable")
                .1
                .then_some(())
        },
    )
    .await;
    let exit = watch.interrupt().await;
    assert_eq!(exit.code(), Some(1), "the last sample was not ready");

    let ready = TestApp::spawn().await;
    let watch = Watch::start(&ready.http, "100ms");
    eventually("a ready screen", Duration::from_secs(10), || async {
        watch.screens("ready      yes").1.then_some(())
    })
    .await;
    assert_eq!(watch.interrupt().await.code(), Some(0));
    ready.stop().await.expect("clean stop");
    app.stop().await.expect("clean stop");
}
