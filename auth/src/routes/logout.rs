//! `POST /logout`: revokes the session of the token given in
//! `Authorization: Bearer`, or in the body as `sessionToken`, `accessToken` or
//! `token`. Hubs refuse the token from then on.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::body::{RawBody, decode};
use crate::error::AuthError;
use crate::sessions;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogoutRequest {
    session_token: Option<String>,
    access_token: Option<String>,
    token: Option<String>,
}

/// Revokes a session: 200, or 401 when the token is not a valid one.
pub async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, AuthError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let token = match bearer {
        Some(t) => t,
        None if body.iter().all(u8::is_ascii_whitespace) => return Err(AuthError::MissingToken),
        None => {
            let req: LogoutRequest = decode(&headers, &body)?;
            req.session_token
                .or(req.access_token)
                .or(req.token)
                .ok_or(AuthError::MissingToken)?
        }
    };
    let mut redis = state.redis.clone();
    let claims = sessions::verify(&mut redis, &state.keys, &state.signer, &token).await?;
    sessions::revoke(&mut redis, &state.keys, &claims.sub, &claims.sid).await?;
    tracing::info!(client = %claims.sub, sid = %claims.sid, "logged out");
    Ok(Json(json!({ "revoked": true })))
}
