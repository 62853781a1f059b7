//! lula-auth: one-time device registration gated by a provisioned TOTP secret,
//! then login with the device's own secret, giving signed, revocable session
//! tokens that lula-hub verifies.
//!
//! The flow:
//! 1. An operator provisions a device ([`provision`]): a random `otpSecret` and a
//!    registration deadline in `lula-auth:client:<client>:h`.
//! 2. The device registers once (`POST /register`), proving the secret with a
//!    current TOTP code and handing over its own secret, stored as bcrypt.
//! 3. The device logs in (`POST /login`) with its secret and gets an EdDSA JWT
//!    naming it and a session id; the session is recorded in Redis with the
//!    token's TTL ([`sessions`]). Hubs verify the signature with the public key
//!    this service publishes in Redis ([`signing`]) and check the session still
//!    exists, so `POST /logout` (or re-provisioning) revokes at once.
//!
//! Every instance is stateless apart from its signing key, whose public half it
//! publishes, so any number of replicas can run behind a load balancer.
//!
//! # Layout
//! - [`config`]: [`Config`] and the [`Clock`](config::Clock) tests drive.
//! - [`routes`]: one module per endpoint.
//! - [`admin`]: the admin listener: probes and metrics.
//! - [`provision`]: the operator's step and the client record.
//! - [`import_node`]: the one-off import of the Node lula-auth's records.
//! - [`sessions`]: session records, revocation, token verification.
//! - [`signing`]: the Ed25519 key and its publication.
//! - [`otp`]: TOTP codes and `otpauth://` URIs.
//! - [`password`]: bcrypt off the runtime.
//! - [`throttle`]: failed-attempt limits kept in Redis.
//! - [`metrics`]: Prometheus metrics at `GET /metrics`.
//! - [`body`]: JSON or form-urlencoded bodies.
//! - [`error`]: [`AuthError`], the one error type, and its HTTP answers.

pub mod admin;
pub mod body;
pub mod config;
pub mod error;
pub mod import_node;
pub mod metrics;
pub mod otp;
pub mod password;
pub mod provision;
pub mod routes;
pub mod sessions;
pub mod signing;
pub mod throttle;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use lula_protocol::keys::AuthKeys;
use lula_runtime::redis::{RedisConn, RedisTarget};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::AuthError;
use password::Hasher;
use signing::Signer;

/// Pause before publishing the key again after Redis refused it.
const PUBLISH_RETRY: Duration = Duration::from_secs(2);

/// Shared by every request.
pub struct AppState {
    /// Settings.
    pub config: Config,
    /// Key names.
    pub keys: AuthKeys,
    /// Cheap-to-clone multiplexed Redis connection (one server or a cluster).
    pub redis: RedisConn,
    /// The token signing key.
    pub signer: Signer,
    /// bcrypt, bounded and off the runtime.
    pub hasher: Hasher,
    /// What lula-auth counts (`GET /metrics`).
    pub metrics: std::sync::Arc<metrics::AuthMetrics>,
    /// Cancelled when the service was told to stop: `/readyz` answers 503
    /// while it still serves for `--drain-delay`.
    pub draining: CancellationToken,
    key_published: AtomicBool,
}

impl AppState {
    /// Builds the state. Connects to Redis lazily, so lula-auth starts (and
    /// answers 503) while Redis is still coming up.
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        // Requests fail within redis_timeout while Redis is down (503),
        // rather than wait on reconnects (see lula_runtime::redis).
        let redis = RedisTarget {
            url: config.redis_url.clone(),
            cluster: config.redis_cluster,
            timeout: config.redis_timeout,
        }
        .connect_lazy()
        .context("parse --redis-url")?;
        let signer = match &config.signing_key_pem {
            Some(pem) => Signer::from_pem(pem.expose())?,
            None => Signer::generate(),
        };
        let metrics = Arc::new(metrics::AuthMetrics::default());
        Ok(Arc::new(AppState {
            keys: AuthKeys::new(config.prefix.clone()),
            hasher: Hasher::with_slots(
                config.bcrypt_cost,
                config.bcrypt_concurrency,
                config.bcrypt_max_wait,
                metrics.clone(),
            ),
            metrics,
            config,
            redis,
            signer,
            draining: CancellationToken::new(),
            key_published: AtomicBool::new(false),
        }))
    }

    /// Publishes the verification key.
    pub async fn publish_key(&self) -> Result<(), AuthError> {
        self.signer
            .publish(&mut self.redis.clone(), &self.keys, self.config.token_ttl)
            .await?;
        self.key_published.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Makes sure hubs can verify a token before one is handed out.
    pub async fn ensure_key_published(&self) -> Result<(), AuthError> {
        if self.key_published.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.publish_key().await
    }
}

/// What devices need: `POST /register`, `/login`, `/logout`, `/renew`. The
/// probes and metrics are on the admin listener ([`admin::app`]).
pub fn app(state: Arc<AppState>) -> Router {
    device_routes(state, None)
}

/// The device routes, plus `admin` merged in (the layout without an admin
/// listener).
fn device_routes(state: Arc<AppState>, admin: Option<Router>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/register", post(routes::register::register))
        .route("/login", post(routes::login::login))
        .route("/logout", post(routes::logout::logout))
        .route("/renew", post(routes::renew::renew))
        .with_state(state)
        .merge(admin.unwrap_or_default())
        .fallback(|| async { AuthError::NotFound })
        .method_not_allowed_fallback(|| async { AuthError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limit))
}

/// [`run_with_admin`] without an admin listener: the probes and metrics are
/// served on the device port (the layout before `--admin-listen`, deprecated).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_admin(listener, None, config, shutdown).await
}

/// Serves devices on `listener` and the admin routes on `admin` until
/// `shutdown` is cancelled, keeping the verification key published meanwhile.
pub async fn run_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.check()?;
    let state = AppState::new(config)?;
    tracing::info!(kid = state.signer.kid(), "token signing key");
    let publisher = tokio::spawn(keep_key_published(state.clone(), shutdown.clone()));
    let serve_options = state.config.serve.clone();
    let stop = lula_runtime::stop_after(&shutdown, serve_options.drain_delay);
    let draining = state.draining.clone();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        signal.cancelled().await;
        draining.cancel();
    });
    let (router, admin) = match admin {
        Some(admin) => (
            app(state.clone()),
            Some(tokio::spawn(lula_runtime::serve_admin(
                admin,
                admin::app(state),
                stop.clone(),
            ))),
        ),
        None => (
            device_routes(state.clone(), Some(admin::routes(state))),
            None,
        ),
    };
    let served = lula_runtime::serve(listener, router, stop, serve_options)
        .await
        .context("serve");
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    shutdown.cancel();
    let _ = publisher.await;
    served
}

/// Refreshes the published key every [`signing::KEY_REFRESH`] (sooner after a
/// failure) until shutdown.
async fn keep_key_published(state: Arc<AppState>, shutdown: CancellationToken) {
    loop {
        let wait = match state.publish_key().await {
            Ok(()) => signing::KEY_REFRESH,
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish the token verification key; retrying");
                PUBLISH_RETRY
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
