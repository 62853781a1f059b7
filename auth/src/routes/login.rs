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
    check_secret(&req.secret, state.config.min_secret_len)?;
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
    if !state.hasher.verify(secret, hash.clone()).await? {
        return Err(AuthError::WrongSecret);
    }
    issue(state, redis, client, Registration::Hash(&hash)).await
}

/// What the device proved, which must still hold once its session exists.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Registration<'a> {
    /// It knows the secret of this stored bcrypt hash (`/login`).
    Hash(&'a str),
    /// It holds a live session; any registered secret will do (`/renew`).
    Any,
}

/// Starts a new session of `client` and signs its token, unless the device
/// stopped being registered as `registration` says meanwhile.
///
/// `lula-auth revoke` (and `provision --force`) removes the secret *before* it
/// lists the device's sessions to end them; this creates the session *before*
/// it reads the secret again. So either revoke's listing sees this session and
/// ends it, or this read sees the secret gone (or replaced by a new
/// registration's) and the session is ended here: a login whose bcrypt ran
/// while the device was revoked cannot leave a live session behind. The
/// answer is then 403 `not_registered`, what the next login would get too: the
/// device must be provisioned again, and a 401 would only invite a retry.
pub(crate) async fn issue(
    state: &AppState,
    redis: &mut lula_runtime::redis::RedisConn,
    client: &ClientId,
    registration: Registration<'_>,
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
    let current: Option<String> = redis::cmd("HGET")
        .arg(state.keys.client(client))
        .arg(lula_protocol::keys::fields::SECRET)
        .query_async(redis)
        .await?;
    let still_registered = match (registration, current.as_deref()) {
        (_, None) => false,
        (Registration::Any, Some(_)) => true,
        (Registration::Hash(verified), Some(stored)) => verified == stored,
    };
    if !still_registered {
        sessions::revoke(redis, &state.keys, client, &claims.sid).await?;
        tracing::info!(%client, sid = %claims.sid, "not registered any more; session ended");
        return Err(AuthError::NotRegistered);
    }
    tracing::info!(%client, sid = %claims.sid, "logged in");
    Ok(LoginResponse {
        session_token: token.clone(),
        bearer_token: token.clone(),
        access_token: token,
        ttl_seconds: ttl.as_secs(),
        expires_at: claims.exp * 1000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lula_testkit::RedisServer;

    async fn session_keys(state: &AppState) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(state.keys.session("*"))
            .query_async(&mut state.redis.clone())
            .await
            .unwrap()
    }

    async fn set_secret(state: &AppState, client: &ClientId, hash: Option<&str>) {
        let mut cmd = redis::cmd(if hash.is_some() { "HSET" } else { "HDEL" });
        cmd.arg(state.keys.client(client))
            .arg(lula_protocol::keys::fields::SECRET);
        if let Some(h) = hash {
            cmd.arg(h);
        }
        cmd.query_async::<()>(&mut state.redis.clone())
            .await
            .unwrap();
    }

    /// The race with `lula-auth revoke`, played in the order that used to
    /// lose: the bcrypt checked hash H1, then revoke removed the secret (and
    /// listed no session yet to end), then the session is issued.
    #[tokio::test]
    async fn a_session_issued_after_the_secret_went_is_ended_and_refused() {
        let redis = RedisServer::start();
        let state = AppState::new(crate::Config {
            bcrypt_cost: 4,
            ..crate::Config::new(redis.url())
        })
        .unwrap();
        let client: ClientId = "dev-1".parse().unwrap();
        let mut conn = state.redis.clone();
        set_secret(&state, &client, Some("H1")).await;
        issue(&state, &mut conn, &client, Registration::Hash("H1"))
            .await
            .unwrap();
        let live = session_keys(&state).await;
        assert_eq!(live.len(), 1);

        // Revoked while the login's bcrypt ran.
        set_secret(&state, &client, None).await;
        for registration in [Registration::Hash("H1"), Registration::Any] {
            let refused = issue(&state, &mut conn, &client, registration).await;
            assert!(
                matches!(refused, Err(AuthError::NotRegistered)),
                "{registration:?}: {:?}",
                refused.map(|r| r.ttl_seconds)
            );
        }
        // Re-provisioned and registered anew (another hash) meanwhile.
        set_secret(&state, &client, Some("H2")).await;
        let refused = issue(&state, &mut conn, &client, Registration::Hash("H1")).await;
        assert!(matches!(refused, Err(AuthError::NotRegistered)));
        assert_eq!(session_keys(&state).await, live, "a refused session lives");
        let indexed: Vec<String> = redis::cmd("ZRANGE")
            .arg(state.keys.client_sessions(&client))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            indexed.len(),
            1,
            "refused sessions stay indexed: {indexed:?}"
        );

        // The device registered as H2 (a renewal needs just some secret).
        issue(&state, &mut conn, &client, Registration::Hash("H2"))
            .await
            .unwrap();
        issue(&state, &mut conn, &client, Registration::Any)
            .await
            .unwrap();
        assert_eq!(session_keys(&state).await.len(), 3);
    }
}
