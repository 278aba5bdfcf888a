//! Configuration: `config/default.toml` (compiled in), then the site's file, then
//! `OPSDB__SECTION__KEY` environment variables. Validated before anything binds.
//!
//! This is the only module that reads the environment (besides `RUST_LOG` in telemetry).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

const DEFAULTS: &str = include_str!("../../config/default.toml");

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
    pub auth: Auth,
    pub faults: Faults,
    pub log: Log,
    pub supervisor: Supervisor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub body_limit_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tcp {
    pub listen: SocketAddr,
    pub max_line_bytes: usize,
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
    pub batch_size: usize,
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    #[serde(with = "humantime_serde")]
    pub reset_after: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    pub url: Option<String>,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Write,
    Admin,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Supervisor {
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    pub max_restarts: u32,
    #[serde(with = "humantime_serde")]
    pub within: Duration,
    #[serde(with = "humantime_serde")]
    pub reset_after: Duration,
}

impl Config {
    /// Where reads come from: the replica, or on the main site the primary itself.
    pub fn read_url(&self) -> Option<&str> {
        match (&self.replica.url, self.site.mode) {
            (Some(url), _) => Some(url),
            (None, SiteMode::Main) => self.forwarder.primary_url.as_deref(),
            (None, SiteMode::Secondary) => None,
        }
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

    /// Defaults overridden by `toml` only (no environment): for `dev` and tests.
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

    fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.site.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "site.name",
                "must be 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("unix://") {
            return Err(invalid("redis.url", "must start with redis:// or unix://"));
        }
        let positive = [
            ("http.request_timeout", self.http.request_timeout),
            ("redis.timeout", self.redis.timeout),
            ("buffer.idempotency_ttl", self.buffer.idempotency_ttl),
            ("supervisor.backoff_base", self.supervisor.backoff_base),
            ("supervisor.within", self.supervisor.within),
            ("forwarder.connect_timeout", self.forwarder.connect_timeout),
            (
                "forwarder.statement_timeout",
                self.forwarder.statement_timeout,
            ),
            ("forwarder.backoff_base", self.forwarder.backoff_base),
            ("replica.poll_interval", self.replica.poll_interval),
            ("replica.connect_timeout", self.replica.connect_timeout),
            ("replica.backoff_base", self.replica.backoff_base),
            ("replica.retention", self.replica.retention),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(invalid(key, "must be longer than zero"));
        }
        let counts = [
            ("http.body_limit_bytes", self.http.body_limit_bytes),
            ("tcp.max_line_bytes", self.tcp.max_line_bytes),
            ("buffer.max_batch", self.buffer.max_batch),
            ("buffer.connections", self.buffer.connections),
            ("buffer.max_bulk_files", self.buffer.max_bulk_files),
            ("forwarder.batch_size", self.forwarder.batch_size),
            (
                "supervisor.max_restarts",
                self.supervisor.max_restarts as usize,
            ),
        ];
        if let Some((key, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(invalid(key, "must be at least 1"));
        }
        if self.buffer.max_buffered == 0 {
            return Err(invalid("buffer.max_buffered", "must be at least 1"));
        }
        if let Some(url) = &self.forwarder.primary_url {
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                return Err(invalid(
                    "forwarder.primary_url",
                    "must start with postgres:// or postgresql://",
                ));
            }
        }
        if let Some(url) = &self.replica.url {
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                return Err(invalid(
                    "replica.url",
                    "must start with postgres:// or postgresql://",
                ));
            }
        }
        if self.replica.backoff_cap < self.replica.backoff_base {
            return Err(invalid(
                "replica.backoff_cap",
                "must not be shorter than replica.backoff_base",
            ));
        }
        if self.forwarder.backoff_cap < self.forwarder.backoff_base {
            return Err(invalid(
                "forwarder.backoff_cap",
                "must not be shorter than forwarder.backoff_base",
            ));
        }
        if self.supervisor.backoff_cap < self.supervisor.backoff_base {
            return Err(invalid(
                "supervisor.backoff_cap",
                "must not be shorter than supervisor.backoff_base",
            ));
        }
        for token in &self.auth.tokens {
            if token.sha256.len() != 64 || !token.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "auth.tokens",
                    format!("token {:?}: sha256 must be 64 hex digits", token.name),
                ));
            }
            if token.scopes.is_empty() {
                return Err(invalid(
                    "auth.tokens",
                    format!("token {:?}: needs at least one scope", token.name),
                ));
            }
        }
        Ok(())
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
mod tests {
    use super::*;
    use figment::Jail;

    const SITE: &str = "[site]\nname = \"summit\"\n";

    fn load_err(toml: &str) -> String {
        Config::from_toml_str(toml)
            .expect_err("must fail")
            .to_string()
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn the_shipped_site_files_load() {
        // In a Jail: Config::load reads the environment, which other tests change.
        Jail::expect_with(|_| {
            for file in ["../config/summit.toml", "../config/cologne.toml"] {
                let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
                let config = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert!(!config.site.name.is_empty());
            }
            Ok(())
        });
    }

    #[test]
    fn a_missing_site_name_is_named() {
        let err = load_err("");
        assert!(
            err.contains("missing field `name`") && err.contains("site"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_is_named() {
        let err = load_err(&format!("{SITE}[http]\nlisten_addr = \"127.0.0.1:1\"\n"));
        assert!(err.contains("listen_addr") && err.contains("http"), "{err}");
    }

    #[test]
    fn a_bad_duration_is_named() {
        let err = load_err(&format!("{SITE}[redis]\ntimeout = \"5 parsecs\"\n"));
        assert!(
            err.contains("redis.timeout") || err.contains("timeout"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn semantic_errors_name_their_key() {
        let err = load_err(&format!("{SITE}[buffer]\nmax_batch = 0\n"));
        assert_eq!(err, "buffer.max_batch: must be at least 1");
        let err = load_err("[site]\nname = \"has space\"\n");
        assert!(err.starts_with("site.name:"), "{err}");
        let err = load_err(&format!(
            "{SITE}[auth]\ntokens = [{{ name = \"x\", sha256 = \"abc\", scopes = [\"write\"] }}]\n"
        ));
        assert!(err.starts_with("auth.tokens:"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn environment_overrides_the_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "site.toml",
                &format!("{SITE}[http]\nlisten = \"127.0.0.1:1111\"\n"),
            )?;
            jail.set_env("OPSDB__HTTP__LISTEN", "127.0.0.1:2222");
            jail.set_env("OPSDB__REDIS__TIMEOUT", "250ms");
            jail.set_env("OPSDB__BUFFER__MAX_BATCH", "7");
            let config = Config::load(Some(Path::new("site.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.http.listen.port(), 2222);
            assert_eq!(config.redis.timeout, Duration::from_millis(250));
            assert_eq!(config.buffer.max_batch, 7);
            jail.set_env("OPSDB__BUFFER__NOPE", "1");
            let err = Config::load(Some(Path::new("site.toml"))).expect_err("unknown env key");
            assert!(err.to_string().contains("nope"), "{err}");
            Ok(())
        });
    }
}
