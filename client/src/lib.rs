//! lula-client: the daemon on each device. It registers once with lula-auth,
//! logs in, keeps a WebSocket to lula-hub, pushes the device's out stream up and
//! stores the hub's messages down, and resumes by itself after any failure.
//!
//! Exactly once, both ways:
//! - Upstream, the hub owns the cursor. The client asks for it on every
//!   connection, reads `out:x` after it, and counts an entry delivered only when
//!   the hub acknowledges it (duplicates included). Resending is always safe.
//! - Downstream, the device owns the cursor. Each pushed frame is appended to
//!   `in:x` together with the cursor in one Lua script, then acknowledged; a
//!   frame seen twice is stored once. Broadcasts (the fleet's one
//!   `lula-hub:broadcast:x`) the same, with a cursor of their own.
//!
//! # Layout
//! - [`config`]: the daemon's settings, [`Config`].
//! - [`daemon`]: the reconnecting state machine ([`run`]).
//! - [`link`]: compressed frames (issue 16): the offer, the hub's answer and
//!   the per-direction halves of a session, with its link byte counts.
//! - [`session`]: one hub connection: handshake, then a `select!` over named
//!   events (frames, batches, timers, renewal), one method per hub frame kind.
//! - [`renewal`]: renewing the session token on the live connection.
//! - [`published`]: the status fields the daemon writes for
//!   `lula-client status`, through one typed [`published::StatusUpdate`].
//! - [`uplink`]: reading `out:x` into byte-bounded batches.
//! - [`device`]: the device Redis: the downstream store script, the out-stream
//!   reader, the state hash.
//! - [`auth`]: lula-auth calls and TOTP.
//! - [`identity`]: the secret and registration state in `--state-dir`.
//! - [`takeover`]: taking over a Node lula-client's state at start.
//! - [`backoff`]: capped, jittered exponential backoff.
//! - [`metrics`]: Prometheus metrics on `--metrics-listen`.
//! - [`rpc`]: request/response with the cloud over the synced streams.
//! - [`status`]: `lula-client status`.
//! - [`status_check`]: `lula-client status --check`, health as an exit code.

pub mod auth;
pub mod backoff;
pub mod config;
pub mod daemon;
pub mod device;
pub mod identity;
pub mod link;
pub mod metrics;
pub mod published;
pub mod renewal;
pub mod retention;
pub mod rpc;
pub mod session;
pub mod status;
pub mod status_check;
pub mod takeover;
pub mod uplink;

pub use config::Config;
pub use daemon::{run, run_with_metrics};
