//! The lula protocol: what lula-auth, lula-hub and lula-client agree on.
//!
//! This crate holds types and constants only. It knows nothing of HTTP,
//! WebSocket libraries or Redis connections, so both ends of the protocol, tools
//! and tests can depend on it without pulling a server into their build.
//!
//! # Layout
//! - [`stream_id`]: Redis stream ids, parsed strictly and ordered numerically.
//! - `compress` (feature `compress`): compressed binary frames (raw deflate,
//!   per-connection history) and their handshake header.
//! - [`client_id`]: device identities and the characters they may contain.
//! - [`entry`]: a stream entry on the wire (UTF-8 or base64 fields).
//! - [`field_names`]: the reserved field names and the one reversible rule
//!   that renames them, up, down and in broadcasts.
//! - [`request`]: [`Request`], every frame a device sends, parsed into its
//!   variant or into the error reply the hub sends back.
//! - [`hub_frame`]: [`HubFrame`], every frame the hub sends (replies, pushes,
//!   errors).
//! - [`close`]: [`CloseReason`], every close code with its text and metric label.
//! - [`message`]: the payloads of those frames, the envelope, statuses.
//! - [`keys`]: every Redis key name, under configurable prefixes.
//! - [`token`]: session token claims.
//! - [`limits`]: sizes and timeouts both ends respect.
//! - [`parts`]: entries too wide or large for a frame, cut into parts and put back together.
//! - [`budget`]: byte budgets beside entry budgets (read counts, windows).
//! - [`lua`]: Lua shared by the Redis scripts of hub and client.
//! - [`redact`]: keeping secrets out of logs.
//! - [`rpc`]: request/response conventions over the streams.
//! - `redis_value` (feature `redis`): stream replies from redis-rs values.

pub mod budget;
pub mod client_id;
pub mod close;
#[cfg(feature = "compress")]
pub mod compress;
pub mod entry;
pub mod field_names;
pub mod hub_frame;
pub mod keys;
pub mod limits;
pub mod lua;
pub mod message;
pub mod parts;
pub mod redact;
#[cfg(feature = "redis")]
pub mod redis_value;
pub mod request;
pub mod rpc;
pub mod stream_id;
pub mod token;

pub use client_id::ClientId;
pub use close::CloseReason;
pub use entry::Entry;
pub use field_names::{escape_field, escape_fields, unescape_field, unescape_fields};
pub use hub_frame::HubFrame;
pub use redact::{Redacted, redact_url};
pub use request::Request;
pub use stream_id::StreamId;

/// Field the hub writes first into each `lula-hub:in:x` entry: the device, taken
/// from the authenticated session.
pub const FIELD_CLIENT: &str = "client";
/// Field holding the entry's id in the stream it came from: the device's out-stream
/// id in `lula-hub:in:x`, the hub's out-stream id in `lula-client:in:x`.
pub const FIELD_SEQ: &str = "seq";
/// Field the client writes first into each broadcast it stores in
/// `lula-client:in:x`, in place of [`FIELD_SEQ`]: the entry's id in
/// `lula-hub:broadcast:x`. Consumers tell broadcasts from direct messages by it.
pub const FIELD_BROADCAST: &str = "broadcast";
/// A message's own expiry, epoch milliseconds: the hub does not deliver a
/// message to a device after it (it deletes it and tells the device how many
/// expired). `lula-hub call` sets it to its deadline.
pub const FIELD_EXPIRES_AT: &str = "expiresAt";
