//! The schemas of answers the handlers build as JSON values rather than from a type of
//! their own: records (the primary's columns, read back), lifecycles, acknowledgements,
//! the small admin answers. These types only describe; the tests of this module check the
//! acknowledgements against what a write really answers.

#![allow(dead_code)] // read by the derive, never constructed

use ops_db_actors::overlay::TxState;
use serde_json::Value;
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

/// The answer to a write of one record.
#[derive(ToSchema)]
pub struct WriteAck {
    /// The record written (a UUIDv7 the service gave it, or the one updated).
    pub id: Uuid,
    pub transaction_id: Uuid,
    /// `buffered`; with `?wait=`, how far the transaction got.
    pub status: TxState,
}

/// The answer to a bulk registration of files: one transaction.
#[derive(ToSchema)]
pub struct BulkWriteAck {
    /// The files' ids, in request order.
    pub ids: Vec<Uuid>,
    pub count: u64,
    pub transaction_id: Uuid,
    /// `buffered`; with `?wait=`, how far the transaction got.
    pub status: TxState,
}

/// A record: its columns as on the primary (timestamps in RFC 3339 with microseconds),
/// and `sync`.
pub struct Record;

impl PartialSchema for Record {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some(
                "A record: its columns as on the primary (timestamps in RFC 3339 with \
                 microseconds) and `sync`",
            ))
            .property("id", uuid())
            .required("id")
            .property("sync", RefOr::Ref(Ref::from_schema_name(Sync::name())))
            .required("sync")
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .into()
    }
}

impl ToSchema for Record {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Sync::name().into_owned(), Sync::schema()));
        <Sync as ToSchema>::schemas(schemas);
    }
}

/// `GET /executed_obs_units/{id}`'s answer: one [`Record`] for a UUID, a list of them for
/// an integer id (an obs unit's executed units, as the original's path answered).
pub struct RecordOrList;

impl PartialSchema for RecordOrList {
    fn schema() -> RefOr<Schema> {
        let record = || RefOr::Ref(Ref::from_schema_name(Record::name()));
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(record())
            .item(utoipa::openapi::schema::ArrayBuilder::new().items(record()))
            .description(Some(
                "The record for a UUID id; for an integer id, a list of them",
            ))
            .into()
    }
}

impl ToSchema for RecordOrList {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Record::name().into_owned(), Record::schema()));
        <Record as ToSchema>::schemas(schemas);
    }
}

/// A UUID, as its schema.
pub fn uuid() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .into()
}

/// The state of the last transaction that wrote a record.
#[derive(ToSchema)]
pub struct Sync {
    pub state: TxState,
    /// `null` once the replica has it and the buffer has forgotten the writer.
    pub transaction_id: Option<Uuid>,
    /// The commit's LSN on the primary, once forwarded.
    pub lsn: Option<String>,
}

/// A transaction's lifecycle: from the buffer (`source: buffer`, every field) while Redis
/// keeps it, then from the ledger (`source: ledger`: `op`, `applied_at`).
#[derive(ToSchema)]
pub struct Lifecycle {
    pub transaction_id: Uuid,
    pub state: TxState,
    /// The operation's name, e.g. `executed_obs_units.start`.
    pub op: Option<String>,
    /// `buffer` or `ledger`.
    pub source: String,
    pub buffered_at: Option<String>,
    pub forwarded_at: Option<String>,
    pub replicated_at: Option<String>,
    pub dead_at: Option<String>,
    pub commit_lsn: Option<String>,
    /// Why the primary rejected it, if dead.
    pub reason: Option<String>,
    pub sqlstate: Option<String>,
    pub attempts: Option<u64>,
    /// From the ledger: when the primary applied it.
    pub applied_at: Option<String>,
    /// A `POST /transactions` transaction's steps, while the buffer keeps its lifecycle.
    pub steps: Option<Vec<StepSummary>>,
}

/// One step of a `POST /transactions` transaction, in its lifecycle.
#[derive(ToSchema)]
pub struct StepSummary {
    pub step_id: String,
    /// `create`, `update`, `delete`, `bulk_create` or `bulk_update`.
    pub op: String,
    pub table: String,
    /// The row's key (steps of one row).
    #[schema(value_type = Option<Object>)]
    pub id: Option<Value>,
    /// How many rows (bulk steps).
    pub rows: Option<u64>,
}

/// The answer to `POST /transactions`: one transaction, the rows of each step.
#[derive(ToSchema)]
pub struct TransactionAck {
    pub transaction_id: Uuid,
    /// `buffered`; with `?wait=`, how far the transaction got.
    pub status: TxState,
    /// Per `step_id`: `{"id": key}` for a step of one row, `{"ids": [keys]}` for a bulk
    /// step (in row order). Keys are UUIDs made at the summit, or the keys given.
    #[schema(value_type = Object)]
    pub steps: Value,
}

#[derive(ToSchema)]
pub struct Killed {
    pub killed: String,
}

#[derive(ToSchema)]
pub struct Retried {
    pub retried: String,
    /// Its new id in the buffer's stream.
    pub stream_id: String,
}

#[derive(ToSchema)]
pub struct Dropped {
    pub dropped: String,
}
