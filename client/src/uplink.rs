//! Upstream batching: read the device's out stream after the hub's cursor and
//! cut it into batches that fit the frame limit.
//!
//! The reader runs as its own task, one batch ahead of the session loop (the
//! channel holds one), so Redis reads overlap with the network round trip. It
//! never decides what was delivered: the session advances the cursor only on
//! the hub's acknowledgement, and a new session starts a new reader from the
//! cursor the hub reports.
//!
//! It also notices entries deleted from `out:x` before they were read (a
//! producer's `MAXLEN` trimming past a backlog, or an `XDEL`): those can never be
//! delivered. The [`Tracker`] follows the reader's position as an ordinal (how
//! many entries the stream had received up to it) and compares it with the
//! stream's counters, read atomically with the entries; a gap is logged and
//! published for `lula-client status`, and sync carries on with what is left.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use lula_protocol::budget::ReadCount;
use lula_protocol::limits::{MAX_ENTRY_VALUES, UPSTREAM_READ_AHEAD_BYTES};
use lula_protocol::parts::{EntryPart, PartLimits, Splitter};
use lula_protocol::{Entry, StreamId};
use redis::RedisError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use serde_json::value::RawValue;

use crate::device::{Device, OutRead, OutReader, status_fields};
use crate::metrics::Metrics;
use crate::published::StatusUpdate;
use std::sync::Arc;

/// How long one `XREAD` on the out stream blocks before it is issued again.
pub const READ_BLOCK: Duration = Duration::from_secs(1);

/// Bytes kept free in a frame for the envelope around the entries
/// (`{"type":"xadds","id":N,"payload":{"prev":"<id>","entries":...}}`).
pub const ENVELOPE_RESERVE: usize = 256;

/// What a reader may put in a batch, and what it sets aside.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// Most entries per batch.
    pub max_entries: usize,
    /// Most bytes of encoded entries per batch.
    pub max_bytes: usize,
    /// When the hub takes set-aside markers: the most keys plus values it
    /// takes per entry.
    pub set_aside: Option<usize>,
    /// When the hub takes entries in parts: the widest and largest it puts
    /// together. An entry past a batch but within these goes in parts.
    pub parts: Option<PartLimits>,
    /// Entries the hub refused by id on this connection, with its reason:
    /// set aside when read again (with `set_aside` only).
    pub refused: HashMap<StreamId, String>,
}

/// What a batch's buffer starts with; it grows as entries are added. Kept
/// under glibc's mmap threshold (128 KiB): a larger buffer is a fresh
/// `mmap` per batch, which the shrink into the batch's `Box<RawValue>` turns
/// into an `mremap` and dropping it into an `munmap` with a TLB shootdown
/// on every core, about 40 µs per batch. At a few entries per batch (a
/// producer slower than the link) that was most of the daemon's CPU per
/// entry and 0.05 ms of upstream latency (BENCHMARKS.md, issue 12).
const INITIAL_BATCH_BYTES: usize = 16 * 1024;

/// Consecutive out-stream entries, encoded and ready to send.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Id of the first entry.
    pub first: StreamId,
    /// Id of the last entry.
    pub last: StreamId,
    /// Number of entries.
    pub count: usize,
    /// The last entry's ordinal in the stream, when known (see [`Tracker`]).
    pub last_ordinal: Option<u64>,
    /// Entries of the stream after the last one, as of the read that found
    /// them (`entries-added` minus `last_ordinal`), when both are known: what
    /// the batch reports to the hub as the upstream backlog.
    pub backlog: Option<u64>,
    /// The entries as a JSON array, encoded once here and sent as they are
    /// (empty for a part).
    pub entries: Box<RawValue>,
    /// One part of an entry sent in parts ([`lula_protocol::parts`]); the
    /// batch counts the entry (`count` 1) only with its last part.
    pub part: Option<EntryPart>,
}

impl Batch {
    /// Whether this is a part before its entry's last: the hub appends
    /// nothing for it and the cursor stays where it was.
    pub fn is_partial(&self) -> bool {
        self.part.as_ref().is_some_and(|p| p.index + 1 < p.count)
    }

    /// About how many bytes it takes on the wire.
    pub fn wire_bytes(&self) -> usize {
        let part = self.part.as_ref().map_or(0, |p| {
            p.pieces.iter().map(|v| v.len().div_ceil(3) * 4 + 3).sum()
        });
        self.entries.get().len() + part
    }

    /// A batch of one part of the entry `split` cuts.
    fn of_part(part: EntryPart) -> Self {
        let last = part.index + 1 == part.count;
        Batch {
            first: part.id,
            last: part.id,
            count: usize::from(last),
            last_ordinal: None,
            backlog: None,
            entries: RawValue::from_string("[]".to_owned()).expect("valid JSON"),
            part: Some(part),
        }
    }
}

/// Why the reader stopped.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The device Redis failed.
    #[error("device redis: {0}")]
    Device(#[from] RedisError),
    /// One entry alone is larger than a frame may be; it can never be sent.
    /// Sync stops here rather than skip it (which would lose it): raise the
    /// frame limit on hub and client, or remove the entry.
    #[error(
        "entry {id} encodes to {bytes} bytes, more than the frame limit allows ({limit}); raise --max-frame-bytes on hub and client"
    )]
    Oversized {
        /// The entry.
        id: StreamId,
        /// Its encoded size.
        bytes: usize,
        /// The budget for entries in one frame.
        limit: usize,
    },
}

/// Takes entries from the front of `pending` into one batch of at most
/// `max_entries` entries and `max_bytes` of encoded entries. Entries are
/// encoded straight into the batch's buffer: one allocation per batch.
pub fn take_batch(
    pending: &mut VecDeque<Entry>,
    max_entries: usize,
    max_bytes: usize,
) -> Result<Option<Batch>, UplinkError> {
    let mut json: Vec<u8> = Vec::with_capacity(max_bytes.min(INITIAL_BATCH_BYTES));
    json.push(b'[');
    let (mut first, mut last, mut count) = (StreamId::ZERO, StreamId::ZERO, 0);
    while count < max_entries {
        let Some(entry) = pending.front() else { break };
        let mark = json.len();
        if count > 0 {
            json.push(b',');
        }
        serde_json::to_writer(&mut json, entry).map_err(|e| {
            RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "entry encoding",
                e.to_string(),
            ))
        })?;
        // +1 for the closing bracket
        if json.len() + 1 > max_bytes {
            if count == 0 {
                return Err(UplinkError::Oversized {
                    id: entry.id,
                    bytes: json.len() - mark,
                    limit: max_bytes,
                });
            }
            json.truncate(mark);
            break;
        }
        if count == 0 {
            first = entry.id;
        }
        last = entry.id;
        count += 1;
        pending.pop_front();
    }
    if count == 0 {
        return Ok(None);
    }
    json.push(b']');
    // serde_json writes UTF-8 and JSON only; these checks cannot fail and
    // cost a pass each.
    let entries = String::from_utf8(json)
        .map_err(|e| e.to_string())
        .and_then(|text| RawValue::from_string(text).map_err(|e| e.to_string()))
        .map_err(|e| {
            RedisError::from((redis::ErrorKind::UnexpectedReturnType, "entry encoding", e))
        })?;
    Ok(Some(Batch {
        first,
        last,
        count,
        last_ordinal: None,
        backlog: None,
        entries,
        part: None,
    }))
}

/// Entries found deleted from `out:x` before they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The reader's position: entries after it were lost.
    pub after: StreamId,
    /// How many, when known.
    pub lost: Option<u64>,
    /// What removed them.
    pub cause: GapCause,
}

/// What removed entries before they were synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapCause {
    /// Trimming (`MAXLEN`/`MINID`, `XTRIM`) removed the oldest entries, past
    /// the reader's position.
    Trimmed,
    /// `XDEL` removed entries after the reader's position (up to this id).
    Deleted(StreamId),
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how_many = match self.lost {
            Some(n) => format!("{n} entries"),
            None => "entries".to_owned(),
        };
        match self.cause {
            GapCause::Trimmed => write!(
                f,
                "{how_many} after {} were trimmed from out:x before they were synced",
                self.after
            ),
            GapCause::Deleted(to) => write!(
                f,
                "{how_many} after {} (up to {to}) were deleted from out:x with XDEL before they were synced",
                self.after
            ),
        }
    }
}

/// The reader's position in the out stream, as an id and, when known, an
/// ordinal: how many entries the stream had received up to and including it.
///
/// With the stream's `entries-added` and length (Redis 7), the number of
/// deleted entries is `added - length`; when the position is older than the
/// first entry left, every entry up to it is among them, and the rest,
/// `added - length - ordinal`, came after it: lost. `XDEL` also moves the
/// stream's `max-deleted-entry-id`, which says an unread entry was deleted.
/// The ordinal is known from `0-0` on, after any read that reached the end of
/// the stream, and across restarts through the published `upstreamOrdinal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    /// Last entry read (or the start).
    pub pos: StreamId,
    /// Its ordinal, when known.
    pub ordinal: Option<u64>,
    reported_deleted: StreamId,
}

impl Tracker {
    /// Starts at `pos`, whose ordinal may be known.
    pub fn new(pos: StreamId, ordinal: Option<u64>) -> Self {
        let ordinal = if pos == StreamId::ZERO {
            Some(0)
        } else {
            ordinal
        };
        Tracker {
            pos,
            ordinal,
            reported_deleted: pos,
        }
    }

    /// Accounts for a read of up to `asked` entries after [`Tracker::pos`];
    /// returns the gap it reveals, if any. Afterwards `pos` is the last entry
    /// read and `ordinal` its ordinal, when known.
    pub fn observe(&mut self, read: &OutRead, asked: usize) -> Option<Gap> {
        let mut gap = None;
        let deleted_after = read.max_deleted > self.pos;
        if deleted_after {
            // XDEL took an entry we had not read; counts are no longer exact.
            if read.max_deleted > self.reported_deleted {
                self.reported_deleted = read.max_deleted;
                gap = Some(Gap {
                    after: self.pos,
                    lost: None,
                    cause: GapCause::Deleted(read.max_deleted),
                });
            }
            self.ordinal = None;
        }
        let head_gone = read.first.is_none_or(|first| self.pos < first);
        let mut skipped = 0;
        if let (Some(added), Some(ordinal), true, false) =
            (read.added, self.ordinal, head_gone, deleted_after)
        {
            skipped = added.saturating_sub(read.length).saturating_sub(ordinal);
            if skipped > 0 {
                gap = Some(Gap {
                    after: self.pos,
                    lost: Some(skipped),
                    cause: GapCause::Trimmed,
                });
            }
        }
        let read_count = read.entries.len() as u64;
        if let Some(last) = read.entries.last() {
            self.pos = last.id;
        }
        self.ordinal = self.ordinal.map(|o| o + skipped + read_count);
        // A read that reached the end, with nothing deleted after the
        // position, pins the ordinal exactly.
        if read.entries.len() < asked
            && read.max_deleted <= self.pos
            && let Some(added) = read.added
        {
            self.ordinal = Some(added);
        }
        gap
    }
}

/// Reads `out:x` after `start` (whose ordinal may be known) and sends batches
/// into `tx` until `cancel` or the receiver goes away. A failure is sent as the
/// last item. Gaps are logged and published through `device`.
///
/// With `budget.set_aside` (the hub takes set-aside markers), an entry past
/// a limit, or one the hub refused before, is set aside
/// ([`Device::set_aside_up`]) and sent as a marker in its place; without it,
/// the reader stops at such an entry ([`UplinkError::Oversized`]).
///
/// It reads again only when everything read was sent, and each read asks for
/// about [`UPSTREAM_READ_AHEAD_BYTES`] ([`ReadCount`]), so what it holds is
/// bounded in bytes, not only in entries.
pub async fn read_batches(
    mut reader: OutReader,
    mut device: Device,
    metrics: Arc<Metrics>,
    (start, start_ordinal): (StreamId, Option<u64>),
    budget: Budget,
    tx: mpsc::Sender<Result<Batch, UplinkError>>,
    cancel: CancellationToken,
) {
    let mut read = ReadAhead {
        tracker: Tracker::new(start, start_ordinal),
        reads: ReadCount::new(budget.max_entries),
        pending: VecDeque::new(),
        split: None,
        next_ordinal: None,
        added: None,
    };
    loop {
        if read.pending.is_empty() && read.split.is_none() {
            // Only the read itself is cut short by `cancel`: what follows it
            // (gap reports, setting entries aside) runs to its end.
            let count = read.reads.count(UPSTREAM_READ_AHEAD_BYTES);
            let got = tokio::select! {
                _ = cancel.cancelled() => return,
                r = reader.read(read.tracker.pos, count) => r,
            };
            let accepted = match got {
                Ok(got) => {
                    read.accept(count, got, &mut device, &metrics, &budget)
                        .await
                }
                Err(e) => Err(e.into()),
            };
            if let Err(e) = accepted {
                let _ = tx.send(Err(e)).await;
                return;
            }
            continue;
        }
        let batch = match read.take(&budget) {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            sent = tx.send(Ok(batch)) => if sent.is_err() { return },
        }
    }
}

/// What [`read_batches`] holds between reads of `out:x`: entries read and not
/// yet batched, and where they are in the stream.
struct ReadAhead {
    tracker: Tracker,
    reads: ReadCount,
    pending: VecDeque<Entry>,
    /// The entry being sent in parts, taken from the front of `pending`.
    split: Option<Splitter>,
    /// Ordinal of `pending.front()` (or of the entry in `split`), when known.
    next_ordinal: Option<u64>,
    /// The stream's `entries-added` at the read that filled `pending`.
    added: Option<u64>,
}

impl ReadAhead {
    /// Takes in a read of `count` entries: notes gaps and the stream's
    /// counters, and sets aside what the hub cannot take when it takes
    /// markers.
    async fn accept(
        &mut self,
        count: usize,
        read: OutRead,
        device: &mut Device,
        metrics: &Metrics,
        budget: &Budget,
    ) -> Result<(), UplinkError> {
        self.reads
            .observe(count, read.entries.iter().map(Entry::payload_len));
        if let Some(gap) = self.tracker.observe(&read, count) {
            metrics.gaps.inc();
            report_gap(device, &gap).await;
        }
        if let Some(added) = read.added {
            metrics
                .out_added
                .store(added, std::sync::atomic::Ordering::Relaxed);
        }
        self.added = read.added;
        let n = read.entries.len() as u64;
        self.next_ordinal = self.tracker.ordinal.map(|o| o + 1 - n);
        let mut entries = read.entries;
        if budget.set_aside.is_some() {
            set_aside_past_limits(device, metrics, &mut entries, budget).await?;
        }
        self.pending.extend(entries);
        Ok(())
    }

    /// The next batch of what was read, with its ordinal and the backlog
    /// behind it when known. An entry too wide or too large for a batch
    /// goes in parts, one batch each, when the hub takes parts.
    fn take(&mut self, budget: &Budget) -> Result<Option<Batch>, UplinkError> {
        if self.split.is_none() && budget.parts.is_some() {
            self.start_parts(budget);
        }
        let batch = match self.split.as_mut() {
            Some(split) => {
                let part = split.next_part();
                if part.as_ref().is_none_or(|p| p.index + 1 == p.count) {
                    self.split = None;
                }
                part.map(Batch::of_part)
            }
            None => {
                // A batch ends before an entry too wide for it (one too
                // large for it ends the batch by itself).
                let wide = self
                    .pending
                    .iter()
                    .position(|e| budget.parts.is_some() && too_wide_for_a_batch(e));
                let max_entries = wide.map_or(budget.max_entries, |i| i.min(budget.max_entries));
                take_batch(&mut self.pending, max_entries, budget.max_bytes)?
            }
        };
        let Some(mut batch) = batch else {
            return Ok(None);
        };
        batch.last_ordinal = self
            .next_ordinal
            .and_then(|o| (o + batch.count as u64).checked_sub(1));
        batch.backlog = self
            .added
            .zip(batch.last_ordinal)
            .map(|(added, last)| added.saturating_sub(last));
        self.next_ordinal = self.next_ordinal.map(|o| o + batch.count as u64);
        Ok(Some(batch))
    }

    /// Starts sending the front entry in parts when it does not fit a batch.
    fn start_parts(&mut self, budget: &Budget) {
        let Some(front) = self.pending.front() else {
            return;
        };
        if !needs_parts(front, budget) {
            return;
        }
        if let Some(entry) = self.pending.pop_front() {
            tracing::debug!(id = %entry.id, values = entry.fields.len(), bytes = entry.payload_len(), "sending an entry in parts");
            self.split = Some(Splitter::new(entry, budget.max_bytes));
        }
    }
}

/// Whether `entry` goes in parts: the hub takes parts, and the entry is
/// wider than a batch may hold, or its encoding does not fit one.
fn needs_parts(entry: &Entry, budget: &Budget) -> bool {
    budget.parts.is_some()
        && (too_wide_for_a_batch(entry)
            || entry
                .past_limits(usize::MAX, batch_entry_bytes(budget))
                .is_some())
}

/// More keys plus values than a batch may carry (never a marker).
fn too_wide_for_a_batch(entry: &Entry) -> bool {
    entry.fields.len() > MAX_ENTRY_VALUES
}

/// The most bytes one entry's encoding may take in a batch: the budget less
/// the batch's brackets.
fn batch_entry_bytes(budget: &Budget) -> usize {
    budget.max_bytes.saturating_sub(2)
}

/// Sets aside the entries the hub refused by id, and those past its limits:
/// for parts when it takes parts, else for a batch (see
/// [`Device::set_aside_up`]), replacing each with a set-aside marker to send
/// in its place.
async fn set_aside_past_limits(
    device: &mut Device,
    metrics: &Metrics,
    entries: &mut [Entry],
    budget: &Budget,
) -> Result<(), RedisError> {
    for entry in entries.iter_mut() {
        let reason = budget
            .refused
            .get(&entry.id)
            .map(|why| format!("refused by the hub: {why}"))
            .or_else(|| match (&budget.parts, budget.set_aside) {
                (Some(parts), _) => parts.refuses(entry),
                (None, Some(max_values)) => {
                    entry.past_limits(max_values, batch_entry_bytes(budget))
                }
                (None, None) => None,
            });
        let Some(reason) = reason else {
            continue;
        };
        // A reason the hub takes (it refuses markers with longer ones).
        let reason: String = reason.chars().take(500).collect();
        let counted = device.set_aside_up(entry, &reason).await?;
        if counted {
            metrics
                .set_aside
                .get_or_create(&[("direction", "up")])
                .inc();
        }
        tracing::warn!(
            id = %entry.id,
            %reason,
            "out:x entry cannot be sent: set aside into lula-client:dead:x; sync goes on"
        );
        *entry = Entry::marker(entry.id, reason);
    }
    Ok(())
}

/// Logs a gap and publishes it for `lula-client status`.
async fn report_gap(device: &mut Device, gap: &Gap) {
    tracing::warn!(%gap, "entries lost before sync; carrying on with the rest");
    let _ = device.count(status_fields::GAPS, 1).await;
    let noticed = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let update = StatusUpdate {
        last_gap: Some(format!("{gap} (noticed {noticed})")),
        ..StatusUpdate::default()
    };
    let _ = device.publish(&update).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u64, size: usize) -> VecDeque<Entry> {
        (1..=n)
            .map(|i| Entry::from_pairs(StreamId::new(i, 0), &[("v", "x".repeat(size))]))
            .collect()
    }

    #[test]
    fn batches_respect_entry_and_byte_limits_and_keep_order() {
        let mut pending = entries(10, 10);
        let b = take_batch(&mut pending, 4, 10_000).unwrap().unwrap();
        assert_eq!(
            (b.first, b.last, b.count),
            (StreamId::new(1, 0), StreamId::new(4, 0), 4)
        );
        let parsed: Vec<Entry> = serde_json::from_str(b.entries.get()).unwrap();
        assert_eq!(
            parsed.iter().map(|e| e.id.ms).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        // one entry encodes to about 40 bytes; a 100-byte budget holds two
        let b = take_batch(&mut pending, 100, 100).unwrap().unwrap();
        assert_eq!(b.count, 2);
        assert!(b.entries.get().len() <= 100);
        assert_eq!(pending.front().unwrap().id, StreamId::new(7, 0));
    }

    fn read(
        ids: std::ops::RangeInclusive<u64>,
        added: u64,
        length: u64,
        first: Option<u64>,
        max_deleted: u64,
    ) -> OutRead {
        OutRead {
            entries: ids
                .map(|i| Entry::from_pairs(StreamId::new(i, 0), &[("k", "v")]))
                .collect(),
            added: Some(added),
            length,
            first: first.map(|f| StreamId::new(f, 0)),
            max_deleted: StreamId::new(max_deleted, 0),
        }
    }

    /// A read that found no entries.
    fn read_none(added: u64, length: u64, first: Option<u64>, max_deleted: u64) -> OutRead {
        OutRead {
            entries: Vec::new(),
            ..read(1..=1, added, length, first, max_deleted)
        }
    }

    #[test]
    fn reads_without_deletions_report_nothing_and_count_ordinals() {
        let mut t = Tracker::new(StreamId::ZERO, None);
        // 10 entries exist, asked for 4: more follow.
        assert_eq!(t.observe(&read(1..=4, 10, 10, Some(1), 0), 4), None);
        assert_eq!((t.pos, t.ordinal), (StreamId::new(4, 0), Some(4)));
        // Producers trimmed the entries already read: not a gap.
        assert_eq!(t.observe(&read(5..=10, 12, 8, Some(5), 0), 100), None);
        assert_eq!((t.pos, t.ordinal), (StreamId::new(10, 0), Some(12)));
    }

    #[test]
    fn trimming_past_the_position_is_counted_exactly() {
        // Synced up to 100 (ordinal 100); then 500 more were added and the
        // stream trimmed to its last 200: entries 101..=400 never read.
        let mut t = Tracker::new(StreamId::new(100, 0), Some(100));
        let gap = t.observe(&read(401..=600, 600, 200, Some(401), 0), 1000);
        assert_eq!(
            gap,
            Some(Gap {
                after: StreamId::new(100, 0),
                lost: Some(300),
                cause: GapCause::Trimmed
            })
        );
        assert_eq!((t.pos, t.ordinal), (StreamId::new(600, 0), Some(600)));
        // Reported once: the next read finds nothing new.
        assert_eq!(t.observe(&read_none(600, 200, Some(401), 0), 1000), None);
        // Everything gone: an empty stream after more were added.
        let gap = t.observe(&read_none(650, 0, None, 0), 1000);
        assert_eq!(gap.and_then(|g| g.lost), Some(50));
    }

    #[test]
    fn an_unknown_ordinal_reports_no_trim_until_a_read_reaches_the_end() {
        let mut t = Tracker::new(StreamId::new(100, 0), None);
        assert_eq!(
            t.observe(&read(401..=500, 600, 200, Some(401), 0), 100),
            None
        );
        assert_eq!(t.ordinal, None);
        // Reaching the end pins it.
        assert_eq!(
            t.observe(&read(501..=600, 600, 200, Some(401), 0), 1000),
            None
        );
        assert_eq!(t.ordinal, Some(600));
    }

    #[test]
    fn xdel_of_an_unread_entry_is_reported_once_without_a_count() {
        let mut t = Tracker::new(StreamId::new(10, 0), Some(10));
        let gap = t.observe(&read(11..=14, 16, 5, Some(1), 15), 100);
        assert_eq!(
            gap,
            Some(Gap {
                after: StreamId::new(10, 0),
                lost: None,
                cause: GapCause::Deleted(StreamId::new(15, 0))
            })
        );
        assert!(t.observe(&read(16..=16, 16, 5, Some(1), 15), 100).is_none());
        assert!(gap.unwrap().to_string().contains("XDEL"));
    }

    #[test]
    fn an_entry_larger_than_a_frame_is_an_error_not_a_skip() {
        let mut pending = entries(2, 1000);
        assert!(matches!(
            take_batch(&mut pending, 10, 500),
            Err(UplinkError::Oversized { .. })
        ));
        assert_eq!(pending.len(), 2, "nothing may be dropped");
        assert!(take_batch(&mut VecDeque::new(), 10, 500).unwrap().is_none());
    }
}
