//! Request and response over lula's streams, both ways, by two field names.
//!
//! - A **request** is an entry whose first field is `rpc`, valued with the
//!   method name; its other fields are the arguments.
//! - A **response** is an entry whose first field is `req`, valued with the id
//!   of the request it answers, in the stream the request was read from.
//!
//! Device to cloud: the device appends `rpc <method> ...` to its
//! `lula-client:out:x`; it reaches `lula-hub:in:x` with `seq` = its device id;
//! a cloud service answers by appending `req <that seq> ...` to
//! `lula-hub:out:<client>:x`, which reaches the device's `lula-client:in:x`.
//! Cloud to device: a cloud service appends `rpc <method> ...` to
//! `lula-hub:out:<client>:x` (hub id `H`); it reaches the device's `in:x` with
//! `seq H`; the device answers by appending `req H ...` to its `out:x`, which
//! reaches `lula-hub:in:x` with the device's `client`.
//!
//! Both directions ride the exactly-once streams, so a request is delivered
//! once and a response once. A caller waits with a timeout; a response that
//! comes after it gave up still lands in the stream like any entry, and nobody
//! waits for it (consumers that see a `req` they do not know drop it).

use crate::{Entry, StreamId};

/// First field of a request; its value is the method.
pub const FIELD_RPC: &str = "rpc";
/// First field of a response; its value is the id of the request it answers.
pub const FIELD_REQ: &str = "req";

/// The flattened fields of a request: `rpc <method>`, then `args`.
pub fn request_fields(method: &str, args: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut out = vec![FIELD_RPC.as_bytes().to_vec(), method.as_bytes().to_vec()];
    for (k, v) in args {
        out.push(k.clone());
        out.push(v.clone());
    }
    out
}

/// The flattened fields of a response to `request`: `req <id>`, then `fields`.
pub fn response_fields(request: StreamId, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut out = vec![
        FIELD_REQ.as_bytes().to_vec(),
        request.to_string().into_bytes(),
    ];
    for (k, v) in fields {
        out.push(k.clone());
        out.push(v.clone());
    }
    out
}

/// The value of the first field named `name` among an entry's fields.
pub fn field<'a>(entry: &'a Entry, name: &str) -> Option<&'a [u8]> {
    entry
        .pairs()
        .find(|(k, _)| *k == name.as_bytes())
        .map(|(_, v)| v)
}

/// The request an entry answers, if it is a response.
pub fn answers(entry: &Entry) -> Option<StreamId> {
    std::str::from_utf8(field(entry, FIELD_REQ)?)
        .ok()?
        .parse()
        .ok()
}

/// The method of a request entry.
pub fn method(entry: &Entry) -> Option<&str> {
    std::str::from_utf8(field(entry, FIELD_RPC)?).ok()
}

/// Fields other than lula's own (`client`, `seq`, `broadcast`, `rpc`,
/// `req`, `expiresAt`), in order, with their names as the sender wrote them
/// ([`crate::unescape_field`]: a stored `_seq` is the sender's `seq`): a
/// request's arguments or a response's payload.
pub fn payload(entry: &Entry) -> Vec<(Vec<u8>, Vec<u8>)> {
    entry
        .pairs()
        .filter(|(k, _)| {
            ![
                crate::FIELD_CLIENT,
                crate::FIELD_SEQ,
                crate::FIELD_BROADCAST,
                crate::FIELD_EXPIRES_AT,
                FIELD_RPC,
                FIELD_REQ,
            ]
            .iter()
            .any(|r| *k == r.as_bytes())
        })
        .map(|(k, v)| (crate::unescape_field(k).to_vec(), v.to_vec()))
        .collect()
}

/// A command-line argument `key=value` as an entry field (for `lula-client
/// request` and `lula-hub call`).
pub fn parse_arg(s: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    s.split_once('=')
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// An answer's [`payload`] as a command prints it: one `key=value` line per
/// field, or (`json`) one JSON object. Bytes that are not UTF-8 are replaced.
pub fn render(answer: &Entry, json: bool) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let fields = payload(answer);
    if json {
        let map: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(k, v)| (text(k), text(v).into()))
            .collect();
        format!("{}\n", serde_json::Value::Object(map))
    } else {
        fields
            .iter()
            .map(|(k, v)| format!("{}={}\n", text(k), text(v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_are_told_apart_by_their_first_field() {
        let args = vec![(b"delay".to_vec(), b"5".to_vec())];
        let req = Entry::new(StreamId::new(7, 0), request_fields("reboot", &args));
        assert_eq!(method(&req), Some("reboot"));
        assert_eq!(answers(&req), None);
        assert_eq!(payload(&req), args);

        // As it arrives on the device: seq first.
        let mut fields = vec![b"seq".to_vec(), b"9-1".to_vec()];
        fields.extend(response_fields(
            StreamId::new(7, 0),
            &[(b"ok".to_vec(), b"1".to_vec())],
        ));
        let resp = Entry::new(StreamId::new(10, 0), fields);
        assert_eq!(answers(&resp), Some(StreamId::new(7, 0)));
        assert_eq!(method(&resp), None);
        assert_eq!(payload(&resp), vec![(b"ok".to_vec(), b"1".to_vec())]);
    }

    #[test]
    fn answers_render_as_lines_or_json_without_the_convention_fields() {
        let answer = Entry::from_pairs(
            StreamId::new(5, 0),
            &[
                ("seq", "9-0"),
                ("req", "4-0"),
                ("interval", "30"),
                ("mode", "eco"),
            ],
        );
        assert_eq!(render(&answer, false), "interval=30\nmode=eco\n");
        assert_eq!(
            render(&answer, true),
            "{\"interval\":\"30\",\"mode\":\"eco\"}\n"
        );
        assert_eq!(parse_arg("k=v=w"), Ok((b"k".to_vec(), b"v=w".to_vec())));
        assert!(parse_arg("novalue").is_err());
    }

    #[test]
    fn payload_names_are_the_senders_own() {
        // A request whose arguments were named `seq` and `_client`, as the
        // hub stores it: lula's `client` and `seq` first, the arguments escaped.
        let stored = Entry::from_pairs(
            StreamId::new(5, 0),
            &[
                ("client", "dev-1"),
                ("seq", "3-0"),
                ("rpc", "set"),
                ("_seq", "7"),
                ("__client", "x"),
            ],
        );
        assert_eq!(method(&stored), Some("set"));
        assert_eq!(
            payload(&stored),
            vec![
                (b"seq".to_vec(), b"7".to_vec()),
                (b"_client".to_vec(), b"x".to_vec())
            ]
        );
    }
}
