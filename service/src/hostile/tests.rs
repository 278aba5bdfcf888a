//! Properties of request decoding and validation, for every operation, and of the TCP
//! line protocol: whatever arrives, the answer is an acknowledgement-to-be or a 4xx JSON
//! error of the documented shape; never a panic, never a 5xx.

use std::cell::Cell;
use std::time::Duration;

use bytes::BytesMut;
use ops_db_actors::domain::Limits;
use proptest::prelude::*;
use proptest::test_runner::{TestError, TestRunner};
use serde_json::{json, Value};
use tokio_util::codec::{Decoder, LinesCodec};

use super::*;
use crate::config::Tcp;
use crate::ops::ApiError;
use crate::tcp;

const LIMITS: Limits = Limits { max_bulk_files: 3 };
const TOKEN: &str = "opsdb_the-connections-token";

/// Cases per property: these are pure functions of microseconds each.
fn runner() -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: 256,
        // Nothing written into the source tree; a failure prints its minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// Runs `test` on `strategy`'s cases, failing with the minimal failing input.
fn check<S: Strategy>(what: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), String>)
where
    S::Value: std::fmt::Debug,
{
    let result = runner().run(&strategy, |value| test(value).map_err(TestCaseError::fail));
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, value)) => {
            panic!("{what}: {reason}\nminimal failing input: {value:?}")
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

fn client_error(err: &ApiError) -> Result<(), String> {
    if !err.status.is_client_error() {
        return Err(format!("status {} for {err:?}", err.status));
    }
    if err.message.contains(" at line ") {
        return Err(format!("a parser position in the message: {}", err.message));
    }
    error_shape(&err.body(), &[])
}

/// A TCP error line: the error's shape, a 4xx `status`, a `request_id` member.
fn error_line(reply: &Value) -> Result<(), String> {
    error_shape(reply, &["request_id", "status", "retry_after"])?;
    let status = reply["status"].as_u64().ok_or("no status")?;
    if !(400..500).contains(&status) {
        return Err(format!("status {status}: {reply}"));
    }
    if reply.get("request_id").is_none() {
        return Err(format!("no request_id: {reply}"));
    }
    Ok(())
}

#[test]
fn every_valid_body_passes() {
    for spec in super::generated() {
        let body = valid_body(spec.kind).to_string();
        let id = spec.kind.needs_id().then_some(EOU);
        let key = Some(b"key-1".as_slice());
        assert_eq!(
            expected(
                spec.kind,
                id,
                body.as_bytes(),
                key,
                &LIMITS,
                &Default::default()
            ),
            Ok(()),
            "{}",
            spec.name()
        );
    }
}

/// For every row of the table: no panic, and `Ok` or a 4xx JSON error. The generator must
/// reach all three answers (a valid body, malformed JSON, an invalid field) for each.
#[test]
fn every_operation_answers_hostile_bodies_with_ok_or_a_4xx_json_error() {
    for spec in super::generated() {
        let seen = [Cell::new(0u32), Cell::new(0), Cell::new(0)];
        let cases = (
            body(spec.kind).prop_map(Shown),
            path_id(),
            idempotency_key(),
        );
        check(spec.name(), cases, |(Shown(body), id, key)| {
            let id = spec.kind.needs_id().then_some(id.as_str());
            match expected(
                spec.kind,
                id,
                &body,
                key.as_deref(),
                &LIMITS,
                &Default::default(),
            ) {
                Ok(()) => seen[0].set(seen[0].get() + 1),
                Err(err) => {
                    client_error(&err)?;
                    let i = if err.status.as_u16() == 400 { 1 } else { 2 };
                    seen[i].set(seen[i].get() + 1);
                }
            }
            Ok(())
        });
        let [ok, bad, invalid] = seen.map(Cell::into_inner);
        assert!(
            ok > 0 && bad > 0 && invalid > 0,
            "{}: ok {ok}, 400 {bad}, other 4xx {invalid}",
            spec.name()
        );
    }
}

fn tcp_config() -> Tcp {
    Tcp {
        listen: "127.0.0.1:0".parse().expect("address"),
        max_line_bytes: 1 << 20,
        unauthenticated_line_bytes: 4096,
        max_connections: 1,
        idle_timeout: Duration::from_secs(60),
        max_connections_per_peer: 1,
        auth_timeout: Duration::from_secs(10),
        max_unauthenticated: 1,
    }
}

#[test]
fn a_valid_line_of_every_operation_is_a_request() {
    for spec in super::generated() {
        let line = json!({"op": spec.name(), "token": TOKEN, "request_id": 1, "id": EOU,
                          "idempotency_key": "k", "body": valid_body(spec.kind)});
        let line = line.to_string();
        assert_eq!(
            expected_line(line.as_bytes(), TOKEN, &LIMITS),
            Verdict::Accepted
        );
        let tokenless = json!({"op": spec.name(), "id": EOU, "body": valid_body(spec.kind)});
        let tokenless = tokenless.to_string();
        assert_eq!(
            expected_line(tokenless.as_bytes(), TOKEN, &LIMITS),
            Verdict::Accepted,
            "the connection's token"
        );
    }
    let auth = json!({"op": "auth", "token": TOKEN}).to_string();
    assert_eq!(
        expected_line(auth.as_bytes(), TOKEN, &LIMITS),
        Verdict::Accepted
    );
    let stranger = json!({"op": "auth", "token": "opsdb_other"}).to_string();
    assert!(matches!(
        expected_line(stranger.as_bytes(), TOKEN, &LIMITS),
        Verdict::Refused(reply) if reply["status"] == 401
    ));
}

/// Any bytes, cut into lines by the connection's codec (as before a token, at
/// `unauthenticated_line_bytes`): every line is silent (blank), a request, or answered
/// with a 4xx error line; a line the codec refuses gets a 4xx error line before closing.
#[test]
fn every_tcp_line_is_a_request_or_a_4xx_error_line() {
    let config = tcp_config();
    let seen = [Cell::new(0u32), Cell::new(0)];
    let bytes = prop_oneof![3 => line(TOKEN), 1 => proptest::collection::vec(any::<u8>(), 0..5000)];
    check("tcp lines", bytes.prop_map(Shown), |Shown(mut bytes)| {
        bytes.push(b'\n');
        let mut codec = LinesCodec::new_with_max_length(config.unauthenticated_line_bytes);
        let mut buffer = BytesMut::from(bytes.as_slice());
        loop {
            match codec.decode(&mut buffer) {
                Ok(None) => return Ok(()),
                Ok(Some(line)) => match expected_line(line.as_bytes(), TOKEN, &LIMITS) {
                    Verdict::Silent if line.trim().is_empty() => {}
                    Verdict::Silent => return Err(format!("no answer to {line:?}")),
                    Verdict::Accepted => seen[0].set(seen[0].get() + 1),
                    Verdict::Refused(reply) => {
                        error_line(&reply)?;
                        seen[1].set(seen[1].get() + 1);
                    }
                },
                Err(err) => {
                    let err = tcp::line_error(&config, err, false)
                        .ok_or("a line error without an answer")?;
                    client_error(&err)?;
                    return error_line(&tcp::error_reply(None, &err));
                }
            }
        }
    });
    let [accepted, refused] = seen.map(Cell::into_inner);
    assert!(
        accepted > 0 && refused > 0,
        "accepted {accepted}, refused {refused}"
    );
}
