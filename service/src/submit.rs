//! Submitting a write, for both facades: the request as a facade received it
//! ([`Received`]) becomes the one request type the tree carries to the buffer
//! ([`Write`]); its answer becomes a status code. This is where the ingest latency
//! (`opsdb_ingest_duration_seconds{op,status}`) is recorded.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use ops_db_actors::buffer::Ack;
use ops_db_actors::domain::OperationKind;
use ops_db_actors::ingest::Write;
use ops_db_actors::tree::Tree;

use crate::operations;
use crate::ops::{parse_idempotency_key, ApiError};

/// A write as a facade received it, before anything is parsed.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub kind: OperationKind,
    /// The path's record id (updates).
    pub id: Option<&'a str>,
    pub body: &'a [u8],
    /// The `Idempotency-Key` as sent (an HTTP header may hold any bytes).
    pub idempotency_key: Option<&'a [u8]>,
    /// The name of the token it came with: idempotency keys are the client's own, another
    /// client's same key is another request.
    pub client: &'a str,
}

impl Received<'_> {
    /// The write it asks for: the key checked first, then the body by the operation's row.
    pub fn parse(&self) -> Result<Write, ApiError> {
        let idempotency = self
            .idempotency_key
            .map(parse_idempotency_key)
            .transpose()?
            .map(|key| key.for_client(self.client));
        let operation = operations::parse(self.kind, self.id, self.body)?;
        Ok(Write {
            operation,
            idempotency,
        })
    }
}

/// Parses and submits one write; the answer's status and acknowledgement.
pub async fn submit(
    tree: &Tree,
    timeout: Duration,
    received: Received<'_>,
) -> Result<(StatusCode, Ack), ApiError> {
    let started = Instant::now();
    let answer = async {
        let write = received.parse()?;
        let ack = tree.ingest(write, timeout).await?;
        let status = if ack.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, ack))
    }
    .await;
    let status = answer
        .as_ref()
        .map_or_else(|e: &ApiError| e.status, |(s, _)| *s);
    tree.ingest_metrics
        .observe(received.kind.name(), status.as_u16(), started.elapsed());
    answer
}
