//! `GET /openapi.json`: the HTTP API as an OpenAPI 3.1 document, generated from the code
//! when first asked for, then kept.
//!
//! Where each part comes from:
//! - the write paths, from the operations table (every path of every row) with each row's
//!   request type's schema (`writes.rs`);
//! - every other path, from the `#[utoipa::path]` on its handler, listed in [`Annotated`];
//! - request and answer schemas, from the types themselves (`ToSchema`: the request types
//!   of `ops-db-actors`, `ErrorBody`, `TxState`, dead letters, actor health); the answers
//!   the handlers build as JSON values, from the descriptions in `schemas.rs`;
//! - each route's security (bearer, and its scope in the description), from the access
//!   its route was registered with (`routes.rs`): what its middleware checks.
//!
//! The router's table and the document's operations are the same set (a test of this
//! module checks both ways). The routes `dev` mounts (`/admin/wan`) are not part of the
//! service, so not of its document.

pub mod schemas;
#[cfg(test)]
mod tests;
mod transactions;
mod writes;

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use ops_db_actors::domain::TransactionRequest;
use utoipa::openapi::content::Content;
use utoipa::openapi::path::{HttpMethod, Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Components, OpenApi, Ref, RefOr};
use utoipa::{OpenApi as _, ToSchema};

use super::routes::{Access, Method, Route};
use super::AppState;
use crate::ops::{ApiError, ErrorBody};

pub const PATH: &str = "/openapi.json";

/// The name of the security scheme.
const BEARER: &str = "bearer";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "ops-db-api",
        description = "The operations-database service of the observatory's summit: writes are made \
            durable in a local buffer before they are acknowledged, then forwarded to the primary. \
            Every error is JSON: `{\"error\": {\"code\", \"message\", \"field\"}}` (schema `Error`); \
            an unknown path is `404 not_found`, a method a path does not take `405 \
            method_not_allowed`. Tokens: `Authorization: Bearer <token>`; each operation says \
            which scope it needs. A token no source knows while a token source (the tokens \
            file, the `api_token` table) has not been read since start nor has a stored copy: \
            `503 token_source_unavailable` with `Retry-After` (retry later), not `401`."
    ),
    paths(
        super::reads::transaction,
        super::reads::executed_obs_units,
        super::reads::executed_obs_unit,
        super::reads::raw_data_file,
        super::reads::raw_data_package,
        super::events::ws_events,
        super::admin::kill_actor,
        super::admin::list_dead_letters,
        super::admin::retry_dead_letter,
        super::admin::drop_dead_letter,
        super::resend::resend,
        super::resend::clear_history,
        super::health::health,
        super::health::live,
        super::health::ready,
        super::health::actors,
        super::health::metrics,
        super::dashboard::page,
        super::dashboard::script,
        super::dashboard::style,
        super::docs::page,
        super::docs::script,
        super::docs::bundle,
        super::docs::style,
        document,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "writes", description = "Writes, from the operations table; durable when acknowledged"),
        (name = "reads", description = "Records from the local replica merged with what is buffered"),
        (name = "events", description = "The site's events"),
        (name = "admin", description = "Dead letters, resends and fault drills"),
        (name = "health", description = "Health, readiness, metrics"),
        (name = "ui", description = "The dashboard, this document and its browser"),
    )
)]
struct Annotated;

/// Paths the router also answers at a second spelling: (alias, documented path).
const ALIASES: [(&str, &str); 1] = [("/executed_obs_units/", "/executed_obs_units")];

/// The whole document.
pub fn build() -> OpenApi {
    let mut doc = Annotated::openapi();
    writes::add(&mut doc);
    for (alias, path) in ALIASES {
        add_alias(&mut doc, alias, path);
    }
    doc.components
        .get_or_insert_with(Components::new)
        .add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token (`ops-db-api token create` or `token new`) with the scope the operation names: write, read or admin",
                    ))
                    .build(),
            ),
        );
    let table: Vec<Route> = super::api()
        .iter()
        .flat_map(|routes| routes.table().to_vec())
        .collect();
    for route in &table {
        if let Some(operation) = operation_mut(&mut doc, route.method, route.path) {
            apply_access(operation, route.access);
        }
    }
    doc
}

/// The document as built from the code, once.
static DOCUMENT: LazyLock<Result<serde_json::Value, String>> =
    LazyLock::new(|| serde_json::to_value(build()).map_err(|e| e.to_string()));

/// The document as served: the most files of a bulk registration as configured
/// (`buffer.max_bulk_files`), and `POST /transactions`' body as the live model registry
/// makes it (`transactions.rs`), once one is known.
fn served(state: &AppState) -> Result<serde_json::Value, String> {
    let mut doc = DOCUMENT.clone()?;
    let max_files = state.config.buffer.max_bulk_files;
    writes::bound_bulk(&mut doc, max_files);
    if state.registry.known() {
        let registry = state.registry.current();
        doc["components"]["schemas"][TransactionRequest::name().as_ref()] =
            transactions::request(&registry, max_files);
    }
    Ok(doc)
}

/// This document
#[utoipa::path(get, path = "/openapi.json", tag = "ui", operation_id = "openapi",
    responses(
        (status = 200, description = "The HTTP API as OpenAPI 3.1", content_type = "application/json"),
        (status = 500, description = "`internal_error`: the document could not be built", body = ErrorBody),
    ))]
pub async fn document(State(state): State<AppState>) -> Response {
    match served(&state) {
        Ok(doc) => (
            [(header::CONTENT_TYPE, "application/json")],
            doc.to_string(),
        )
            .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "the OpenAPI document could not be serialised");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the OpenAPI document could not be built",
            )
            .into_response()
        }
    }
}

/// `alias` answers what `path` does: the same operations, each with an id of its own.
fn add_alias(doc: &mut OpenApi, alias: &str, path: &str) {
    let Some(mut item) = doc.paths.paths.get(path).cloned() else {
        return;
    };
    for operation in operations_mut(&mut item) {
        operation.operation_id = operation
            .operation_id
            .take()
            .map(|id| format!("{id}_alias"));
        operation.summary = operation
            .summary
            .take()
            .map(|summary| format!("{summary} (another spelling)"));
        operation.description = Some(format!("The same as `{path}`."));
    }
    doc.paths.paths.insert(alias.to_owned(), item);
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

pub(super) fn http_method(method: Method) -> HttpMethod {
    match method {
        Method::Get => HttpMethod::Get,
        Method::Post => HttpMethod::Post,
        Method::Put => HttpMethod::Put,
        Method::Delete => HttpMethod::Delete,
    }
}

fn operation_mut<'a>(
    doc: &'a mut OpenApi,
    method: Method,
    path: &str,
) -> Option<&'a mut Operation> {
    let item = doc.paths.paths.get_mut(path)?;
    match method {
        Method::Get => item.get.as_mut(),
        Method::Post => item.post.as_mut(),
        Method::Put => item.put.as_mut(),
        Method::Delete => item.delete.as_mut(),
    }
}

/// The operation's security, the scope named in its description, its 401 and 403.
fn apply_access(operation: &mut Operation, access: Access) {
    let (security, note) = match (access, access.scope_name()) {
        (Access::Open, _) => (None, "No token needed.".to_owned()),
        (_, Some(scope)) => (
            Some(SecurityRequirement::new(BEARER, [scope])),
            format!("Needs a bearer token with the scope `{scope}`."),
        ),
        (_, None) => (
            Some(SecurityRequirement::new(BEARER, Vec::<String>::new())),
            "Needs a bearer token: any valid token.".to_owned(),
        ),
    };
    operation.description = Some(match operation.description.take() {
        Some(text) if !text.is_empty() => format!("{text}\n\n{note}"),
        _ => note,
    });
    let Some(security) = security else {
        return;
    };
    operation.security = Some(vec![security]);
    let responses = &mut operation.responses.responses;
    responses.entry("401".to_owned()).or_insert_with(|| {
        RefOr::T(error_response(
            "`unauthorized`: no token, or not a valid one (with `WWW-Authenticate: Bearer`)",
        ))
    });
    if access.scope_name().is_some() {
        responses
            .entry("403".to_owned())
            .or_insert_with(|| RefOr::T(error_response("`forbidden`: the token lacks the scope")));
    }
}

/// An error answer: `description` (its codes) and the `Error` body.
pub(super) fn error_response(description: &str) -> utoipa::openapi::response::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(RefOr::Ref(Ref::from_schema_name(ErrorBody::name())))),
        )
        .build()
}

/// Adds named schemas to the document's components.
pub(super) fn add_schemas(
    doc: &mut OpenApi,
    named: impl IntoIterator<Item = (String, RefOr<utoipa::openapi::schema::Schema>)>,
) {
    doc.components
        .get_or_insert_with(Components::new)
        .schemas
        .extend(named);
}

/// Every `$ref` of a served document (as JSON), and those of them that do not resolve
/// within it: one check for this crate's tests and the integration test of `/openapi.json`.
pub fn references(doc: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    fn walk(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(target)) = map.get("$ref") {
                    found.push(target.clone());
                }
                map.values().for_each(|v| walk(v, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(doc, &mut found);
    let unresolved = found
        .iter()
        .filter(|t| t.strip_prefix('#').and_then(|p| doc.pointer(p)).is_none())
        .cloned()
        .collect();
    (found, unresolved)
}
