//! WebSocket messages between lula-client (or any lula-compatible client) and
//! lula-hub. `PROTOCOL.md` next to this crate describes them for humans.
//!
//! Every message is a JSON text frame `{"type": ..., "id": ..., "payload": {...}}`.
//! Requests carry an `id` (string or number) that the reply echoes together with
//! the `type`; notifications ([`kind::ACK`], [`kind::PUSH`]) carry none and get no
//! reply. A reply whose payload has a `status` is an error ([`ErrorReply`]).
//!
//! The reference for what may be sent is the pair of enums: [`Request`] (device
//! to hub, parsed with [`Request::parse`]) and [`HubFrame`] (hub to device);
//! [`CloseReason`] lists the close codes. This module holds their payloads and
//! the envelope they travel in.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

pub use crate::close::CloseReason;
pub use crate::hub_frame::{HubFrame, XreadReply};
pub use crate::request::{Incoming, Rejected, Request};
use crate::{Entry, StreamId};

/// Message `type` names.
pub mod kind {
    /// Echoes its payload back; a liveness check.
    pub const ECHO: &str = "echo";
    /// Asks for the device's upstream cursor ([`super::IdReply`]).
    pub const ID: &str = "id";
    /// Appends one entry (lula-compatible).
    pub const XADD: &str = "xadd";
    /// Appends a batch of entries ([`super::XaddsRequest`]).
    pub const XADDS: &str = "xadds";
    /// Reads the device's out stream (lula-compatible polling).
    pub const XREAD: &str = "xread";
    /// Starts server push of the device's out stream from a cursor.
    pub const SUBSCRIBE: &str = "subscribe";
    /// Server push of out-stream entries (notification, hub to client).
    pub const PUSH: &str = "push";
    /// Client acknowledgement of pushed entries (notification, client to hub).
    pub const ACK: &str = "ack";
    /// Moves a live connection to a new session token ([`super::RenewRequest`]).
    pub const RENEW: &str = "renew";
    /// Reply to a frame that could not be parsed at all.
    pub const ERR: &str = "err";
}

/// HTTP-like status codes used in [`ErrorReply::status`].
pub mod status {
    /// Malformed request: bad JSON shape, bad id, unknown type.
    pub const BAD_REQUEST: u16 = 400;
    /// A `renew` token that is invalid, expired, revoked or for another device.
    pub const UNAUTHORIZED: u16 = 401;
    /// Sequence conflict: a seq at or below the saved cursor, or a batch whose
    /// `prev` is ahead of the saved cursor (a gap).
    pub const CONFLICT: u16 = 409;
    /// Too many entries in a batch or fields in an entry.
    pub const TOO_LARGE: u16 = 413;
    /// Too many requests of one kind in flight on the connection (blocking
    /// `xread`s past [`crate::limits::MAX_BLOCKING_XREADS`]): refused, nothing
    /// else is affected; send it again once one is answered.
    pub const TOO_MANY_REQUESTS: u16 = 429;
    /// The hub failed; the detail is in its log. Safe to retry.
    pub const INTERNAL: u16 = 500;
    /// The hub's Redis is unreachable. Safe to retry after a backoff.
    pub const UNAVAILABLE: u16 = 503;
    /// The hub's Redis is full (`maxmemory` with `noeviction`): nothing was
    /// written. Safe to retry after a backoff; the device keeps its entries.
    pub const INSUFFICIENT_STORAGE: u16 = 507;
}

/// WebSocket close codes, the codes of [`CloseReason`] (which also has each
/// one's reason text and metric label).
pub mod close {
    use super::CloseReason;

    /// Normal closure.
    pub const NORMAL: u16 = CloseReason::Normal.code();
    /// The hub is shutting down; reconnect (possibly to another replica) at once.
    pub const GOING_AWAY: u16 = CloseReason::GoingAway.code();
    /// Policy violation.
    pub const POLICY: u16 = CloseReason::Policy.code();
    /// A message exceeded the frame size limit.
    pub const TOO_BIG: u16 = CloseReason::TooBig.code();
    /// The peer sent nothing, not even a pong, within the idle timeout.
    pub const IDLE: u16 = CloseReason::Idle.code();
    /// The session token expired and was not renewed: log in again, reconnect.
    pub const SESSION_EXPIRED: u16 = CloseReason::SessionExpired.code();
    /// A newer connection of the same device took over.
    pub const REPLACED: u16 = CloseReason::Replaced.code();
    /// The session was revoked: log in again.
    pub const SESSION_REVOKED: u16 = CloseReason::SessionRevoked.code();
}

/// A received frame with its payload left unparsed until its `type` is known.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// Message type, one of [`kind`].
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// Request id, echoed in the reply. Absent on notifications.
    #[serde(default)]
    pub id: Option<Value>,
    /// Type-specific payload.
    #[serde(default, borrow)]
    pub payload: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    /// Parses a text frame. Fails when it is not JSON or has no string `type`, or
    /// when `id` is neither a string nor a number.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        // serde's derived `Deserialize` also reads a struct from a JSON array,
        // by position (`["xadd", 1, {...}]`); frames are objects only.
        if !is_object(text) {
            return Err(serde::de::Error::custom("a frame must be a JSON object"));
        }
        let env: Envelope<'a> = serde_json::from_str(text)?;
        if let Some(id) = &env.id
            && !(id.is_string() || id.is_number() || id.is_null())
        {
            return Err(serde::de::Error::custom(
                "`id` must be a string or a number",
            ));
        }
        Ok(env)
    }

    /// Parses the payload as `T`; a missing payload reads as `{}`.
    pub fn payload<T: Deserialize<'a>>(&self) -> Result<T, serde_json::Error> {
        match self.payload {
            Some(raw) if !is_object(raw.get()) => {
                Err(serde::de::Error::custom("payload must be a JSON object"))
            }
            Some(raw) => serde_json::from_str(raw.get()),
            None => serde_json::from_str("{}"),
        }
    }

    /// The payload's `status` when the frame is an error reply.
    pub fn error(&self) -> Option<ErrorReply> {
        #[derive(Deserialize)]
        struct Peek {
            status: Option<u16>,
        }
        let raw = self.payload?;
        let peek: Peek = serde_json::from_str(raw.get()).ok()?;
        peek.status?;
        serde_json::from_str(raw.get()).ok()
    }
}

/// Whether JSON `text` is an object (its first non-blank byte is `{`).
fn is_object(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
}

/// A frame to send: `type`, optional `id`, payload.
#[derive(Debug, Serialize)]
pub struct Frame<'a, P> {
    /// Message type.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Request id (echoed from the request on replies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Value>,
    /// Payload.
    pub payload: P,
}

impl<'a, P: Serialize> Frame<'a, P> {
    /// A frame with an id (requests and replies).
    pub fn new(kind: &'a str, id: Option<&'a Value>, payload: P) -> Self {
        Frame { kind, id, payload }
    }

    /// Encodes the frame as JSON text.
    pub fn to_text(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// Payload of every error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReply {
    /// One of [`status`].
    pub status: u16,
    /// What went wrong, for logs and humans.
    pub message: String,
    /// On 409: the device's saved cursor, where the client should resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<StreamId>,
    /// When the refusal is about one entry (400/413 past a limit): its id,
    /// so the client can set that entry aside and carry on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<StreamId>,
}

impl ErrorReply {
    /// An error with a status and message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ErrorReply {
            status,
            message: message.into(),
            id: None,
            entry: None,
        }
    }

    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(status::BAD_REQUEST, message)
    }

    /// A 409 Conflict naming the saved `cursor` to resume from.
    pub fn conflict(message: impl Into<String>, cursor: StreamId) -> Self {
        ErrorReply {
            id: Some(cursor),
            ..Self::new(status::CONFLICT, message)
        }
    }

    /// This refusal, naming the entry it is about.
    pub fn about_entry(self, entry: StreamId) -> Self {
        ErrorReply {
            entry: Some(entry),
            ..self
        }
    }

    /// A 503: the hub's Redis is unreachable.
    pub fn unavailable() -> Self {
        Self::new(status::UNAVAILABLE, "redis unavailable, retry later")
    }

    /// A 507: the hub's Redis is full; nothing was written.
    pub fn storage_full() -> Self {
        Self::new(
            status::INSUFFICIENT_STORAGE,
            "the hub's Redis is full (maxmemory): nothing was written, retry later",
        )
    }
}

/// Reply to [`kind::ID`]: the device's upstream cursor and the hub's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdReply {
    /// The last device seq the hub accepted, `0-0` at first.
    pub id: StreamId,
    /// Largest frame the hub accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<usize>,
    /// Most entries per `xadds` batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_entries: Option<usize>,
    /// Most keys plus values in one entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entry_values: Option<usize>,
    /// `true` when the hub takes set-aside markers in `xadds` (see
    /// [`crate::Entry`]); a client sends markers only then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub set_aside: bool,
    /// Present when the hub takes entries in parts (`part` in `xadds`, see
    /// [`crate::parts`]): the widest and largest entry it puts together.
    /// An entry past these is set aside by the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<crate::parts::PartLimits>,
}

/// Reply to [`kind::XADD`]: the id the hub gave the entry in its in stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XaddReply {
    /// Hub in-stream id of the appended entry.
    pub id: StreamId,
}

/// Request [`kind::XADDS`]: a batch of consecutive entries of the device's out
/// stream. `E` holds the entries: parsed (the default) or encoded JSON (a
/// `&RawValue`, for a sender that has them encoded already).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XaddsRequest<E = Vec<Entry>> {
    /// The client's view of the hub's cursor before this batch: the seq of the
    /// entry preceding `entries[0]` in the device stream, or the cursor the hub
    /// reported. If the hub's saved cursor is below `prev`, an earlier batch was
    /// not applied and this one is refused (409, nothing written), so a client
    /// can pipeline batches without risking a hole. Absent: no such check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<StreamId>,
    /// Entries with strictly increasing ids.
    pub entries: E,
    /// The sender's upstream backlog: how many entries of its out stream
    /// follow the last of `entries`, as it knew when it cut the batch (a
    /// producer may have added more since). The last batch of a drain says
    /// `0`. For the hub's fleet view only: it changes nothing about how the
    /// batch is applied. Absent when the sender does not know (the Node
    /// lula-client, older clients, or a position whose count was lost to an
    /// `XDEL`); hubs that predate it ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u64>,
    /// One part of an entry too wide or too large for a batch
    /// ([`crate::parts`]), sent with `entries` empty and `prev` the entry
    /// before it. The hub answers a part before the last with `added` 0 and
    /// its cursor as it was, and the last one like a batch of the whole
    /// entry. Only to hubs that offer `parts` in their `id` reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<crate::parts::EntryPart>,
}

/// Reply to [`kind::XADDS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XaddsReply {
    /// The device's cursor after the batch: the last seq the hub holds.
    pub id: StreamId,
    /// Entries appended by this batch.
    pub added: u64,
    /// Entries skipped because the hub already had them.
    pub duplicates: u64,
    /// Set-aside markers the cursor moved past (see [`crate::Entry`]);
    /// `added + duplicates + setAside` is the batch length.
    #[serde(default, rename = "setAside", skip_serializing_if = "is_zero")]
    pub set_aside: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Request [`kind::XREAD`] (lula-compatible polling of the device's out stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct XreadRequest {
    /// Return entries after this hub id.
    pub id: StreamId,
    /// Block up to this many milliseconds when nothing is there (`blockMs` too).
    #[serde(default, alias = "blockMs", skip_serializing_if = "Option::is_none")]
    pub block_timeout: Option<u64>,
    /// Most entries to return (capped by the hub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
}

/// Request [`kind::SUBSCRIBE`]: push the device's out stream after `id`, and
/// the fleet's broadcast stream after `broadcastAfter` when given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeRequest {
    /// The device's downstream cursor: the last hub id it stored.
    pub id: StreamId,
    /// The device's broadcast cursor: the last `lula-hub:broadcast:x` id it
    /// stored (`0-0`: every retained broadcast). Absent: the device wants no
    /// broadcasts (clients older than broadcasts, the Node lula-client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_after: Option<StreamId>,
    /// `true`: the device understands set-aside markers, so the hub sets
    /// aside an entry the device cannot take (past a limit) and pushes a
    /// marker in its place. Absent (older clients, the Node lula-client):
    /// every entry is pushed as it is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub set_aside: bool,
    /// Present when the device puts entries together from parts: the
    /// widest and largest it takes. The hub then pushes an entry past what
    /// one push may hold in parts (a `part` per push frame) instead of
    /// setting it aside, when it is within these. Needs `set_aside`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<crate::parts::PartLimits>,
}

/// Reply to [`kind::SUBSCRIBE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeReply {
    /// Where pushing starts (after this id).
    pub id: StreamId,
    /// Where pushing broadcasts starts, when the request asked for them and
    /// the hub serves them (a hub older than broadcasts leaves it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_after: Option<StreamId>,
}

/// Which stream a [`Push`] or an [`Ack`] is about. Each has its own cursor,
/// window and acknowledgements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushStream {
    /// The device's own out stream, `lula-hub:out:<client>:x` (on the wire:
    /// no `stream` field, as before broadcasts existed).
    #[default]
    Direct,
    /// The fleet's broadcast stream, `lula-hub:broadcast:x`.
    Broadcast,
}

impl PushStream {
    /// Whether this is [`PushStream::Direct`] (left out on the wire).
    pub fn is_direct(&self) -> bool {
        *self == PushStream::Direct
    }

    /// Its name on the wire and in logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            PushStream::Direct => "direct",
            PushStream::Broadcast => "broadcast",
        }
    }
}

/// Notification [`kind::PUSH`]: out-stream entries for the device, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    /// Entries with their hub ids.
    pub entries: Vec<Entry>,
    /// Entries still waiting after these when the hub read them, counted up
    /// to [`crate::limits::BACKLOG_COUNT_CAP`] (the cap means "at least").
    /// Absent when the hub did not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u64>,
    /// The stream the entries come from: absent for the device's own out
    /// stream, `"broadcast"` for the broadcast stream.
    #[serde(default, skip_serializing_if = "PushStream::is_direct")]
    pub stream: PushStream,
    /// Entries after the device's cursor up to this id were deleted
    /// (trimmed by the broadcast retention) before they could be pushed: the
    /// device missed them. Every entry of this push is after it; the device
    /// moves its cursor to it and reports the gap. Absent: nothing missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<StreamId>,
    /// Messages after the device's cursor that expired (past their
    /// `expiresAt`, or older than the hub's `--downstream-max-age`) and were
    /// deleted instead of delivered, just before this push's entries. The
    /// device counts them. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired: Option<u64>,
    /// One part of an entry pushed in parts ([`crate::parts`]), with
    /// `entries` empty; the device stores the entry (and acknowledges it)
    /// when its last part arrives. Only to devices that offered `parts` in
    /// `subscribe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<crate::parts::EntryPart>,
}

/// Request [`kind::RENEW`]: continue this connection under a new session token
/// of the same device (from a fresh login), before the current one expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// The new token.
    pub token: String,
}

/// Reply to [`kind::RENEW`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewReply {
    /// When the connection's session now ends, epoch seconds.
    pub exp: u64,
}

/// Notification [`kind::ACK`]: the device stored every pushed entry up to `id`
/// of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Last hub id the device stored.
    pub id: StreamId,
    /// The stream acknowledged: absent for the device's own out stream,
    /// `"broadcast"` for the broadcast stream.
    #[serde(default, skip_serializing_if = "PushStream::is_direct")]
    pub stream: PushStream,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_keeps_id_and_defers_payload() {
        let env =
            Envelope::parse(r#"{"type":"xadd","id":7,"payload":{"id":"1-1","fields":["a","b"]}}"#)
                .unwrap();
        assert_eq!(env.kind, "xadd");
        assert_eq!(env.id, Some(serde_json::json!(7)));
        let e: Entry = env.payload().unwrap();
        assert_eq!(e.id, StreamId::new(1, 1));
    }

    #[test]
    fn envelope_rejects_non_json_and_bad_ids() {
        assert!(Envelope::parse("not json").is_err());
        assert!(Envelope::parse(r#"{"id":1}"#).is_err());
        assert!(Envelope::parse(r#"{"type":5}"#).is_err());
        assert!(Envelope::parse(r#"{"type":"id","id":{"x":1}}"#).is_err());
    }

    #[test]
    fn error_replies_are_recognised_by_status() {
        let env = Envelope::parse(
            r#"{"type":"xadd","id":"1","payload":{"status":409,"message":"dup","id":"5-0"}}"#,
        )
        .unwrap();
        let err = env.error().unwrap();
        assert_eq!(err.status, status::CONFLICT);
        assert_eq!(err.id, Some(StreamId::new(5, 0)));
        let ok = Envelope::parse(r#"{"type":"xadd","id":"1","payload":{"id":"5-0"}}"#).unwrap();
        assert!(ok.error().is_none());
    }

    #[test]
    fn frames_serialize_like_lula() {
        let id = serde_json::json!("abc");
        let text = Frame::new(
            kind::ID,
            Some(&id),
            IdReply {
                id: StreamId::ZERO,
                max_frame_bytes: None,
                max_batch_entries: None,
                max_entry_values: None,
                set_aside: false,
                parts: None,
            },
        )
        .to_text()
        .unwrap();
        assert_eq!(text, r#"{"type":"id","id":"abc","payload":{"id":"0-0"}}"#);
        let xread: XreadRequest = serde_json::from_str(r#"{"id":"0-0","blockMs":100}"#).unwrap();
        assert_eq!(xread.block_timeout, Some(100));
    }

    #[test]
    fn frames_without_broadcast_fields_keep_their_old_shape() {
        // What clients and hubs older than broadcasts send still decodes...
        let sub: SubscribeRequest = serde_json::from_str(r#"{"id":"5-1"}"#).unwrap();
        assert_eq!(sub.broadcast_after, None);
        let ack: Ack = serde_json::from_str(r#"{"id":"5-1"}"#).unwrap();
        assert_eq!(ack.stream, PushStream::Direct);
        let push: Push = serde_json::from_str(r#"{"entries":[]}"#).unwrap();
        assert_eq!((push.stream, push.gap), (PushStream::Direct, None));
        // ...and direct frames are encoded exactly as before.
        let direct = Push {
            entries: vec![Entry::from_pairs(StreamId::new(9, 0), &[("k", "v")])],
            backlog: None,
            stream: PushStream::Direct,
            gap: None,
            expired: None,
            part: None,
        };
        assert_eq!(
            serde_json::to_string(&direct).unwrap(),
            r#"{"entries":[{"id":"9-0","fields":["k","v"]}]}"#
        );
        let ack = Ack {
            id: StreamId::new(9, 0),
            stream: PushStream::Direct,
        };
        assert_eq!(serde_json::to_string(&ack).unwrap(), r#"{"id":"9-0"}"#);
        let sub = SubscribeRequest {
            id: StreamId::ZERO,
            broadcast_after: None,
            set_aside: false,
            parts: None,
        };
        assert_eq!(serde_json::to_string(&sub).unwrap(), r#"{"id":"0-0"}"#);
    }

    #[test]
    fn broadcast_fields_are_named_on_the_wire() {
        let sub = SubscribeRequest {
            id: StreamId::new(1, 0),
            broadcast_after: Some(StreamId::ZERO),
            set_aside: false,
            parts: None,
        };
        let text = serde_json::to_string(&sub).unwrap();
        assert_eq!(text, r#"{"id":"1-0","broadcastAfter":"0-0"}"#);
        assert_eq!(
            serde_json::from_str::<SubscribeRequest>(&text).unwrap(),
            sub
        );
        let reply = SubscribeReply {
            id: StreamId::new(1, 0),
            broadcast_after: Some(StreamId::new(2, 0)),
        };
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"id":"1-0","broadcastAfter":"2-0"}"#
        );
        let push = Push {
            entries: vec![],
            backlog: Some(0),
            stream: PushStream::Broadcast,
            gap: Some(StreamId::new(7, 0)),
            expired: None,
            part: None,
        };
        let text = serde_json::to_string(&push).unwrap();
        assert_eq!(
            text,
            r#"{"entries":[],"backlog":0,"stream":"broadcast","gap":"7-0"}"#
        );
        assert_eq!(serde_json::from_str::<Push>(&text).unwrap(), push);
        let ack: Ack = serde_json::from_str(r#"{"id":"7-0","stream":"broadcast"}"#).unwrap();
        assert_eq!(ack.stream, PushStream::Broadcast);
        assert_eq!(
            serde_json::to_string(&ack).unwrap(),
            r#"{"id":"7-0","stream":"broadcast"}"#
        );
        // An explicit "direct" is accepted too; an unknown stream is refused.
        let ack: Ack = serde_json::from_str(r#"{"id":"7-0","stream":"direct"}"#).unwrap();
        assert_eq!(ack.stream, PushStream::Direct);
        assert!(serde_json::from_str::<Ack>(r#"{"id":"7-0","stream":"other"}"#).is_err());
        assert!(
            serde_json::from_str::<SubscribeRequest>(r#"{"id":"0-0","broadcastAfter":"x"}"#)
                .is_err()
        );
    }
}
