//! Limits on failed attempts, kept in Redis so they hold across every
//! lula-auth replica.
//!
//! Each failed `/register` (wrong OTP, unknown client, closed deadline) or
//! `/login` (wrong secret, unregistered client) counts against the client it
//! names and against the address it came from, in fixed windows. Once either
//! count reaches its limit, further attempts of that kind are answered 429 with
//! `Retry-After` until the window ends, before any OTP or bcrypt work is done.
//! An attempt is counted *before* that work, atomically with the check
//! ([`reserve`]), and given back afterwards if it was not a failure that
//! counts, so attempts sent at the same time cannot slip past the limit.
//! A successful login clears its client's count. Six-digit OTPs and device
//! secrets cannot be guessed at ten tries per client per window.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use lula_protocol::ClientId;
use lula_protocol::keys::AuthKeys;
use redis::Script;
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

/// KEYS[1] a failure counter. ARGV[1] its limit, ARGV[2] the window (ms).
/// Refused: the counter's PTTL (>= 0). Reserved: -1, the counter raised by one.
/// Check and count are one step, so attempts running at the same time cannot
/// all see a count below the limit. One key per script: the per-client and
/// per-address counters hash to different Redis Cluster slots.
const RESERVE: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    ttl = tonumber(ARGV[2])
  end
  return ttl
end
redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return -1
"#;

/// KEYS[1] a failure counter. Gives back one reservation, unless the window
/// ended meanwhile (the key is gone: nothing to give back, and a DECR would
/// leave a counter without expiry).
const RELEASE: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then redis.call('DECR', KEYS[1]) end
return 0
"#;

static RESERVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RESERVE));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));

/// An attempt that got past the limits: it already counts as a failure of its
/// client and address, until [`Reservation::succeeded`] or
/// [`Reservation::settle`] says otherwise.
#[must_use = "settle the reservation with the attempt's outcome"]
pub struct Reservation {
    action: Action,
    client_key: Option<String>,
    addr_key: Option<String>,
}

/// Reserves one failure of the attempt's client and address before any OTP or
/// bcrypt work is done, or refuses it (429) if either used up its failures.
///
/// The attempt is counted up front, in the same Lua step that checks the
/// count, so of N attempts running at once at most `limit` get through; the
/// count is given back by [`Reservation::settle`] when the attempt turns out
/// not to be a failure that counts.
pub async fn reserve<C: ConnectionLike>(
    conn: &mut C,
    keys: &AuthKeys,
    limits: &Limits,
    attempt: &Attempt<'_>,
) -> Result<Reservation, AuthError> {
    let window_ms = limits.window.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
    let mut reservation = Reservation {
        action: attempt.action,
        client_key: None,
        addr_key: None,
    };
    let action = attempt.action.name();
    let mut wanted = Vec::with_capacity(2);
    if let Some(c) = attempt.client {
        wanted.push((true, keys.failures_of_client(action, c), limits.per_client));
    }
    if let Some(a) = &attempt.addr {
        wanted.push((false, keys.failures_from(action, a), limits.per_address));
    }
    for (is_client, key, limit) in wanted {
        let answer: Result<i64, _> = RESERVE_SCRIPT
            .key(&key)
            .arg(limit)
            .arg(window_ms)
            .invoke_async(conn)
            .await;
        match answer {
            Ok(-1) if is_client => reservation.client_key = Some(key),
            Ok(-1) => reservation.addr_key = Some(key),
            Ok(ttl_ms) => {
                // Refused: a reservation taken on the other key is no failure.
                reservation.release_all(conn).await;
                let secs = u64::try_from(ttl_ms).unwrap_or(0).div_ceil(1000).max(1);
                return Err(AuthError::RateLimited {
                    retry_after_secs: secs,
                });
            }
            Err(e) => {
                // Give back what was reserved already, then report the outage.
                reservation.release_all(conn).await;
                return Err(e.into());
            }
        }
    }
    Ok(reservation)
}

impl Reservation {
    /// Settles the attempt: a failure that [`counts`] keeps its reservation;
    /// anything else (a success, a malformed request, an outage, `busy`) gives
    /// it back. A successful login also clears its client's count, as the
    /// device proved itself.
    pub async fn settle<C: ConnectionLike, T>(
        mut self,
        conn: &mut C,
        result: &Result<T, AuthError>,
    ) -> Result<(), AuthError> {
        match result {
            Err(e) if counts(e) => Ok(()),
            Ok(_) if self.action == Action::Login => self.succeeded(conn).await,
            _ => {
                self.release_all(conn).await;
                Ok(())
            }
        }
    }

    /// The client proved itself: its count is cleared, and the address's
    /// reservation given back.
    async fn succeeded<C: ConnectionLike>(mut self, conn: &mut C) -> Result<(), AuthError> {
        if let Some(key) = self.client_key.take() {
            redis::cmd("DEL").arg(key).query_async::<()>(conn).await?;
        }
        self.release_all(conn).await;
        Ok(())
    }

    /// Gives back every reservation still held. Best effort: if Redis fails
    /// here the attempt stays counted, which errs on the side of the limit.
    async fn release_all<C: ConnectionLike>(&mut self, conn: &mut C) {
        for key in [self.client_key.take(), self.addr_key.take()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = RELEASE_SCRIPT.key(&key).invoke_async::<()>(conn).await {
                tracing::warn!(error = %e, "cannot give back a failed-attempt reservation");
            }
        }
    }
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
