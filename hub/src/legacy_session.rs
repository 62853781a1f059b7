//! Sessions of clients that cannot renew (the Node lula-client), kept open
//! past their token for a bounded grace (`--non-renewing-grace`, off by
//! default).
//!
//! A connection's socket normally closes with 4001 when its token expires,
//! unless the device renewed it over the socket (`renew`). The Node
//! lula-client cannot renew, and exits on any close; its own hub checked the
//! session once, at connect. With a grace set, a connection that *never asked
//! to renew* stays open up to that long past its token's expiry, then closes
//! with 4001 as before (the Node client's supervisor restarts it and it logs
//! in again).
//!
//! How the hub knows a client never asked to renew: by what it speaks. Our
//! lula-client subscribes (`subscribe`), sends batches (`xadds`) and renews
//! (`renew`); the Node lula-client only ever sends `id`, `xread`, `xadd` (and
//! `echo`). A connection counts as non-renewing until its first `renew`,
//! `subscribe` or `xadds`; from then on its token's own expiry applies (at
//! once, if it is already past). So a client of ours never gets the grace,
//! whatever it does, and neither does anything speaking our protocol.
//!
//! Revocation is unchanged: `lula-auth revoke` announces the device, and every
//! hub closes all its sockets with 4003, graced or not. The cost is in
//! SECURITY.md: a stolen Node token keeps a socket it already opened for up to
//! the grace past expiry, unless the device is revoked.

use std::time::{Duration, UNIX_EPOCH};

use lula_runtime::Clock;

use lula_protocol::message::kind;
use tokio::time::Instant;

/// The longest `--non-renewing-grace` the hub accepts: a day. Long enough for
/// a Node fleet to be switched over in waves without daily reconnect storms
/// beyond its own restarts; short enough that a forgotten setting still ends
/// every session within a day of its token.
pub const MAX_NON_RENEWING_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Whether a request of `kind` shows a client that renews its session: only
/// our protocol's requests do (see the module docs).
pub fn asks_to_renew(kind: &str) -> bool {
    matches!(kind, kind::RENEW | kind::SUBSCRIBE | kind::XADDS)
}

/// Refuses a grace above [`MAX_NON_RENEWING_GRACE`].
pub fn check_grace(grace: Duration) -> anyhow::Result<()> {
    if grace > MAX_NON_RENEWING_GRACE {
        anyhow::bail!(
            "--non-renewing-grace {} is above the maximum of {}",
            humantime::format_duration(grace),
            humantime::format_duration(MAX_NON_RENEWING_GRACE)
        );
    }
    Ok(())
}

/// When one connection's session ends.
#[derive(Debug, Clone)]
pub struct SessionClock {
    /// The current token's expiry, epoch seconds.
    token_exp: u64,
    /// Extra time for a connection that never asked to renew (capped).
    grace: Duration,
    /// Whether the connection asked to renew (or spoke our protocol).
    renews: bool,
    /// The hub's clock ([`crate::Config::clock`]).
    clock: Clock,
}

impl SessionClock {
    /// A connection whose token expires at `token_exp` (epoch seconds), on a
    /// hub granting `grace` to non-renewing clients, judged by `clock`.
    pub fn new(token_exp: u64, grace: Duration, clock: Clock) -> Self {
        SessionClock {
            token_exp,
            grace: grace.min(MAX_NON_RENEWING_GRACE),
            renews: false,
            clock,
        }
    }

    /// The instant the socket closes with 4001.
    pub fn deadline(&self) -> Instant {
        let now = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut left = Duration::from_secs(self.token_exp).saturating_sub(now);
        if !self.renews {
            left += self.grace;
        }
        Instant::now() + left
    }

    /// Notes a request of `kind`: one of our protocol's ends the grace.
    pub fn saw(&mut self, kind: &str) {
        if asks_to_renew(kind) {
            self.renews = true;
        }
    }

    /// The connection renewed: its new token's expiry applies.
    pub fn renewed(&mut self, token_exp: u64) {
        self.token_exp = token_exp;
        self.renews = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch() -> u64 {
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn only_a_client_that_never_asked_to_renew_gets_the_grace() {
        let exp = epoch() + 60;
        let grace = Duration::from_secs(3600);
        let mut c = SessionClock::new(exp, grace, Clock::system());
        let start = Instant::now();
        assert!(c.deadline() >= start + Duration::from_secs(3600));
        for k in ["id", "xread", "xadd", "echo"] {
            c.saw(k);
        }
        assert!(c.deadline() >= start + Duration::from_secs(3600));
        c.saw("subscribe");
        assert!(c.deadline() <= Instant::now() + Duration::from_secs(61));
        let mut r = SessionClock::new(exp, grace, Clock::system());
        r.renewed(exp + 10);
        assert!(r.deadline() <= Instant::now() + Duration::from_secs(71));
    }

    #[test]
    fn the_grace_is_bounded() {
        assert!(check_grace(MAX_NON_RENEWING_GRACE).is_ok());
        assert!(check_grace(MAX_NON_RENEWING_GRACE + Duration::from_secs(1)).is_err());
        let c = SessionClock::new(
            epoch(),
            Duration::from_secs(10 * 24 * 3600),
            Clock::system(),
        );
        assert!(c.deadline() <= Instant::now() + MAX_NON_RENEWING_GRACE);
    }
}
