//! Stream entries as they travel over the wire.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::Error as _;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::StreamId;
use crate::limits::MAX_ENTRY_VALUES;

/// One stream entry: its id in the stream it was read from and its field/value
/// pairs, flattened (`k1, v1, k2, v2, ...`) and kept in their original order.
///
/// Redis values are bytes. On the wire an entry is
/// `{"id": "<ms>-<seq>", "fields": ["k1", "v1", ...]}` when every key and value is
/// UTF-8, and `{"id": ..., "fields64": [<base64>, ...]}` otherwise, so binary
/// payloads (protobuf, compressed blobs) cross the JSON protocol unchanged.
///
/// A **set-aside marker** is `{"id": ..., "setAside": "<reason>"}`, with no
/// fields: the entry with this id exists but is past a limit, so it was moved
/// to a dead-letter stream instead of carried; the receiver moves its cursor
/// past it and counts it. Only peers that said they understand markers get
/// them (`setAside` in `subscribe` and in the `id` reply).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// The entry's id in its source stream.
    pub id: StreamId,
    /// Keys and values, alternating (empty on a set-aside marker).
    pub fields: Vec<Vec<u8>>,
    /// On a set-aside marker: why the entry was set aside.
    pub set_aside: Option<String>,
}

impl Entry {
    /// An entry from UTF-8 field/value pairs (convenient in tests and tools).
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(id: StreamId, pairs: &[(K, V)]) -> Self {
        let fields = pairs
            .iter()
            .flat_map(|(k, v)| {
                [
                    k.as_ref().as_bytes().to_vec(),
                    v.as_ref().as_bytes().to_vec(),
                ]
            })
            .collect();
        Entry {
            id,
            fields,
            set_aside: None,
        }
    }

    /// An entry of `id` with these alternating keys and values.
    pub fn new(id: StreamId, fields: Vec<Vec<u8>>) -> Self {
        Entry {
            id,
            fields,
            set_aside: None,
        }
    }

    /// A set-aside marker for entry `id` (see [`Entry`]).
    pub fn marker(id: StreamId, reason: impl Into<String>) -> Self {
        Entry {
            id,
            fields: Vec::new(),
            set_aside: Some(reason.into()),
        }
    }

    /// Why a carrier with these limits cannot carry this entry, if it
    /// cannot: more keys plus values than `max_values`, or an encoding
    /// longer than `max_bytes`. Markers always fit.
    pub fn past_limits(&self, max_values: usize, max_bytes: usize) -> Option<String> {
        if self.set_aside.is_some() {
            return None;
        }
        if self.fields.len() > max_values {
            return Some(format!(
                "entry has {} fields, more than the limit of {}",
                self.fields.len() / 2,
                max_values / 2
            ));
        }
        // Cheap bounds first, so the common entry is not scanned byte by
        // byte: the encoding is at least the payload, and at most six bytes per byte
        // (a JSON `\u00XX` escape; base64 takes 4/3) plus quotes and commas.
        let payload = self.payload_len();
        if payload > max_bytes {
            return Some(format!(
                "entry holds {payload} bytes, more than the frame budget of {max_bytes}"
            ));
        }
        let most = payload
            .saturating_mul(6)
            .saturating_add(self.fields.len() * 3 + 64);
        if most <= max_bytes {
            return None;
        }
        let encoded = self.encoded_len();
        (encoded > max_bytes).then(|| {
            format!("entry encodes to {encoded} bytes, more than the frame budget of {max_bytes}")
        })
    }

    /// The length of this entry's JSON encoding (as `Serialize` writes it),
    /// counted without writing it: a 5 MB entry is not encoded to learn
    /// whether it fits a frame.
    pub fn encoded_len(&self) -> usize {
        let id = self.id.to_string().len() + 2;
        // `{"id":` .. `,"fields":[` or `,"fields64":[` .. `]}`
        let (key, body) = if let Some(reason) = &self.set_aside {
            (",\"setAside\":".len(), json_string_len(reason.as_bytes()))
        } else if self.fields.iter().all(|f| std::str::from_utf8(f).is_ok()) {
            let items: usize = self.fields.iter().map(|f| json_string_len(f)).sum();
            (",\"fields\":".len(), list_len(items, self.fields.len()))
        } else {
            let items: usize = self
                .fields
                .iter()
                .map(|f| f.len().div_ceil(3) * 4 + 2)
                .sum();
            (",\"fields64\":".len(), list_len(items, self.fields.len()))
        };
        "{\"id\":".len() + id + key + body + 1
    }

    /// Field/value pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .chunks_exact(2)
            .map(|kv| (kv[0].as_slice(), kv[1].as_slice()))
    }

    /// Bytes of keys and values, a lower bound of the entry's encoded size.
    pub fn payload_len(&self) -> usize {
        self.fields.iter().map(Vec::len).sum()
    }
}

/// `[` items, commas between them, `]`.
fn list_len(items: usize, n: usize) -> usize {
    items + n.saturating_sub(1) + 2
}

/// The length of `s` (valid UTF-8) as a JSON string, quotes included, as
/// serde_json escapes it: `"` and `\\` and the short control escapes take two
/// bytes, other control characters six (`\u00XX`), everything else itself.
fn json_string_len(s: &[u8]) -> usize {
    s.iter()
        .map(|&b| match b {
            b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
        + 2
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<_> = self
            .fields
            .iter()
            .map(|b| String::from_utf8_lossy(b))
            .collect();
        f.debug_struct("Entry")
            .field("id", &self.id)
            .field("fields", &fields)
            .field("set_aside", &self.set_aside)
            .finish()
    }
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Entry", 2)?;
        s.serialize_field("id", &self.id)?;
        if let Some(reason) = &self.set_aside {
            s.serialize_field("setAside", reason)?;
        } else if self.fields.iter().all(|f| std::str::from_utf8(f).is_ok()) {
            s.serialize_field("fields", &Utf8Fields(&self.fields))?;
        } else {
            s.serialize_field("fields64", &B64Fields(&self.fields))?;
        }
        s.end()
    }
}

struct Utf8Fields<'a>(&'a [Vec<u8>]);

impl Serialize for Utf8Fields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|f| String::from_utf8_lossy(f)))
    }
}

struct B64Fields<'a>(&'a [Vec<u8>]);

impl Serialize for B64Fields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|f| B64.encode(f)))
    }
}

#[derive(Deserialize)]
struct WireEntry {
    id: StreamId,
    #[serde(default)]
    fields: Option<Vec<String>>,
    #[serde(default)]
    fields64: Option<Vec<String>>,
    #[serde(default, rename = "setAside")]
    set_aside: Option<String>,
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Objects only: the derived `Deserialize` of `WireEntry` would also take
        // an array, by position (`["1-0", ["k", "v"]]`).
        struct ObjectOnly;
        impl<'de> serde::de::Visitor<'de> for ObjectOnly {
            type Value = WireEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an entry object {\"id\", \"fields\" or \"fields64\"}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<WireEntry, A::Error> {
                WireEntry::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        let wire = deserializer.deserialize_map(ObjectOnly)?;
        if let Some(reason) = wire.set_aside {
            if wire.fields.is_some() || wire.fields64.is_some() {
                return Err(D::Error::custom(
                    "a set-aside marker carries no `fields` or `fields64`",
                ));
            }
            return Ok(Entry::marker(wire.id, reason));
        }
        let fields: Vec<Vec<u8>> = match (wire.fields, wire.fields64) {
            (Some(f), None) => f.into_iter().map(String::into_bytes).collect(),
            (None, Some(f)) => f
                .iter()
                .map(|v| B64.decode(v))
                .collect::<Result<_, _>>()
                .map_err(|_| D::Error::custom("fields64 must hold standard base64 strings"))?,
            (None, None) => return Err(D::Error::custom("entry needs `fields` or `fields64`")),
            (Some(_), Some(_)) => {
                return Err(D::Error::custom("entry has both `fields` and `fields64`"));
            }
        };
        if !fields.len().is_multiple_of(2) {
            return Err(D::Error::custom(
                "fields must alternate keys and values (even length)",
            ));
        }
        if fields.len() > MAX_ENTRY_VALUES {
            return Err(D::Error::custom(format_args!(
                "entry {} has {} fields, more than the limit of {}",
                wire.id,
                fields.len() / 2,
                MAX_ENTRY_VALUES / 2
            )));
        }
        Ok(Entry::new(wire.id, fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_entries_use_plain_fields() {
        let e = Entry::from_pairs(
            StreamId::new(1, 2),
            &[("topic", "t"), ("payload", "{\"a\":1}")],
        );
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"id":"1-2","fields":["topic","t","payload","{\"a\":1}"]}"#
        );
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), e);
    }

    #[test]
    fn binary_entries_round_trip_as_base64() {
        let e = Entry::new(
            StreamId::new(5, 0),
            vec![b"k".to_vec(), vec![0xff, 0x00, 0xfe]],
        );
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("fields64"), "{json}");
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), e);
    }

    #[test]
    fn markers_carry_an_id_and_a_reason_and_no_fields() {
        let m = Entry::marker(StreamId::new(7, 1), "too big");
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"id":"7-1","setAside":"too big"}"#);
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), m);
        let both = r#"{"id":"7-1","setAside":"x","fields":["k","v"]}"#;
        assert!(serde_json::from_str::<Entry>(both).is_err());
    }

    #[test]
    fn limits_name_what_is_past_them() {
        let wide = Entry::new(
            StreamId::new(1, 0),
            (0..MAX_ENTRY_VALUES + 2)
                .map(|i| i.to_string().into_bytes())
                .collect(),
        );
        let why = wide.past_limits(MAX_ENTRY_VALUES, usize::MAX).unwrap();
        assert!(why.contains("1025 fields"), "{why}");
        let big = Entry::from_pairs(StreamId::new(1, 0), &[("k", "x".repeat(100))]);
        assert!(
            big.past_limits(MAX_ENTRY_VALUES, 50)
                .unwrap()
                .contains("bytes")
        );
        // 100 bytes of value encode to a little more: the exact check counts.
        assert!(
            big.past_limits(MAX_ENTRY_VALUES, 110)
                .unwrap()
                .contains("encodes")
        );
        assert_eq!(big.past_limits(MAX_ENTRY_VALUES, 1000), None);
        assert_eq!(Entry::marker(StreamId::ZERO, "r").past_limits(0, 0), None);
        // The shortcut's bound holds for the worst escapes and for base64.
        let id = StreamId::new(u64::MAX, u64::MAX);
        for value in [vec![1u8; 100], vec![b'"'; 100], vec![0xff; 100], Vec::new()] {
            let e = Entry::new(id, vec![value.clone(), value]);
            let encoded = serde_json::to_vec(&e).unwrap().len();
            assert!(encoded <= e.payload_len() * 6 + e.fields.len() * 3 + 64);
            assert_eq!(e.past_limits(MAX_ENTRY_VALUES, encoded), None, "{e:?}");
            assert!(
                e.past_limits(MAX_ENTRY_VALUES, encoded - 1).is_some(),
                "{e:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn encoded_len_is_the_length_of_the_encoding(
            values in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0..12),
            text in proptest::collection::vec("[\\x00-\\x7f\\u{80}-\\u{10ffff}]{0,20}", 0..12),
            ms in proptest::prelude::any::<u64>(),
            seq in proptest::prelude::any::<u64>(),
        ) {
            let id = StreamId::new(ms, seq);
            let binary = Entry::new(id, values);
            let utf8 = Entry::new(id, text.into_iter().map(String::into_bytes).collect());
            let marker = Entry::marker(id, "a \"reason\"\n\u{1}");
            for e in [binary, utf8, marker] {
                proptest::prop_assert_eq!(e.encoded_len(), serde_json::to_vec(&e).unwrap().len(), "{:?}", e);
            }
        }
    }

    #[test]
    fn malformed_entries_are_refused_with_a_reason() {
        for (bad, why) in [
            (r#"{"id":"1-0"}"#, "needs"),
            (r#"{"id":"1-0","fields":["k"]}"#, "even"),
            (r#"{"id":"1-0","fields":["k","v"],"fields64":[]}"#, "both"),
            (r#"{"id":"1-0","fields64":["!!"]}"#, "base64"),
            (r#"{"id":"abc","fields":["k","v"]}"#, "stream id"),
            (r#"{"id":"1-0","fields":[1,2]}"#, "invalid type"),
        ] {
            let err = serde_json::from_str::<Entry>(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let many: Vec<String> = (0..MAX_ENTRY_VALUES + 2).map(|i| i.to_string()).collect();
        let json = serde_json::json!({"id": "1-0", "fields": many}).to_string();
        assert!(
            serde_json::from_str::<Entry>(&json)
                .unwrap_err()
                .to_string()
                .contains("limit")
        );
    }
}
