//! `lula-client status`: what the daemon last published, plus the upstream
//! backlog counted from the device Redis.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use lula_protocol::StreamId;
use lula_protocol::keys::DeviceKeys;
use redis::AsyncCommands;
use serde::Serialize;

use crate::device::{BROADCAST_FIELD, DOWNSTREAM_FIELD, count_after, now_ms};
use crate::identity::{IDENTITY_FILE, Identity};
use crate::published::status_fields;

use crate::status_check::STALE_AFTER;

/// The device's sync state.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// Client id from the state dir, if it holds an identity.
    pub client_id: Option<String>,
    /// Whether lula-auth accepted the registration.
    pub registered: bool,
    /// A daemon is running and connected to the hub.
    pub connected: bool,
    /// Epoch ms of the daemon's last status write: the figures the daemon
    /// published (cursors, connected, downstream backlog) are as of then.
    pub updated_at: Option<u64>,
    /// Epoch ms since when the daemon is not connected to a hub.
    pub disconnected_since: Option<u64>,
    /// Epoch ms when the upstream cursor last moved.
    pub upstream_progress_at: Option<u64>,
    /// Epoch ms of the oldest entry waiting in `out:x` (its id's time), when
    /// there is a backlog.
    pub upstream_oldest_at: Option<u64>,
    /// The last device seq the hub acknowledged.
    pub upstream_cursor: Option<StreamId>,
    /// Entries in `out:x` after the upstream cursor (all of them if the hub
    /// never acknowledged anything).
    pub upstream_backlog: u64,
    /// The last hub id stored in `in:x`.
    pub downstream_cursor: StreamId,
    /// Entries waiting for the device on the hub, as the hub last reported
    /// (counted up to 10,000); unknown until the first push.
    pub downstream_backlog: Option<u64>,
    /// The last broadcast id stored in `in:x`.
    pub broadcast_cursor: StreamId,
    /// Times broadcasts were deleted (past the hub's retention) before this
    /// device received them.
    pub broadcast_gaps: u64,
    /// The most recent such finding.
    pub last_broadcast_gap: Option<String>,
    /// Messages for this device that expired on the hub before delivery.
    pub expired: u64,
    /// The most recent such report.
    pub last_expired: Option<String>,
    /// Out-stream entries set aside past a limit (in `lula-client:dead:x`).
    pub set_aside_up: u64,
    /// The most recent one: id, reason, when.
    pub last_set_aside_up: Option<String>,
    /// Messages and broadcasts the hub set aside for this device (in
    /// `lula-hub:dead:x`).
    pub set_aside_down: u64,
    /// The most recent one: stream, id, reason, when.
    pub last_set_aside_down: Option<String>,
    /// The daemon's most recent error.
    pub last_error: Option<String>,
    /// Epoch ms when the session token expires (the state hash keeps
    /// seconds, as the Node client does; every time in the report is ms).
    pub session_expires_at: Option<u64>,
    /// Times entries were found deleted from `out:x` before they were synced.
    pub gaps: u64,
    /// The most recent such finding.
    pub last_gap: Option<String>,
    /// A condition that needs an operator, as of the last connection.
    pub warning: Option<String>,
    /// Compression the hub agreed to at the last connect, or `off`.
    pub compression: Option<String>,
    /// Bytes on the link since the daemon started, as last published: sent,
    /// the JSON sent, received, the JSON received.
    pub link: Option<[u64; 4]>,
}

/// Reads the status from the state dir and the device Redis.
pub async fn status(
    state_dir: &Path,
    redis_url: &str,
    prefix: &str,
) -> anyhow::Result<StatusReport> {
    let identity = Identity::load(&state_dir.join(IDENTITY_FILE))?;
    let keys = DeviceKeys::new(prefix);
    let mut conn = connect(redis_url).await?;
    let fields: std::collections::HashMap<String, String> = conn.hgetall(keys.state()).await?;
    let get = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
    let updated_at = get(status_fields::UPDATED_AT).and_then(|v| v.parse::<u64>().ok());
    let fresh =
        updated_at.is_some_and(|t| now_ms().saturating_sub(t) < STALE_AFTER.as_millis() as u64);
    let upstream_cursor = get(status_fields::UPSTREAM).and_then(|v| v.parse().ok());
    let after = upstream_cursor.unwrap_or(StreamId::ZERO);
    let (upstream_backlog, upstream_oldest_at) =
        upstream_backlog(&mut conn, &keys.out_stream(), after).await?;
    let ms = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
    let n = |k: &str| ms(k).unwrap_or(0);
    Ok(StatusReport {
        disconnected_since: ms(status_fields::DISCONNECTED_SINCE),
        upstream_progress_at: ms(status_fields::UPSTREAM_PROGRESS_AT),
        upstream_oldest_at,
        client_id: identity.as_ref().map(|i| i.client_id.to_string()),
        registered: identity.as_ref().is_some_and(|i| i.registered),
        connected: fresh && get(status_fields::CONNECTED).as_deref() == Some("1"),
        updated_at,
        upstream_cursor,
        upstream_backlog,
        downstream_cursor: get(DOWNSTREAM_FIELD)
            .and_then(|v| v.parse().ok())
            .unwrap_or(StreamId::ZERO),
        downstream_backlog: get(status_fields::DOWNSTREAM_BACKLOG).and_then(|v| v.parse().ok()),
        broadcast_cursor: get(BROADCAST_FIELD)
            .and_then(|v| v.parse().ok())
            .unwrap_or(StreamId::ZERO),
        broadcast_gaps: n(status_fields::BROADCAST_GAPS),
        last_broadcast_gap: get(status_fields::LAST_BROADCAST_GAP),
        expired: n(status_fields::EXPIRED),
        last_expired: get(status_fields::LAST_EXPIRED),
        set_aside_up: n(status_fields::SET_ASIDE_UP),
        last_set_aside_up: get(status_fields::LAST_SET_ASIDE_UP),
        set_aside_down: n(status_fields::SET_ASIDE_DOWN),
        last_set_aside_down: get(status_fields::LAST_SET_ASIDE_DOWN),
        last_error: get(status_fields::LAST_ERROR),
        session_expires_at: get(status_fields::SESSION_EXPIRES_AT)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|secs| secs.saturating_mul(1000)),
        gaps: n(status_fields::GAPS),
        last_gap: get(status_fields::LAST_GAP),
        warning: get(status_fields::WARNING),
        compression: get(status_fields::COMPRESSION),
        link: link_counts(&get),
    })
}

/// A connection to the device Redis for `status`. Counting a large backlog
/// pages through it, so a reply may take more than redis-rs's default 500 ms
/// on a small, busy device.
async fn connect(redis_url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    Ok(redis::Client::open(redis_url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// Entries of `out:x` after the hub's acknowledged cursor `after`, and the
/// time (ms) of the oldest of them, when there is one.
async fn upstream_backlog(
    conn: &mut redis::aio::MultiplexedConnection,
    out_stream: &str,
    after: StreamId,
) -> anyhow::Result<(u64, Option<u64>)> {
    let backlog = count_after(conn, out_stream, after).await?;
    if backlog == 0 {
        return Ok((0, None));
    }
    let (from, to) = after.range_after();
    let oldest: Vec<(String, redis::Value)> = conn.xrange_count(out_stream, from, to, 1).await?;
    let oldest_at = oldest
        .first()
        .and_then(|(id, _)| id.parse::<StreamId>().ok())
        .map(|id| id.ms);
    Ok((backlog, oldest_at))
}

/// The four link counts, when the daemon published them.
fn link_counts(get: &impl Fn(&str) -> Option<String>) -> Option<[u64; 4]> {
    let n = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
    Some([
        n(status_fields::LINK_SENT)?,
        n(status_fields::LINK_SENT_PLAIN)?,
        n(status_fields::LINK_RECEIVED)?,
        n(status_fields::LINK_RECEIVED_PLAIN)?,
    ])
}

/// `1.2 MiB (0.21 of 5.8 MiB of JSON)`.
fn link_line(wire: u64, plain: u64) -> String {
    let size = |b: u64| match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
    };
    if plain == 0 {
        size(wire)
    } else {
        format!(
            "{} ({:.2} of {} of JSON)",
            size(wire),
            wire as f64 / plain as f64,
            size(plain)
        )
    }
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_daemon(f)?;
        self.fmt_cursors(f)?;
        self.fmt_problems(f)
    }
}

impl StatusReport {
    /// Identity, connection and the upstream cursor.
    fn fmt_daemon(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ago = |ms: u64| {
            humantime::format_duration(Duration::from_secs(now_ms().saturating_sub(ms) / 1000))
        };
        writeln!(
            f,
            "client:             {}",
            self.client_id
                .as_deref()
                .unwrap_or("(no identity in state dir)")
        )?;
        writeln!(
            f,
            "registered:         {}",
            if self.registered { "yes" } else { "no" }
        )?;
        let connected = match (self.connected, self.updated_at) {
            (true, _) => "yes".to_owned(),
            (false, Some(t)) => format!("no (daemon last seen {} ago)", ago(t)),
            (false, None) => "no (daemon never ran against this Redis)".to_owned(),
        };
        writeln!(f, "connected:          {connected}")?;
        // The cursors and backlogs below are as of the daemon's last write
        // (at most a second old while it runs); the upstream backlog is
        // counted now, against that cursor.
        if let Some(t) = self.updated_at {
            writeln!(
                f,
                "figures as of:      {} ago (the daemon's last status write)",
                humantime::format_duration(Duration::from_millis(
                    now_ms().saturating_sub(t) / 100 * 100
                ))
            )?;
        }
        match self.upstream_cursor {
            Some(c) => writeln!(f, "upstream cursor:    {c} (last seq the hub acknowledged)")?,
            None => writeln!(
                f,
                "upstream cursor:    unknown (never acknowledged by the hub)"
            )?,
        }
        Ok(())
    }

    /// Backlogs both ways, the other cursors and the session's expiry.
    fn fmt_cursors(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "upstream backlog:   {} entries waiting in out:x",
            self.upstream_backlog
        )?;
        writeln!(
            f,
            "downstream cursor:  {} (last hub entry stored in in:x)",
            self.downstream_cursor
        )?;
        match self.downstream_backlog {
            Some(n) => writeln!(
                f,
                "downstream backlog: {}{n} entries waiting on the hub{}",
                if n >= lula_protocol::limits::BACKLOG_COUNT_CAP as u64 {
                    "at least "
                } else {
                    ""
                },
                if self.connected {
                    ""
                } else {
                    " (as last reported)"
                }
            )?,
            None => writeln!(
                f,
                "downstream backlog: unknown (no message from the hub yet)"
            )?,
        }
        writeln!(
            f,
            "broadcast cursor:   {} (last broadcast stored in in:x)",
            self.broadcast_cursor
        )?;
        if let Some(c) = &self.compression {
            writeln!(f, "compression:        {c}")?;
        }
        if let Some([sent, sent_plain, received, received_plain]) = self.link {
            writeln!(f, "link sent:          {}", link_line(sent, sent_plain))?;
            writeln!(
                f,
                "link received:      {}",
                link_line(received, received_plain)
            )?;
        }
        if let Some(exp) = self.session_expires_at {
            writeln!(
                f,
                "session expires:    {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(exp)
                )
            )?;
        }
        Ok(())
    }

    /// Losses, warnings and the last error.
    fn fmt_problems(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = [
            ("lost before sync:", self.gaps, &self.last_gap, " time(s)"),
            (
                "missed broadcasts:",
                self.broadcast_gaps,
                &self.last_broadcast_gap,
                " time(s) (trimmed by the hub's retention first)",
            ),
            (
                "expired messages:",
                self.expired,
                &self.last_expired,
                " (not delivered: past expiresAt or --downstream-max-age)",
            ),
            (
                "set aside up:",
                self.set_aside_up,
                &self.last_set_aside_up,
                " (past a limit; in lula-client:dead:x)",
            ),
            (
                "set aside down:",
                self.set_aside_down,
                &self.last_set_aside_down,
                " (past a limit; in the hub's lula-hub:dead:x)",
            ),
        ];
        for (label, n, last, what) in counts {
            match last {
                Some(last) if n > 0 => writeln!(f, "{label:<20}{n}{what}; last: {last}")?,
                _ => writeln!(f, "{label:<20}none")?,
            }
        }
        if let Some(w) = &self.warning {
            writeln!(f, "WARNING:            {w}")?;
        }
        write!(
            f,
            "last error:         {}",
            self.last_error.as_deref().unwrap_or("none")
        )
    }
}

/// The one-line progress of a draining backlog for `lula-client status
/// --watch`: how many entries wait, how fast they go, and about how long is
/// left, from the backlog's change between two looks.
#[derive(Debug, Default)]
pub struct Progress {
    last: Option<(std::time::Instant, u64)>,
}

impl Progress {
    /// The line for a backlog of `backlog` entries seen at `at`.
    pub fn line(&mut self, at: std::time::Instant, backlog: u64, connected: bool) -> String {
        let previous = self.last.replace((at, backlog));
        let state = if connected {
            "connected"
        } else {
            "NOT connected"
        };
        let rate = previous.and_then(|(then, before)| {
            let secs = at.duration_since(then).as_secs_f64();
            (secs > 0.0 && before >= backlog).then(|| (before - backlog) as f64 / secs)
        });
        match rate {
            _ if backlog == 0 => format!("upstream backlog: 0 entries, caught up ({state})"),
            Some(rate) if rate >= 1.0 => format!(
                "upstream backlog: {} entries, draining at {}/s, about {} left ({state})",
                thousands(backlog),
                thousands(rate as u64),
                humantime::format_duration(Duration::from_secs(
                    (backlog as f64 / rate).ceil() as u64
                ))
            ),
            _ => format!(
                "upstream backlog: {} entries, not draining ({state})",
                thousands(backlog)
            ),
        }
    }
}

impl Progress {
    /// [`Progress::line`], plus what waits downstream on the hub when the
    /// hub reported a backlog (with its pushes).
    pub fn line_with_downstream(
        &mut self,
        at: std::time::Instant,
        upstream: u64,
        downstream: Option<u64>,
        connected: bool,
    ) -> String {
        let mut line = self.line(at, upstream, connected);
        if let Some(n) = downstream.filter(|&n| n > 0) {
            line.push_str(&format!(
                "; downstream backlog: {} on the hub",
                thousands(n)
            ));
        }
        line
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn link_bytes_show_with_the_compression_ratio() {
        assert_eq!(link_line(0, 0), "0 B");
        assert_eq!(link_line(2_048, 0), "2.0 KiB");
        assert_eq!(
            link_line(262_144, 1_048_576),
            "256.0 KiB (0.25 of 1.0 MiB of JSON)"
        );
        let fields: std::collections::HashMap<&str, &str> = [
            (status_fields::LINK_SENT, "10"),
            (status_fields::LINK_SENT_PLAIN, "40"),
            (status_fields::LINK_RECEIVED, "5"),
            (status_fields::LINK_RECEIVED_PLAIN, "20"),
        ]
        .into();
        let get = |k: &str| fields.get(k).map(|v| v.to_string());
        assert_eq!(link_counts(&get), Some([10, 40, 5, 20]));
        assert_eq!(link_counts(&|_: &str| None), None, "an older daemon");
    }

    #[test]
    fn progress_shows_the_rate_and_the_time_left() {
        let mut p = Progress::default();
        let t0 = Instant::now();
        assert_eq!(
            p.line(t0, 1_200_000, true),
            "upstream backlog: 1,200,000 entries, not draining (connected)"
        );
        assert_eq!(
            p.line(t0 + Duration::from_secs(2), 1_000_000, true),
            "upstream backlog: 1,000,000 entries, draining at 100,000/s, about 10s left (connected)"
        );
        assert_eq!(
            p.line(t0 + Duration::from_secs(3), 1_000_000, false),
            "upstream backlog: 1,000,000 entries, not draining (NOT connected)"
        );
        assert_eq!(
            p.line(t0 + Duration::from_secs(4), 0, true),
            "upstream backlog: 0 entries, caught up (connected)"
        );
    }

    #[test]
    fn the_progress_line_adds_what_waits_downstream() {
        let mut p = Progress::default();
        let t0 = Instant::now();
        assert_eq!(
            p.line_with_downstream(t0, 0, Some(12_500), true),
            "upstream backlog: 0 entries, caught up (connected); downstream backlog: 12,500 on the hub"
        );
        assert_eq!(
            p.line_with_downstream(t0, 0, Some(0), true),
            "upstream backlog: 0 entries, caught up (connected)"
        );
        assert_eq!(
            p.line_with_downstream(t0, 0, None, true),
            "upstream backlog: 0 entries, caught up (connected)"
        );
    }
}
