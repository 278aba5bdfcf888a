//! Reading batches through the consumer group: first what was delivered to an earlier
//! incarnation and never acknowledged (pending), then new entries.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use uuid::Uuid;

use super::{ForwardError, ForwarderConfig, GROUP};

/// Longest a read waits for a first new entry before the actor takes its next message.
pub const BLOCK: Duration = Duration::from_millis(500);

pub struct Entry {
    pub stream_id: String,
    pub tx_id: Uuid,
}

#[derive(Default)]
pub struct Batch {
    pub entries: Vec<Entry>,
    /// The JSON array sent to `opsdb_apply_batch`: each transaction with its stream id.
    pub json: String,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

pub struct Reader {
    conn: MultiplexedConnection,
    /// `true` until the pending entries of earlier incarnations are drained.
    pending: bool,
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
        })
    }

    async fn read(
        &mut self,
        config: &ForwarderConfig,
        count: usize,
        block: Option<Duration>,
    ) -> Result<StreamReadReply, ForwardError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(GROUP)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        let from = if self.pending { "0" } else { ">" };
        cmd.arg("STREAMS").arg(config.keys.stream()).arg(from);
        let reply: Option<StreamReadReply> = cmd.query_async(&mut self.conn).await?;
        let mut reply = reply.unwrap_or_default();
        // A pending entry whose body is gone (deleted by hand) can never be forwarded:
        // acknowledge it rather than fail on it forever.
        let mut orphans = Vec::new();
        for key in &mut reply.keys {
            key.ids.retain(|e| {
                let keep = e.map.contains_key("tx");
                if !keep {
                    orphans.push(e.id.clone());
                }
                keep
            });
        }
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
        }
        Ok(reply)
    }

    /// The next batch, in stream order; empty when nothing arrived within [`BLOCK`].
    pub async fn next_batch(&mut self, config: &ForwarderConfig) -> Result<Batch, ForwardError> {
        let mut batch = Batch::default();
        if self.pending {
            add(
                &mut batch,
                self.read(config, config.batch_size, None).await?,
            )?;
            if !batch.is_empty() {
                return Ok(finish(batch));
            }
            self.pending = false;
        }
        add(
            &mut batch,
            self.read(config, config.batch_size, Some(BLOCK)).await?,
        )?;
        if !batch.is_empty() && batch.len() < config.batch_size && !config.linger.is_zero() {
            // Let a trickle become a batch: fewer, fuller round trips over the WAN.
            tokio::time::sleep(config.linger).await;
            let more = config.batch_size - batch.len();
            add(&mut batch, self.read(config, more, None).await?)?;
        }
        Ok(finish(batch))
    }
}

fn add(batch: &mut Batch, reply: StreamReadReply) -> Result<(), ForwardError> {
    for key in reply.keys {
        for entry in key.ids {
            let tx: String = entry
                .get("tx")
                .ok_or_else(|| ForwardError::EntryWithoutTx(entry.id.clone()))?;
            let id: TxId =
                serde_json::from_str(&tx).map_err(|source| ForwardError::EntryNotTransaction {
                    id: entry.id.clone(),
                    source,
                })?;
            if !tx.starts_with('{') || tx.len() < 2 {
                return Err(ForwardError::EntryNotObject(entry.id));
            }
            // Splice the stream id into the transaction object: `{"stream_id":"…",` + rest.
            batch
                .json
                .push(if batch.json.is_empty() { '[' } else { ',' });
            batch.json.push_str("{\"stream_id\":\"");
            batch.json.push_str(&entry.id);
            batch.json.push_str("\",");
            batch.json.push_str(&tx[1..]);
            batch.entries.push(Entry {
                stream_id: entry.id,
                tx_id: id.id,
            });
        }
    }
    Ok(())
}

fn finish(mut batch: Batch) -> Batch {
    if !batch.is_empty() {
        batch.json.push(']');
    }
    batch
}
