//! The Redis key layout. Every key of a site starts with `opsdb:{site}:`, so several
//! sites can share one Redis. `docs/ARCHITECTURE.md` documents the same table; keep both
//! in step.
//!
//! This is the only place Rust builds a key: the prefix itself is not handed out, only
//! whole keys and, for the scripts that derive keys from an id they read in Redis, the
//! prefix of one kind of key (`lifecycle_prefix`), or the site's (`site_prefix`, for
//! `abort.lua`).

use uuid::Uuid;

use crate::domain::Table;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(site: &str) -> Self {
        Self {
            prefix: format!("opsdb:{site}:"),
        }
    }

    /// Stream of buffered transactions, oldest first (field `tx`: the transaction JSON).
    /// An entry leaves the stream once the primary has committed it, so its length is the
    /// number of transactions not yet forwarded.
    pub fn stream(&self) -> String {
        format!("{}tx", self.prefix)
    }

    /// Hash: a transaction's lifecycle (`state`, `buffered_at`, `op`, `records`, `undo`
    /// while it has undo entries; the lists hold record keys without the site's record
    /// prefix, `{table}:{id}`). `buffer.lua` and `overlay_release.lua` take that prefix
    /// from this key: its part before `tx:{tx}`, then `rec:` (see `record_of`).
    pub fn lifecycle(&self, tx: Uuid) -> String {
        format!("{}tx:{tx}", self.prefix)
    }

    /// Sorted set: the transactions being staged (a large write buffered in chunks,
    /// `stage.lua`), scored by their start (unix ms). Usually empty; readers read it with
    /// the records, and the BufferActor's sweep aborts a member left behind.
    pub fn staging(&self) -> String {
        format!("{}staging", self.prefix)
    }

    /// Hash: a transaction being staged: its chunks' lists until `commit.lua` turns them
    /// into its lifecycle (`stage.lua` documents the fields). `abort.lua` takes the site's
    /// prefix from [`Keys::site_prefix`], not from this key.
    pub fn staged(&self, tx: Uuid) -> String {
        format!("{}stg:{tx}", self.prefix)
    }

    /// The site's prefix itself, `opsdb:{site}:`: for `abort.lua`, which derives record
    /// keys and previous writers' lifecycles from it.
    pub fn site_prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash: the overlay after-image of one record (columns as JSON values, `_tx` = latest
    /// writer, `_partial` = "1" when only an update of it is buffered, `_idx` = its index
    /// sets (`{column}:{value}`: `index_list.lua`), `_u:{tx}` = a buffered writer's undo entry). The id is the key's last `:`-separated part; `overlay_release.lua` relies on it.
    pub fn record(&self, table: Table, id: Uuid) -> String {
        self.record_of(table.name(), &id.to_string())
    }

    /// [`Keys::record`] of any table of the model registry, by names (plain SQL names) and
    /// the key's text (without `:`, see the builder).
    pub fn record_of(&self, table: &str, id: &str) -> String {
        format!("{}rec:{table}:{id}", self.prefix)
    }

    /// Set: ids of the overlay records of `table` whose `column` equals `value`. The column
    /// is the key's last but one `:`-separated part (values are ids: UUIDs, integers);
    /// `buffer.lua` and `overlay_release.lua` rely on it to move a record's entry.
    pub fn index(&self, table: Table, column: &str, value: &str) -> String {
        self.index_of(table.name(), column, value)
    }

    /// [`Keys::index`] by the table's name.
    pub fn index_of(&self, table: &str, column: &str, value: &str) -> String {
        format!("{}idx:{table}:{column}:{value}", self.prefix)
    }

    /// String: an idempotency key's request fingerprint (32 hex characters) followed by its
    /// first response (JSON, packed: `body.rs`). Records of the older layouts are a hash
    /// (`fp`, `resp`) or a string with the response's JSON as it is.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}idem:{key}", self.prefix)
    }

    /// Sorted set: forwarded transactions not yet seen replicated, scored by commit LSN
    /// (see `lsn.rs` for the rounding of scores).
    pub fn forwarded(&self) -> String {
        format!("{}forwarded", self.prefix)
    }

    /// Prefix of the lifecycle hashes (`lifecycle(tx)` = prefix + id), for the scripts that
    /// find transaction ids inside Redis (a sorted set, a dead letter) rather than in their
    /// arguments.
    pub fn lifecycle_prefix(&self) -> String {
        format!("{}tx:", self.prefix)
    }

    /// Stream of dead-lettered transactions.
    pub fn dead_letters(&self) -> String {
        format!("{}dlq", self.prefix)
    }

    /// The last event sequence number given (`events.lua`).
    pub fn events_seq(&self) -> String {
        format!("{}events:seq", self.prefix)
    }

    /// The capped stream of recent events, ids `<seq>-0`.
    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// The pub/sub channel events are published on (a channel, not a key).
    pub fn events_channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// The forwarder lease: the holder's instance id, with a TTL.
    pub fn forwarder_lease(&self) -> String {
        format!("{}forwarder:lease", self.prefix)
    }

    /// String: the model registry's last good copy (JSON of `registry::Registry`), so the
    /// service starts and validates while its read source is down.
    pub fn registry(&self) -> String {
        format!("{}registry", self.prefix)
    }

    /// String: the last good set read from the tokens file (JSON: name, SHA-256, scopes,
    /// expiry of each token), so its tokens work after a restart while it cannot be read.
    pub fn tokens_file(&self) -> String {
        format!("{}tokens:file", self.prefix)
    }

    /// String: the same for the database's `api_token` table (read on the replica).
    pub fn tokens_table(&self) -> String {
        format!("{}tokens:table", self.prefix)
    }

    /// Stream: the resend window, one entry per forwarded transaction (`sid` its stream id,
    /// `tx` its id, `z` its body compressed), id = when it was settled; trimmed by age and
    /// by bytes (`resend.window`, `resend.max_bytes`).
    pub fn sent(&self) -> String {
        format!("{}sent", self.prefix)
    }

    /// String: the bytes the resend window's entries hold (its byte bound's count).
    pub fn sent_bytes(&self) -> String {
        format!("{}sent:bytes", self.prefix)
    }

    /// Hash: the primary's and the replica's identity as last seen (`primary`, `replica`:
    /// JSON of `history::Identity`) and the unacknowledged changes of history
    /// (`primary_change`, `replica_change`), kept until a resend or an operator clears them.
    pub fn history(&self) -> String {
        format!("{}history", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_site_prefixed() {
        let k = Keys::new("summit");
        let id = Uuid::nil();
        for key in [
            k.stream(),
            k.lifecycle(id),
            k.record(Table::RawDataFile, id),
            k.index(Table::ExecutedObsUnit, "obs_unit_id", "7"),
            k.idempotency("abc"),
            k.dead_letters(),
            k.forwarded(),
            k.registry(),
            k.tokens_file(),
            k.tokens_table(),
            k.staging(),
            k.staged(id),
        ] {
            assert!(key.starts_with("opsdb:summit:"), "{key}");
        }
        assert_eq!(
            k.record(Table::RawDataFile, id),
            "opsdb:summit:rec:raw_data_file:00000000-0000-0000-0000-000000000000"
        );
    }

    /// What the scripts derive must be what Rust builds.
    #[test]
    fn scripts_derive_the_keys_rust_builds() {
        let k = Keys::new("summit");
        let id = Uuid::now_v7();
        assert_eq!(k.lifecycle(id), format!("{}{id}", k.lifecycle_prefix()));
        let record = k.record(Table::ExecutedObsUnit, id);
        assert_eq!(record.rsplit(':').next(), Some(id.to_string().as_str()));
        // stage.lua: the site's prefix is the staging key's part before `stg:{tx}`;
        // abort.lua: record keys and lifecycles are the site's prefix + `rec:` / `tx:`.
        let staged = k.staged(id);
        let site = &staged[..staged.len() - id.to_string().len() - "stg:".len()];
        assert_eq!(site, k.site_prefix());
        assert_eq!(format!("{site}tx:{id}"), k.lifecycle(id));
        assert!(record.starts_with(&format!("{site}rec:")));
        for (column, value) in [
            ("raw_data_package_id", id.to_string()),
            ("obs_unit_id", "7".into()),
        ] {
            let index = k.index(Table::RawDataFile, column, &value);
            assert_eq!(index.rsplit(':').nth(1), Some(column), "{index}");
        }
    }
}
