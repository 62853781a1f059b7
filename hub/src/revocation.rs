//! Where a 4003 (revoked) or a 4002 (replaced) close comes from: lula-auth's
//! revocation announcements, the hubs' take-over announcements, and the
//! checks that catch a revocation announced while nobody listened.
//!
//! Both announcements are pub/sub messages. When lula-auth shares the hub's
//! Redis they arrive on the connection [`crate::downstream::watch`] keeps
//! for keyspace events, which hands them to `announced`; otherwise
//! [`watch`] listens on lula-auth's own Redis. Either way [`Live`] finds the
//! connections to close and tells each its [`lula_protocol::CloseReason`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lula_protocol::CloseReason;
use lula_protocol::token::Claims;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::live::Live;
use crate::session::Revocations;

/// Pause before retrying a failed subscribe or session read.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Time allowed to connect to lula-auth's Redis.
const WATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Sleeps `d`; true when shut down meanwhile.
async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    shutdown
        .run_until_cancelled(tokio::time::sleep(d))
        .await
        .is_none()
}

/// Handles `msg` when it is a revocation (on `revocations`' channel) or a
/// take-over (on `connections`); returns whether it was either.
pub(crate) fn announced(
    msg: &redis::Msg,
    revocations: Option<&Revocations>,
    connections: &str,
    live: &Live,
) -> bool {
    let channel = msg.get_channel_name();
    if Some(channel) == revocations.map(|r| r.channel()) {
        revoked(msg, live);
        true
    } else if channel == connections {
        if let Ok(message) = msg.get_payload::<String>() {
            live.connected(&message);
        }
        true
    } else {
        false
    }
}

/// Closes the connections of the session a revocation message names.
fn revoked(msg: &redis::Msg, live: &Live) {
    if let Ok(message) = msg.get_payload::<String>() {
        let closed = live.revoked(&message);
        tracing::info!(%message, closed, "session revoked");
    }
}

/// Looks at the session of a just registered connection once more, in the
/// background. Its token was checked before the upgrade, when a revocation
/// announced on pub/sub could not reach this connection yet; one announced
/// in between would otherwise leave it open until its token expires. lula-auth
/// deletes the record before it announces, so after this check every
/// revocation is either seen here or heard by [`Live`].
pub(crate) fn recheck_session(state: &Arc<AppState>, claims: &Claims) {
    let (task_state, claims) = (state.clone(), claims.clone());
    state.tracker.spawn(async move {
        let state = task_state;
        let mut redis = state.auth_redis.clone();
        match state.auth.session_alive(&mut redis, &claims).await {
            Ok(true) => {}
            Ok(false) => {
                state.live.kick(
                    claims.sub.as_str(),
                    Some(&claims.sid),
                    CloseReason::SessionRevoked,
                );
            }
            // The token was valid a moment ago, and a later revocation is
            // heard on pub/sub; nothing to do but note it.
            Err(e) => tracing::debug!(error = %e, "session recheck after connect failed"),
        }
    });
}

/// After a (re)subscribe to `revocations`: closes the live connections whose
/// session was revoked while the hub was not subscribed (see
/// [`Revocations::resync`]), retrying until Redis answers.
/// Runs beside the subscription, so announcements are handled meanwhile.
pub(crate) async fn resync(revocations: Option<&Revocations>, live: &Live) {
    let Some(revocations) = revocations else {
        return;
    };
    loop {
        match revocations.resync(live).await {
            Ok(closed) => {
                if closed > 0 {
                    tracing::info!(
                        closed,
                        "sessions revoked while not subscribed to revocations"
                    );
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "revocation resync: cannot read the session records; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Closes the connections of revoked sessions, as announced on lula-auth's
/// own Redis (when it is not the hub's), until `shutdown`. Reconnects by
/// itself, and checks every live connection's session after each subscribe.
/// A cluster delivers `PUBLISH` on every node, so the node `client` points at
/// is enough.
pub async fn watch(
    client: redis::Client,
    revocations: Revocations,
    live: Arc<Live>,
    shutdown: CancellationToken,
) {
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = tokio::time::timeout(WATCH_TIMEOUT, client.get_async_pubsub()) => c,
        };
        let mut pubsub = match connected {
            Ok(Ok(p)) => p,
            _ => {
                tracing::warn!("revocation watch: cannot connect to lula-auth's redis; retrying");
                if pause(&shutdown, RETRY_PAUSE).await {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(revocations.channel()).await {
            tracing::warn!(error = %e, "revocation watch: subscribe failed; retrying");
            if pause(&shutdown, RETRY_PAUSE).await {
                return;
            }
            continue;
        }
        let mut messages = pubsub.into_on_message();
        let resync = resync(Some(&revocations), &live);
        tokio::pin!(resync);
        let mut resynced = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = &mut resync, if !resynced => resynced = true,
                msg = messages.next() => match msg {
                    Some(msg) => revoked(&msg, &live),
                    None => break,
                },
            }
        }
        tracing::warn!("revocation watch: connection lost; reconnecting");
        if pause(&shutdown, RETRY_PAUSE).await {
            return;
        }
    }
}
