//! The HTTP facade (axum): the original's paths, JSON errors for everything, including
//! the framework's own 404, 405 and 413.

mod admin;
mod auth;
mod dashboard;
mod events;
mod health;
mod paging;
mod reads;
pub mod serve;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ops_db_actors::overlay::Reads;
use ops_db_actors::tree::Tree;
use tower_http::timeout::RequestBodyTimeoutLayer;

pub use auth::Tokens;

use crate::config::Config;
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
    pub write_timeout: Duration,
    /// Every metric, registered once at startup; `/metrics` encodes it.
    pub metrics: Arc<prometheus_client::registry::Registry>,
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

/// The whole HTTP API. `admin_extensions`: routes added by whoever starts the application
/// (`dev` mounts its emulated WAN's there), served behind the admin scope.
pub fn router(state: AppState, admin_extensions: Option<Router>) -> Router {
    let writes = OPERATIONS
        .iter()
        .flat_map(|spec| spec.paths.iter().map(move |path| (*path, spec)))
        .fold(Router::new(), |router, (path, spec)| {
            router.route(path, writes::route(spec))
        })
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_write,
        ));
    let reads = Router::new()
        .route("/transactions/{id}", get(reads::transaction))
        .route("/executed_obs_units", get(reads::executed_obs_units))
        .route("/executed_obs_units/", get(reads::executed_obs_units))
        .route("/executed_obs_units/{id}", get(reads::executed_obs_unit))
        .route("/raw_data_files/{id}", get(reads::raw_data_file))
        .route("/raw_data_package/{id}", get(reads::raw_data_package))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_any,
        ));
    let admin = Router::new()
        .route("/admin/actors/{name}/kill", post(admin::kill_actor))
        .route("/admin/dlq", get(admin::list_dead_letters))
        .route("/admin/dlq/{id}/retry", post(admin::retry_dead_letter))
        .route("/admin/dlq/{id}", delete(admin::drop_dead_letter))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    let open = Router::new()
        .route("/", get(dashboard::page))
        .route(dashboard::SCRIPT_PATH, get(dashboard::script))
        .route(dashboard::STYLE_PATH, get(dashboard::style))
        .route("/ws/events", get(events::ws_events))
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/health/actors", get(health::actors))
        .route("/metrics", get(health::metrics));
    let mut api = Router::new()
        .merge(writes)
        .merge(reads)
        .merge(admin)
        .merge(open)
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
