//! What the hub sends a device: one [`HubFrame`] per text frame.
//!
//! Replies carry the `type` and `id` of their request; pushes carry no id. A
//! reply whose payload has a `status` is an error ([`HubFrame::Error`]).

use std::borrow::Cow;

use serde::de::Error as _;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::message::{
    Envelope, ErrorReply, Frame, IdReply, Push, RenewReply, SubscribeReply, XaddReply, XaddsReply,
    kind,
};
use crate::request::empty;

/// Reply to `xread` (lula-compatible): `{"items":[{...fields, "id":"<hub id>"}]}`,
/// each entry's fields as an object with its hub id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XreadReply {
    /// The entries read, oldest first.
    pub items: Vec<Value>,
}

/// A frame from the hub, by its `type`.
#[derive(Debug, Clone)]
pub enum HubFrame<'a> {
    /// `{"type":"echo","id":I,"payload":<the request's payload>}`.
    Echo(&'a RawValue),
    /// `{"type":"id","id":I,"payload":{"id":"<seq>","maxFrameBytes":n,"maxBatchEntries":n}}`.
    Id(IdReply),
    /// `{"type":"xadd","id":I,"payload":{"id":"<hub in-stream id>"}}`.
    Xadd(XaddReply),
    /// `{"type":"xadds","id":I,"payload":{"id":"<seq>","added":n,"duplicates":n}}`.
    Xadds(XaddsReply),
    /// `{"type":"xread","id":I,"payload":{"items":[...]}}`.
    Xread(XreadReply),
    /// `{"type":"subscribe","id":I,"payload":{"id":"<hub id>","broadcastAfter"?:"<id>"}}`.
    Subscribe(SubscribeReply),
    /// `{"type":"renew","id":I,"payload":{"exp":<epoch s>}}`.
    Renew(RenewReply),
    /// `{"type":"push","payload":{"entries":[...],"backlog"?:n,"stream"?:"broadcast","gap"?:"<id>"}}`:
    /// a notification; the device acks it.
    Push(Push),
    /// `{"type":<request type or "err">,"id"?:I,"payload":{"status":s,"message":"...","id"?:"<cursor>"}}`:
    /// the request failed; `err` answers a frame that could not be read at all.
    Error {
        /// The `type`: the request's, or `err`.
        kind: Cow<'a, str>,
        /// Status, message and (on 409) the cursor.
        reply: ErrorReply,
    },
}

impl<'a> HubFrame<'a> {
    /// The reply to `echo`: its payload, `{}` when it had none.
    pub fn echo(payload: Option<&'a RawValue>) -> Self {
        HubFrame::Echo(payload.unwrap_or_else(|| empty()))
    }

    /// An error reply to a request of type `kind`.
    pub fn error(kind: &'a str, reply: ErrorReply) -> Self {
        HubFrame::Error {
            kind: Cow::Borrowed(kind),
            reply,
        }
    }

    /// The `type` on the wire.
    pub fn kind(&self) -> &str {
        match self {
            HubFrame::Echo(_) => kind::ECHO,
            HubFrame::Id(_) => kind::ID,
            HubFrame::Xadd(_) => kind::XADD,
            HubFrame::Xadds(_) => kind::XADDS,
            HubFrame::Xread(_) => kind::XREAD,
            HubFrame::Subscribe(_) => kind::SUBSCRIBE,
            HubFrame::Renew(_) => kind::RENEW,
            HubFrame::Push(_) => kind::PUSH,
            HubFrame::Error { kind, .. } => kind,
        }
    }

    /// Encodes the frame, echoing request id `id`.
    pub fn to_text(&self, id: Option<&Value>) -> Result<String, serde_json::Error> {
        Frame::new(self.kind(), id, Payload(self)).to_text()
    }

    /// Parses a frame from the hub with its request id. Fails on frames that
    /// are not JSON objects, on unknown types and on payloads of the wrong shape.
    pub fn parse(text: &'a str) -> Result<(Option<Value>, Self), serde_json::Error> {
        let env = Envelope::parse(text)?;
        if let Some(reply) = env.error() {
            return Ok((
                env.id,
                HubFrame::Error {
                    kind: env.kind,
                    reply,
                },
            ));
        }
        let frame = match env.kind.as_ref() {
            kind::ECHO => HubFrame::Echo(env.payload.unwrap_or_else(|| empty())),
            kind::ID => HubFrame::Id(env.payload()?),
            kind::XADD => HubFrame::Xadd(env.payload()?),
            kind::XADDS => HubFrame::Xadds(env.payload()?),
            kind::XREAD => HubFrame::Xread(env.payload()?),
            kind::SUBSCRIBE => HubFrame::Subscribe(env.payload()?),
            kind::RENEW => HubFrame::Renew(env.payload()?),
            kind::PUSH => HubFrame::Push(env.payload()?),
            kind::ERR => {
                return Err(serde_json::Error::custom("an `err` frame without a status"));
            }
            other => {
                return Err(serde_json::Error::custom(format!(
                    "unknown frame type {other:?}"
                )));
            }
        };
        Ok((env.id, frame))
    }
}

/// A frame's payload, serialized by variant.
struct Payload<'r, 'a>(&'r HubFrame<'a>);

impl Serialize for Payload<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            HubFrame::Echo(raw) => raw.serialize(s),
            HubFrame::Id(r) => r.serialize(s),
            HubFrame::Xadd(r) => r.serialize(s),
            HubFrame::Xadds(r) => r.serialize(s),
            HubFrame::Xread(r) => r.serialize(s),
            HubFrame::Subscribe(r) => r.serialize(s),
            HubFrame::Renew(r) => r.serialize(s),
            HubFrame::Push(r) => r.serialize(s),
            HubFrame::Error { reply, .. } => reply.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamId;
    use crate::message::status;

    #[test]
    fn frames_encode_like_lula_and_parse_back() {
        let id = Value::from("abc");
        let text = HubFrame::Xadd(XaddReply {
            id: StreamId::new(5, 1),
        })
        .to_text(Some(&id))
        .unwrap();
        assert_eq!(text, r#"{"type":"xadd","id":"abc","payload":{"id":"5-1"}}"#);
        let (back_id, frame) = HubFrame::parse(&text).unwrap();
        assert_eq!(back_id, Some(id));
        assert!(matches!(frame, HubFrame::Xadd(r) if r.id == StreamId::new(5, 1)));
    }

    #[test]
    fn error_replies_keep_the_request_type() {
        let reply = ErrorReply::new(status::CONFLICT, "gap");
        let text = HubFrame::error("xadds", reply.clone())
            .to_text(Some(&Value::from(2)))
            .unwrap();
        assert_eq!(
            text,
            r#"{"type":"xadds","id":2,"payload":{"status":409,"message":"gap"}}"#
        );
        let (_, frame) = HubFrame::parse(&text).unwrap();
        assert!(
            matches!(frame, HubFrame::Error { kind, reply: r } if kind == "xadds" && r == reply)
        );
        assert!(HubFrame::parse(r#"{"type":"what","payload":{}}"#).is_err());
    }

    #[test]
    fn pushes_xread_and_echo_keep_the_shapes_clients_read() {
        let push = HubFrame::Push(Push {
            entries: vec![crate::Entry::from_pairs(StreamId::new(9, 0), &[("k", "v")])],
            backlog: Some(0),
            stream: Default::default(),
            gap: None,
            expired: None,
            part: None,
        });
        assert_eq!(
            push.to_text(None).unwrap(),
            r#"{"type":"push","payload":{"entries":[{"id":"9-0","fields":["k","v"]}],"backlog":0}}"#
        );
        let items = vec![serde_json::json!({"k": "v", "id": "9-0"})];
        let xread = HubFrame::Xread(XreadReply { items });
        assert_eq!(
            xread.to_text(Some(&Value::from(4))).unwrap(),
            r#"{"type":"xread","id":4,"payload":{"items":[{"id":"9-0","k":"v"}]}}"#
        );
        let raw: &RawValue = serde_json::from_str("[1, 2]").unwrap();
        assert_eq!(
            HubFrame::echo(Some(raw)).to_text(None).unwrap(),
            r#"{"type":"echo","payload":[1, 2]}"#
        );
        assert_eq!(
            HubFrame::echo(None)
                .to_text(Some(&Value::from("e")))
                .unwrap(),
            r#"{"type":"echo","id":"e","payload":{}}"#
        );
    }

    #[test]
    fn a_rejected_frame_is_answered_under_its_own_type() {
        let text = r#"{"type":"fetch","id":"q"}"#;
        let rejected = crate::Request::parse(text).unwrap_err();
        let reply = HubFrame::Error {
            kind: rejected.kind,
            reply: rejected.reply,
        };
        assert_eq!(
            reply.to_text(rejected.id.as_ref()).unwrap(),
            r#"{"type":"fetch","id":"q","payload":{"status":400,"message":"unknown message type \"fetch\""}}"#
        );
    }
}
