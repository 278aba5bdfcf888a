//! Configuration: `config/default.toml` (compiled in), then the site's file, then
//! `OPSDB__SECTION__KEY` environment variables. Validated before anything binds.
//!
//! This is the only module that reads the environment (besides `RUST_LOG` in telemetry).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use ops_db_actors::backoff::Backoff;
use ops_db_actors::domain::Presets;
use ops_db_actors::pg::{redact_url, PgTarget};
use ops_db_actors::supervisor::policy::{Intensity, RestartPolicy as SupervisorPolicy};
use serde::{Deserialize, Serialize};

mod size;
mod validate;

pub use validate::validate_tokens;

const DEFAULTS: &str = include_str!("../../../config/default.toml");
const PRESETS: &str = include_str!("../../../config/presets.toml");

/// The compiled-in presets (`config/presets.toml`), checked by a test.
pub fn default_presets() -> Presets {
    parse_presets(Toml::string(PRESETS)).unwrap_or_else(|_| Presets(Default::default()))
}

fn parse_presets(source: impl figment::Provider) -> Result<Presets, ConfigError> {
    let presets: Presets = Figment::from(source)
        .extract()
        .map_err(|e| invalid("schema.presets", e.to_string()))?;
    presets
        .check()
        .map_err(|e| invalid("schema.presets", e.to_string()))?;
    Ok(presets)
}

impl Schema {
    /// The presets: `schema.presets` if set, else the compiled-in ones; checked.
    pub fn presets(&self) -> Result<Presets, ConfigError> {
        match &self.presets {
            Some(path) if !path.is_file() => Err(invalid(
                "schema.presets",
                format!("{} is not a readable file", path.display()),
            )),
            Some(path) => parse_presets(Toml::file(path)),
            None => parse_presets(Toml::string(PRESETS)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub site: Site,
    pub http: Http,
    pub tcp: Tcp,
    pub redis: Redis,
    pub buffer: Buffer,
    pub forwarder: Forwarder,
    pub replica: Replica,
    pub resend: Resend,
    pub events: Events,
    pub auth: Auth,
    pub faults: Faults,
    pub log: Log,
    pub shutdown: Shutdown,
    pub schema: Schema,
    /// Restart policy of the ingest-side actors (buffer, ingest): with an intensity limit.
    pub supervisor: RestartPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SiteMode {
    Secondary,
    Main,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub name: String,
    pub mode: SiteMode,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub listen: SocketAddr,
    #[serde(with = "size")]
    pub body_limit_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connections served at once; one more gets a 503 and is closed.
    pub max_connections: usize,
    /// A request's head must arrive within this; also the longest a keep-alive connection
    /// sits idle. Bounds what a slow-loris client holds.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request's body must arrive within this.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Connections served at once from one IP address (loopback included); one more gets
    /// a 503 and is closed.
    pub max_connections_per_peer: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tcp {
    pub listen: SocketAddr,
    #[serde(with = "size")]
    pub max_line_bytes: usize,
    /// The longest line from a connection that has not yet presented a valid token: a
    /// stranger cannot make the service buffer `max_line_bytes`.
    #[serde(with = "size")]
    pub unauthenticated_line_bytes: usize,
    /// Connections served at once; one more gets an error line and is closed.
    pub max_connections: usize,
    /// A connection that sends nothing for this long gets an error line and is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections served at once from one IP address (loopback included).
    pub max_connections_per_peer: usize,
    /// A connection without a valid token this long after it was accepted gets an error
    /// line and is closed; nothing it sends extends it.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Connections without a valid token yet, at once (one peer: at most half of them);
    /// the rest of `max_connections` is kept for authenticated ones.
    pub max_unauthenticated: usize,
}

/// `[shutdown]`: what a SIGTERM (or Ctrl-C) waits for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    /// How long the facades wait, once they stop accepting, for the requests in flight on
    /// their open connections to be answered; then the actors stop regardless.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    pub url: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Buffer {
    pub max_buffered: u64,
    /// Share of Redis' `maxmemory` writes may fill, in (0, 1); the rest is for draining.
    pub max_memory_fraction: f64,
    /// Free disk kept under Redis' directory beyond its AOF's size: room for the next AOF
    /// rewrite plus what is written meanwhile; below it writes are refused.
    #[serde(with = "size")]
    pub min_disk_free_bytes: u64,
    pub max_batch: usize,
    pub connections: usize,
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    pub max_bulk_files: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forwarder {
    pub primary_url: Option<String>,
    /// PEM file of the certificate authority the primary's certificate must chain to
    /// (`sslmode=verify-full` in the URL checks it and the host name).
    pub ca_file: Option<PathBuf>,
    /// The schema owner's URL for `migrate` and `token create`; unset: `primary_url`
    /// (fine in development, not on a real site: see docs/OPERATIONS.md).
    pub migrate_url: Option<String>,
    /// `true` lets a primary that is not on this host be reached without
    /// `sslmode=verify-full` (logged as a warning at every start). Default `false`.
    #[serde(default)]
    pub allow_weak_tls: bool,
    pub batch_size: usize,
    #[serde(with = "size")]
    pub batch_max_bytes: usize,
    /// Failures of one transaction alone (not about the environment) before it is
    /// dead-lettered.
    pub max_attempts: u32,
    /// The forwarder lease's lifetime without renewal (one forwarder per site).
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// How long the forwarder (holding the lease) goes without a commit before it writes
    /// this site's heartbeat row on the primary; zero: never (see `replica.max_staleness`).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Restarted forever: no intensity limit (a days-long outage must not stop the service).
    pub restart: RestartPolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    pub url: Option<String>,
    /// As `forwarder.ca_file`, for the replica.
    pub ca_file: Option<PathBuf>,
    /// How often the replay position is read while nothing waits to be seen replicated.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often while forwarded transactions wait to be seen replicated; at most
    /// `poll_interval`.
    #[serde(with = "humantime_serde")]
    pub fast_poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often the newest confirmed transactions are looked up in the ledger again.
    #[serde(with = "humantime_serde")]
    pub audit_interval: Duration,
    /// The replica is `stale` once its newest evidence of the primary's commits (a
    /// replayed commit or heartbeat) is older than this; longer than
    /// `forwarder.heartbeat_interval`.
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
    /// Restarted forever: no intensity limit.
    pub restart: RestartPolicy,
}

/// `[resend]`: the resend window (`ops_db_actors::resend`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resend {
    /// How long a forwarded transaction's body is kept for a resend; `0s` keeps none.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// At most this many bytes of kept bodies (compressed) in Redis; the oldest go first.
    #[serde(with = "size")]
    pub max_bytes: u64,
}

impl Resend {
    pub fn window(&self) -> ops_db_actors::resend::WindowConfig {
        ops_db_actors::resend::WindowConfig {
            window: self.window,
            max_bytes: self.max_bytes,
        }
    }
}

/// `[events]`: the NotifierActor and `GET /ws/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Events {
    /// `false`: no events are emitted (only to measure what they cost).
    pub enabled: bool,
    /// Recent events kept in Redis for clients that resume with `since`.
    pub stream_cap: usize,
    /// Events a websocket client may fall behind by before it is disconnected.
    pub client_buffer: usize,
    /// Events waiting for the notifier (while it restarts); beyond, dropped and counted.
    pub queue: usize,
    /// How often a `health` event is published.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// Websocket clients at once (beyond `http.max_connections`: a websocket leaves the
    /// HTTP cap at its upgrade); one more gets a 503.
    pub max_clients: usize,
    /// How often a websocket client is pinged.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A websocket client from which nothing (a pong or any frame) arrives for this long
    /// is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Restarted forever: no intensity limit.
    pub restart: RestartPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Write,
    Read,
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Write, Self::Read, Self::Admin]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub name: String,
    /// Hex SHA-256 of the bearer token; the token itself is never stored.
    pub sha256: String,
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub tokens: Vec<Token>,
    /// A TOML file with more `tokens = [...]`, read at start and every `cache_ttl`.
    pub tokens_file: Option<PathBuf>,
    /// Also accept the tokens of the `api_token` table on the read source.
    pub database: bool,
    /// How long the tokens of the file and the table are used before they are read again:
    /// a token revoked at the main site stops working this long after it replicates.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
}

/// The `tokens_file`'s shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    pub tokens: Vec<Token>,
}

/// What ingest does with a reference to a parent row it finds neither in the overlay nor
/// on the read source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum References {
    /// Not checked.
    Off,
    /// Accepted, and reported (a response header, a metric).
    Warn,
    /// Refused with 422.
    Reject,
}

/// Where the service's own objects and ops-db's tables live on the primary, which of
/// ops-db's tables writes may touch, and how the model registry is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// The service's own schema (ledger, batch function, token table, allowlist).
    pub name: String,
    /// ops-db's schema, where the writable tables are.
    pub domain: String,
    /// The tables of `domain` writes may touch: the model registry's, and the allowlist
    /// `migrate` keeps on the primary.
    pub tables: Vec<String>,
    /// How often the model registry is read again from the read source.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// Referential checks at ingest.
    pub references: References,
    /// A TOML file replacing the compiled-in presets (`config/presets.toml`): how the
    /// fixed write endpoints map onto tables and columns.
    pub presets: Option<PathBuf>,
}

impl Default for Schema {
    /// The compiled-in `[schema]` of `config/default.toml` (for tests and the dev kit).
    fn default() -> Self {
        // The compiled-in defaults parse: `the_default_schema_is_the_compiled_in_one`.
        #[allow(clippy::expect_used)]
        Figment::from(Toml::string(DEFAULTS))
            .extract_inner("schema")
            .expect("the compiled-in [schema] is valid")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub level: String,
    pub dir: Option<PathBuf>,
    /// Daily files kept in `dir`, today's included; older ones are deleted at each start
    /// and each daily roll. At least 1: there is no "keep all".
    pub keep_files: usize,
}

/// How a supervised actor is restarted: `[supervisor]` (the ingest-side actors),
/// `[forwarder.restart]` and `[replica.restart]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// Capped full-jitter exponential backoff before each restart.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// Uptime after which the backoff starts again from `backoff_base`.
    #[serde(with = "humantime_serde")]
    pub reset_after: Duration,
    /// Restart intensity: more than `max_restarts` within `within` stops the process with
    /// a non-zero exit. Both or neither; neither means restarted forever.
    pub max_restarts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub within: Option<Duration>,
}

impl RestartPolicy {
    /// The supervisor's policy (validated: see `validate.rs`).
    pub fn policy(&self) -> SupervisorPolicy {
        SupervisorPolicy {
            backoff: Backoff::new(self.backoff_base, self.backoff_cap),
            intensity: self
                .max_restarts
                .zip(self.within)
                .map(|(max_restarts, within)| Intensity {
                    max_restarts,
                    within,
                }),
            reset_after: self.reset_after,
        }
    }
}

impl Config {
    /// The primary, as the forwarder reaches it.
    pub fn primary(&self) -> Option<PgTarget> {
        let f = &self.forwarder;
        Some(PgTarget::new(f.primary_url.clone()?, f.ca_file.clone()))
    }

    /// Where reads come from: the replica, or on the main site the primary itself.
    pub fn read_source(&self) -> Option<PgTarget> {
        match (&self.replica.url, self.site.mode) {
            (Some(url), _) => Some(PgTarget::new(url.clone(), self.replica.ca_file.clone())),
            (None, SiteMode::Main) => self.primary(),
            (None, SiteMode::Secondary) => None,
        }
    }

    /// The primary as the schema owner reaches it (`migrate`, `token create`).
    pub fn migrate_target(&self) -> Option<PgTarget> {
        let f = &self.forwarder;
        let url = f.migrate_url.clone().or_else(|| f.primary_url.clone())?;
        Some(PgTarget::new(url, f.ca_file.clone()))
    }

    /// The configuration as `check-config` prints it: every URL's password replaced.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        let hide = |url: &mut Option<String>| {
            if let Some(u) = url.as_mut() {
                *u = redact_url(u);
            }
        };
        hide(&mut shown.forwarder.primary_url);
        hide(&mut shown.forwarder.migrate_url);
        hide(&mut shown.replica.url);
        shown.redis.url = redact_url(&shown.redis.url);
        shown
    }

    /// Loads defaults, then `file` (if any), then `OPSDB__SECTION__KEY` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Load(format!(
                    "config file {} not found",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Self::extract(figment.merge(Env::prefixed("OPSDB__").split("__")))
    }

    /// The compiled-in defaults (`config/default.toml`, what every loading starts from)
    /// for site `name`, the one setting without a default; no file, no environment. For
    /// `dev`, the benchmarks and the tests, which change fields in Rust and then call
    /// [`Config::validate`] (as [`Application::build`] does again).
    ///
    /// [`Application::build`]: crate::startup::Application::build
    pub fn defaults(name: &str) -> Self {
        // The compiled-in defaults load with any site name:
        // `the_defaults_are_what_loading_starts_from`.
        #[allow(clippy::expect_used)]
        Figment::from(Toml::string(DEFAULTS))
            .merge(("site.name", name))
            .extract()
            .expect("the compiled-in defaults load")
    }

    /// Defaults overridden by `toml` only (no environment): for tests of TOML loading.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        Self::from_toml_layers(&[toml])
    }

    /// Defaults overridden by each layer in turn (no environment).
    pub fn from_toml_layers(layers: &[&str]) -> Result<Self, ConfigError> {
        let figment = layers
            .iter()
            .fold(Figment::from(Toml::string(DEFAULTS)), |f, layer| {
                f.merge(Toml::string(layer))
            });
        Self::extract(figment)
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(one_line(e)))?;
        config.validate()?;
        Ok(config)
    }
}

/// figment's errors can span lines; the operator gets one.
fn one_line(err: figment::Error) -> String {
    err.into_iter()
        // figment names keys with their profile ("default.http.listen"); operators know
        // them without it.
        .map(|e| {
            e.to_string()
                .replace('\n', " ")
                .replace("key \"default.", "key \"")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
