//! Property tests of what a hostile or broken peer controls: stream ids, client
//! ids, frames and entries. Whatever the input, parsing answers `Ok` or `Err`,
//! never panics, and accepts exactly what the protocol documents.

use std::collections::BTreeMap;

use lula_protocol::client_id::MAX_CLIENT_ID_LEN;
use lula_protocol::limits::MAX_ENTRY_VALUES;
use lula_protocol::message::{
    Ack, Envelope, Frame, SubscribeRequest, XaddsRequest, XreadRequest, kind,
};
use lula_protocol::{ClientId, Entry, StreamId};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::Value;
use serde_json::value::RawValue;

// ---------------------------------------------------------------------------
// Stream ids

/// What `PROTOCOL.md` promises: `<ms>-<seq>`, two unsigned 64-bit decimals.
/// Leading zeros are digits like any other, but the parser refuses anything
/// longer than two 20-digit numbers and a dash (41 bytes) before looking at it,
/// which no canonical id exceeds.
fn stream_id_oracle(s: &str) -> Option<StreamId> {
    if s.len() > 41 {
        return None;
    }
    let (ms, seq) = s.split_once('-')?;
    Some(StreamId::new(u64_oracle(ms)?, u64_oracle(seq)?))
}

/// A non-empty run of ASCII digits whose value fits in a `u64`, computed
/// without the standard parser (which also takes a leading `+`).
fn u64_oracle(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.bytes().try_fold(0u64, |acc, b| {
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Strings near and far from stream ids.
fn stream_id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,22}-[0-9]{0,22}",
        "[-0-9+ a.\u{0661}]{0,45}",
        // canonical, and padded with leading zeros
        (any::<u64>(), any::<u64>(), 0usize..25, 0usize..25).prop_map(|(ms, seq, zm, zs)| {
            format!("{}{ms}-{}{seq}", "0".repeat(zm), "0".repeat(zs))
        }),
        // around u64::MAX: the largest accepted part and the first refused one
        (0u128..4, 0u128..4, any::<bool>()).prop_map(|(a, b, swap)| {
            let big = u128::from(u64::MAX) - 1 + a;
            let small = b;
            if swap {
                format!("{small}-{big}")
            } else {
                format!("{big}-{small}")
            }
        }),
    ]
}

proptest! {
    #[test]
    fn stream_id_parsing_never_panics_and_accepts_exactly_two_u64_decimals(
        s in stream_id_like()
    ) {
        let parsed = s.parse::<StreamId>();
        prop_assert_eq!(parsed.as_ref().ok().copied(), stream_id_oracle(&s), "{:?}", s);
        // The same through serde, as frames carry them.
        let json = serde_json::to_string(&s).unwrap();
        let via_serde = serde_json::from_str::<StreamId>(&json).ok();
        prop_assert_eq!(via_serde, stream_id_oracle(&s));
        if let Err(e) = parsed {
            // Error messages stay bounded whatever was sent.
            prop_assert!(e.to_string().len() < 200, "{}", e);
        }
    }

    #[test]
    fn stream_ids_round_trip_through_display_from_str_and_serde(ms in any::<u64>(), seq in any::<u64>()) {
        let id = StreamId::new(ms, seq);
        let text = id.to_string();
        prop_assert_eq!(&text, &format!("{ms}-{seq}"));
        prop_assert_eq!(text.parse::<StreamId>(), Ok(id));
        let json = serde_json::to_string(&id).unwrap();
        prop_assert_eq!(serde_json::from_str::<StreamId>(&json).unwrap(), id);
    }

    #[test]
    fn stream_ids_order_like_ms_then_seq(
        a in (any::<u64>(), any::<u64>()),
        b in (any::<u64>(), any::<u64>()),
        small in (0u64..3, 0u64..3, 0u64..3, 0u64..3),
    ) {
        // Random pairs rarely share `ms`; small ones often do.
        for ((am, asq), (bm, bsq)) in [(a, b), ((small.0, small.1), (small.2, small.3)), ((a.0, a.1), (a.0, b.1))] {
            let (x, y) = (StreamId::new(am, asq), StreamId::new(bm, bsq));
            prop_assert_eq!(x.cmp(&y), (am, asq).cmp(&(bm, bsq)));
            let (px, py): (StreamId, StreamId) =
                (x.to_string().parse().unwrap(), y.to_string().parse().unwrap());
            prop_assert_eq!(px.cmp(&py), x.cmp(&y));
        }
    }
}

// ---------------------------------------------------------------------------
// Client ids

/// The documented alphabet: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with
/// `.` or `-`.
fn client_id_oracle(s: &str) -> bool {
    (1..=MAX_CLIENT_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.starts_with(['.', '-'])
}

fn client_id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9._-]{0,130}",
        "[A-Za-z0-9._-]{120,135}",
        "[a-z0-9._:{}*?\\[\\] \n\t/\\\\\u{e9}\u{661}\u{0}-]{0,12}",
    ]
}

proptest! {
    #[test]
    fn client_id_parsing_never_panics_and_accepts_exactly_the_documented_alphabet(
        s in client_id_like()
    ) {
        let parsed = s.parse::<ClientId>();
        prop_assert_eq!(parsed.is_ok(), client_id_oracle(&s), "{:?}", s);
        let json = serde_json::to_string(&s).unwrap();
        prop_assert_eq!(serde_json::from_str::<ClientId>(&json).is_ok(), parsed.is_ok());
        if let Ok(id) = parsed {
            prop_assert_eq!(id.as_str(), s.as_str());
            prop_assert_eq!(id.to_string().parse::<ClientId>(), Ok(id.clone()));
            prop_assert_eq!(serde_json::to_string(&id).unwrap(), json);
        }
    }
}

// ---------------------------------------------------------------------------
// Frames and entries

/// Object keys: the protocol's own, often (duplicates included), and anything.
fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "type", "id", "payload", "fields", "fields64", "entries", "prev", "status",
            "message", "count", "blockTimeout", "blockMs",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Scalar JSON texts, huge and odd numbers included.
fn json_leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap()),
        // numbers far beyond u64 and f64: digits, fractions, exponents
        "-?[0-9]{1,400}(\\.[0-9]{1,30})?([eE][-+]?[0-9]{1,6})?",
        Just("1e400".to_owned()),
        Just("-0".to_owned()),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        "\"[0-9]{0,21}-[0-9]{0,21}\"",
        "\"[A-Za-z0-9+/=!]{0,12}\"",
        prop::sample::select(vec![
            "\"echo\"",
            "\"id\"",
            "\"xadd\"",
            "\"xadds\"",
            "\"xread\"",
            "\"subscribe\"",
            "\"ack\"",
            "\"push\"",
            "\"err\"",
        ])
        .prop_map(str::to_owned),
    ]
}

/// JSON texts, nested a few levels, objects with protocol keys.
fn json_text() -> impl Strategy<Value = String> {
    json_leaf().prop_recursive(6, 128, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(|items| format!("[{}]", items.join(","))),
            vec((json_key(), inner), 0..8).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap()))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// Nesting far deeper than any parser's recursion should follow, balanced or
/// not, as a whole frame, a payload or an id.
fn deep_text() -> impl Strategy<Value = String> {
    (
        0usize..20_000,
        prop::sample::select(vec!["[", "{\"a\":", "{\"payload\":", "[{\"id\":"]),
        any::<bool>(),
        0usize..3,
    )
        .prop_map(|(depth, open, balanced, place)| {
            let close = match open {
                "[" => "]",
                "[{\"id\":" => "}]",
                _ => "}",
            };
            let inner = format!(
                "{}0{}",
                open.repeat(depth),
                if balanced {
                    close.repeat(depth)
                } else {
                    close.repeat(depth / 2)
                }
            );
            match place {
                0 => inner,
                1 => format!(r#"{{"type":"xadds","id":"1","payload":{inner}}}"#),
                _ => format!(r#"{{"type":"id","id":{inner}}}"#),
            }
        })
}

/// Entries as a hostile peer might write them: good and bad ids, `fields` and
/// `fields64` with odd lengths, wrong types and bad base64.
fn entry_text() -> impl Strategy<Value = String> {
    let id = prop_oneof![
        3 => (any::<u64>(), any::<u64>()).prop_map(|(a, b)| format!("\"{a}-{b}\"")),
        1 => json_leaf(),
    ];
    let strings = vec(any::<String>(), 0..10).prop_map(|v| serde_json::to_string(&v).unwrap());
    let b64 =
        vec("[A-Za-z0-9+/]{0,8}={0,2}", 0..10).prop_map(|v| serde_json::to_string(&v).unwrap());
    let fields = prop_oneof![
        strings.clone().prop_map(|f| format!(r#""fields":{f}"#)),
        b64.clone().prop_map(|f| format!(r#""fields64":{f}"#)),
        (strings, b64).prop_map(|(f, g)| format!(r#""fields":{f},"fields64":{g}"#)),
        json_text().prop_map(|f| format!(r#""fields":{f}"#)),
        Just(String::new()),
    ];
    (id, fields).prop_map(|(id, fields)| {
        if fields.is_empty() {
            format!(r#"{{"id":{id}}}"#)
        } else {
            format!(r#"{{"id":{id},{fields}}}"#)
        }
    })
}

/// Whole frames: `{"type", "id", "payload"}` with every part possibly wrong.
fn envelope_text() -> impl Strategy<Value = String> {
    let payload = prop_oneof![
        2 => entry_text(),
        2 => (prop::option::of(json_leaf()), vec(entry_text(), 0..5)).prop_map(|(prev, entries)| {
            match prev {
                Some(p) => format!(r#"{{"prev":{p},"entries":[{}]}}"#, entries.join(",")),
                None => format!(r#"{{"entries":[{}]}}"#, entries.join(",")),
            }
        }),
        1 => json_text(),
    ];
    (
        prop::option::of(json_leaf()),
        prop::option::of(json_leaf()),
        prop::option::of(payload),
    )
        .prop_map(|(kind, id, payload)| {
            let mut members = Vec::new();
            if let Some(k) = kind {
                members.push(format!(r#""type":{k}"#));
            }
            if let Some(i) = id {
                members.push(format!(r#""id":{i}"#));
            }
            if let Some(p) = payload {
                members.push(format!(r#""payload":{p}"#));
            }
            format!("{{{}}}", members.join(","))
        })
}

/// Parses `text` the way the hub does and checks what any accepted frame or
/// payload must satisfy. Never panics unless the code under test does.
fn check_frame(text: &str) -> Result<(), TestCaseError> {
    let Ok(env) = Envelope::parse(text) else {
        return Ok(());
    };
    // Accepted: valid JSON (numbers beyond f64 and nesting beyond serde_json's
    // recursion limit included: payloads are kept raw) with a string `type` and
    // an id that is a string, a number or null. That it is an object at all is
    // `only_json_objects_are_frames`'s business.
    if let Ok(members) = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(text) {
        let kind = members
            .get("type")
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
        prop_assert_eq!(kind.as_deref(), Some(env.kind.as_ref()), "{}", text);
    }
    if let Some(id) = &env.id {
        prop_assert!(
            id.is_string() || id.is_number() || id.is_null(),
            "id {}",
            id
        );
    }
    let entry_ok =
        |e: &Entry| e.fields.len().is_multiple_of(2) && e.fields.len() <= MAX_ENTRY_VALUES;
    if let Ok(e) = env.payload::<Entry>() {
        prop_assert!(entry_ok(&e), "{:?}", e);
    }
    if let Ok(batch) = env.payload::<XaddsRequest>() {
        prop_assert!(batch.entries.iter().all(entry_ok));
    }
    let _ = env.payload::<SubscribeRequest>();
    let _ = env.payload::<Ack>();
    let _ = env.payload::<XreadRequest>();
    let _ = env.payload::<Value>();
    let _ = env.error();
    Ok(())
}

/// JSON texts that are not objects: arrays (some shaped like a request written
/// positionally), scalars.
fn non_object_json() -> impl Strategy<Value = String> {
    prop_oneof![
        json_leaf(),
        vec(json_text(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
        (
            prop::sample::select(vec!["echo", "id", "xadd", "xadds", "subscribe", "ack"]),
            any::<u32>(),
            entry_text()
        )
            .prop_map(|(kind, id, entry)| format!(r#"["{kind}","{id}",{entry}]"#)),
    ]
}

/// Payloads written as arrays instead of objects, e.g. an entry `["1-0", ["k", "v"]]`.
fn positional_payload() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u64>(), vec("[a-z]{1,3}", 0..3))
            .prop_map(|(ms, f)| format!(r#"["{ms}-0",{}]"#, serde_json::to_string(&f).unwrap())),
        (any::<u64>(), any::<u64>()).prop_map(|(ms, seq)| format!(r#"["{ms}-{seq}"]"#)),
        any::<u64>().prop_map(|ms| format!(r#"[null,[["{ms}-0",["k","v"]]]]"#)),
        any::<u64>().prop_map(|ms| format!(r#"{{"entries":[["{ms}-0",["k","v"]]]}}"#)),
    ]
}

/// Byte strings: often UTF-8, sometimes not.
fn field_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<String>().prop_map(String::into_bytes),
        vec(any::<u8>(), 0..24),
    ]
}

fn any_entry() -> impl Strategy<Value = Entry> {
    (
        any::<u64>(),
        any::<u64>(),
        vec((field_bytes(), field_bytes()), 0..12),
    )
        .prop_map(|(ms, seq, pairs)| {
            Entry::new(
                StreamId::new(ms, seq),
                pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            )
        })
}

proptest! {
    #[test]
    fn frames_of_any_string_never_panic(text in any::<String>()) {
        check_frame(&text)?;
    }

    #[test]
    fn frames_of_json_ish_text_never_panic(text in json_text()) {
        check_frame(&text)?;
    }

    #[test]
    fn frames_shaped_like_requests_never_panic(text in envelope_text()) {
        check_frame(&text)?;
    }

    #[test]
    fn deeply_nested_frames_never_panic_or_overflow_the_stack(text in deep_text()) {
        check_frame(&text)?;
    }

    // serde's derived `Deserialize` also reads a struct from a JSON array,
    // positionally, so without a guard `["xadd","1",{"id":"5-0","fields":["k","v"]}]`
    // would be taken as an xadd request, against PROTOCOL.md ("a frame that is
    // not JSON, or has no string `type`, gets `err` 400").
    #[test]
    fn only_json_objects_are_frames(text in non_object_json()) {
        prop_assert!(Envelope::parse(&text).is_err(), "accepted {}", text);
    }

    // As above, for payloads and the entries inside them.
    #[test]
    fn only_json_objects_are_payloads_and_entries(payload in positional_payload()) {
        let text = format!(r#"{{"type":"xadd","id":"1","payload":{payload}}}"#);
        let env = Envelope::parse(&text).unwrap();
        prop_assert!(env.payload::<Entry>().is_err(), "entry from {}", payload);
        prop_assert!(env.payload::<XaddsRequest>().is_err(), "batch from {}", payload);
        prop_assert!(env.payload::<SubscribeRequest>().is_err(), "subscribe from {}", payload);
        prop_assert!(env.payload::<Ack>().is_err(), "ack from {}", payload);
    }

    #[test]
    fn entries_round_trip_utf8_as_fields_and_binary_as_fields64(entry in any_entry()) {
        let json = serde_json::to_string(&entry).unwrap();
        let utf8 = entry.fields.iter().all(|f| std::str::from_utf8(f).is_ok());
        let wire: Value = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(wire.get("fields").is_some(), utf8, "{}", json);
        prop_assert_eq!(wire.get("fields64").is_some(), !utf8, "{}", json);
        prop_assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), entry.clone());

        // And inside the frames that carry them, parsed as the hub parses.
        let id = Value::from(7);
        let text = Frame::new(kind::XADD, Some(&id), &entry).to_text().unwrap();
        let env = Envelope::parse(&text).unwrap();
        prop_assert_eq!(env.payload::<Entry>().unwrap(), entry.clone());
        let batch = XaddsRequest { prev: Some(StreamId::ZERO), entries: vec![entry.clone(), entry], backlog: Some(3), part: None };
        let text = Frame::new(kind::XADDS, Some(&id), &batch).to_text().unwrap();
        let env = Envelope::parse(&text).unwrap();
        prop_assert_eq!(env.payload::<XaddsRequest>().unwrap(), batch);
    }

    #[test]
    fn entries_with_unpaired_or_too_many_fields_are_refused(
        entry in any_entry(),
        too_many in any::<bool>(),
        binary in any::<bool>(),
    ) {
        let mut fields = entry.fields;
        if binary {
            fields.extend([vec![0xff], vec![0xfe]]);
        }
        if too_many {
            // Paired, one pair over the limit.
            while fields.len() <= MAX_ENTRY_VALUES || !fields.len().is_multiple_of(2) {
                fields.push(b"x".to_vec());
            }
        } else {
            fields.push(b"unpaired".to_vec());
        }
        let json = serde_json::to_string(&Entry::new(entry.id, fields)).unwrap();
        prop_assert!(serde_json::from_str::<Entry>(&json).is_err());
    }
}
