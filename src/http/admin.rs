//! Admin endpoints (admin scope).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::ops::ApiError;

/// Fault drills: kills an actor of the tree; the supervisor restarts it by its policy.
pub async fn kill_actor(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.config.faults.enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "faults_disabled",
            "fault drills need faults.enabled = true in the config",
        ));
    }
    if state.tree.kill(&name).await {
        Ok(Json(json!({ "killed": name })))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_actor",
            format!("no running actor named {name:?}"),
        )
        .with_field("name"))
    }
}
