//! Reading batches through the consumer group: first what was delivered and never
//! acknowledged (pending: an earlier incarnation's batch, or entries a full batch left
//! over), then new entries.
//!
//! A batch is bounded by `forwarder.batch_size` transactions and `forwarder.batch_max_bytes`
//! of transaction JSON; a transaction larger than the byte bound goes alone. Entries are
//! read in rounds sized from the largest entry seen so far, so one read holds about a
//! batch's worth of bytes, never `batch_size` bulk transactions at once.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;
use uuid::Uuid;

use super::apply::Message;
use super::{ForwardError, ForwarderConfig, GROUP};

/// Longest a read waits for a first new entry before the actor takes its next message.
pub const BLOCK: Duration = Duration::from_millis(500);

/// Most entries one read asks for: with the largest entry seen so far as the estimate of
/// the next ones, a read holds at most this many entries more than the byte bound allows.
const MAX_READ: usize = 64;

/// The size assumed for entries before any was seen.
const FIRST_ESTIMATE: usize = 64 * 1024;

/// The estimate never goes below this: reads of tiny entries are capped by [`MAX_READ`].
const SMALLEST_ESTIMATE: usize = 256;

pub struct Entry {
    pub stream_id: String,
    pub tx_id: Uuid,
}

#[derive(Default)]
pub struct Batch {
    pub entries: Vec<Entry>,
    /// The SQL message sent to the primary, built as entries are read.
    pub message: Message,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Room for `bytes` more of transaction JSON: always in an empty batch (a transaction
    /// larger than the bound goes alone).
    fn fits(&self, bytes: usize, config: &ForwarderConfig) -> bool {
        self.is_empty()
            || (self.len() < config.batch_size
                && self.message.json_bytes() + bytes <= config.batch_max_bytes)
    }

    fn full(&self, config: &ForwarderConfig) -> bool {
        self.len() >= config.batch_size || self.message.json_bytes() >= config.batch_max_bytes
    }
}

/// One stream entry as read, its `tx` field moved out of the reply (not copied).
struct RawEntry {
    id: String,
    /// `None`: the entry has no body any more (deleted while pending).
    tx: Option<Vec<u8>>,
}

pub struct Reader {
    conn: MultiplexedConnection,
    /// `true` while entries delivered earlier wait in the group's pending list.
    pending: bool,
    /// Bytes expected per entry: the largest of the last read, or half the previous
    /// estimate if that is more (a bulk transaction keeps the next reads small for a while).
    estimate: usize,
}

#[derive(serde::Deserialize)]
struct TxId {
    id: Uuid,
}

impl Reader {
    pub async fn new(
        mut conn: MultiplexedConnection,
        config: &ForwarderConfig,
    ) -> Result<Self, ForwardError> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(config.keys.stream())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Self {
            conn,
            pending: true,
            estimate: FIRST_ESTIMATE,
        })
    }

    /// Reads up to `count` entries: pending ones after `after` (`Some`), or new ones.
    /// Also returns how many were read, including bodiless ones it acknowledged.
    async fn read(
        &mut self,
        config: &ForwarderConfig,
        count: usize,
        after: Option<&str>,
        block: Option<Duration>,
    ) -> Result<(Vec<RawEntry>, usize), ForwardError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(GROUP)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS")
            .arg(config.keys.stream())
            .arg(after.unwrap_or(">"));
        let reply: Value = cmd.query_async(&mut self.conn).await?;
        let mut entries = entries(reply)?;
        let read = entries.len();
        let largest = entries
            .iter()
            .map(|e| e.tx.as_ref().map_or(0, Vec::len))
            .max()
            .unwrap_or(0);
        self.estimate = largest.max(self.estimate / 2).max(SMALLEST_ESTIMATE);
        // A pending entry whose body is gone (deleted by hand) can never be forwarded:
        // acknowledge it rather than fail on it forever.
        let orphans: Vec<String> = entries
            .iter()
            .filter(|e| e.tx.is_none())
            .map(|e| e.id.clone())
            .collect();
        if !orphans.is_empty() {
            tracing::warn!(
                ?orphans,
                "pending stream entries without a body, acknowledged"
            );
            let _: i64 = redis::cmd("XACK")
                .arg(config.keys.stream())
                .arg(GROUP)
                .arg(&orphans)
                .query_async(&mut self.conn)
                .await?;
            entries.retain(|e| e.tx.is_some());
        }
        Ok((entries, read))
    }

    /// The next batch, in stream order; empty when nothing arrived within [`BLOCK`].
    pub async fn next_batch(&mut self, config: &ForwarderConfig) -> Result<Batch, ForwardError> {
        let mut batch = Batch::default();
        if self.pending {
            self.fill(&mut batch, config, Source::Pending).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            self.pending = false;
        }
        self.fill(&mut batch, config, Source::New(BLOCK)).await?;
        if !batch.is_empty() && !batch.full(config) && !config.linger.is_zero() {
            // Let a trickle become a batch: fewer, fuller round trips over the WAN.
            tokio::time::sleep(config.linger).await;
            self.fill(&mut batch, config, Source::New(Duration::ZERO))
                .await?;
        }
        Ok(batch)
    }

    /// Reads into `batch` until it is full or `source` has nothing more. Entries read but
    /// not taken (the batch filled up) stay pending and start the next batch.
    async fn fill(
        &mut self,
        batch: &mut Batch,
        config: &ForwarderConfig,
        source: Source,
    ) -> Result<(), ForwardError> {
        let mut after = String::from("0");
        let mut first = true;
        while !batch.full(config) {
            let room = config
                .batch_max_bytes
                .saturating_sub(batch.message.json_bytes());
            let count = (room / self.estimate)
                .clamp(1, MAX_READ)
                .min(config.batch_size - batch.len());
            let (entries, got) = match source {
                Source::Pending => self.read(config, count, Some(&after), None).await?,
                Source::New(block) => {
                    let block = (first && !block.is_zero()).then_some(block);
                    self.read(config, count, None, block).await?
                }
            };
            first = false;
            for entry in entries {
                let size = entry.tx.as_ref().map_or(0, Vec::len);
                if !batch.fits(size, config) {
                    // Delivered but not taken: it waits in the pending list.
                    self.pending = true;
                    return Ok(());
                }
                after.clone_from(&entry.id);
                add(batch, entry)?;
            }
            if got < count {
                break;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Source {
    /// Entries delivered earlier and not acknowledged, oldest first.
    Pending,
    /// New entries; the first read waits this long for one (zero: does not wait).
    New(Duration),
}

/// Adds one entry to the batch: its transaction's id is decoded, its JSON goes into the
/// batch's message.
fn add(batch: &mut Batch, entry: RawEntry) -> Result<(), ForwardError> {
    let RawEntry { id, tx } = entry;
    let tx = tx.ok_or_else(|| ForwardError::EntryWithoutTx(id.clone()))?;
    let tx = String::from_utf8(tx).map_err(|_| ForwardError::EntryNotObject(id.clone()))?;
    let tx_id: TxId =
        serde_json::from_str(&tx).map_err(|source| ForwardError::EntryNotTransaction {
            id: id.clone(),
            source,
        })?;
    if !tx.starts_with('{') {
        return Err(ForwardError::EntryNotObject(id));
    }
    batch.message.push(&id, &tx);
    batch.entries.push(Entry {
        stream_id: id,
        tx_id: tx_id.id,
    });
    Ok(())
}

/// Takes an `XREADGROUP` reply of one stream apart, moving each entry's `tx` field out of
/// it (the reply types of the client library copy the whole reply while parsing it).
///
/// Shape: nil, or `[[stream, [[id, [field, value, …] | nil], …]]]` (a map of stream to
/// entries under RESP3).
fn entries(reply: Value) -> Result<Vec<RawEntry>, ForwardError> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => Ok(pair.swap_remove(1)),
                other => Err(unexpected("a [stream, entries] pair", &other)),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        other => return Err(unexpected("an array of streams", &other)),
    };
    let mut out = Vec::new();
    for list in streams {
        let Value::Array(list) = list else {
            return Err(unexpected("an array of entries", &list));
        };
        for entry in list {
            out.push(raw_entry(entry)?);
        }
    }
    Ok(out)
}

fn raw_entry(entry: Value) -> Result<RawEntry, ForwardError> {
    let Value::Array(parts) = entry else {
        return Err(unexpected("an [id, fields] entry", &entry));
    };
    let mut parts = parts.into_iter();
    let (Some(id), fields) = (parts.next(), parts.next()) else {
        return Err(ForwardError::Protocol("an empty stream entry".into()));
    };
    let id = match id {
        Value::BulkString(bytes) => String::from_utf8(bytes)
            .map_err(|_| ForwardError::Protocol("a stream id that is not UTF-8".into()))?,
        other => return Err(unexpected("a stream id", &other)),
    };
    let mut tx = None;
    if let Some(Value::Array(fields)) = fields {
        let mut fields = fields.into_iter();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            if matches!(&name, Value::BulkString(n) if n == b"tx") {
                if let Value::BulkString(bytes) = value {
                    tx = Some(bytes);
                }
            }
        }
        if tx.is_none() {
            // A body without the field: not a forwardable transaction.
            return Err(ForwardError::EntryWithoutTx(id));
        }
    }
    Ok(RawEntry { id, tx })
}

fn unexpected(what: &str, got: &Value) -> ForwardError {
    // The kind only: the value may be a whole batch.
    let kind = match got {
        Value::Nil => "nil",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::BulkString(_) => "a string",
        Value::Int(_) => "an integer",
        _ => "another type",
    };
    ForwardError::Protocol(format!("XREADGROUP reply: expected {what}, got {kind}"))
}
