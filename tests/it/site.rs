//! A whole site for tests: the application on its own Redis, a primary with its streaming
//! replica, and optionally the emulated WAN between the forwarder and the primary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ops_db_actors::pg::PgTarget;
use ops_db_devkit::fault_proxy::FaultProxy;
use ops_db_devkit::local_pg::PgUrl;
use ops_db_devkit::set_check;
use ops_db_service::config::{Config, RestartPolicy};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::helpers::{eventually, TestApp, TestRedis};
use crate::pg::TestPg;

/// The application, a primary with its replica, and (optionally) the emulated WAN between
/// the forwarder and the primary.
pub struct Site {
    pub app: TestApp,
    pub pg: Arc<TestPg>,
    pub wan: Option<FaultProxy>,
    /// What the site changed in the test config (for a second instance of the same site).
    settings: Settings,
}

/// A site's changes to the test config ([`TestApp::spawn_on`]), kept to start a second
/// instance of the same site with the same config.
pub type Settings = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// What the dev kit does to a new primary: the stand-in ops-db tables (with their seed),
/// then `migrate` with the default `[schema]` (its allowlist needs the tables).
pub async fn prepare(target: &PgTarget) {
    ops_db_devkit::standin::load(target)
        .await
        .expect("stand-in tables");
    ops_db_service::db::migrate(target, &ops_db_service::config::Schema::default())
        .await
        .expect("migrate");
}

/// Every transaction id in the ledger of the primary `conn` is connected to.
pub async fn ledger(conn: &mut PgConnection) -> Vec<Uuid> {
    set_check::ledger(conn).await.expect("ledger")
}

/// The one set check (`ops_db_devkit::set_check`, which the benchmarks use too): every
/// acknowledged transaction is in the ledger of the primary `conn` is connected to once,
/// and nothing else is.
pub async fn assert_exactly_once(conn: &mut PgConnection, acked: &[Uuid]) {
    let check = set_check::exactly_once(conn, acked).await.expect("ledger");
    assert!(check.holds(), "{check}");
}

/// A test site's wiring: the forwarder at `primary_url`, 5 ms linger; the replica
/// tracker at `replica_url`, polled every 50 ms; both with 2 s connect timeouts and
/// [`fast_restarts`].
pub fn wire(c: &mut Config, primary_url: &str, replica_url: &str) {
    c.forwarder.primary_url = Some(primary_url.to_owned());
    c.forwarder.linger = Duration::from_millis(5);
    c.forwarder.connect_timeout = Duration::from_secs(2);
    fast_restarts(&mut c.forwarder.restart);
    c.replica.url = Some(replica_url.to_owned());
    c.replica.poll_interval = Duration::from_millis(50);
    c.replica.connect_timeout = Duration::from_secs(2);
    fast_restarts(&mut c.replica.restart);
}

/// The restart policy of the forwarder and the replica tracker in tests: quick restarts.
pub fn fast_restarts(policy: &mut RestartPolicy) {
    policy.backoff_base = Duration::from_millis(20);
    policy.backoff_cap = Duration::from_millis(200);
    policy.reset_after = Duration::from_secs(60);
}

impl Site {
    /// The site, with `settings` changing its config last. Its config: the test config
    /// ([`TestApp::spawn_on`]) [`wire`]d to the primary (through the emulated WAN if
    /// `with_wan`) and the replica.
    pub async fn start(
        with_wan: bool,
        settings: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> Self {
        let pg = TestPg::start().await;
        prepare(&PgTarget::plain(pg.primary_url())).await;
        let (wan, primary_url) = if with_wan {
            let upstream: SocketAddr = format!("127.0.0.1:{}", pg.primary_port())
                .parse()
                .expect("addr");
            let proxy = FaultProxy::start("127.0.0.1:0".parse().expect("addr"), upstream)
                .await
                .expect("proxy");
            let url = PgUrl {
                port: proxy.addr().port(),
                ..pg.primary_parts()
            };
            (Some(proxy), url.to_string())
        } else {
            (None, pg.primary_url())
        };
        let replica_url = pg.replica_url();
        Self::start_with(pg, wan, move |c| {
            wire(c, &primary_url, &replica_url);
            settings(c);
        })
        .await
    }

    /// The same with the application's config changed by `settings` alone.
    pub async fn start_with(
        pg: Arc<TestPg>,
        wan: Option<FaultProxy>,
        settings: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> Self {
        let settings: Settings = Arc::new(settings);
        let app = TestApp::spawn_on(TestRedis::start().await, |c| settings(c)).await;
        Self {
            app,
            pg,
            wan,
            settings,
        }
    }

    /// Another instance of the service for the same site: same Redis, same primary, same
    /// config (with `extra` over it), its own HTTP and TCP ports.
    pub async fn second_instance(&self, extra: impl FnOnce(&mut Config)) -> TestApp {
        TestApp::spawn_on(Arc::clone(&self.app.redis), |c| {
            (self.settings)(c);
            c.site.name.clone_from(&self.app.site);
            extra(c);
        })
        .await
    }

    /// A primary with its streaming replica: the stand-in ops-db tables loaded (seeded),
    /// then migrated with the default `[schema]`.
    pub async fn primary_with_replica() -> Arc<TestPg> {
        let pg = TestPg::start().await;
        prepare(&PgTarget::plain(pg.primary_url())).await;
        pg
    }

    pub async fn primary(&self) -> PgConnection {
        PgConnection::connect(&self.pg.primary_url())
            .await
            .expect("connect to primary")
    }

    /// Waits until the buffer is empty: everything forwarded or dead-lettered.
    pub async fn drained(&self, within: Duration) {
        eventually("the buffer drains", within, || async {
            (self.app.buffered_count().await == 0).then_some(())
        })
        .await;
    }

    pub async fn ledger(&self) -> Vec<Uuid> {
        ledger(&mut self.primary().await).await
    }

    /// Every acknowledged transaction is in the ledger once, and nothing else is.
    pub async fn assert_exactly_once(&self, acked: &[Uuid]) {
        assert_exactly_once(&mut self.primary().await, acked).await;
    }

    /// The raw data files of executed obs unit `eou` on the primary.
    pub async fn files_on_primary(&self, eou: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM raw_data_file WHERE executed_obs_unit_id = $1")
            .bind(eou)
            .fetch_one(&mut self.primary().await)
            .await
            .expect("count")
    }

    /// Every dead letter, page by page (a page holds at most 1,000).
    pub async fn all_dead_letters(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut path = "/admin/dlq?limit=1000".to_owned();
        loop {
            let r = self.app.admin_get(&path).await;
            assert_eq!(r.status, 200, "{}", r.text);
            all.extend(
                r.body["dead_letters"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            match r.body["next_cursor"].as_str() {
                Some(cursor) if r.body["more"] == true => {
                    path = format!("/admin/dlq?limit=1000&cursor={cursor}");
                }
                _ => return all,
            }
        }
    }

    pub async fn dead_letters(&self) -> Vec<Value> {
        let r = self.app.admin_get("/admin/dlq").await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["dead_letters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}
