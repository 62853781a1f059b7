//! The fleet view: which device is connected where, when it was last heard,
//! how far each direction has got, and what went wrong last.
//!
//! Every hub replica writes what it sees of its own connections into Redis,
//! one hash per device ([`HubKeys::device`]) and an index of devices by the
//! time of that write ([`HubKeys::devices`]); [`list`] reads them back
//! together with the upstream cursor (the ingest cursors) and the downstream
//! backlog (entries of the device's out stream after its acknowledged
//! cursor). Because all of it lives in Redis, `lula-hub fleet` and `GET
//! /fleet` on any replica show the whole fleet.
//!
//! A connection owns the hash while it is the device's newest: each write
//! after the first checks the hash's `owner` (hub and connection id), so a
//! replaced connection closing late does not mark a connected device as gone.
//! A hub killed without closing leaves `connected = 1` behind; its heartbeat
//! stops, and after [`STALE_AFTER`] the device shows as `lost`.
//!
//! The upstream backlog (entries waiting in the device's `out:x`) is known
//! only to the device: lula-client reports it with each `xadds` batch
//! (`backlog`, see shared/PROTOCOL.md), and the hash keeps the last figure
//! with the time the hub took it. Devices that never reported it (the Node
//! lula-client, older clients) show it as unknown.
//!
//! These writes are bookkeeping beside the sync path, never in it: they are
//! sent in the background, at most every [`WRITE_EVERY`] per connection
//! (plus connect and close; a changed upstream backlog at most every
//! [`BACKLOG_WRITE_EVERY`]), and a failure is logged and forgotten.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use lula_protocol::keys::{HubKeys, IngestLayout};
use lula_protocol::limits::BACKLOG_COUNT_CAP;
use lula_protocol::{ClientId, StreamId};
use lula_runtime::redis::RedisConn;
use serde::Serialize;

use crate::backlog::count_after;

/// A connection writes its device's hash at most this often while something
/// changes (a frame heard, an ack, an error).
pub const WRITE_EVERY: Duration = Duration::from_secs(5);
/// ... and at least this often while it lives, so a reader can tell a live
/// connection from one whose hub died.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// A changed upstream backlog is written this soon (sooner than
/// [`WRITE_EVERY`], so the view follows a drain to its end), but never more
/// often: a device draining a thousand batches a second costs one write a
/// second.
pub const BACKLOG_WRITE_EVERY: Duration = Duration::from_secs(1);
/// A device marked connected whose hub has not written for this long is
/// shown as `lost`: its hub died or lost Redis.
pub const STALE_AFTER: Duration = Duration::from_secs(90);
/// Devices whose backlogs [`list`] counts at once.
const READ_CONCURRENCY: usize = 32;

pub use lula_runtime::now_ms;

/// The epoch ms of `at`, an instant in the past, given `now` in epoch ms.
fn ms_at(now: u64, at: std::time::Instant) -> u64 {
    now.saturating_sub(at.elapsed().as_millis() as u64)
}

/// KEYS[1] the device hash; ARGV: owner, heartbeat (ms), lastSeen (ms),
/// downstream cursor or '', last error or '', upstream backlog or '', when it
/// was reported (ms) or ''. Writes only while `owner` holds the hash.
static HEARTBEAT_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end \
         redis.call('HSET', KEYS[1], 'heartbeat', ARGV[2], 'lastSeen', ARGV[3]) \
         if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'downstreamCursor', ARGV[4]) end \
         if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'lastError', ARGV[5], 'lastErrorAt', ARGV[2]) end \
         if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'upstreamBacklog', ARGV[6], 'upstreamBacklogAt', ARGV[7]) end \
         return 1",
    )
});

/// KEYS[1] the device hash; ARGV: owner, now (ms), lastSeen (ms), downstream
/// cursor or '', close description, last error or '', upstream backlog or
/// '', when it was reported (ms) or ''.
static CLOSED_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end \
         redis.call('HSET', KEYS[1], 'connected', '0', 'closedAt', ARGV[2], 'heartbeat', ARGV[2], \
           'lastSeen', ARGV[3], 'lastClose', ARGV[5]) \
         if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'downstreamCursor', ARGV[4]) end \
         if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'lastError', ARGV[6], 'lastErrorAt', ARGV[2]) end \
         if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'upstreamBacklog', ARGV[7], 'upstreamBacklogAt', ARGV[8]) end \
         return 1",
    )
});

/// What one connection knows and has not written yet.
pub struct Recorder {
    redis: RedisConn,
    tracker: tokio_util::task::TaskTracker,
    device_key: String,
    index_key: String,
    client: String,
    owner: String,
    /// When the hash was last written.
    written: tokio::time::Instant,
    /// Something changed since.
    dirty: bool,
    /// When the device was last heard from, as last written.
    heard: std::time::Instant,
    /// The device's acknowledged downstream cursor.
    downstream: Option<StreamId>,
    /// An error not written yet.
    error: Option<String>,
    /// The upstream backlog the device reports.
    backlog: UpstreamBacklog,
}

/// What a connection knows of its device's upstream backlog and when it
/// must be written; time comes in as arguments, so the throttle is tested
/// without waiting.
#[derive(Debug, Default)]
struct UpstreamBacklog {
    /// The last figure and when it came (epoch ms), once the device reported
    /// one on this connection.
    last: Option<(u64, u64)>,
    /// It changed since it was last written.
    changed: bool,
    /// When a figure was last written.
    written: Option<tokio::time::Instant>,
    /// A batch was refused since the last one applied.
    refused: bool,
}

impl UpstreamBacklog {
    /// Takes the figure a batch of `count` entries reported (`backlog`
    /// after it), answered at `at_ms`; whether it changed.
    fn report(&mut self, backlog: u64, count: u64, applied: bool, at_ms: u64) -> bool {
        let backlog = if applied {
            self.refused = false;
            backlog
        } else if self.refused {
            return false;
        } else {
            self.refused = true;
            backlog.saturating_add(count)
        };
        let changed = self.last.is_none_or(|(old, _)| old != backlog);
        self.last = Some((backlog, at_ms));
        self.changed |= changed;
        changed
    }

    /// When the changed figure is due to be written, if one waits: at once
    /// the first time, then [`BACKLOG_WRITE_EVERY`] after the last write.
    fn due(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        if !self.changed {
            return None;
        }
        Some(self.written.map_or(now, |at| at + BACKLOG_WRITE_EVERY))
    }

    /// The figure and its time as script arguments (`''` when none was
    /// reported), marking it written at `now`.
    fn take(&mut self, now: tokio::time::Instant) -> (String, String) {
        let Some((backlog, at)) = self.last else {
            return Default::default();
        };
        self.changed = false;
        self.written = Some(now);
        (backlog.to_string(), at.to_string())
    }
}

impl Recorder {
    /// Marks `client` connected to `hub` (connection `conn`), in the
    /// background.
    pub fn connected(
        redis: RedisConn,
        tracker: tokio_util::task::TaskTracker,
        keys: &HubKeys,
        client: &ClientId,
        hub: &str,
        conn: u64,
    ) -> Self {
        let now = now_ms();
        let recorder = Recorder {
            redis,
            tracker,
            device_key: keys.device(client),
            index_key: keys.devices(),
            client: client.as_str().to_owned(),
            owner: format!("{hub}/{conn}"),
            written: tokio::time::Instant::now(),
            dirty: false,
            heard: std::time::Instant::now(),
            downstream: None,
            error: None,
            backlog: UpstreamBacklog::default(),
        };
        let mut hset = redis::cmd("HSET");
        hset.arg(&recorder.device_key)
            .arg("owner")
            .arg(&recorder.owner)
            .arg("hub")
            .arg(hub)
            .arg("connected")
            .arg("1")
            .arg("connectedAt")
            .arg(now)
            .arg("heartbeat")
            .arg(now)
            .arg("lastSeen")
            .arg(now);
        let mut redis = recorder.redis.clone();
        recorder.spawn(async move { hset.query_async::<()>(&mut redis).await });
        recorder.touch_index(now);
        recorder
    }

    /// The device acknowledged downstream entries up to `cursor` (or
    /// subscribed from it).
    pub fn downstream(&mut self, cursor: StreamId) {
        if self.downstream != Some(cursor) {
            self.downstream = Some(cursor);
            self.dirty = true;
        }
    }

    /// The hub answered the device with an error.
    pub fn error(&mut self, message: impl Into<String>) {
        self.error = Some(message.into());
        self.dirty = true;
    }

    /// An entry of this device was set aside upstream (see [`set_aside`]).
    pub fn set_aside(&self, count: u64, id: StreamId, reason: &str) {
        let write = set_aside(
            self.redis.clone(),
            &self.device_key,
            "up",
            count,
            id,
            reason,
        );
        self.spawn(write);
    }

    /// A batch of `count` entries, after which the device said `backlog`
    /// entries wait in its out stream (see
    /// [`lula_protocol::message::XaddsRequest::backlog`]), was answered.
    /// Applied, that is the backlog; refused, nothing of the batch was
    /// written, so its own entries wait too, and the batches pipelined
    /// behind it (refused as well, or sent again) change nothing until one is
    /// applied.
    ///
    /// A new figure is written at once when none was in the last
    /// [`BACKLOG_WRITE_EVERY`], else when [`Recorder::backlog_due`] says;
    /// the same figure again only moves its time, written with the next
    /// regular write.
    pub fn upstream_backlog(&mut self, backlog: u64, count: u64, applied: bool) {
        if !self.backlog.report(backlog, count, applied, now_ms()) {
            // The same figure again (or a refusal behind a refusal): its
            // time goes with the next regular write.
            self.dirty = true;
            return;
        }
        self.dirty = true;
        let now = tokio::time::Instant::now();
        if self.backlog.due(now).is_some_and(|due| due <= now) {
            self.write();
        }
    }

    /// When a changed upstream backlog is due to be written (call
    /// [`Recorder::tick`] then), if one waits.
    pub fn backlog_due(&self) -> Option<tokio::time::Instant> {
        self.backlog.due(tokio::time::Instant::now())
    }

    /// Called every [`WRITE_EVERY`] (and when [`Recorder::backlog_due`]) with
    /// when the device was last heard from: writes what changed, or a
    /// heartbeat when [`HEARTBEAT`] has passed.
    pub fn tick(&mut self, last_heard: std::time::Instant) {
        if last_heard > self.heard {
            self.heard = last_heard;
            self.dirty = true;
        }
        if !self.dirty && self.written.elapsed() < HEARTBEAT {
            return;
        }
        self.write();
    }

    /// Writes the heartbeat and what is known, in the background.
    fn write(&mut self) {
        let now = now_ms();
        let (backlog, backlog_at) = self.backlog.take(tokio::time::Instant::now());
        let mut invocation = HEARTBEAT_SCRIPT.key(&self.device_key);
        invocation
            .arg(&self.owner)
            .arg(now)
            .arg(ms_at(now, self.heard))
            .arg(self.downstream.map(|c| c.to_string()).unwrap_or_default())
            .arg(self.error.take().unwrap_or_default())
            .arg(backlog)
            .arg(backlog_at);
        let mut redis = self.redis.clone();
        self.spawn(async move { invocation.invoke_async::<i64>(&mut redis).await.map(drop) });
        self.touch_index(now);
        self.written = tokio::time::Instant::now();
        self.dirty = false;
    }

    /// The connection ended, as `close` says; the device was last heard
    /// from at `last_heard`.
    pub fn closed(&mut self, last_heard: std::time::Instant, close: &str, error: Option<&str>) {
        let now = now_ms();
        let (backlog, backlog_at) = self.backlog.take(tokio::time::Instant::now());
        let mut invocation = CLOSED_SCRIPT.key(&self.device_key);
        invocation
            .arg(&self.owner)
            .arg(now)
            .arg(ms_at(now, last_heard))
            .arg(self.downstream.map(|c| c.to_string()).unwrap_or_default())
            .arg(close)
            .arg(
                error
                    .map(str::to_owned)
                    .or(self.error.take())
                    .unwrap_or_default(),
            )
            .arg(backlog)
            .arg(backlog_at);
        let mut redis = self.redis.clone();
        self.spawn(async move { invocation.invoke_async::<i64>(&mut redis).await.map(drop) });
        self.touch_index(now);
    }

    fn touch_index(&self, now: u64) {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&self.index_key).arg(now).arg(&self.client);
        let mut redis = self.redis.clone();
        self.spawn(async move { zadd.query_async::<()>(&mut redis).await });
    }

    fn spawn(&self, write: impl Future<Output = redis::RedisResult<()>> + Send + 'static) {
        self.tracker.spawn(async move {
            if let Err(e) = write.await {
                tracing::debug!(error = %e, "fleet: cannot record the device's state");
            }
        });
    }
}

/// Counts entries of a device set aside past a limit (`direction`: `up`,
/// `down` or `broadcast`) in its hash (`device_key`), with the last one's id
/// and reason. Bookkeeping like the rest of the fleet view: the exactly-once
/// records are the dead-letter streams and the cursors; this is what people
/// read, written in the background.
pub fn set_aside(
    mut redis: RedisConn,
    device_key: &str,
    direction: &'static str,
    count: u64,
    id: StreamId,
    reason: &str,
) -> impl Future<Output = redis::RedisResult<()>> + Send + 'static {
    let field = if direction == "up" {
        "setAsideUp"
    } else {
        "setAsideDown"
    };
    let mut pipe = redis::pipe();
    pipe.cmd("HINCRBY")
        .arg(device_key)
        .arg(field)
        .arg(count)
        .ignore()
        .cmd("HSET")
        .arg(device_key)
        .arg("lastSetAside")
        .arg(format!("{direction} {id}: {reason}"))
        .arg("lastSetAsideAt")
        .arg(now_ms())
        .ignore();
    async move { pipe.query_async::<()>(&mut redis).await }
}

/// A device as the fleet view shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    /// The device.
    pub client: String,
    /// `connected`, `disconnected`, or `lost` (marked connected, but its hub
    /// stopped writing: killed, or cut off from Redis).
    pub state: &'static str,
    /// The replica that holds (or last held) its connection.
    pub hub: Option<String>,
    /// When its current (or last) connection was made, epoch ms.
    pub connected_at: Option<u64>,
    /// When a hub last heard from it, epoch ms (to within [`WRITE_EVERY`]).
    pub last_seen: Option<u64>,
    /// The last device seq appended to the in stream.
    pub upstream_cursor: String,
    /// Entries waiting in the device's `out:x`, as it last reported them
    /// (after the batch the hub last answered; `0` once it drained). `None`
    /// when it never reported one: the Node lula-client, older clients.
    pub upstream_backlog: Option<u64>,
    /// When the hub took that figure, epoch ms.
    pub upstream_backlog_at: Option<u64>,
    /// The last hub id the device acknowledged.
    pub downstream_cursor: Option<String>,
    /// Entries of its out stream after that cursor, counted up to
    /// [`BACKLOG_COUNT_CAP`] (`downstreamBacklogCapped` then true).
    pub downstream_backlog: u64,
    /// The backlog is at least `downstream_backlog`.
    pub downstream_backlog_capped: bool,
    /// How its last connection ended (`<code> <reason>`).
    pub last_close: Option<String>,
    /// The last error the hub answered it with, or the last abnormal close.
    pub last_error: Option<String>,
    /// When, epoch ms.
    pub last_error_at: Option<u64>,
    /// Entries of this device set aside upstream (past a limit; in the
    /// device's `lula-client:dead:x`).
    pub set_aside_up: u64,
    /// Direct messages and broadcasts for it set aside (in `lula-hub:dead:x`).
    pub set_aside_down: u64,
    /// The last one: `<direction> <id>: <reason>`.
    pub last_set_aside: Option<String>,
    /// When, epoch ms.
    pub last_set_aside_at: Option<u64>,
}

/// Which devices [`list`] shows.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only this device.
    pub client: Option<ClientId>,
    /// At most this many, most recently seen first (0: all).
    pub limit: usize,
}

/// The fleet, most recently seen first.
pub async fn list(
    redis: &RedisConn,
    keys: &HubKeys,
    layout: &IngestLayout,
    query: &Query,
) -> Result<Vec<DeviceView>, redis::RedisError> {
    let clients: Vec<String> = match &query.client {
        Some(c) => vec![c.as_str().to_owned()],
        None => {
            let stop = if query.limit == 0 {
                -1
            } else {
                query.limit as i64 - 1
            };
            redis::cmd("ZREVRANGE")
                .arg(keys.devices())
                .arg(0)
                .arg(stop)
                .query_async(&mut redis.clone())
                .await?
        }
    };
    let now = now_ms();
    let views = futures_util::stream::iter(clients)
        .map(|client| view(redis.clone(), keys, layout, client, now))
        .buffered(READ_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut out = Vec::with_capacity(views.len());
    for v in views {
        if let Some(v) = v? {
            out.push(v);
        }
    }
    Ok(out)
}

/// One device; `None` for an id that is not a valid client id (written by
/// hand into the index) or a device no hub has seen.
async fn view(
    mut redis: RedisConn,
    keys: &HubKeys,
    layout: &IngestLayout,
    client: String,
    now: u64,
) -> Result<Option<DeviceView>, redis::RedisError> {
    let Ok(id) = client.parse::<ClientId>() else {
        return Ok(None);
    };
    let hash: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.device(&id))
        .query_async(&mut redis)
        .await?;
    let upstream: Option<String> = redis::cmd("HGET")
        .arg(layout.cursors(layout.partition_of(&id)))
        .arg(id.as_str())
        .query_async(&mut redis)
        .await?;
    if hash.is_empty() && upstream.is_none() {
        return Ok(None);
    }
    let num = |k: &str| hash.get(k).and_then(|v| v.parse::<u64>().ok());
    let text = |k: &str| hash.get(k).filter(|v| !v.is_empty()).cloned();
    let downstream: Option<StreamId> = hash.get("downstreamCursor").and_then(|v| v.parse().ok());
    let backlog = count_after(
        &mut redis,
        &keys.out_stream(&id),
        downstream.unwrap_or(StreamId::ZERO),
    )
    .await?;
    let state = if hash.get("connected").map(String::as_str) != Some("1") {
        "disconnected"
    } else if num("heartbeat")
        .is_some_and(|h| now.saturating_sub(h) > STALE_AFTER.as_millis() as u64)
    {
        "lost"
    } else {
        "connected"
    };
    Ok(Some(DeviceView {
        client,
        state,
        hub: text("hub"),
        connected_at: num("connectedAt"),
        last_seen: num("lastSeen"),
        upstream_cursor: upstream.unwrap_or_else(|| StreamId::ZERO.to_string()),
        upstream_backlog: num("upstreamBacklog"),
        upstream_backlog_at: num("upstreamBacklogAt"),
        downstream_cursor: downstream.map(|c| c.to_string()),
        downstream_backlog: backlog,
        downstream_backlog_capped: backlog >= BACKLOG_COUNT_CAP as u64,
        last_close: text("lastClose"),
        last_error: text("lastError"),
        last_error_at: num("lastErrorAt"),
        set_aside_up: num("setAsideUp").unwrap_or(0),
        set_aside_down: num("setAsideDown").unwrap_or(0),
        last_set_aside: text("lastSetAside"),
        last_set_aside_at: num("lastSetAsideAt"),
    }))
}

/// The fleet as a table for people.
pub fn table(devices: &[DeviceView], now: u64) -> String {
    let ago = |t: Option<u64>| match t {
        Some(t) => format!("{}s ago", now.saturating_sub(t) / 1000),
        None => "-".into(),
    };
    let rows: Vec<[String; 10]> = devices
        .iter()
        .map(|d| {
            [
                d.client.clone(),
                d.state.to_owned(),
                d.hub.clone().unwrap_or_else(|| "-".into()),
                ago(d.last_seen),
                d.upstream_cursor.clone(),
                d.upstream_backlog
                    .map_or_else(|| "-".into(), |n| n.to_string()),
                format!(
                    "{}{}",
                    d.downstream_backlog,
                    if d.downstream_backlog_capped { "+" } else { "" }
                ),
                format!("{}/{}", d.set_aside_up, d.set_aside_down),
                d.last_close.clone().unwrap_or_else(|| "-".into()),
                d.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "CLIENT",
        "STATE",
        "HUB",
        "LAST SEEN",
        "UPSTREAM CURSOR",
        "UP BACKLOG",
        "DOWN BACKLOG",
        "SET ASIDE UP/DOWN",
        "LAST CLOSE",
        "LAST ERROR",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draining_device_costs_one_backlog_write_a_second_and_its_last_figure_is_written() {
        let start = tokio::time::Instant::now();
        let mut b = UpstreamBacklog::default();
        assert_eq!(b.due(start), None, "nothing reported, nothing to write");
        // A drain of 10,000 batches over 2.5 s (one every 250 µs), writing
        // whenever the figure is due, as the connection does.
        let mut writes = Vec::new();
        for i in 0..10_000u64 {
            let now = start + Duration::from_micros(250 * i);
            b.report(9_999 - i, 1, true, 0);
            if b.due(now).is_some_and(|due| due <= now) {
                writes.push(b.take(now).0);
            }
        }
        // The first figure at once, then one a second.
        assert_eq!(writes.len(), 3, "{writes:?}");
        assert_eq!(writes[0], "9999");
        // The last, 0, waits for its turn: due a second after the last write.
        let last = start + Duration::from_micros(250 * 9_999);
        let due = b.due(last).expect("0 is still to be written");
        assert!(due > last && due <= last + BACKLOG_WRITE_EVERY);
        assert_eq!(b.take(due).0, "0");
        assert_eq!(b.due(due), None);
        // The same figure again changes nothing to write.
        assert!(!b.report(0, 1, true, 5));
        assert_eq!(b.due(due), None);
    }

    #[test]
    fn a_refused_batch_counts_its_own_entries_and_the_pipeline_behind_it_changes_nothing() {
        let now = tokio::time::Instant::now();
        let mut b = UpstreamBacklog::default();
        // Batches of 10 entries, pipelined: 90 after the first, 80 after the
        // second. The first is refused: all 100 still wait.
        assert!(b.report(90, 10, false, 1));
        assert!(!b.report(80, 10, false, 2));
        assert_eq!(b.take(now).0, "100");
        // Sent again and applied.
        assert!(b.report(90, 10, true, 3));
        assert_eq!(b.take(now), ("90".into(), "3".into()));
    }

    #[test]
    fn the_table_aligns_columns_and_marks_capped_backlogs() {
        let d = DeviceView {
            client: "dev-1".into(),
            state: "connected",
            hub: Some("hub-a:3002".into()),
            connected_at: Some(1_000),
            last_seen: Some(9_000),
            upstream_cursor: "5-0".into(),
            upstream_backlog: Some(1_234),
            upstream_backlog_at: Some(8_000),
            downstream_cursor: None,
            downstream_backlog: 10_000,
            downstream_backlog_capped: true,
            last_close: None,
            last_error: None,
            last_error_at: None,
            set_aside_up: 1,
            set_aside_down: 2,
            last_set_aside: None,
            last_set_aside_at: None,
        };
        let never = DeviceView {
            client: "node-2".into(),
            upstream_backlog: None,
            upstream_backlog_at: None,
            downstream_backlog: 0,
            downstream_backlog_capped: false,
            ..d.clone()
        };
        let t = table(&[d, never], 12_000);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("CLIENT  STATE"));
        assert!(lines[0].contains("UPSTREAM CURSOR  UP BACKLOG  DOWN BACKLOG"));
        assert!(lines[1].contains("dev-1   connected  hub-a:3002  3s ago"));
        assert!(
            lines[1].contains("5-0              1234        10000+"),
            "{t}"
        );
        // Never reported (the Node client): unknown, not zero.
        assert!(lines[2].contains("5-0              -           0"), "{t}");
        assert!(lines[1].contains("1/2"), "{t}");
    }
}
