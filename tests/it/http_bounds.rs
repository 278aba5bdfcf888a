//! The HTTP facade's bounds: a slow client holds a connection for at most the header
//! timeout, and connections over the cap are refused while the others keep working.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::TestApp;

fn addr(app: &TestApp) -> String {
    app.http
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// One `GET /health/live` on a raw keep-alive connection: the status line's code.
async fn get_live(stream: &mut TcpStream) -> Option<u16> {
    let request = "GET /health/live HTTP/1.1\r\nhost: test\r\n\r\n";
    stream.write_all(request.as_bytes()).await.ok()?;
    read_status(stream).await
}

/// Reads one answer on a raw connection: its head and `content-length` body as text;
/// `None` if the connection ends or fails before the answer is whole.
pub(crate) async fn read_answer(stream: &mut TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                return Some(text);
            }
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&chunk[..n]);
    }
}

/// Reads one answer: the status code.
async fn read_status(stream: &mut TcpStream) -> Option<u16> {
    read_answer(stream).await?.get(9..12)?.parse().ok()
}

/// Whether the service closes `stream` within `within` (reads to the end).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut sink = [0u8; 1024];
    tokio::time::timeout(within, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_loris_client_and_an_idle_keep_alive_are_dropped_after_the_header_timeout() {
    let app = TestApp::spawn_with(|c| c.http.header_timeout = Duration::from_millis(300)).await;
    let mut slow = TcpStream::connect(addr(&app)).await.expect("connect");
    slow.write_all(b"GET /health/live HTTP/1.1\r\nhost: te")
        .await
        .expect("a part of a head");
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "a head that never ends is cut off"
    );
    let mut idle = TcpStream::connect(addr(&app)).await.expect("connect");
    assert_eq!(get_live(&mut idle).await, Some(200));
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "an idle keep-alive connection is closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_connections_over_the_cap_are_refused_while_the_others_keep_working() {
    let app = TestApp::spawn_with(|c| c.http.max_connections = 3).await;
    // The test's own client may hold pooled connections: open until one is refused.
    let mut open = Vec::new();
    let refused = loop {
        assert!(open.len() <= 3, "more connections than the cap were served");
        let mut stream = TcpStream::connect(addr(&app)).await.expect("connect");
        match get_live(&mut stream).await {
            Some(200) => open.push(stream),
            other => break (stream, other),
        }
    };
    let (_refused, status) = refused;
    assert_eq!(status, Some(503), "the one over the cap is told why");
    let first = open.first_mut().expect("at least one served");
    assert_eq!(get_live(first).await, Some(200), "the others go on");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_slower_than_the_body_timeout_is_cut_off_with_a_json_error() {
    let app = TestApp::spawn_with(|c| c.http.body_timeout = Duration::from_millis(300)).await;
    let mut slow = TcpStream::connect(addr(&app)).await.expect("connect");
    let head = format!(
        "POST /executed_obs_units/start HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"obs_unit_id\"",
        app.token
    );
    slow.write_all(head.as_bytes())
        .await
        .expect("a part of a body");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the service does not wait for the body forever"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 4"), "a 4xx: {text}");
    assert!(text.contains("{\"error\""), "a JSON error: {text}");
    assert_eq!(app.buffered_count().await, 0);
}
