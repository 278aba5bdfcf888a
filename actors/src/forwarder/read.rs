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
use super::isolate::{Failure, Isolation};
use super::{ForwardError, ForwarderConfig, GROUP};
use crate::overlay::scripts::{DEAD_ENTRY, GROUP_CREATE};

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
    /// Its body packed for the resend window ([`crate::body`]; empty when the window is
    /// off), as the stream entry held it: the JSON itself goes into the batch's message.
    pub packed: Vec<u8>,
}

pub struct Batch {
    pub entries: Vec<Entry>,
    /// The SQL message sent to the primary, built as entries are read.
    pub message: Message,
    /// Entries that were not transactions, dead-lettered while this batch was read: their
    /// stream ids and reasons.
    pub poisoned: Vec<(String, String)>,
}

impl Batch {
    /// An empty batch for the batch function in the service's schema `schema`.
    pub fn new(schema: &str) -> Self {
        Self {
            entries: Vec::new(),
            message: Message::new(schema),
            poisoned: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Room for `bytes` more of transaction JSON: always in an empty batch (a transaction
    /// larger than the bound goes alone).
    fn fits(&self, bytes: usize, ctx: &Ctx<'_>) -> bool {
        self.is_empty()
            || (self.len() < ctx.max_txs
                && self.message.json_bytes() + bytes <= ctx.config.batch_max_bytes)
    }

    fn full(&self, ctx: &Ctx<'_>) -> bool {
        self.len() >= ctx.max_txs || self.message.json_bytes() >= ctx.config.batch_max_bytes
    }
}

/// One stream entry as read, its `tx` field moved out of the reply (not copied).
struct RawEntry {
    id: String,
    body: Body,
}

enum Body {
    /// The `tx` field.
    Tx(Vec<u8>),
    /// No body any more (deleted while pending).
    Gone,
    /// A body without a `tx` field: the names of the fields it has.
    Other(Vec<String>),
}

impl RawEntry {
    /// Its transaction's bytes of JSON, which the batch's bound counts (not the packed
    /// bytes Redis holds).
    fn size(&self) -> usize {
        match &self.body {
            Body::Tx(tx) => crate::body::json_len(tx),
            Body::Gone | Body::Other(_) => 0,
        }
    }
}

/// A stream entry that is not a transaction the forwarder can send: dead-lettered with
/// the reason at once (it would fail the same way on every attempt).
struct Poison {
    id: String,
    /// What its `tx` field held, byte for byte (packed or not): a retry of the dead letter
    /// puts back exactly that.
    content: Vec<u8>,
    reason: String,
}

pub struct Reader {
    conn: MultiplexedConnection,
    /// `true` while entries delivered earlier wait in the group's pending list.
    pending: bool,
    /// Bytes expected per entry: the largest of the last read, or half the previous
    /// estimate if that is more (a bulk transaction keeps the next reads small for a while).
    estimate: usize,
    /// The last entry this reader put into a batch. Pending entries are read after it: the
    /// ones before it are in a batch that is on its way or not yet settled.
    taken: Option<String>,
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
        // Through a script flagged `allow-oom`: a Redis over its `maxmemory` refuses
        // `XGROUP CREATE` itself, and draining is what frees memory.
        let _created: i64 = GROUP_CREATE
            .key(config.keys.stream())
            .arg(GROUP)
            .invoke_async(&mut conn)
            .await?;
        Ok(Self {
            conn,
            pending: true,
            estimate: FIRST_ESTIMATE,
            taken: None,
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
        let largest = entries.iter().map(RawEntry::size).max().unwrap_or(0);
        self.estimate = largest.max(self.estimate / 2).max(SMALLEST_ESTIMATE);
        // A pending entry whose body is gone (deleted by hand) can never be forwarded:
        // acknowledge it rather than fail on it forever.
        let orphans: Vec<String> = entries
            .iter()
            .filter(|e| matches!(e.body, Body::Gone))
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
            entries.retain(|e| !matches!(e.body, Body::Gone));
        }
        Ok((entries, read))
    }

    /// Dead-letters an entry that is not a transaction (`dead_entry.lua`).
    async fn dead_letter(
        &mut self,
        config: &ForwarderConfig,
        poison: Poison,
    ) -> Result<(), ForwardError> {
        tracing::warn!(
            stream_id = %poison.id,
            reason = %poison.reason,
            "stream entry is not a transaction, dead-lettered"
        );
        let _: i64 = DEAD_ENTRY
            .key(config.keys.stream())
            .key(config.keys.dead_letters())
            .arg(GROUP)
            .arg(&poison.id)
            .arg(&poison.content)
            .arg(&poison.reason)
            .arg(chrono::Utc::now().timestamp_millis())
            .invoke_async(&mut self.conn)
            .await?;
        Ok(())
    }

    /// The next batch, in stream order, after the ones this reader returned before; with
    /// `wait`, empty when nothing arrived within [`BLOCK`] (and a short batch lingers),
    /// without, what is there now (read while another batch is on its way).
    /// Transactions `isolation` condemned go in with a reject marker; entries that are not
    /// transactions are dead-lettered on the way (their count is in `Batch::poisoned`).
    pub async fn next_batch(
        &mut self,
        config: &ForwarderConfig,
        isolation: &Isolation,
        wait: bool,
    ) -> Result<Batch, ForwardError> {
        let mut batch = Batch::new(&config.schema);
        // Smaller while batches are split after a stall (see `split`).
        let max_txs = isolation
            .batch_limit()
            .map_or(config.batch_size, |limit| limit.min(config.batch_size))
            .max(1);
        let ctx = Ctx {
            config,
            isolation,
            max_txs,
        };
        if self.pending {
            self.fill(&mut batch, &ctx, Source::Pending).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            self.pending = false;
        }
        let block = if wait { BLOCK } else { Duration::ZERO };
        self.fill(&mut batch, &ctx, Source::New(block)).await?;
        if wait && !batch.is_empty() && !batch.full(&ctx) && !config.linger.is_zero() {
            // Let a trickle become a batch: fewer, fuller round trips over the WAN.
            tokio::time::sleep(config.linger).await;
            self.fill(&mut batch, &ctx, Source::New(Duration::ZERO))
                .await?;
        }
        Ok(batch)
    }

    /// Reads into `batch` until it is full or `source` has nothing more. Entries read but
    /// not taken (the batch filled up) stay pending and start the next batch.
    async fn fill(
        &mut self,
        batch: &mut Batch,
        ctx: &Ctx<'_>,
        source: Source,
    ) -> Result<(), ForwardError> {
        let config = ctx.config;
        let mut after = self.taken.clone().unwrap_or_else(|| String::from("0"));
        let mut first = true;
        while !batch.full(ctx) {
            let room = config
                .batch_max_bytes
                .saturating_sub(batch.message.json_bytes());
            let count = (room / self.estimate)
                .clamp(1, MAX_READ)
                .min(ctx.max_txs - batch.len());
            let (entries, got) = match source {
                Source::Pending => self.read(config, count, Some(&after), None).await?,
                Source::New(block) => {
                    let block = (first && !block.is_zero()).then_some(block);
                    self.read(config, count, None, block).await?
                }
            };
            first = false;
            for entry in entries {
                if !batch.fits(entry.size(), ctx) {
                    // Delivered but not taken: it waits in the pending list.
                    self.pending = true;
                    return Ok(());
                }
                after.clone_from(&entry.id);
                self.taken = Some(entry.id.clone());
                if let Err(poison) = add(batch, entry, ctx) {
                    let what = (poison.id.clone(), poison.reason.clone());
                    self.dead_letter(config, poison).await?;
                    batch.poisoned.push(what);
                }
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

/// What `fill` needs besides the reader.
struct Ctx<'a> {
    config: &'a ForwarderConfig,
    isolation: &'a Isolation,
    /// Most transactions in this batch: `forwarder.batch_size`, or less after a stall.
    max_txs: usize,
}

/// Adds one entry to the batch: its transaction's id is decoded, its JSON goes into the
/// batch's message (with a reject marker if `isolation` condemned it). An entry that is
/// not a transaction comes back as [`Poison`].
fn add(batch: &mut Batch, entry: RawEntry, ctx: &Ctx<'_>) -> Result<(), Poison> {
    let RawEntry { id, body } = entry;
    let poison = |content: Vec<u8>, reason: String| Poison {
        id: id.clone(),
        content,
        reason,
    };
    let stored = match body {
        Body::Tx(tx) => tx,
        Body::Gone => return Err(poison(Vec::new(), "no body".into())),
        Body::Other(fields) => {
            let reason = format!("no tx field (fields: {})", fields.join(", "));
            return Err(poison(Vec::new(), reason));
        }
    };
    let json =
        crate::body::unpack(&stored).map_err(|e| poison(stored.clone(), format!("tx: {e}")))?;
    let tx =
        std::str::from_utf8(&json).map_err(|_| poison(stored.clone(), "tx is not UTF-8".into()))?;
    if !tx.starts_with('{') {
        return Err(poison(stored.clone(), "tx is not a JSON object".into()));
    }
    let tx_id = match serde_json::from_str::<TxId>(tx) {
        Ok(TxId { id }) => id,
        Err(e) => {
            let reason = format!("tx is not a transaction: {e}");
            return Err(poison(stored.clone(), reason));
        }
    };
    let reject =
        ctx.isolation
            .verdict(tx_id, ctx.config.max_attempts)
            .map(|(failure, attempts)| Failure {
                message: format!(
                    "{} (failed {attempts} times in a row; dead-lettered by the forwarder)",
                    failure.message
                ),
                ..failure
            });
    if reject.is_some() {
        tracing::warn!(transaction_id = %tx_id, "sending a transaction that keeps failing as dead");
    }
    batch.message.push(&id, tx, reject.as_ref());
    // The window keeps the body as the stream held it (packed by an older build only if
    // it held JSON).
    let packed = if ctx.config.window.enabled() {
        crate::body::packed(&stored).into_owned()
    } else {
        Vec::new()
    };
    batch.entries.push(Entry {
        stream_id: id,
        tx_id,
        packed,
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
    let Some(Value::Array(fields)) = fields else {
        return Ok(RawEntry {
            id,
            body: Body::Gone,
        });
    };
    let mut names = Vec::new();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match (name, value) {
            (Value::BulkString(n), Value::BulkString(tx)) if n == b"tx" => {
                return Ok(RawEntry {
                    id,
                    body: Body::Tx(tx),
                });
            }
            (Value::BulkString(n), _) => names.push(String::from_utf8_lossy(&n).into_owned()),
            _ => names.push("?".into()),
        }
    }
    Ok(RawEntry {
        id,
        body: Body::Other(names),
    })
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
