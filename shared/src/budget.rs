//! Byte budgets beside entry budgets.
//!
//! Entry counts alone do not bound memory: 1,000 entries may be 100 KB or
//! 5 GB. Redis cannot be asked for "at most so many bytes" of a stream, so
//! [`ReadCount`] picks the next read's `COUNT` from the sizes of the entries
//! read lately, and [`Window`] counts unacknowledged data in bytes as well as
//! entries. Both always allow one entry, so an entry larger than any budget
//! still moves (alone).

use std::collections::VecDeque;

use crate::StreamId;

/// How many entries to ask for in the next read of a stream, so that one
/// read holds about a byte budget.
///
/// The count is `budget / largest recent entry`, clamped to `1..=cap`. The
/// cap starts at one entry and grows fourfold after every read that came back
/// full (the stream had more), up to the entry maximum, so a stream of 5 MB
/// entries is read one at a time from the first read on, and a stream of
/// 100-byte entries reaches reads of 1,000 after six reads. "Largest recent"
/// is the largest entry of the last read, or half the previous estimate if
/// that is larger: one large entry keeps the next reads small, and the
/// estimate comes back down within a few reads.
///
/// Worst case, stated honestly: the estimate is only as good as the recent
/// past. After a long run of small entries a read may ask for the full entry
/// maximum and get that many large entries (up to the maximum times the
/// largest entry Redis holds). A stream that mixes sizes is read by its
/// largest recent entry, so the overshoot needs a sudden switch from small
/// entries to a full read's worth of large ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadCount {
    max: usize,
    cap: usize,
    largest: usize,
}

impl ReadCount {
    /// How much the cap grows after a full read.
    const GROWTH: usize = 4;

    /// Counts of at most `max_entries` (at least one).
    pub fn new(max_entries: usize) -> Self {
        ReadCount {
            max: max_entries.max(1),
            cap: 1,
            largest: 0,
        }
    }

    /// Entries to ask for when about `budget` bytes may be read.
    pub fn count(&self, budget: usize) -> usize {
        let by_size = budget.checked_div(self.largest).unwrap_or(self.max);
        by_size.clamp(1, self.cap)
    }

    /// About how many bytes a read of `count` entries brings, by the largest
    /// recent entry; before any read, `count` entries of `unknown` bytes each.
    pub fn expected(&self, count: usize, unknown: usize) -> usize {
        let each = if self.largest == 0 {
            unknown
        } else {
            self.largest
        };
        count.saturating_mul(each)
    }

    /// Accounts for a read that asked for `asked` entries and returned
    /// entries of these sizes (bytes).
    pub fn observe(&mut self, asked: usize, sizes: impl IntoIterator<Item = usize>) {
        let (mut n, mut largest) = (0, 0);
        for size in sizes {
            n += 1;
            largest = largest.max(size);
        }
        if n == 0 {
            return;
        }
        self.largest = largest.max(self.largest / 2).max(1);
        if n >= asked {
            self.cap = self.cap.saturating_mul(Self::GROWTH).min(self.max);
        }
    }
}

/// Data sent and not yet acknowledged, in entries and bytes, with limits on
/// both. It has room while both are under their limits, so whatever the sizes
/// at least one entry can always be sent, and it overshoots the byte limit
/// by at most what was sent while it still had room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    max_entries: usize,
    max_bytes: usize,
    entries: usize,
    bytes: usize,
    /// (last id of a send, its entries, its bytes), oldest first.
    sent: VecDeque<(StreamId, usize, usize)>,
}

impl Window {
    /// An empty window of at most `max_entries` and about `max_bytes`.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Window {
            max_entries: max_entries.max(1),
            max_bytes: max_bytes.max(1),
            entries: 0,
            bytes: 0,
            sent: VecDeque::new(),
        }
    }

    /// Whether another send may start.
    pub fn has_room(&self) -> bool {
        self.entries < self.max_entries && self.bytes < self.max_bytes
    }

    /// Entries that still fit (at least one).
    pub fn room_entries(&self) -> usize {
        (self.max_entries.saturating_sub(self.entries)).max(1)
    }

    /// Bytes that still fit (at least one).
    pub fn room_bytes(&self) -> usize {
        (self.max_bytes.saturating_sub(self.bytes)).max(1)
    }

    /// Unacknowledged entries.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Unacknowledged bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Counts a send of `entries` entries and `bytes` bytes ending at `last`.
    pub fn add(&mut self, last: StreamId, entries: usize, bytes: usize) {
        self.entries += entries;
        self.bytes += bytes;
        self.sent.push_back((last, entries, bytes));
    }

    /// Releases every send up to `acked`; returns the entries released.
    pub fn settle(&mut self, acked: StreamId) -> usize {
        let mut released = 0;
        while let Some(&(last, entries, bytes)) = self.sent.front() {
            if last > acked {
                break;
            }
            self.sent.pop_front();
            self.entries -= entries;
            self.bytes -= bytes;
            released += entries;
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a stream of `size`-byte entries (an endless one) with `budget`
    /// until the count settles; returns the counts asked for.
    fn counts(rc: &mut ReadCount, size: usize, budget: usize, reads: usize) -> Vec<usize> {
        (0..reads)
            .map(|_| {
                let n = rc.count(budget);
                rc.observe(n, std::iter::repeat_n(size, n));
                n
            })
            .collect()
    }

    #[test]
    fn large_entries_are_read_one_at_a_time_small_ones_in_thousands() {
        let mut big = ReadCount::new(1_000);
        assert_eq!(counts(&mut big, 5_000_000, 4 << 20, 5), [1; 5]);
        let mut medium = ReadCount::new(1_000);
        // 300 KB entries, 4 MiB: 13 a read once grown.
        assert_eq!(counts(&mut medium, 300_000, 4 << 20, 4), [1, 4, 13, 13]);
        let mut small = ReadCount::new(1_000);
        assert_eq!(
            counts(&mut small, 100, 4 << 20, 7),
            [1, 4, 16, 64, 256, 1_000, 1_000]
        );
    }

    #[test]
    fn one_large_entry_shrinks_the_next_reads_and_they_recover() {
        let mut rc = ReadCount::new(1_000);
        counts(&mut rc, 100, 1 << 20, 8);
        assert_eq!(rc.count(1 << 20), 1_000);
        // A read of 1,000 whose last entry is 1 MiB.
        rc.observe(1_000, std::iter::repeat_n(100, 999).chain([1 << 20]));
        assert_eq!(rc.count(1 << 20), 1);
        let after = counts(&mut rc, 100, 1 << 20, 12);
        assert_eq!(after[..3], [1, 2, 4]);
        assert_eq!(*after.last().unwrap(), 1_000);
    }

    #[test]
    fn a_short_read_does_not_grow_the_cap_and_an_empty_one_changes_nothing() {
        let mut rc = ReadCount::new(1_000);
        rc.observe(1, [10]);
        assert_eq!(rc.count(1 << 20), 4);
        rc.observe(4, [10, 10]);
        assert_eq!(rc.count(1 << 20), 4);
        let before = rc.clone();
        rc.observe(4, []);
        assert_eq!(rc, before);
        // Never zero, whatever the budget.
        assert_eq!(ReadCount::new(0).count(0), 1);
        // Expected bytes: by the largest recent entry, or the fallback.
        assert_eq!(ReadCount::new(10).expected(1, 8 << 20), 8 << 20);
        assert_eq!(rc.expected(4, 8 << 20), 40);
    }

    #[test]
    fn a_window_counts_bytes_and_entries_and_always_lets_one_through() {
        let id = |ms| StreamId::new(ms, 0);
        let mut w = Window::new(2_000, 4 << 20);
        assert!(w.has_room());
        // An entry larger than the whole byte budget still goes...
        w.add(id(1), 1, 5_000_000);
        // ...but nothing after it until it is acknowledged.
        assert!(!w.has_room());
        assert_eq!(w.room_bytes(), 1);
        assert_eq!(w.settle(id(0)), 0);
        assert_eq!(w.settle(id(1)), 1);
        assert_eq!((w.entries(), w.bytes()), (0, 0));
        // Entry limit.
        w.add(id(2), 1_500, 1_000);
        assert_eq!(w.room_entries(), 500);
        w.add(id(3), 500, 1_000);
        assert!(!w.has_room());
        // Acks release whole sends, oldest first.
        assert_eq!(w.settle(id(2)), 1_500);
        assert!(w.has_room());
        assert_eq!(w.settle(id(9)), 500);
        assert_eq!(w.room_bytes(), 4 << 20);
    }
}
