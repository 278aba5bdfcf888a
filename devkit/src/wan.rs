//! `/admin/wan`: the emulated WAN of `dev` on the admin API. Mounted through
//! [`Application::with_admin_routes`](ops_db_service::startup::Application::with_admin_routes),
//! so the service's facade knows nothing of an emulated link; the service puts these
//! routes behind its admin scope.
//!
//! - `GET /admin/wan`: the link's mode, delay and traffic
//! - `POST /admin/wan/cut|blackhole|heal`
//! - `PUT /admin/wan/delay {"one_way": "125ms"}`

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use ops_db_service::ops::{self, ApiError};
use serde_json::{json, Value};

use crate::fault_proxy::FaultProxy;

/// The routes, bound to `proxy`.
pub fn routes(proxy: FaultProxy) -> Router {
    Router::new()
        .route("/admin/wan", get(status))
        .route("/admin/wan/delay", put(delay))
        .route("/admin/wan/{action}", post(action))
        .with_state(proxy)
}

fn body(proxy: &FaultProxy) -> Value {
    json!({ "mode": proxy.mode(), "stats": proxy.stats() })
}

async fn status(State(proxy): State<FaultProxy>) -> Json<Value> {
    Json(body(&proxy))
}

async fn action(
    State(proxy): State<FaultProxy>,
    Path(action): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match action.as_str() {
        "cut" => proxy.cut(),
        "blackhole" => proxy.blackhole(),
        "heal" => proxy.heal(),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_action",
                "the WAN takes cut, blackhole or heal",
            )
            .with_field("action"))
        }
    }
    tracing::warn!(%action, "emulated WAN changed");
    Ok(Json(body(&proxy)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayBody {
    #[serde(with = "humantime_serde")]
    one_way: std::time::Duration,
}

async fn delay(
    State(proxy): State<FaultProxy>,
    raw: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let request: DelayBody = ops::decode(&raw)?;
    proxy.set_delay(request.one_way);
    Ok(Json(body(&proxy)))
}
