//! The cloud side of one scenario: its own Redis, lula-auth in this process,
//! and lula-hub as a child process. Dropping a [`Cloud`] stops all three.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{StreamExt as _, TryStreamExt as _};
use lula_protocol::ClientId;
use lula_protocol::keys::{AuthKeys, HubKeys};
use lula_testkit::RedisServer;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::hub_process::HubProcess;
use crate::load;

/// Provisioning calls in flight at once.
const PROVISION_CONCURRENCY: usize = 64;

/// Starts a `redis-server` on a free port off the runtime (starting one
/// blocks until it answers `PING`); its panics become errors.
pub async fn start_redis() -> anyhow::Result<RedisServer> {
    tokio::task::spawn_blocking(RedisServer::start)
        .await
        .map_err(|e| anyhow::anyhow!("start redis-server: {e}"))
}

/// A task on the current runtime, cancelled and aborted when dropped.
pub struct Task {
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Task {
    /// Runs `make(cancel)` as a task.
    pub fn spawn<F, Fut>(make: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(make(cancel.clone()));
        Task { cancel, handle }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.handle.abort();
    }
}

/// Cloud Redis, lula-auth and lula-hub.
pub struct Cloud {
    /// Hub key names (default prefix).
    pub keys: HubKeys,
    /// Auth key names (default prefix).
    pub auth_keys: AuthKeys,
    /// lula-auth's base URL.
    pub auth_url: String,
    /// The hub child process.
    pub hub: HubProcess,
    conn: MultiplexedConnection,
    redis_pid: u32,
    _auth: Task,
    // Last: the hub and auth go before their Redis.
    redis: RedisServer,
}

impl Cloud {
    /// Starts Redis, lula-auth (bcrypt cost 4: registration must not dominate
    /// the setup of a thousand devices) and the hub from `hub_exe`.
    pub async fn start(hub_exe: &Path) -> anyhow::Result<Cloud> {
        Self::start_with(hub_exe, None).await
    }

    /// Like [`Cloud::start`], with the hub's `--max-frame-bytes` when given.
    pub async fn start_with(
        hub_exe: &Path,
        max_frame_bytes: Option<usize>,
    ) -> anyhow::Result<Cloud> {
        let redis = start_redis().await?;
        let mut conn = load::connect(&redis.url()).await?;
        let redis_pid = load::redis_pid(&mut conn).await?;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind lula-auth")?;
        let auth_url = format!("http://{}", listener.local_addr()?);
        let mut auth_config = lula_auth::Config::new(redis.url());
        auth_config.bcrypt_cost = 4;
        let auth = Task::spawn(move |cancel| lula_auth::run(listener, auth_config, cancel));

        let hub = HubProcess::spawn_with(hub_exe, &redis.url(), max_frame_bytes).await?;
        Ok(Cloud {
            keys: HubKeys::default(),
            auth_keys: AuthKeys::default(),
            auth_url,
            hub,
            conn,
            redis_pid,
            _auth: auth,
            redis,
        })
    }

    /// The cloud Redis URL.
    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    /// A connection to the cloud Redis (multiplexed: clones share it).
    pub fn conn(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    /// The cloud Redis server's pid.
    pub fn redis_pid(&self) -> u32 {
        self.redis_pid
    }

    /// Provisions every client, a few at a time; returns their OTP secrets in order.
    pub async fn provision(&self, clients: &[ClientId]) -> anyhow::Result<Vec<String>> {
        futures_util::stream::iter(clients)
            .map(|client| {
                let mut conn = self.conn();
                async move {
                    lula_auth::provision::provision(
                        &mut conn,
                        &self.auth_keys,
                        client,
                        Duration::from_secs(3600),
                        false,
                    )
                    .await
                    .map(|p| p.otp_secret)
                    .map_err(|e| anyhow::anyhow!("provision {client}: {e}"))
                }
            })
            .buffered(PROVISION_CONCURRENCY)
            .try_collect()
            .await
    }

    /// What the hub logged at warn or error level, as a note for the report.
    pub fn hub_log_note(&self, scenario: &str) -> Option<String> {
        self.hub.log_summary().map(|(n, first)| {
            format!("{scenario}: the hub logged {n} warning(s)/error(s); first: {first}")
        })
    }
}
