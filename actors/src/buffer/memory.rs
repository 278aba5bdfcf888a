//! The buffer's memory limit: Redis' own `used_memory` against a share of its `maxmemory`,
//! so that writes are refused (503) before Redis refuses them (OOM).
//!
//! Why a share and not all of it: with `maxmemory-policy noeviction`, Redis over its
//! `maxmemory` refuses every command that may grow memory, whoever sends it: the
//! forwarder's `XGROUP CREATE` when it (re)starts and `settle.lua`'s first `HSET` too. A
//! buffer filled to the brim during an outage could then not be drained when the link
//! heals. Refusing writes at `buffer.max_memory_fraction` of `maxmemory` keeps the rest for
//! the drain and for client buffers (a forwarder read holds about one batch).
//!
//! How: the BufferActor samples `INFO memory` every [`SAMPLE_INTERVAL`] on a connection of
//! its own (`sample.rs`). Between samples every admitted write adds an estimate of what it costs Redis
//! ([`estimate`]), so a burst cannot run far past the limit before the next sample. The
//! estimate counts from the end of the last group commit that finished before the sample
//! was asked for: a write in flight while Redis answered `INFO` is counted twice rather than
//! not at all. Memory freed meanwhile (the forwarder and the replica tracker releasing) is
//! seen at the next sample. With `maxmemory 0` (no limit) the check is off. If Redis
//! answers OOM all the same, writes are refused until a sample asked for after that.
//!
//! The same sample reads Redis' disk (see `storage.rs`): writes are refused as well while
//! the disk is short of room for the next AOF rewrite.
//!
//! A refused write still goes through the buffer script (without its payload), which
//! answers a repeated idempotency key with the first response before it says "full", as
//! for the count limit (`buffer.max_buffered`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};

use super::storage::{DiskRefusal, Storage, StorageView};
use super::PreparedWrite;

/// How often Redis' memory is read: often enough that the estimate between two samples
/// stays small, rarely enough to cost nothing (`INFO memory` takes microseconds).
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// Redis memory per byte of what a write hands the script (transaction and overlay JSON):
/// the stream entry holds the transaction JSON, the overlay record hashes hold each column
/// again (as hash tables once a value passes 64 bytes, at dozens of bytes of overhead per
/// field), the index sets an entry per record. Measured at about 1.9 for single file
/// registrations and for bulk ones of 200 files (Redis 7.0); 3 errs on the safe side.
const BYTES_PER_PAYLOAD_BYTE: u64 = 3;

/// Per write, besides its payload: lifecycle hash, stream entry header, key names.
const BYTES_PER_WRITE: u64 = 512;

/// What one write is expected to add to Redis' `used_memory`.
pub(super) fn estimate(write: &PreparedWrite) -> u64 {
    let idempotency = write
        .idempotency
        .as_ref()
        .map_or(0, |i| i.key.len() + i.fingerprint.len() + i.answer.len());
    let overlay: usize = write.overlay.iter().map(String::len).sum();
    let payload = write.tx_body.len() + overlay + idempotency;
    BYTES_PER_WRITE + BYTES_PER_PAYLOAD_BYTE * payload as u64
}

/// One reading of `INFO memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// `used_memory`: everything Redis allocated, client buffers included.
    pub used: u64,
    /// `maxmemory`; 0 means no limit.
    pub max: u64,
}

impl Sample {
    /// Reads `used_memory` and `maxmemory` from an `INFO memory` answer.
    pub fn parse(info: &str) -> Option<Self> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some(Self {
            used: field("used_memory")?,
            max: field("maxmemory")?,
        })
    }
}

/// What `/health` shows and `/metrics` exports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = BufferMemory))]
pub struct MemoryView {
    /// Redis' `used_memory` at the last sample plus the estimate of the writes admitted
    /// since: what is compared with the limit. `None` before the first sample.
    pub used_bytes: Option<u64>,
    /// Redis' `maxmemory` at the last sample; 0: no limit, the check is off.
    pub max_bytes: Option<u64>,
    /// `fraction` × `max_bytes`: writes are refused from there on. `None` without a limit.
    pub limit_bytes: Option<u64>,
    pub fraction: f64,
    /// Writes are being refused for memory (503 `buffer_full`).
    pub refusing_writes: bool,
}

/// The bookkeeping, apart from the locking.
#[derive(Debug, Default)]
struct Tally {
    sample: Option<Sample>,
    /// Estimated bytes of every write admitted so far.
    admitted: u64,
    /// `admitted` when the last group commit finished: Redis has run all of those.
    flushed: u64,
    /// `flushed` when the sample in flight was asked for.
    asked_from: u64,
    /// The estimate on top of the last sample counts the writes admitted after this.
    counted_from: u64,
    /// Samples asked for so far.
    asks: u64,
    /// Redis answered OOM while `asks` was this: refuse until a later sample.
    oom_at_ask: Option<u64>,
    /// Redis' persistence and free disk at the last sample that read them.
    storage: Option<Storage>,
}

impl Tally {
    fn limit(&self, fraction: f64) -> Option<u64> {
        let max = self.sample?.max;
        (max > 0).then_some((max as f64 * fraction) as u64)
    }

    fn used(&self) -> Option<u64> {
        let since = self.admitted.saturating_sub(self.counted_from);
        self.sample.map(|s| s.used.saturating_add(since))
    }

    fn refusing(&self, fraction: f64) -> bool {
        let full = match (self.used(), self.limit(fraction)) {
            (Some(used), Some(limit)) => used >= limit,
            _ => false,
        };
        full || self.oom_at_ask.is_some()
    }
}

/// The buffer's memory gauge, shared by the BufferActor (which samples), its group commits
/// (which admit writes) and `/health` and `/metrics` (which read it). It outlives restarts
/// of the actor.
#[derive(Debug)]
pub struct BufferMemory {
    fraction: f64,
    /// `buffer.min_disk_free_bytes`: see `storage.rs`.
    min_disk_free: u64,
    tally: Mutex<Tally>,
}

impl BufferMemory {
    /// `fraction`: the share of `maxmemory` writes may fill, in (0, 1) (validated by the
    /// configuration). `min_disk_free`: the margin over the AOF's size (see `storage.rs`).
    pub fn new(fraction: f64, min_disk_free: u64) -> Self {
        Self {
            fraction,
            min_disk_free,
            tally: Mutex::new(Tally::default()),
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a write of `bytes` (its [`estimate`]) may go ahead; if so it is counted.
    pub fn admit(&self, bytes: u64) -> bool {
        let mut tally = self.tally();
        if tally.refusing(self.fraction) || self.disk_refusal_of(&tally).is_some() {
            return false;
        }
        tally.admitted = tally.admitted.saturating_add(bytes);
        true
    }

    /// A group commit finished: Redis has run (or refused) every write admitted so far.
    pub fn flushed(&self) {
        let mut tally = self.tally();
        tally.flushed = tally.admitted;
    }

    /// A sample is about to be asked for.
    pub fn asking(&self) {
        let mut tally = self.tally();
        tally.asks += 1;
        tally.asked_from = tally.flushed;
    }

    /// The sample asked for last came back.
    pub fn sampled(&self, sample: Sample) {
        let mut tally = self.tally();
        tally.sample = Some(sample);
        tally.counted_from = tally.asked_from;
        if tally.oom_at_ask.is_some_and(|at| at < tally.asks) {
            tally.oom_at_ask = None;
        }
    }

    /// A sample of Redis' disk came back (`None`: Redis did not tell; the check is off).
    pub fn stored(&self, storage: Option<Storage>) {
        self.tally().storage = storage;
    }

    fn disk_refusal_of(&self, tally: &Tally) -> Option<DiskRefusal> {
        tally.storage.as_ref()?.refusal(self.min_disk_free)
    }

    /// Why writes are refused for Redis' disk, if they are.
    pub fn disk_refusal(&self) -> Option<DiskRefusal> {
        self.disk_refusal_of(&self.tally())
    }

    /// What `/health` shows as `redis_storage`.
    pub fn storage_view(&self) -> StorageView {
        StorageView::of(self.tally().storage.as_ref(), self.min_disk_free)
    }

    /// Redis refused a write for memory (OOM). Returns `true` the first time, for the log.
    pub fn oom(&self) -> bool {
        let mut tally = self.tally();
        let first = tally.oom_at_ask.is_none();
        tally.oom_at_ask = Some(tally.asks);
        first
    }

    pub fn view(&self) -> MemoryView {
        let tally = self.tally();
        MemoryView {
            used_bytes: tally.used(),
            max_bytes: tally.sample.map(|s| s.max),
            limit_bytes: tally.limit(self.fraction),
            fraction: self.fraction,
            refusing_writes: tally.refusing(self.fraction),
        }
    }

    /// Registers `opsdb_buffer_memory_used_bytes`, `opsdb_buffer_memory_limit_bytes`,
    /// `opsdb_buffer_memory_full` and the disk's (see [`StorageView::encode`]), read at
    /// scrape time.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(MemoryMetrics(Arc::clone(self))));
    }
}

#[derive(Debug)]
struct MemoryMetrics(Arc<BufferMemory>);

impl Collector for MemoryMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self.0.view();
        let metric = encoder.encode_descriptor(
            "opsdb_buffer_memory_used",
            "Redis used_memory at the last sample plus the estimate of writes admitted since.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        if let Some(used) = view.used_bytes {
            ConstGauge::new(used).encode(metric)?;
        }
        let metric = encoder.encode_descriptor(
            "opsdb_buffer_memory_limit",
            "Redis memory at which writes are refused: the fraction of maxmemory.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        if let Some(limit) = view.limit_bytes {
            ConstGauge::new(limit).encode(metric)?;
        }
        let metric = encoder.encode_descriptor(
            "opsdb_buffer_memory_full",
            "Whether writes are being refused for Redis memory.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(view.refusing_writes)).encode(metric)?;
        self.0.storage_view().encode(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn sampled(memory: &BufferMemory, used: u64, max: u64) {
        memory.asking();
        memory.sampled(Sample { used, max });
    }

    #[test]
    fn info_memory_is_parsed_by_exact_field_names() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n\
                    used_memory_rss:9000000\r\nmaxmemory:67108864\r\nmaxmemory_human:64.00M\r\n";
        assert_eq!(
            Sample::parse(info),
            Some(Sample {
                used: MB,
                max: 64 * MB
            })
        );
        assert_eq!(Sample::parse("# Memory\r\nused_memory:1\r\n"), None);
    }

    #[test]
    fn without_a_sample_or_without_maxmemory_nothing_is_refused() {
        let memory = BufferMemory::new(0.8, 0);
        assert!(memory.admit(100 * MB), "no sample yet: nothing known");
        sampled(&memory, 500 * MB, 0);
        assert!(memory.admit(100 * MB), "maxmemory 0: no limit");
        let view = memory.view();
        assert_eq!((view.limit_bytes, view.refusing_writes), (None, false));
    }

    #[test]
    fn writes_are_refused_from_the_fraction_of_maxmemory_on() {
        let memory = BufferMemory::new(0.8, 0);
        sampled(&memory, 50 * MB, 64 * MB);
        assert_eq!(memory.view().limit_bytes, Some(53_687_091));
        assert!(memory.admit(MB));
        sampled(&memory, 52 * MB, 64 * MB);
        assert!(
            !memory.admit(1),
            "52 MB used, then a sample of 52 MB: over 51.2 MB"
        );
        assert!(memory.view().refusing_writes);
        // The drain frees memory: the next sample lets writes in again.
        sampled(&memory, 10 * MB, 64 * MB);
        assert!(memory.admit(MB));
    }

    #[test]
    fn a_burst_between_samples_is_counted_by_its_estimate() {
        let memory = BufferMemory::new(0.5, 0);
        sampled(&memory, 10 * MB, 100 * MB);
        let admitted = (0..100).take_while(|_| memory.admit(MB)).count();
        assert_eq!(
            admitted, 40,
            "10 MB sampled + 40 × 1 MB estimated reaches 50 MB"
        );
        assert_eq!(memory.view().used_bytes, Some(50 * MB));
    }

    #[test]
    fn writes_in_flight_when_a_sample_is_taken_stay_counted() {
        let memory = BufferMemory::new(0.5, 0);
        sampled(&memory, 0, 100 * MB);
        assert!(memory.admit(30 * MB)); // a group commit in flight ...
        memory.asking(); // ... while INFO is asked on another connection,
        memory.sampled(Sample {
            used: 0,
            max: 100 * MB,
        }); // ... which has not seen it yet
        assert_eq!(memory.view().used_bytes, Some(30 * MB), "still counted");
        memory.flushed();
        sampled(&memory, 30 * MB, 100 * MB);
        assert_eq!(
            memory.view().used_bytes,
            Some(30 * MB),
            "counted once the sample follows the end of its group commit"
        );
    }

    #[test]
    fn an_oom_answer_refuses_writes_until_a_sample_asked_for_after_it() {
        let memory = BufferMemory::new(0.8, 0);
        sampled(&memory, MB, 0);
        memory.asking(); // a sample in flight, asked for before the OOM
        assert!(memory.oom(), "the first OOM is logged");
        assert!(!memory.oom(), "the next ones are not");
        memory.sampled(Sample { used: MB, max: 0 });
        assert!(!memory.admit(1), "that sample may predate the OOM");
        sampled(&memory, MB, 0);
        assert!(memory.admit(1));
    }

    #[test]
    fn the_gauges_follow_the_view() {
        let memory = Arc::new(BufferMemory::new(0.5, 0));
        let scrape = |memory: &Arc<BufferMemory>| {
            let mut registry = Registry::default();
            memory.register(&mut registry);
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        };
        let before = scrape(&memory);
        assert!(before.contains("opsdb_buffer_memory_full 0"), "{before}");
        assert!(
            !before.contains("\nopsdb_buffer_memory_limit_bytes "),
            "{before}"
        );
        sampled(&memory, 60, 100);
        let full = scrape(&memory);
        for line in [
            "opsdb_buffer_memory_used_bytes 60",
            "opsdb_buffer_memory_limit_bytes 50",
            "opsdb_buffer_memory_full 1",
        ] {
            assert!(full.lines().any(|l| l == line), "{line} in\n{full}");
        }
    }
}
