//! The HTTP facade (axum): the original's paths, JSON errors for everything, including
//! the framework's own 404, 405 and 413.

mod admin;
mod auth;
mod dashboard;
mod docs;
mod events;
mod health;
mod media;
pub mod openapi;
mod paging;
mod reads;
mod resend;
pub mod routes;
pub mod serve;
mod token_source;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use ops_db_actors::overlay::Reads;
use ops_db_actors::tree::Tree;
use tower_http::timeout::RequestBodyTimeoutLayer;

pub use auth::{Tokens, TokensHealth};
use routes::{Access, Routes};
pub use token_source::{Origin as TokenOrigin, Status as TokenSourceStatus};

use crate::config::{Config, Scope};
use crate::operations::OPERATIONS;
use crate::ops::ApiError;
use crate::redis_probe::RedisProbe;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub tree: Arc<Tree>,
    pub config: Arc<Config>,
    pub tokens: Arc<Tokens>,
    pub probe: Arc<RedisProbe>,
    pub reads: Arc<Reads>,
    /// The model registry in use (kept current by the refresher `startup.rs` runs).
    pub registry: ops_db_actors::registry::Handle,
    pub write_timeout: Duration,
    /// Every metric, registered once at startup; `/metrics` encodes it.
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// `events.max_clients`: a websocket client holds one for its life.
    pub events_clients: Arc<tokio::sync::Semaphore>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Every route of the API, by the access it needs: the one place routes are registered.
/// The write routes are the operations table's, every spelling of each path.
pub fn api() -> Vec<Routes> {
    let writes = OPERATIONS
        .iter()
        .flat_map(|spec| spec.paths.iter().map(move |path| (*path, spec)))
        .fold(
            Routes::new(Access::Scope(Scope::Write)),
            |routes, (path, spec)| {
                routes.add_method_router(spec.method.into(), path, writes::route(spec))
            },
        );
    let reads = Routes::new(Access::Scope(Scope::Read))
        .get("/transactions/{id}", reads::transaction)
        .get("/executed_obs_units", reads::executed_obs_units)
        .get("/executed_obs_units/", reads::executed_obs_units)
        .get("/executed_obs_units/{id}", reads::executed_obs_unit)
        .get("/raw_data_files/{id}", reads::raw_data_file)
        .get("/raw_data_package/{id}", reads::raw_data_package);
    // Browsers cannot set headers on a websocket: the handler also takes the token as a
    // subprotocol, so it checks it itself.
    let events =
        Routes::checked_by_handler(Access::Scope(Scope::Read)).get("/ws/events", events::ws_events);
    let admin = Routes::new(Access::Scope(Scope::Admin))
        .post("/admin/actors/{name}/kill", admin::kill_actor)
        .get("/admin/dlq", admin::list_dead_letters)
        .post("/admin/dlq/{id}/retry", admin::retry_dead_letter)
        .delete("/admin/dlq/{id}", admin::drop_dead_letter)
        .post("/admin/resend", resend::resend)
        .post("/admin/history/clear", resend::clear_history);
    let open = Routes::new(Access::Open)
        .get("/", dashboard::page)
        .get(dashboard::SCRIPT_PATH, dashboard::script)
        .get(dashboard::STYLE_PATH, dashboard::style)
        .get(openapi::PATH, openapi::document)
        .get(docs::PAGE_PATH, docs::page)
        .get(docs::SCRIPT_PATH, docs::script)
        .get(docs::BUNDLE_PATH, docs::bundle)
        .get(docs::STYLE_PATH, docs::style)
        .get("/health", health::health)
        .get("/health/live", health::live)
        .get("/health/ready", health::ready)
        .get("/health/actors", health::actors)
        .get("/metrics", health::metrics);
    vec![writes, reads, events, admin, open]
}

/// `routes` behind the middleware of their access.
fn guarded(routes: Routes, state: &AppState) -> Router<AppState> {
    if routes.checked_by_handler {
        return routes.router;
    }
    let state = state.clone();
    match routes.access {
        Access::Open => routes.router,
        Access::Scope(Scope::Read) => routes
            .router
            .route_layer(middleware::from_fn_with_state(state, auth::require_read)),
        Access::Scope(Scope::Write) => routes
            .router
            .route_layer(middleware::from_fn_with_state(state, auth::require_write)),
        Access::Scope(Scope::Admin) => routes
            .router
            .route_layer(middleware::from_fn_with_state(state, auth::require_admin)),
    }
}

/// The whole HTTP API. `admin_extensions`: routes added by whoever starts the application
/// (`dev` mounts its emulated WAN's there), served behind the admin scope and not part of
/// the OpenAPI document.
pub fn router(state: AppState, admin_extensions: Option<Router>) -> Router {
    let mut api = api()
        .into_iter()
        .fold(Router::new(), |api, routes| {
            api.merge(guarded(routes, &state))
        })
        .with_state(state.clone());
    if let Some(extensions) = admin_extensions {
        api = api.merge(extensions.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        )));
    }
    api.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.http.body_limit_bytes))
        // A body trickled slower than this is cut off (a slow-loris body holds no slot).
        .layer(RequestBodyTimeoutLayer::new(state.config.http.body_timeout))
}

/// A compiled-in page or asset (the dashboard's, the API docs'): never cached stale (the
/// assets change with the binary), under the page's content-security-policy.
fn static_asset(content_type: &'static str, policy: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, policy),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// The service's own Redis connection for reads, `?wait=` and the admin endpoints (never
/// the ingest path's): 503 with `Retry-After` when Redis does not answer.
async fn redis(state: &AppState) -> Result<redis::aio::MultiplexedConnection, ApiError> {
    state
        .probe
        .conn()
        .await
        .map_err(|e| ApiError::redis_unavailable(&e))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}
