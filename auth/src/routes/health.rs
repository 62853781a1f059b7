//! `GET /healthz`: 200 while Redis answers, 503 otherwise, so a load balancer
//! stops sending logins to an instance that cannot record sessions.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::AuthError;

/// Pings Redis.
pub async fn healthz(State(state): State<Arc<AppState>>) -> Result<Json<Value>, AuthError> {
    redis::cmd("PING")
        .query_async::<()>(&mut state.redis.clone())
        .await?;
    Ok(Json(json!({ "status": "ok" })))
}
