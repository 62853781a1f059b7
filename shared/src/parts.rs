//! Entries too wide or too large for one frame, carried in parts.
//!
//! An entry past what one `xadds` batch may hold (more than
//! [`MAX_ENTRY_VALUES`](crate::limits::MAX_ENTRY_VALUES) keys plus values, or
//! an encoding longer than a frame) is cut into [`EntryPart`]s, each sent as
//! an `xadds` of its own (its `part`, with no `entries`). A part carries a
//! run of the entry's values as base64, so its size is known before it is
//! encoded: a cut may fall inside a value, and the next part then `joins` its
//! first piece to the last one. The receiver puts the parts back together in
//! an [`Assembly`], in order, and appends the entry only when the last part
//! arrived, in one atomic step like any other entry: parts themselves write
//! nothing, so a connection cut in the middle of an entry loses nothing and
//! the sender starts the entry again from its first part.
//!
//! Part 0 declares the entry's size (values and bytes), so the receiver can
//! refuse an entry past its limits, or reserve memory for it, before any more
//! of it crosses the link.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Entry, StreamId};

/// Most pieces (values or parts of values) one part carries: a bound on the
/// receiver's work per frame, whatever the values' sizes.
pub const MAX_PART_VALUES: usize = 8_192;

/// Bytes of a part's encoding besides its pieces (id, index, count, sizes).
pub const PART_HEADER_BYTES: usize = 160;

/// One part of an entry (see the [module](self)).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryPart {
    /// The entry's id in its source stream.
    pub id: StreamId,
    /// This part's place, from 0.
    pub index: u32,
    /// How many parts the entry has.
    pub count: u32,
    /// The entry's keys plus values, all parts together.
    pub values: usize,
    /// The entry's bytes of keys and values, all parts together.
    pub bytes: usize,
    /// The first piece continues the previous part's last one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joins: bool,
    /// When the last piece is cut (the next part `joins` it): the whole
    /// length of its value, so the receiver sizes it once instead of
    /// growing it part by part (a 64 MiB value would otherwise take up to
    /// twice its size while it grows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<usize>,
    /// Pieces of consecutive values, as base64.
    #[serde(rename = "fields64", with = "base64_pieces")]
    pub pieces: Vec<Vec<u8>>,
}

impl std::fmt::Debug for EntryPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryPart")
            .field("id", &self.id)
            .field("index", &self.index)
            .field("count", &self.count)
            .field("values", &self.values)
            .field("bytes", &self.bytes)
            .field("joins", &self.joins)
            .field("open", &self.open)
            .field("pieces", &self.pieces.len())
            .finish()
    }
}

mod base64_pieces {
    use super::*;

    pub fn serialize<S: Serializer>(pieces: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(pieces.iter().map(|p| B64.encode(p)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let text: Vec<String> = Vec::deserialize(d)?;
        if text.len() > MAX_PART_VALUES {
            return Err(serde::de::Error::custom(format_args!(
                "a part carries at most {MAX_PART_VALUES} pieces"
            )));
        }
        text.iter()
            .map(|t| B64.decode(t))
            .collect::<Result<_, _>>()
            .map_err(|_| serde::de::Error::custom("fields64 must hold standard base64 strings"))
    }
}

/// Encoded length of `n` bytes as a base64 JSON string with its comma.
fn piece_cost(n: usize) -> usize {
    n.div_ceil(3) * 4 + 3
}

/// Cuts one entry into parts whose encodings each fit `budget` bytes, lazily:
/// only the part being sent exists beside the entry.
pub struct Splitter {
    entry: Entry,
    /// Where each part starts: (value index, byte offset in it).
    cuts: Vec<(usize, usize)>,
    next: usize,
}

impl Splitter {
    /// Plans the parts of `entry` for frames of `budget` bytes of part
    /// encoding (at least a few hundred).
    pub fn new(entry: Entry, budget: usize) -> Self {
        let room = budget.saturating_sub(PART_HEADER_BYTES).max(64);
        let mut cuts = vec![(0, 0)];
        let (mut v, mut off, mut used, mut pieces) = (0, 0, 0, 0);
        while v < entry.fields.len() {
            let left = entry.fields[v].len() - off;
            let raw_room = room.saturating_sub(used + 3) / 4 * 3;
            let fits_a_fresh_part = left <= room.saturating_sub(3) / 4 * 3;
            if pieces == MAX_PART_VALUES || (pieces > 0 && left > raw_room && fits_a_fresh_part) {
                // Full, or a value that fits whole in the next part: cut here.
                cuts.push((v, off));
                (used, pieces) = (0, 0);
            } else if left <= raw_room {
                used += piece_cost(left);
                (v, off) = (v + 1, 0);
                pieces += 1;
            } else if raw_room == 0 {
                cuts.push((v, off));
                (used, pieces) = (0, 0);
            } else {
                // Larger than a part: this part takes what fits of it.
                off += raw_room;
                cuts.push((v, off));
                (used, pieces) = (0, 0);
            }
        }
        Splitter {
            entry,
            cuts,
            next: 0,
        }
    }

    /// How many parts the entry has.
    pub fn count(&self) -> u32 {
        self.cuts.len() as u32
    }

    /// The entry's id.
    pub fn id(&self) -> StreamId {
        self.entry.id
    }

    /// The next part, or `None` after the last.
    pub fn next_part(&mut self) -> Option<EntryPart> {
        let &(v0, off0) = self.cuts.get(self.next)?;
        let (v1, off1) = self
            .cuts
            .get(self.next + 1)
            .copied()
            .unwrap_or((self.entry.fields.len(), 0));
        let mut pieces = Vec::new();
        for v in v0..=v1.min(self.entry.fields.len().saturating_sub(1)) {
            let value = &self.entry.fields[v];
            let from = if v == v0 { off0 } else { 0 };
            let to = if v == v1 { off1 } else { value.len() };
            if v == v1 && to == 0 {
                break;
            }
            pieces.push(value[from..to].to_vec());
        }
        let part = EntryPart {
            id: self.entry.id,
            index: self.next as u32,
            count: self.count(),
            values: self.entry.fields.len(),
            bytes: self.entry.payload_len(),
            joins: off0 > 0,
            open: (off1 > 0).then(|| self.entry.fields[v1].len()),
            pieces,
        };
        self.next += 1;
        Some(part)
    }
}

/// A part the receiver will not take, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    /// The parts break the protocol (out of order, sizes that do not add up).
    #[error("{0}")]
    Invalid(String),
    /// The entry is past the receiver's limits.
    #[error("{0}")]
    TooLarge(String),
}

/// How wide and how large an entry a receiver puts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartLimits {
    /// Most keys plus values.
    pub max_values: usize,
    /// Most bytes of keys and values.
    pub max_bytes: usize,
}

impl PartLimits {
    /// Why an entry cannot be carried even in parts, if it cannot.
    pub fn refuses(&self, entry: &Entry) -> Option<String> {
        if entry.set_aside.is_some() {
            return None;
        }
        if entry.fields.len() > self.max_values {
            return Some(format!(
                "entry has {} fields, more than the limit of {}",
                entry.fields.len() / 2,
                self.max_values / 2
            ));
        }
        let bytes = entry.payload_len();
        (bytes > self.max_bytes).then(|| {
            format!(
                "entry holds {bytes} bytes, more than the limit of {}",
                self.max_bytes
            )
        })
    }
}

/// An entry being put back together from its parts.
#[derive(Debug)]
pub struct Assembly {
    id: StreamId,
    count: u32,
    next: u32,
    values: usize,
    bytes: usize,
    got_bytes: usize,
    fields: Vec<Vec<u8>>,
}

impl Assembly {
    /// Checks part 0's declared size against `limits` (before anything is
    /// kept) and starts the entry with it.
    pub fn start(part: EntryPart, limits: PartLimits) -> Result<Self, PartError> {
        let invalid = |m: String| Err(PartError::Invalid(m));
        if part.index != 0 || part.joins {
            return invalid(format!("entry {}: parts must start at part 0", part.id));
        }
        if part.count == 0 || part.values == 0 || !part.values.is_multiple_of(2) {
            return invalid(format!(
                "entry {}: a part must declare at least one part and an even, non-zero number of values",
                part.id
            ));
        }
        if part.values > limits.max_values {
            return Err(PartError::TooLarge(format!(
                "entry has {} fields, more than the limit of {}",
                part.values / 2,
                limits.max_values / 2
            )));
        }
        if part.bytes > limits.max_bytes {
            return Err(PartError::TooLarge(format!(
                "entry holds {} bytes, more than the limit of {}",
                part.bytes, limits.max_bytes
            )));
        }
        let mut assembly = Assembly {
            id: part.id,
            count: part.count,
            next: 0,
            values: part.values,
            bytes: part.bytes,
            got_bytes: 0,
            fields: Vec::with_capacity(part.values),
        };
        assembly.push(part)?;
        Ok(assembly)
    }

    /// The entry's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The bytes and values it declared.
    pub fn declared(&self) -> (usize, usize) {
        (self.bytes, self.values)
    }

    /// Whether every part arrived.
    pub fn is_complete(&self) -> bool {
        self.next == self.count
    }

    /// Adds the next part; it must be the entry's next, agreeing with part 0.
    pub fn push(&mut self, part: EntryPart) -> Result<(), PartError> {
        let invalid = |m: &str| Err(PartError::Invalid(format!("entry {}: {m}", self.id)));
        if part.id != self.id
            || part.index != self.next
            || part.count != self.count
            || part.values != self.values
            || part.bytes != self.bytes
        {
            return invalid(&format!(
                "expected part {} of {} with the sizes of part 0, got part {} of entry {}",
                self.next, self.count, part.index, part.id
            ));
        }
        if part.pieces.is_empty() {
            return invalid("a part carries at least one piece");
        }
        if part.joins && self.fields.is_empty() {
            return invalid("the first part cannot join a previous piece");
        }
        let added: usize = part.pieces.iter().map(Vec::len).sum();
        let new_values = part.pieces.len() - usize::from(part.joins);
        if self.got_bytes + added > self.bytes || self.fields.len() + new_values > self.values {
            return invalid("the parts hold more than part 0 declared");
        }
        let mut pieces = part.pieces.into_iter();
        if part.joins
            && let (Some(first), Some(last)) = (pieces.next(), self.fields.last_mut())
        {
            last.extend_from_slice(&first);
        }
        self.fields.extend(pieces);
        self.got_bytes += added;
        self.next += 1;
        if let (Some(whole), Some(last)) = (part.open, self.fields.last_mut()) {
            // Trusted only as far as the declared size reaches.
            let more = whole.saturating_sub(last.len());
            if more <= self.bytes - self.got_bytes {
                last.reserve_exact(more);
            }
        }
        if self.is_complete() && (self.got_bytes != self.bytes || self.fields.len() != self.values)
        {
            return invalid("the parts hold less than part 0 declared");
        }
        Ok(())
    }

    /// The whole entry once every part arrived, else the assembly back.
    pub fn finish(self) -> Result<Entry, Self> {
        if self.is_complete() {
            Ok(Entry::new(self.id, self.fields))
        } else {
            Err(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: PartLimits = PartLimits {
        max_values: 1 << 20,
        max_bytes: 1 << 30,
    };

    fn reassemble(entry: &Entry, budget: usize) -> (Entry, Vec<usize>) {
        let mut split = Splitter::new(entry.clone(), budget);
        let count = split.count();
        let mut sizes = Vec::new();
        let mut assembly: Option<Assembly> = None;
        while let Some(part) = split.next_part() {
            assert_eq!(part.count, count);
            sizes.push(serde_json::to_vec(&part).unwrap().len());
            let json = serde_json::to_string(&part).unwrap();
            let part: EntryPart = serde_json::from_str(&json).unwrap();
            match assembly.as_mut() {
                None => assembly = Some(Assembly::start(part, LIMITS).unwrap()),
                Some(a) => a.push(part).unwrap(),
            }
        }
        let entry = assembly.unwrap().finish().expect("complete");
        (entry, sizes)
    }

    #[test]
    fn a_wide_entry_and_a_large_value_come_back_whole_within_the_budget() {
        let wide = Entry::new(
            StreamId::new(1, 0),
            (0..20_000).map(|i| format!("v{i}").into_bytes()).collect(),
        );
        let (back, sizes) = reassemble(&wide, 64 * 1024);
        assert_eq!(back, wide);
        assert!(sizes.len() >= 3, "{sizes:?}");
        assert!(sizes.iter().all(|s| *s <= 64 * 1024), "{sizes:?}");
        let large = Entry::new(
            StreamId::new(2, 0),
            vec![
                b"k".to_vec(),
                vec![0xab; 1_000_000],
                Vec::new(),
                b"x".to_vec(),
            ],
        );
        let (back, sizes) = reassemble(&large, 100_000);
        assert_eq!(back, large);
        // Sized once from `open`, not grown part by part.
        assert_eq!(back.fields[1].capacity(), 1_000_000);
        assert!(sizes.iter().all(|s| *s <= 100_000), "{sizes:?}");
        assert!(sizes.len() >= 13, "{}", sizes.len());
    }

    proptest! {
        #[test]
        fn any_entry_round_trips_through_parts_of_any_budget(
            values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..40),
            budget in 200usize..2_000,
        ) {
            let mut fields = values;
            if fields.len() % 2 == 1 {
                fields.push(Vec::new());
            }
            let entry = Entry::new(StreamId::new(9, 9), fields);
            let (back, sizes) = reassemble(&entry, budget);
            prop_assert_eq!(back, entry);
            prop_assert!(sizes.iter().all(|s| *s <= budget), "{:?} > {}", sizes, budget);
        }
    }

    fn parts(entry: &Entry, budget: usize) -> Vec<EntryPart> {
        let mut split = Splitter::new(entry.clone(), budget);
        std::iter::from_fn(|| split.next_part()).collect()
    }

    #[test]
    fn parts_out_of_order_or_past_limits_are_refused() {
        let entry = Entry::new(StreamId::new(3, 0), vec![vec![7; 3000], vec![8; 3000]]);
        let p = parts(&entry, 1000);
        assert!(p.len() > 3);
        let small = PartLimits {
            max_values: 4,
            max_bytes: 5000,
        };
        assert!(matches!(
            Assembly::start(p[0].clone(), small),
            Err(PartError::TooLarge(_))
        ));
        assert!(matches!(
            Assembly::start(p[1].clone(), LIMITS),
            Err(PartError::Invalid(_))
        ));
        let mut a = Assembly::start(p[0].clone(), LIMITS).unwrap();
        assert!(matches!(a.push(p[2].clone()), Err(PartError::Invalid(_))));
        let mut lying = p[1].clone();
        lying.pieces.push(vec![0; 10_000]);
        assert!(matches!(a.push(lying), Err(PartError::Invalid(_))));
        a.push(p[1].clone()).unwrap();
        assert!(!a.is_complete());
    }
}
