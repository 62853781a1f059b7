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

/// Most keys plus values of an entry carried in parts (100,000 field pairs)
/// by default (`--max-entry-pairs` on the hub): an upstream entry wider than
/// a batch may hold ([`MAX_ENTRY_VALUES`]) travels in parts
/// ([`crate::parts`]); one past this is set aside.
pub const DEFAULT_MAX_PART_VALUES: usize = 200_000;

/// Most bytes of keys and values of an entry carried in parts, by default
/// (`--max-entry-bytes` on the hub).
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 64 << 20;

/// Bytes of entries being put together from parts, over all connections of
/// a hub, by default (`--assembly-bytes`). An entry reserves its declared
/// size at its first part; when the budget is spent the part is refused
/// with 503 and the device retries after a backoff, so a hub's memory for
/// parts stays bounded however many devices send large entries at once.
pub const DEFAULT_ASSEMBLY_BYTES: usize = 128 << 20;

/// Most keys plus values of one entry the hub's ingest script appends:
/// Lua's `unpack` stops near 8,000 values, so a wider entry is appended with
/// `WATCH`/`MULTI` instead, guarded by the same cursor.
pub const SCRIPT_ENTRY_VALUES: usize = 7_000;

/// Largest frame lula-client accepts from the hub. The hub sets aside (does
/// not push) an entry whose push frame would be larger, for clients that said
/// they understand set-aside markers.
pub const MAX_PUSH_FRAME_BYTES: usize = 64 << 20;

/// Bytes of a push frame around its entries (`{"type":"push","payload":...}`
/// with a backlog, a gap and an expired count): what a one-entry frame adds to
/// the entry's own encoding.
pub const PUSH_ENVELOPE_BYTES: usize = 256;

/// Entries the client puts in one batch by default.
pub const DEFAULT_BATCH_ENTRIES: usize = 1_000;

/// Batches the client keeps in flight (sent, not yet acknowledged) by default.
pub const DEFAULT_INFLIGHT_BATCHES: usize = 4;

/// Bytes of encoded batches the client keeps in flight, beside
/// [`DEFAULT_INFLIGHT_BATCHES`]: with a raised `--max-frame-bytes` four
/// batches could otherwise hold four large frames. One batch is always
/// allowed, however large. 8 MiB keeps a fast link full (eight default-size
/// frames) and the daemon's memory small.
pub const UPSTREAM_INFLIGHT_BYTES: usize = 8 << 20;

/// About how many bytes of the out stream the client reads ahead of what it
/// sends (one `XREAD`, cut into batches). The read count follows the sizes of
/// recent entries ([`crate::budget::ReadCount`]): 100-byte entries are still
/// read a thousand at a time, 300 KB entries about a dozen, 5 MB entries one.
pub const UPSTREAM_READ_AHEAD_BYTES: usize = 4 << 20;

/// Most entries one legacy `xread` reply returns.
pub const XREAD_MAX_COUNT: usize = 1_000;

/// Longest `blockTimeout` honoured on a legacy `xread`.
pub const XREAD_MAX_BLOCK: Duration = Duration::from_secs(60);

/// Blocking `xread`s (with a `blockTimeout`) one connection may have waiting
/// at once. Each waits in a task of its own, so they do not hold up each
/// other or the connection's other requests; this bounds the tasks (and the
/// reads each wake costs) one device can start. Past it a new blocking
/// `xread` gets a 429 error reply at once.
pub const MAX_BLOCKING_XREADS: usize = 8;

/// Entries the hub puts in one `push` frame.
pub const PUSH_BATCH_ENTRIES: usize = 500;

/// Unacknowledged pushed entries the hub allows per device before it waits.
pub const PUSH_WINDOW_ENTRIES: usize = 2_000;

/// Unacknowledged pushed bytes (encoded frames) the hub allows per stream of
/// a connection before it waits, beside [`PUSH_WINDOW_ENTRIES`]. Each read
/// asks for about what still fits ([`crate::budget::ReadCount`]). At least
/// one entry is always allowed, so an entry larger than the window still
/// moves, alone. What a slow device has not taken yet sits in the hub's
/// memory: 4 MiB per stream bounds that to a few MiB per connection while
/// still keeping eight default-size push frames in flight.
pub const PUSH_WINDOW_BYTES: usize = 4 << 20;

/// Bytes of pushes the hub reads and encodes at once, over all connections.
/// A push's entries are briefly held two or three times over (the Redis
/// reply, the entries, the JSON text); with large entries and many devices
/// reading the same broadcast at once that, not the windows, would set the
/// hub's peak memory. Reads are admitted by their expected size (one read may
/// always go, however large); a queued frame no longer counts.
pub const PUSH_ENCODE_BYTES: usize = 16 << 20;

/// How often the hub pings each connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);

/// A connection that sent nothing (not even a pong) for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// Most entries the hub counts when it reports a backlog (downstream in push
/// frames, in `lula-hub fleet`): counting is a read of the entries, so a large
/// backlog is reported as "at least this many".
pub const BACKLOG_COUNT_CAP: usize = 10_000;
