//! Test harness: real services, the real application, one fresh Redis per test.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ops_db_actors::domain::Transaction;
use ops_db_actors::overlay::{Keys, TxState};
use ops_db_actors::tree::Tree;
use ops_db_devkit::local_redis::{self, LocalRedis, Passwords};
use ops_db_devkit::ports::free_port;
use ops_db_service::config::{Config, Scope, Token};
use ops_db_service::redis_access;
use ops_db_service::startup::Application;
use ops_db_service::token;
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const REDIS_IMAGE: (&str, &str) = ("opsdb-redis", "test");

/// Retries `check` until it returns `Some` or `deadline` passes.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[allow(clippy::large_enum_variant)] // one per test, never moved around
enum Backend {
    Docker(ContainerAsync<GenericImage>),
    Local {
        dir: tempdir::Dir,
        server: Option<LocalRedis>,
    },
}

/// A Redis server of the test's own, on a fixed loopback port so that it can be stopped
/// and started again under the application's feet. Like the summit host's, it answers no
/// one without a password: the application connects as the service's ACL user
/// ([`TestRedis::url`]), the test as the administrator ([`TestRedis::conn`]).
pub struct TestRedis {
    pub port: u16,
    pub passwords: Passwords,
    backend: Mutex<Backend>,
}

pub fn backend_is_local() -> bool {
    std::env::var("OPSDB_TEST_BACKEND").is_ok_and(|b| b == "local")
}

impl TestRedis {
    pub async fn start() -> Arc<Self> {
        let port = free_port().expect("a free port");
        let (backend, passwords) = if backend_is_local() {
            let dir = tempdir::Dir::new();
            let server = LocalRedis::start(&dir.0, port)
                .await
                .unwrap_or_else(|e| panic!("OPSDB_TEST_BACKEND=local needs redis-server: {e:#}"));
            let passwords = server.passwords.clone();
            let backend = Backend::Local {
                dir,
                server: Some(server),
            };
            (backend, passwords)
        } else {
            let passwords = Passwords::random();
            let image = GenericImage::new(REDIS_IMAGE.0, REDIS_IMAGE.1)
                .with_exposed_port(6379.tcp())
                .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
                .with_mapped_port(port, 6379.tcp())
                .with_env_var("OPSDB_REDIS_PASSWORD", &passwords.service)
                .with_env_var("OPSDB_REDIS_ADMIN_PASSWORD", &passwords.admin)
                .with_startup_timeout(Duration::from_secs(60));
            let container = image.start().await.unwrap_or_else(|e| {
                panic!(
                    "cannot start the {}:{} container ({e}). The tests need a running Docker engine and \
                     the test images: run `scripts/install-deps.sh && scripts/start-docker.sh && \
                     scripts/build-images.sh` (as root), or use OPSDB_TEST_BACKEND=local with \
                     redis-server installed (apt-get install redis-server)",
                    REDIS_IMAGE.0, REDIS_IMAGE.1
                )
            });
            (Backend::Docker(container), passwords)
        };
        let redis = Arc::new(Self {
            port,
            passwords,
            backend: Mutex::new(backend),
        });
        redis.wait_ready().await;
        redis
    }

    /// A `redis-server` of this machine (whatever `OPSDB_TEST_BACKEND` says) with its data
    /// in `dir`, which is removed (its contents) on drop; `restart` reloads its AOF.
    pub async fn start_local_in(dir: std::path::PathBuf) -> Arc<Self> {
        let port = free_port().expect("a free port");
        let server = LocalRedis::start(&dir, port)
            .await
            .unwrap_or_else(|e| panic!("this test needs redis-server installed: {e:#}"));
        let redis = Arc::new(Self {
            port,
            passwords: server.passwords.clone(),
            backend: Mutex::new(Backend::Local {
                dir: tempdir::Dir(dir),
                server: Some(server),
            }),
        });
        redis.wait_ready().await;
        redis
    }

    /// The application's URL: the service's ACL user.
    pub fn url(&self) -> String {
        local_redis::url(self.port, redis_access::USER, &self.passwords.service)
    }

    /// The administrator's URL (every right), for what the test does.
    pub fn admin_url(&self) -> String {
        local_redis::url(self.port, "default", &self.passwords.admin)
    }

    /// A connection as the administrator. Its replies may take seconds on a busy machine
    /// (a slow log of 10,000 calls, bulk bodies among their arguments): the client's
    /// default of 500 ms failed a test under CI's load.
    pub async fn conn(&self) -> MultiplexedConnection {
        let settings =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
        redis::Client::open(self.admin_url())
            .expect("url")
            .get_multiplexed_async_connection_with_config(&settings)
            .await
            .expect("connect to test redis")
    }

    /// What Redis refused the service's user since it started (`ACL LOG`), one line
    /// each: a command or key the ACL template lacks.
    pub async fn acl_denials(&self) -> Vec<String> {
        let mut conn = self.conn().await;
        let log: Vec<Vec<redis::Value>> = redis::cmd("ACL")
            .arg("LOG")
            .query_async(&mut conn)
            .await
            .expect("ACL LOG");
        log.iter().map(|entry| format!("{entry:?}")).collect()
    }

    async fn wait_ready(&self) {
        let client = redis::Client::open(self.admin_url()).expect("url");
        eventually("redis answers PING", Duration::from_secs(30), || {
            let client = client.clone();
            async move {
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .ok()
            }
        })
        .await;
    }

    /// Whether the server answers now (a test may have killed it).
    pub async fn is_up(&self) -> bool {
        let Ok(client) = redis::Client::open(self.admin_url()) else {
            return false;
        };
        let ping = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), ping).await,
            Ok(Ok(()))
        )
    }

    /// Kills the server without warning (SIGKILL): only what is fsynced survives.
    pub async fn kill(&self) {
        match &mut *self.backend.lock().await {
            Backend::Docker(c) => c.stop_with_timeout(Some(0)).await.expect("docker kill"),
            Backend::Local { server, .. } => {
                if let Some(s) = server.take() {
                    s.kill().await;
                }
            }
        }
    }

    /// Starts the killed server again on the same port and data directory.
    pub async fn restart(&self) {
        match &mut *self.backend.lock().await {
            Backend::Docker(c) => c.start().await.expect("docker start"),
            Backend::Local { dir, server } => {
                *server = Some(
                    LocalRedis::start(&dir.0, self.port)
                        .await
                        .expect("restart redis-server"),
                );
            }
        }
        self.wait_ready().await;
    }
}

/// A temporary directory removed on drop (the only one this harness needs).
pub mod tempdir {
    use std::path::PathBuf;

    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let path =
                std::env::temp_dir().join(format!("opsdb-it-{:016x}", rand::random::<u64>()));
            std::fs::create_dir_all(&path).expect("temp dir");
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub struct TestApp {
    pub http: String,
    pub tcp: SocketAddr,
    pub token: String,
    pub admin_token: String,
    pub site: String,
    pub keys: Keys,
    pub tree: Arc<Tree>,
    pub redis: Arc<TestRedis>,
    pub client: reqwest::Client,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// The application on a Redis of its own.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// As [`TestApp::spawn`], with `settings` changing the test config.
    pub async fn spawn_with(settings: impl FnOnce(&mut Config)) -> Self {
        let redis = TestRedis::start().await;
        Self::spawn_on(redis, settings).await
    }

    /// The application on `redis` with the test config: a random site name, HTTP and TCP
    /// on free loopback ports, TCP lines up to 64 KiB, `redis` (1 s timeout), a `writer`
    /// token (write, read) and an `admin` one; then `settings`, then the checks loading
    /// applies.
    pub async fn spawn_on(redis: Arc<TestRedis>, settings: impl FnOnce(&mut Config)) -> Self {
        let token = token::generate();
        let admin_token = token::generate();
        let mut config = Config::defaults(&format!("t{:08x}", rand::random::<u32>()));
        config.http.listen = ([127, 0, 0, 1], 0).into();
        config.tcp.listen = ([127, 0, 0, 1], 0).into();
        config.tcp.max_line_bytes = 65536;
        config.redis.url = redis.url();
        config.redis.timeout = Duration::from_secs(1);
        config.auth.tokens = vec![
            Token {
                name: "writer".to_owned(),
                sha256: token::hash(&token),
                scopes: vec![Scope::Write, Scope::Read],
            },
            Token {
                name: "admin".to_owned(),
                sha256: token::hash(&admin_token),
                scopes: vec![Scope::Admin],
            },
        ];
        settings(&mut config);
        config
            .validate()
            .unwrap_or_else(|e| panic!("test config: {e}\n{:#?}", config.redacted()));
        let site = config.site.name.clone();
        let app = Application::build(config)
            .await
            .expect("application builds");
        let http = format!("http://{}", app.http_addr());
        let tcp = app.tcp_addr();
        let tree = app.tree();
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        Self {
            http,
            tcp,
            token,
            admin_token,
            keys: Keys::new(&site),
            site,
            tree,
            redis,
            client: reqwest::Client::new(),
            stop,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        Reply::from(request.send().await.expect("request sent")).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body), None)
            .await
    }

    /// A write as a careful client sends it: with an `Idempotency-Key` of its own, sent
    /// again on `503 buffer_unavailable` (a Redis round trip over `redis.timeout` on a busy
    /// machine, which may have stored it: the retry then gets the first answer), so the
    /// write is stored once or the test fails. For tests about something else than ingest
    /// latency.
    pub async fn post_stored(&self, path: &str, body: &Value) -> Reply {
        let key = uuid::Uuid::now_v7().to_string();
        for _ in 0..20 {
            let r = self
                .send(reqwest::Method::POST, path, Some(body), Some(&key))
                .await;
            if r.status != 503 || r.body["error"]["code"] != "buffer_unavailable" {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{path}: still 503 buffer_unavailable after 20 tries")
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::PUT, path, Some(body), None)
            .await
    }

    async fn admin(&self, method: reqwest::Method, path: &str) -> Reply {
        let request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.admin_token);
        Reply::from(request.send().await.expect("request sent")).await
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        self.admin(reqwest::Method::GET, path).await
    }

    pub async fn admin_post(&self, path: &str) -> Reply {
        self.admin(reqwest::Method::POST, path).await
    }

    pub async fn admin_delete(&self, path: &str) -> Reply {
        self.admin(reqwest::Method::DELETE, path).await
    }

    /// A GET with the write token (reads take any valid token).
    pub async fn get_auth(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None, None).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::from(
            self.client
                .get(self.url(path))
                .send()
                .await
                .expect("request sent"),
        )
        .await
    }

    /// The buffered transactions' JSON, unpacked from what the stream holds, in stream
    /// order.
    pub async fn buffered_json(&self) -> Vec<String> {
        let mut conn = self.redis.conn().await;
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.stream())
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("xrange");
        entries
            .ids
            .iter()
            .map(|e| {
                let stored: Vec<u8> = e.get("tx").expect("tx field");
                let json = ops_db_actors::body::unpack(&stored).expect("a packed body");
                String::from_utf8(json.into_owned()).expect("UTF-8 JSON")
            })
            .collect()
    }

    /// The buffered transactions, in stream order.
    pub async fn buffered(&self) -> Vec<Transaction> {
        self.buffered_json()
            .await
            .iter()
            .map(|json| serde_json::from_str(json).expect("transaction json"))
            .collect()
    }

    pub async fn buffered_count(&self) -> u64 {
        let mut conn = self.redis.conn().await;
        redis::cmd("XLEN")
            .arg(self.keys.stream())
            .query_async(&mut conn)
            .await
            .expect("xlen")
    }

    /// Stops the application; its result (an escalated tree is an error). Then fails the
    /// test if Redis refused the service's user anything (its ACL lacks a command the
    /// service sends).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("application stops within 30 s")
            .expect("application task");
        if self.redis.is_up().await {
            let denials = self.redis.acl_denials().await;
            assert!(
                denials.is_empty(),
                "Redis refused the service's user (packaging/redis/ops-db-api.acl lacks it): {denials:#?}"
            );
        }
        stopped
    }

    /// Waits for the application to end on its own (escalation).
    pub async fn join(self, within: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(within, self.task)
            .await
            .expect("application ends on its own")
            .expect("application task")
    }
}

/// An HTTP reply, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub async fn from(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
            text,
        }
    }

    /// Asserts a JSON error of this status and code; returns the error object.
    pub fn assert_error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status, status, "status of {}", self.text);
        let error = &self.body["error"];
        assert_eq!(error["code"], code, "error code of {}", self.text);
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a message: {}",
            self.text
        );
        error
    }
}

/// A 503 `buffer_full` whose message names `what` ran short (`memory`, `disk`), with
/// `Retry-After: 30` and `stored: false`; returns the error object.
pub fn assert_buffer_full<'r>(r: &'r Reply, what: &str) -> &'r Value {
    let error = r.assert_error(503, "buffer_full");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains(what)),
        "{what}: {}",
        r.text
    );
    assert_eq!(error["stored"], false, "{}", r.text);
    assert_eq!(
        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("30"),
        "{}",
        r.text
    );
    error
}

/// A valid raw data file payload.
pub fn file_body(eou: &str) -> Value {
    serde_json::json!({
        "name": "scan_0001.fits",
        "relative_path": "2026/11/24/scan_0001.fits",
        "executed_obs_unit_id": eou,
        "size": 1024,
        "checksum": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    })
}

/// Registers one file `name` of `eou`, which must be acknowledged; its transaction id.
pub async fn register_file(app: &TestApp, eou: Uuid, name: &str) -> Uuid {
    let mut body = file_body(&eou.to_string());
    body["name"] = serde_json::json!(name);
    let r = app.post("/raw_data_files/", &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    uuid(&r.body["transaction_id"])
}

/// The body of a bulk registration of `n` valid files of `eou`, named `{tag}_{i}.fits`.
pub fn bulk_body(eou: Uuid, n: usize, tag: &str) -> Value {
    let files: Vec<Value> = (0..n)
        .map(|i| {
            let mut f = file_body(&eou.to_string());
            f["name"] = serde_json::json!(format!("{tag}_{i}.fits"));
            f
        })
        .collect();
    Value::Array(files)
}

/// The state `GET /transactions/{id}` answers.
pub async fn state_of(app: &TestApp, tx: Uuid) -> TxState {
    let r = app.get_auth(&format!("/transactions/{tx}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    serde_json::from_value(r.body["state"].clone()).expect("a lifecycle state")
}

/// Waits until `GET /transactions/{id}` answers `wanted`.
pub async fn until_state(app: &TestApp, tx: Uuid, wanted: TxState, within: Duration) {
    eventually(&format!("transaction {tx} {wanted}"), within, || async {
        (state_of(app, tx).await == wanted).then_some(())
    })
    .await;
}

/// A UUID from a JSON answer; panics (fails the test) naming the value otherwise.
pub fn uuid(v: &Value) -> Uuid {
    v.as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .unwrap_or_else(|| panic!("not a uuid: {v}"))
}

/// Starts an executed obs unit; its id and transaction id.
pub async fn start_obs_unit(app: &TestApp, obs_unit: i64) -> (Uuid, Uuid) {
    let r = app
        .post(
            "/executed_obs_units/start",
            &serde_json::json!({"obs_unit_id": obs_unit}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    (uuid(&r.body["id"]), uuid(&r.body["transaction_id"]))
}

/// One write over the TCP facade; its reply line.
pub async fn tcp_write(addr: std::net::SocketAddr, request: &Value) -> Value {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("tcp connect");
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{request}\n").as_bytes())
        .await
        .expect("sent");
    let mut line = String::new();
    tokio::io::BufReader::new(r)
        .read_line(&mut line)
        .await
        .expect("reply line");
    serde_json::from_str(&line).expect("reply is JSON")
}

/// Every acknowledged transaction is in the stream, and none twice.
pub async fn assert_stored_exactly_once(app: &TestApp, acked: &[Uuid]) {
    let stored: Vec<Uuid> = app.buffered().await.iter().map(|t| t.id).collect();
    let unique: HashSet<Uuid> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "no transaction is stored twice");
    let acked_set: HashSet<Uuid> = acked.iter().copied().collect();
    assert_eq!(
        acked_set.len(),
        acked.len(),
        "no two acknowledgements share a transaction"
    );
    let missing: Vec<_> = acked_set.difference(&unique).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
}

/// The fault of the "Redis killed under load" tests: once writes flow (100 acknowledged),
/// Redis is killed (SIGKILL: only what was fsynced survives), and this returns when
/// `refused` says the writers have seen refusals. The caller checks what it must while
/// Redis is down, then restarts it.
pub async fn kill_redis_once_writes_flow<F, Fut>(app: &TestApp, mut refused: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let metrics = &app.tree.buffer_metrics;
    eventually(
        "writes acknowledged before the kill",
        Duration::from_secs(10),
        || async { (metrics.acknowledged.get() >= 100).then_some(()) },
    )
    .await;
    app.redis.kill().await;
    eventually("writers see 503s", Duration::from_secs(10), || {
        let seen = refused();
        async move { seen.await.then_some(()) }
    })
    .await;
}

/// The value of a sample line `name value` in the metrics text.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
}
