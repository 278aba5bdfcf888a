//! Referential checks at ingest (`schema.references`): a write that names a parent row
//! (a foreign key of the model registry) that is neither in the overlay nor on the read
//! source is reported at once, instead of becoming a dead letter days later when the
//! primary refuses it.
//!
//! - `warn` (default): the write is stored; its answer carries the header
//!   `x-opsdb-reference-warning` (TCP: `warnings`) and `opsdb_reference_missing_total` counts it.
//! - `reject`: the write is refused with `422 unknown_parent`, nothing stored.
//! - `off`: nothing is checked.
//!
//! Bounded: the parents of one write are looked up together (one Redis pipeline, one query
//! per parent table), within [`BUDGET`]; a read source or Redis that does not answer in time
//! leaves the write unchecked (counted in `opsdb_reference_unchecked_total`), never waiting
//! longer and never refusing for it: ingest must not depend on the replica. After such a
//! lookup the checks pause for [`PAUSE`] (writes go unchecked at once), so a replica that
//! is down costs one write in five seconds the budget, not every write. Parents found are
//! remembered (at most [`KNOWN`]), so a stream of writes under one executed obs unit costs
//! one lookup. Parents the same transaction writes are not looked up.
//!
//! The check reads the local read source (the replica at the summit): a parent committed in
//! Cologne and not yet replicated is reported as missing; under `warn` that costs a header.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry as Metrics;
use redis::aio::MultiplexedConnection;
use sqlx::postgres::PgPool;

use crate::domain::{Step, Transaction};
use crate::overlay::Keys;
use crate::pg::PgTarget;
use crate::registry::Registry;

/// The longest one write's check may take.
pub const BUDGET: Duration = Duration::from_millis(250);

/// How many parents found to exist are remembered.
pub const KNOWN: usize = 10_000;

/// After a lookup that did not finish within the budget, writes are left unchecked this
/// long without trying: a replica that is down must not cost every write the budget.
pub const PAUSE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Warn,
    Reject,
}

/// A parent row one step's column names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Parent {
    pub schema: String,
    pub table: String,
    pub column: String,
    /// The referring column's type as PostgreSQL prints it: the parent column's too.
    pub type_name: String,
    /// The value, as text.
    pub value: String,
    /// Whether the parent's column is its table's registry key (then the overlay may hold it).
    pub keyed: bool,
}

/// A reference to a parent found nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// Which step of the transaction (its index) and column refer to it.
    pub step: usize,
    pub column: String,
    pub parent: Parent,
}

impl Missing {
    pub fn describe(&self) -> String {
        format!(
            "{} = {} names no {}.{} (neither buffered nor on the read source)",
            self.column, self.parent.value, self.parent.table, self.parent.column
        )
    }
}

/// What one write's check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Found,
    Missing(Vec<Missing>),
    /// The read source or Redis did not answer within the budget.
    Unchecked,
}

/// Every parent `tx` refers to that it does not write itself, once each, with the first
/// step and column that refer to it (a bulk registration of 1,000 files under one unit is
/// one parent to look up, not 1,000).
pub fn parents(tx: &Transaction, registry: &Registry) -> Vec<(usize, String, Parent)> {
    let written: HashSet<(&str, String)> = tx
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Insert { .. }))
        .map(|s| (s.table(), s.id().text()))
        .collect();
    let mut out = Vec::new();
    let mut seen: HashSet<(&str, &str, String)> = HashSet::new();
    for (i, step) in tx.steps.iter().enumerate() {
        let (Some(model), Some(columns)) = (registry.table(step.table()), step.columns()) else {
            continue;
        };
        for fk in &model.foreign_keys {
            let Some(value) = columns.get(&fk.column) else {
                continue;
            };
            let value = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let parent_model = registry.table(&fk.ref_table);
            let keyed = parent_model.is_some_and(|m| m.key == fk.ref_column);
            if keyed && written.contains(&(fk.ref_table.as_str(), value.clone())) {
                continue;
            }
            if !seen.insert((&fk.ref_table, &fk.ref_column, value.clone())) {
                continue;
            }
            let type_name = model
                .column(&fk.column)
                .map_or_else(|| "text".to_owned(), |c| c.type_name.clone());
            out.push((
                i,
                fk.column.clone(),
                Parent {
                    schema: fk.ref_schema.clone(),
                    table: fk.ref_table.clone(),
                    column: fk.ref_column.clone(),
                    type_name,
                    value,
                    keyed,
                },
            ));
        }
    }
    out
}

#[derive(Default)]
pub struct ReferenceMetrics {
    pub missing: Counter,
    pub unchecked: Counter,
}

/// The checker: the read source's pool, a Redis connection, what it already found.
pub struct References {
    pub mode: Mode,
    pool: Option<PgPool>,
    redis_url: String,
    redis: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    keys: Keys,
    known: Mutex<Known>,
    /// Until when lookups are not tried (see [`PAUSE`]).
    paused_until: Mutex<Option<tokio::time::Instant>>,
    pub metrics: Arc<ReferenceMetrics>,
}

#[derive(Default)]
struct Known {
    set: HashSet<Parent>,
    order: VecDeque<Parent>,
}

impl Known {
    fn insert(&mut self, parent: Parent) {
        if self.set.insert(parent.clone()) {
            self.order.push_back(parent);
            if self.order.len() > KNOWN {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

impl References {
    /// Connects lazily: a read source down at start leaves writes unchecked, nothing else.
    pub fn new(
        mode: Mode,
        source: Option<&PgTarget>,
        redis_url: String,
        keys: Keys,
    ) -> Result<Self, sqlx::Error> {
        let pool = source
            .map(|source| source.lazy_pool(4, BUDGET, BUDGET))
            .transpose()?;
        Ok(Self {
            mode,
            pool,
            redis_url,
            redis: tokio::sync::Mutex::new(None),
            keys,
            known: Mutex::new(Known::default()),
            paused_until: Mutex::new(None),
            metrics: Arc::default(),
        })
    }

    pub fn register_metrics(&self, registry: &mut Metrics) {
        registry.register(
            "opsdb_reference_missing",
            "Writes naming a parent row found neither buffered nor on the read source",
            self.metrics.missing.clone(),
        );
        registry.register(
            "opsdb_reference_unchecked",
            "Writes whose parents could not be looked up within the budget (read source or Redis slow or down)",
            self.metrics.unchecked.clone(),
        );
    }

    /// Looks the parents up, within [`BUDGET`].
    pub async fn check(&self, refs: Vec<(usize, String, Parent)>) -> Outcome {
        let unknown: Vec<(usize, String, Parent)> = {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            refs.into_iter()
                .filter(|(_, _, p)| !known.set.contains(p))
                .collect()
        };
        if unknown.is_empty() {
            return Outcome::Found;
        }
        let now = tokio::time::Instant::now();
        let paused = {
            let until = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            until.is_some_and(|until| now < until)
        };
        if paused {
            self.metrics.unchecked.inc();
            return Outcome::Unchecked;
        }
        let outcome = match tokio::time::timeout(BUDGET, self.look_up(unknown)).await {
            Ok(Ok(missing)) if missing.is_empty() => Outcome::Found,
            Ok(Ok(missing)) => Outcome::Missing(missing),
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "referential check: lookup failed");
                Outcome::Unchecked
            }
            Err(_) => Outcome::Unchecked,
        };
        match &outcome {
            Outcome::Missing(_) => {
                self.metrics.missing.inc();
            }
            Outcome::Unchecked => {
                self.metrics.unchecked.inc();
                let mut until = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
                *until = Some(tokio::time::Instant::now() + PAUSE);
                tracing::warn!(
                    pause = ?PAUSE,
                    "referential check: the read source or Redis did not answer within the budget; writes go unchecked for a while"
                );
            }
            Outcome::Found => {}
        }
        outcome
    }

    async fn look_up(
        &self,
        refs: Vec<(usize, String, Parent)>,
    ) -> Result<Vec<Missing>, Box<dyn std::error::Error + Send + Sync>> {
        // `parents` gives each parent once.
        let distinct: Vec<Parent> = refs.iter().map(|(_, _, p)| p.clone()).collect();
        let mut found: HashSet<Parent> = self.in_overlay(&distinct).await?;
        let rest: Vec<&Parent> = distinct.iter().filter(|p| !found.contains(*p)).collect();
        if !rest.is_empty() {
            let Some(pool) = &self.pool else {
                return Err("no read source".into());
            };
            found.extend(on_source(pool, &rest).await?);
        }
        {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            for parent in &found {
                known.insert(parent.clone());
            }
        }
        Ok(refs
            .into_iter()
            .filter(|(_, _, p)| !found.contains(p))
            .map(|(step, column, parent)| Missing {
                step,
                column,
                parent,
            })
            .collect())
    }

    /// The parents the overlay holds (buffered, forwarded, not yet replicated).
    async fn in_overlay(&self, parents: &[Parent]) -> redis::RedisResult<HashSet<Parent>> {
        let keyed: Vec<&Parent> = parents.iter().filter(|p| p.keyed).collect();
        if keyed.is_empty() {
            return Ok(HashSet::new());
        }
        let mut guard = self.redis.lock().await;
        if guard.is_none() {
            *guard = Some(
                crate::redis_conn::open_url(&self.redis_url, "references", BUDGET, BUDGET).await?,
            );
        }
        let Some(conn) = guard.as_mut() else {
            return Ok(HashSet::new());
        };
        let mut pipe = redis::pipe();
        for p in &keyed {
            pipe.cmd("EXISTS")
                .arg(self.keys.record_of(&p.table, &p.value));
        }
        let exists: Vec<bool> = match pipe.query_async(conn).await {
            Ok(exists) => exists,
            Err(err) => {
                *guard = None;
                return Err(err);
            }
        };
        Ok(keyed
            .into_iter()
            .zip(exists)
            .filter(|(_, e)| *e)
            .map(|(p, _)| p.clone())
            .collect())
    }
}

/// `"name"`, for a name read from the catalog.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The parents the read source has: one query per parent column.
async fn on_source(pool: &PgPool, parents: &[&Parent]) -> Result<HashSet<Parent>, sqlx::Error> {
    let mut by_column: BTreeMap<(&str, &str, &str, &str), Vec<&Parent>> = BTreeMap::new();
    for p in parents {
        by_column
            .entry((&p.schema, &p.table, &p.column, &p.type_name))
            .or_default()
            .push(p);
    }
    let mut found = HashSet::new();
    for ((schema, table, column, type_name), group) in by_column {
        // Names and the type come from the catalog (the model registry), never from a
        // caller; the values are bound.
        let sql = format!(
            "SELECT {c}::text FROM {s}.{t} WHERE {c} = ANY($1::text[]::{type_name}[])",
            c = quoted(column),
            s = quoted(schema),
            t = quoted(table),
        );
        let values: Vec<String> = group.iter().map(|p| p.value.clone()).collect();
        let present: Vec<String> = sqlx::query_scalar(&sql)
            .bind(&values)
            .fetch_all(pool)
            .await?;
        let present: HashSet<String> = present.into_iter().collect();
        found.extend(
            group
                .into_iter()
                .filter(|p| present.contains(&p.value))
                .cloned(),
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::domain::builder::tests::registry;

    fn insert(table: &str, id: Uuid, values: serde_json::Value) -> Step {
        Step::Insert {
            table: table.into(),
            id: id.into(),
            values: values.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn each_parent_is_looked_up_once_and_not_when_the_transaction_writes_it() {
        let (unit, elsewhere, package) =
            (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut steps = vec![insert(
            "raw_data_package",
            package,
            json!({"executed_obs_unit_id": elsewhere}),
        )];
        for n in 0..1000u128 {
            steps.push(insert(
                "raw_data_file",
                Uuid::from_u128(100 + n),
                json!({"executed_obs_unit_id": unit, "raw_data_package_id": package}),
            ));
        }
        let tx = Transaction {
            id: Uuid::nil(),
            site: "s".into(),
            op: "transactions".into(),
            created_at: Utc::now(),
            steps,
        };
        let found = parents(&tx, &registry());
        let named: Vec<(usize, &str, &str)> = found
            .iter()
            .map(|(step, column, p)| (*step, column.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                (0, "executed_obs_unit_id", elsewhere.to_string().as_str()),
                (1, "executed_obs_unit_id", unit.to_string().as_str()),
            ],
            "the package the transaction writes is no parent to look up; the unit is one"
        );
        assert!(found
            .iter()
            .all(|(_, _, p)| p.keyed && p.type_name == "Uuid"));
    }
}
