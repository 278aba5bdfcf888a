//! TLS to the primary and the replica: `sslmode=verify-full` with a CA file from the
//! config, against servers whose certificate and CA the test makes.
//!
//! Invariants under test: with the right CA and host name every write is forwarded and
//! replicated over encrypted sessions; a wrong CA or a wrong host name refuses to connect
//! (nothing is sent in the clear instead) and `/health` says why; with a CA file, that file
//! alone is trusted (the pinned tunnel, `pg/pinned.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ops_db_actors::pg::PgTarget;
use ops_db_devkit::local_pg::PgUrl;
use ops_db_service::config::Config;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::Value;

use crate::helpers::{eventually, start_obs_unit, tempdir, TestApp, TestRedis};
use crate::pg::TestPg;
use crate::site::{wire, Site};

/// A certificate authority of the test's own: its certificate (PEM) and its issuer.
fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("ops-db-api test CA {name}"));
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// A server certificate for `localhost` only, signed by `ca`: (certificate, key) as PEM.
fn server_certificate(ca: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
    let cert = params.signed_by(&key, ca).expect("server certificate");
    (cert.pem(), key.serialize_pem())
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write PEM");
    path
}

/// The settings that point the forwarder and the replica tracker at `pg` through `host`
/// with `sslmode=verify-full` and `ca_file` (otherwise [`wire`]d as a test site).
fn verify_full(
    pg: &TestPg,
    host: &str,
    ca_file: &Path,
) -> impl Fn(&mut Config) + Send + Sync + 'static {
    let url = |parts: PgUrl| {
        PgUrl {
            host: host.to_owned(),
            sslmode: Some("verify-full"),
            ..parts
        }
        .to_string()
    };
    let (primary, replica) = (url(pg.primary_parts()), url(pg.replica_parts()));
    let ca_file = ca_file.to_owned();
    move |c| {
        wire(c, &primary, &replica);
        c.forwarder.ca_file = Some(ca_file.clone());
        c.replica.ca_file = Some(ca_file.clone());
    }
}

/// `/health`'s last failure of the forwarder and of the replica tracker, once both have one.
async fn failures(app: &TestApp) -> (String, String) {
    eventually("both connections fail", Duration::from_secs(30), || async {
        let health = app.get("/health").await.body;
        let reason = |section: &str| {
            health[section]["last_failure"]["reason"]
                .as_str()
                .map(str::to_owned)
        };
        Some((reason("forwarder")?, reason("replica")?))
    })
    .await
}

/// How the servers see the service's sessions: (application_name, ssl) of each.
async fn sessions(pg: &TestPg, server: &str) -> Vec<(String, bool)> {
    let mut conn = if server == "primary" {
        pg.primary().await
    } else {
        pg.replica().await
    };
    sqlx::query_as(
        "SELECT a.application_name, s.ssl FROM pg_stat_ssl s \
         JOIN pg_stat_activity a USING (pid) WHERE a.application_name LIKE 'ops-db-api%'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("pg_stat_ssl")
}

struct Fixture {
    pg: Arc<TestPg>,
    dir: tempdir::Dir,
    ca_file: PathBuf,
}

async fn fixture() -> Fixture {
    let ca = authority("right");
    let (cert, key) = server_certificate(&ca);
    let pg = TestPg::start_tls(&cert, &key).await;
    let plain = ops_db_actors::pg::PgTarget::plain(pg.primary_url());
    crate::site::prepare(&plain).await;
    let dir = tempdir::Dir::new();
    let ca_file = write_pem(&dir.0, "ca.pem", &ca.pem());
    Fixture { pg, dir, ca_file }
}

#[tokio::test]
async fn verify_full_forwards_and_replicates_over_tls_and_refuses_a_wrong_ca_or_host() {
    let f = fixture().await;

    // The right CA and host name: a write goes all the way, over encrypted sessions.
    let settings = verify_full(&f.pg, "localhost", &f.ca_file);
    let site = Site::start_with(Arc::clone(&f.pg), None, settings).await;
    let app = &site.app;
    let (_eou, tx) = start_obs_unit(app, 1).await;
    eventually(
        "the write is replicated",
        Duration::from_secs(30),
        || async {
            let r = app.get_auth(&format!("/transactions/{tx}")).await;
            (r.body["state"] == "replicated").then_some(())
        },
    )
    .await;
    assert_eq!(site.ledger().await, vec![tx]);
    let health = app.get("/health").await.body;
    assert_eq!(health["database"], "connected", "{health}");
    for (server, name) in [
        ("primary", "ops-db-api forwarder"),
        ("replica", "ops-db-api replica tracker"),
    ] {
        let seen = sessions(&f.pg, server).await;
        assert!(
            seen.contains(&(name.to_owned(), true)),
            "{name} on the {server}: an encrypted session expected, saw {seen:?}"
        );
        assert!(
            seen.iter().all(|(_, ssl)| *ssl),
            "no session in the clear on the {server}: {seen:?}"
        );
    }
    site.app.stop().await.expect("clean stop");

    // A CA that did not sign the servers' certificates: no connection, and /health says
    // the certificate is the reason.
    let wrong_ca = write_pem(&f.dir.0, "wrong-ca.pem", &authority("wrong").pem());
    let app = TestApp::spawn_with(verify_full(&f.pg, "localhost", &wrong_ca)).await;
    let written = start_obs_unit(&app, 2).await;
    let (forwarder, replica) = failures(&app).await;
    for reason in [&forwarder, &replica] {
        assert!(
            reason.contains("UnknownIssuer") || reason.contains("certificate"),
            "a wrong CA is named as the reason: {reason}"
        );
    }
    let health: Value = app.get("/health").await.body;
    assert_eq!(health["forwarder"]["link"], "down", "{health}");
    assert_eq!(
        app.buffered_count().await,
        1,
        "the write waits in the buffer"
    );
    assert_not_applied(&f.pg, written.1).await;
    app.stop().await.expect("clean stop");

    // The right CA, the wrong name: the certificate is for localhost, not 127.0.0.1.
    let app = TestApp::spawn_with(verify_full(&f.pg, "127.0.0.1", &f.ca_file)).await;
    let written = start_obs_unit(&app, 3).await;
    let (forwarder, replica) = failures(&app).await;
    for reason in [&forwarder, &replica] {
        assert!(
            reason.contains("NotValidForName") || reason.contains("name"),
            "a wrong host name is named as the reason: {reason}"
        );
    }
    assert_not_applied(&f.pg, written.1).await;
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn verify_full_refuses_a_server_without_tls() {
    // The ordinary test servers accept plain connections only.
    let pg = TestPg::start().await;
    let dir = tempdir::Dir::new();
    let ca_file = write_pem(&dir.0, "ca.pem", &authority("any").pem());
    let app = TestApp::spawn_with(verify_full(&pg, "localhost", &ca_file)).await;
    let (forwarder, replica) = failures(&app).await;
    for reason in [&forwarder, &replica] {
        assert!(
            reason.to_lowercase().contains("tls") || reason.to_lowercase().contains("ssl"),
            "a server without TLS is named as the reason: {reason}"
        );
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_unreadable_ca_file_stops_the_start_with_its_key() {
    let redis = TestRedis::start().await;
    let mut config = Config::defaults("tls");
    config.redis.url = redis.url();
    config.http.listen = ([127, 0, 0, 1], 0).into();
    config.tcp.listen = ([127, 0, 0, 1], 0).into();
    let localhost = |port| PgUrl {
        host: "localhost".to_owned(),
        ..PgUrl::opsdb(port)
    };
    config.forwarder.primary_url = Some(
        PgUrl {
            sslmode: Some("verify-full"),
            ..localhost(1)
        }
        .to_string(),
    );
    config.forwarder.ca_file = Some("/nonexistent/ca.pem".into());
    config.replica.url = Some(localhost(2).to_string());
    config.validate().expect("the config itself is valid");
    let err = ops_db_service::startup::Application::build(config)
        .await
        .err()
        .expect("the start fails");
    let shown = format!("{err:#}");
    assert!(
        shown.contains("forwarder.ca_file") && shown.contains("/nonexistent/ca.pem"),
        "{shown}"
    );
}

/// The transaction `tx` is not in the primary's ledger.
async fn assert_not_applied(pg: &TestPg, tx: uuid::Uuid) {
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM opsdb_api.applied_transaction WHERE transaction_id = $1",
    )
    .bind(tx)
    .fetch_one(&mut pg.primary().await)
    .await
    .expect("ledger");
    assert_eq!(applied, 0, "nothing reached the primary");
}

/// With a CA file, that file is the whole trust store (not an addition to the public web
/// roots, as sqlx's own TLS would make it), and `verify-ca` checks the chain but not the
/// name; every session is encrypted.
#[tokio::test]
async fn only_the_ca_file_is_trusted_and_verify_ca_skips_only_the_name() {
    use sqlx::ConnectOptions as _;
    let f = fixture().await;
    let roots = ops_db_actors::pg::pinned::roots(&f.ca_file).expect("the CA file's roots");
    assert_eq!(roots.len(), 1, "one certificate in the file, nothing else");

    // The certificate names localhost; through 127.0.0.1 verify-ca connects, encrypted.
    let url = f.pg.primary_url() + "?sslmode=verify-ca";
    let target = PgTarget::new(url.clone(), Some(f.ca_file.clone()));
    let options = target.options().expect("options");
    assert!(
        options.get_socket().is_some(),
        "through the pinned tunnel's socket, not sqlx's own TLS"
    );
    let mut conn = options
        .connect()
        .await
        .expect("verify-ca connects whatever the name");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_ssl");
    assert!(ssl, "the session is encrypted end to end");

    // Another CA: refused, with the reason.
    let wrong_ca = write_pem(&f.dir.0, "other-ca.pem", &authority("other").pem());
    let err = PgTarget::new(url, Some(wrong_ca))
        .options()
        .expect("options")
        .connect()
        .await
        .expect_err("another CA is refused");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}
