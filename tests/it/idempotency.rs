//! A repeated Idempotency-Key answers the first response and buffers nothing new.

use reqwest::Method;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_the_same_key_gets_the_first_answer() {
    let app = TestApp::spawn().await;
    let body = json!({"obs_unit_id": 11});
    let first = app
        .send(
            Method::POST,
            "/executed_obs_units/start",
            Some(&body),
            Some("obs-11-try"),
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    let again = app
        .send(
            Method::POST,
            "/executed_obs_units/start",
            Some(&body),
            Some("obs-11-try"),
        )
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body, "same ids, same transaction");
    assert_eq!(app.buffered_count().await, 1);

    // An update keeps its own status code when replayed.
    let id = first.body["id"].as_str().expect("id").to_owned();
    let path = format!("/executed_obs_units/{id}/finish");
    let finish = json!({"status": "completed", "end_time": "2026-11-24T04:00:00Z"});
    let f1 = app
        .send(Method::PUT, &path, Some(&finish), Some("finish-11"))
        .await;
    let f2 = app
        .send(Method::PUT, &path, Some(&finish), Some("finish-11"))
        .await;
    assert_eq!((f1.status, f2.status), (200, 200));
    assert_eq!(f1.body, f2.body);
    assert_eq!(app.buffered_count().await, 2);

    // Without a key, the same body is a new write.
    let third = app.post("/executed_obs_units/start", &body).await;
    assert_ne!(third.body["id"], first.body["id"]);
    assert_eq!(app.buffered_count().await, 3);
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_reused_for_another_request_is_refused() {
    let app = TestApp::spawn().await;
    let a = app
        .send(
            Method::POST,
            "/executed_obs_units/start",
            Some(&json!({"obs_unit_id": 1})),
            Some("k1"),
        )
        .await;
    assert_eq!(a.status, 201);
    let b = app
        .send(
            Method::POST,
            "/executed_obs_units/start",
            Some(&json!({"obs_unit_id": 2})),
            Some("k1"),
        )
        .await;
    b.assert_error(422, "idempotency_key_reused");
    assert_eq!(app.buffered_count().await, 1);
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_with_one_key_buffer_once() {
    let app = TestApp::spawn().await;
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/executed_obs_units/start"),
            app.token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", "race")
                .json(&json!({"obs_unit_id": 5}))
                .send()
                .await
                .expect("sent");
            assert_eq!(r.status(), 201);
            r.json::<serde_json::Value>().await.expect("json")
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "one answer for all: {answers:?}"
    );
    assert_eq!(app.buffered_count().await, 1);
    app.stop().await.expect("clean stop");
}

/// Records of the older layouts, left by the service before an upgrade, still answer a
/// retry with the first answer and refuse the key for another request: a hash (`fp`, the
/// whole SHA-256 in hex, and `resp`), and a string whose answer is JSON, not packed.
#[tokio::test(flavor = "multi_thread")]
async fn records_of_the_older_layouts_still_answer_a_retry_and_refuse_another_request() {
    let app = TestApp::spawn().await;
    let start = "/executed_obs_units/start";
    let body = json!({"obs_unit_id": 12});
    let first = app
        .send(Method::POST, start, Some(&body), Some("new-12"))
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    let mut conn = app.redis.conn().await;
    let (_, found): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg(app.keys.idempotency("*/new-12"))
        .arg("COUNT")
        .arg(10_000)
        .query_async(&mut conn)
        .await
        .expect("scan");
    let new_key = found.first().expect("the record of new-12").clone();
    let record: Vec<u8> = redis::cmd("GET")
        .arg(&new_key)
        .query_async(&mut conn)
        .await
        .expect("a string");
    // The fingerprint (32 hex), then the answer, packed.
    let (fingerprint, packed) = record.split_at(32);
    let fingerprint = std::str::from_utf8(fingerprint).expect("hex");
    assert!(ops_db_actors::body::is_packed(packed), "{record:?}");
    let answer = ops_db_actors::body::unpack(packed).expect("unpacks");
    let answer = std::str::from_utf8(&answer).expect("JSON").to_owned();
    assert!(answer.starts_with('{'), "{answer}");
    // The same write's record as the older layouts kept it, under other keys: a hash with
    // the whole SHA-256, of which today's fingerprint is the first half; a string with the
    // answer's JSON.
    let hash_key = new_key.replace("/new-12", "/old-12");
    let () = redis::cmd("HSET")
        .arg(&hash_key)
        .arg("fp")
        .arg(format!("{fingerprint}{}", "0".repeat(32)))
        .arg("resp")
        .arg(&answer)
        .query_async(&mut conn)
        .await
        .expect("hset");
    let string_key = new_key.replace("/new-12", "/json-12");
    let () = redis::cmd("SET")
        .arg(&string_key)
        .arg(format!("{fingerprint}{answer}"))
        .query_async(&mut conn)
        .await
        .expect("set");
    for key in ["old-12", "json-12"] {
        let replay = app.send(Method::POST, start, Some(&body), Some(key)).await;
        assert_eq!(replay.status, 201, "{key}: {}", replay.text);
        assert_eq!(replay.body, first.body, "{key}: the first answer");
        assert_eq!(app.buffered_count().await, 1);
        let other = app
            .send(
                Method::POST,
                start,
                Some(&json!({"obs_unit_id": 13})),
                Some(key),
            )
            .await;
        other.assert_error(422, "idempotency_key_reused");
        assert_eq!(app.buffered_count().await, 1);
    }
    app.stop().await.expect("clean stop");
}
