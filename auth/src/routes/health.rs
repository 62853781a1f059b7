//! `GET /healthz` (liveness: the process serves requests) and `GET /readyz`
//! (readiness: Redis answers and the service is not draining), so a load
//! balancer stops sending logins to an instance that cannot record sessions
//! or is about to stop, while an orchestrator does not restart it for an
//! outage of Redis it cannot fix.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::AuthError;

/// Liveness.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: not draining, and Redis answers.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Value>, AuthError> {
    if state.draining.is_cancelled() {
        return Err(AuthError::Draining);
    }
    redis::cmd("PING")
        .query_async::<()>(&mut state.redis.clone())
        .await?;
    Ok(Json(json!({ "status": "ready" })))
}
