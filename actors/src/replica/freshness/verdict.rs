//! The verdict on the replica's freshness: a pure function of one read of the replica.
//!
//! A replica is *fresh* while it shows recent evidence that the primary's commits reach
//! it: a commit replayed, or this site's heartbeat row (written through the forwarder every
//! `forwarder.heartbeat_interval` while it commits nothing else) replayed, within
//! `replica.max_staleness`. Without the heartbeat an idle primary would look the same as a
//! cut stream; with it, the replay timestamp and the WAL receiver say which of the three
//! ways it went stale.

use serde::Serialize;

/// What one read of the replica found. Ages are seconds on the replica's clock against
/// timestamps of the primary's (commit times, `beat_at`): a clock skew between the sites
/// adds to them, which NTP keeps far below `max_staleness`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// False: the read source is a primary (the main site), trivially fresh.
    pub in_recovery: bool,
    /// Since the commit of the last transaction replayed (`pg_last_xact_replay_timestamp()`);
    /// `None` when none was replayed since the replica started.
    pub replay_age: Option<f64>,
    /// `pg_is_wal_replay_paused()`.
    pub replay_paused: bool,
    /// WAL received but not yet replayed (`pg_last_wal_receive_lsn()` minus
    /// `pg_last_wal_replay_lsn()`, 0 when the receive position is behind or unknown).
    pub unreplayed_bytes: Option<u64>,
    /// The WAL receiver (`pg_stat_wal_receiver`), `None` when there is none.
    pub receiver: Option<Receiver>,
    /// Since this site's `beat_at` as replayed; `None` without a row.
    pub heartbeat_age: Option<f64>,
}

/// The WAL receiver's row. Its columns other than the pid are NULL for a role without
/// `pg_read_all_stats`: then only its existence is known.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Receiver {
    /// `streaming`, `waiting`, `starting`, `stopping`, `restarting`, ...
    pub status: Option<String>,
    /// Since the last message from the primary (`last_msg_receipt_time`).
    pub last_msg_age: Option<f64>,
    /// Since the last WAL position reported back to the primary (`latest_end_time`).
    pub latest_end_age: Option<f64>,
    pub timeline: Option<i32>,
}

impl Receiver {
    /// Streaming, or existing with its status hidden from the role.
    fn streaming(&self) -> bool {
        self.status.as_deref().is_none_or(|s| s == "streaming")
    }
}

/// What the verdict is measured against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// `replica.max_staleness`, in seconds.
    pub max_staleness: f64,
    /// Whether a forwarder writes heartbeats (`forwarder.heartbeat_interval` > 0 and a
    /// primary configured). Without, an idle primary gives no evidence: only a receiver
    /// that is not streaming and replay that does not follow the WAL received count.
    pub heartbeat: bool,
}

/// Why the replica is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No WAL receiver, or one that is not streaming: the replica does not reach the
    /// primary (link, primary down, `primary_conninfo`, a slot gone). A connection that
    /// stalls without breaking shows here once the receiver gives up on it
    /// (`wal_receiver_timeout`, 60 s by default); until then its silence is not a sign by
    /// itself, since an idle primary sends nothing for up to half of that.
    ReceiverDown,
    /// WAL is received but not replayed, and the last commit replayed is older than
    /// `max_staleness`: replay paused, stuck (a conflict, a full disk) or far behind.
    ReplayStalled,
    /// The stream is fine and replays what arrives, but nothing has been committed on the
    /// primary (no heartbeat, no other commit) for longer than `max_staleness`: the
    /// forwarder does not reach the primary (or holds no lease, or is not running).
    NoHeartbeat,
    /// The tracker has not read the replica for longer than `max_staleness` (the replica
    /// does not answer, or the freshness query fails: see `last_error`).
    Unobserved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fresh,
    Stale(Reason),
}

impl Verdict {
    pub fn is_stale(self) -> bool {
        matches!(self, Verdict::Stale(_))
    }

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Fresh => "fresh",
            Verdict::Stale(_) => "stale",
        }
    }

    pub fn reason(self) -> Option<Reason> {
        match self {
            Verdict::Fresh => None,
            Verdict::Stale(reason) => Some(reason),
        }
    }
}

impl Observation {
    /// The same observation `secs` later, assuming nothing moved since: every age grows.
    pub fn aged(&self, secs: f64) -> Self {
        let age = |a: Option<f64>| a.map(|a| a + secs);
        Self {
            replay_age: age(self.replay_age),
            heartbeat_age: age(self.heartbeat_age),
            receiver: self.receiver.as_ref().map(|r| Receiver {
                last_msg_age: age(r.last_msg_age),
                latest_end_age: age(r.latest_end_age),
                ..r.clone()
            }),
            ..self.clone()
        }
    }
}

/// Fresh or stale, and why. See the module's documentation.
pub fn verdict(o: &Observation, rules: Rules) -> Verdict {
    if !o.in_recovery {
        return Verdict::Fresh;
    }
    let max = rules.max_staleness;
    let late = |age: Option<f64>| age.is_none_or(|a| a > max);
    if o.unreplayed_bytes.unwrap_or(0) > 0 && late(o.replay_age) {
        return Verdict::Stale(Reason::ReplayStalled);
    }
    let receiver = match &o.receiver {
        Some(r) if r.streaming() => None,
        _ => Some(Reason::ReceiverDown),
    };
    if !rules.heartbeat {
        return receiver.map_or(Verdict::Fresh, Verdict::Stale);
    }
    let evidence = match (o.replay_age, o.heartbeat_age) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if late(evidence) {
        Verdict::Stale(receiver.unwrap_or(Reason::NoHeartbeat))
    } else {
        Verdict::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        max_staleness: 60.0,
        heartbeat: true,
    };

    /// A healthy standby: streaming, everything replayed, the last heartbeat 5 s ago.
    fn healthy() -> Observation {
        Observation {
            in_recovery: true,
            replay_age: Some(5.0),
            replay_paused: false,
            unreplayed_bytes: Some(0),
            receiver: Some(Receiver {
                status: Some("streaming".into()),
                last_msg_age: Some(1.0),
                latest_end_age: Some(1.0),
                timeline: Some(1),
            }),
            heartbeat_age: Some(5.0),
        }
    }

    #[test]
    fn a_streaming_replica_with_a_recent_heartbeat_is_fresh() {
        assert_eq!(verdict(&healthy(), RULES), Verdict::Fresh);
    }

    #[test]
    fn a_primary_as_read_source_is_always_fresh() {
        let main = Observation {
            in_recovery: false,
            ..Observation::default()
        };
        assert_eq!(verdict(&main, RULES), Verdict::Fresh);
        assert_eq!(verdict(&main.aged(1e6), RULES), Verdict::Fresh);
    }

    #[test]
    fn received_wal_not_replayed_past_the_limit_is_a_replay_stall() {
        let mut o = healthy();
        o.unreplayed_bytes = Some(8192);
        o.replay_paused = true;
        assert_eq!(verdict(&o, RULES), Verdict::Fresh, "within the limit");
        let o = o.aged(56.0);
        assert_eq!(verdict(&o, RULES), Verdict::Stale(Reason::ReplayStalled));
        // Even when nothing was replayed since the start.
        let o = Observation {
            replay_age: None,
            ..o
        };
        assert_eq!(verdict(&o, RULES), Verdict::Stale(Reason::ReplayStalled));
    }

    #[test]
    fn no_receiver_is_stale_once_the_evidence_is_older_than_the_limit() {
        let mut o = healthy();
        o.receiver = None;
        assert_eq!(
            verdict(&o, RULES),
            Verdict::Fresh,
            "a reconnect is no stall"
        );
        assert_eq!(
            verdict(&o.aged(56.0), RULES),
            Verdict::Stale(Reason::ReceiverDown)
        );
        o.receiver = Some(Receiver {
            status: Some("waiting".into()),
            ..Receiver::default()
        });
        assert_eq!(
            verdict(&o.aged(56.0), RULES),
            Verdict::Stale(Reason::ReceiverDown)
        );
    }

    #[test]
    fn a_streaming_receiver_that_hears_nothing_is_not_blamed() {
        // An idle primary sends nothing for up to half of wal_receiver_timeout.
        let mut o = healthy();
        o.receiver = o.receiver.map(|r| Receiver {
            last_msg_age: Some(59.0),
            ..r
        });
        assert_eq!(verdict(&o, RULES), Verdict::Fresh);
        assert_eq!(
            verdict(&o.aged(56.0), RULES),
            Verdict::Stale(Reason::NoHeartbeat)
        );
    }

    #[test]
    fn a_streaming_replica_without_heartbeat_or_commits_says_no_heartbeat() {
        let mut o = healthy();
        o.replay_age = Some(61.0);
        o.heartbeat_age = Some(61.0);
        assert_eq!(verdict(&o, RULES), Verdict::Stale(Reason::NoHeartbeat));
        o.heartbeat_age = None;
        assert_eq!(verdict(&o, RULES), Verdict::Stale(Reason::NoHeartbeat));
    }

    #[test]
    fn the_primary_s_other_commits_count_as_evidence_while_the_forwarder_is_busy_or_cut() {
        // A forwarder that commits batches beats only when idle: its row may be old while
        // commits (its own, or Cologne's) keep replaying.
        let mut o = healthy();
        o.heartbeat_age = Some(600.0);
        o.replay_age = Some(0.5);
        assert_eq!(verdict(&o, RULES), Verdict::Fresh);
    }

    #[test]
    fn a_hidden_receiver_status_is_not_taken_for_a_down_receiver() {
        let mut o = healthy();
        o.receiver = Some(Receiver::default());
        assert_eq!(verdict(&o, RULES), Verdict::Fresh);
        assert_eq!(
            verdict(&o.aged(56.0), RULES),
            Verdict::Stale(Reason::NoHeartbeat)
        );
    }

    #[test]
    fn without_heartbeats_only_the_receiver_and_replay_count() {
        let rules = Rules {
            heartbeat: false,
            ..RULES
        };
        // An idle primary: nothing committed for an hour, the stream fine.
        let idle = healthy().aged(3600.0);
        assert_eq!(verdict(&idle, rules), Verdict::Fresh);
        let mut down = healthy();
        down.receiver = None;
        assert_eq!(verdict(&down, rules), Verdict::Stale(Reason::ReceiverDown));
        let mut stalled = healthy().aged(3600.0);
        stalled.unreplayed_bytes = Some(1);
        assert_eq!(
            verdict(&stalled, rules),
            Verdict::Stale(Reason::ReplayStalled)
        );
    }

    #[test]
    fn ageing_moves_every_age_and_nothing_else() {
        let o = healthy().aged(10.0);
        assert_eq!(o.replay_age, Some(15.0));
        assert_eq!(o.heartbeat_age, Some(15.0));
        let r = o.receiver.expect("receiver");
        assert_eq!((r.last_msg_age, r.latest_end_age), (Some(11.0), Some(11.0)));
        assert_eq!(r.timeline, Some(1));
        assert_eq!(o.unreplayed_bytes, Some(0));
    }
}
