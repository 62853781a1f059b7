//! `renew`: moving a live connection to a new session token (when its
//! session then ends is `crate::legacy_session::SessionClock`'s).

use lula_protocol::message::{ErrorReply, HubFrame, RenewReply, RenewRequest, kind, status};
use serde_json::Value;

use super::{Closed, Connection};
use crate::metrics::HubMetrics;
use crate::session::AuthError;

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
                self.session.renewed(claims.exp);
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
