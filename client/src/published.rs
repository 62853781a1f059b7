//! What the daemon publishes for `lula-client status`: fields of the device's
//! state hash, written through one typed [`StatusUpdate`] so every writer
//! uses the same names and value formats.

use std::time::SystemTime;

use lula_protocol::StreamId;

/// Status fields the daemon publishes in the state hash for `lula-client status`.
pub mod status_fields {
    /// `1` while a hub session is up, `0` otherwise.
    pub const CONNECTED: &str = "connected";
    /// Epoch ms of the daemon's last status write (a heartbeat while it runs).
    pub const UPDATED_AT: &str = "updatedAt";
    /// Epoch ms since when the daemon is not connected (absent while it is).
    pub const DISCONNECTED_SINCE: &str = "disconnectedSince";
    /// Epoch ms when the published upstream cursor last moved.
    pub const UPSTREAM_PROGRESS_AT: &str = "upstreamProgressAt";
    /// The hub's upstream cursor as last acknowledged: the last device seq the hub holds.
    pub const UPSTREAM: &str = "upstream";
    /// The most recent error, cleared when a session comes up.
    pub const LAST_ERROR: &str = "lastError";
    /// Epoch seconds when the current session token expires.
    pub const SESSION_EXPIRES_AT: &str = "sessionExpiresAt";
    /// Process id of the daemon.
    pub const PID: &str = "pid";
    /// How many entries the upstream cursor is into `out:x` since the stream was
    /// created (its ordinal), when known; lets a restarted daemon count entries
    /// trimmed before they were synced.
    pub const UPSTREAM_ORDINAL: &str = "upstreamOrdinal";
    /// Times entries were found deleted from `out:x` before they were synced.
    pub const GAPS: &str = "gaps";
    /// The most recent such finding, in words.
    pub const LAST_GAP: &str = "lastGap";
    /// Entries waiting for the device on the hub (its out stream after the
    /// device's cursor), as the hub last reported; counted up to 10,000.
    pub const DOWNSTREAM_BACKLOG: &str = "downstreamBacklog";
    /// A condition that needs an operator, as of the last connection (empty
    /// when there is none).
    pub const WARNING: &str = "warning";
    /// Times broadcasts were found deleted (past the hub's retention) before
    /// this device received them; counted by the store script.
    pub const BROADCAST_GAPS: &str = "broadcastGaps";
    /// The most recent such finding: the broadcast ids missed and when.
    pub const LAST_BROADCAST_GAP: &str = "lastBroadcastGap";
    /// Messages for this device that expired on the hub before delivery
    /// (counted by the store script from the hub's pushes).
    pub const EXPIRED: &str = "expired";
    /// The most recent such report: how many, and when.
    pub const LAST_EXPIRED: &str = "lastExpired";
    /// Bytes sent to the hub on the link since the daemon started (frame
    /// headers included), and the JSON they carried; the same for bytes
    /// received. Their ratio is what compression saved.
    pub const LINK_SENT: &str = "linkSentBytes";
    /// See [`LINK_SENT`].
    pub const LINK_SENT_PLAIN: &str = "linkSentPlainBytes";
    /// See [`LINK_SENT`].
    pub const LINK_RECEIVED: &str = "linkReceivedBytes";
    /// See [`LINK_SENT`].
    pub const LINK_RECEIVED_PLAIN: &str = "linkReceivedPlainBytes";
    /// Out-stream entries set aside (past a limit) into `lula-client:dead:x`
    /// instead of sent; counted once each, when written there.
    pub const SET_ASIDE_UP: &str = "setAsideUp";
    /// The most recent one: its id, the reason, and when.
    pub const LAST_SET_ASIDE_UP: &str = "lastSetAsideUp";
    /// Direct messages and broadcasts the hub set aside for this device
    /// (in `lula-hub:dead:x`); counted by the store script with the cursor.
    pub const SET_ASIDE_DOWN: &str = "setAsideDown";
    /// The most recent one: its stream, id, the reason, and when.
    pub const LAST_SET_ASIDE_DOWN: &str = "lastSetAsideDown";
    /// What the hub agreed to at the last connect (`deflate; window-bits=10`),
    /// or `off`.
    pub const COMPRESSION: &str = "compression";
}

/// One write of status fields. The fields set here are written (with
/// `updatedAt`); the others keep the value they had.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusUpdate {
    /// [`status_fields::PID`].
    pub pid: Option<u32>,
    /// [`status_fields::CONNECTED`] (`1` / `0`).
    pub connected: Option<bool>,
    /// [`status_fields::UPSTREAM`] and [`status_fields::UPSTREAM_ORDINAL`]
    /// (empty when the ordinal is unknown), always together: status readers
    /// count the backlog from the pair.
    pub upstream: Option<(StreamId, Option<u64>)>,
    /// [`status_fields::LAST_ERROR`] (empty clears it).
    pub last_error: Option<String>,
    /// [`status_fields::SESSION_EXPIRES_AT`], epoch seconds.
    pub session_expires_at: Option<u64>,
    /// [`status_fields::DOWNSTREAM_BACKLOG`].
    pub downstream_backlog: Option<u64>,
    /// [`status_fields::WARNING`] (empty clears it).
    pub warning: Option<String>,
    /// [`status_fields::LAST_GAP`].
    pub last_gap: Option<String>,
    /// [`status_fields::COMPRESSION`].
    pub compression: Option<String>,
    /// [`status_fields::LINK_SENT`] and the three after it, in that order.
    pub link: Option<[u64; 4]>,
}

impl StatusUpdate {
    /// No hub session: `connected` 0.
    pub fn disconnected() -> Self {
        StatusUpdate {
            connected: Some(false),
            ..Self::default()
        }
    }

    /// No hub session because of `error`.
    pub fn failed(error: impl Into<String>) -> Self {
        StatusUpdate {
            last_error: Some(error.into()),
            ..Self::disconnected()
        }
    }

    /// An error on a session that goes on (one direction paused or stuck).
    pub fn error(error: impl Into<String>) -> Self {
        StatusUpdate {
            last_error: Some(error.into()),
            ..Self::default()
        }
    }

    /// The upstream cursor the hub acknowledged, and its ordinal in `out:x`.
    pub fn upstream(cursor: StreamId, ordinal: Option<u64>) -> Self {
        StatusUpdate {
            upstream: Some((cursor, ordinal)),
            ..Self::default()
        }
    }

    /// A session up with the upstream cursor at `cursor`.
    pub fn connected(cursor: StreamId, ordinal: Option<u64>) -> Self {
        StatusUpdate {
            connected: Some(true),
            ..Self::upstream(cursor, ordinal)
        }
    }

    /// The session token in use expires at `at`.
    pub fn session_expires(at: SystemTime) -> Self {
        let secs = at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        StatusUpdate {
            session_expires_at: Some(secs),
            ..Self::default()
        }
    }

    /// The field/value pairs to write.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(pid) = self.pid {
            out.push((status_fields::PID, pid.to_string()));
        }
        if let Some(connected) = self.connected {
            out.push((status_fields::CONNECTED, u8::from(connected).to_string()));
        }
        if let Some((cursor, ordinal)) = self.upstream {
            out.push((status_fields::UPSTREAM, cursor.to_string()));
            let ordinal = ordinal.map(|o| o.to_string()).unwrap_or_default();
            out.push((status_fields::UPSTREAM_ORDINAL, ordinal));
        }
        if let Some(link) = self.link {
            let names = [
                status_fields::LINK_SENT,
                status_fields::LINK_SENT_PLAIN,
                status_fields::LINK_RECEIVED,
                status_fields::LINK_RECEIVED_PLAIN,
            ];
            out.extend(names.into_iter().zip(link.map(|n| n.to_string())));
        }
        let texts = [
            (status_fields::COMPRESSION, &self.compression),
            (status_fields::LAST_ERROR, &self.last_error),
            (status_fields::WARNING, &self.warning),
            (status_fields::LAST_GAP, &self.last_gap),
        ];
        for (field, value) in texts {
            if let Some(value) = value {
                out.push((field, value.clone()));
            }
        }
        let numbers = [
            (status_fields::SESSION_EXPIRES_AT, self.session_expires_at),
            (status_fields::DOWNSTREAM_BACKLOG, self.downstream_backlog),
        ];
        for (field, value) in numbers {
            if let Some(value) = value {
                out.push((field, value.to_string()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_write_the_fields_they_set_in_the_published_format() {
        let up = StatusUpdate {
            last_error: Some(String::new()),
            ..StatusUpdate::connected(StreamId::new(5, 1), None)
        };
        assert_eq!(
            up.fields(),
            [
                ("connected", "1".to_owned()),
                ("upstream", "5-1".to_owned()),
                ("upstreamOrdinal", String::new()),
                ("lastError", String::new()),
            ]
        );
        assert_eq!(
            StatusUpdate::failed("x").fields(),
            [("connected", "0".to_owned()), ("lastError", "x".to_owned())]
        );
    }
}
