//! How the service reaches a PostgreSQL server: a URL and, for TLS, the file of the
//! certificate authority its certificate must chain to. One type for the primary (the
//! forwarder, `migrate`, `token create`) and the read source (the replica tracker, reads).
//!
//! TLS is the URL's: `sslmode=verify-full` checks the server's certificate against the CA
//! file and its name against the URL's host; `verify-ca` skips the name; `require` encrypts
//! without checking who answers (as libpq). With a CA file and `verify-full` or
//! `verify-ca`, only that file's certificates are trusted: the connection goes through the
//! pinned tunnel (`pinned.rs`), because sqlx's own TLS would add the public web roots to
//! them. Without a CA file, `verify-full` checks against the public web roots compiled into
//! the binary.

pub mod pinned;

use std::fmt;
use std::path::PathBuf;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

#[derive(Clone, PartialEq, Eq)]
pub struct PgTarget {
    pub url: String,
    /// PEM file of the certificate authority (`sslrootcert`); `None`: the URL's own
    /// `sslrootcert`, if any.
    pub ca_file: Option<PathBuf>,
}

impl PgTarget {
    pub fn new(url: impl Into<String>, ca_file: Option<PathBuf>) -> Self {
        Self {
            url: url.into(),
            ca_file,
        }
    }

    /// A URL without a CA file (tests, dev).
    pub fn plain(url: impl Into<String>) -> Self {
        Self::new(url, None)
    }

    /// The connect options: the URL's, with the CA file. With a CA file and `verify-full`
    /// or `verify-ca`, the options of the pinned tunnel's socket (started at first use:
    /// call this in a tokio runtime), which trusts that CA alone.
    pub fn options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        let options: PgConnectOptions = self.url.parse()?;
        let Some(ca) = &self.ca_file else {
            return Ok(options);
        };
        let check = match options.get_ssl_mode() {
            PgSslMode::VerifyFull => pinned::Check::Full,
            PgSslMode::VerifyCa => pinned::Check::CaOnly,
            _ => return Ok(options.ssl_root_cert(ca)),
        };
        if options.get_socket().is_some() || options.get_host().starts_with('/') {
            return Ok(options.ssl_root_cert(ca));
        }
        let dir = pinned::socket_dir(options.get_host(), options.get_port(), ca, check)
            .map_err(|e| sqlx::Error::Configuration(Box::new(e)))?;
        Ok(options.socket(dir).ssl_mode(PgSslMode::Disable))
    }

    /// A pool that connects on first use (a server down at start fails queries, not the
    /// start), whose sessions cancel any statement after `statement_timeout` and whose
    /// callers wait at most `acquire_timeout` for a connection.
    pub fn lazy_pool(
        &self,
        max_connections: u32,
        statement_timeout: std::time::Duration,
        acquire_timeout: std::time::Duration,
    ) -> Result<sqlx::postgres::PgPool, sqlx::Error> {
        let timeout = statement_timeout.as_millis().to_string();
        let options = self
            .options()?
            .options([("statement_timeout", timeout.as_str())]);
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options))
    }

    /// The URL with any password replaced by `***`: for logs, errors and printed config.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }
}

/// Never prints the password.
impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &self.redacted())
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `scheme://user:secret@host/...?password=secret` → `scheme://user:***@host/...?password=***`.
/// Works on any URL-shaped string (PostgreSQL's, Redis'); a string that is not one is
/// returned unchanged only if it holds no `@` and no `password=` (otherwise `***`).
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if !url.cannot_be_a_base() => {
            if url.password().is_some() {
                // Only fails for URLs that cannot have a password, which this one has.
                let _ = url.set_password(Some("***"));
            }
            let secret_query = url.query_pairs().any(|(k, _)| is_secret_param(&k));
            if secret_query {
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if is_secret_param(&k) {
                            "***".to_owned()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        }
        _ if raw.contains('@') || raw.contains("password") => "***".to_owned(),
        _ => raw.to_owned(),
    }
}

/// PostgreSQL's `password` and `sslpassword`; `pass`: a Redis unix socket URL's password.
fn is_secret_param(key: &str) -> bool {
    ["password", "sslpassword", "pass"]
        .iter()
        .any(|secret| key.eq_ignore_ascii_case(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_everywhere_in_a_url() {
        assert_eq!(
            redact_url(
                "postgres://forwarder:s3cret@primary.example:5432/opsdb?sslmode=verify-full"
            ),
            "postgres://forwarder:***@primary.example:5432/opsdb?sslmode=verify-full"
        );
        assert_eq!(
            redact_url("postgres://primary.example/opsdb?user=f&password=s3cret&sslmode=require"),
            "postgres://primary.example/opsdb?user=f&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("redis://:s3cret@127.0.0.1:6379"),
            "redis://:***@127.0.0.1:6379"
        );
        // Nothing to hide: unchanged.
        assert_eq!(
            redact_url("postgres://opsdb@127.0.0.1:5432/opsdb"),
            "postgres://opsdb@127.0.0.1:5432/opsdb"
        );
        // Not a URL but possibly holding a secret: nothing of it is shown.
        assert_eq!(redact_url("user:s3cret@host"), "***");
        assert_eq!(
            redact_url("unix:///run/redis/redis-server.sock?user=opsdb-api&pass=s3cret"),
            "unix:///run/redis/redis-server.sock?user=opsdb-api&pass=***"
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let target = PgTarget::plain("postgres://f:s3cret@h/db");
        let shown = format!("{target:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("f:***@h"), "{shown}");
    }

    /// With a CA file, `verify-full` and `verify-ca` go through the pinned tunnel (plain
    /// PostgreSQL to its socket); weaker modes keep sqlx's TLS with the CA file as a root.
    #[tokio::test]
    async fn a_ca_file_pins_verify_full_and_verify_ca_through_the_tunnel() {
        let ca = Some(PathBuf::from("/etc/ops-db-api/ca.pem"));
        for mode in ["verify-full", "verify-ca"] {
            let target =
                PgTarget::new(format!("postgres://f@h:5432/db?sslmode={mode}"), ca.clone());
            let options = target.options().expect("a valid URL");
            let socket = options.get_socket().expect("the tunnel's socket");
            assert!(socket.starts_with(std::env::temp_dir()), "{socket:?}");
            assert!(
                matches!(options.get_ssl_mode(), PgSslMode::Disable),
                "{mode}"
            );
            // The same target, the same tunnel.
            let again = target.options().expect("a valid URL");
            assert_eq!(again.get_socket(), Some(socket));
        }
        let weak = PgTarget::new("postgres://f@h/db?sslmode=require", ca);
        let options = weak.options().expect("a valid URL");
        assert!(options.get_socket().is_none());
        let shown = format!("{options:?}");
        assert!(shown.contains("/etc/ops-db-api/ca.pem"), "{shown}");
    }

    #[test]
    fn without_a_runtime_the_tunnel_is_a_configuration_error_not_a_panic() {
        let target = PgTarget::new(
            "postgres://f@h:5433/db?sslmode=verify-full",
            Some(PathBuf::from("/etc/ops-db-api/other-ca.pem")),
        );
        let err = target.options().expect_err("no runtime");
        assert!(err.to_string().contains("tokio runtime"), "{err}");
    }
}
