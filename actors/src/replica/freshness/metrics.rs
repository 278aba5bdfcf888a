//! The freshness as metrics, read at scrape time from the same view `/health` shows, so
//! the two cannot disagree and the ages keep growing while the tracker cannot read.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::Freshness;

impl Freshness {
    /// Registers `opsdb_replica_stale`, `opsdb_replica_replay_age_seconds`,
    /// `opsdb_replica_heartbeat_age_seconds`, `opsdb_replica_receiver_streaming` and
    /// `opsdb_replica_unreplayed_bytes`. A value the last reading does not have (no
    /// heartbeat row yet; on the main site, where the read source is the primary, the
    /// receiver and replay ones) has no sample.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(FreshnessMetrics(Arc::clone(self))));
    }
}

#[derive(Debug)]
struct FreshnessMetrics(Arc<Freshness>);

type Family = (&'static str, &'static str, Option<Unit>);

const STALE: Family = (
    "opsdb_replica_stale",
    "Whether the replica is stale (1) or fresh (0): /health's replica.freshness.",
    None,
);
const REPLAY_AGE: Family = (
    "opsdb_replica_replay_age",
    "Age of the last commit the replica replayed.",
    Some(Unit::Seconds),
);
const HEARTBEAT_AGE: Family = (
    "opsdb_replica_heartbeat_age",
    "Age of this site's heartbeat as the replica replayed it.",
    Some(Unit::Seconds),
);
const STREAMING: Family = (
    "opsdb_replica_receiver_streaming",
    "Whether the replica's WAL receiver streams (1) or not (0).",
    None,
);
const UNREPLAYED: Family = (
    "opsdb_replica_unreplayed",
    "WAL the replica received and has not replayed.",
    Some(Unit::Bytes),
);

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder,
    (name, help, unit): Family,
    value: Option<V>,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<V>: EncodeMetric,
{
    let family = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
    match value {
        Some(v) => ConstGauge::new(v).encode(family),
        None => Ok(()),
    }
}

impl Collector for FreshnessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self.0.view();
        let v = view.as_ref();
        let replica = v.filter(|v| v.source.as_deref() == Some("replica"));
        let stale = v.map(|v| i64::from(v.reason.is_some()));
        gauge(&mut encoder, STALE, stale)?;
        gauge(
            &mut encoder,
            REPLAY_AGE,
            replica.and_then(|v| v.replay_age_secs),
        )?;
        let heartbeat = v.and_then(|v| v.heartbeat_age_secs);
        gauge(&mut encoder, HEARTBEAT_AGE, heartbeat)?;
        let streaming =
            replica.map(|v| i64::from(v.receiver_status.as_deref() == Some("streaming")));
        gauge(&mut encoder, STREAMING, streaming)?;
        let unreplayed = replica.and_then(|v| v.unreplayed_bytes).map(|b| b as i64);
        gauge(&mut encoder, UNREPLAYED, unreplayed)?;
        Ok(())
    }
}
