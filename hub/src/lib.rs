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
//! - [`config`]: [`Config`], the hub's settings; [`AppState`] (`state`), what
//!   every request and connection shares.
//! - `upgrade`: `GET /`, the token check and the WebSocket upgrade;
//!   `take_over`: the device's connection generation (one live connection per
//!   device). [`error`]: [`HubError`], the HTTP refusals (the only HTTP error
//!   type; nothing below the routes returns it).
//! - [`admin`]: the admin listener (`--admin-listen`) and its routes:
//!   `health`: `/healthz`, `/readyz`, `/metrics`; `fleet_route`:
//!   `GET /fleet`; [`fleet_page`]: `GET /fleet/`, an HTML view of it, and
//!   the admin token check both share.
//! - `connection`: one device's socket, a `select!` over named events. Each
//!   request kind has a method, by family: `connection::batches` (`xadd`,
//!   `xadds`, `id`), `connection::pushes` (`subscribe`, `ack`, `xread`),
//!   `connection::renewal` (`renew`, session expiry).
//! - [`session`]: token and session checks ([`session::AuthError`]).
//! - [`revocation`]: where 4003 and 4002 closes come from: revocation and
//!   take-over announcements, the session checks after (re)subscribing.
//! - [`live`]: live connections by device, so those closes reach them.
//! - [`ingest`]: the exactly-once append script, one group commit per partition.
//! - [`link`]: compressed frames (issue 16): the upgrade's agreement and the
//!   per-direction halves of a connection, with its link byte counts.
//! - [`downstream`]: server push and lula `xread`, woken by keyspace
//!   notifications (from every master of a cluster) instead of a blocking
//!   read per device; [`backlog`]: counting what waits after a cursor;
//!   `push_budget`: the hub-wide bytes of pushes read and encoded at once.
//! - [`broadcast`]: the fleet's broadcast stream: reads with gap detection,
//!   trimming to the retention.
//! - [`dead`]: the cloud's dead letters: direct messages and broadcasts a
//!   device cannot take, recorded once in `lula-hub:dead:x`.
//! - [`fleet`]: what each hub records of its devices, and the fleet view
//!   read back from it (`lula-hub fleet`, `GET /fleet`).
//! - [`metrics`]: Prometheus metrics at `GET /metrics`.
//! - [`rpc`]: asking one device and waiting for its answer (`lula-hub call`).
//!
//! Modules depend downward only (no cycles): `admin` uses the admin routes,
//! `fleet_route` uses `fleet_page`; routes and `connection` use the rest;
//! `revocation` and `downstream` use `live` and `session`; `fleet` and
//! `downstream` share `backlog`.
//!
//! The wire protocol is documented in `shared/PROTOCOL.md`.

pub mod admin;
pub mod backlog;
pub mod broadcast;
pub mod config;
mod connection;
pub mod dead;
pub mod downstream;
pub mod error;
pub mod fleet;
pub mod fleet_page;
mod fleet_route;
mod health;
pub mod import_node;
pub mod ingest;
pub mod legacy_session;
pub mod link;
pub mod live;
pub mod metrics;
pub mod parts_budget;
mod push_budget;
pub mod revocation;
pub mod rpc;
pub mod session;
mod state;
mod take_over;
mod upgrade;

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use lula_protocol::keys::AuthKeys;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::HubError;
pub use lula_runtime::Clock;
pub use state::AppState;

/// What devices need: `GET /` (the WebSocket upgrade). The rest is on the
/// admin listener ([`admin::app`]).
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(upgrade::upgrade))
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
        config.hub_id = Some(format!("{}:{port}", state::hostname()));
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
        tracker.spawn(revocation::watch(
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
            tracker.spawn(lula_runtime::serve_admin(
                admin,
                admin::app(state.clone()),
                shutdown.clone(),
            ));
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
