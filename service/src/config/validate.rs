//! What the types cannot say: names, URL schemes, non-zero durations and counts, restart
//! policies, token hashes. Each error names its key, and the first one found is reported.

use std::time::Duration;

use ops_db_actors::pg::PgTarget;

use super::{invalid, Config, ConfigError, RestartPolicy, SiteMode};

impl Config {
    /// The checks loading applies (`Config::load`, `from_toml_*`); a config built in Rust
    /// from [`Config::defaults`] goes through them too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validated_presets().map(|_| ())
    }

    /// [`Config::validate`], handing back the presets it read and checked (a file, when
    /// `schema.presets` names one), so that the start does not read them twice.
    pub fn validated_presets(&self) -> Result<super::Presets, ConfigError> {
        self.validate_site()?;
        self.validate_urls()?;
        self.validate_durations()?;
        self.validate_counts()?;
        self.supervisor
            .validate("supervisor", Escalation::Required)?;
        self.forwarder
            .restart
            .validate("forwarder.restart", Escalation::Never)?;
        self.replica
            .restart
            .validate("replica.restart", Escalation::Never)?;
        self.events
            .restart
            .validate("events.restart", Escalation::Never)?;
        self.validate_tokens()?;
        self.validate_resend()?;
        self.validate_schema()
    }

    fn validate_resend(&self) -> Result<(), ConfigError> {
        if !self.resend.window.is_zero() && self.resend.max_bytes == 0 {
            return Err(invalid(
                "resend.max_bytes",
                "must be more than 0 while resend.window keeps bodies (set resend.window = \"0s\" to keep none)",
            ));
        }
        Ok(())
    }

    fn validate_schema(&self) -> Result<super::Presets, ConfigError> {
        use ops_db_actors::registry::is_identifier;
        let rule = "must be a lower-case SQL name: a-z, 0-9 and '_', not starting with a digit, at most 63 bytes";
        if !is_identifier(&self.schema.name) {
            return Err(invalid("schema.name", rule));
        }
        if !is_identifier(&self.schema.domain) {
            return Err(invalid("schema.domain", rule));
        }
        if self.schema.name == self.schema.domain {
            return Err(invalid(
                "schema.name",
                "must not be ops-db's schema (schema.domain): the service keeps its own objects apart",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for table in &self.schema.tables {
            if !is_identifier(table) {
                return Err(invalid("schema.tables", format!("{table:?} {rule}")));
            }
            if !seen.insert(table) {
                return Err(invalid(
                    "schema.tables",
                    format!("{table:?} is listed twice"),
                ));
            }
        }
        if self.schema.refresh.is_zero() {
            return Err(invalid("schema.refresh", "must be more than 0"));
        }
        self.schema.presets()
    }

    fn validate_site(&self) -> Result<(), ConfigError> {
        let name = &self.site.name;
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if name.is_empty() || name.len() > 64 || !name.bytes().all(allowed) {
            return Err(invalid(
                "site.name",
                "must be 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        Ok(())
    }

    fn validate_urls(&self) -> Result<(), ConfigError> {
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("unix://") {
            return Err(invalid("redis.url", "must start with redis:// or unix://"));
        }
        let postgres = [
            ("forwarder.primary_url", &self.forwarder.primary_url),
            ("forwarder.migrate_url", &self.forwarder.migrate_url),
            ("replica.url", &self.replica.url),
        ];
        for (key, url) in postgres {
            if let Some(url) = url {
                if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                    return Err(invalid(key, "must start with postgres:// or postgresql://"));
                }
                if let Err(e) = PgTarget::plain(url.as_str()).options() {
                    return Err(invalid(key, format!("not a usable URL: {e}")));
                }
            }
        }
        self.validate_primary_tls()?;
        let ca_files = [
            (
                "forwarder.ca_file",
                &self.forwarder.ca_file,
                &self.forwarder.primary_url,
            ),
            ("replica.ca_file", &self.replica.ca_file, &self.replica.url),
        ];
        for (key, ca_file, url) in ca_files {
            if ca_file.is_some() && url.is_none() {
                return Err(invalid(key, "is set but its server's URL is not"));
            }
        }
        self.validate_read_source()
    }

    /// A primary that is not on this host is reached with `sslmode=verify-full` (the CA and
    /// the host name checked), unless `forwarder.allow_weak_tls` says otherwise: `prefer`,
    /// `require`, `verify-ca` or no `sslmode` at all let anyone on an 11,000 km path read
    /// or alter what is forwarded, or answer as the primary.
    pub(super) fn validate_primary_tls(&self) -> Result<(), ConfigError> {
        if self.forwarder.allow_weak_tls {
            return Ok(());
        }
        let urls = [
            ("forwarder.primary_url", &self.forwarder.primary_url),
            ("forwarder.migrate_url", &self.forwarder.migrate_url),
        ];
        for (key, url) in urls {
            let Some(options) = url
                .as_deref()
                .and_then(|u| PgTarget::plain(u).options().ok())
            else {
                continue;
            };
            let local = options.get_socket().is_some() || is_loopback(options.get_host());
            if !local
                && !matches!(
                    options.get_ssl_mode(),
                    sqlx::postgres::PgSslMode::VerifyFull
                )
            {
                return Err(invalid(
                    key,
                    format!(
                        "{} is not on this host: add sslmode=verify-full to the URL (and \
                         forwarder.ca_file), or set forwarder.allow_weak_tls = true to accept \
                         a connection anyone on the path can read or impersonate",
                        options.get_host()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A secondary that forwards needs a read source: only the replica tracker releases
    /// what a forwarded transaction leaves in Redis (its overlay records, its place in the
    /// forwarded set, its lifecycle's expiry), so without one Redis would only grow.
    fn validate_read_source(&self) -> Result<(), ConfigError> {
        let forwards = self.forwarder.primary_url.is_some();
        if self.site.mode == SiteMode::Secondary && forwards && self.replica.url.is_none() {
            return Err(invalid(
                "replica.url",
                "must be set on a secondary site that forwards (forwarder.primary_url is \
                 set): only the replica tracker releases what forwarded transactions leave \
                 in Redis (overlay, forwarded set, lifecycles), which would otherwise grow \
                 for ever",
            ));
        }
        Ok(())
    }

    fn validate_durations(&self) -> Result<(), ConfigError> {
        let positive = [
            ("http.request_timeout", self.http.request_timeout),
            ("redis.timeout", self.redis.timeout),
            ("buffer.idempotency_ttl", self.buffer.idempotency_ttl),
            ("forwarder.connect_timeout", self.forwarder.connect_timeout),
            (
                "forwarder.statement_timeout",
                self.forwarder.statement_timeout,
            ),
            ("replica.poll_interval", self.replica.poll_interval),
            (
                "replica.fast_poll_interval",
                self.replica.fast_poll_interval,
            ),
            ("replica.connect_timeout", self.replica.connect_timeout),
            ("replica.retention", self.replica.retention),
            ("replica.audit_interval", self.replica.audit_interval),
            ("tcp.idle_timeout", self.tcp.idle_timeout),
            ("http.header_timeout", self.http.header_timeout),
            ("http.body_timeout", self.http.body_timeout),
            ("events.health_interval", self.events.health_interval),
            ("tcp.auth_timeout", self.tcp.auth_timeout),
            ("events.ping_interval", self.events.ping_interval),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(invalid(key, "must be longer than zero"));
        }
        if self.events.idle_timeout <= self.events.ping_interval {
            return Err(invalid(
                "events.idle_timeout",
                "must be longer than events.ping_interval, or a client is closed before it could answer a ping",
            ));
        }
        if self.replica.fast_poll_interval > self.replica.poll_interval {
            return Err(invalid(
                "replica.fast_poll_interval",
                "must be at most replica.poll_interval (it is the pace while transactions wait)",
            ));
        }
        if self.forwarder.lease_ttl < std::time::Duration::from_secs(1) {
            return Err(invalid("forwarder.lease_ttl", "must be at least 1s"));
        }
        self.validate_staleness()
    }

    /// A heartbeat must be able to arrive within the staleness limit, or an idle site
    /// would be called stale between two beats.
    fn validate_staleness(&self) -> Result<(), ConfigError> {
        let (max, beat) = (
            self.replica.max_staleness,
            self.forwarder.heartbeat_interval,
        );
        if max.is_zero() {
            return Err(invalid("replica.max_staleness", "must be longer than zero"));
        }
        if max <= beat {
            return Err(invalid(
                "replica.max_staleness",
                format!(
                    "must be longer than forwarder.heartbeat_interval ({}), or an idle \
                     site is stale between two heartbeats",
                    humantime::format_duration(beat)
                ),
            ));
        }
        Ok(())
    }

    fn validate_counts(&self) -> Result<(), ConfigError> {
        let counts = [
            ("http.body_limit_bytes", self.http.body_limit_bytes as u64),
            ("tcp.max_line_bytes", self.tcp.max_line_bytes as u64),
            ("tcp.max_connections", self.tcp.max_connections as u64),
            ("http.max_connections", self.http.max_connections as u64),
            (
                "http.max_connections_per_peer",
                self.http.max_connections_per_peer as u64,
            ),
            (
                "tcp.max_connections_per_peer",
                self.tcp.max_connections_per_peer as u64,
            ),
            (
                "tcp.max_unauthenticated",
                self.tcp.max_unauthenticated as u64,
            ),
            ("events.max_clients", self.events.max_clients as u64),
            ("buffer.max_buffered", self.buffer.max_buffered),
            ("buffer.max_batch", self.buffer.max_batch as u64),
            ("buffer.connections", self.buffer.connections as u64),
            ("buffer.max_bulk_files", self.buffer.max_bulk_files as u64),
            ("forwarder.batch_size", self.forwarder.batch_size as u64),
            (
                "forwarder.batch_max_bytes",
                self.forwarder.batch_max_bytes as u64,
            ),
            ("forwarder.max_attempts", self.forwarder.max_attempts as u64),
            ("events.stream_cap", self.events.stream_cap as u64),
            ("events.client_buffer", self.events.client_buffer as u64),
            ("events.queue", self.events.queue as u64),
            ("log.keep_files", self.log.keep_files as u64),
        ];
        if let Some((key, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(invalid(key, "must be at least 1"));
        }
        let fraction = self.buffer.max_memory_fraction;
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(invalid(
                "buffer.max_memory_fraction",
                "must be greater than 0 and less than 1 (the share of Redis' maxmemory that writes may fill)",
            ));
        }
        let small = self.tcp.unauthenticated_line_bytes;
        if small == 0 || small > self.tcp.max_line_bytes {
            return Err(invalid(
                "tcp.unauthenticated_line_bytes",
                "must be from 1 to tcp.max_line_bytes",
            ));
        }
        Ok(())
    }

    fn validate_tokens(&self) -> Result<(), ConfigError> {
        if self.auth.cache_ttl.is_zero() {
            return Err(invalid("auth.cache_ttl", "must be longer than zero"));
        }
        validate_tokens("auth.tokens", &self.auth.tokens)
    }
}

/// `localhost`, an address in 127.0.0.0/8, `::1`, or a Unix socket directory.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.starts_with('/')
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The checks of a list of configured tokens (the config's, or a tokens file's).
pub fn validate_tokens(key: &'static str, tokens: &[super::Token]) -> Result<(), ConfigError> {
    for token in tokens {
        if token.sha256.len() != 64 || !token.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(
                key,
                format!("token {:?}: sha256 must be 64 hex digits", token.name),
            ));
        }
        if token.scopes.is_empty() {
            return Err(invalid(
                key,
                format!("token {:?}: needs at least one scope", token.name),
            ));
        }
    }
    Ok(())
}

/// Whether a policy must, or must not, stop the process after too many restarts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Escalation {
    /// The ingest-side actors: a crash loop there is a bug; let the service manager see it.
    Required,
    /// The forwarder and the replica tracker: they crash on every outage of what they talk
    /// to, which may last days.
    Never,
}

impl RestartPolicy {
    pub(super) fn validate(
        &self,
        key: &'static str,
        escalation: Escalation,
    ) -> Result<(), ConfigError> {
        if self.backoff_base.is_zero() {
            return Err(invalid(key, "backoff_base must be longer than zero"));
        }
        if self.backoff_cap < self.backoff_base {
            return Err(invalid(
                key,
                "backoff_cap must not be shorter than backoff_base",
            ));
        }
        match (escalation, self.max_restarts, self.within) {
            (Escalation::Required, Some(n), Some(within)) if n > 0 && within > Duration::ZERO => {
                Ok(())
            }
            (Escalation::Required, ..) => Err(invalid(
                key,
                "max_restarts (at least 1) and within (longer than zero) must both be set",
            )),
            (Escalation::Never, None, None) => Ok(()),
            (Escalation::Never, ..) => Err(invalid(
                key,
                "takes no max_restarts or within: this actor is restarted forever, it never stops the service",
            )),
        }
    }
}
