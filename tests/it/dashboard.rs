//! The dashboard at `GET /`: served without a token under a policy that allows nothing but
//! this origin, and driven in a real headless Chromium (through chromedriver, WebDriver)
//! against a whole site: the tree shows up, a write appears in the feed as buffered, then
//! forwarded and replicated, a killed forwarder shows its restart, a restarted notifier a
//! reconnect; without a token it asks for one. Its screenshot is left at
//! `target/dashboard.png` for people to look at.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::helpers::{start_obs_unit, TestApp};
use crate::site::Site;

const INSTALL: &str =
    "install the Debian packages chromium and chromium-driver (scripts/install-deps.sh does)";

#[tokio::test]
async fn the_dashboard_is_served_without_a_token_under_a_policy_that_allows_only_this_origin() {
    let app = TestApp::spawn().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        let header = |name: &str| {
            r.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        let policy = header("content-security-policy");
        assert!(policy.contains("default-src 'self'"), "{policy}");
        assert!(policy.contains("connect-src 'self' ws: wss:"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
    }
    // Nothing inline that the policy would block.
    let page = app.get("/").await.text;
    assert!(page.contains(r#"<script src="/dashboard.js""#), "{page}");
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_a_write_travel_and_a_killed_forwarder_restart_in_a_real_browser() {
    let started = Instant::now();
    let mut browser = Browser::start().await;
    // The session is ended whatever happens: a Chromium left behind by a panic would
    // outlive the test (killing chromedriver does not end it).
    let outcome = AssertUnwindSafe(session(&browser.client))
        .catch_unwind()
        .await;
    browser.stop().await;
    let png = match outcome {
        Ok(result) => result.unwrap(),
        Err(panic) => std::panic::resume_unwind(panic),
    };
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a PNG"
    );
    println!(
        "dashboard: screenshot at {}, {:.1}s",
        screenshot_path().display(),
        started.elapsed().as_secs_f64()
    );
}

/// A site, the page against it, its screenshot (also after a failure: it shows what the
/// page showed), then the token prompt.
async fn session(client: &Client) -> anyhow::Result<Vec<u8>> {
    // A health event every second rather than every five, so the chart has points soon.
    let site = Site::start(false, |c| c.events.health_interval = Duration::from_secs(1)).await;
    let outcome = drive(client, &site.app).await;
    let shot = client.screenshot().await;
    if let Ok(png) = &shot {
        std::fs::write(screenshot_path(), png).context("writing the screenshot")?;
    }
    outcome?;
    token_prompt(client, &site.app).await?;
    Ok(shot?)
}

/// What the test does in the page; an error says what it waited for and what the page
/// showed instead.
async fn drive(client: &Client, app: &TestApp) -> anyhow::Result<()> {
    client
        .goto(&format!("{}/#token={}", app.http, app.token))
        .await?;
    wait_for(
        client,
        "the forwarder running and the events live",
        "return document.querySelector('tr[data-actor=\"forwarder\"][data-state=\"running\"]') !== null
            && document.getElementById('conn').textContent === 'live';",
        vec![],
    )
    .await?;
    let hash = client.execute("return location.hash;", vec![]).await?;
    ensure!(
        hash == json!(""),
        "the token stays in the address bar: {hash}"
    );

    let (_, tx) = start_obs_unit(app, 2).await;
    for kind in ["tx.buffered", "tx.forwarded", "tx.replicated"] {
        wait_for(
            client,
            &format!("a {kind} line with {tx}"),
            "return Array.from(document.querySelectorAll('#feed li'))
                .some(li => li.dataset.type === arguments[0]
                    && (li.textContent + li.title).includes(arguments[1]));",
            vec![json!(kind), json!(tx)],
        )
        .await?;
    }
    ensure!(
        feed_position(client, "tx.buffered", tx).await?
            > feed_position(client, "tx.forwarded", tx).await?,
        "buffered before forwarded (the feed is newest first)"
    );

    ensure!(
        app.tree.kill("forwarder").await,
        "the drill kills the forwarder"
    );
    wait_for(
        client,
        "the forwarder's restart in the tree and in the feed",
        "const row = document.querySelector('tr[data-actor=\"forwarder\"]');
         return row !== null && Number(row.querySelector('.restarts').textContent) >= 1
            && Array.from(document.querySelectorAll('#feed li[data-type=\"actor.restarted\"]'))
                .some(li => li.textContent.includes('forwarder'));",
        vec![],
    )
    .await?;

    // The notifier's restart closes the page's websocket (1012): it reconnects with
    // `since` and goes on.
    ensure!(
        app.tree.kill("notifier").await,
        "the drill kills the notifier"
    );
    wait_for(
        client,
        "the page seeing its connection closed",
        "return document.querySelector('#feed li[data-type=\"closed\"]') !== null;",
        vec![],
    )
    .await?;
    let (_, after) = start_obs_unit(app, 3).await;
    wait_for(
        client,
        &format!("the events live again, with a tx.buffered line with {after}"),
        "return document.getElementById('conn').textContent === 'live'
            && Array.from(document.querySelectorAll('#feed li[data-type=\"tx.buffered\"]'))
                .some(li => li.textContent.includes(arguments[0]));",
        vec![json!(after)],
    )
    .await?;

    wait_for(
        client,
        "every actor running again, a chart with points, a forward rate",
        "const rows = Array.from(document.querySelectorAll('tr[data-actor]'));
         return rows.length >= 5 && rows.every(row => row.dataset.state === 'running')
            && Number(document.getElementById('chart').dataset.samples) >= 3
            && document.getElementById('rate').textContent !== '-';",
        vec![],
    )
    .await?;
    let problems = client
        .execute(
            "return document.getElementById('problems').textContent;",
            vec![],
        )
        .await?;
    ensure!(
        problems == json!(""),
        "the page reports problems: {problems}"
    );
    Ok(())
}

/// Without a token the page asks for one; a wrong one is refused, a right one connects.
async fn token_prompt(client: &Client, app: &TestApp) -> anyhow::Result<()> {
    client.find(Locator::Id("forget")).await?.click().await?;
    let login_shown = "return !document.getElementById('login').hidden;";
    wait_for(client, "the token form", login_shown, vec![]).await?;
    let submit = |token: String| async move {
        client
            .find(Locator::Id("token"))
            .await?
            .send_keys(&token)
            .await?;
        client
            .find(Locator::Css("#login button"))
            .await?
            .click()
            .await?;
        anyhow::Ok(())
    };
    submit(format!("{}x", app.token)).await?;
    wait_for(
        client,
        "a wrong token refused",
        "return !document.getElementById('login').hidden
            && document.getElementById('login-error').textContent.includes('refused');",
        vec![],
    )
    .await?;
    submit(app.token.clone()).await?;
    wait_for(
        client,
        "the events live with the right token",
        "return document.getElementById('login').hidden
            && document.getElementById('conn').textContent === 'live';",
        vec![],
    )
    .await
}

/// Where a feed line of `kind` listing `tx` is, counted from the top.
async fn feed_position(client: &Client, kind: &str, tx: Uuid) -> anyhow::Result<i64> {
    let at = client
        .execute(
            "return Array.from(document.querySelectorAll('#feed li'))
                .findIndex(li => li.dataset.type === arguments[0]
                    && (li.textContent + li.title).includes(arguments[1]));",
            vec![json!(kind), json!(tx)],
        )
        .await?;
    at.as_i64().context("an index")
}

/// Runs `script` (a function body; `arguments` are `args`) every 100 ms until it returns
/// true; after 30 s, fails with the page's text.
async fn wait_for(
    client: &Client,
    what: &str,
    script: &str,
    args: Vec<Value>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.execute(script, args.clone()).await? == json!(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let text = client
                .execute("return document.body.innerText;", vec![])
                .await?;
            bail!(
                "timed out waiting for {what}; the page shows:\n{}",
                text.as_str().unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `target/dashboard.png` (the target directory this test was built in).
fn screenshot_path() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(&tmp).join("dashboard.png")
}

/// The first of `names` found on `PATH`.
fn program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// chromedriver on a port it picks, and a headless Chromium session through it.
struct Browser {
    driver: Child,
    client: Client,
}

impl Browser {
    async fn start() -> Self {
        let driver_path = program(&["chromedriver"])
            .unwrap_or_else(|| panic!("chromedriver is not on PATH: {INSTALL}"));
        let chromium = program(&["chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("chromium is not on PATH: {INSTALL}"));
        let mut driver = Command::new(&driver_path)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{} does not start ({e}): {INSTALL}", driver_path.display())
            });
        let port = driver_port(&mut driver).await;
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox", // tests run as root
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1400,1000",
                    "--hide-scrollbars",
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("no browser session through chromedriver ({e}): {INSTALL}"));
        Self { driver, client }
    }

    /// Ends the session (which closes Chromium), then chromedriver.
    async fn stop(&mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

/// Reads chromedriver's "started successfully on port N." line; keeps draining its output.
async fn driver_port(driver: &mut Child) -> u16 {
    let stdout = driver.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let read = async {
        while let Some(line) = lines.next_line().await.ok().flatten() {
            if let Some(rest) = line.split("on port ").nth(1) {
                if let Ok(port) = rest.trim_end_matches('.').trim().parse::<u16>() {
                    if port != 0 {
                        return Some(port);
                    }
                }
            }
        }
        None
    };
    let port = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("chromedriver did not say its port: {INSTALL}"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    port
}
