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
use crate::domain::{Built, IdempotencyKey, Limits, Operation};
use crate::overlay::{Keys, OverlayWrite};
use crate::slot::Slot;

#[derive(Clone)]
pub struct IngestActor;

#[derive(Clone)]
pub struct IngestArgs {
    pub site: Arc<str>,
    pub keys: Keys,
    pub limits: Limits,
    pub buffer: Slot<BufferMsg>,
}

pub enum IngestMsg {
    Write {
        op: Operation,
        idempotency: Option<IdempotencyKey>,
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
            IngestMsg::Write {
                op,
                idempotency,
                reply,
            } => write(state, op, idempotency, reply),
        }
        Ok(())
    }
}

fn write(
    state: &IngestArgs,
    op: Operation,
    idempotency: Option<IdempotencyKey>,
    reply: RpcReplyPort<Result<Ack, IngestError>>,
) {
    if let Err(err) = op.validate(&state.limits) {
        let _ = reply.send(Err(err.into()));
        return;
    }
    let Some(buffer) = state.buffer.get() else {
        let _ = reply.send(Err(IngestError::Unavailable(
            "buffer actor not running".into(),
        )));
        return;
    };
    let write = match prepare(state, &op, idempotency) {
        Ok(write) => write,
        Err(err) => {
            // Our own types always serialise; if one ever does not, say so loudly.
            tracing::error!(error = %err, op = op.name(), "write could not be serialised, refused");
            let _ = reply.send(Err(IngestError::Internal(format!(
                "serialising the write: {err}"
            ))));
            return;
        }
    };
    if let Err(err) = buffer.cast(BufferMsg::Write(WriteRequest { write, reply })) {
        // The reply port went down with the message; the caller sees its call fail.
        tracing::warn!(error = %err, "buffer actor gone, write refused");
    }
}

/// Builds the transaction and serialises, once, everything the buffer script needs.
pub fn prepare(
    state: &IngestArgs,
    op: &Operation,
    idempotency: Option<IdempotencyKey>,
) -> Result<PreparedWrite, serde_json::Error> {
    let Built {
        tx,
        created,
        response,
    } = op.build(&state.site, Utc::now(), Uuid::now_v7);
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
    let idempotency = match idempotency {
        Some(key) => Some(Idempotent {
            key: key.as_str().to_owned(),
            fingerprint: fingerprint(op)?,
            answer_json: serde_json::to_string(&ack)?,
        }),
        None => None,
    };
    Ok(PreparedWrite {
        tx_id: tx.id,
        op: op.name(),
        tx_json: serde_json::to_string(&tx)?,
        overlay_json: serde_json::to_string(&overlay)?,
        idempotency,
        ack,
    })
}

/// Identifies a request's content, so a reused idempotency key with another body is
/// refused instead of answered with an unrelated response.
fn fingerprint(op: &Operation) -> Result<String, serde_json::Error> {
    Ok(hex::encode(Sha256::digest(serde_json::to_vec(op)?)))
}
