//! Upstream retention: what leaves the device's `out:x` once the hub has it.
//!
//! The hub acknowledges a batch only after it is in the cloud Redis, so every
//! entry at or below the acknowledged cursor is safe in the cloud. The daemon
//! trims `out:x` with `XTRIM MINID`, whose bound is never above the entry
//! after that cursor: an entry the hub has not acknowledged can never be
//! removed, whatever else happens (another daemon, a restart, a producer's
//! own trim). How much acknowledged history stays on the device is a setting
//! ([`KeepAcked`]): none, the last N entries, or the entries younger than an
//! age.
//!
//! Counting the last N needs to know how many acknowledged entries lie above
//! a candidate bound. Redis has no cheap "id of the N-th entry from here", so
//! the daemon remembers a checkpoint per acknowledgement (its last id and the
//! running count of acknowledged entries) and trims at the oldest checkpoint
//! with at most N acknowledged entries above it. How many entries the hub
//! already had when the daemon started is not known, so that history goes at
//! the first trim after a start: the count never exceeds N, and starts over.
//!
//! Trims below the cursor are not gaps: the gap tracker (`uplink::Tracker`)
//! only counts entries deleted above the position it has read, and the cursor
//! is never above that position.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lula_protocol::StreamId;

/// How much acknowledged history `out:x` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAcked {
    /// Never trim (the daemon leaves `out:x` to its producers, as before).
    All,
    /// Remove entries as soon as the hub has them.
    Nothing,
    /// Keep the last N acknowledged entries.
    Count(u64),
    /// Keep acknowledged entries younger than this (by their stream id's time).
    Age(Duration),
}

/// The default: the last 10,000 acknowledged entries.
pub const DEFAULT_KEEP_ACKED: KeepAcked = KeepAcked::Count(10_000);

/// Under a count, a trim brings the acknowledged history down to this share
/// (in tenths) of the count, so the next one is due only after a tenth of the
/// count more: one `XTRIM` per 1,000 entries at the default, not per batch.
const COUNT_LOW_WATER_TENTHS: u64 = 9;

impl FromStr for KeepAcked {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" => Ok(KeepAcked::All),
            "none" | "0" => Ok(KeepAcked::Nothing),
            s if s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse()
                .map(KeepAcked::Count)
                .map_err(|e| format!("{s}: {e}")),
            s => humantime::parse_duration(s)
                .map(KeepAcked::Age)
                .map_err(|_| {
                    format!("expected all, none, a count (10000) or an age (2h), got {s:?}")
                }),
        }
    }
}

impl fmt::Display for KeepAcked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepAcked::All => f.write_str("all"),
            KeepAcked::Nothing => f.write_str("none"),
            KeepAcked::Count(n) => write!(f, "{n}"),
            KeepAcked::Age(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// The trimming state of one daemon: checkpoints of what the hub acknowledged.
#[derive(Debug)]
pub struct OutRetention {
    keep: KeepAcked,
    /// (last id of an acknowledgement, acknowledged entries up to it), oldest first.
    checkpoints: VecDeque<(StreamId, u64)>,
    /// Acknowledged entries counted since the start.
    total: u64,
    /// The bound of the last trim: nothing below it is left to remove.
    trimmed_to: StreamId,
    /// Acknowledged entries counted up to the last trim's bound (under a count).
    trimmed_total: Option<u64>,
}

impl OutRetention {
    /// No checkpoints yet.
    pub fn new(keep: KeepAcked) -> Self {
        OutRetention {
            keep,
            checkpoints: VecDeque::new(),
            total: 0,
            trimmed_to: StreamId::ZERO,
            trimmed_total: None,
        }
    }

    /// The setting.
    pub fn keep(&self) -> KeepAcked {
        self.keep
    }

    /// Records that the hub holds everything up to `cursor`, `entries` of them
    /// newly acknowledged, and returns the `MINID` to trim with now, if a trim
    /// is due and would remove anything. `now_ms` is the wall clock (for ages).
    /// Under `none` and an age every acknowledgement can trim; under a count,
    /// once the history exceeds the count.
    pub fn acknowledged(
        &mut self,
        cursor: StreamId,
        entries: u64,
        now_ms: u64,
    ) -> Option<StreamId> {
        if self.keep == KeepAcked::All {
            return None;
        }
        self.total += entries;
        if self.checkpoints.back().is_none_or(|(id, _)| *id < cursor) {
            self.checkpoints.push_back((cursor, self.total));
        }
        if let (KeepAcked::Count(n), Some(at)) = (self.keep, self.trimmed_total)
            && self.total - at <= n
        {
            return None;
        }
        let bound = self.bound(cursor, now_ms)?;
        if bound <= self.trimmed_to {
            return None;
        }
        self.trimmed_to = bound;
        Some(bound)
    }

    /// `MINID` for the setting; never above the entry after `cursor`.
    fn bound(&mut self, cursor: StreamId, now_ms: u64) -> Option<StreamId> {
        let after_cursor = next(cursor)?;
        match self.keep {
            KeepAcked::All => None,
            KeepAcked::Nothing => Some(after_cursor),
            KeepAcked::Age(age) => {
                let oldest_kept = StreamId::new(now_ms.saturating_sub(age.as_millis() as u64), 0);
                Some(oldest_kept.min(after_cursor))
            }
            KeepAcked::Count(n) => {
                // The oldest checkpoint with at most the low water mark of
                // acknowledged entries above it; the newest if none has.
                let low = n / 10 * COUNT_LOW_WATER_TENTHS + n % 10 * COUNT_LOW_WATER_TENTHS / 10;
                let total = self.total;
                while self.checkpoints.len() > 1 && total - self.checkpoints[0].1 > low {
                    self.checkpoints.pop_front();
                }
                let (id, count) = *self.checkpoints.front()?;
                self.trimmed_total = Some(count);
                // Entries up to and including the checkpoint go.
                next(id)
            }
        }
    }
}

/// The smallest id after `id`, if there is one.
fn next(id: StreamId) -> Option<StreamId> {
    match id.seq.checked_add(1) {
        Some(seq) => Some(StreamId::new(id.ms, seq)),
        None => id.ms.checked_add(1).map(|ms| StreamId::new(ms, 0)),
    }
}

/// Trims `in:x` below what every consumer group acknowledged, every `every`,
/// until `shutdown` (`--trim-in-consumed`). Failures are logged and retried.
pub async fn trim_in_loop(
    mut device: crate::device::Device,
    every: Duration,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        match device.trim_in_consumed().await {
            Ok(0) => {}
            Ok(n) => {
                metrics.in_trimmed.inc_by(n);
                tracing::debug!(
                    entries = n,
                    "trimmed in:x below what every consumer group acknowledged"
                );
            }
            Err(e) => tracing::warn!(error = %e, "could not trim in:x"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId::new(ms, 0)
    }

    fn ack(r: &mut OutRetention, cursor: StreamId, n: u64) -> Option<StreamId> {
        r.acknowledged(cursor, n, 1_000_000)
    }

    #[test]
    fn settings_parse() {
        assert_eq!("all".parse(), Ok(KeepAcked::All));
        assert_eq!("none".parse(), Ok(KeepAcked::Nothing));
        assert_eq!("10000".parse(), Ok(KeepAcked::Count(10_000)));
        assert_eq!("2h".parse(), Ok(KeepAcked::Age(Duration::from_secs(7200))));
        assert!("lots".parse::<KeepAcked>().is_err());
        assert_eq!(DEFAULT_KEEP_ACKED.to_string(), "10000");
    }

    #[test]
    fn all_never_trims_and_none_trims_everything_acknowledged() {
        let mut r = OutRetention::new(KeepAcked::All);
        assert_eq!(ack(&mut r, id(5), 5), None);
        let mut r = OutRetention::new(KeepAcked::Nothing);
        assert_eq!(ack(&mut r, id(5), 5), Some(StreamId::new(5, 1)));
        // Nothing new acknowledged: no second trim.
        assert_eq!(ack(&mut r, id(5), 0), None);
        assert_eq!(
            ack(&mut r, StreamId::new(9, u64::MAX), 1),
            Some(StreamId::new(10, 0))
        );
    }

    #[test]
    fn a_count_keeps_at_most_that_many_acknowledged_entries() {
        let mut r = OutRetention::new(KeepAcked::Count(10));
        // Start: the hub already has everything up to 100, an unknown number
        // of entries: they go, or the bound could not be kept.
        let mut bounds = vec![ack(&mut r, id(100), 0)];
        // Batches of 3 acknowledged: 103 .. 118.
        for ms in [103, 106, 109, 112, 115, 118] {
            bounds.push(ack(&mut r, id(ms), 3));
        }
        assert_eq!(
            bounds,
            [
                Some(StreamId::new(100, 1)),
                None,
                None,
                None,
                // 12 acknowledged > 10: down to at most 9 (above 103).
                Some(StreamId::new(103, 1)),
                // 15 - 3 = 12 > 10: down to 9 again (above 106), and so on.
                Some(StreamId::new(106, 1)),
                Some(StreamId::new(109, 1)),
            ]
        );
        // One batch larger than the count: everything up to its end goes.
        assert_eq!(ack(&mut r, id(150), 30), Some(StreamId::new(150, 1)));
    }

    #[test]
    fn after_every_trim_at_most_the_count_stays() {
        for n in [1, 7, 10, 1000] {
            let mut r = OutRetention::new(KeepAcked::Count(n));
            let mut trimmed_to = 0u64;
            ack(&mut r, id(0), 0);
            for batch in [1u64, 5, 3, 800, 2, 17, 1, 1, 250, 9]
                .iter()
                .cycle()
                .take(200)
            {
                // Ids are ms = the running count, so the kept count is exact.
                let before: u64 = trimmed_to;
                let total = r.total + batch;
                if let Some(b) = ack(&mut r, id(total), *batch) {
                    // MINID <ms>-1: entries up to <ms>-0 went.
                    assert_eq!(b.seq, 1);
                    trimmed_to = b.ms;
                }
                assert!(trimmed_to >= before);
                assert!(trimmed_to <= total, "never past the cursor");
                let kept = total - trimmed_to;
                // At most n kept, or the last batch alone when it is larger.
                assert!(
                    kept <= n.max(*batch),
                    "n={n} kept {kept} after batch {batch}"
                );
            }
        }
    }

    #[test]
    fn an_age_keeps_younger_entries_and_never_passes_the_cursor() {
        let mut r = OutRetention::new(KeepAcked::Age(Duration::from_millis(1000)));
        // now = 1,000,000 ms: entries younger than 999,000 stay.
        assert_eq!(ack(&mut r, id(500_000), 1), Some(StreamId::new(500_000, 1)));
        assert_eq!(ack(&mut r, id(999_500), 1), Some(id(999_000)));
    }
}
