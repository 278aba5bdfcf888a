//! IngestActor: validates writes and turns them into transactions for the BufferActor.
//!
//! It never waits for Redis: it hands each prepared write, with the caller's reply port,
//! to the BufferActor and takes the next message. It knows nothing of the forwarder, the
//! replica or the primary (the isolation invariant of `docs/ARCHITECTURE.md`).

use std::sync::Arc;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::buffer::{Ack, BufferMsg, Idempotent, IngestError, PreparedWrite, WriteRequest};
use crate::domain::{builder, Built, IdempotencyKey, Limits, Operation, Presets};
use crate::overlay::{Keys, OverlayWrite};
use crate::references::{self, Outcome, References};
use crate::registry;
use crate::slot::Slot;

/// One write, as both facades hand it to the tree and the tree to the IngestActor: what to
/// write and the client's idempotency key (already scoped to the client).
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub operation: Operation,
    pub idempotency: Option<IdempotencyKey>,
}

#[derive(Clone)]
pub struct IngestActor;

#[derive(Clone)]
pub struct IngestArgs {
    pub site: Arc<str>,
    pub keys: Keys,
    pub limits: Limits,
    pub buffer: Slot<BufferMsg>,
    /// How the fixed operations map onto tables and columns.
    pub presets: Arc<Presets>,
    /// The writable tables' shape, every write is checked against.
    pub registry: registry::Handle,
    /// Referential checks (`None`: off).
    pub references: Option<Arc<References>>,
}

pub enum IngestMsg {
    Write {
        write: Write,
        reply: RpcReplyPort<Result<Ack, IngestError>>,
    },
}

impl Actor for IngestActor {
    type Msg = IngestMsg;
    type State = IngestArgs;
    type Arguments = IngestArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: IngestArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            // Building and serialising a bulk registration (up to thousands of files) or
            // a transaction of many steps takes milliseconds: off the actor's turn, so
            // the single writes queued behind it do not wait for it. (Writes in flight
            // together have no order; a client's next write comes after its answer.)
            IngestMsg::Write { write: w, reply } if w.operation.writes_many() => {
                let state = state.clone();
                tokio::task::spawn_blocking(move || write(&state, w, reply));
            }
            IngestMsg::Write { write: w, reply } => write(state, w, reply),
        }
        Ok(())
    }
}

fn write(state: &IngestArgs, w: Write, reply: RpcReplyPort<Result<Ack, IngestError>>) {
    if let Err(err) = w.operation.validate(&state.limits) {
        let _ = reply.send(Err(err.into()));
        return;
    }
    let (write, parents) = match prepare(state, &w) {
        Ok(prepared) => prepared,
        Err(err) => {
            let _ = reply.send(Err(err));
            return;
        }
    };
    let buffer = state.buffer.clone();
    match (&state.references, parents) {
        (Some(checker), Some(parents)) => {
            // The lookup waits on the read source: never in the actor's turn.
            let checker = Arc::clone(checker);
            tokio::spawn(async move {
                let checked = check(&checker, &w.operation, parents, write).await;
                match checked {
                    Ok(write) => hand_over(&buffer, write, reply),
                    Err(err) => {
                        let _ = reply.send(Err(err));
                    }
                }
            });
        }
        _ => hand_over(&buffer, write, reply),
    }
}

/// The write with its warnings, or the refusal `schema.references = reject` asks for.
async fn check(
    checker: &References,
    op: &Operation,
    parents: Parents,
    mut write: PreparedWrite,
) -> Result<PreparedWrite, IngestError> {
    let Parents { refs, rows } = parents;
    let Outcome::Missing(missing) = checker.check(refs).await else {
        return Ok(write);
    };
    let field = |m: &references::Missing| builder::field_of(op, &rows, m.step, &m.column);
    if checker.mode == references::Mode::Reject {
        let first = &missing[0];
        return Err(IngestError::Invalid(crate::domain::ValidationError::new(
            "unknown_parent",
            field(first),
            first.describe(),
        )));
    }
    write.ack.warnings = missing
        .iter()
        .map(|m| format!("{}: {}", field(m), m.describe()))
        .collect();
    Ok(write)
}

fn hand_over(
    buffer: &Slot<BufferMsg>,
    write: PreparedWrite,
    reply: RpcReplyPort<Result<Ack, IngestError>>,
) {
    let Some(buffer) = buffer.get() else {
        let _ = reply.send(Err(IngestError::Unavailable(
            "buffer actor not running".into(),
        )));
        return;
    };
    if let Err(err) = buffer.cast(BufferMsg::Write(WriteRequest { write, reply })) {
        // The reply port went down with the message; the caller sees its call fail.
        tracing::warn!(error = %err, "buffer actor gone, write refused");
    }
}

/// The parent rows a write names, to look up before it is buffered.
pub struct Parents {
    refs: Vec<(usize, String, references::Parent)>,
    /// Rows per request step, to name the request's field.
    rows: Vec<usize>,
}

/// Builds the transaction (checked against the registry) and serialises, once, everything
/// the buffer script needs.
pub fn prepare(
    state: &IngestArgs,
    w: &Write,
) -> Result<(PreparedWrite, Option<Parents>), IngestError> {
    let op = &w.operation;
    let registry = state.registry.known().then(|| state.registry.current());
    if registry.is_none() && matches!(op, Operation::Transaction(_)) {
        return Err(IngestError::RegistryUnknown);
    }
    let Built {
        tx,
        created,
        response,
        summary,
        rows,
    } = builder::build(
        op,
        &state.site,
        Utc::now(),
        &state.presets,
        registry.as_deref(),
        &state.limits,
        &mut Uuid::now_v7,
    )
    .map_err(|err| preset_misfit(op, err))?;
    let parents = match (&state.references, registry.as_deref()) {
        (Some(_), Some(registry)) => {
            let refs = references::parents(&tx, registry);
            (!refs.is_empty()).then_some(Parents { refs, rows })
        }
        _ => None,
    };
    let write = serialise(state, w, tx, created, response, summary).map_err(|err| {
        // Our own types always serialise; if one ever does not, say so loudly.
        tracing::error!(error = %err, op = op.name(), "write could not be serialised, refused");
        IngestError::Internal(format!("serialising the write: {err}"))
    })?;
    Ok((write, parents))
}

fn serialise(
    state: &IngestArgs,
    w: &Write,
    tx: crate::domain::Transaction,
    created: bool,
    response: serde_json::Value,
    summary: Option<serde_json::Value>,
) -> Result<PreparedWrite, serde_json::Error> {
    let overlay: Vec<OverlayWrite> = tx
        .steps
        .iter()
        .map(|step| OverlayWrite::of_step(&state.keys, step))
        .collect();
    let ack = Ack {
        created,
        body: response,
        replayed: false,
        warnings: Vec::new(),
    };
    let idempotency = match &w.idempotency {
        Some(key) => Some(Idempotent {
            key: key.as_str().to_owned(),
            fingerprint: fingerprint(&w.operation)?,
            answer: crate::body::pack(&serde_json::to_vec(&ack)?),
        }),
        None => None,
    };
    Ok(PreparedWrite {
        tx_id: tx.id,
        op: w.operation.name(),
        tx_body: crate::body::pack(&serde_json::to_vec(&tx)?),
        overlay: overlay_chunks(&overlay)?,
        summary_json: summary.map(|s| s.to_string()),
        idempotency,
        ack,
    })
}

/// The overlay writes as JSON lists of at most `STAGE_RECORDS`, one list at least.
fn overlay_chunks(overlay: &[OverlayWrite]) -> Result<Vec<String>, serde_json::Error> {
    if overlay.is_empty() {
        return Ok(vec!["[]".to_owned()]);
    }
    overlay
        .chunks(crate::overlay::STAGE_RECORDS)
        .map(serde_json::to_string)
        .collect()
}

/// A fixed operation's preset names a table or column the registry does not have: the
/// site's presets do not fit ops-db's schema, which is no fault of the caller's.
fn preset_misfit(op: &Operation, err: crate::domain::ValidationError) -> IngestError {
    let misfit = matches!(err.code, "unknown_table" | "unknown_column");
    if misfit && !matches!(op, Operation::Transaction(_)) {
        tracing::error!(
            op = op.name(),
            error = %err,
            "the preset does not fit ops-db's schema: fix schema.presets (config/presets.toml)"
        );
        return IngestError::PresetMisfit(op.name());
    }
    err.into()
}

/// Identifies a request's content, so a reused idempotency key with another body is
/// refused instead of answered with an unrelated response: the first 128 bits of its
/// SHA-256, in hex (32 characters, stored before the first answer in the idempotency
/// record; telling two bodies under one client's key apart needs no more).
fn fingerprint(op: &Operation) -> Result<String, serde_json::Error> {
    Ok(hex::encode(&Sha256::digest(serde_json::to_vec(op)?)[..16]))
}
