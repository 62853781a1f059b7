//! `POST /renew`: a fresh token for a device whose session is still live, given
//! its current token (`Authorization: Bearer`, or `sessionToken` in the body).
//!
//! A renewal proves the device by its live session instead of its secret, so
//! it costs a signature check, not a bcrypt: a fleet renewing every few minutes
//! stays cheap. The old session is left to expire (its socket moves to the new
//! token with the hub's `renew`); a revoked or expired session cannot renew.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;

use super::login::{LoginResponse, Registration, issue};
use super::session_token;
use crate::AppState;
use crate::body::RawBody;
use crate::error::AuthError;
use crate::sessions;

/// The endpoint, with its outcome counted in the metrics.
pub async fn renew(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<LoginResponse>, AuthError> {
    let state_for_metrics = state.clone();
    let result = renew_request(State(state), headers, RawBody(body)).await;
    let state = state_for_metrics;
    crate::metrics::AuthMetrics::outcome(&state.metrics.renewals, &result);
    result
}

/// Renews a live session: 200 with a new token, 401 when the given token is
/// not a live session's, 403 `not_registered` when the device's secret is gone
/// (revoked or re-provisioned): a live session alone does not keep a revoked
/// device on (see [`issue`]).
async fn renew_request(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<LoginResponse>, AuthError> {
    let token = session_token(&headers, &body)?;
    let mut redis = state.redis.clone();
    let claims = sessions::verify(&mut redis, &state.keys, &state.signer, &token).await?;
    let renewed = issue(&state, &mut redis, &claims.sub, Registration::Any).await?;
    tracing::debug!(client = %claims.sub, from = %claims.sid, "session renewed");
    Ok(Json(renewed))
}
