//! One connection to the hub, from upgrade to close.
//!
//! After the upgrade the client asks the hub for its upstream cursor (`id`),
//! subscribes to its downstream from the cursor stored on the device, then runs
//! one loop that
//! - sends upstream batches, at most `inflight_batches` unacknowledged, each
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

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use lula_protocol::StreamId;
use lula_protocol::limits::PUSH_WINDOW_ENTRIES;
use lula_protocol::message::{
    Ack, Envelope, ErrorReply, Frame, IdReply, Push, PushStream, RenewRequest, SubscribeReply,
    SubscribeRequest, XaddsReply, close, kind,
};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::auth::{AuthCallError, AuthClient, Session as AuthSession};
use crate::device::{Device, status_fields};
use crate::metrics::Metrics;
use crate::uplink::{self, Batch, UplinkError};
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
    let token = login.current.token.expose().clone();
    let ws = tokio::select! {
        _ = shutdown.cancelled() => return SessionReport { established: false, result: Ok(()) },
        ws = connect(config, &token) => ws,
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return SessionReport {
                established: false,
                result: Err(e),
            };
        }
    };
    let (sink, stream) = ws.split();
    // Acks of two push windows: the out stream's and the broadcast stream's.
    let (out, rx) = mpsc::channel(config.inflight_batches + 2 * PUSH_WINDOW_ENTRIES + 16);
    let mut writer = tokio::spawn(write_loop(sink, rx));
    let mut session = Session {
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
        subscribe_id: 0,
        renew_at: renew_time(login.current),
        renewal: Renewal::Idle,
        login,
        metrics: metrics.clone(),
        downstream_backlog: None,
    };
    let limits = match session.handshake().await {
        Ok(l) => l,
        Err(e) => {
            writer.abort();
            return SessionReport {
                established: false,
                result: Err(e),
            };
        }
    };
    metrics.sessions.inc();
    metrics.connected.set(1);
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
        let fields = [
            (status_fields::UPSTREAM, session.cursor.to_string()),
            (status_fields::UPSTREAM_ORDINAL, session.ordinal_text()),
        ];
        let _ = session.device.publish(&fields).await;
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

async fn connect(config: &Config, token: &str) -> Result<Ws, SessionError> {
    let mut request = config
        .hub_url
        .as_str()
        .into_client_request()
        .map_err(|e| SessionError::Connect(e.to_string()))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| SessionError::Unauthorized)?;
    request.headers_mut().insert("authorization", bearer);
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
        Ok(Ok((ws, _))) => Ok(ws),
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
struct Limits {
    max_entries: usize,
    max_bytes: usize,
}

struct Session<'a> {
    config: &'a Config,
    device: &'a mut Device,
    /// To the writer task.
    out: mpsc::Sender<Message>,
    stream: SplitStream<Ws>,
    next_id: u64,
    /// Sent batches awaiting their reply: (request id, last seq), oldest first.
    inflight: VecDeque<(u64, StreamId, Option<u64>)>,
    /// Last seq sent (the `prev` of the next batch).
    prev: StreamId,
    /// Last seq the hub acknowledged.
    cursor: StreamId,
    /// Its ordinal in `out:x`, when known (see `uplink::Tracker`).
    cursor_ordinal: Option<u64>,
    /// Whether acknowledged entries may leave `out:x` (not when the hub's
    /// cursor was found ahead of the device's stream).
    retire: bool,
    subscribe_id: u64,
    /// How to log in again, and the session token in use.
    login: Login<'a>,
    /// When to renew the token on this connection.
    renew_at: Instant,
    renewal: Renewal,
    metrics: Arc<Metrics>,
    /// The downstream backlog last published to the status hash.
    downstream_backlog: Option<u64>,
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

/// Where a renewal of the session token stands.
enum Renewal {
    Idle,
    /// Logging in again at lula-auth.
    LoggingIn(tokio::task::JoinHandle<Result<AuthSession, AuthCallError>>),
    /// `renew` sent with this request id and the new session.
    Sent(u64, AuthSession),
}

/// Tokens are renewed this long before they expire (at most a quarter of
/// their lifetime before), on the live connection.
const RENEW_MARGIN: Duration = Duration::from_secs(30);
/// Pause before trying a failed renewal again (the token may still be valid).
const RENEW_RETRY: Duration = Duration::from_secs(5);

/// When to renew `session` so the hub never closes the connection for expiry.
fn renew_time(session: &AuthSession) -> Instant {
    let margin = RENEW_MARGIN.min(session.ttl / 4);
    let left = session
        .expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(margin);
    Instant::now() + left
}

/// The outcome of the login of a renewal; pending while none is running.
async fn renewal_login(renewal: &mut Renewal) -> Result<AuthSession, AuthCallError> {
    match renewal {
        Renewal::LoggingIn(task) => match task.await {
            Ok(result) => result,
            Err(e) => Err(AuthCallError::Network(format!("login task: {e}"))),
        },
        _ => std::future::pending().await,
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

    /// The cursor's ordinal as published: empty when unknown.
    fn ordinal_text(&self) -> String {
        self.cursor_ordinal
            .map(|o| o.to_string())
            .unwrap_or_default()
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Queues a frame for the writer. Never waits: the queue is sized for
    /// everything the protocol lets be outstanding, so a full queue means the
    /// hub broke its push window.
    fn send(&mut self, text: String) -> Result<(), SessionError> {
        self.out.try_send(Message::text(text)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                SessionError::Protocol("outgoing queue full".into())
            }
            mpsc::error::TrySendError::Closed(_) => SessionError::Connect("writer stopped".into()),
        })
    }

    fn send_frame<P: serde::Serialize>(
        &mut self,
        kind: &str,
        id: Option<u64>,
        payload: P,
    ) -> Result<(), SessionError> {
        let id = id.map(Value::from);
        let text = Frame::new(kind, id.as_ref(), payload)
            .to_text()
            .map_err(|e| SessionError::Protocol(e.to_string()))?;
        self.send(text)
    }

    /// `id`, then `subscribe`; returns the limits to batch by.
    async fn handshake(&mut self) -> Result<Limits, SessionError> {
        let id = self.request_id();
        self.send_frame(kind::ID, Some(id), json!({}))?;
        let reply: IdReply = loop {
            let text = match tokio::time::timeout(CONNECT_TIMEOUT, self.stream.next()).await {
                Err(_) => return Err(SessionError::Connect("no reply to id".into())),
                Ok(None) => return Err(SessionError::Closed(None)),
                Ok(Some(Err(e))) => return Err(SessionError::Connect(e.to_string())),
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Err(SessionError::Closed(f.map(|f| u16::from(f.code))));
                }
                Ok(Some(Ok(_))) => continue,
            };
            let env = Envelope::parse(text.as_str())
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            if env.id.as_ref().and_then(Value::as_u64) != Some(id) {
                return Err(SessionError::Protocol(format!(
                    "expected the reply to id, got {}",
                    env.kind
                )));
            }
            if let Some(err) = env.error() {
                return Err(SessionError::Hub(err));
            }
            break env
                .payload()
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
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
        self.device
            .publish(&[(status_fields::WARNING, warning)])
            .await?;
        let downstream = self.device.downstream_cursor().await?;
        let broadcast = self.device.broadcast_cursor().await?;
        self.subscribe_id = self.request_id();
        self.send_frame(
            kind::SUBSCRIBE,
            Some(self.subscribe_id),
            SubscribeRequest {
                id: downstream,
                broadcast_after: Some(broadcast),
            },
        )?;
        tracing::info!(upstream = %self.cursor, %downstream, %broadcast, "connected to hub");
        Ok(Limits {
            max_entries,
            max_bytes: max_bytes.saturating_sub(uplink::ENVELOPE_RESERVE).max(1),
        })
    }

    async fn run(
        &mut self,
        limits: Limits,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        self.device
            .publish(&[
                (status_fields::CONNECTED, "1".into()),
                (status_fields::UPSTREAM, self.cursor.to_string()),
                (status_fields::UPSTREAM_ORDINAL, self.ordinal_text()),
                (status_fields::LAST_ERROR, String::new()),
            ])
            .await?;
        let reader_cancel = CancellationToken::new();
        let _stop_reader = reader_cancel.clone().drop_guard();
        let reader = self.device.out_reader(uplink::READ_BLOCK).await?;
        let (tx, mut batches) = mpsc::channel(1);
        tokio::spawn(uplink::read_batches(
            reader,
            self.device.clone(),
            self.metrics.clone(),
            self.cursor,
            self.cursor_ordinal,
            limits.max_entries,
            limits.max_bytes,
            tx,
            reader_cancel.clone(),
        ));

        let window = self.config.inflight_batches.max(1);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut last_heard = Instant::now();
        let mut published = self.cursor;
        let mut publish_at: Option<Instant> = None;
        let mut drain_deadline: Option<Instant> = None;
        loop {
            if drain_deadline.is_some() && self.inflight.is_empty() {
                self.close().await;
                return Ok(());
            }
            let idle_at = last_heard + self.config.idle_timeout;
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                    tracing::info!(inflight = self.inflight.len(), "shutting down: finishing batches in flight");
                    reader_cancel.cancel();
                    drain_deadline = Some(Instant::now() + self.config.drain_timeout);
                }
                _ = tokio::time::sleep_until(drain_deadline.unwrap_or(idle_at)), if drain_deadline.is_some() => {
                    tracing::warn!(inflight = self.inflight.len(), "drain timed out; unacknowledged batches will be resent at the next start");
                    self.close().await;
                    return Ok(());
                }
                msg = self.stream.next() => {
                    last_heard = Instant::now();
                    self.on_message(msg).await?;
                    if self.cursor != published && publish_at.is_none() {
                        publish_at = Some(last_heard + STATUS_DELAY);
                    }
                }
                _ = tokio::time::sleep_until(publish_at.unwrap_or(idle_at)), if publish_at.is_some() => {
                    publish_at = None;
                    published = self.cursor;
                    self.device.publish(&[
                        (status_fields::UPSTREAM, published.to_string()),
                        (status_fields::UPSTREAM_ORDINAL, self.ordinal_text()),
                    ]).await?;
                }
                batch = batches.recv(), if drain_deadline.is_none() && self.inflight.len() < window => {
                    match batch {
                        Some(Ok(batch)) => self.send_batch(batch).await?,
                        Some(Err(e)) => return Err(e.into()),
                        None => return Err(SessionError::Protocol("upstream reader stopped".into())),
                    }
                }
                _ = tokio::time::sleep_until(idle_at) => return Err(SessionError::Idle),
                _ = tokio::time::sleep_until(self.renew_at), if matches!(self.renewal, Renewal::Idle) && drain_deadline.is_none() => {
                    let (auth, client, secret, current) = (
                        self.login.auth.clone(),
                        self.config.client_id.clone(),
                        self.login.secret.to_owned(),
                        self.login.current.clone(),
                    );
                    tracing::debug!("renewing the session token");
                    self.renewal = Renewal::LoggingIn(tokio::spawn(async move {
                        // Renewing by the live session costs lula-auth no
                        // bcrypt; a full login is the fallback (an older
                        // lula-auth, or a session it no longer knows).
                        match auth.renew(&current).await {
                            Ok(renewed) => Ok(renewed),
                            Err(e) => {
                                tracing::debug!(error = %e, "renewal refused; logging in");
                                auth.login(&client, &secret).await
                            }
                        }
                    }));
                }
                logged_in = renewal_login(&mut self.renewal) => match logged_in {
                    Ok(new) => {
                        let id = self.request_id();
                        let renew = RenewRequest { token: new.token.expose().clone() };
                        self.send_frame(kind::RENEW, Some(id), renew)?;
                        self.renewal = Renewal::Sent(id, new);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the session token yet; retrying");
                        self.renewal = Renewal::Idle;
                        self.renew_at = Instant::now() + RENEW_RETRY;
                    }
                },
                _ = heartbeat.tick() => {
                    published = self.cursor;
                    self.device.publish(&[
                        (status_fields::CONNECTED, "1".into()),
                        (status_fields::UPSTREAM, self.cursor.to_string()),
                (status_fields::UPSTREAM_ORDINAL, self.ordinal_text()),
                    ]).await?;
                }
            }
        }
    }

    async fn send_batch(&mut self, batch: Batch) -> Result<(), SessionError> {
        let id = self.request_id();
        let text = format!(
            r#"{{"type":"{}","id":{id},"payload":{{"prev":"{}","entries":{}}}}}"#,
            kind::XADDS,
            self.prev,
            batch.entries_json
        );
        self.send(text)?;
        self.metrics
            .upstream_batch_entries
            .observe(batch.count as f64);
        self.inflight
            .push_back((id, batch.last, batch.last_ordinal));
        self.prev = batch.last;
        Ok(())
    }

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
        let env =
            Envelope::parse(text.as_str()).map_err(|e| SessionError::Protocol(e.to_string()))?;
        if env.kind == kind::PUSH {
            let push: Push = env
                .payload()
                .map_err(|e| SessionError::Protocol(format!("bad push: {e}")))?;
            return self.on_push(push).await;
        }
        if env.kind == kind::ERR {
            let err = env
                .error()
                .unwrap_or_else(|| ErrorReply::bad_request("unspecified"));
            return Err(SessionError::Protocol(format!(
                "hub could not parse a frame: {}",
                err.message
            )));
        }
        let id = env.id.as_ref().and_then(Value::as_u64);
        if let Renewal::Sent(renew_id, _) = &self.renewal
            && id == Some(*renew_id)
        {
            let Renewal::Sent(_, new) = std::mem::replace(&mut self.renewal, Renewal::Idle) else {
                return Ok(());
            };
            match env.error() {
                None => {
                    let expires = new
                        .expires_at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    self.renew_at = renew_time(&new);
                    *self.login.current = new;
                    self.metrics.renewals.inc();
                    self.device
                        .publish(&[(status_fields::SESSION_EXPIRES_AT, expires.to_string())])
                        .await?;
                    tracing::debug!("session token renewed on the live connection");
                }
                Some(err) => {
                    // The hub will close at expiry; the next connection logs in.
                    tracing::warn!(status = err.status, message = %err.message, "hub refused the renewed token");
                    self.renew_at = Instant::now() + RENEW_RETRY;
                }
            }
            return Ok(());
        }
        if let Some(err) = env.error() {
            return Err(SessionError::Hub(err));
        }
        match id {
            Some(id) if Some(id) == self.inflight.front().map(|(i, _, _)| *i) => {
                let (_, last, last_ordinal) =
                    self.inflight
                        .pop_front()
                        .unwrap_or((id, self.cursor, self.cursor_ordinal));
                let reply: XaddsReply = env
                    .payload()
                    .map_err(|e| SessionError::Protocol(format!("bad xadds reply: {e}")))?;
                // The hub's cursor can be ahead of our batch only if another
                // daemon with this identity sent more; never behind it.
                if reply.id < last {
                    return Err(SessionError::Protocol(format!(
                        "hub acknowledged {} for a batch ending at {last}",
                        reply.id
                    )));
                }
                self.cursor = reply.id;
                if self.retire {
                    self.retire_acknowledged(last, reply.added + reply.duplicates)
                        .await;
                }
                // Ahead of our batch only if another daemon sent more: then we
                // do not know where in out:x the cursor is.
                self.cursor_ordinal = if reply.id == last { last_ordinal } else { None };
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
            Some(id) if id == self.subscribe_id => {
                let reply: SubscribeReply = env
                    .payload()
                    .map_err(|e| SessionError::Protocol(format!("bad subscribe reply: {e}")))?;
                if reply.broadcast_after.is_none() {
                    tracing::warn!(
                        "the hub does not push broadcasts (older than broadcasts?); direct messages still arrive"
                    );
                }
                Ok(())
            }
            _ => Err(SessionError::Protocol(format!(
                "unexpected {} frame",
                env.kind
            ))),
        }
    }

    /// Stores a pushed frame with its stream's cursor in one script, then
    /// acknowledges it on that stream.
    async fn on_push(&mut self, push: Push) -> Result<(), SessionError> {
        let stream = push.stream;
        if stream == PushStream::Direct
            && let Some(backlog) = push.backlog
            && self.downstream_backlog != Some(backlog)
        {
            // Only when it changes: a caught-up device gets 0 with every push.
            self.downstream_backlog = Some(backlog);
            self.metrics.downstream_backlog.set(backlog as i64);
            self.device
                .publish(&[(status_fields::DOWNSTREAM_BACKLOG, backlog.to_string())])
                .await?;
        }
        // Gaps are reported on the broadcast stream only (the hub reports
        // none on the out stream, whose retention is the cloud's business).
        let gap = push.gap.filter(|_| stream == PushStream::Broadcast);
        if push.entries.is_empty() && gap.is_none() {
            return Ok(());
        }
        let stored = self.device.store(stream, push.entries, gap).await?;
        let counter = match stream {
            PushStream::Direct => &self.metrics.downstream_entries,
            PushStream::Broadcast => &self.metrics.broadcast_entries,
        };
        counter.inc_by(stored.added);
        if let (Some(after), Some(gap)) = (stored.missed_after, gap) {
            self.metrics.broadcast_gaps.inc();
            tracing::warn!(
                stream = stream.as_str(),
                %after,
                up_to = %gap,
                "missed broadcasts: the hub deleted them (retention) before this device received them"
            );
        }
        self.send_frame(
            kind::ACK,
            None,
            Ack {
                id: stored.cursor,
                stream,
            },
        )
    }

    /// Publishes the final status, then queues the close frame. In that order:
    /// once the close frame is queued the writer sends it and ends, and the
    /// session must return without awaiting anything else, or its caller would
    /// see the writer's end first and report it as an error.
    async fn close(&mut self) {
        let _ = self
            .device
            .publish(&[
                (status_fields::CONNECTED, "0".into()),
                (status_fields::UPSTREAM, self.cursor.to_string()),
                (status_fields::UPSTREAM_ORDINAL, self.ordinal_text()),
            ])
            .await;
        let frame = CloseFrame {
            code: CloseCode::from(close::NORMAL),
            reason: "client shutting down".into(),
        };
        let _ = self.out.try_send(Message::Close(Some(frame)));
    }
}

/// Sends queued frames, coalescing whatever is queued into one flush. Ends after
/// a close frame, when the queue closes, or on a socket error.
async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Message>,
) -> Result<(), tungstenite::Error> {
    while let Some(msg) = rx.recv().await {
        let mut closing = matches!(msg, Message::Close(_));
        sink.feed(msg).await?;
        while !closing && let Ok(more) = rx.try_recv() {
            closing = matches!(more, Message::Close(_));
            sink.feed(more).await?;
        }
        sink.flush().await?;
        if closing {
            break;
        }
    }
    let _ = sink.close().await;
    Ok(())
}
