//! A second SIGTERM while the stop waits for a request in flight ends `serve` at once,
//! with exit status 130, rather than after `shutdown.grace`.

use std::time::{Duration, Instant};

use ops_db_devkit::ports::free_port;
use ops_db_service::token;
use serde_json::json;

use super::{a_write_is_held, Service};
use crate::helpers::{tempdir, TestRedis};

/// Longer than the test waits: only the second signal can end the stop in time.
const HELD: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_while_a_request_is_in_flight_exits_at_once() {
    let redis = TestRedis::start().await;
    let dir = tempdir::Dir::new();
    let http = format!("127.0.0.1:{}", free_port().expect("port"));
    let tcp = format!("127.0.0.1:{}", free_port().expect("port"));
    let token = token::generate();
    let held = humantime::format_duration(HELD);
    let toml = format!(
        "[site]\nname = \"t{site:08x}\"\n\
         [http]\nlisten = \"{http}\"\nrequest_timeout = \"{held}\"\n\
         [tcp]\nlisten = \"{tcp}\"\n\
         [redis]\nurl = \"{url}\"\ntimeout = \"{held}\"\n\
         [shutdown]\ngrace = \"{held}\"\n\
         [auth]\ndatabase = false\n\
         tokens = [{{ name = \"writer\", sha256 = \"{hash}\", scopes = [\"write\"] }}]\n",
        site = rand::random::<u32>(),
        url = redis.url(),
        hash = token::hash(&token),
    );
    let config = dir.0.join("service.toml");
    std::fs::write(&config, toml).expect("write config");
    let log = dir.0.join("service.log");
    let base = format!("http://{http}");
    let mut service = Service::start(&config, &log, &base).await;

    // A write held in Redis: the stop waits for its answer.
    let mut conn = redis.conn().await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(HELD.as_millis() as u64)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .expect("client pause");
    let write = tokio::spawn({
        let (base, token) = (base.clone(), token.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{base}/executed_obs_units/start"))
                .bearer_auth(token)
                .json(&json!({"obs_unit_id": 1, "instrument_module": "prime-cam"}))
                .send()
                .await
        }
    });
    a_write_is_held(&redis, Duration::from_secs(10)).await;

    service.signal("TERM");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        service.child.try_wait().expect("try_wait").is_none(),
        "the first SIGTERM waits for the write in flight"
    );
    service.signal("TERM");
    let second = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), service.child.wait())
        .await
        .expect("exits within 10 s of the second SIGTERM")
        .expect("wait");
    assert_eq!(status.code(), Some(130), "{status:?}");
    eprintln!("exited {:?} after the second SIGTERM", second.elapsed());
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(logged.contains("a second stop signal"), "{logged}");
    // The held write got no answer (its client retries with its key).
    let answered = write.await.expect("join");
    assert!(
        answered.as_ref().map_or(true, |r| !r.status().is_success()),
        "{answered:?}"
    );
    let () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut conn)
        .await
        .expect("client unpause");
}
