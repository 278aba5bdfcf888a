//! The screen of `ops-db-api status`: a pure function of the three health answers and the
//! time, so that its layout is tested on fixed JSON.
//!
//! Tolerant on purpose: a field that is missing, `null` or of another type shows as `-` or
//! its line is left out, never an error, so one `status` works against older and newer
//! services (fields such as the forwarder's `role` are shown when present). At most
//! [`WIDTH`] columns (longer lines are cut with `…`) and about 20 lines for a full tree.

use std::time::{Duration, SystemTime};

use serde_json::Value;

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
    lines.push(field("database", &text(&h["database"])));
    lines.push(field("buffer", &buffer(&h["transaction_buffer"])));
    lines.push(field("forwarder", &forwarder(&h["forwarder"])));
    // `/health/actors` and `/health` both carry it; either will do.
    let replica_json = match &sample.actors["replica"] {
        Value::Null => &h["replica"],
        r => r,
    };
    lines.push(field("replica", &replica(replica_json)));
    lines.push(String::new());
    lines.extend(tree(&sample.actors, now));
    lines
        .into_iter()
        .map(|line| cut(line.trim_end(), WIDTH) + "\n")
        .collect()
}

fn title(sample: &Sample, now: SystemTime) -> String {
    let h = &sample.health;
    let mut site = format!("site {}", text(&h["site"]));
    if let Some(mode) = h["mode"].as_str() {
        site.push_str(&format!(" ({mode})"));
    }
    format!(
        "ops-db-api {}  {site}  {}",
        sample.url,
        humantime::format_rfc3339_seconds(now)
    )
}

fn readiness(sample: &Sample) -> String {
    let status = text(&sample.health["status"]);
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
fn redis(h: &Value) -> Vec<String> {
    let reachable = text(&h["redis"]);
    let durability = &h["redis_durability"];
    let mut lines = Vec::new();
    match durability["durable"].as_bool() {
        // Unknown while Redis does not answer: its problem is that, and it is said already.
        _ if reachable != "connected" => lines.push(field("redis", &reachable)),
        Some(true) => lines.push(field("redis", &format!("{reachable}, durable"))),
        Some(false) => {
            lines.push(field("redis", &format!("{reachable}, NOT DURABLE")));
            for problem in durability["problems"].as_array().into_iter().flatten() {
                lines.push(field("", &format!("- {}", text(problem))));
            }
        }
        None => lines.push(field("redis", &reachable)),
    }
    lines
}

fn buffer(b: &Value) -> String {
    let oldest = b["oldest_unforwarded_secs"]
        .as_f64()
        .map_or_else(|| "-".to_owned(), age);
    format!(
        "{} transactions (limit {}), oldest unforwarded {oldest}; dead letters {}",
        text(&b["size"]),
        text(&b["limit"]),
        text(&b["failed"]),
    )
}

fn forwarder(f: &Value) -> String {
    if !f.is_object() {
        return "not configured".to_owned();
    }
    let mut parts = Vec::new();
    if let Some(role) = f["role"].as_str() {
        match f["lease_holder"].as_str() {
            Some(holder) if role == "standby" => {
                parts.push(format!("role standby (lease held by {holder})"));
            }
            _ => parts.push(format!("role {role}")),
        }
    }
    for key in ["batches", "applied", "skipped", "dead"] {
        if !f[key].is_null() {
            parts.push(format!("{key} {}", text(&f[key])));
        }
    }
    parts.push(format!("last commit {}", text(&f["last_commit_lsn"])));
    parts.join(", ")
}

fn replica(r: &Value) -> String {
    if !r.is_object() {
        return "not configured".to_owned();
    }
    let lag_bytes = r["lag_bytes"]
        .as_f64()
        .map_or_else(|| "-".to_owned(), bytes);
    let lag_secs = r["lag_seconds"]
        .as_f64()
        .map_or_else(|| "-".to_owned(), age);
    format!(
        "lag {lag_bytes}, {lag_secs}; replay {}; replicated {}",
        text(&r["replay_lsn"]),
        text(&r["marked_replicated"]),
    )
}

/// The supervisor and its children, one line each, and under a child its last failure.
fn tree(actors: &Value, now: SystemTime) -> Vec<String> {
    let rows: &[Value] = actors["actors"].as_array().map_or(&[], Vec::as_slice);
    let names: Vec<String> = rows.iter().map(|r| text(&r["name"])).collect();
    let name_width = names
        .iter()
        .map(|n| n.chars().count() + 3)
        .chain(["supervisor".len()])
        .max()
        .unwrap_or(0);
    let mut lines = vec![format!(
        "{:<name_width$} {:<STATE$} {:>8}  uptime",
        "tree", "state", "restarts"
    )];
    let mut root = "supervisor".to_owned();
    match actors["escalation"].as_str() {
        Some(reason) => root.push_str(&format!("  GAVE UP: {}", one_line(reason))),
        None if rows.is_empty() => root.push_str("  (no actors reported)"),
        None => {}
    }
    lines.push(root);
    for (i, (row, name)) in rows.iter().zip(&names).enumerate() {
        let last = i + 1 == rows.len();
        let uptime = row["uptime_secs"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), age);
        lines.push(format!(
            "{:<name_width$} {:<STATE$} {:>8}  {uptime}",
            format!("{}{name}", if last { "└─ " } else { "├─ " }),
            state(row, now),
            text(&row["restarts"]),
        ));
        if let Some(failure) = failure(&row["last_failure"], now) {
            lines.push(format!("{}    {failure}", if last { " " } else { "│" }));
        }
    }
    lines
}

fn state(row: &Value, now: SystemTime) -> String {
    match row["state"].as_str() {
        Some("backing_off") => match row["until"].as_str().and_then(instant) {
            Some(until) => match until.duration_since(now) {
                Ok(left) => format!("backing off, {} left", age(left.as_secs_f64())),
                Err(_) => "backing off, due".to_owned(),
            },
            None => "backing off".to_owned(),
        },
        _ => text(&row["state"]),
    }
}

/// `12s ago: reason`, the reason on one line (the screen cuts it to fit).
fn failure(f: &Value, now: SystemTime) -> Option<String> {
    let reason = one_line(f["reason"].as_str()?);
    Some(match f["at"].as_str().and_then(instant) {
        Some(at) => {
            let ago = now.duration_since(at).unwrap_or(Duration::ZERO);
            format!("{} ago: {reason}", age(ago.as_secs_f64()))
        }
        None => reason,
    })
}

fn instant(rfc3339: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(rfc3339).ok()
}

/// A section line: its label, then its text at [`LABEL`].
fn field(label: &str, value: &str) -> String {
    format!("{label:<LABEL$}{value}")
}

/// A JSON value as screen text: strings unquoted, `-` for null or missing.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
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
