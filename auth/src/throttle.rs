//! Limits on failed attempts, kept in Redis so they hold across every
//! lula-auth replica.
//!
//! Each failed `/register` (wrong OTP, unknown client, closed deadline) or
//! `/login` (wrong secret, unregistered client) counts against the client it
//! names and against the address it came from, in fixed windows. Once either
//! count reaches its limit, further attempts of that kind are answered 429 with
//! `Retry-After` until the window ends, before any OTP or bcrypt work is done.
//! A successful login clears its client's count. Six-digit OTPs and device
//! secrets cannot be guessed at ten tries per client per window.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use lula_protocol::ClientId;
use lula_protocol::keys::AuthKeys;
use redis::aio::ConnectionLike;

use crate::AppState;
use crate::error::AuthError;

/// How many failures are allowed, and per what window.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failed attempts of one client per window.
    pub per_client: u64,
    /// Failed attempts from one address per window.
    pub per_address: u64,
    /// The window.
    pub window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_client: 10,
            per_address: 100,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// What was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `POST /register`.
    Register,
    /// `POST /login`.
    Login,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Register => "register",
            Action::Login => "login",
        }
    }
}

/// Who attempted: the client named (when it is a valid id) and the address.
pub struct Attempt<'a> {
    /// What.
    pub action: Action,
    /// The client named in the request.
    pub client: Option<&'a ClientId>,
    /// Where it came from.
    pub addr: Option<IpAddr>,
}

impl Attempt<'_> {
    fn keys(&self, keys: &AuthKeys, limits: &Limits) -> Vec<(String, u64)> {
        let action = self.action.name();
        let mut out = Vec::with_capacity(2);
        if let Some(c) = self.client {
            out.push((keys.failures_of_client(action, c), limits.per_client));
        }
        if let Some(a) = &self.addr {
            out.push((keys.failures_from(action, a), limits.per_address));
        }
        out
    }
}

/// Refuses the attempt (429) if its client or address used up its failures.
pub async fn check<C: ConnectionLike>(
    conn: &mut C,
    keys: &AuthKeys,
    limits: &Limits,
    attempt: &Attempt<'_>,
) -> Result<(), AuthError> {
    for (key, limit) in attempt.keys(keys, limits) {
        let (count, ttl_ms): (Option<u64>, i64) = redis::pipe()
            .cmd("GET")
            .arg(&key)
            .cmd("PTTL")
            .arg(&key)
            .query_async(conn)
            .await?;
        if count.unwrap_or(0) >= limit {
            let secs = u64::try_from(ttl_ms).unwrap_or(0).div_ceil(1000).max(1);
            return Err(AuthError::RateLimited {
                retry_after_secs: secs,
            });
        }
    }
    Ok(())
}

/// Counts a failed attempt against its client and address.
pub async fn failed<C: ConnectionLike>(
    conn: &mut C,
    keys: &AuthKeys,
    limits: &Limits,
    attempt: &Attempt<'_>,
) -> Result<(), AuthError> {
    let window_ms = limits.window.as_millis().max(1) as u64;
    let mut pipe = redis::pipe();
    for (key, _) in attempt.keys(keys, limits) {
        // The window starts with the first failure; one command per key, so
        // this works on Redis Cluster too.
        pipe.cmd("SET")
            .arg(&key)
            .arg(0)
            .arg("PX")
            .arg(window_ms)
            .arg("NX")
            .ignore()
            .cmd("INCR")
            .arg(&key)
            .ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// Clears the client's failures after it proved itself.
pub async fn succeeded<C: ConnectionLike>(
    conn: &mut C,
    keys: &AuthKeys,
    attempt: &Attempt<'_>,
) -> Result<(), AuthError> {
    if let Some(c) = attempt.client {
        redis::cmd("DEL")
            .arg(keys.failures_of_client(attempt.action.name(), c))
            .query_async::<()>(conn)
            .await?;
    }
    Ok(())
}

/// Whether a failure should count against the limits: the refusals a guesser
/// gets, not malformed requests or outages.
pub fn counts(e: &AuthError) -> bool {
    matches!(
        e,
        AuthError::WrongOtp
            | AuthError::WrongSecret
            | AuthError::NotProvisioned
            | AuthError::NotRegistered
            | AuthError::DeadlinePassed
    )
}

/// The address a request came from: the TCP peer, or with
/// `--trust-forwarded-for` (behind a proxy that sets it) the first address of
/// `X-Forwarded-For`.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<IpAddr>);

impl FromRequestParts<Arc<AppState>> for Peer {
    type Rejection = AuthError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, AuthError> {
        if state.config.trust_forwarded_for
            && let Some(ip) = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok())
        {
            return Ok(Peer(Some(ip)));
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip());
        Ok(Peer(peer))
    }
}
