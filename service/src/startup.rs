//! Building and running the application: config → [`Application::build`] (binds its
//! ports, which may be 0, and starts the actor tree) → [`Application::run_until_stopped`].
//! Tests start the real application the same way.

use std::net::SocketAddr;
use std::sync::Arc;

use ops_db_actors::references::{Mode, References};

use anyhow::Context as _;
use ops_db_actors::buffer::BufferConfig;
use ops_db_actors::domain::Limits;
use ops_db_actors::forwarder::ForwarderConfig;
use ops_db_actors::notifier::NotifierConfig;
use ops_db_actors::overlay::{Keys, Reads};
use ops_db_actors::registry::{self as model_registry, RefreshConfig, Refresher};
use ops_db_actors::replica::{FreshnessConfig, ReplicaConfig};
use ops_db_actors::supervisor::policy::RestartPolicy;
use ops_db_actors::tree::{Tree, TreeConfig};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{self, AppState, Tokens};
use crate::redis_probe::RedisProbe;
use crate::token_store::TokenStore;

pub struct Application {
    http: TcpListener,
    tcp: TcpListener,
    state: AppState,
    /// Routes mounted by whoever starts the application, behind the admin scope.
    admin_routes: Option<axum::Router>,
    /// Keeps `state.registry` current while the application runs.
    registry_refresher: Refresher,
}

/// A CA file that cannot be read would only show as a failing forwarder (or replica
/// tracker); it is the operator's mistake, reported before anything starts.
fn check_ca_file(path: &std::path::Path) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(path).context("cannot read it")?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        anyhow::bail!("holds no PEM certificate");
    }
    Ok(())
}

/// The forwarder, if a primary is configured: restarted forever, never escalating.
fn forwarder(config: &Config, keys: &Keys) -> Option<(ForwarderConfig, RestartPolicy)> {
    let f = &config.forwarder;
    if f.allow_weak_tls {
        tracing::warn!(
            primary = %config.primary()?.redacted(),
            "forwarder.allow_weak_tls = true: the primary may be reached without \
             sslmode=verify-full; anyone on the path can read what is forwarded or answer \
             as the primary"
        );
    }
    let forwarder = ForwarderConfig {
        primary: config.primary()?,
        redis_url: config.redis.url.clone(),
        keys: keys.clone(),
        schema: config.schema.name.clone(),
        batch_size: f.batch_size,
        batch_max_bytes: f.batch_max_bytes,
        max_attempts: f.max_attempts,
        lease_ttl: f.lease_ttl,
        linger: f.linger,
        connect_timeout: f.connect_timeout,
        statement_timeout: f.statement_timeout,
        redis_timeout: config.redis.timeout,
        window: config.resend.window(),
        site: config.site.name.clone(),
        heartbeat_interval: f.heartbeat_interval,
    };
    Some((forwarder, f.restart.policy()))
}

/// The replica tracker, if there is a read source: restarted forever, never escalating.
fn replica(config: &Config, keys: &Keys) -> Option<(ReplicaConfig, RestartPolicy)> {
    let r = &config.replica;
    let tracker = ReplicaConfig {
        source: config.read_source()?,
        redis_url: config.redis.url.clone(),
        keys: keys.clone(),
        schema: config.schema.name.clone(),
        poll_interval: r.poll_interval,
        fast_poll_interval: r.fast_poll_interval,
        connect_timeout: r.connect_timeout,
        redis_timeout: config.redis.timeout,
        retention: r.retention,
        audit_interval: r.audit_interval,
        freshness: FreshnessConfig {
            schema: config.schema.name.clone(),
            site: config.site.name.clone(),
            max_staleness: r.max_staleness,
            heartbeat: config.primary().is_some() && !config.forwarder.heartbeat_interval.is_zero(),
        },
    };
    Some((tracker, r.restart.policy()))
}

/// The referential checker, unless `schema.references = off`.
fn references(config: &Config, keys: &Keys) -> anyhow::Result<Option<Arc<References>>> {
    let mode = match config.schema.references {
        crate::config::References::Off => return Ok(None),
        crate::config::References::Warn => Mode::Warn,
        crate::config::References::Reject => Mode::Reject,
    };
    let checker = References::new(
        mode,
        config.read_source().as_ref(),
        config.redis.url.clone(),
        keys.clone(),
    )
    .context("schema.references: the read source's URL")?;
    Ok(Some(Arc::new(checker)))
}

/// The model registry's refresher: the read source as reads use it (its statement timeout,
/// its pool), the stored copy in the site's Redis.
fn registry_refresher(
    config: &Config,
    keys: Keys,
    reads: &Reads,
    handle: &model_registry::Handle,
) -> Refresher {
    let config = RefreshConfig {
        source: reads.pool().cloned(),
        redis_url: config.redis.url.clone(),
        keys,
        domain: config.schema.domain.clone(),
        tables: config.schema.tables.clone(),
        every: config.schema.refresh,
        redis_timeout: config.redis.timeout,
    };
    Refresher::new(config, handle.clone())
}

impl Application {
    /// Checks `config` as loading does (a config built in Rust did not go through
    /// loading), then binds both listeners and starts the tree.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let presets = Arc::new(config.validated_presets()?);
        if let Some(limit) = crate::descriptors::soft_limit() {
            crate::descriptors::check(&config, limit).map_err(anyhow::Error::msg)?;
        }
        for (key, file) in [
            ("forwarder.ca_file", &config.forwarder.ca_file),
            ("replica.ca_file", &config.replica.ca_file),
        ] {
            if let Some(path) = file {
                check_ca_file(path).with_context(|| format!("{key} {}", path.display()))?;
            }
        }
        let http = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("http.listen {}: cannot bind", config.http.listen))?;
        let tcp = TcpListener::bind(config.tcp.listen)
            .await
            .with_context(|| format!("tcp.listen {}: cannot bind", config.tcp.listen))?;
        let keys = Keys::new(&config.site.name);
        // Known before the tree starts, so the tree's actors can be handed it.
        let registry = model_registry::Handle::new();
        let instance = format!("opsdb-{}-{:08x}", config.site.name, rand::random::<u32>());
        let references = references(&config, &keys)?;
        // Everything that can refuse the start comes before the tree: a refused start
        // leaves no actor running (in this process, a test's or `dev`'s).
        let reads = Reads::new(
            config.read_source().as_ref(),
            keys.clone(),
            &config.schema.name,
        )
        .context("replica.url")?;
        let probe = RedisProbe::new(&config.redis.url, keys.clone(), config.redis.timeout)
            .context("redis.url")?;
        let store = TokenStore::new(config.redis.url.clone(), keys.clone(), config.redis.timeout);
        let tokens =
            Tokens::new(&config.auth, &config.schema, reads.pool().is_some()).with_store(store);
        // The stored copies, then one read: a source that does not answer now keeps the
        // set of the last run.
        tokens.load_stored().await;
        // The file is read once here: a bad file with no stored copy is the operator's
        // mistake to hear about at once; with one (or later, at any read), the last good
        // set stays in use.
        if let (Some(e), Some(path)) = (tokens.refresh_file().await, &config.auth.tokens_file) {
            if !tokens.file_known() {
                return Err(e).with_context(|| format!("auth.tokens_file {}", path.display()));
            }
            tracing::warn!(error = %e, path = %path.display(), "auth.tokens_file cannot be read; its stored copy is in use");
        }
        tokens.refresh_table(reads.pool()).await;
        let tree = Tree::start(TreeConfig {
            instance,
            site: config.site.name.clone(),
            limits: Limits {
                max_bulk_files: config.buffer.max_bulk_files,
            },
            presets,
            registry: registry.clone(),
            references: references.clone(),
            buffer: BufferConfig {
                redis_url: config.redis.url.clone(),
                keys: keys.clone(),
                max_buffered: config.buffer.max_buffered,
                max_memory_fraction: config.buffer.max_memory_fraction,
                min_disk_free_bytes: config.buffer.min_disk_free_bytes,
                idempotency_ttl: config.buffer.idempotency_ttl,
                max_batch: config.buffer.max_batch,
                connections: config.buffer.connections,
                redis_timeout: config.redis.timeout,
            },
            ingest_policy: config.supervisor.policy(),
            buffer_policy: config.supervisor.policy(),
            forwarder: forwarder(&config, &keys),
            replica: replica(&config, &keys),
            notifier: (
                NotifierConfig {
                    redis_url: config.redis.url.clone(),
                    keys: keys.clone(),
                    redis_timeout: config.redis.timeout,
                    stream_cap: config.events.stream_cap,
                    client_buffer: config.events.client_buffer,
                },
                config.events.restart.policy(),
            ),
            event_queue: config.events.queue,
            events_enabled: config.events.enabled,
        })
        .await
        .context("starting the actor tree")?;
        // One registry: each part registers the metrics it owns.
        let mut metrics = Registry::default();
        tree.register_metrics(&mut metrics);
        if let Some(checker) = &references {
            checker.register_metrics(&mut metrics);
        }
        probe.register(&mut metrics);
        registry.register(&mut metrics);
        reads.register_metrics(&mut metrics);
        // The stored copy, then one read: the registry is as current as it can be before
        // the facades take the first request.
        let mut registry_refresher = registry_refresher(&config, keys, &reads, &registry);
        registry_refresher.start().await;
        let state = AppState {
            tree: Arc::new(tree),
            tokens: Arc::new(tokens),
            probe: Arc::new(probe),
            reads: Arc::new(reads),
            registry,
            write_timeout: config.http.request_timeout,
            metrics: Arc::new(metrics),
            events_clients: Arc::new(tokio::sync::Semaphore::new(config.events.max_clients)),
            config: Arc::new(config),
        };
        Ok(Self {
            http,
            tcp,
            state,
            admin_routes: None,
            registry_refresher,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .unwrap_or_else(|_| self.state.config.http.listen)
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
            .local_addr()
            .unwrap_or_else(|_| self.state.config.tcp.listen)
    }

    /// Mounts `routes` on the HTTP API behind the admin scope: the extension point through
    /// which `dev` adds its emulated WAN's controls. Routes already mounted stay.
    pub fn with_admin_routes(mut self, routes: axum::Router) -> Self {
        self.admin_routes = Some(match self.admin_routes.take() {
            Some(mounted) => mounted.merge(routes),
            None => routes,
        });
        self
    }

    pub fn tree(&self) -> Arc<Tree> {
        Arc::clone(&self.state.tree)
    }

    /// The model registry in use (also `AppState::registry`).
    pub fn registry(&self) -> model_registry::Handle {
        self.state.registry.clone()
    }

    /// Serves until `stop` is cancelled or the actor tree gives up. Then both facades stop
    /// accepting and answer the requests in flight (at most `shutdown.grace`, see
    /// `crate::shutdown`), and only then is the tree stopped, the forwarder finishing or
    /// abandoning its batch (its entries stay pending; the ledger makes the replay exact).
    /// An escalation is an error, so the process exits non-zero and its service manager
    /// restarts it; a stop asked for is not.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let Self {
            http,
            tcp,
            state,
            admin_routes,
            registry_refresher,
        } = self;
        let tree = Arc::clone(&state.tree);
        let watcher = {
            let (tree, stop) = (Arc::clone(&tree), stop.clone());
            tokio::spawn(async move {
                tree.stopped().await;
                stop.cancel();
            })
        };
        let refresh = tokio::spawn(
            Arc::clone(&state.tokens).refresh_until(state.reads.pool().cloned(), stop.clone()),
        );
        let registry_refresh = tokio::spawn(registry_refresher.run(stop.clone().cancelled_owned()));
        // The periodic `health` event: the health report, gathered here (the actors know
        // nothing of it) and emitted into the tree's event sink.
        let health_events = tokio::spawn(crate::health_report::emit_every(
            state.clone(),
            state.config.events.health_interval,
            stop.clone(),
        ));
        tracing::info!(http = %http.local_addr()?, tcp = %tcp.local_addr()?, "serving");
        let router = http::router(state.clone(), admin_routes);
        let grace = state.config.shutdown.grace;
        // Both facades drain side by side, within one grace period.
        tokio::join!(
            http::serve::serve(http, router, &state.config.http, stop.clone(), grace),
            crate::tcp::serve(tcp, state.clone(), stop.clone()),
        );
        tracing::info!("facades closed, stopping the actors");
        refresh.abort();
        registry_refresh.abort();
        health_events.abort();
        tree.shutdown().await;
        watcher.abort();
        match tree.health.escalation() {
            Some(why) => anyhow::bail!("the actor tree gave up: {why}"),
            None => Ok(()),
        }
    }
}
