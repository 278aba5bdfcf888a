//! The write paths of the document: one operation for every path of every row of the
//! operations table, with the row's request body schema. A path after a row's first is a
//! spelling the original also accepted, documented as such.

use ops_db_actors::domain::{schema, OperationKind};
use utoipa::openapi::content::Content;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::{
    Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::openapi::{OpenApi, Ref, RefOr, Required};
use utoipa::{IntoParams, ToSchema};

use super::schemas::{uuid, BulkWriteAck, TransactionAck, WriteAck};
use super::{add_schemas, error_response, http_method};
use crate::http::routes::Method;
use crate::http::writes::{WaitFor, WaitQuery, IDEMPOTENCY_KEY};
use crate::operations::{OperationSpec, OPERATIONS};

/// Adds every row's paths and the schemas their bodies and answers name.
pub fn add(doc: &mut OpenApi) {
    // `?wait=`'s parameter refers to it; `meta` (and `POST /transactions`' json columns)
    // to the other.
    named::<WaitFor>(doc);
    add_schemas(
        doc,
        [(
            schema::JSON_VALUE.to_owned(),
            RefOr::T(schema::json_value()),
        )],
    );
    for spec in &OPERATIONS {
        let body = (spec.schema)();
        add_schemas(doc, body.named);
        let ack = match spec.kind {
            OperationKind::BulkCreateRawDataFiles => named::<BulkWriteAck>(doc),
            OperationKind::StartExecutedObsUnit
            | OperationKind::FinishExecutedObsUnit
            | OperationKind::CreateRawDataFile
            | OperationKind::CreateRawDataPackage
            | OperationKind::FinalizeRawDataPackage => named::<WriteAck>(doc),
            OperationKind::Transaction => named::<TransactionAck>(doc),
        };
        for (i, path) in spec.paths.iter().enumerate() {
            let operation = operation(spec, i, body.schema.clone(), body.required, &ack);
            let method = http_method(Method::from(spec.method));
            doc.paths.add_path_operation(path, vec![method], operation);
        }
    }
}

/// The bodies of the bulk registrations in a served document (JSON): at most `max_files`
/// files, as configured (`buffer.max_bulk_files`; more are `422 too_many_files`).
pub fn bound_bulk(doc: &mut serde_json::Value, max_files: usize) {
    let bulk = OPERATIONS
        .iter()
        .filter(|spec| spec.kind == OperationKind::BulkCreateRawDataFiles);
    for spec in bulk {
        let method = spec.method.as_str().to_lowercase();
        for path in spec.paths {
            let body = &mut doc["paths"][*path][&method]["requestBody"]["content"]
                ["application/json"]["schema"];
            if body.is_object() {
                body["maxItems"] = serde_json::json!(max_files);
            }
        }
    }
}

/// A reference to `T`'s schema, which the document then holds (with what it refers to).
fn named<T: ToSchema>(doc: &mut OpenApi) -> RefOr<utoipa::openapi::schema::Schema> {
    let mut named = vec![(T::name().into_owned(), T::schema())];
    T::schemas(&mut named);
    add_schemas(doc, named);
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

fn operation(
    spec: &OperationSpec,
    index: usize,
    body: RefOr<utoipa::openapi::schema::Schema>,
    required: bool,
    ack: &RefOr<utoipa::openapi::schema::Schema>,
) -> Operation {
    let (id, summary, description) = if index == 0 {
        (spec.name().to_owned(), spec.summary.to_owned(), None)
    } else {
        (
            format!("{}_alias{index}", spec.name()),
            format!("{} (another spelling)", spec.summary),
            Some(format!(
                "The same operation as `{} {}`, at a spelling the original also accepted.",
                spec.method.as_str(),
                spec.path()
            )),
        )
    };
    let json = |schema| Content::new(Some(schema));
    let request = RequestBodyBuilder::new()
        .content("application/json", json(body))
        .required(Some(if required {
            Required::True
        } else {
            Required::False
        }))
        .description((!required).then_some("May be empty: nothing is required"));
    let (status, what) = if spec.kind.needs_id() {
        ("200", "Acknowledged: durable in the local buffer")
    } else {
        ("201", "Created: durable in the local buffer")
    };
    let ok = ResponseBuilder::new()
        .description(format!(
            "{what}. A repeated `Idempotency-Key` with the same request gets the first answer again"
        ))
        .content("application/json", json(ack.clone()))
        .build();
    let waited = ResponseBuilder::new()
        .description(
            "`?wait=`'s timeout came first: the write is durable, `status` says how far it got",
        )
        .content("application/json", json(ack.clone()))
        .build();
    OperationBuilder::new()
        .tag("writes")
        .operation_id(Some(id))
        .summary(Some(summary))
        .description(description)
        .parameters(Some(parameters(spec)))
        .request_body(Some(request.build()))
        .response(status, ok)
        .response("202", waited)
        .response("400", error_response(
            "`malformed_json`, `unreadable_body`, `invalid_query` (`wait`, `timeout`), `invalid_idempotency_key`",
        ))
        .response("413", error_response("`body_too_large`: over `http.body_limit_bytes`"))
        .response("415", error_response(
            "`unsupported_media_type`: a body declared as anything but JSON (none is read as JSON)",
        ))
        .response("422", error_response(
            "`missing_field`, `unknown_field`, `invalid_field`, `invalid_value`, `invalid_checksum`, \
             `invalid_id`, `idempotency_key_reused`, `too_many_files` (bulk); for `/transactions` also `unknown_table`, \
             `unknown_column`, `missing_value`, `unexpected_field`, `unknown_reference`, \
             `invalid_reference`, `duplicate_step_id`, `too_many_steps`, `too_many_rows`; \
             `field` names the part at fault (`steps[2].values.name`)",
        ))
        .response("500", error_response(
            "`internal_error`, or `preset_misfit` (this endpoint's preset, `schema.presets`, \
             names a table or column ops-db does not have): nothing was stored",
        ))
        .response("503", unavailable())
        .build()
}

fn parameters(spec: &OperationSpec) -> Vec<Parameter> {
    let mut parameters = Vec::new();
    if spec.kind.needs_id() {
        parameters.push(
            ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some("The record to change"))
                .schema(Some(uuid()))
                .build(),
        );
    }
    parameters.extend(WaitQuery::into_params(|| Some(ParameterIn::Query)));
    parameters.push(
        ParameterBuilder::new()
            .name(IDEMPOTENCY_KEY)
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "1 to 255 visible ASCII characters: a retry with the same key gets the first \
                 answer instead of a second write",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[!-~]{1,255}$"))
                    .build(),
            ))
            .build(),
    );
    parameters
}

/// 503: not acknowledged; `stored` says whether it may have been stored.
fn unavailable() -> Response {
    let mut response = error_response(
        "Not acknowledged: `buffer_unavailable` (Redis did not take or did not answer the \
         write; retry after 1 s), `buffer_full` (30 s), `registry_unavailable`, \
         `too_many_connections`. `stored` is `false` when nothing was stored (a retry \
         without an `Idempotency-Key` is safe) or `\"unknown\"` when the write may have been \
         stored: retry with the same `Idempotency-Key`, which answers with the first \
         acknowledgement if it was. Retrying any 503 with the same key is always safe.",
    );
    response.headers.insert(
        "Retry-After".to_owned(),
        Header::new(Object::with_type(Type::Integer)),
    );
    response
}
