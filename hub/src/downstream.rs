//! Hub to device: entries cloud services append to `lula-hub:out:<client>:x`.
//!
//! No device holds a Redis connection of its own, blocking or not. Every read
//! here is a non-blocking `XREAD` on the hub's shared multiplexed connection,
//! and a device's reader sleeps until something may have arrived for it:
//! - [`Wakers`] maps each subscribed out stream to the readers waiting on it.
//! - [`watch`] listens for Redis keyspace notifications on the out streams
//!   and the broadcast stream (one pub/sub connection per hub, or on a Redis
//!   Cluster one per master)
//!   and wakes the readers of the stream that changed. It also wakes every
//!   reader after (re)subscribing, since notifications sent meanwhile are
//!   lost, and every [`SWEEP`] as a safety net.
//!   Where notifications cannot be enabled (a managed Redis refusing
//!   `CONFIG SET`) it wakes every reader each `downstream_poll` instead.
//! - [`push`]: after `subscribe`, reads what follows the device's cursor and
//!   pushes it, keeping at most [`PUSH_WINDOW_ENTRIES`] and about
//!   [`PUSH_WINDOW_BYTES`] unacknowledged (reads sized to fit, see
//!   [`ReadCount`]); one
//!   such task for the device's out stream and, when the device asked for
//!   broadcasts, one reading the shared broadcast stream after the device's
//!   broadcast cursor (see [`crate::broadcast`]). The
//!   device stores each push and its cursor atomically before acking, so a
//!   push lost with the connection is simply sent again after the device
//!   resubscribes from its own cursor.
//! - [`legacy_reader`] (`legacy_xread`): the lula `xread` request, its
//!   `blockTimeout` served by waiting for a wake rather than a blocking read;
//!   blocking reads of one connection wait side by side, up to a limit.
//!
//! An idle device therefore costs one small task and a map entry, and a message
//! reaches it within a notification's round trip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod in_parts;
mod legacy_xread;

pub use in_parts::PartsTo;
pub use legacy_xread::{XreadJob, legacy_reader};

use crate::backlog::count_after;
use crate::metrics::HubMetrics;
use axum::extract::ws::Message;
use futures_util::StreamExt;
use lula_protocol::budget::{ReadCount, Window};
use lula_protocol::limits::{
    MAX_ENTRY_VALUES, MAX_PUSH_FRAME_BYTES, PUSH_BATCH_ENTRIES, PUSH_ENVELOPE_BYTES,
    PUSH_WINDOW_BYTES, PUSH_WINDOW_ENTRIES,
};
use lula_protocol::message::{HubFrame, Push, PushStream};
use lula_protocol::redis_value::entries_from_read;
use lula_protocol::{Entry, StreamId};
use lula_runtime::redis::{NodeAddr, RedisConn, RedisTarget, node_client};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use tokio::sync::{Notify, mpsc, watch as watch_channel};
use tokio_util::sync::CancellationToken;

/// Pause after a Redis failure before a reader tries again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between pub/sub reconnects ([`next_retry`]).
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);
/// How often [`watch`] wakes every reader even when notifications work, and
/// checks that they are still enabled and its pub/sub connection still answers.
pub const SWEEP: Duration = Duration::from_secs(30);
/// Time allowed for a pub/sub ping or a `CONFIG` call.
const WATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Per out stream, its readers: (registration id, what wakes the reader).
type Readers = HashMap<String, Vec<(u64, Arc<Notify>)>>;

/// The readers waiting on each out stream.
#[derive(Default)]
pub struct Wakers {
    streams: Mutex<Readers>,
    next_id: AtomicU64,
}

/// A reader's registration; dropping it unregisters.
pub struct Waker {
    wakers: Arc<Wakers>,
    key: String,
    id: u64,
    notify: Arc<Notify>,
}

impl Waker {
    /// Waits until the stream may have changed. A wake that came while nobody
    /// waited is kept, so none is lost between a read and this wait.
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        let mut streams = self.wakers.lock();
        if let Some(list) = streams.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                streams.remove(&self.key);
            }
        }
    }
}

impl Wakers {
    /// Registers a reader of `key`.
    pub fn register(self: &Arc<Self>, key: String) -> Waker {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.lock()
            .entry(key.clone())
            .or_default()
            .push((id, notify.clone()));
        Waker {
            wakers: self.clone(),
            key,
            id,
            notify,
        }
    }

    /// Wakes the readers of `key`.
    pub fn wake(&self, key: &str) {
        if let Some(list) = self.lock().get(key) {
            for (_, n) in list {
                n.notify_one();
            }
        }
    }

    /// Wakes every reader.
    pub fn wake_all(&self) {
        for list in self.lock().values() {
            for (_, n) in list {
                n.notify_one();
            }
        }
    }

    /// Streams with at least one reader.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no stream has a reader.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Readers> {
        // The map stays consistent even if a holder panicked: every change is
        // one call on it.
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Makes sure Redis publishes keyspace events for streams (`K` and `t`, or
/// `A`), adding them to whatever else is configured. False when the server
/// refuses (`CONFIG` disabled or renamed).
async fn ensure_keyspace_events<C: ConnectionLike>(redis: &mut C) -> bool {
    let current: redis::RedisResult<(String, String)> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(redis)
        .await;
    let flags = match current {
        Ok((_, flags)) => flags,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read notify-keyspace-events");
            return false;
        }
    };
    let has = |c: char| flags.contains(c);
    if has('K') && (has('t') || has('A')) {
        return true;
    }
    let mut wanted = flags.clone();
    for c in ['K', 't'] {
        if !wanted.contains(c) {
            wanted.push(c);
        }
    }
    let set: redis::RedisResult<()> = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query_async(redis)
        .await;
    match set {
        Ok(()) => {
            tracing::info!(from = %flags, to = %wanted, "enabled keyspace notifications for streams");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot enable keyspace notifications; set notify-keyspace-events to include K and t on the hub's Redis, polling meanwhile");
            false
        }
    }
}

/// The key a keyspace channel (`__keyspace@0__:<key>`) names.
fn key_of_channel(channel: &str) -> Option<&str> {
    channel
        .strip_prefix("__keyspace@")
        .and_then(|rest| rest.split_once("__:"))
        .map(|(_, key)| key)
}

/// What [`watch`] listens for and whom it tells.
pub struct Watched {
    /// Glob of the out streams (`lula-hub:out:*:x`).
    pub out_pattern: String,
    /// Glob matching the broadcast stream (`lula-hub:broadcast:x`), whose
    /// readers are every connection that asked for broadcasts.
    pub broadcast_pattern: String,
    /// Readers to wake when their out stream changes.
    pub wakers: Arc<Wakers>,
    /// lula-auth's revocations (`lula-auth:revoked`), when lula-auth shares
    /// the hub's Redis (otherwise [`crate::revocation::watch`] listens on lula-auth's
    /// own).
    pub revocations: Option<crate::session::Revocations>,
    /// Connections to close when their session is revoked or a newer
    /// connection of their device appears.
    pub live: Arc<crate::live::Live>,
    /// The hubs' new-connection channel (`lula-hub:connected`).
    pub connections: String,
}

/// One Redis server [`watch`] subscribes to: the server itself, or one
/// master of a cluster.
struct Node {
    /// Where it is (`None`: the one server).
    addr: Option<NodeAddr>,
    /// For its pub/sub connection.
    client: redis::Client,
    /// For `CONFIG` on it.
    control: Control,
}

/// The connection [`ensure_keyspace_events`] runs on.
enum Control {
    /// The hub's shared connection (one server).
    Shared(RedisConn),
    /// A connection of its own to one cluster master (`CONFIG` is per node).
    Node(MultiplexedConnection),
}

impl Control {
    async fn ensure_keyspace_events(&mut self) -> bool {
        match self {
            Control::Shared(c) => ensure_keyspace_events(c).await,
            Control::Node(c) => ensure_keyspace_events(c).await,
        }
    }
}

/// The servers to subscribe to: the one server, or every master of the
/// cluster (each sends the keyspace notifications of its own keys only).
async fn discover(target: &RedisTarget, redis: &mut RedisConn) -> Result<Vec<Node>, String> {
    if !target.cluster {
        let client = redis::Client::open(target.url.as_str()).map_err(|e| e.to_string())?;
        return Ok(vec![Node {
            addr: None,
            client,
            control: Control::Shared(redis.clone()),
        }]);
    }
    let masters = tokio::time::timeout(WATCH_TIMEOUT, redis.masters())
        .await
        .map_err(|_| "CLUSTER SLOTS timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if masters.is_empty() {
        return Err("the cluster lists no master serving slots".into());
    }
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(WATCH_TIMEOUT))
        .set_response_timeout(Some(WATCH_TIMEOUT));
    let mut nodes = Vec::with_capacity(masters.len());
    for addr in masters {
        let client = node_client(&target.url, &addr).map_err(|e| format!("{addr}: {e}"))?;
        let control = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        nodes.push(Node {
            addr: Some(addr),
            client,
            control: Control::Node(control),
        });
    }
    Ok(nodes)
}

/// A message from one node's pub/sub connection; `None` when it ended.
type NodeMessage = Option<redis::Msg>;

/// Wakes the readers of out streams and of the broadcast stream as they change, and closes the
/// connections of revoked sessions, until `shutdown`. Reconnects by itself;
/// see the module docs.
///
/// On a Redis Cluster a node publishes keyspace notifications for its own
/// keys only, so the watcher subscribes to the out-stream pattern on every
/// master (found with `CLUSTER SLOTS`) and enables notifications on each. It
/// finds the masters again whenever it reconnects and at every [`SWEEP`], and
/// starts over when they changed (a failover, a resharding), waking every
/// reader. The revocation and connection channels are plain pub/sub, which a
/// cluster delivers on every node, so it listens to them on the first master
/// only.
pub async fn watch(
    target: RedisTarget,
    mut redis: RedisConn,
    watched: Watched,
    poll: Duration,
    shutdown: CancellationToken,
) {
    // The broadcast stream lives on one master of a cluster, like any key;
    // subscribing to it on every master finds it wherever it is.
    let channel_patterns = [
        format!("__keyspace@*__:{}", watched.out_pattern),
        format!("__keyspace@*__:{}", watched.broadcast_pattern),
    ];
    let mut retry = RETRY_PAUSE;
    let mut channels = vec![watched.connections.clone()];
    channels.extend(watched.revocations.as_ref().map(|r| r.channel().to_owned()));
    loop {
        let discovered = tokio::select! {
            _ = shutdown.cancelled() => return,
            d = discover(&target, &mut redis) => d,
        };
        let subscribed = match discovered {
            Ok(mut nodes) => {
                let subscribing = subscribe(&mut nodes, &channel_patterns, &channels);
                match shutdown.run_until_cancelled(subscribing).await {
                    None => return,
                    Some(subscribed) => subscribed.map(|s| (nodes, s)),
                }
            }
            Err(e) => Err(format!("cannot find the servers to subscribe to: {e}")),
        };
        let (nodes, subscriptions) = match subscribed {
            Ok(ok) => {
                retry = RETRY_PAUSE;
                ok
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?retry, "downstream watch: pub/sub failed; polling meanwhile");
                if poll_until(&watched.wakers, poll, retry, &shutdown).await {
                    return;
                }
                retry = next_retry(retry);
                continue;
            }
        };
        let listening = Listening {
            target: &target,
            redis: &mut redis,
            watched: &watched,
            poll,
            nodes,
            subscriptions,
        };
        if shutdown
            .run_until_cancelled(listening.run())
            .await
            .is_none()
        {
            return;
        }
        watched.wakers.wake_all();
        if pause(&shutdown, RETRY_PAUSE.min(poll)).await {
            return;
        }
    }
}

/// The pub/sub connections of every node, subscribed.
struct Subscriptions {
    /// Whether every node sends keyspace notifications.
    notifying: bool,
    /// To ping each connection.
    sinks: Vec<redis::aio::PubSubSink>,
    /// Every node's messages, each ending with `None`.
    streams: Vec<futures_util::stream::BoxStream<'static, NodeMessage>>,
}

/// Enables keyspace notifications on every node and subscribes to the
/// keyspace `patterns` on each, and to the plain `channels` on the first.
async fn subscribe(
    nodes: &mut [Node],
    patterns: &[String],
    channels: &[String],
) -> Result<Subscriptions, String> {
    let mut notifying = true;
    for node in nodes.iter_mut() {
        notifying &= node.control.ensure_keyspace_events().await;
    }
    let mut sinks = Vec::with_capacity(nodes.len());
    let mut streams = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        // A cluster node by its announced address, one server by its URL's
        // host and port (never the URL: it may hold a password).
        let at = node.addr.as_ref().map_or_else(
            || node.client.get_connection_info().addr().to_string(),
            |a| a.to_string(),
        );
        let mut pubsub =
            match tokio::time::timeout(WATCH_TIMEOUT, node.client.get_async_pubsub()).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return Err(format!("cannot connect {at}: {e}")),
                Err(_) => return Err(format!("connect {at} timed out")),
            };
        let mut subscribed = pubsub.psubscribe(patterns).await;
        if subscribed.is_ok() && i == 0 {
            subscribed = pubsub.subscribe(channels).await;
        }
        subscribed.map_err(|e| format!("subscribe {at}: {e}"))?;
        let (sink, stream) = pubsub.split();
        sinks.push(sink);
        // A stream that ends says so, so one lost node restarts them all.
        streams.push(
            stream
                .map(Some)
                .chain(futures_util::stream::once(async { None }))
                .boxed(),
        );
    }
    Ok(Subscriptions {
        notifying,
        sinks,
        streams,
    })
}

/// One subscribed period of [`watch`], until a connection is lost or the
/// servers change.
struct Listening<'a> {
    target: &'a RedisTarget,
    redis: &'a mut RedisConn,
    watched: &'a Watched,
    poll: Duration,
    nodes: Vec<Node>,
    subscriptions: Subscriptions,
}

impl Listening<'_> {
    /// Handles messages (and sweeps) until it is time to subscribe again.
    async fn run(mut self) {
        let watched = self.watched;
        let masters: Vec<Option<NodeAddr>> = self.nodes.iter().map(|n| n.addr.clone()).collect();
        // Anything that arrived before the subscriptions took effect.
        watched.wakers.wake_all();
        let resync = crate::revocation::resync(watched.revocations.as_ref(), &watched.live);
        tokio::pin!(resync);
        let mut resynced = false;
        let streams = std::mem::take(&mut self.subscriptions.streams);
        let mut messages = futures_util::stream::select_all(streams);
        let notifying = self.subscriptions.notifying;
        let mut sweep = tokio::time::interval(if notifying { SWEEP } else { self.poll });
        sweep.tick().await;
        loop {
            let msg: Option<NodeMessage> = tokio::select! {
                () = &mut resync, if !resynced => {
                    resynced = true;
                    continue;
                }
                msg = messages.next() => msg,
                _ = sweep.tick() => {
                    if !self.sweep(&masters).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(msg) = msg.flatten() else {
                tracing::warn!("downstream watch: pub/sub connection lost; reconnecting");
                return;
            };
            let announced = crate::revocation::announced(
                &msg,
                watched.revocations.as_ref(),
                &watched.connections,
                &watched.live,
            );
            if !announced && let Some(key) = key_of_channel(msg.get_channel_name()) {
                watched.wakers.wake(key);
            }
        }
    }

    /// Wakes every reader, and checks the connections still answer, the
    /// cluster's masters are still `masters` and notifications are still as
    /// they were; false when it is time to subscribe again.
    async fn sweep(&mut self, masters: &[Option<NodeAddr>]) -> bool {
        self.watched.wakers.wake_all();
        let pings = futures_util::future::join_all(
            self.subscriptions
                .sinks
                .iter_mut()
                .map(|s| tokio::time::timeout(WATCH_TIMEOUT, s.ping::<redis::Value>())),
        )
        .await;
        if !pings.iter().all(|p| matches!(p, Ok(Ok(_)))) {
            tracing::warn!("downstream watch: pub/sub connection does not answer; reconnecting");
            return false;
        }
        if self.target.cluster {
            let now = tokio::time::timeout(WATCH_TIMEOUT, self.redis.masters()).await;
            let now: Option<Vec<Option<NodeAddr>>> = match now {
                Ok(Ok(m)) => Some(m.into_iter().map(Some).collect()),
                _ => None,
            };
            if now.as_deref() != Some(masters) {
                tracing::info!(?now, before = ?masters, "downstream watch: the cluster's masters changed; subscribing again");
                return false;
            }
        }
        let mut still = true;
        for node in &mut self.nodes {
            still &= node.control.ensure_keyspace_events().await;
        }
        // Switch between notified and polling sweeps when that changed.
        still == self.subscriptions.notifying
    }
}

/// Wakes every reader each `poll` for `total`; true when shut down meanwhile.
async fn poll_until(
    wakers: &Wakers,
    poll: Duration,
    total: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let until = tokio::time::Instant::now() + total;
    loop {
        wakers.wake_all();
        let now = tokio::time::Instant::now();
        if now >= until {
            return false;
        }
        if pause(shutdown, poll.min(until - now)).await {
            return true;
        }
    }
}

/// Non-blocking `XREAD COUNT count STREAMS key after`.
async fn xread(
    conn: &mut RedisConn,
    key: &str,
    after: StreamId,
    count: usize,
) -> Result<Vec<Entry>, String> {
    let reply: redis::Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(key)
        .arg(after.to_string())
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    entries_from_read(reply).map_err(|e| e.to_string())
}

/// Splits entries into frames of at most about `max_bytes` of payload each
/// (one oversized entry still goes alone), so a push never exceeds what the
/// device accepts.
fn frames_by_size(entries: Vec<Entry>, max_bytes: usize) -> Vec<Vec<Entry>> {
    let mut frames = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for entry in entries {
        let len = entry.payload_len() + 64;
        if !current.is_empty() && size + len > max_bytes {
            frames.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(entry);
    }
    if !current.is_empty() {
        frames.push(current);
    }
    frames
}

/// What one read of a pushed stream found.
struct Batch {
    entries: Vec<Entry>,
    /// Entries after the read position were deleted up to this id (only the
    /// broadcast stream reports this).
    gap: Option<StreamId>,
    /// Entries read and dropped as expired (see [`Expiry`]).
    expired: u64,
    /// The last id read, expired entries included.
    last_read: Option<StreamId>,
    /// Entries read, expired ones included: fewer than asked means caught up.
    read: usize,
    /// The batch is one entry to push in parts (see [`in_parts::isolate`]).
    in_parts: bool,
}

/// When a message for a device is too old to deliver: older than a hub-wide
/// maximum age (by its stream id's time), or past its own `expiresAt` field
/// (epoch milliseconds), both by the hub's clock. Expired entries are deleted
/// from the device's out stream instead of pushed, counted, and the device
/// is told how many (the push's `expired`). Broadcasts have their own
/// retention and are not expired this way.
#[derive(Clone, Debug)]
pub struct Expiry {
    /// `--downstream-max-age`; `None`: no maximum.
    pub max_age: Option<Duration>,
    /// The hub's clock.
    pub clock: lula_runtime::Clock,
}

impl Expiry {
    /// Whether `entry` has expired at `now_ms`.
    pub fn expired(&self, entry: &Entry, now_ms: u64) -> bool {
        let too_old = self
            .max_age
            .is_some_and(|age| entry.id.ms.saturating_add(age.as_millis() as u64) < now_ms);
        too_old
            || entry.fields.chunks_exact(2).any(|pair| {
                pair[0] == lula_protocol::FIELD_EXPIRES_AT.as_bytes()
                    && std::str::from_utf8(&pair[1])
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .is_some_and(|at| at <= now_ms)
            })
    }

    /// Splits `entries` into those to deliver and the ids of the expired.
    fn split(&self, entries: Vec<Entry>) -> (Vec<Entry>, Vec<StreamId>) {
        let now_ms = self.clock.epoch_ms();
        let mut expired = Vec::new();
        let deliver = entries
            .into_iter()
            .filter(|e| {
                let gone = self.expired(e, now_ms);
                if gone {
                    expired.push(e.id);
                }
                !gone
            })
            .collect();
        (deliver, expired)
    }
}

/// Reads a device's out stream after `after` and deletes what expired.
async fn read_direct(
    redis: &mut RedisConn,
    key: &str,
    after: StreamId,
    count: usize,
    expiry: &Expiry,
) -> Result<Batch, String> {
    let entries = xread(redis, key, after, count).await?;
    let (read, last_read) = (entries.len(), entries.last().map(|e| e.id));
    let (entries, expired) = expiry.split(entries);
    if !expired.is_empty() {
        let mut del = redis::cmd("XDEL");
        del.arg(key);
        for id in &expired {
            del.arg(id.to_string());
        }
        let _: u64 = del.query_async(redis).await.map_err(|e| e.to_string())?;
    }
    Ok(Batch {
        entries,
        gap: None,
        expired: expired.len() as u64,
        last_read,
        read,
        in_parts: false,
    })
}

/// Reads up to `count` entries of `key` after `after`: a plain `XREAD` for
/// a device's out stream; for the broadcast stream a script that also tells
/// whether entries after `after` were deleted first.
async fn read_batch(
    redis: &mut RedisConn,
    source: &PushSource,
    after: StreamId,
    count: usize,
) -> Result<Batch, String> {
    let key = &source.key;
    match source.stream {
        PushStream::Direct => read_direct(redis, key, after, count, &source.expiry).await,
        PushStream::Broadcast => {
            let read = crate::broadcast::read(redis, key, after, count).await?;
            Ok(Batch {
                gap: read.gap(after),
                expired: 0,
                last_read: read.entries.last().map(|e| e.id),
                read: read.entries.len(),
                entries: read.entries,
                in_parts: false,
            })
        }
    }
}

/// One stream to push to one device.
pub struct PushSource {
    /// Which stream it is, as the push frames name it.
    pub stream: PushStream,
    /// Its key.
    pub key: String,
    /// Says when it may have grown.
    pub waker: Waker,
    /// Push what follows this id.
    pub start: StreamId,
    /// What counts as expired (direct messages only).
    pub expiry: Expiry,
    /// Set when the device understands set-aside markers: entries it cannot
    /// take are recorded as dead letters and replaced by markers.
    pub set_aside: Option<SetAsideTo>,
    /// Set when the device puts entries together from parts: entries past
    /// what a push holds, within its limits, go in parts ([`in_parts`]).
    pub parts: Option<PartsTo>,
}

/// Where and for whom a [`push`] sets entries aside (see [`crate::dead`]).
pub struct SetAsideTo {
    /// The hub's key names.
    pub keys: lula_protocol::keys::HubKeys,
    /// The device.
    pub client: lula_protocol::ClientId,
    /// How long a dead letter's guard key lives.
    pub guard_ttl: Duration,
    /// Where the shared connection goes: a dead letter too wide for a script
    /// is recorded on a connection of its own to it.
    pub redis_target: lula_runtime::redis::RedisTarget,
}

/// Pushes `source` to the device through `out` until `cancel` or `out`
/// closing. `acks` carries the last id the device stored of this stream.
/// A connection runs one for its out stream and, when the device asked for
/// broadcasts, one more for the broadcast stream, each with its own window.
pub async fn push(
    redis: RedisConn,
    source: PushSource,
    out: mpsc::Sender<Message>,
    acks: watch_channel::Receiver<StreamId>,
    max_frame_bytes: usize,
    metrics: Arc<HubMetrics>,
    cancel: CancellationToken,
) {
    let mut pusher = Pusher {
        unacked: Unacked {
            counted: 0,
            gauge: metrics.unacked.clone(),
        },
        last: source.start,
        source,
        redis,
        out,
        acks,
        max_frame_bytes,
        metrics,
        window: Window::new(PUSH_WINDOW_ENTRIES, PUSH_WINDOW_BYTES),
        reads: ReadCount::new(PUSH_BATCH_ENTRIES),
        counted_at: None,
        reported: None,
    };
    loop {
        pusher.settle_acks();
        if !pusher.window.has_room() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = pusher.acks.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let window = &pusher.window;
        let count = pusher
            .reads
            .count(window.room_bytes())
            .min(window.room_entries());
        let expected = pusher.reads.expected(count, pusher.max_frame_bytes);
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = crate::push_budget::acquire(expected) => p,
        };
        let batch = match pusher.read(count).await {
            Ok(batch) => batch,
            Err(e) => {
                let stream = pusher.source.stream.as_str();
                tracing::warn!(error = %e, stream, "push: read failed; retrying");
                if pause(&cancel, RETRY_PAUSE).await {
                    return;
                }
                continue;
            }
        };
        let caught_up = batch.read < count;
        let sizes = batch.entries.iter().map(Entry::payload_len);
        pusher.reads.observe(count, sizes);
        if pusher.send(batch, caught_up, permit).await.is_err() {
            return;
        }
        if caught_up {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = pusher.source.waker.changed() => {}
            }
        }
    }
}

/// The state of one [`push`].
struct Pusher {
    source: PushSource,
    redis: RedisConn,
    out: mpsc::Sender<Message>,
    acks: watch_channel::Receiver<StreamId>,
    max_frame_bytes: usize,
    metrics: Arc<HubMetrics>,
    /// The last id pushed.
    last: StreamId,
    /// Pushed frames not yet acknowledged, in entries and bytes.
    window: Window,
    /// How many entries the next read asks for.
    reads: ReadCount,
    unacked: Unacked,
    /// When the backlog was last counted.
    counted_at: Option<tokio::time::Instant>,
    /// The backlog the device last heard of.
    reported: Option<u64>,
}

/// The push has ended (the connection's queue closed, or a frame could not
/// be encoded).
struct Ended;

/// A push frame ready to queue.
struct Encoded {
    text: String,
    /// The id the frame moves the push past.
    last: StreamId,
    /// Its entries.
    n: usize,
}

impl Pusher {
    /// Takes the frames the device acknowledged out of the window.
    fn settle_acks(&mut self) {
        let acked = *self.acks.borrow_and_update();
        self.window.settle(acked);
        self.unacked.follow(self.window.entries());
    }

    /// Reads up to `count` entries after the last one pushed.
    async fn read(&mut self, count: usize) -> Result<Batch, String> {
        let stream = self.source.stream;
        let op = match stream {
            PushStream::Direct => "xread",
            PushStream::Broadcast => "broadcast_read",
        };
        let read = read_batch(&mut self.redis, &self.source, self.last, count);
        let mut batch = self.metrics.timed(op, read).await?;
        // First, so what is cut off (and read again) is not set aside twice;
        // an entry in parts is within the device's limits, nothing to set aside.
        if let Some(parts) = &self.source.parts {
            in_parts::isolate(&mut batch, parts, self.max_frame_bytes);
        }
        let carried = usize::from(batch.in_parts);
        self.set_aside(&mut batch.entries[carried..]).await?;
        if batch.expired > 0 {
            self.metrics.expired.inc_by(batch.expired);
            tracing::warn!(
                expired = batch.expired,
                after = %self.last,
                "messages for the device expired before delivery; deleted, and the device is told"
            );
        }
        if let Some(gap) = batch.gap {
            tracing::warn!(
                stream = stream.as_str(),
                after = %self.last,
                deleted_up_to = %gap,
                "entries were deleted before they could be pushed; telling the device"
            );
        }
        Ok(batch)
    }

    /// Replaces the entries the device cannot take (more values than
    /// [`MAX_ENTRY_VALUES`], or a push frame past [`MAX_PUSH_FRAME_BYTES`])
    /// by set-aside markers, each recorded once in the dead-letter stream
    /// first; a failed record fails the read, which is tried again.
    async fn set_aside(&mut self, entries: &mut [Entry]) -> Result<(), String> {
        let Some(to) = &self.source.set_aside else {
            return Ok(());
        };
        let budget = MAX_PUSH_FRAME_BYTES - PUSH_ENVELOPE_BYTES;
        let stream = self.source.stream;
        for entry in entries.iter_mut() {
            // What goes in parts was isolated before: the rest is set
            // aside past the device's limits for parts, or past a push.
            let reason = (self.source.parts.as_ref())
                .and_then(|parts| parts.limits.refuses(entry))
                .or_else(|| entry.past_limits(MAX_ENTRY_VALUES, budget));
            let Some(reason) = reason else {
                continue;
            };
            let keys = &to.keys;
            let record = crate::dead::record(
                &mut self.redis,
                &to.redis_target,
                keys,
                stream,
                &to.client,
                entry,
                &reason,
                to.guard_ttl,
            );
            let recorded = self
                .metrics
                .timed("dead_letter", record)
                .await
                .map_err(|e| format!("recording set-aside entry {}: {e}", entry.id))?;
            tracing::warn!(
                stream = stream.as_str(),
                id = %entry.id,
                %reason,
                recorded,
                "the device cannot take this entry: set aside (lula-hub:dead:x) and the device told"
            );
            let direction = match stream {
                PushStream::Direct => "down",
                PushStream::Broadcast => "broadcast",
            };
            if recorded {
                HubMetrics::count(&self.metrics.set_aside, "direction", direction);
            }
            // A direct message is counted once, when recorded; a broadcast
            // (recorded once for the fleet) for each device it is set aside for.
            if recorded || stream == PushStream::Broadcast {
                let write = crate::fleet::set_aside(
                    self.redis.clone(),
                    &keys.device(&to.client),
                    direction,
                    1,
                    entry.id,
                    &reason,
                );
                tokio::spawn(async move {
                    if let Err(e) = write.await {
                        tracing::debug!(error = %e, "fleet: cannot record a set-aside entry");
                    }
                });
            }
            *entry = Entry::marker(entry.id, reason);
        }
        Ok(())
    }

    /// What still waits after `read_last`: none when the read came short;
    /// counted (capped) at most once a second while a backlog drains.
    async fn backlog(&mut self, caught_up: bool, read_last: StreamId) -> Option<u64> {
        if caught_up {
            return Some(0);
        }
        if self
            .counted_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.counted_at = Some(tokio::time::Instant::now());
        count_after(&mut self.redis, &self.source.key, read_last)
            .await
            .ok()
    }

    /// Pushes a batch in frames of at most half the frame limit; the first
    /// carries the gap, the last the backlog. Every frame is encoded before
    /// the first is queued and `permit` (see [`crate::push_budget`]) is given
    /// back in between, so a slow socket never holds it.
    async fn send(
        &mut self,
        batch: Batch,
        caught_up: bool,
        permit: crate::push_budget::Permit,
    ) -> Result<(), Ended> {
        let Batch {
            entries,
            gap,
            expired,
            last_read,
            in_parts,
            ..
        } = batch;
        let read_last = last_read.unwrap_or(self.last);
        let backlog = self.backlog(caught_up, read_last).await;
        let expired = Some(expired).filter(|n| *n > 0);
        if in_parts {
            let entry = entries.into_iter().next().ok_or(Ended)?;
            self.send_parts(entry, (gap, expired, backlog), permit)
                .await?;
            self.last = self.last.max(read_last);
            return Ok(());
        }
        let mut frames = frames_by_size(entries, self.max_frame_bytes / 2);
        if frames.is_empty()
            && (gap.is_some()
                || expired.is_some()
                || (backlog == Some(0) && self.reported.is_some_and(|r| r > 0)))
        {
            // Nothing to send, but the device must still learn of a gap, or
            // that the backlog drained exactly at a full read (it would keep
            // showing the last count).
            frames.push(Vec::new());
        }
        let last_frame = frames.len().saturating_sub(1);
        let mut encoded = Vec::with_capacity(frames.len());
        for (i, frame) in frames.into_iter().enumerate() {
            let push = self.push_of(
                frame,
                gap.filter(|_| i == 0),
                expired.filter(|_| i == 0),
                backlog.filter(|_| i == last_frame),
            );
            encoded.push(self.encode_frame(push)?);
        }
        drop(permit);
        for frame in encoded {
            self.send_frame(frame).await?;
        }
        // Past what was read, expired entries included.
        self.last = self.last.max(read_last);
        Ok(())
    }

    /// Encodes one push frame.
    fn encode_frame(&mut self, push: Push) -> Result<Encoded, Ended> {
        let frame_last = push
            .entries
            .last()
            .map(|e| e.id)
            .or(push.gap)
            .unwrap_or(self.last);
        let n = push.entries.len();
        if push.backlog.is_some() {
            self.reported = push.backlog;
        }
        let text = HubFrame::Push(push).to_text(None).map_err(|e| {
            tracing::error!(error = %e, "push: cannot encode frame");
            Ended
        })?;
        Ok(Encoded {
            text,
            last: frame_last,
            n,
        })
    }

    /// Sends one encoded push frame and counts its entries into the window.
    async fn send_frame(&mut self, frame: Encoded) -> Result<(), Ended> {
        let Encoded {
            text,
            last: frame_last,
            n,
        } = frame;
        let bytes = text.len();
        self.out
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| Ended)?;
        // A gap-only frame moves past the deleted entries.
        self.last = frame_last;
        if n > 0 {
            self.window.add(frame_last, n, bytes);
            self.unacked.follow(self.window.entries());
            self.metrics.entries_out.inc_by(n as u64);
            HubMetrics::lag(&self.metrics.downstream_lag, frame_last.ms);
        }
        Ok(())
    }
}

/// This connection's share of the hub-wide unacknowledged-entries gauge: it
/// follows the window's entry count, and is given back when the push ends
/// however it ends.
struct Unacked {
    /// What this push has added to the gauge.
    counted: usize,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Unacked {
    /// Moves the gauge by the change to `now` unacknowledged entries.
    fn follow(&mut self, now: usize) {
        self.gauge.inc_by(now as i64 - self.counted as i64);
        self.counted = now;
    }
}

impl Drop for Unacked {
    fn drop(&mut self) {
        self.gauge.dec_by(self.counted as i64);
    }
}

/// The pause after another failed pub/sub (re)connect: doubled each time,
/// capped, so a hub whose Redis is down for long neither spins nor floods its
/// log (readers keep polling meanwhile, so nothing waits on it).
fn next_retry(previous: Duration) -> Duration {
    (previous * 2).min(MAX_RETRY_PAUSE)
}

/// Sleeps unless cancelled first; true when cancelled.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubsub_retries_double_up_to_the_cap() {
        let mut d = RETRY_PAUSE;
        let mut seen = vec![];
        for _ in 0..8 {
            seen.push(d.as_secs());
            d = next_retry(d);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn frames_split_by_size_and_keep_order() {
        let e = |ms, size| Entry::new(StreamId::new(ms, 0), vec![b"k".to_vec(), vec![b'x'; size]]);
        let frames = frames_by_size(vec![e(1, 100), e(2, 100), e(3, 1000), e(4, 10)], 400);
        let ids: Vec<Vec<u64>> = frames
            .iter()
            .map(|f| f.iter().map(|e| e.id.ms).collect())
            .collect();
        assert_eq!(ids, vec![vec![1, 2], vec![3], vec![4]]);
    }

    #[test]
    fn keyspace_channels_name_their_key() {
        assert_eq!(
            key_of_channel("__keyspace@0__:lula-hub:out:dev-1:x"),
            Some("lula-hub:out:dev-1:x")
        );
        assert_eq!(key_of_channel("__keyspace@12__:a__:b"), Some("a__:b"));
        assert_eq!(key_of_channel("other"), None);
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_not_lost_and_dropping_unregisters() {
        let wakers = Arc::new(Wakers::default());
        let a = wakers.register("k".into());
        let b = wakers.register("k".into());
        wakers.wake("k");
        // Both were woken while nobody waited; both waits return at once.
        tokio::time::timeout(Duration::from_secs(5), a.changed())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), b.changed())
            .await
            .unwrap();
        assert_eq!(wakers.len(), 1);
        drop(a);
        assert_eq!(wakers.len(), 1);
        drop(b);
        assert!(wakers.is_empty());
    }
}
