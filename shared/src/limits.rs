//! Limits and timeouts both ends agree on. Bounding everything keeps a hostile
//! or broken peer from taking more than its share of memory or Redis time.

use std::time::Duration;

/// Largest WebSocket message the hub accepts by default (`--max-frame-bytes`).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// Most entries one `xadds` batch may carry. Each batch is one Lua script
/// invocation, and a script blocks Redis while it runs, so this bounds that time.
pub const MAX_BATCH_ENTRIES: usize = 10_000;

/// Most keys plus values in one entry (1,024 pairs). The ingest script builds one
/// `XADD` call per entry from a Lua table, and Lua's `unpack` is limited to about
/// 8,000 values, so the limit sits well below that.
pub const MAX_ENTRY_VALUES: usize = 2_048;

/// Entries the client puts in one batch by default.
pub const DEFAULT_BATCH_ENTRIES: usize = 1_000;

/// Batches the client keeps in flight (sent, not yet acknowledged) by default.
pub const DEFAULT_INFLIGHT_BATCHES: usize = 4;

/// Most entries one legacy `xread` reply returns.
pub const XREAD_MAX_COUNT: usize = 1_000;

/// Longest `blockTimeout` honoured on a legacy `xread`.
pub const XREAD_MAX_BLOCK: Duration = Duration::from_secs(60);

/// Entries the hub puts in one `push` frame.
pub const PUSH_BATCH_ENTRIES: usize = 500;

/// Unacknowledged pushed entries the hub allows per device before it waits.
pub const PUSH_WINDOW_ENTRIES: usize = 2_000;

/// How often the hub pings each connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);

/// A connection that sent nothing (not even a pong) for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// Most entries the hub counts when it reports a backlog (downstream in push
/// frames, in `lula-hub fleet`): counting is a read of the entries, so a large
/// backlog is reported as "at least this many".
pub const BACKLOG_COUNT_CAP: usize = 10_000;
