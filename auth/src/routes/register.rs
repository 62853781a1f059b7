//! `POST /register {client, otp, secret}`: the device's one-time registration.
//!
//! The device proves it was provisioned (a current TOTP code of its
//! `otpSecret`, before `regDeadline`) and hands over its own secret, which is
//! stored as a bcrypt hash. One script then checks the record is still the one
//! the code was verified against and still unregistered, stores the hash and
//! removes the deadline, so of two racing registrations exactly one wins.

use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::extract::State;
use redis::Script;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{check_secret, client_id};
use crate::AppState;
use crate::body::{Body, OtpCode};
use crate::error::AuthError;
use crate::throttle::{self, Action, Attempt, Peer};
use crate::{otp, provision};
use lula_protocol::ClientId;

/// The registration request.
#[derive(Debug, Deserialize)]
pub struct RegisterRequest {
    /// The provisioned client id.
    pub client: String,
    /// The current TOTP code of the provisioned secret.
    pub otp: OtpCode,
    /// The device's own secret, used to log in from now on.
    pub secret: String,
}

/// KEYS[1] client hash. ARGV[1] the otpSecret the code was checked against,
/// ARGV[2] bcrypt hash, ARGV[3] now (epoch ms).
const REGISTER: &str = r#"
local h = redis.call('HMGET', KEYS[1], 'otpSecret', 'regDeadline', 'secret')
if not h[1] then return 'not_provisioned' end
if h[3] then return 'registered' end
if h[1] ~= ARGV[1] then return 'changed' end
local deadline = tonumber(h[2])
if not deadline or deadline < tonumber(ARGV[3]) then return 'deadline' end
redis.call('HSET', KEYS[1], 'secret', ARGV[2])
redis.call('HDEL', KEYS[1], 'regDeadline')
return 'ok'
"#;

static REGISTER_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REGISTER));

/// The endpoint, with its outcome counted in the metrics.
pub async fn register(
    State(state): State<Arc<AppState>>,
    Peer(addr): Peer,
    Body(req): Body<RegisterRequest>,
) -> Result<Json<Value>, AuthError> {
    let state_for_metrics = state.clone();
    let result = register_request(State(state), Peer(addr), Body(req)).await;
    let state = state_for_metrics;
    crate::metrics::AuthMetrics::outcome(&state.metrics.registrations, &result);
    if matches!(result, Err(AuthError::RateLimited { .. })) {
        state
            .metrics
            .rate_limited
            .get_or_create(&[("action", "register")])
            .inc();
    }
    result
}

/// Registers a provisioned device: 200, or 400 / 403 / 409 (see [`AuthError`]),
/// or 429 after too many failures for the client or from the address.
async fn register_request(
    State(state): State<Arc<AppState>>,
    Peer(addr): Peer,
    Body(req): Body<RegisterRequest>,
) -> Result<Json<Value>, AuthError> {
    let client = client_id(&req.client)?;
    let code = req.otp.0.trim().to_owned();
    if code.len() != usize::from(otp::DIGITS) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::BadRequest(format!(
            "otp must be {} digits",
            otp::DIGITS
        )));
    }
    check_secret(&req.secret, state.config.min_secret_len)?;
    let attempt = Attempt {
        action: Action::Register,
        client: Some(&client),
        addr,
    };
    let mut redis = state.redis.clone();
    let limits = state.config.limits;
    let reservation = throttle::reserve(&mut redis, &state.keys, &limits, &attempt).await?;
    let result = register_checked(&state, &mut redis, &client, &code, req.secret).await;
    reservation.settle(&mut redis, &result).await?;
    result
}

async fn register_checked(
    state: &AppState,
    redis: &mut lula_runtime::redis::RedisConn,
    client: &ClientId,
    code: &str,
    secret: String,
) -> Result<Json<Value>, AuthError> {
    let record = provision::record(redis, &state.keys, client).await?;
    let otp_secret = record.otp_secret.ok_or(AuthError::NotProvisioned)?;
    if record.secret_hash.is_some() {
        return Err(AuthError::AlreadyRegistered);
    }
    let now = &state.config.clock;
    if record.reg_deadline.is_none_or(|d| d < now.epoch_ms()) {
        return Err(AuthError::DeadlinePassed);
    }
    match otp::check(&otp_secret, code, now.epoch_secs()) {
        Ok(true) => {}
        Ok(false) => return Err(AuthError::WrongOtp),
        Err(e) => {
            tracing::warn!(%client, error = %e, "provisioned otpSecret is unusable; re-provision the client");
            return Err(AuthError::NotProvisioned);
        }
    }

    let hash = state.hasher.hash(secret).await?;
    let outcome: String = REGISTER_SCRIPT
        .key(state.keys.client(client))
        .arg(&otp_secret)
        .arg(&hash)
        .arg(now.epoch_ms())
        .invoke_async(redis)
        .await?;
    match outcome.as_str() {
        "ok" => {
            tracing::info!(%client, "registered");
            Ok(Json(json!({ "client": client, "registered": true })))
        }
        "registered" => Err(AuthError::AlreadyRegistered),
        "deadline" => Err(AuthError::DeadlinePassed),
        // Re-provisioned (or deleted) while we checked the code: it proved the old secret.
        "changed" => Err(AuthError::WrongOtp),
        "not_provisioned" => Err(AuthError::NotProvisioned),
        other => Err(AuthError::Internal(anyhow::anyhow!(
            "register script answered {other:?}"
        ))),
    }
}
