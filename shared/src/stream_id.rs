//! Redis stream entry ids (`<ms>-<seq>`), parsed strictly and compared as numbers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Redis stream entry id: milliseconds and a sequence number, both `u64`.
///
/// Ordering is numeric (`9-0 < 10-0`), unlike string comparison, and `Display`
/// always prints the canonical form (no leading zeros), which is what the Lua
/// scripts rely on when they compare ids as strings of digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part within the millisecond.
    pub seq: u64,
}

impl StreamId {
    /// `0-0`: before every entry; the cursor of a stream nothing was read from yet.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// The largest id there is. A stream may hold it (`XADD` takes it), and
    /// then takes no entry after it; a cursor may reach it.
    pub const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// `XRANGE` bounds for the entries after this id: `(<id>` to `+`. After
    /// [`StreamId::MAX`] nothing can follow, and Redis refuses `(<max>` ("invalid
    /// start ID"), so that gives `+` to `-`, a range Redis answers as empty.
    /// (`XREAD` after the largest id is fine as it is: it returns nothing.)
    pub fn range_after(self) -> (String, &'static str) {
        if self == Self::MAX {
            ("+".to_owned(), "-")
        } else {
            (format!("({self}"), "+")
        }
    }

    /// Builds an id from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        StreamId { ms, seq }
    }
}

/// Why a string is not a stream id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    /// Not of the form `<digits>-<digits>`.
    #[error("stream id must be <ms>-<seq> with decimal digits, got {0:?}")]
    Format(String),
    /// One of the parts does not fit in 64 bits.
    #[error("stream id part out of range in {0:?}")]
    Range(String),
}

/// Longest accepted textual id: two 20-digit numbers and a dash. Longer input
/// is refused before any parsing work is done on it.
const MAX_ID_LEN: usize = 41;

impl FromStr for StreamId {
    type Err = StreamIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let format_err = || StreamIdError::Format(truncate(s));
        if s.len() > MAX_ID_LEN {
            return Err(format_err());
        }
        let (ms, seq) = s.split_once('-').ok_or_else(format_err)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(format_err());
        }
        let range_err = |_| StreamIdError::Range(truncate(s));
        Ok(StreamId {
            ms: ms.parse().map_err(range_err)?,
            seq: seq.parse().map_err(range_err)?,
        })
    }
}

/// Keeps error messages bounded when a peer sends a huge bogus id.
fn truncate(s: &str) -> String {
    s.chars().take(48).collect()
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl Serialize for StreamId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StreamId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a stream id string <ms>-<seq>")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StreamId, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_range_after_the_largest_id_is_empty_not_an_error() {
        assert_eq!(StreamId::new(5, 1).range_after(), ("(5-1".to_owned(), "+"));
        assert_eq!(StreamId::MAX.range_after(), ("+".to_owned(), "-"));
        assert_eq!(
            StreamId::MAX.to_string(),
            "18446744073709551615-18446744073709551615"
        );
        // The Lua twin compares against the same text.
        assert!(crate::lua::RANGE_AFTER.contains(&StreamId::MAX.to_string()));
    }

    use super::*;

    #[test]
    fn parses_and_prints_canonically() {
        let id: StreamId = "1700000000000-7".parse().unwrap();
        assert_eq!(id, StreamId::new(1_700_000_000_000, 7));
        assert_eq!(id.to_string(), "1700000000000-7");
        assert_eq!("007-01".parse::<StreamId>().unwrap().to_string(), "7-1");
        let max = format!("{}-{}", u64::MAX, u64::MAX);
        assert_eq!(max.parse::<StreamId>().unwrap().to_string(), max);
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "abc",
            "1",
            "1-",
            "-1",
            "-1-0",
            "1--0",
            "+1-0",
            "1-0-0",
            " 1-0",
            "1-0 ",
            "1.5-0",
            "18446744073709551616-0",
            "0-18446744073709551616",
            "١-٠",
        ] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad:?} accepted");
        }
        let long = "9".repeat(10_000) + "-0";
        assert!(matches!(long.parse::<StreamId>(), Err(StreamIdError::Format(m)) if m.len() <= 48));
    }

    #[test]
    fn orders_numerically_not_lexically() {
        let a: StreamId = "9-0".parse().unwrap();
        let b: StreamId = "10-0".parse().unwrap();
        assert!(a < b);
        assert!(StreamId::new(5, 2) > StreamId::new(5, 1));
        assert!(StreamId::ZERO < StreamId::new(0, 1));
    }

    #[test]
    fn serde_round_trip_and_type_errors() {
        let id = StreamId::new(3, 4);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"3-4\"");
        assert_eq!(serde_json::from_str::<StreamId>("\"3-4\"").unwrap(), id);
        assert!(serde_json::from_str::<StreamId>("34").is_err());
        assert!(serde_json::from_str::<StreamId>("\"x\"").is_err());
    }
}
