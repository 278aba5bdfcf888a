//! The screen of `ops-db-api status`: a pure function of the three typed health answers
//! and the time, so that its layout is tested on fixed reports.
//!
//! Tolerant on purpose: a section or field an older or newer service did not send (the
//! types make those `Option`) shows as `-` or its line is left out, and a status word this
//! build does not know shows as `unknown`, never an error. At most [`WIDTH`] columns
//! (longer lines are cut with `…`) and about 20 lines for a full tree.

use std::fmt::Display;
use std::time::{Duration, SystemTime};

use ops_db_service::health_report::{
    ActorHealth, ActorState, ActorStatus, ActorsReport, Failure, ForwarderReport, HealthReport,
    HistoryView, RegistryReport, ReplicaReport, Role, TransactionBuffer,
};
use serde::Serialize;

use super::Sample;

/// The widest line; longer ones are cut.
pub const WIDTH: usize = 100;
/// The column where a section's text starts.
const LABEL: usize = 11;
/// The width of the tree's state column.
const STATE: usize = 22;

/// The screen for `sample`, taken at `now` (for ages and backoff deadlines).
pub fn render(sample: &Sample, now: SystemTime) -> String {
    let h = &sample.health;
    let mut lines = vec![title(sample, now), readiness(sample)];
    lines.extend(redis(h));
    lines.push(field("database", &word(&h.database)));
    lines.push(field("buffer", &buffer(&h.transaction_buffer)));
    lines.push(field("forwarder", &forwarder(h.forwarder.as_ref())));
    // `/health/actors` and `/health` both carry it; either will do.
    let replica_report = h.replica.as_ref().or(sample.actors.replica.as_ref());
    lines.push(field("replica", &replica(replica_report)));
    if let Some(registry) = &h.registry {
        lines.push(field("registry", &registry_line(registry)));
    }
    if let Some(doubt) = h.history.as_ref().and_then(history) {
        lines.push(field("history", &doubt));
    }
    lines.push(String::new());
    lines.extend(tree(&sample.actors, now));
    lines
        .into_iter()
        .map(|line| cut(line.trim_end(), WIDTH) + "\n")
        .collect()
}

fn title(sample: &Sample, now: SystemTime) -> String {
    let h = &sample.health;
    let mut site = format!("site {}", h.site.as_deref().unwrap_or("-"));
    if let Some(mode) = &h.mode {
        site.push_str(&format!(" ({})", word(mode)));
    }
    format!(
        "ops-db-api {}  {site}  {}",
        sample.url,
        humantime::format_rfc3339_seconds(now)
    )
}

fn readiness(sample: &Sample) -> String {
    let status = word(&sample.health.status);
    if sample.ready {
        field("ready", &format!("yes ({status})"))
    } else if sample.reasons.is_empty() {
        field("ready", &format!("NO ({status})"))
    } else {
        field(
            "ready",
            &format!("NO: {} ({status})", sample.reasons.join("; ")),
        )
    }
}

/// Reachability, durability, and one line per durability problem.
fn redis(h: &HealthReport) -> Vec<String> {
    let reachable = word(&h.redis);
    let mut lines = Vec::new();
    match &h.redis_durability {
        // Unknown while Redis does not answer: its problem is that, and it is said already.
        _ if reachable != "connected" => lines.push(field("redis", &reachable)),
        Some(d) if d.durable => lines.push(field("redis", &format!("{reachable}, durable"))),
        Some(d) => {
            lines.push(field("redis", &format!("{reachable}, NOT DURABLE")));
            for problem in &d.problems {
                lines.push(field("", &format!("- {problem}")));
            }
        }
        None => lines.push(field("redis", &reachable)),
    }
    if let Some(access) = &h.redis_access {
        let auth = match access.requires_auth {
            Some(true) => "password required",
            Some(false) => "OPEN (no password)",
            None => "password unknown",
        };
        let user = access.user.as_deref().unwrap_or("default");
        lines.push(field(
            "",
            &format!("access {}, user {user}, {auth}", access.transport),
        ));
        for problem in &access.problems {
            lines.push(field("", &format!("- {problem}")));
        }
    }
    lines
}

fn buffer(b: &TransactionBuffer) -> String {
    let oldest = b
        .oldest_unforwarded_secs
        .map_or_else(|| "-".to_owned(), age);
    format!(
        "{} transactions (limit {}), oldest unforwarded {oldest}; dead letters {}",
        opt(b.size),
        opt(b.limit),
        opt(b.failed),
    )
}

fn forwarder(f: Option<&ForwarderReport>) -> String {
    let Some(f) = f else {
        return "not configured".to_owned();
    };
    let mut parts = Vec::new();
    match (&f.role, &f.lease_holder) {
        (Some(Role::Standby), Some(holder)) => {
            parts.push(format!("role standby (lease held by {holder})"));
        }
        (Some(role), _) => parts.push(format!("role {}", word(role))),
        (None, _) => {}
    }
    let counters = [
        ("batches", f.batches),
        ("applied", f.applied),
        ("skipped", f.skipped),
        ("dead", f.dead),
    ];
    for (key, value) in counters {
        if let Some(value) = value {
            parts.push(format!("{key} {value}"));
        }
    }
    parts.push(format!("last commit {}", opt(f.last_commit_lsn.as_ref())));
    parts.join(", ")
}

fn replica(r: Option<&ReplicaReport>) -> String {
    let Some(r) = r else {
        return "not configured".to_owned();
    };
    let lag_bytes = r
        .lag_bytes
        .map_or_else(|| "-".to_owned(), |b| bytes(b as f64));
    let lag_secs = r.lag_seconds.map_or_else(|| "-".to_owned(), age);
    let mut line = format!(
        "lag {lag_bytes}, {lag_secs}; replay {}; replicated {}",
        opt(r.replay_lsn.as_ref()),
        opt(r.marked_replicated),
    );
    match r.freshness.as_ref() {
        Some(f) if f.verdict == "stale" => {
            let reason = f.reason.as_ref().map_or_else(|| "-".to_owned(), word);
            line.push_str(&format!("; STALE ({reason})"));
        }
        Some(f) => line.push_str(&format!("; {}", f.verdict)),
        None => {}
    }
    line
}

/// The model registry: how many tables, from where, what was left out, the last error.
fn registry_line(r: &RegistryReport) -> String {
    let mut line = format!("{} tables from {}", r.tables, word(&r.source));
    if !r.skipped.is_empty() {
        let names: Vec<&str> = r.skipped.iter().map(|s| s.table.as_str()).collect();
        line.push_str(&format!("; skipped {}", names.join(", ")));
    }
    if let Some(error) = &r.error {
        line.push_str(&format!("; last read failed: {}", one_line(error)));
    }
    line
}

/// What puts the history in doubt, or `None` while it is consistent (no line then).
fn history(h: &HistoryView) -> Option<String> {
    if h.consistent {
        return None;
    }
    let mut parts = Vec::new();
    if let Some(gap) = &h.unconfirmed {
        parts.push(format!("{} not confirmed", gap.missing));
    }
    if let Some(gap) = &h.lost {
        parts.push(format!("{} lost", gap.missing));
    }
    for change in &h.changes {
        parts.push(format!(
            "{} timeline {} -> {}",
            word(&change.side),
            change.from.timeline,
            change.to.timeline
        ));
    }
    Some(format!(
        "IN DOUBT: {}; see the failover runbook",
        parts.join(", ")
    ))
}

/// The supervisor and its children, one line each, and under a child its last failure.
fn tree(actors: &ActorsReport, now: SystemTime) -> Vec<String> {
    let rows = &actors.actors;
    let name_width = rows
        .iter()
        .map(|r| r.name.chars().count() + 3)
        .chain(["supervisor".len()])
        .max()
        .unwrap_or(0);
    let mut lines = vec![format!(
        "{:<name_width$} {:<STATE$} {:>8}  uptime",
        "tree", "state", "restarts"
    )];
    let mut root = "supervisor".to_owned();
    match &actors.escalation {
        Some(reason) => root.push_str(&format!("  GAVE UP: {}", one_line(reason))),
        None if rows.is_empty() => root.push_str("  (no actors reported)"),
        None => {}
    }
    lines.push(root);
    for (i, row) in rows.iter().enumerate() {
        let last = i + 1 == rows.len();
        let uptime = row.uptime_secs.map_or_else(|| "-".to_owned(), age);
        lines.push(format!(
            "{:<name_width$} {:<STATE$} {:>8}  {uptime}",
            format!("{}{}", if last { "└─ " } else { "├─ " }, row.name),
            state(row, now),
            row.restarts,
        ));
        if let Some(f) = &row.last_failure {
            lines.push(format!(
                "{}    {}",
                if last { " " } else { "│" },
                failure(f, now)
            ));
        }
    }
    lines
}

fn state(row: &ActorHealth, now: SystemTime) -> String {
    match &row.state {
        ActorState::BackingOff { until } => match SystemTime::from(*until).duration_since(now) {
            Ok(left) => format!("backing off, {} left", age(left.as_secs_f64())),
            Err(_) => "backing off, due".to_owned(),
        },
        other => word(&ActorStatus::of(other)),
    }
}

/// `12s ago: reason`, the reason on one line (the screen cuts it to fit).
fn failure(f: &Failure, now: SystemTime) -> String {
    let ago = now
        .duration_since(SystemTime::from(f.at))
        .unwrap_or(Duration::ZERO);
    format!("{} ago: {}", age(ago.as_secs_f64()), one_line(&f.reason))
}

/// A status word as the service spells it (`backing_off`, `not_configured`).
fn word(w: &impl Serialize) -> String {
    match serde_json::to_value(w) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "-".to_owned(),
    }
}

/// A value, or `-` when the service did not say.
fn opt(v: Option<impl Display>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A section line: its label, then its text at [`LABEL`].
fn field(label: &str, value: &str) -> String {
    format!("{label:<LABEL$}{value}")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A duration for humans, in at most about 6 characters: `0.4s`, `17s`, `5m03s`, `2h05m`,
/// `3d04h`.
fn age(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".to_owned();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn bytes(n: f64) -> String {
    if !n.is_finite() || n < 0.0 {
        return "-".to_owned();
    }
    if n < 1024.0 {
        return format!("{n:.0} B");
    }
    let mut value = n / 1024.0;
    for unit in ["KiB", "MiB", "GiB"] {
        if value < 1024.0 {
            return format!("{value:.1} {unit}");
        }
        value /= 1024.0;
    }
    format!("{value:.1} TiB")
}

/// `line` cut to `width` characters, the last one `…` if anything was cut.
fn cut(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_owned();
    }
    let mut out: String = line.chars().take(width - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests;
