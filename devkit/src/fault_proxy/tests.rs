//! The fault proxy against an echo server on loopback.
use super::*;
use std::time::Instant as StdInstant;

const LOOPBACK: &str = "127.0.0.1:0";

/// Echoes every connection; on EOF from the client, shuts down its write half.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind(LOOPBACK).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                stream.set_nodelay(true).unwrap();
                let (mut r, mut w) = stream.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

async fn proxy_to_echo() -> FaultProxy {
    let upstream = echo_server().await;
    FaultProxy::start(LOOPBACK.parse().unwrap(), upstream)
        .await
        .unwrap()
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Sends `msg`, reads the echo, returns the round-trip time.
async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Duration {
    let started = StdInstant::now();
    stream.write_all(msg).await.unwrap();
    let mut reply = vec![0; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut reply))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert_eq!(reply, msg);
    started.elapsed()
}

/// True if the peer closed (EOF or error) within `limit`; false on data or silence.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0; 64];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Silent (no data, no EOF, no error) for all of `limit`.
async fn silent_for(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0; 64];
    tokio::time::timeout(limit, stream.read(&mut buf))
        .await
        .is_err()
}

async fn assert_eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = StdInstant::now() + Duration::from_secs(5);
    while !check() {
        assert!(StdInstant::now() < deadline, "not within 5 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes all of `data`, half-closes, and reads until EOF; returns what came back.
async fn send_and_read_to_eof(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
        w // keep the half open until the reader is done
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut back))
        .await
        .expect("EOF within 30 s")
        .unwrap();
    drop(writer.await.unwrap());
    back
}

#[tokio::test]
async fn forwards_a_large_payload_both_ways_byte_exact_and_propagates_eof() {
    let proxy = proxy_to_echo().await;
    let data = payload(4 << 20);
    for (delay, connections) in [(Duration::ZERO, 1), (Duration::from_millis(50), 2)] {
        proxy.set_delay(delay);
        let back = send_and_read_to_eof(connect(&proxy).await, data.clone()).await;
        assert!(back == data, "echo differs (delay {delay:?})");
        let stats = proxy.stats();
        assert_eq!(stats.accepted, connections);
        assert_eq!(stats.bytes_to_upstream, connections * data.len() as u64);
        assert_eq!(stats.bytes_to_client, connections * data.len() as u64);
    }
    assert_eventually("no connection open", || proxy.stats().open == 0).await;
}

#[tokio::test]
async fn delay_is_added_each_way_without_limiting_throughput() {
    let proxy = proxy_to_echo().await;
    let mut stream = connect(&proxy).await;
    assert!(round_trip(&mut stream, b"warm").await < Duration::from_millis(100));

    // Set on an open connection: it applies there too.
    proxy.set_delay(Duration::from_millis(100));
    assert_eq!(proxy.mode().delay, Duration::from_millis(100));
    let rtt = round_trip(&mut stream, b"ping").await;
    assert!(rtt >= Duration::from_millis(200), "round trip {rtt:?}");
    assert!(rtt < Duration::from_millis(400), "round trip {rtt:?}");

    // 20 requests, each its own write (and read), pipelined: one delay, not twenty.
    let (mut r, mut w) = stream.into_split();
    let started = StdInstant::now();
    let writer = tokio::spawn(async move {
        for i in 0..20u8 {
            w.write_all(&[i; 100]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        w
    });
    let mut replies = vec![0; 20 * 100];
    r.read_exact(&mut replies).await.unwrap();
    let elapsed = started.elapsed();
    drop(writer.await.unwrap());
    for (i, reply) in replies.chunks(100).enumerate() {
        assert!(
            reply.iter().all(|&b| usize::from(b) == i),
            "reply {i} garbled"
        );
    }
    assert!(
        elapsed >= Duration::from_millis(200),
        "20 echoes in {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1000),
        "20 echoes in {elapsed:?}"
    );
}

#[tokio::test]
async fn cut_closes_open_and_new_connections_until_heal() {
    let proxy = proxy_to_echo().await;
    let mut open = connect(&proxy).await;
    round_trip(&mut open, b"before").await;

    proxy.cut();
    assert_eq!(proxy.mode().link, Link::Cut);
    assert!(closed_within(&mut open, Duration::from_secs(1)).await);
    let mut new = connect(&proxy).await;
    assert!(closed_within(&mut new, Duration::from_secs(1)).await);
    assert_eventually("no connection open", || proxy.stats().open == 0).await;

    proxy.heal();
    assert_eq!(proxy.mode().link, Link::Normal);
    let mut healed = connect(&proxy).await;
    round_trip(&mut healed, b"after").await;
    assert_eq!(proxy.stats().accepted, 3);
    assert_eq!(proxy.stats().open, 1);
}

#[tokio::test]
async fn blackhole_stalls_without_error_and_heal_closes_the_held_connections() {
    let proxy = proxy_to_echo().await;
    proxy.set_delay(Duration::from_millis(20));
    let mut open = connect(&proxy).await;
    round_trip(&mut open, b"before").await;

    proxy.blackhole();
    open.write_all(b"held").await.unwrap();
    assert!(silent_for(&mut open, Duration::from_millis(300)).await);
    let mut new = connect(&proxy).await;
    new.write_all(b"held too").await.unwrap();
    assert!(silent_for(&mut new, Duration::from_millis(300)).await);
    assert_eq!(proxy.stats().open, 2);

    proxy.heal();
    assert_eq!(proxy.mode().delay, Duration::from_millis(20));
    assert!(closed_within(&mut open, Duration::from_secs(1)).await);
    assert!(closed_within(&mut new, Duration::from_secs(1)).await);
    let mut healed = connect(&proxy).await;
    round_trip(&mut healed, b"after").await;
}

#[tokio::test]
async fn a_fault_healed_before_a_connection_notices_still_closes_it() {
    let proxy = proxy_to_echo().await;
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    round_trip(&mut a, b"a").await;
    round_trip(&mut b, b"b").await;
    proxy.cut();
    proxy.heal();
    assert!(closed_within(&mut a, Duration::from_secs(1)).await);
    proxy.blackhole();
    proxy.heal();
    assert!(closed_within(&mut b, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn connections_progress_independently_under_delay() {
    let proxy = proxy_to_echo().await;
    proxy.set_delay(Duration::from_millis(50));
    let bulk = payload(16 << 20);

    // `busy` pushes 16 MiB and reads nothing back yet: its path backs up.
    let busy = connect(&proxy).await;
    let (mut busy_r, mut busy_w) = busy.into_split();
    let sent = bulk.clone();
    let writer = tokio::spawn(async move {
        busy_w.write_all(&sent).await.unwrap();
        busy_w.shutdown().await.unwrap();
        busy_w
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut quick = connect(&proxy).await;
    for _ in 0..5 {
        let rtt = round_trip(&mut quick, b"ping").await;
        assert!(rtt >= Duration::from_millis(100), "round trip {rtt:?}");
        assert!(rtt < Duration::from_millis(300), "round trip {rtt:?}");
    }

    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), busy_r.read_to_end(&mut back))
        .await
        .expect("bulk echo within 30 s")
        .unwrap();
    drop(writer.await.unwrap());
    assert!(back == bulk, "bulk echo differs");
}

#[tokio::test]
async fn stop_and_drop_end_the_listener_and_every_connection() {
    let proxy = proxy_to_echo().await;
    let addr = proxy.addr();
    let mut open = connect(&proxy).await;
    round_trip(&mut open, b"x").await;
    proxy.clone().stop().await;
    assert!(closed_within(&mut open, Duration::from_millis(200)).await);
    assert!(TcpStream::connect(addr).await.is_err());

    let proxy = proxy_to_echo().await;
    let mut open = connect(&proxy).await;
    round_trip(&mut open, b"x").await;
    let clone = proxy.clone();
    drop(proxy);
    round_trip(&mut open, b"still there while a clone lives").await;
    drop(clone);
    assert!(closed_within(&mut open, Duration::from_secs(1)).await);
}
