//! One connection to the hub, from upgrade to close.
//!
//! After the upgrade the client asks the hub for its upstream cursor (`id`),
//! subscribes to its downstream from the cursor stored on the device, then runs
//! one loop that
//! - sends upstream batches, at most `inflight_batches` and about
//!   `UPSTREAM_INFLIGHT_BYTES` unacknowledged (one always), each
//!   naming as `prev` the last entry of the batch before it, so if one batch
//!   fails the hub refuses the ones after it instead of leaving a hole;
//! - advances the upstream cursor only on the hub's reply (a duplicate counts as
//!   delivered);
//! - stores each pushed downstream frame and its cursor in one script, then acks
//!   it; broadcasts (asked for in `subscribe` from the broadcast cursor) the
//!   same way with a cursor, marker field and acks of their own;
//! - gives up on the connection when the hub is silent past the idle timeout.
//!
//! Writes go through a writer task, so the loop keeps reading while a large
//! batch is on its way out; otherwise client and hub could each wait for the
//! other to read. The queue to the writer is bounded by what the protocol allows
//! to be outstanding (batches in flight plus acks of the hub's push window).
//!
//! Any error ends the session; the daemon reconnects with backoff and the next
//! session resumes from the cursors, so nothing here needs to be retried.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use lula_protocol::StreamId;
use lula_protocol::limits::{MAX_ENTRY_VALUES, PUSH_WINDOW_ENTRIES, UPSTREAM_INFLIGHT_BYTES};
use lula_protocol::message::{
    Ack, ErrorReply, HubFrame, IdReply, Push, PushStream, RenewRequest, Request, SubscribeRequest,
    XaddsReply, XaddsRequest, kind,
};
use lula_protocol::{CloseReason, Entry};
use lula_runtime::writer::Outgoing;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::auth::{AuthClient, Session as AuthSession};
use crate::device::Device;
use crate::link::{self, Inbound, Inflating, Outbound};
use crate::metrics::Metrics;
use crate::published::StatusUpdate;
use crate::renewal::{Credentials, Renewal};
use crate::uplink::{self, Batch, UplinkError};
use lula_protocol::compress::Params;
use lula_protocol::parts::{Assembly, PartLimits};
use std::sync::Arc;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Time allowed for the TCP connect plus WebSocket upgrade, and for each
/// handshake reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest frame accepted from the hub (pushes are bounded by the hub's own limit).
const MAX_INCOMING: usize = 64 << 20;
/// Bytes read from the socket at a time. tungstenite zero-fills this much on
/// every read, so its 128 KiB default costs a memset of 128 KiB per small
/// frame; large pushes still arrive whole, in more reads.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// How often the session refreshes its published status.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How soon pushed frames that did not fit in a full device Redis are tried again.
const HELD_RETRY: Duration = Duration::from_millis(500);
/// How soon after an acknowledgement the new upstream cursor is published for
/// `lula-client status`: often enough to look live, rarely enough to cost the
/// device Redis nothing at full speed.
const STATUS_DELAY: Duration = Duration::from_secs(1);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The hub refused the token (401): log in again.
    #[error("hub refused the session token")]
    Unauthorized,
    /// The hub asked us to slow down (429).
    #[error("hub is rate limiting; retry after {0:?}")]
    RateLimited(Option<Duration>),
    /// The hub could not be reached or the upgrade failed.
    #[error("cannot connect to hub: {0}")]
    Connect(String),
    /// The hub answered a request with an error.
    #[error("hub error {}: {}", .0.status, .0.message)]
    Hub(ErrorReply),
    /// The hub closed the connection.
    #[error("hub closed the connection (code {0:?})")]
    Closed(Option<u16>),
    /// Nothing heard from the hub within the idle timeout.
    #[error("hub silent for longer than the idle timeout")]
    Idle,
    /// The device Redis failed.
    #[error("device redis: {0}")]
    Device(#[from] redis::RedisError),
    /// An entry cannot be sent (see [`UplinkError::Oversized`]).
    #[error(transparent)]
    Uplink(UplinkError),
    /// The hub sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl SessionError {
    /// Whether the session ended because something refused to go on (an
    /// error reply, a policy or size close, a device Redis error, an entry
    /// that cannot be sent) rather than because the connection was lost:
    /// reconnecting at once would only meet the same refusal.
    pub fn is_refusal(&self) -> bool {
        match self {
            SessionError::Hub(_)
            | SessionError::RateLimited(_)
            | SessionError::Device(_)
            | SessionError::Uplink(_)
            | SessionError::Protocol(_) => true,
            SessionError::Closed(Some(code)) => matches!(
                CloseReason::from_code(*code),
                Some(CloseReason::Policy | CloseReason::TooBig)
            ),
            _ => false,
        }
    }
}

impl From<UplinkError> for SessionError {
    fn from(e: UplinkError) -> Self {
        match e {
            UplinkError::Device(d) => SessionError::Device(d),
            other => SessionError::Uplink(other),
        }
    }
}

/// How a session went.
#[derive(Debug)]
pub struct SessionReport {
    /// The upgrade and handshake succeeded (the daemon resets its backoff).
    pub established: bool,
    /// `Ok` when it ended because shutdown was requested.
    pub result: Result<(), SessionError>,
}

/// Runs one session with `token` until shutdown (drained) or an error.
pub async fn run(
    config: &Config,
    device: &mut Device,
    login: Login<'_>,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> SessionReport {
    let not_established = |result| SessionReport {
        established: false,
        result,
    };
    let token = login.current.token.expose().clone();
    let ws = tokio::select! {
        _ = shutdown.cancelled() => return not_established(Ok(())),
        ws = connect(config, &token) => ws,
    };
    let (sink, stream, agreed) = match ws {
        Ok((ws, agreed)) => {
            let (sink, stream) = ws.split();
            (sink, stream, agreed)
        }
        Err(e) => return not_established(Err(e)),
    };
    // Compression, if the hub agreed, between the session and the socket.
    let link = &metrics.link;
    let sink = link::compressing(sink, Outbound::new(agreed, link.clone()));
    let stream = link::inflating(stream, Inbound::new(agreed, MAX_INCOMING, link.clone()));
    // Acks of two push windows: the out stream's and the broadcast stream's.
    let (out, rx) = mpsc::channel(config.inflight_batches + 2 * PUSH_WINDOW_ENTRIES + 16);
    let mut writer = tokio::spawn(lula_runtime::writer::coalesce(sink, rx, classify, |_| {}));
    let mut session = Session::new(config, device, out, stream, login, metrics);
    let limits = match session.handshake().await {
        Ok(l) => l,
        Err(e) => {
            writer.abort();
            return not_established(Err(e));
        }
    };
    metrics.sessions.inc();
    metrics.connected.set(1);
    let compression = StatusUpdate {
        compression: Some(agreed.map_or_else(|| "off".to_owned(), |p| p.to_string())),
        ..StatusUpdate::default()
    };
    let _ = session.publish(&compression).await;
    let mut writer_done = false;
    let result = tokio::select! {
        // Biased: when the session ends by closing, the writer ends too; the
        // session's own result is the one that counts.
        biased;
        r = session.run(limits, shutdown) => r,
        w = &mut writer => {
            writer_done = true;
            Err(SessionError::Connect(match w {
                Ok(Err(e)) => e.to_string(),
                _ => "writer stopped".into(),
            }))
        }
    };
    if let Err(e) = &result {
        tracing::debug!(error = %e, "session ended");
        // Status readers count the backlog from this cursor; leave it exact.
        let update = session.upstream_status();
        let _ = session.publish(&update).await;
    }
    // Let the writer flush what is queued (the close frame on shutdown), then stop it.
    drop(session);
    if !writer_done
        && tokio::time::timeout(Duration::from_secs(5), &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
    metrics.connected.set(0);
    SessionReport {
        established: true,
        result,
    }
}

/// What the writer counts (nothing) and where it stops (a close frame).
fn classify(msg: &Message) -> Outgoing {
    match msg {
        Message::Text(_) | Message::Binary(_) => Outgoing::Data,
        Message::Close(_) => Outgoing::Close,
        _ => Outgoing::Control,
    }
}

/// Upgrades to the hub; returns the socket and the compression it agreed to.
async fn connect(config: &Config, token: &str) -> Result<(Ws, Option<Params>), SessionError> {
    let mut request = config
        .hub_url
        .as_str()
        .into_client_request()
        .map_err(|e| SessionError::Connect(e.to_string()))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| SessionError::Unauthorized)?;
    request.headers_mut().insert("authorization", bearer);
    link::offer(
        &mut request,
        config.compression_window_bits.and_then(Params::offer),
    );
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(MAX_INCOMING))
        .max_frame_size(Some(MAX_INCOMING));
    // wss:// trusts the system roots and --ca-file, read again on every
    // connection, so a replaced CA file counts from the next reconnect.
    let connector = if request.uri().scheme_str() == Some("wss") {
        let tls = lula_runtime::tls::client_config(config.ca_file.as_deref())
            .map_err(|e| SessionError::Connect(e.to_string()))?;
        Some(tokio_tungstenite::Connector::Rustls(tls.into()))
    } else {
        None
    };
    let connected = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_tls_with_config(request, Some(ws_config), true, connector),
    )
    .await;
    match connected {
        Err(_) => Err(SessionError::Connect("timed out".into())),
        Ok(Ok((ws, response))) => Ok((ws, link::accepted(&response))),
        Ok(Err(tungstenite::Error::Http(res))) => match res.status().as_u16() {
            401 => Err(SessionError::Unauthorized),
            429 => Err(SessionError::RateLimited(
                res.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok())
                    .map(Duration::from_secs),
            )),
            s => Err(SessionError::Connect(format!("hub answered HTTP {s}"))),
        },
        Ok(Err(e)) => Err(SessionError::Connect(e.to_string())),
    }
}

/// What the handshake learned.
#[derive(Debug, Clone)]
struct Limits {
    max_entries: usize,
    max_bytes: usize,
    /// When the hub takes set-aside markers: the most values per entry.
    set_aside: Option<usize>,
    /// When the hub takes entries in parts: its limits for them.
    parts: Option<lula_protocol::parts::PartLimits>,
}

/// A batch sent and not acknowledged yet.
struct InFlight {
    /// Its request id.
    id: u64,
    /// Its last seq.
    last: StreamId,
    /// That seq's ordinal in `out:x`, when known.
    last_ordinal: Option<u64>,
    /// Its encoded entries' size, counted against [`UPSTREAM_INFLIGHT_BYTES`].
    bytes: usize,
}

struct Session<'a> {
    config: &'a Config,
    device: &'a mut Device,
    /// To the writer task.
    out: mpsc::Sender<Message>,
    stream: Inflating<SplitStream<Ws>>,
    next_id: u64,
    /// Sent batches awaiting their reply, oldest first.
    inflight: VecDeque<InFlight>,
    /// Last seq sent (the `prev` of the next batch).
    prev: StreamId,
    /// Last seq the hub acknowledged.
    cursor: StreamId,
    /// Its ordinal in `out:x`, when known (see `uplink::Tracker`).
    cursor_ordinal: Option<u64>,
    /// Whether acknowledged entries may leave `out:x` (not when the hub's
    /// cursor was found ahead of the device's stream).
    retire: bool,
    /// How to log in again, and the session token in use.
    login: Login<'a>,
    renewal: Renewal,
    metrics: Arc<Metrics>,
    /// The downstream backlog last published to the status hash.
    downstream_backlog: Option<u64>,
    /// Pushed frames not stored yet, oldest first (the device Redis was full).
    held: VecDeque<Push>,
    /// Messages arriving in parts, per stream, until their last part.
    assembling: [Option<Assembly>; 2],
    /// When to try storing them again.
    held_retry_at: Option<Instant>,
    /// The upstream reader, while upstream runs.
    reader: Option<Reader>,
    /// Upstream paused after a refusal, on this connection.
    up: UpstreamPause,
}

/// The upstream reader of this connection: its batches, and what stops it
/// (also when dropped).
struct Reader {
    batches: mpsc::Receiver<Result<Batch, UplinkError>>,
    cancel: CancellationToken,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// After the hub refused a batch, upstream waits (with a backoff that only a
/// batch the hub accepts resets), asks for the cursor again (`id`) and
/// resumes from it, while the connection and its downstream go on.
struct UpstreamPause {
    /// What the reader may batch, and the entries the hub refused by id.
    budget: uplink::Budget,
    backoff: crate::backoff::Backoff,
    /// When to ask for the cursor again.
    retry_at: Option<Instant>,
    /// The request id of that `id`, until its reply.
    resume_id: Option<u64>,
    /// Batches sent before the refusal: their replies are ignored.
    abandoned: std::collections::HashSet<u64>,
}

/// What a connection needs to renew its session token without reconnecting.
pub struct Login<'a> {
    /// lula-auth.
    pub auth: &'a AuthClient,
    /// The device's secret.
    pub secret: &'a str,
    /// The session in use; replaced when the hub accepts a renewed one.
    pub current: &'a mut AuthSession,
}

/// What the session loop waits for.
enum Event {
    /// Shutdown was requested: finish the batches in flight, then close.
    Shutdown,
    /// The batches in flight were not acknowledged in time after shutdown.
    DrainTimedOut,
    /// A frame from the hub, or the end of the connection.
    Frame(Option<Result<Message, tungstenite::Error>>),
    /// Time to publish the acknowledged upstream cursor.
    PublishUpstream,
    /// The next upstream batch (or the reader's end).
    Batch(Option<Result<Batch, UplinkError>>),
    /// Nothing heard from the hub within the idle timeout.
    Idle,
    /// Time to renew the session token.
    RenewDue,
    /// The login of a renewal finished (`None`: it failed, retried later).
    LoggedIn(Option<AuthSession>),
    /// Time to refresh the published status.
    Heartbeat,
    /// Time to try storing the pushed frames that did not fit.
    RetryHeld,
    /// Time to ask for the upstream cursor again after a refusal.
    ResumeUpstream,
}

/// The loop's timers and the upstream reader, beside the session.
struct Loop {
    heartbeat: tokio::time::Interval,
    last_heard: Instant,
    /// The upstream cursor last published.
    published: StreamId,
    /// When to publish the cursor next, if it moved.
    publish_at: Option<Instant>,
    /// Set at shutdown: when to stop waiting for the batches in flight.
    drain_deadline: Option<Instant>,
}

impl<'a> Session<'a> {
    fn new(
        config: &'a Config,
        device: &'a mut Device,
        out: mpsc::Sender<Message>,
        stream: Inflating<SplitStream<Ws>>,
        login: Login<'a>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        Session {
            config,
            device,
            out,
            stream,
            next_id: 1,
            inflight: VecDeque::new(),
            prev: StreamId::ZERO,
            cursor: StreamId::ZERO,
            cursor_ordinal: None,
            retire: true,
            held: VecDeque::new(),
            assembling: [None, None],
            held_retry_at: None,
            reader: None,
            up: UpstreamPause {
                budget: uplink::Budget::default(),
                backoff: crate::backoff::Backoff::new(config.min_backoff, config.max_backoff),
                retry_at: None,
                resume_id: None,
                abandoned: Default::default(),
            },
            renewal: Renewal::new(login.current),
            login,
            metrics: metrics.clone(),
            downstream_backlog: None,
        }
    }
}

impl Session<'_> {
    /// Lets `out:x` drop what the hub acknowledged, up to `last` (see
    /// [`crate::retention`]). A failed trim is logged and retried at the next
    /// acknowledgement: it never ends the session.
    async fn retire_acknowledged(&mut self, last: StreamId, entries: u64) {
        match self.device.retire_acknowledged(last, entries).await {
            Ok(0) => {}
            Ok(n) => {
                self.metrics.out_trimmed.inc_by(n);
            }
            Err(e) => tracing::warn!(error = %e, "could not trim acknowledged entries from out:x"),
        }
    }

    /// The acknowledged upstream cursor, as published.
    fn upstream_status(&self) -> StatusUpdate {
        let link = &self.metrics.link;
        StatusUpdate {
            link: Some([
                link.sent_bytes.get(),
                link.sent_plain_bytes.get(),
                link.received_bytes.get(),
                link.received_plain_bytes.get(),
            ]),
            ..StatusUpdate::upstream(self.cursor, self.cursor_ordinal)
        }
    }

    /// Writes status fields. A full device Redis refuses them (`OOM`); status
    /// is for people, so that is logged and the session goes on.
    async fn publish(&mut self, update: &StatusUpdate) -> Result<(), SessionError> {
        match self.device.publish(update).await {
            Err(e) if crate::device::is_full(&e) => {
                tracing::debug!("device Redis full: status not written");
                Ok(())
            }
            r => Ok(r?),
        }
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Queues a frame for the writer. Never waits: the queue is sized for
    /// everything the protocol lets be outstanding, so a full queue means the
    /// hub broke its push window.
    fn send<B: serde::Serialize>(
        &mut self,
        id: Option<u64>,
        request: &Request<'_, B>,
    ) -> Result<(), SessionError> {
        let id = id.map(Value::from);
        let text = request
            .to_text(id.as_ref())
            .map_err(|e| SessionError::Protocol(e.to_string()))?;
        self.out.try_send(Message::text(text)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                SessionError::Protocol("outgoing queue full".into())
            }
            mpsc::error::TrySendError::Closed(_) => SessionError::Connect("writer stopped".into()),
        })
    }

    /// The next text frame from the hub, within the handshake timeout.
    async fn handshake_frame(&mut self, what: &str) -> Result<Utf8Bytes, SessionError> {
        loop {
            return match tokio::time::timeout(CONNECT_TIMEOUT, self.stream.next()).await {
                Err(_) => Err(SessionError::Connect(format!("no reply to {what}"))),
                Ok(None) => Err(SessionError::Closed(None)),
                Ok(Some(Err(e))) => Err(SessionError::Connect(e.to_string())),
                Ok(Some(Ok(Message::Text(t)))) => Ok(t),
                Ok(Some(Ok(Message::Close(f)))) => {
                    Err(SessionError::Closed(f.map(|f| u16::from(f.code))))
                }
                Ok(Some(Ok(_))) => continue,
            };
        }
    }

    /// `id`, then `subscribe`; returns the limits to batch by.
    async fn handshake(&mut self) -> Result<Limits, SessionError> {
        let id = self.request_id();
        self.send(Some(id), &Request::<'_, Vec<Entry>>::Id)?;
        let text = self.handshake_frame("id").await?;
        let reply = match HubFrame::parse(text.as_str()) {
            Err(e) => return Err(SessionError::Protocol(e.to_string())),
            Ok((reply_id, _)) if reply_id.as_ref().and_then(Value::as_u64) != Some(id) => {
                return Err(SessionError::Protocol(
                    "expected the reply to id, got another frame".into(),
                ));
            }
            Ok((_, HubFrame::Id(reply))) => reply,
            Ok((_, HubFrame::Error { reply, .. })) => return Err(SessionError::Hub(reply)),
            Ok((_, other)) => {
                return Err(SessionError::Protocol(format!(
                    "expected the reply to id, got {}",
                    other.kind()
                )));
            }
        };
        self.cursor = reply.id;
        self.cursor_ordinal = self.device.saved_ordinal(reply.id).await?;
        self.prev = reply.id;
        let max_bytes = reply
            .max_frame_bytes
            .unwrap_or(self.config.max_frame_bytes)
            .min(self.config.max_frame_bytes);
        let max_entries = reply
            .max_batch_entries
            .unwrap_or(self.config.batch_entries)
            .min(self.config.batch_entries)
            .max(1);
        self.check_cursor().await?;
        self.subscribe().await?;
        let set_aside = reply
            .set_aside
            .then(|| reply.max_entry_values.unwrap_or(MAX_ENTRY_VALUES));
        // Parts need markers too: what is past their limits (the hub's or
        // this client's, the smaller) is set aside.
        let mine = self.config.part_limits;
        let parts = reply
            .parts
            .filter(|_| reply.set_aside)
            .map(|hub| PartLimits {
                max_values: hub.max_values.min(mine.max_values),
                max_bytes: hub.max_bytes.min(mine.max_bytes),
            });
        Ok(Limits {
            max_entries,
            max_bytes: max_bytes.saturating_sub(uplink::ENVELOPE_RESERVE).max(1),
            set_aside,
            parts,
        })
    }

    /// Publishes a warning when the hub's cursor is ahead of everything this
    /// device ever produced (and clears an old one otherwise).
    async fn check_cursor(&mut self) -> Result<(), SessionError> {
        let last_generated = self.device.last_generated().await?;
        let mut warning = String::new();
        if self.cursor > last_generated {
            // The hub holds entries of this device with ids its stream never
            // reached: the device's Redis was replaced or wiped. New entries
            // with ids at or below the cursor would be taken for duplicates.
            let message = format!(
                "the hub's cursor {} is ahead of this device's out:x (last id {last_generated}): entries with ids up to it will be dropped as duplicates; if this device's Redis was replaced, reset the cursor with `redis-cli HDEL lula-hub:cursor:h {}` on the hub's Redis",
                self.cursor, self.config.client_id
            );
            tracing::error!("{message}");
            warning = message;
            // Entries the hub drops as duplicates are not safe in the cloud:
            // leave them on the device for the operator.
            self.retire = false;
        }
        if self.retire {
            self.retire_acknowledged(self.cursor, 0).await;
        }
        let update = StatusUpdate {
            warning: Some(warning),
            ..StatusUpdate::default()
        };
        self.publish(&update).await
    }

    /// Subscribes to the downstream from the cursors stored on the device.
    async fn subscribe(&mut self) -> Result<(), SessionError> {
        let downstream = self.device.downstream_cursor().await?;
        let broadcast = self.device.broadcast_cursor().await?;
        let id = self.request_id();
        let subscribe = Request::<'_, Vec<Entry>>::Subscribe(SubscribeRequest {
            id: downstream,
            broadcast_after: Some(broadcast),
            set_aside: true,
            parts: Some(self.config.part_limits),
        });
        self.send(Some(id), &subscribe)?;
        tracing::info!(upstream = %self.cursor, %downstream, %broadcast, "connected to hub");
        Ok(())
    }

    /// Publishes the session as up and starts the upstream reader.
    async fn start(&mut self, limits: Limits) -> Result<Loop, SessionError> {
        let up = StatusUpdate {
            last_error: Some(String::new()),
            ..StatusUpdate::connected(self.cursor, self.cursor_ordinal)
        };
        self.publish(&up).await?;
        self.up.budget = uplink::Budget {
            max_entries: limits.max_entries,
            max_bytes: limits.max_bytes,
            set_aside: limits.set_aside,
            parts: limits.parts,
            refused: Default::default(),
        };
        self.start_reader().await?;
        Ok(Loop {
            heartbeat: tokio::time::interval(HEARTBEAT),
            last_heard: Instant::now(),
            published: self.cursor,
            publish_at: None,
            drain_deadline: None,
        })
    }

    /// Sends batches and handles the hub's frames until shutdown (after the
    /// batches in flight are acknowledged, or the drain timeout) or an error.
    async fn run(
        &mut self,
        limits: Limits,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let mut lp = self.start(limits).await?;
        loop {
            if lp.drain_deadline.is_some() && self.inflight.is_empty() {
                self.close().await;
                return Ok(());
            }
            match self.next_event(&mut lp, shutdown).await {
                Event::Shutdown => {
                    tracing::info!(
                        inflight = self.inflight.len(),
                        "shutting down: finishing batches in flight"
                    );
                    self.reader = None;
                    self.up.retry_at = None;
                    lp.drain_deadline = Some(Instant::now() + self.config.drain_timeout);
                }
                Event::DrainTimedOut => {
                    tracing::warn!(
                        inflight = self.inflight.len(),
                        "drain timed out; unacknowledged batches will be resent at the next start"
                    );
                    self.close().await;
                    return Ok(());
                }
                Event::Frame(msg) => self.on_frame(&mut lp, msg).await?,
                Event::PublishUpstream => {
                    lp.publish_at = None;
                    lp.published = self.cursor;
                    self.publish(&self.upstream_status()).await?;
                }
                Event::Batch(batch) => self.on_batch(batch).await?,
                Event::Idle => return Err(SessionError::Idle),
                Event::RenewDue => self.start_renewal(),
                Event::LoggedIn(new) => self.send_renew(new)?,
                Event::RetryHeld => self.store_held().await?,
                Event::ResumeUpstream => self.resume_upstream()?,
                Event::Heartbeat => {
                    lp.published = self.cursor;
                    self.publish(&StatusUpdate::connected(self.cursor, self.cursor_ordinal))
                        .await?;
                }
            }
        }
    }

    /// Waits for the next thing to act on. Biased: shutdown first, then the
    /// hub's frames before new batches.
    async fn next_event(&mut self, lp: &mut Loop, shutdown: &CancellationToken) -> Event {
        let idle_at = lp.last_heard + self.config.idle_timeout;
        let draining = lp.drain_deadline.is_some();
        let window = self.config.inflight_batches.max(1);
        // One batch always goes, however large; then both limits apply.
        let inflight_bytes: usize = self.inflight.iter().map(|b| b.bytes).sum();
        let room = self.inflight.len() < window && inflight_bytes < UPSTREAM_INFLIGHT_BYTES;
        let renew_at = self.renewal.due_at().filter(|_| !draining);
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !draining => Event::Shutdown,
            _ = sleep_until_some(lp.drain_deadline) => Event::DrainTimedOut,
            msg = self.stream.next() => Event::Frame(msg),
            _ = sleep_until_some(lp.publish_at) => Event::PublishUpstream,
            batch = next_batch(&mut self.reader), if !draining && room => Event::Batch(batch),
            _ = tokio::time::sleep_until(idle_at) => Event::Idle,
            _ = sleep_until_some(renew_at) => Event::RenewDue,
            new = self.renewal.logged_in() => Event::LoggedIn(new),
            _ = lp.heartbeat.tick() => Event::Heartbeat,
            _ = sleep_until_some(self.held_retry_at) => Event::RetryHeld,
            _ = sleep_until_some(self.up.retry_at) => Event::ResumeUpstream,
        }
    }

    /// A frame (or the end) from the hub; schedules publishing a moved cursor.
    async fn on_frame(
        &mut self,
        lp: &mut Loop,
        msg: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), SessionError> {
        lp.last_heard = Instant::now();
        self.on_message(msg).await?;
        if self.cursor != lp.published && lp.publish_at.is_none() {
            lp.publish_at = Some(lp.last_heard + STATUS_DELAY);
        }
        Ok(())
    }

    /// Sends the next upstream batch, naming the batch before it as `prev`.
    async fn on_batch(
        &mut self,
        batch: Option<Result<Batch, UplinkError>>,
    ) -> Result<(), SessionError> {
        let batch = match batch {
            Some(Ok(batch)) => batch,
            Some(Err(e @ UplinkError::Oversized { .. })) => {
                // The hub takes no markers: upstream stops here (skipping
                // the entry would lose it); downstream goes on.
                tracing::error!(error = %e, "upstream sync is stuck; downstream goes on");
                self.reader = None;
                return self.publish(&StatusUpdate::error(e.to_string())).await;
            }
            Some(Err(e)) => return Err(e.into()),
            None => return Err(SessionError::Protocol("upstream reader stopped".into())),
        };
        let id = self.request_id();
        // A part before its entry's last moves nothing: the hub answers it
        // with the cursor before the entry, and the next part follows the
        // same `prev`.
        let partial = batch.is_partial();
        let bytes = batch.wire_bytes();
        let request = Request::Xadds(XaddsRequest {
            prev: Some(self.prev),
            entries: &*batch.entries,
            backlog: batch.backlog,
            part: batch.part,
        });
        self.send(Some(id), &request)?;
        if !partial {
            self.metrics
                .upstream_batch_entries
                .observe(batch.count as f64);
            self.prev = batch.last;
        }
        self.inflight.push_back(InFlight {
            id,
            last: self.prev,
            last_ordinal: batch.last_ordinal,
            bytes,
        });
        Ok(())
    }

    /// Starts (or restarts) the upstream reader from the acknowledged cursor.
    async fn start_reader(&mut self) -> Result<(), SessionError> {
        let reader = self.device.out_reader(uplink::READ_BLOCK).await?;
        let cancel = CancellationToken::new();
        let (tx, batches) = mpsc::channel(1);
        tokio::spawn(uplink::read_batches(
            reader,
            self.device.clone(),
            self.metrics.clone(),
            (self.cursor, self.cursor_ordinal),
            self.up.budget.clone(),
            tx,
            cancel.clone(),
        ));
        self.reader = Some(Reader { batches, cancel });
        Ok(())
    }

    /// Whether `id` names a batch sent before upstream paused (its reply no
    /// longer matters: upstream resumes from the cursor `id` reports).
    fn is_abandoned(&mut self, id: Option<&Value>) -> bool {
        id.and_then(Value::as_u64)
            .is_some_and(|id| self.up.abandoned.remove(&id))
    }

    /// Whether `id` names the `id` request that resumes upstream.
    fn is_resume(&self, id: Option<&Value>) -> bool {
        self.up.resume_id.is_some() && id.and_then(Value::as_u64) == self.up.resume_id
    }

    /// The hub refused a batch (or the `id` that resumes upstream): upstream
    /// pauses on this connection, with a backoff, and resumes from the
    /// cursor; downstream goes on. A refusal naming an entry the hub will
    /// not take sets that entry aside when it is read again (hubs that take
    /// markers only).
    async fn on_upstream_refused(&mut self, reply: ErrorReply) -> Result<(), SessionError> {
        let delay = self.up.backoff.next_delay();
        tracing::warn!(
            status = reply.status,
            message = %reply.message,
            entry = ?reply.entry,
            retry_in = ?delay,
            "the hub refused upstream entries; upstream pauses, downstream goes on"
        );
        if let Some(entry) = reply.entry
            && self.up.budget.set_aside.is_some()
        {
            let why: String = reply.message.chars().take(400).collect();
            self.up.budget.refused.insert(entry, why);
        }
        self.reader = None;
        self.up.resume_id = None;
        self.up
            .abandoned
            .extend(self.inflight.drain(..).map(|b| b.id));
        self.prev = self.cursor;
        self.up.retry_at = Some(Instant::now() + delay);
        let error = SessionError::Hub(reply).to_string();
        self.publish(&StatusUpdate::error(error)).await
    }

    /// Asks the hub for the upstream cursor, to resume from it.
    fn resume_upstream(&mut self) -> Result<(), SessionError> {
        self.up.retry_at = None;
        let id = self.request_id();
        self.send(Some(id), &Request::<'_, Vec<Entry>>::Id)?;
        self.up.resume_id = Some(id);
        Ok(())
    }

    /// The cursor to resume upstream from: the reader starts again after it.
    async fn on_resumed(&mut self, reply: IdReply) -> Result<(), SessionError> {
        self.up.resume_id = None;
        // The hub answers in order: every batch sent before this `id` has
        // had its reply.
        self.up.abandoned.clear();
        self.cursor = reply.id;
        self.prev = reply.id;
        self.cursor_ordinal = self.device.saved_ordinal(reply.id).await?;
        tracing::info!(upstream = %self.cursor, "upstream resumes");
        self.start_reader().await
    }

    /// Starts logging in again for a renewal.
    fn start_renewal(&mut self) {
        let login = Credentials {
            auth: self.login.auth.clone(),
            client: self.config.client_id.clone(),
            secret: self.login.secret.to_owned(),
        };
        self.renewal.start(login, self.login.current.clone());
    }

    /// Sends `renew` with the token of a finished login.
    fn send_renew(&mut self, new: Option<AuthSession>) -> Result<(), SessionError> {
        let Some(new) = new else { return Ok(()) };
        let id = self.request_id();
        let renew = Request::<'_, Vec<Entry>>::Renew(RenewRequest {
            token: new.token.expose().clone(),
        });
        self.send(Some(id), &renew)?;
        self.renewal.sent(new);
        Ok(())
    }

    /// Handles one message from the hub: one method per frame kind.
    async fn on_message(
        &mut self,
        msg: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), SessionError> {
        let text = match msg {
            None => return Err(SessionError::Closed(None)),
            Some(Err(e)) => return Err(SessionError::Connect(e.to_string())),
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => {
                return Err(SessionError::Closed(f.map(|f| u16::from(f.code))));
            }
            Some(Ok(_)) => return Ok(()),
        };
        let (id, frame) =
            HubFrame::parse(text.as_str()).map_err(|e| SessionError::Protocol(e.to_string()))?;
        match frame {
            HubFrame::Push(push) => self.on_push(push).await,
            HubFrame::Xadds(_) | HubFrame::Error { .. } if self.is_abandoned(id.as_ref()) => Ok(()),
            HubFrame::Xadds(reply) => self.on_acknowledged(id, reply).await,
            HubFrame::Id(reply) if self.is_resume(id.as_ref()) => self.on_resumed(reply).await,
            HubFrame::Error { kind, reply }
                if kind == kind::XADDS || self.is_resume(id.as_ref()) =>
            {
                self.on_upstream_refused(reply).await
            }
            HubFrame::Subscribe(reply) => {
                if reply.broadcast_after.is_none() {
                    tracing::warn!(
                        "the hub does not push broadcasts (older than broadcasts?); direct messages still arrive"
                    );
                }
                Ok(())
            }
            HubFrame::Renew(_) => self.on_renewed(Ok(())).await,
            HubFrame::Error { kind, reply }
                if kind == kind::RENEW && self.renewal.awaiting_reply() =>
            {
                self.on_renewed(Err(reply)).await
            }
            HubFrame::Error { kind, reply } if kind == kind::ERR => Err(SessionError::Protocol(
                format!("hub could not parse a frame: {}", reply.message),
            )),
            HubFrame::Error { reply, .. } => Err(SessionError::Hub(reply)),
            other => Err(SessionError::Protocol(format!(
                "unexpected {} frame",
                other.kind()
            ))),
        }
    }

    /// The hub's reply to `renew`: switch to the new session when accepted.
    async fn on_renewed(&mut self, result: Result<(), ErrorReply>) -> Result<(), SessionError> {
        if !self.renewal.awaiting_reply() {
            return Err(SessionError::Protocol("unexpected renew frame".into()));
        }
        if let Some(new) = self.renewal.replied(result) {
            let expires = StatusUpdate::session_expires(new.expires_at);
            *self.login.current = new;
            self.metrics.renewals.inc();
            self.publish(&expires).await?;
        }
        Ok(())
    }

    /// The hub's reply to the oldest batch in flight: the cursor moves.
    async fn on_acknowledged(
        &mut self,
        id: Option<Value>,
        reply: XaddsReply,
    ) -> Result<(), SessionError> {
        let expected = self.inflight.front().map(|b| b.id);
        let Some(batch) = self
            .inflight
            .pop_front()
            .filter(|_| id.as_ref().and_then(Value::as_u64) == expected)
        else {
            return Err(SessionError::Protocol("unexpected xadds frame".into()));
        };
        // The hub's cursor can be ahead of our batch only if another
        // daemon with this identity sent more; never behind it.
        if reply.id < batch.last {
            return Err(SessionError::Protocol(format!(
                "hub acknowledged {} for a batch ending at {}",
                reply.id, batch.last
            )));
        }
        self.cursor = reply.id;
        self.up.backoff.reset();
        let carried = reply.added + reply.duplicates + reply.set_aside;
        if self.retire {
            self.retire_acknowledged(batch.last, carried).await;
        }
        // Ahead of our batch only if another daemon sent more: then we
        // do not know where in out:x the cursor is.
        self.cursor_ordinal = if reply.id == batch.last {
            batch.last_ordinal
        } else {
            None
        };
        self.metrics
            .upstream_entries
            .inc_by(reply.added + reply.duplicates);
        self.metrics.upstream_duplicates.inc_by(reply.duplicates);
        if let Some(ordinal) = self.cursor_ordinal {
            let added = self
                .metrics
                .out_added
                .load(std::sync::atomic::Ordering::Relaxed);
            self.metrics
                .upstream_lag
                .set(added.saturating_sub(ordinal) as i64);
        }
        if reply.duplicates > 0 {
            tracing::debug!(
                duplicates = reply.duplicates,
                "hub already had some entries"
            );
        }
        Ok(())
    }

    /// Stores a pushed frame with its stream's cursor in one script, then
    /// acknowledges it on that stream. While the device Redis is full, frames
    /// wait (in order) and are stored when it has room again: the hub sends
    /// no more than its window without acknowledgements, so the wait is
    /// bounded, and upstream goes on meanwhile.
    async fn on_push(&mut self, push: Push) -> Result<(), SessionError> {
        if push.stream == PushStream::Direct
            && let Some(backlog) = push.backlog
            && self.downstream_backlog != Some(backlog)
        {
            // Only when it changes: a caught-up device gets 0 with every push.
            self.downstream_backlog = Some(backlog);
            self.metrics.downstream_backlog.set(backlog as i64);
            let update = StatusUpdate {
                downstream_backlog: Some(backlog),
                ..StatusUpdate::default()
            };
            self.publish(&update).await?;
        }
        let Some(push) = self.assemble(push)? else {
            return Ok(());
        };
        self.held.push_back(push);
        if self.held.len() == 1 {
            self.store_held().await?;
        }
        Ok(())
    }

    /// Takes a push in parts into its stream's assembly: the whole message
    /// as a push of its own once its last part came, else nothing. Any
    /// other push passes as it is.
    fn assemble(&mut self, mut push: Push) -> Result<Option<Push>, SessionError> {
        let Some(part) = push.part.take() else {
            return Ok(Some(push));
        };
        let slot = &mut self.assembling[usize::from(push.stream == PushStream::Broadcast)];
        let added = match slot.as_mut() {
            Some(assembly) if part.index > 0 => assembly.push(part),
            _ => Assembly::start(part, self.config.part_limits).map(|a| *slot = Some(a)),
        };
        if let Err(e) = added {
            *slot = None;
            return Err(SessionError::Protocol(format!("bad push part: {e}")));
        }
        match slot.take().map(Assembly::finish) {
            Some(Ok(entry)) => {
                push.entries = vec![entry];
                Ok(Some(push))
            }
            Some(Err(open)) => {
                *slot = Some(open);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Stores the waiting frames, oldest first, until one does not fit: then
    /// tries again in [`HELD_RETRY`].
    async fn store_held(&mut self) -> Result<(), SessionError> {
        self.held_retry_at = None;
        while let Some(push) = self.held.pop_front() {
            match self.store_push(&push).await {
                Ok(ack) => {
                    if let Some(ack) = ack {
                        self.send(None, &ack)?;
                    }
                }
                Err(SessionError::Device(e)) if crate::device::is_full(&e) => {
                    self.held.push_front(push);
                    tracing::warn!(
                        frames = self.held.len(),
                        "device Redis full (maxmemory): pushed messages wait until there is room"
                    );
                    self.held_retry_at = Some(Instant::now() + HELD_RETRY);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Stores one pushed frame; returns the acknowledgement to send, if any.
    async fn store_push(
        &mut self,
        push: &Push,
    ) -> Result<Option<Request<'static, Vec<Entry>>>, SessionError> {
        let stream = push.stream;
        // Gaps are reported on the broadcast stream only (the hub reports
        // none on the out stream, whose retention is the cloud's business).
        let gap = push.gap.filter(|_| stream == PushStream::Broadcast);
        let expired = push.expired.unwrap_or(0);
        if push.entries.is_empty() && gap.is_none() && expired == 0 {
            return Ok(None);
        }
        let stored = self
            .device
            .store(stream, &push.entries, gap, expired)
            .await?;
        if expired > 0 {
            self.metrics.downstream_expired.inc_by(expired);
            tracing::warn!(
                expired,
                "messages for this device expired on the hub before delivery (expiresAt or --downstream-max-age)"
            );
        }
        let counter = match stream {
            PushStream::Direct => &self.metrics.downstream_entries,
            PushStream::Broadcast => &self.metrics.broadcast_entries,
        };
        counter.inc_by(stored.added);
        if stored.set_aside > 0 {
            self.note_set_aside(push, stored.set_aside);
        }
        if let (Some(after), Some(gap)) = (stored.missed_after, gap) {
            self.metrics.broadcast_gaps.inc();
            tracing::warn!(
                stream = stream.as_str(),
                %after,
                up_to = %gap,
                "missed broadcasts: the hub deleted them (retention) before this device received them"
            );
        }
        Ok(Some(Request::Ack(Ack {
            id: stored.cursor,
            stream,
        })))
    }

    /// Counts and logs the set-aside markers the store found new: the last
    /// `new` markers of `push` (the ones after the cursor).
    fn note_set_aside(&self, push: &Push, new: u64) {
        let direction = match push.stream {
            PushStream::Direct => "down",
            PushStream::Broadcast => "broadcast",
        };
        self.metrics
            .set_aside
            .get_or_create(&[("direction", direction)])
            .inc_by(new);
        let markers = push.entries.iter().filter(|e| e.set_aside.is_some());
        let skip = markers.clone().count().saturating_sub(new as usize);
        for m in markers.skip(skip) {
            tracing::warn!(
                stream = push.stream.as_str(),
                id = %m.id,
                reason = m.set_aside.as_deref().unwrap_or_default(),
                "the hub set aside a message this device cannot take (in lula-hub:dead:x)"
            );
        }
    }

    /// Publishes the final status, then queues the close frame. In that order:
    /// once the close frame is queued the writer sends it and ends, and the
    /// session must return without awaiting anything else, or its caller would
    /// see the writer's end first and report it as an error.
    async fn close(&mut self) {
        let down = StatusUpdate {
            connected: Some(false),
            ..self.upstream_status()
        };
        let _ = self.device.publish(&down).await;
        let reason = CloseReason::Normal;
        let frame = CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: reason.text().into(),
        };
        let _ = self.out.try_send(Message::Close(Some(frame)));
    }
}

/// The reader's next batch; never resolves while upstream is paused.
async fn next_batch(reader: &mut Option<Reader>) -> Option<Result<Batch, UplinkError>> {
    match reader {
        Some(r) => r.batches.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; never resolves when there is no `at`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
