//! Reserved field names: how a field that would shadow one lula writes is
//! renamed on the way in, and named back on the way out.
//!
//! lula writes its own fields first into the entries it stores: `client` and
//! `seq` into `lula-hub:in:x`, `seq` or `broadcast` into `lula-client:in:x`.
//! A source entry may carry fields of those names too, and a consumer reading
//! an entry into a map must never see a device-chosen `client`. So one rule,
//! the same up, down and in broadcasts (PROTOCOL.md, "Reserved field names"):
//!
//! - **Escape**: a field *name* that is a [`RESERVED`] name preceded by zero
//!   or more `_` (`^_*(client|seq|broadcast)$`) gets one more `_` in front.
//!   `client` becomes `_client`, `_client` becomes `__client`.
//! - **Unescape**: a name matching `^_+(client|seq|broadcast)$` loses one
//!   leading `_`.
//!
//! Every other name, and every value, is left alone, byte for byte. Since an
//! escaped name always starts with `_`, it can never equal a name lula writes,
//! and unescaping gives back exactly the name the source wrote.
//!
//! The set is the same in every direction, even where a name cannot clash
//! (no `broadcast` is written into `lula-hub:in:x`): one set means a consumer
//! never needs to know which direction an entry took to read it back.

use std::borrow::Cow;

use crate::{FIELD_BROADCAST, FIELD_CLIENT, FIELD_SEQ};

/// The names lula writes into entries it stores, which source fields may not
/// keep as they are.
pub const RESERVED: [&str; 3] = [FIELD_CLIENT, FIELD_SEQ, FIELD_BROADCAST];

/// How many `_` start `name` before a reserved name, if `name` is `_`s then
/// a reserved name (`^_*(client|seq|broadcast)$`).
fn underscores_before_reserved(name: &[u8]) -> Option<usize> {
    let n = name.iter().take_while(|&&b| b == b'_').count();
    let rest = &name[n..];
    RESERVED.iter().any(|r| rest == r.as_bytes()).then_some(n)
}

/// A source field name as lula stores it: one more `_` in front of a
/// reserved name preceded by zero or more `_`, anything else unchanged.
pub fn escape_field(name: &[u8]) -> Cow<'_, [u8]> {
    match underscores_before_reserved(name) {
        Some(_) => {
            let mut escaped = Vec::with_capacity(name.len() + 1);
            escaped.push(b'_');
            escaped.extend_from_slice(name);
            Cow::Owned(escaped)
        }
        None => Cow::Borrowed(name),
    }
}

/// A stored field name as its source wrote it: the inverse of
/// [`escape_field`] (`_client` gives `client`, `__seq` gives `_seq`). Names
/// lula writes itself (`client`, ...) and all others come back unchanged, so
/// apply it to the source's fields only, after lula's own.
pub fn unescape_field(name: &[u8]) -> &[u8] {
    match underscores_before_reserved(name) {
        Some(n) if n > 0 => &name[1..],
        _ => name,
    }
}

/// [`escape_field`] applied to the names (even positions) of a flat
/// `k1, v1, k2, v2, ...` field list; values are kept as they are.
pub fn escape_fields(fields: &[Vec<u8>]) -> Vec<Vec<u8>> {
    escaped(fields).map(Cow::into_owned).collect()
}

/// The fields of a flat `k1, v1, ...` list as they are stored: names through
/// [`escape_field`], values borrowed, nothing copied unless a name is
/// escaped. What every `XADD` of a carried entry passes as its arguments.
pub fn escaped(fields: &[Vec<u8>]) -> impl Iterator<Item = Cow<'_, [u8]>> {
    fields.iter().enumerate().map(|(i, f)| {
        if i % 2 == 0 {
            escape_field(f)
        } else {
            Cow::Borrowed(f.as_slice())
        }
    })
}

/// [`unescape_field`] applied to the names (even positions) of a flat field
/// list: the inverse of [`escape_fields`].
pub fn unescape_fields(fields: &[Vec<u8>]) -> Vec<Vec<u8>> {
    map_names(fields, |name| unescape_field(name).to_vec())
}

fn map_names(fields: &[Vec<u8>], name: impl Fn(&[u8]) -> Vec<u8>) -> Vec<Vec<u8>> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| if i % 2 == 0 { name(f) } else { f.clone() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reserved_names_gain_one_underscore_and_lose_it_again() {
        for (source, stored) in [
            (&b"client"[..], &b"_client"[..]),
            (b"seq", b"_seq"),
            (b"broadcast", b"_broadcast"),
            (b"_client", b"__client"),
            (b"___seq", b"____seq"),
        ] {
            assert_eq!(escape_field(source).as_ref(), stored);
            assert_eq!(unescape_field(stored), source);
        }
    }

    #[test]
    fn other_names_are_left_alone() {
        for name in [
            &b"clients"[..],
            b"_",
            b"",
            b"__",
            b"Client",
            b"seq_",
            b"_x_seq",
            b"expiresAt",
            b"rpc",
            b"\xff_seq",
        ] {
            assert_eq!(escape_field(name).as_ref(), name);
            assert_eq!(unescape_field(name), name);
        }
        // lula's own names read back as themselves.
        assert_eq!(unescape_field(b"client"), b"client");
    }

    #[test]
    fn only_names_are_renamed_never_values() {
        let fields: Vec<Vec<u8>> = [&b"seq"[..], b"seq", b"v", b"_client"]
            .iter()
            .map(|f| f.to_vec())
            .collect();
        let escaped = escape_fields(&fields);
        assert_eq!(
            escaped,
            [&b"_seq"[..], b"seq", b"v", b"_client"].map(<[u8]>::to_vec)
        );
        assert_eq!(unescape_fields(&escaped), fields);
    }

    /// Names built from what the rule looks at: runs of `_`, reserved words,
    /// their near misses and arbitrary bytes, glued in any order.
    fn name() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"_".to_vec()),
            Just(b"__".to_vec()),
            Just(b"client".to_vec()),
            Just(b"seq".to_vec()),
            Just(b"broadcast".to_vec()),
            Just(b"cli".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..4),
        ];
        proptest::collection::vec(piece, 0..4).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn any_field_list_round_trips(
            pairs in proptest::collection::vec(
                (name(), proptest::collection::vec(any::<u8>(), 0..8)),
                0..12,
            )
        ) {
            let fields: Vec<Vec<u8>> = pairs.into_iter().flat_map(|(k, v)| [k, v]).collect();
            let escaped = escape_fields(&fields);
            prop_assert_eq!(unescape_fields(&escaped), fields.clone());
            for (i, (stored, source)) in escaped.iter().zip(&fields).enumerate() {
                if i % 2 == 1 {
                    prop_assert_eq!(stored, source);
                } else {
                    // A stored source name never equals a name lula writes.
                    prop_assert!(!RESERVED.iter().any(|r| stored.as_slice() == r.as_bytes()));
                }
            }
        }
    }
}
