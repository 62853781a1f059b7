//! What a device sends the hub: one [`Request`] per text frame.
//!
//! Every frame is `{"type": <kind>, "id"?: <string|number>, "payload"?: {...}}`;
//! [`Request::parse`] turns it into the typed request with its id, or into the
//! typed error reply ([`Rejected`]) the hub sends back instead.

use std::borrow::Cow;

use serde::{Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::Entry;
use crate::limits::MAX_ENTRY_VALUES;
use crate::message::{
    Ack, Envelope, ErrorReply, Frame, RenewRequest, SubscribeRequest, XaddsRequest, XreadRequest,
    kind,
};

/// A device request (or notification), by its `type`. Each variant names its
/// wire shape; the reply is the [`crate::HubFrame`] variant of the same name.
///
/// `B` is how an `xadds` batch holds its entries: parsed (`Vec<Entry>`, what
/// the hub reads) or already encoded JSON (`&RawValue`, what lula-client sends,
/// so a batch read from Redis is encoded once and never parsed again).
#[derive(Debug, Clone)]
pub enum Request<'a, B = Vec<Entry>> {
    /// `{"type":"echo","id":I,"payload":<any JSON>}`: the payload comes back
    /// unchanged (`{}` when absent); a liveness check.
    Echo(Option<&'a RawValue>),
    /// `{"type":"id","id":I}`: the device's upstream cursor and the hub's
    /// limits ([`crate::message::IdReply`]).
    Id,
    /// `{"type":"xadd","id":I,"payload":{"id":"<seq>","fields":[...]}}`: one
    /// entry (lula-compatible).
    Xadd(Entry),
    /// `{"type":"xadds","id":I,"payload":{"prev"?:"<seq>","entries":[...],"backlog"?:n}}`:
    /// a batch of consecutive entries; `backlog`, when the sender knows it,
    /// is how many entries of its out stream follow this batch (shown in the
    /// fleet view, ignored by older hubs).
    Xadds(XaddsRequest<B>),
    /// `{"type":"xread","id":I,"payload":{"id":"<hub id>","blockTimeout"?:ms,"count"?:n}}`:
    /// polls the device's out stream (lula-compatible).
    Xread(XreadRequest),
    /// `{"type":"subscribe","id":I,"payload":{"id":"<hub id>","broadcastAfter"?:"<id>"}}`:
    /// starts pushing the out stream (and the broadcast stream).
    Subscribe(SubscribeRequest),
    /// `{"type":"ack","payload":{"id":"<hub id>","stream"?:"broadcast"}}`:
    /// a notification, no reply: the device stored pushed entries up to `id`.
    Ack(Ack),
    /// `{"type":"renew","id":I,"payload":{"token":"<jwt>"}}`: moves the live
    /// connection to a new session token of the same device.
    Renew(RenewRequest),
}

/// A parsed request with the id its reply must echo.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    /// Request id (absent on notifications).
    pub id: Option<Value>,
    /// The request.
    pub request: Request<'a>,
}

/// A frame the hub cannot act on, with the error reply it sends back:
/// `{"type":"err"}` when the frame is not a frame at all, else the frame's own
/// `type` (even an unknown one) and `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected<'a> {
    /// The `type` of the reply.
    pub kind: Cow<'a, str>,
    /// The request id to echo, when one could be read.
    pub id: Option<Value>,
    /// The 400 reply.
    pub reply: ErrorReply,
}

/// Unknown types are quoted in error messages up to this many characters.
const QUOTE_CHARS: usize = 64;

impl<'a> Request<'a> {
    /// Parses a text frame into the request it carries, or into the error
    /// reply to send when it is not a valid request.
    // A rejection is the cold path and is sent at once; boxing it would
    // cost every caller an allocation to save a few bytes of stack.
    #[allow(clippy::result_large_err)]
    pub fn parse(text: &'a str) -> Result<Incoming<'a>, Rejected<'a>> {
        let env = Envelope::parse(text).map_err(|e| Rejected {
            kind: Cow::Borrowed(kind::ERR),
            id: None,
            reply: ErrorReply::bad_request(format!("unparseable frame: {e}")),
        })?;
        let request = match Self::from_envelope(&env) {
            Ok(request) => request,
            Err(reply) => {
                return Err(Rejected {
                    kind: env.kind,
                    id: env.id,
                    reply,
                });
            }
        };
        Ok(Incoming {
            id: env.id,
            request,
        })
    }

    fn from_envelope(env: &Envelope<'a>) -> Result<Self, ErrorReply> {
        let kind = env.kind.as_ref();
        let bad =
            |e: serde_json::Error| ErrorReply::bad_request(format!("bad {kind} payload: {e}"));
        Ok(match kind {
            kind::ECHO => Request::Echo(env.payload),
            kind::ID => Request::Id,
            kind::XADD => Request::Xadd(env.payload().map_err(|e| {
                let wide = env.payload.and_then(|p| wide_entry(p, false));
                with_entry(bad(e), wide)
            })?),
            kind::XADDS => Request::Xadds(env.payload().map_err(|e| {
                let wide = env.payload.and_then(|p| wide_entry(p, true));
                with_entry(bad(e), wide)
            })?),
            kind::XREAD => Request::Xread(env.payload().map_err(bad)?),
            kind::SUBSCRIBE => Request::Subscribe(env.payload().map_err(bad)?),
            kind::ACK => Request::Ack(env.payload().map_err(bad)?),
            kind::RENEW => Request::Renew(env.payload().map_err(bad)?),
            other => {
                let quoted: String = other.chars().take(QUOTE_CHARS).collect();
                return Err(ErrorReply::bad_request(format!(
                    "unknown message type {quoted:?}"
                )));
            }
        })
    }
}

/// Names `entry` in a refusal (see [`ErrorReply::entry`]).
fn with_entry(reply: ErrorReply, entry: Option<crate::StreamId>) -> ErrorReply {
    match entry {
        Some(id) => reply.about_entry(id),
        None => reply,
    }
}

/// The first entry of a refused `xadd`/`xadds` payload with more keys plus
/// values than [`MAX_ENTRY_VALUES`], read loosely (only ids and counts), so
/// the refusal can name it and the client set it aside.
fn wide_entry(payload: &RawValue, batch: bool) -> Option<crate::StreamId> {
    use serde::Deserialize;
    use serde::de::IgnoredAny;
    #[derive(Deserialize)]
    struct Loose {
        id: crate::StreamId,
        #[serde(default)]
        fields: Option<Vec<IgnoredAny>>,
        #[serde(default)]
        fields64: Option<Vec<IgnoredAny>>,
    }
    #[derive(Deserialize)]
    struct Batch {
        entries: Vec<Loose>,
    }
    let entries = if batch {
        serde_json::from_str::<Batch>(payload.get()).ok()?.entries
    } else {
        vec![serde_json::from_str::<Loose>(payload.get()).ok()?]
    };
    entries
        .into_iter()
        .find(|e| {
            let n = e
                .fields
                .as_ref()
                .or(e.fields64.as_ref())
                .map_or(0, Vec::len);
            n > MAX_ENTRY_VALUES
        })
        .map(|e| e.id)
}

impl<B: Serialize> Request<'_, B> {
    /// The `type` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Echo(_) => kind::ECHO,
            Request::Id => kind::ID,
            Request::Xadd(_) => kind::XADD,
            Request::Xadds(_) => kind::XADDS,
            Request::Xread(_) => kind::XREAD,
            Request::Subscribe(_) => kind::SUBSCRIBE,
            Request::Ack(_) => kind::ACK,
            Request::Renew(_) => kind::RENEW,
        }
    }

    /// Encodes the request as a text frame with request id `id`.
    pub fn to_text(&self, id: Option<&Value>) -> Result<String, serde_json::Error> {
        Frame::new(self.kind(), id, Payload(self)).to_text()
    }
}

/// A request's payload, serialized by variant.
struct Payload<'r, 'a, B>(&'r Request<'a, B>);

impl<B: Serialize> Serialize for Payload<'_, '_, B> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Request::Echo(Some(raw)) => raw.serialize(s),
            Request::Echo(None) | Request::Id => empty().serialize(s),
            Request::Xadd(entry) => entry.serialize(s),
            Request::Xadds(batch) => batch.serialize(s),
            Request::Xread(xread) => xread.serialize(s),
            Request::Subscribe(sub) => sub.serialize(s),
            Request::Ack(ack) => ack.serialize(s),
            Request::Renew(renew) => renew.serialize(s),
        }
    }
}

/// `{}`, the payload of requests that carry nothing.
pub(crate) fn empty() -> &'static RawValue {
    serde_json::from_str("{}").expect("`{}` is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamId;

    #[test]
    fn requests_parse_into_their_variant() {
        let inc =
            Request::parse(r#"{"type":"xadd","id":7,"payload":{"id":"1-1","fields":["a","b"]}}"#)
                .unwrap();
        assert_eq!(inc.id, Some(serde_json::json!(7)));
        assert!(matches!(inc.request, Request::Xadd(e) if e.id == StreamId::new(1, 1)));
        let inc = Request::parse(r#"{"type":"ack","payload":{"id":"2-0"}}"#).unwrap();
        assert_eq!(inc.id, None);
        assert!(matches!(inc.request, Request::Ack(a) if a.id == StreamId::new(2, 0)));
    }

    #[test]
    fn rejections_carry_the_reply_the_hub_sends() {
        let r = Request::parse("not json").unwrap_err();
        assert_eq!((r.kind.as_ref(), r.id, r.reply.status), ("err", None, 400));
        assert!(r.reply.message.starts_with("unparseable frame: "));
        let r = Request::parse(r#"{"type":"xadds","id":"a","payload":{"entries":5}}"#).unwrap_err();
        assert_eq!(
            (r.kind.as_ref(), r.id),
            ("xadds", Some(serde_json::json!("a")))
        );
        assert!(r.reply.message.starts_with("bad xadds payload: "));
        // A backlog is a count: anything else refuses the batch, never a guess.
        let r = Request::parse(r#"{"type":"xadds","id":2,"payload":{"entries":[],"backlog":-1}}"#)
            .unwrap_err();
        assert_eq!(r.reply.status, 400);
        assert!(r.reply.message.starts_with("bad xadds payload: "));
        let r = Request::parse(r#"{"type":"nope","id":1}"#).unwrap_err();
        assert_eq!(r.kind.as_ref(), "nope");
        assert_eq!(r.reply.message, r#"unknown message type "nope""#);
    }

    #[test]
    fn a_refused_wide_entry_is_named() {
        let many: Vec<String> = (0..MAX_ENTRY_VALUES + 2).map(|i| i.to_string()).collect();
        let frame = serde_json::json!({"type": "xadds", "id": 1, "payload": {"entries": [
            {"id": "1-0", "fields": ["k", "v"]},
            {"id": "2-0", "fields": many},
        ]}})
        .to_string();
        let r = Request::parse(&frame).unwrap_err();
        assert_eq!(r.reply.entry, Some(StreamId::new(2, 0)));
        assert!(
            r.reply.message.contains("entry 2-0 has 1025 fields"),
            "{}",
            r.reply.message
        );
        let frame =
            serde_json::json!({"type": "xadds", "id": 1, "payload": {"entries": 5}}).to_string();
        let r = Request::parse(&frame).unwrap_err();
        assert_eq!(r.reply.entry, None);
    }

    #[test]
    fn encoded_requests_keep_the_wire_shape() {
        let raw: &RawValue = serde_json::from_str(r#"[{"id":"1-0","fields":["k","v"]}]"#).unwrap();
        let batch: Request<'_, &RawValue> = Request::Xadds(XaddsRequest {
            prev: Some(StreamId::ZERO),
            entries: raw,
            backlog: None,
            part: None,
        });
        assert_eq!(
            batch.to_text(Some(&Value::from(3))).unwrap(),
            r#"{"type":"xadds","id":3,"payload":{"prev":"0-0","entries":[{"id":"1-0","fields":["k","v"]}]}}"#
        );
        let reported: Request<'_, &RawValue> = Request::Xadds(XaddsRequest {
            prev: Some(StreamId::ZERO),
            entries: raw,
            backlog: Some(41),
            part: None,
        });
        let text = reported.to_text(Some(&Value::from(4))).unwrap();
        assert_eq!(
            text,
            r#"{"type":"xadds","id":4,"payload":{"prev":"0-0","entries":[{"id":"1-0","fields":["k","v"]}],"backlog":41}}"#
        );
        assert!(matches!(
            Request::parse(&text).unwrap().request,
            Request::Xadds(XaddsRequest {
                backlog: Some(41),
                ..
            })
        ));
        assert_eq!(
            Request::<'_, Vec<Entry>>::Id
                .to_text(Some(&Value::from(1)))
                .unwrap(),
            r#"{"type":"id","id":1,"payload":{}}"#
        );
    }
}
