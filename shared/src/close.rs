//! Why a WebSocket closes: the one list of close codes, their reason text and
//! the metric label the hub counts them under.

/// A documented reason to close a connection. Every close frame lula sends
/// carries one of these (`code()` as the code, `text()` as the reason); the
/// constants of [`crate::message::close`] are their codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// 1000: normal closure (the client shutting down).
    Normal,
    /// 1001: the hub is shutting down; reconnect (possibly to another
    /// replica) at once.
    GoingAway,
    /// 1008: policy violation (a WebSocket protocol error, invalid UTF-8).
    Policy,
    /// 1009: a message exceeded the frame size limit.
    TooBig,
    /// 4000: the peer sent nothing, not even a pong, within the idle timeout.
    Idle,
    /// 4001: the session token expired and was not renewed: log in again,
    /// reconnect.
    SessionExpired,
    /// 4002: a newer connection of the same device took over (on this hub or
    /// another replica): one live connection per device.
    Replaced,
    /// 4003: the session was revoked (logout, `lula-auth revoke`,
    /// re-provisioning): log in again; a device that was revoked must be
    /// provisioned again first.
    SessionRevoked,
}

impl CloseReason {
    /// Every reason, for lookups by code.
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Normal,
        CloseReason::GoingAway,
        CloseReason::Policy,
        CloseReason::TooBig,
        CloseReason::Idle,
        CloseReason::SessionExpired,
        CloseReason::Replaced,
        CloseReason::SessionRevoked,
    ];

    /// The WebSocket close code.
    pub const fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::GoingAway => 1001,
            CloseReason::Policy => 1008,
            CloseReason::TooBig => 1009,
            CloseReason::Idle => 4000,
            CloseReason::SessionExpired => 4001,
            CloseReason::Replaced => 4002,
            CloseReason::SessionRevoked => 4003,
        }
    }

    /// The reason text sent in the close frame.
    pub const fn text(self) -> &'static str {
        match self {
            CloseReason::Normal => "client shutting down",
            CloseReason::GoingAway => "hub shutting down",
            CloseReason::Policy => "protocol error",
            CloseReason::TooBig => "message too big",
            CloseReason::Idle => "idle timeout",
            CloseReason::SessionExpired => "session expired",
            CloseReason::Replaced => "replaced by a newer connection",
            CloseReason::SessionRevoked => "session revoked",
        }
    }

    /// The `reason` label of the hub's closed-connections counter.
    pub const fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::GoingAway => "shutdown",
            CloseReason::Policy => "protocol",
            CloseReason::TooBig => "too_big",
            CloseReason::Idle => "idle",
            CloseReason::SessionExpired => "session_expired",
            CloseReason::Replaced => "replaced",
            CloseReason::SessionRevoked => "revoked",
        }
    }

    /// Whether a connection closed for this reason ended as it should (a
    /// shutdown or a take-over), rather than in trouble worth showing.
    pub const fn is_expected(self) -> bool {
        matches!(
            self,
            CloseReason::Normal | CloseReason::GoingAway | CloseReason::Replaced
        )
    }

    /// The reason with this close code, if lula sends it.
    pub fn from_code(code: u16) -> Option<CloseReason> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_found_again() {
        for r in CloseReason::ALL {
            assert_eq!(CloseReason::from_code(r.code()), Some(r));
        }
        assert_eq!(CloseReason::from_code(1011), None);
    }
}
