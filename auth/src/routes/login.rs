//! `POST /login {client, secret}`: a session token for a registered device.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use lula_protocol::token::{AUDIENCE, Claims, ISSUER};
use serde::{Deserialize, Serialize};

use super::{check_secret, client_id};
use crate::AppState;
use crate::body::Body;
use crate::error::AuthError;
use crate::{provision, sessions};

/// The login request.
#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    /// The registered client id.
    pub client: String,
    /// The secret the device registered with.
    pub secret: String,
    /// Sent by Node lula clients; accepted and ignored (the secret proves the device).
    #[serde(default)]
    pub otp: Option<serde::de::IgnoredAny>,
}

/// The login answer. The three token fields hold the same value, under the
/// names different lula clients read.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    /// The session token (an EdDSA JWT) for lula-hub.
    pub access_token: String,
    /// Same as `access_token`.
    pub session_token: String,
    /// Same as `access_token`.
    pub bearer_token: String,
    /// Seconds the token is valid from now.
    pub ttl_seconds: u64,
    /// When the token expires, epoch milliseconds.
    pub expires_at: u64,
}

/// Logs a device in: 200 with a token, 401 wrong secret, 403 not registered.
pub async fn login(
    State(state): State<Arc<AppState>>,
    Body(req): Body<LoginRequest>,
) -> Result<Json<LoginResponse>, AuthError> {
    let client = client_id(&req.client)?;
    check_secret(&req.secret)?;
    let mut redis = state.redis.clone();
    let record = provision::record(&mut redis, &state.keys, &client).await?;
    let hash = record.secret_hash.ok_or(AuthError::NotRegistered)?;
    if !state.hasher.verify(req.secret, hash).await? {
        return Err(AuthError::WrongSecret);
    }

    state.ensure_key_published().await?;
    let ttl = state.config.token_ttl;
    let now = state.config.clock.epoch_secs();
    let claims = Claims {
        sub: client.clone(),
        sid: B64URL.encode(rand::random::<[u8; 16]>()),
        iat: now,
        exp: now + ttl.as_secs(),
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
    };
    let token = state.signer.sign(&claims).map_err(AuthError::Internal)?;
    sessions::create(&mut redis, &state.keys, &client, &claims.sid, now, ttl).await?;
    tracing::info!(%client, sid = %claims.sid, "logged in");
    Ok(Json(LoginResponse {
        session_token: token.clone(),
        bearer_token: token.clone(),
        access_token: token,
        ttl_seconds: ttl.as_secs(),
        expires_at: claims.exp * 1000,
    }))
}
