//! Renewing the session token on a live connection, before the hub would
//! close it for expiry: log in again at lula-auth (off the session loop), send
//! `renew` with the new token, and switch to it when the hub accepts it.
//!
//! `Idle` until the renewal time, then `LoggingIn`, then `Sent` until the
//! hub's reply; a failed login or a refused token goes back to `Idle` with a
//! retry a few seconds later (the current token may still be valid; if it runs
//! out the hub closes with 4001 and the next connection logs in).

use std::time::Duration;

use lula_protocol::ClientId;
use lula_protocol::message::ErrorReply;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::{AuthCallError, AuthClient, Session as AuthSession};

/// Tokens are renewed this long before they expire (at most a quarter of
/// their lifetime before), on the live connection.
const RENEW_MARGIN: Duration = Duration::from_secs(30);
/// Pause before trying a failed renewal again (the token may still be valid).
const RENEW_RETRY: Duration = Duration::from_secs(5);

/// Where a renewal of the session token stands.
enum State {
    Idle,
    /// Logging in again at lula-auth.
    LoggingIn(JoinHandle<Result<AuthSession, AuthCallError>>),
    /// `renew` sent with this new session.
    Sent(AuthSession),
}

/// The renewal state machine of one connection.
pub struct Renewal {
    state: State,
    /// When to start the next renewal.
    renew_at: Instant,
}

/// What the device needs to log in again.
pub struct Credentials {
    /// lula-auth.
    pub auth: AuthClient,
    /// The device's client id.
    pub client: ClientId,
    /// The device's secret.
    pub secret: String,
}

impl Renewal {
    /// A renewal scheduled for the token `current`.
    pub fn new(current: &AuthSession) -> Self {
        Renewal {
            state: State::Idle,
            renew_at: renew_time(current),
        }
    }

    /// When the next renewal starts; `None` while one is running.
    pub fn due_at(&self) -> Option<Instant> {
        matches!(self.state, State::Idle).then_some(self.renew_at)
    }

    /// Starts logging in again, in a task. Renewing by the live session costs
    /// lula-auth no bcrypt; a full login is the fallback (an older lula-auth,
    /// or a session it no longer knows).
    pub fn start(&mut self, login: Credentials, current: AuthSession) {
        tracing::debug!("renewing the session token");
        self.state = State::LoggingIn(tokio::spawn(async move {
            match login.auth.renew(&current).await {
                Ok(renewed) => Ok(renewed),
                Err(e) => {
                    tracing::debug!(error = %e, "renewal refused; logging in");
                    login.auth.login(&login.client, &login.secret).await
                }
            }
        }));
    }

    /// The new session once the login finished; pending while none runs.
    /// On a failed login the renewal is retried later and `None` comes back.
    pub async fn logged_in(&mut self) -> Option<AuthSession> {
        let State::LoggingIn(task) = &mut self.state else {
            return std::future::pending().await;
        };
        let result = match task.await {
            Ok(result) => result,
            Err(e) => Err(AuthCallError::Network(format!("login task: {e}"))),
        };
        match result {
            Ok(new) => Some(new),
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the session token yet; retrying");
                self.retry();
                None
            }
        }
    }

    /// `renew` carrying `new`'s token was sent.
    pub fn sent(&mut self, new: AuthSession) {
        self.state = State::Sent(new);
    }

    /// Whether a `renew` waits for its reply.
    pub fn awaiting_reply(&self) -> bool {
        matches!(self.state, State::Sent(_))
    }

    /// The hub's reply to `renew`: the session to use from now on when it
    /// accepted it (the next renewal is scheduled for it).
    pub fn replied(&mut self, result: Result<(), ErrorReply>) -> Option<AuthSession> {
        let State::Sent(new) = std::mem::replace(&mut self.state, State::Idle) else {
            return None;
        };
        match result {
            Ok(()) => {
                self.renew_at = renew_time(&new);
                tracing::debug!("session token renewed on the live connection");
                Some(new)
            }
            Err(err) => {
                // The hub will close at expiry; the next connection logs in.
                tracing::warn!(status = err.status, message = %err.message, "hub refused the renewed token");
                self.retry();
                None
            }
        }
    }

    fn retry(&mut self) {
        self.state = State::Idle;
        self.renew_at = Instant::now() + RENEW_RETRY;
    }
}

/// When to renew `session` so the hub never closes the connection for expiry.
fn renew_time(session: &AuthSession) -> Instant {
    let margin = RENEW_MARGIN.min(session.ttl / 4);
    let left = session
        .expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(margin);
    Instant::now() + left
}
