//! Redis as a trust boundary (issue 18, item 1): the tests' Redis, like the summit host's,
//! answers no one without a password, and the service's ACL user
//! (`packaging/redis/ops-db-api.acl`) reaches only its keys, its channel and its commands,
//! from a script too. The summit host's setup (`redis-acl`'s ACL file, the access snippet's
//! unix socket and no TCP port) carries the service; `/health` says how Redis is reached and
//! whether it is open.
//!
//! That the ACL lacks nothing the service sends is checked by every test that stops its
//! application (`TestApp::stop` reads `ACL LOG`).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ops_db_devkit::ports::free_port;
use ops_db_service::redis_access::USER;
use redis::aio::MultiplexedConnection;
use serde_json::json;

use crate::helpers::{eventually, tempdir, TestApp, TestRedis};

async fn connect(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

/// The error code of a refused command (`NOAUTH`, `NOPERM`, ...), or `ok`.
async fn code(conn: &mut MultiplexedConnection, cmd: &redis::Cmd) -> String {
    match cmd.query_async::<redis::Value>(conn).await {
        Ok(_) => "ok".to_owned(),
        Err(e) => e
            .code()
            .map_or_else(|| format!("{:?}: {e}", e.kind()), str::to_owned),
    }
}

/// Waits until a `PING` at `url` is answered with `answer` (`ok` or an error code): the
/// server is up.
async fn until_ping(url: &str, answer: &str) {
    eventually(
        &format!("PING at {url}"),
        Duration::from_secs(10),
        || async {
            let mut conn = connect(url).await.ok()?;
            (code(&mut conn, &cmd(&["PING"])).await == answer).then_some(())
        },
    )
    .await;
}

fn cmd(args: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_user_reaches_its_keys_and_commands_only_and_nobody_gets_in_without_a_password()
{
    let redis = TestRedis::start().await;
    let anonymous = format!("redis://127.0.0.1:{}", redis.port);
    let mut conn = connect(&anonymous).await.expect("a connection");
    assert_eq!(code(&mut conn, &cmd(&["PING"])).await, "NOAUTH");
    assert_eq!(
        code(&mut conn, &cmd(&["XADD", "opsdb:t:tx", "*", "k", "v"])).await,
        "NOAUTH"
    );
    let wrong = ops_db_devkit::local_redis::url(redis.port, USER, "not-the-password");
    assert!(
        connect(&wrong).await.is_err(),
        "a wrong password is refused"
    );

    let mut service = connect(&redis.url()).await.expect("the service's user");
    for allowed in [
        &["PING"][..],
        &["XADD", "opsdb:t:tx", "*", "k", "v"],
        &["HSET", "opsdb:t:tx:1", "state", "buffered"],
        &["CONFIG", "GET", "appendfsync"],
        &["INFO", "memory"],
        &["PUBLISH", "opsdb:t:events", "{}"],
    ] {
        assert_eq!(code(&mut service, &cmd(allowed)).await, "ok", "{allowed:?}");
    }
    let mut admin = redis.conn().await;
    let () = redis::cmd("SET")
        .arg("victim")
        .arg("kept")
        .query_async(&mut admin)
        .await
        .expect("set");
    for refused in [
        // Keys and channels of anyone else.
        &["GET", "victim"][..],
        &["DEL", "victim"],
        &["SET", "elsewhere", "x"],
        &["PUBLISH", "elsewhere", "x"],
        // The server's settings, data and users.
        &["CONFIG", "SET", "appendfsync", "no"],
        &["FLUSHALL"],
        &["KEYS", "*"],
        &["SCAN", "0"],
        &["ACL", "LIST"],
        &["SHUTDOWN"],
        &["CLIENT", "KILL", "TYPE", "normal"],
        &["BGREWRITEAOF"],
        // Scripts of its own making: only the loaded ones it knows run.
        &["EVAL", "return 1", "0"],
        &["SCRIPT", "FLUSH"],
        &[
            "FUNCTION",
            "LOAD",
            "#!lua name=x\nredis.register_function('x', function() end)",
        ],
    ] {
        assert_eq!(
            code(&mut service, &cmd(refused)).await,
            "NOPERM",
            "{refused:?}"
        );
    }
    // A script runs with its caller's rights: one that touches another key fails.
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('DEL', 'victim')")
        .query_async(&mut admin)
        .await
        .expect("script load");
    let reply = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(0)
        .query_async::<redis::Value>(&mut service)
        .await;
    assert!(reply.is_err(), "{reply:?}");
    let kept: Option<String> = redis::cmd("GET")
        .arg("victim")
        .query_async(&mut admin)
        .await
        .expect("get");
    assert_eq!(kept.as_deref(), Some("kept"));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_says_redis_is_reached_on_loopback_as_the_service_user_and_requires_a_password() {
    let app = TestApp::spawn().await;
    let health = app.get("/health").await;
    assert_eq!(
        health.body["redis_access"],
        json!({"transport": "tcp_loopback", "user": USER, "requires_auth": true, "problems": []}),
        "{}",
        health.body
    );
    app.stop().await.expect("a clean stop");
}

/// A `redis-server` with nothing but `args` (no ACL, no snippet), killed on drop.
fn plain_redis(dir: &Path, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new("redis-server")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no", "--logfile", "redis.log"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server (apt-get install redis-server)")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_redis_and_a_url_without_a_user_are_reported_in_health() {
    let dir = tempdir::Dir::new();
    let port = free_port().expect("port");
    let _open = plain_redis(
        &dir.0,
        &["--port", &port.to_string(), "--bind", "127.0.0.1"],
    );
    let url = format!("redis://127.0.0.1:{port}");
    until_ping(&url, "ok").await;
    let app = TestApp::spawn_on(TestRedis::start().await, |c| c.redis.url.clone_from(&url)).await;
    let access = app.get("/health").await.body["redis_access"].clone();
    assert_eq!(access["transport"], "tcp_loopback");
    assert_eq!(access["user"], json!(null));
    assert_eq!(access["requires_auth"], json!(false));
    let problems: Vec<String> =
        serde_json::from_value(access["problems"].clone()).expect("problems");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("without a password"), "{problems:?}");
    assert!(problems[1].contains("names no user"), "{problems:?}");
    app.stop().await.expect("a clean stop");
}

/// `ops-db-api redis-acl` with `password` on standard input.
fn redis_acl(password: &str) -> std::process::Output {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ops-db-api"))
        .arg("redis-acl")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ops-db-api");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    child.wait_with_output().expect("redis-acl")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_runs_over_the_summit_hosts_socket_with_the_acl_file_redis_acl_writes() {
    let short = redis_acl("short");
    assert_eq!(short.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("at least 16"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );

    let dir = tempdir::Dir::new();
    let password = format!("{:032x}", rand::random::<u128>());
    let acl = redis_acl(&password);
    assert!(
        acl.status.success(),
        "{}",
        String::from_utf8_lossy(&acl.stderr)
    );
    // An administrator, as the operator adds one (OPERATIONS, "Redis access"): the test
    // reads ACL LOG as it.
    let admin_password = format!("{:032x}", rand::random::<u128>());
    let mut users = String::from_utf8(acl.stdout).expect("text");
    users.push_str(&format!("user admin on >{admin_password} ~* &* +@all\n"));
    std::fs::write(dir.0.join("users.acl"), users).expect("users.acl");
    // The summit host's redis.conf ends with both includes; the paths that are the host's
    // (/run/redis, /etc/redis) are this test's directory instead.
    let packaging = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/redis");
    let socket = dir.0.join("redis.sock");
    let conf = dir.0.join("redis.conf");
    std::fs::write(
        &conf,
        format!(
            "include {}\ninclude {}\nunixsocket {}\naclfile {}\n",
            packaging.join("ops-db-api.conf").display(),
            packaging.join("ops-db-api-access.conf").display(),
            socket.display(),
            dir.0.join("users.acl").display(),
        ),
    )
    .expect("redis.conf");
    let _redis = plain_redis(&dir.0, &[conf.to_str().expect("path")]);
    let anonymous = format!("unix://{}", socket.display());
    until_ping(&anonymous, "NOAUTH").await;
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o770, "the socket is its owner's and group's");
    let mut default = connect(&anonymous).await.expect("connect");
    assert_eq!(
        code(&mut default, &cmd(&["AUTH", "default", "anything"])).await,
        "WRONGPASS",
        "the default user is off"
    );
    // From here on, nothing is refused.
    let admin = format!(
        "unix://{}?user=admin&pass={admin_password}",
        socket.display()
    );
    let mut admin = connect(&admin).await.expect("the administrator");
    let () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .expect("acl log reset");

    let url = format!("unix://{}?user={USER}&pass={password}", socket.display());
    let mut service = connect(&url).await.expect("the service's user");
    let port: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query_async(&mut service)
        .await
        .expect("config get");
    assert_eq!(port, ["port", "0"], "no TCP port");

    let app = TestApp::spawn_on(TestRedis::start().await, |c| c.redis.url.clone_from(&url)).await;
    let reply = app
        .post(
            "/executed_obs_units/start",
            &json!({"obs_unit_id": 1, "instrument_module": "prime-cam"}),
        )
        .await;
    let denials = || async {
        redis::cmd("ACL")
            .arg("LOG")
            .query_async::<Vec<redis::Value>>(&mut admin.clone())
            .await
            .expect("acl log")
    };
    assert_eq!(reply.status, 201, "{}; {:?}", reply.body, denials().await);
    let health = app.get("/health").await.body;
    assert_eq!(
        health["redis_access"],
        json!({"transport": "unix", "user": USER, "requires_auth": true, "problems": []}),
        "{health}"
    );
    assert_eq!(health["redis_durability"]["durable"], true, "{health}");
    let buffered: u64 = redis::cmd("XLEN")
        .arg(app.keys.stream())
        .query_async(&mut service)
        .await
        .expect("xlen");
    assert_eq!(buffered, 1, "the write is in this Redis");
    app.stop().await.expect("a clean stop");
    let denials = denials().await;
    assert!(denials.is_empty(), "{denials:?}");
}
