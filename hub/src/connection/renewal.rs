//! `renew`: moving a live connection to a new session token, and the instant
//! its session ends.

use lula_protocol::message::{ErrorReply, HubFrame, RenewReply, RenewRequest, kind, status};
use serde_json::Value;

use super::{Closed, Connection};
use crate::metrics::HubMetrics;
use crate::session::AuthError;

/// The instant a token expiring at `exp` (epoch seconds) runs out.
pub(crate) fn deadline_of(exp: u64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let left = std::time::Duration::from_secs(exp).saturating_sub(now);
    tokio::time::Instant::now() + left
}

impl Connection {
    /// `renew`: checks the new token (same device, live session) and moves
    /// the connection's expiry and session id to it.
    pub(super) async fn renew(
        &mut self,
        id: Option<&Value>,
        request: RenewRequest,
    ) -> Result<(), Closed> {
        self.drain().await?;
        let mut redis = self.state.auth_redis.clone();
        let renewed = self
            .state
            .auth
            .authenticate(&mut redis, &request.token)
            .await;
        let (outcome, frame) = match renewed {
            Ok(claims) if claims.sub == self.client => {
                self.expires_at = deadline_of(claims.exp);
                self.registration.set_sid(&claims.sid);
                tracing::debug!(sid = %claims.sid, exp = claims.exp, "session renewed");
                ("ok", HubFrame::Renew(RenewReply { exp: claims.exp }))
            }
            Ok(_) => {
                let reply = ErrorReply::new(status::UNAUTHORIZED, "token is for another device");
                ("refused", HubFrame::error(kind::RENEW, reply))
            }
            Err(AuthError::Redis(_)) => (
                "unavailable",
                HubFrame::error(kind::RENEW, ErrorReply::unavailable()),
            ),
            Err(e) => {
                let reply = ErrorReply::new(status::UNAUTHORIZED, e.to_string());
                ("refused", HubFrame::error(kind::RENEW, reply))
            }
        };
        HubMetrics::count(&self.state.metrics.renewals, "outcome", outcome);
        self.send(id, frame).await
    }
}
