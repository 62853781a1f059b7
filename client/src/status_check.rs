//! `lula-client status --check`: the device's sync health as an exit code,
//! for a container `HEALTHCHECK`, a systemd watchdog script or a monitoring
//! agent, judged from what `lula-client status` reads.
//!
//! | exit | meaning |
//! |---|---|
//! | 0 | healthy: the daemon runs, and is connected or was so recently |
//! | 1 | the status could not be read (no device Redis, bad flags) |
//! | 2 | stopped: no daemon wrote its status in the last 15 s |
//! | 3 | disconnected for longer than `--max-disconnected` |
//! | 4 | the upstream backlog is not draining: an entry has waited, and the cursor has not moved, for longer than `--max-stall` |
//!
//! "Not draining" needs both, so neither a large backlog that is moving (its
//! oldest entry is old, the cursor moves) nor fresh entries after a quiet
//! hour (the cursor last moved long ago, the entries are new) count.

use std::time::Duration;

use crate::status::StatusReport;

/// The thresholds of a check.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest tolerated disconnection.
    pub max_disconnected: Duration,
    /// Longest tolerated stall of a non-empty upstream backlog.
    pub max_stall: Duration,
}

/// What a check found, most severe first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// All is well.
    Healthy,
    /// No daemon is running (or it hung): its status is stale or missing.
    Stopped,
    /// Disconnected for this long.
    Disconnected(Duration),
    /// The oldest entry has waited this long, and the cursor has not moved
    /// for at least `max_stall`.
    NotDraining(Duration),
}

impl Verdict {
    /// The process exit code (see the module docs).
    pub fn exit_code(&self) -> i32 {
        match self {
            Verdict::Healthy => 0,
            Verdict::Stopped => 2,
            Verdict::Disconnected(_) => 3,
            Verdict::NotDraining(_) => 4,
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let d = |d: &Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
        match self {
            Verdict::Healthy => "ok".into(),
            Verdict::Stopped => "CRITICAL: the daemon is not running".into(),
            Verdict::Disconnected(t) => format!("CRITICAL: disconnected for {}", d(t)),
            Verdict::NotDraining(t) => format!(
                "CRITICAL: the upstream backlog is not draining (oldest entry waiting {})",
                d(t)
            ),
        }
    }
}

/// Judges `report` at `now_ms` (epoch ms).
pub fn check(report: &StatusReport, limits: Limits, now_ms: u64) -> Verdict {
    let since = |t: u64| Duration::from_millis(now_ms.saturating_sub(t));
    let running = report.updated_at.is_some_and(|t| since(t) < STALE_AFTER);
    if !running {
        return Verdict::Stopped;
    }
    if !report.connected {
        // No `disconnectedSince`: a daemon older than the field; it counts
        // as just disconnected.
        let down = report.disconnected_since.map(since).unwrap_or_default();
        if down > limits.max_disconnected {
            return Verdict::Disconnected(down);
        }
    }
    if report.upstream_backlog > 0
        && let Some(oldest) = report.upstream_oldest_at
    {
        let waited = since(oldest);
        let stalled = report.upstream_progress_at.map_or(waited, since);
        if waited > limits.max_stall && stalled > limits.max_stall {
            return Verdict::NotDraining(waited);
        }
    }
    Verdict::Healthy
}

/// A daemon whose last status write is older than this is not running (it
/// writes every second or so; see `crate::status`).
pub const STALE_AFTER: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;
    use lula_protocol::StreamId;

    const NOW: u64 = 1_800_000_000_000;
    const LIMITS: Limits = Limits {
        max_disconnected: Duration::from_secs(60),
        max_stall: Duration::from_secs(60),
    };

    fn report() -> StatusReport {
        StatusReport {
            client_id: Some("dev".into()),
            registered: true,
            connected: true,
            updated_at: Some(NOW - 500),
            disconnected_since: None,
            upstream_progress_at: Some(NOW - 1_000),
            upstream_oldest_at: None,
            upstream_cursor: None,
            upstream_backlog: 0,
            downstream_cursor: StreamId::ZERO,
            downstream_backlog: None,
            broadcast_cursor: StreamId::ZERO,
            broadcast_gaps: 0,
            last_broadcast_gap: None,
            expired: 0,
            last_expired: None,
            set_aside_up: 0,
            last_set_aside_up: None,
            set_aside_down: 0,
            last_set_aside_down: None,
            last_error: None,
            session_expires_at: None,
            gaps: 0,
            last_gap: None,
            warning: None,
            compression: None,
            link: None,
        }
    }

    #[test]
    fn a_connected_daemon_with_nothing_waiting_is_healthy() {
        assert_eq!(check(&report(), LIMITS, NOW), Verdict::Healthy);
    }

    #[test]
    fn a_stale_or_missing_status_is_a_stopped_daemon() {
        let stale = StatusReport {
            updated_at: Some(NOW - 16_000),
            ..report()
        };
        assert_eq!(check(&stale, LIMITS, NOW), Verdict::Stopped);
        let never = StatusReport {
            updated_at: None,
            ..report()
        };
        assert_eq!(check(&never, LIMITS, NOW).exit_code(), 2);
    }

    #[test]
    fn disconnected_past_the_limit_only() {
        let brief = StatusReport {
            connected: false,
            disconnected_since: Some(NOW - 30_000),
            ..report()
        };
        assert_eq!(check(&brief, LIMITS, NOW), Verdict::Healthy);
        let long = StatusReport {
            disconnected_since: Some(NOW - 61_000),
            ..brief
        };
        assert_eq!(
            check(&long, LIMITS, NOW),
            Verdict::Disconnected(Duration::from_secs(61))
        );
        assert_eq!(check(&long, LIMITS, NOW).exit_code(), 3);
    }

    #[test]
    fn a_backlog_is_stuck_only_when_old_and_the_cursor_is_still() {
        let waiting = |oldest_ago: u64, progress_ago: u64| StatusReport {
            upstream_backlog: 1_000,
            upstream_oldest_at: Some(NOW - oldest_ago),
            upstream_progress_at: Some(NOW - progress_ago),
            ..report()
        };
        // Draining a big old backlog: the cursor moves.
        assert_eq!(
            check(&waiting(3_600_000, 1_000), LIMITS, NOW),
            Verdict::Healthy
        );
        // New entries after a quiet hour.
        assert_eq!(
            check(&waiting(2_000, 3_600_000), LIMITS, NOW),
            Verdict::Healthy
        );
        // Stuck.
        let stuck = check(&waiting(120_000, 120_000), LIMITS, NOW);
        assert_eq!(stuck, Verdict::NotDraining(Duration::from_secs(120)));
        assert_eq!(stuck.exit_code(), 4);
    }
}
