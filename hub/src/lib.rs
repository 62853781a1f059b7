//! lula-hub: accepts authenticated device WebSockets and moves Redis stream
//! entries both ways, exactly once.
//!
//! Upstream, each device's entries are appended to `lula-hub:in:x` by one Lua
//! script per batch that deduplicates by the entry's device seq against a saved
//! cursor, atomically. Downstream, entries cloud services add to
//! `lula-hub:out:<client>:x` are pushed to the device, which stores them and its
//! cursor atomically and acknowledges; so are the fleet's broadcasts, which
//! every connection reads from the one `lula-hub:broadcast:x` after the
//! device's own broadcast cursor. The hub keeps no state of its own: every
//! cursor lives in Redis (upstream) or on the device (downstream), so a hub can
//! be killed at any moment and any replica can take over.
//!
//! The cloud Redis is one server or, with `--redis-cluster`, a Redis Cluster
//! (`lula_runtime::redis`); with `--ingest-partitions` the in stream is split
//! into partitions spread over its masters (`lula_protocol::keys::IngestLayout`).
//!
//! # Layout
//! - [`config`]: [`Config`], the hub's settings.
//! - [`session`]: token and session checks at upgrade time.
//! - [`ingest`]: the exactly-once append script, one group commit per partition.
//! - [`admin`]: the admin listener: probes, metrics, the fleet view and page.
//! - [`fleet`]: what each hub records of its devices, and the fleet view
//!   read back from it (`lula-hub fleet`, `GET /fleet`).
//! - [`fleet_page`]: the fleet page, an HTML view of `GET /fleet`.
//! - [`live`]: live connections by device, so revocation and expiry reach them.
//! - [`metrics`]: Prometheus metrics at `GET /metrics`.
//! - [`rpc`]: asking one device and waiting for its answer (`lula-hub call`).
//! - [`broadcast`]: the fleet's broadcast stream: reads with gap detection,
//!   trimming to the retention.
//! - [`downstream`]: server push and lula `xread`, woken by keyspace
//!   notifications (from every master of a cluster) instead of a blocking
//!   read per device.
//! - `connection`: one device's socket, its requests, pings and close codes.
//! - [`error`]: [`HubError`], HTTP refusals before an upgrade.
//!
//! The wire protocol is documented in `shared/PROTOCOL.md`.

pub mod admin;
pub mod broadcast;
pub mod config;
mod connection;
pub mod downstream;
pub mod error;
pub mod fleet;
pub mod fleet_page;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod rpc;
pub mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lula_protocol::ClientId;
use lula_protocol::keys::{AuthKeys, HubKeys};
use lula_runtime::redis::{RedisConn, RedisTarget};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

pub use config::Config;
pub use error::HubError;
use session::Authenticator;

/// Bytes a connection reads from its socket at a time. tungstenite zero-fills
/// this much of its read buffer on every read, so the default (128 KiB) costs
/// that much resident memory per idle device; larger frames still arrive whole,
/// in more reads.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Shared by every request and connection.
pub struct AppState {
    /// Settings.
    pub config: Config,
    /// Hub key names.
    pub keys: HubKeys,
    /// Cheap-to-clone multiplexed connection for ordinary (non-blocking)
    /// commands: to one Redis, or to a Redis Cluster.
    pub redis: RedisConn,
    /// Where `redis` goes, for the downstream watcher's pub/sub connections.
    pub redis_target: RedisTarget,
    /// Downstream readers waiting for their out stream to change.
    pub wakers: Arc<downstream::Wakers>,
    /// Group commit of every connection's batches.
    pub ingestor: ingest::Ingestor,
    /// Live connections by device.
    pub live: Arc<live::Live>,
    /// What the hub counts (`GET /metrics`).
    pub metrics: Arc<metrics::HubMetrics>,
    /// Token verification.
    pub auth: Authenticator,
    /// lula-auth's Redis (sessions, verification keys): `redis` itself unless
    /// `--auth-redis-url` names another.
    pub auth_redis: RedisConn,
    /// Cancelled when the hub shuts down; connections close with 1001.
    pub shutdown: CancellationToken,
    /// Cancelled when the hub was told to stop, `--drain-delay` before
    /// `shutdown`: `/readyz` answers 503 from then on.
    pub draining: CancellationToken,
    /// This replica's name in the fleet view.
    pub hub_id: String,
    /// Connection tasks, awaited on shutdown (axum does not track upgraded sockets).
    pub tracker: TaskTracker,
    next_conn: AtomicU64,
}

impl AppState {
    /// Builds the state. Connects to Redis lazily, so the hub starts (and
    /// answers 503) while Redis is still coming up.
    pub fn new(config: Config, shutdown: CancellationToken) -> anyhow::Result<Arc<Self>> {
        Self::build(config, shutdown.clone(), shutdown)
    }

    /// [`AppState::new`] with readiness ending (`draining`) before the stop.
    fn build(
        config: Config,
        draining: CancellationToken,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let redis_target = config.redis_target();
        // Requests fail within --redis-timeout while Redis is down (503),
        // rather than wait on reconnects (see lula_runtime::redis).
        let redis = redis_target.connect_lazy().context("parse --redis-url")?;
        let auth_redis = match &config.auth_redis_url {
            Some(_) => config
                .auth_redis_target()
                .connect_lazy()
                .context("parse --auth-redis-url")?,
            None => redis.clone(),
        };
        let keys = HubKeys::new(config.prefix.clone());
        let hub_id = config.hub_id.clone().unwrap_or_else(hostname);
        let layout = config.ingest_layout();
        let metrics = Arc::new(metrics::HubMetrics::default());
        if config.redis_cluster
            && let Some(p) = layout.cross_slot_partition()
        {
            anyhow::bail!(
                "--prefix {:?} puts {} and {} in different Redis Cluster slots; use a prefix without braces",
                config.prefix,
                layout.cursors(p),
                layout.in_stream(p)
            );
        }
        Ok(Arc::new(AppState {
            ingestor: ingest::Ingestor::start(redis.clone(), &keys, layout, metrics.clone()),
            metrics,
            keys,
            auth: Authenticator::with_key_cache_ttl(
                AuthKeys::new(config.auth_prefix.clone()),
                config.key_cache_ttl,
            ),
            config,
            redis,
            redis_target,
            auth_redis,
            wakers: Arc::default(),
            live: Arc::default(),
            hub_id,
            draining,
            shutdown,
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
        }))
    }
}

/// What devices need: `GET /` (the WebSocket upgrade). The rest is on the
/// admin listener ([`admin::app`]).
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(upgrade))
        .fallback(|| async { HubError::NotFound })
        .with_state(state)
}

/// [`run_with_admin`] without an admin listener: the admin routes are served
/// on the device port (the layout before `--admin-listen`, deprecated).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_admin(listener, None, config, shutdown).await
}

/// Serves devices on `listener` and the admin routes on `admin` until
/// `shutdown` is cancelled, then (after `--drain-delay` with `/readyz`
/// answering 503) closes every device connection with 1001 (after the
/// request it is handling) and returns once all are closed.
pub async fn run_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let serve_options = config.serve.clone();
    let mut config = config;
    if config.hub_id.is_none() {
        let port = listener.local_addr().context("local address")?.port();
        config.hub_id = Some(format!("{}:{port}", hostname()));
    }
    let draining = shutdown;
    let shutdown = lula_runtime::stop_after(&draining, serve_options.drain_delay);
    let state = AppState::build(config, draining, shutdown.clone())?;
    let tracker = state.tracker.clone();
    tracker.spawn(downstream::watch(
        state.redis_target.clone(),
        state.redis.clone(),
        downstream::Watched {
            out_pattern: state.keys.out_stream_pattern(),
            broadcast_pattern: state.keys.broadcast_stream_pattern(),
            wakers: state.wakers.clone(),
            revocations: state.config.auth_redis_url.is_none().then(|| {
                session::Revocations::new(
                    AuthKeys::new(state.config.auth_prefix.clone()),
                    state.auth_redis.clone(),
                )
            }),
            connections: state.keys.connected_channel(),
            live: state.live.clone(),
        },
        state.config.downstream_poll,
        shutdown.clone(),
    ));
    if !state.config.broadcast_retention.is_zero() {
        tracker.spawn(broadcast::retain(
            state.redis.clone(),
            state.keys.broadcast_stream(),
            state.config.broadcast_retention,
            state.config.broadcast_trim_interval,
            shutdown.clone(),
        ));
    }
    if let Some(url) = &state.config.auth_redis_url {
        // lula-auth announces revocations on its own Redis.
        let client = redis::Client::open(url.as_str()).context("parse --auth-redis-url")?;
        tracker.spawn(downstream::watch_revocations(
            client,
            session::Revocations::new(
                AuthKeys::new(state.config.auth_prefix.clone()),
                state.auth_redis.clone(),
            ),
            state.live.clone(),
            shutdown.clone(),
        ));
    }
    let devices = match admin {
        Some(admin) => {
            tracker.spawn(admin::serve(admin, state.clone(), shutdown.clone()));
            app(state)
        }
        None => app(state.clone()).merge(admin::routes(state)),
    };
    lula_runtime::serve(listener, devices, shutdown, serve_options)
        .await
        .context("serve")?;
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// The Prometheus text exposition of [`metrics::HubMetrics`].
async fn metrics_text(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    lula_runtime::metrics::response(state.metrics.render(), &headers)
}

/// Liveness: the process serves requests.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: not draining, Redis answers (on a cluster, every node) and this hub's ingest
/// layout is the one recorded there, so devices connecting here can sync. A
/// load balancer stops sending devices to a hub that cannot reach its Redis,
/// and a rollout with a mistaken `--ingest-partitions` stalls at its first pod.
async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, HubError> {
    if state.draining.is_cancelled() {
        return Err(HubError::Draining);
    }
    redis::cmd("PING")
        .query_async::<()>(&mut state.redis.clone())
        .await?;
    state.ingestor.check_layout().await?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

/// This machine's name: `$HOSTNAME` (a pod's name on Kubernetes), else the
/// kernel's, else `hub`.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hub".to_owned())
}

#[derive(Deserialize, Default)]
struct FleetQuery {
    client: Option<String>,
    limit: Option<usize>,
}

/// `GET /fleet[?client=<id>][&limit=N]` with `Authorization: Bearer <admin
/// token>`: the fleet view as JSON (`{"devices": [...]}`, see
/// [`fleet::DeviceView`]). 404 unless the hub has an admin token, so a hub
/// without one exposes nothing.
async fn fleet_view(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, HubError> {
    fleet_page::authorize(&state, &headers)?;
    let q: FleetQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or_default())
        .map_err(|e| HubError::BadRequest(format!("bad query: {e}")))?;
    let client = q
        .client
        .map(|c| {
            c.parse::<ClientId>()
                .map_err(|e| HubError::BadRequest(format!("client: {e}")))
        })
        .transpose()?;
    let devices = fleet::list(
        &state.redis,
        &state.keys,
        state.ingestor.layout(),
        &fleet::Query {
            client,
            limit: q.limit.unwrap_or(0),
        },
    )
    .await?;
    Ok(Json(serde_json::json!({ "devices": devices })))
}

/// Compares without an early exit, so the time taken does not tell how much
/// of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TokenQuery {
    session_token: Option<String>,
    access_token: Option<String>,
}

/// The token from `Authorization: Bearer`, else `?sessionToken=`, else
/// `?accessToken=` (what the Node lula-client sends).
fn token_from(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned());
    bearer.filter(|t| !t.is_empty()).or_else(|| {
        let q: TokenQuery = serde_urlencoded::from_str(query?).unwrap_or_default();
        q.session_token.or(q.access_token).filter(|t| !t.is_empty())
    })
}

/// KEYS[1] the device's connection counter; ARGV[1] the announcement channel,
/// ARGV[2] the client. Takes the next generation and announces it, in one trip.
static TAKE_OVER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local g = redis.call('INCR', KEYS[1]) \
         redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. g) \
         return g",
    )
});

/// Makes the new connection of `client` its only one: takes the device's next
/// connection generation from Redis and announces it, so every replica closes
/// the device's older connections (see [`live`]). Returns the generation, 0
/// when several connections per device are allowed.
async fn take_over(state: &AppState, client: &ClientId) -> Result<u64, HubError> {
    if !state.config.one_connection_per_device {
        return Ok(0);
    }
    let generation: u64 = TAKE_OVER
        .key(state.keys.connection_generation(client))
        .arg(state.keys.connected_channel())
        .arg(client.as_str())
        .invoke_async(&mut state.redis.clone())
        .await?;
    Ok(generation)
}

async fn upgrade(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HubError> {
    let result = authenticated_upgrade(state.clone(), headers, query, ws).await;
    if let Err(e) = &result {
        let reason = match e {
            HubError::MissingToken | HubError::Token(_) => "unauthorized",
            HubError::NotUpgrade(_) => "not_websocket",
            HubError::Redis(_) => "unavailable",
            _ => "other",
        };
        metrics::HubMetrics::count(&state.metrics.refused, "reason", reason);
    }
    result
}

async fn authenticated_upgrade(
    state: Arc<AppState>,
    headers: HeaderMap,
    query: Option<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HubError> {
    // Authenticate before looking at the upgrade, so an unauthenticated caller
    // learns nothing but 401.
    let token = token_from(&headers, query.as_deref()).ok_or(HubError::MissingToken)?;
    let claims = state
        .metrics
        .timed(
            "authenticate",
            state
                .auth
                .authenticate(&mut state.auth_redis.clone(), &token),
        )
        .await?;
    let ws = ws?;
    let generation = state
        .metrics
        .timed("take_over", take_over(&state, &claims.sub))
        .await?;
    let conn_id = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", client = %claims.sub, conn = conn_id);
    let limit = state.config.max_frame_bytes;
    let tracker = state.tracker.clone();
    Ok(ws
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            tracker.track_future(
                connection::serve(socket, claims, generation, conn_id, state).instrument(span),
            )
        })
        .into_response())
}
