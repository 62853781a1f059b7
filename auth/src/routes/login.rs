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
use crate::throttle::{self, Action, Attempt, Peer};
use crate::{provision, sessions};
use lula_protocol::ClientId;

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

/// The endpoint, with its outcome counted in the metrics.
pub async fn login(
    State(state): State<Arc<AppState>>,
    Peer(addr): Peer,
    Body(req): Body<LoginRequest>,
) -> Result<Json<LoginResponse>, AuthError> {
    let state_for_metrics = state.clone();
    let result = login_request(State(state), Peer(addr), Body(req)).await;
    let state = state_for_metrics;
    crate::metrics::AuthMetrics::outcome(&state.metrics.logins, &result);
    if matches!(result, Err(AuthError::RateLimited { .. })) {
        state
            .metrics
            .rate_limited
            .get_or_create(&[("action", "login")])
            .inc();
    }
    result
}

/// Logs a device in: 200 with a token, 401 wrong secret, 403 not registered,
/// 429 after too many failures for the client or from the address.
async fn login_request(
    State(state): State<Arc<AppState>>,
    Peer(addr): Peer,
    Body(req): Body<LoginRequest>,
) -> Result<Json<LoginResponse>, AuthError> {
    let client = client_id(&req.client)?;
    check_secret(&req.secret)?;
    let attempt = Attempt {
        action: Action::Login,
        client: Some(&client),
        addr,
    };
    let mut redis = state.redis.clone();
    let limits = state.config.limits;
    let reservation = throttle::reserve(&mut redis, &state.keys, &limits, &attempt).await?;
    let result = log_in(&state, &mut redis, &client, req.secret).await;
    reservation.settle(&mut redis, &result).await?;
    result.map(Json)
}

async fn log_in(
    state: &AppState,
    redis: &mut lula_runtime::redis::RedisConn,
    client: &ClientId,
    secret: String,
) -> Result<LoginResponse, AuthError> {
    let record = provision::record(redis, &state.keys, client).await?;
    let Some(hash) = record.secret_hash else {
        // As long as a wrong secret takes: the answer differs, the time does not.
        state.hasher.burn(secret).await?;
        return Err(AuthError::NotRegistered);
    };
    if !state.hasher.verify(secret, hash).await? {
        return Err(AuthError::WrongSecret);
    }
    issue(state, redis, client).await
}

/// Starts a new session of `client` and signs its token.
pub(crate) async fn issue(
    state: &AppState,
    redis: &mut lula_runtime::redis::RedisConn,
    client: &ClientId,
) -> Result<LoginResponse, AuthError> {
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
    sessions::create(redis, &state.keys, client, &claims.sid, now, ttl).await?;
    tracing::info!(%client, sid = %claims.sid, "logged in");
    Ok(LoginResponse {
        session_token: token.clone(),
        bearer_token: token.clone(),
        access_token: token,
        ttl_seconds: ttl.as_secs(),
        expires_at: claims.exp * 1000,
    })
}
