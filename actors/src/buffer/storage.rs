//! Redis' disk as a limit: writes are refused (503 `buffer_full`) before the disk holding
//! Redis' AOF is too full for the next AOF rewrite, or once Redis says its last AOF write
//! failed (`aof_last_write_status:err`).
//!
//! Why: an AOF rewrite writes a new file about the size of the data next to the old one,
//! then swaps them. With the disk too full for that, the rewrite fails, the AOF keeps
//! growing, and when a write (an `fsync`) fails Redis refuses every write, the drain's too
//! (`MISCONF`). Refusing writes while free space < the AOF's current size +
//! `buffer.min_disk_free_bytes` keeps room for one rewrite plus what is written meanwhile.
//!
//! How: the BufferActor's memory sample (every 250 ms, one connection of its own) also asks
//! `INFO persistence` and `CONFIG GET dir`; when that directory exists on this host (Redis
//! runs here: the summit case) its filesystem's free space is read with `statvfs`. No Redis
//! call is added per write. When the directory is not here (Redis elsewhere, in a
//! container), the free space is unknown (`null`) and only `aof_last_write_status` counts.
//! The drain (settle, replicated, dead letters) is not subject to this admission.

use std::path::Path;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use serde::{Deserialize, Serialize};

/// One reading of Redis' persistence and of the free space under its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    pub aof_enabled: bool,
    /// `aof_last_write_status`: `ok` or `err`.
    pub aof_last_write_status: String,
    pub rewrite_in_progress: bool,
    /// `aof_current_size` (0 with the AOF off): what the next rewrite needs again.
    pub aof_bytes: u64,
    /// Free bytes (for unprivileged users) of the filesystem of Redis' `dir`; `None` when
    /// that directory is not on this host.
    pub free_bytes: Option<u64>,
}

impl Storage {
    /// Reads an `INFO persistence` answer; `free_bytes` is what [`free_bytes`] found.
    pub fn parse(info: &str, free_bytes: Option<u64>) -> Option<Self> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok());
        let aof_enabled = number("aof_enabled")? == 1;
        Some(Self {
            aof_enabled,
            aof_last_write_status: field("aof_last_write_status")?.to_owned(),
            rewrite_in_progress: number("aof_rewrite_in_progress")? == 1,
            aof_bytes: if aof_enabled {
                number("aof_current_size").unwrap_or(0)
            } else {
                0
            },
            free_bytes,
        })
    }

    /// Why writes must stop, if they must: the last AOF write failed, or the free space is
    /// short of the AOF's size plus `min_free`.
    pub fn refusal(&self, min_free: u64) -> Option<DiskRefusal> {
        if self.aof_enabled && self.aof_last_write_status != "ok" {
            return Some(DiskRefusal::AofWriteFailed);
        }
        let needed = self.aof_bytes.saturating_add(min_free);
        match self.free_bytes {
            Some(free) if free < needed => Some(DiskRefusal::Low { free, needed }),
            _ => None,
        }
    }
}

/// Why the disk admission refuses writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskRefusal {
    AofWriteFailed,
    Low { free: u64, needed: u64 },
}

/// The free bytes of the filesystem holding `dir`, if `dir` is a directory on this host.
pub fn free_bytes(dir: &str) -> Option<u64> {
    let path = Path::new(dir);
    if dir.is_empty() || !path.is_absolute() || !path.is_dir() {
        return None;
    }
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// What `/health` shows as `redis_storage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = RedisStorage))]
pub struct StorageView {
    /// `ok` or `err`; `None` before the first sample.
    pub aof_last_write_status: Option<String>,
    pub rewrite_in_progress: Option<bool>,
    pub aof_bytes: Option<u64>,
    /// `None` when Redis' directory is not on this host (or before the first sample).
    pub free_bytes: Option<u64>,
    /// `buffer.min_disk_free_bytes`: writes stop when `free_bytes < aof_bytes + this`.
    pub min_free_bytes: u64,
    /// Writes are being refused for Redis' disk (503 `buffer_full`).
    pub refusing_writes: bool,
}

impl StorageView {
    pub fn of(storage: Option<&Storage>, min_free: u64) -> Self {
        Self {
            aof_last_write_status: storage.map(|s| s.aof_last_write_status.clone()),
            rewrite_in_progress: storage.map(|s| s.rewrite_in_progress),
            aof_bytes: storage.map(|s| s.aof_bytes),
            free_bytes: storage.and_then(|s| s.free_bytes),
            min_free_bytes: min_free,
            refusing_writes: storage.and_then(|s| s.refusal(min_free)).is_some(),
        }
    }

    /// `opsdb_redis_aof_bytes`, `opsdb_redis_disk_free_bytes`, `opsdb_redis_aof_write_ok`:
    /// a value not known is left out (its `# TYPE` line stays).
    pub fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metric = encoder.encode_descriptor(
            "opsdb_redis_aof",
            "Size of Redis' AOF (aof_current_size) at the last sample.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        if let Some(bytes) = self.aof_bytes {
            ConstGauge::new(bytes).encode(metric)?;
        }
        let metric = encoder.encode_descriptor(
            "opsdb_redis_disk_free",
            "Free space of the filesystem of Redis' dir, when Redis runs on this host.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        if let Some(free) = self.free_bytes {
            ConstGauge::new(free).encode(metric)?;
        }
        let metric = encoder.encode_descriptor(
            "opsdb_redis_aof_write_ok",
            "Whether Redis' last AOF write succeeded (aof_last_write_status ok).",
            None,
            MetricType::Gauge,
        )?;
        if let Some(status) = &self.aof_last_write_status {
            ConstGauge::new(i64::from(status == "ok")).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Persistence\r\nloading:0\r\naof_enabled:1\r\n\
                        aof_rewrite_in_progress:0\r\naof_last_write_status:ok\r\n\
                        aof_current_size:5000\r\naof_base_size:100\r\n";

    #[test]
    fn info_persistence_is_parsed() {
        let s = Storage::parse(INFO, Some(9)).expect("parsed");
        assert!(s.aof_enabled && !s.rewrite_in_progress);
        assert_eq!(
            (s.aof_last_write_status.as_str(), s.aof_bytes),
            ("ok", 5000)
        );
        assert_eq!(s.free_bytes, Some(9));
        assert_eq!(Storage::parse("# Persistence\r\nloading:0\r\n", None), None);
    }

    #[test]
    fn writes_stop_short_of_the_room_for_a_rewrite_or_on_a_failed_aof_write() {
        let mut s = Storage::parse(INFO, Some(6000)).expect("parsed");
        assert_eq!(s.refusal(1000), None, "6000 free = 5000 AOF + 1000 margin");
        assert_eq!(
            s.refusal(1001),
            Some(DiskRefusal::Low {
                free: 6000,
                needed: 6001
            })
        );
        s.free_bytes = None;
        assert_eq!(
            s.refusal(u64::MAX),
            None,
            "not on this host: unknown, not refused"
        );
        s.aof_last_write_status = "err".into();
        assert_eq!(s.refusal(0), Some(DiskRefusal::AofWriteFailed));
        assert!(StorageView::of(Some(&s), 0).refusing_writes);
        assert!(!StorageView::of(None, 0).refusing_writes);
    }

    #[test]
    fn the_admission_refuses_for_disk_without_a_redis_call_and_the_gauges_say_so() {
        use std::sync::Arc;

        use super::super::memory::BufferMemory;
        let memory = Arc::new(BufferMemory::new(0.8, 1000));
        assert!(memory.admit(1), "no disk sample yet: nothing known");
        memory.stored(Storage::parse(INFO, Some(5999)));
        assert!(!memory.admit(1), "5999 free < 5000 AOF + 1000");
        assert!(!memory.view().refusing_writes, "memory is not what refuses");
        assert_eq!(
            memory.disk_refusal(),
            Some(DiskRefusal::Low {
                free: 5999,
                needed: 6000
            })
        );
        let mut registry = prometheus_client::registry::Registry::default();
        memory.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for line in [
            "opsdb_redis_aof_bytes 5000",
            "opsdb_redis_disk_free_bytes 5999",
            "opsdb_redis_aof_write_ok 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
        memory.stored(Storage::parse(INFO, Some(6000)));
        assert!(memory.admit(1), "room again at the next sample");
    }

    #[test]
    fn the_free_space_is_read_only_for_a_local_directory() {
        assert!(free_bytes("/").is_some_and(|b| b > 0));
        assert_eq!(free_bytes("/no/such/dir/here"), None);
        assert_eq!(free_bytes("data"), None, "relative: not resolvable here");
    }
}
