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
    let Some(buffer) = state.buffer.get() else {
        let _ = reply.send(Err(IngestError::Unavailable(
            "buffer actor not running".into(),
        )));
        return;
    };
    let write = match prepare(state, &w) {
        Ok(write) => write,
        Err(err) => {
            let _ = reply.send(Err(err));
            return;
        }
    };
    if let Err(err) = buffer.cast(BufferMsg::Write(WriteRequest { write, reply })) {
        // The reply port went down with the message; the caller sees its call fail.
        tracing::warn!(error = %err, "buffer actor gone, write refused");
    }
}

/// Builds the transaction (checked against the registry) and serialises, once, everything
/// the buffer script needs.
pub fn prepare(state: &IngestArgs, w: &Write) -> Result<PreparedWrite, IngestError> {
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
    } = builder::build(
        op,
        &state.site,
        Utc::now(),
        &state.presets,
        registry.as_deref(),
        &state.limits,
        &mut Uuid::now_v7,
    )?;
    serialise(state, w, tx, created, response, summary).map_err(|err| {
        // Our own types always serialise; if one ever does not, say so loudly.
        tracing::error!(error = %err, op = op.name(), "write could not be serialised, refused");
        IngestError::Internal(format!("serialising the write: {err}"))
    })
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
    };
    let idempotency = match &w.idempotency {
        Some(key) => Some(Idempotent {
            key: key.as_str().to_owned(),
            fingerprint: fingerprint(&w.operation)?,
            answer_json: serde_json::to_string(&ack)?,
        }),
        None => None,
    };
    Ok(PreparedWrite {
        tx_id: tx.id,
        op: w.operation.name(),
        tx_json: serde_json::to_string(&tx)?,
        overlay_json: serde_json::to_string(&overlay)?,
        summary_json: summary.map(|s| s.to_string()),
        idempotency,
        ack,
    })
}

/// Identifies a request's content, so a reused idempotency key with another body is
/// refused instead of answered with an unrelated response.
fn fingerprint(op: &Operation) -> Result<String, serde_json::Error> {
    Ok(hex::encode(Sha256::digest(serde_json::to_vec(op)?)))
}
