//! Redis as a trust boundary: the ACL user the service connects as, and what `/health`
//! says about the way it reaches Redis.
//!
//! The service's user and its rights are written once, in `packaging/redis/ops-db-api.acl`
//! (compiled in): its keys and channel (`opsdb:*`) and the commands it sends. The summit
//! host's ACL file comes from `ops-db-api redis-acl` ([`acl_file`]); the dev kit and the
//! test image write theirs from the same template.
//!
//! [`probe`] asks Redis, over a connection without credentials, whether it answers
//! anyone: a Redis that does is open to every local process, which could forge or delete
//! buffered writes. `/health`'s `redis_access` reports it, with the transport.

use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo as _, RedisResult};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

/// The template of the service's ACL user (comment lines start with `#`).
pub const TEMPLATE: &str = include_str!("../../packaging/redis/ops-db-api.acl");

/// The placeholder [`TEMPLATE`] has for the SHA-256 of the service user's password.
const PASSWORD_SHA256: &str = "{password_sha256}";

/// The service user's name, as in [`TEMPLATE`].
pub const USER: &str = "opsdb-api";

/// The ACL line of the service's user, with `password`'s SHA-256: the template's lines
/// that are not comments (one, a unit test checks).
pub fn service_user(password: &str) -> String {
    TEMPLATE
        .lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
        .replace(PASSWORD_SHA256, &sha256_hex(password))
}

/// An ACL file: the `default` user (off, or an administrator with `admin_password` and
/// every right) and the service's user.
pub fn acl_file(service_password: &str, admin_password: Option<&str>) -> String {
    let default = match admin_password {
        Some(admin) => format!("user default on #{} ~* &* +@all", sha256_hex(admin)),
        None => "user default off".to_owned(),
    };
    format!("{default}\n{}\n", service_user(service_password))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// How the service reaches Redis (`/health`'s `redis_access`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RedisAccess {
    /// `unix` (a socket), `tcp_loopback` or `tcp` (another address: the host's network
    /// reaches Redis too).
    pub transport: String,
    /// The user `redis.url` names; `null`: `default`.
    #[serde(default)]
    pub user: Option<String>,
    /// Whether Redis refuses a connection without credentials; `null` when it did not
    /// answer.
    #[serde(default)]
    pub requires_auth: Option<bool>,
    /// What leaves Redis open to other programs; empty when nothing does.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// How `url` reaches Redis, and whether Redis answers a connection without credentials
/// (one `PING` on a new connection, within `timeout`).
pub async fn probe(url: &str, timeout: Duration) -> RedisResult<RedisAccess> {
    let info = url.into_connection_info()?;
    let transport = match info.addr() {
        ConnectionAddr::Unix(_) => "unix",
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } if is_loopback(host) => {
            "tcp_loopback"
        }
        _ => "tcp",
    };
    let user = info.redis_settings().username().map(str::to_owned);
    let anonymous = redis::Client::open(info.addr().clone())?;
    let settings = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let answer = async {
        let mut conn = anonymous
            .get_multiplexed_async_connection_with_config(&settings)
            .await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await
    };
    let requires_auth = match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(())) => Some(false),
        Ok(Err(e)) if refused_for_auth(&e) => Some(true),
        _ => None,
    };
    Ok(RedisAccess::judge(transport, user, requires_auth))
}

impl RedisAccess {
    fn judge(transport: &str, user: Option<String>, requires_auth: Option<bool>) -> Self {
        let mut problems = Vec::new();
        if requires_auth == Some(false) {
            problems.push(
                "redis answers without a password: any program on the host can add, change or \
                 delete buffered writes (docs/OPERATIONS.md, Redis access)"
                    .to_owned(),
            );
        }
        if transport == "tcp" {
            problems.push(
                "redis.url is not on this host (unix socket or loopback): the network reaches \
                 the buffer"
                    .to_owned(),
            );
        }
        if user.as_deref().is_none_or(|u| u == "default") {
            problems.push(format!(
                "redis.url names no user: the service runs with the default user's rights, not \
                 {USER}'s"
            ));
        }
        Self {
            transport: transport.to_owned(),
            user,
            requires_auth,
            problems,
        }
    }
}

/// `NOAUTH` (no password given), or a refused `AUTH` of the default user.
fn refused_for_auth(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || e.code()
            .is_some_and(|code| code == "NOAUTH" || code == "WRONGPASS")
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acl_file_holds_the_default_user_and_the_service_user_with_the_password_hash() {
        let file = acl_file("secret", None);
        let lines: Vec<&str> = file.lines().collect();
        assert_eq!(lines[0], "user default off");
        let hash = sha256_hex("secret");
        assert!(
            lines[1].starts_with(&format!("user {USER} on #{hash} resetkeys ~opsdb:* ")),
            "{}",
            lines[1]
        );
        assert!(!lines[1].contains("password_sha256"), "{}", lines[1]);
        assert!(lines[1].contains(" -@all "), "{}", lines[1]);
        assert_eq!(lines.len(), 2);
        let admin = acl_file("secret", Some("root"));
        assert!(admin.starts_with(&format!(
            "user default on #{} ~* &* +@all\n",
            sha256_hex("root")
        )));
    }

    #[test]
    fn an_open_redis_a_remote_one_and_no_user_are_each_a_problem() {
        let tight = RedisAccess::judge("unix", Some(USER.to_owned()), Some(true));
        assert!(tight.problems.is_empty(), "{:?}", tight.problems);
        let open = RedisAccess::judge("tcp_loopback", Some(USER.to_owned()), Some(false));
        assert_eq!(open.problems.len(), 1, "{:?}", open.problems);
        assert!(open.problems[0].contains("without a password"));
        let remote = RedisAccess::judge("tcp", None, None);
        assert_eq!(remote.problems.len(), 2, "{:?}", remote.problems);
        assert!(remote
            .problems
            .iter()
            .any(|p| p.contains("not on this host")));
        assert!(remote.problems.iter().any(|p| p.contains("names no user")));
    }

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["10.0.0.1", "redis.example", "0.0.0.0"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
