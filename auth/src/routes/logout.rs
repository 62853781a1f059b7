//! `POST /logout`: revokes the session of the token given in
//! `Authorization: Bearer`, or in the body as `sessionToken`, `accessToken` or
//! `token`. Hubs refuse the token from then on.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::session_token;
use crate::AppState;
use crate::body::RawBody;
use crate::error::AuthError;
use crate::sessions;

/// The endpoint, with its outcome counted in the metrics.
pub async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, AuthError> {
    let state_for_metrics = state.clone();
    let result = logout_request(State(state), headers, RawBody(body)).await;
    let state = state_for_metrics;
    crate::metrics::AuthMetrics::outcome(&state.metrics.logouts, &result);
    result
}

/// Revokes a session: 200, or 401 when the token is not a valid one.
async fn logout_request(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, AuthError> {
    let token = session_token(&headers, &body)?;
    let mut redis = state.redis.clone();
    let claims = sessions::verify(&mut redis, &state.keys, &state.signer, &token).await?;
    sessions::revoke(&mut redis, &state.keys, &claims.sub, &claims.sid).await?;
    tracing::info!(client = %claims.sub, sid = %claims.sid, "logged out");
    Ok(Json(json!({ "revoked": true })))
}
