//! Everything the suite runs: the hub's Redis and the device Redis servers
//! (AOF, `appendfsync always`), lula-auth and lula-hub as child processes, and
//! per device a fault proxy to the hub, a proxy to lula-auth and a
//! lula-client daemon process.
//!
//! ```text
//! run dir/
//!   events.log                 the timeline (faults, restarts, phases)
//!   report.json, report.txt    the result
//!   logs/auth.log, hub.log     every start of the service appends here
//!   logs/dev-01.log            the daemon; twins: dev-01.twin-1.log, ...
//!   devices/dev-01/state/      the daemon's state dir (identity.json)
//!   devices/dev-01/twin-1/     a twin's state dir: a copy of identity.json
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use anyhow::Context as _;
use lula_protocol::ClientId;
use lula_protocol::keys::{AuthKeys, DeviceKeys, HubKeys};
use lula_testkit::{RedisOptions, RedisServer};
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::children::Service;
use crate::config::RunConfig;
use crate::events::Events;
use crate::faults::FaultCounts;
use crate::proxy::{self, ProxyControl, ProxyOptions};
use crate::services::{RunClientArgs, ServeAuthArgs, ServeHubArgs};

/// Longest wait for every daemon's first connection at setup.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopped daemon may take to drain and exit.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// A connection with timeouts long enough for a loaded machine reading long
/// streams (redis-rs gives up after 500 ms by default).
pub async fn connect(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// A `redis-server` with AOF that can be killed and restarted on its port.
pub struct RedisHandle {
    /// Its name in the timeline.
    pub name: String,
    /// `redis://127.0.0.1:<port>`, the same across restarts.
    pub url: String,
    server: Arc<StdMutex<RedisServer>>,
}

impl RedisHandle {
    /// Starts a server with `appendonly yes`, `appendfsync always`.
    async fn start(name: String) -> anyhow::Result<Self> {
        let server = blocking(move || {
            RedisServer::start_with(RedisOptions {
                appendonly: true,
                ..RedisOptions::default()
            })
        })
        .await
        .with_context(|| format!("start {name}"))?;
        Ok(RedisHandle {
            url: server.url(),
            name,
            server: Arc::new(StdMutex::new(server)),
        })
    }

    /// Kills the server with SIGKILL.
    pub async fn kill(&self) -> anyhow::Result<()> {
        let server = self.server.clone();
        blocking(move || lock(&server).kill()).await
    }

    /// Starts it again on the same port and data dir; returns once it answers.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let server = self.server.clone();
        blocking(move || lock(&server).restart())
            .await
            .with_context(|| format!("restart {}", self.name))
    }

    /// Its data directory (holding the AOF).
    pub fn dir(&self) -> PathBuf {
        lock(&self.server).dir().to_owned()
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs blocking testkit code off the runtime; its panics become errors.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        let why = e
            .try_into_panic()
            .ok()
            .and_then(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            })
            .unwrap_or_else(|| "cancelled".into());
        anyhow::anyhow!("{why}")
    })
}

/// One device: its keys in a shared device Redis, its daemon and proxy.
pub struct DeviceHandle {
    /// Its client id (`dev-01`, ...).
    pub client: ClientId,
    /// Its keys (prefix `lula-client:<client>`).
    pub keys: DeviceKeys,
    /// Which device Redis it lives in.
    pub redis: usize,
    /// That Redis's URL.
    pub redis_url: String,
    /// The daemon's command line.
    pub client_args: RunClientArgs,
    /// The daemon.
    pub daemon: Mutex<Service>,
    /// Its proxy to the hub.
    pub hub_proxy: Arc<ProxyControl>,
    /// Its proxy to lula-auth (no random faults; blackholed by [`crate::expiry`]).
    pub auth_proxy: Arc<ProxyControl>,
    dir: PathBuf,
    twins: AtomicU64,
}

/// The whole system under test.
pub struct Cluster {
    /// The hub's Redis (also lula-auth's).
    pub cloud: RedisHandle,
    /// The device Redis servers.
    pub device_redis: Vec<RedisHandle>,
    /// lula-auth.
    pub auth: Mutex<Service>,
    /// lula-hub.
    pub hub: Mutex<Service>,
    /// The devices.
    pub devices: Vec<DeviceHandle>,
    /// Hub key names.
    pub hub_keys: HubKeys,
    /// Faults are injected by the proxies while this is set.
    pub faults_on: Arc<AtomicBool>,
    exe: PathBuf,
    logs: PathBuf,
    proxies: CancellationToken,
}

impl Cluster {
    /// Starts everything and waits until every daemon has connected once.
    pub async fn start(
        config: &RunConfig,
        counts: Arc<FaultCounts>,
        events: Arc<Events>,
    ) -> anyhow::Result<Cluster> {
        let sizes = &config.sizes;
        let logs = config.run_dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;

        let cloud = RedisHandle::start("hub Redis".into()).await?;
        events.note(format_args!(
            "hub Redis at {} (AOF in {})",
            cloud.url,
            cloud.dir().display()
        ));
        let mut device_redis = Vec::new();
        for i in 0..sizes.device_redis.max(1) {
            let r = RedisHandle::start(format!("device Redis {}", i + 1)).await?;
            events.note(format_args!(
                "{} at {} (AOF in {})",
                r.name,
                r.url,
                r.dir().display()
            ));
            device_redis.push(r);
        }

        let auth_addr = local(lula_testkit::free_port());
        let mut auth = Service::new(
            "lula-auth",
            &config.exe,
            ServeAuthArgs {
                listen: auth_addr,
                redis_url: cloud.url.clone(),
                token_ttl: config.faults.token_ttl,
                bcrypt_cost: config.faults.bcrypt_cost,
            }
            .to_args(),
            logs.join("auth.log"),
            Some(auth_addr),
        );
        auth.start().await?;
        let hub_addr = local(lula_testkit::free_port());
        let mut hub = Service::new(
            "lula-hub",
            &config.exe,
            ServeHubArgs {
                listen: hub_addr,
                redis_url: cloud.url.clone(),
            }
            .to_args(),
            logs.join("hub.log"),
            Some(hub_addr),
        );
        hub.start().await?;
        events.note(format_args!(
            "lula-auth on {auth_addr} (token TTL {:?}), lula-hub on {hub_addr}",
            config.faults.token_ttl
        ));

        let faults_on = Arc::new(AtomicBool::new(false));
        let proxies = CancellationToken::new();
        // Stops the proxies if setup fails half way (started processes die with their handles).
        let proxies_guard = proxies.clone().drop_guard();
        let auth_keys = AuthKeys::default();
        let mut cloud_conn = connect(&cloud.url).await.context("connect to hub Redis")?;
        let mut devices = Vec::new();
        for i in 0..sizes.devices {
            let client: ClientId = format!("dev-{:02}", i + 1).parse()?;
            let otp_secret = lula_auth::provision::provision(
                &mut cloud_conn,
                &auth_keys,
                &client,
                Duration::from_secs(24 * 3600),
                false,
            )
            .await
            .with_context(|| format!("provision {client}"))?
            .otp_secret;
            let hub_proxy: Arc<ProxyControl> = Arc::default();
            let proxy_addr = proxy::start(
                ProxyOptions {
                    name: client.to_string(),
                    upstream: hub_addr,
                    settings: config.faults.clone(),
                    faults_on: faults_on.clone(),
                    counts: counts.clone(),
                    events: events.clone(),
                    seed: config.seed_for("proxy", i as u64),
                    control: hub_proxy.clone(),
                },
                proxies.clone(),
            )
            .await
            .context("start proxy")?;
            let auth_proxy: Arc<ProxyControl> = Arc::default();
            let auth_proxy_addr = proxy::start(
                ProxyOptions {
                    name: format!("{client} auth"),
                    upstream: auth_addr,
                    settings: config.faults.clone(),
                    // Never set: only the expiry injector's blackholes.
                    faults_on: Arc::new(AtomicBool::new(false)),
                    counts: counts.clone(),
                    events: events.clone(),
                    seed: config.seed_for("auth-proxy", i as u64),
                    control: auth_proxy.clone(),
                },
                proxies.clone(),
            )
            .await
            .context("start auth proxy")?;
            let redis = i % device_redis.len();
            let dir = config.run_dir.join("devices").join(client.as_str());
            let prefix = format!("lula-client:{client}");
            let client_args = RunClientArgs {
                client_id: client.clone(),
                otp_secret,
                auth_url: format!("http://{auth_proxy_addr}"),
                hub_url: format!("ws://{proxy_addr}"),
                redis_url: device_redis[redis].url.clone(),
                state_dir: dir.join("state"),
                prefix: prefix.clone(),
                min_backoff: config.faults.client_min_backoff,
                max_backoff: config.faults.client_max_backoff,
            };
            let daemon = Service::new(
                client.to_string(),
                &config.exe,
                client_args.to_args(),
                logs.join(format!("{client}.log")),
                None,
            );
            devices.push(DeviceHandle {
                keys: DeviceKeys::new(prefix),
                redis,
                redis_url: device_redis[redis].url.clone(),
                client,
                client_args,
                daemon: Mutex::new(daemon),
                hub_proxy,
                auth_proxy,
                dir,
                twins: AtomicU64::new(0),
            });
        }
        for d in &devices {
            d.daemon.lock().await.start().await?;
        }
        let cluster = Cluster {
            cloud,
            device_redis,
            auth: Mutex::new(auth),
            hub: Mutex::new(hub),
            devices,
            hub_keys: HubKeys::default(),
            faults_on,
            exe: config.exe.clone(),
            logs,
            proxies,
        };
        proxies_guard.disarm();
        cluster.wait_connected().await?;
        events.note(format_args!(
            "{} daemons registered and connected",
            cluster.devices.len()
        ));
        Ok(cluster)
    }

    /// Waits until every daemon has published `connected` = 1 once.
    async fn wait_connected(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
        for d in &self.devices {
            loop {
                let connected: Option<String> = match connect(&d.redis_url).await {
                    Ok(mut c) => redis::cmd("HGET")
                        .arg(d.keys.state())
                        .arg("connected")
                        .query_async(&mut c)
                        .await
                        .unwrap_or(None),
                    Err(_) => None,
                };
                if connected.as_deref() == Some("1") {
                    break;
                }
                if let Some(status) = d.daemon.lock().await.exited() {
                    anyhow::bail!(
                        "{} exited with {status} at setup; see {}",
                        d.client,
                        self.log_of(d.client.as_str()).display()
                    );
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{} did not connect within {SETUP_TIMEOUT:?}; see {}",
                    d.client,
                    self.log_of(d.client.as_str()).display()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The log file of the service called `name`.
    pub fn log_of(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// The directory of every log.
    pub fn logs_dir(&self) -> &Path {
        &self.logs
    }

    /// Starts a second daemon with `device`'s identity: same client id, OTP
    /// secret, device Redis and prefix, and a copy of its identity file.
    pub async fn start_twin(&self, device: &DeviceHandle) -> anyhow::Result<Service> {
        let n = device.twins.fetch_add(1, Ordering::Relaxed) + 1;
        let state = device.dir.join(format!("twin-{n}"));
        std::fs::create_dir_all(&state).with_context(|| format!("create {}", state.display()))?;
        let identity = lula_client::identity::IDENTITY_FILE;
        // fs::copy keeps the 0600 mode the daemon insists on.
        std::fs::copy(
            device.client_args.state_dir.join(identity),
            state.join(identity),
        )
        .context("copy the identity file")?;
        let name = format!("{}.twin-{n}", device.client);
        let mut twin = Service::new(
            name.clone(),
            &self.exe,
            device.client_args.with_state_dir(state).to_args(),
            self.log_of(&name),
            None,
        );
        twin.start().await?;
        Ok(twin)
    }

    /// Restarts auth, hub and daemons that exited although nobody killed
    /// them, and returns what happened to each.
    pub async fn restart_exited(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut services: Vec<&Mutex<Service>> = vec![&self.auth, &self.hub];
        services.extend(self.devices.iter().map(|d| &d.daemon));
        for service in services {
            let mut s = service.lock().await;
            if let Some(status) = s.exited() {
                let mut what = format!(
                    "{} exited by itself with {status}; see {}",
                    s.name(),
                    s.log().display()
                );
                if let Err(e) = s.start().await {
                    what.push_str(&format!("; restart failed: {e:#}"));
                }
                found.push(what);
            }
        }
        found
    }

    /// Starts whatever is not running (after the faults stopped).
    pub async fn ensure_running(&self) -> anyhow::Result<()> {
        let mut services: Vec<&Mutex<Service>> = vec![&self.auth, &self.hub];
        services.extend(self.devices.iter().map(|d| &d.daemon));
        for service in services {
            let mut s = service.lock().await;
            if !s.is_running() {
                s.start().await?;
            }
        }
        Ok(())
    }

    /// How many times the devices' own daemons were started (twins not included).
    pub async fn daemon_starts(&self) -> u64 {
        let mut n = 0;
        for d in &self.devices {
            n += u64::from(d.daemon.lock().await.starts());
        }
        n
    }

    /// Stops the daemons (all at once, gracefully), then hub and auth, then
    /// the proxies. Returns the services that did not exit cleanly in time: a
    /// daemon or hub must finish what it has in flight and exit 0.
    pub async fn shutdown(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for d in &self.devices {
            d.daemon.lock().await.request_stop();
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for d in &self.devices {
            stopped(&mut *d.daemon.lock().await, deadline, &mut problems).await;
        }
        for service in [&self.hub, &self.auth] {
            let mut s = service.lock().await;
            s.request_stop();
            stopped(
                &mut s,
                tokio::time::Instant::now() + STOP_GRACE,
                &mut problems,
            )
            .await;
        }
        self.proxies.cancel();
        problems
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.proxies.cancel();
    }
}

/// Waits for a service asked to stop; notes it unless it exited 0 in time.
async fn stopped(s: &mut Service, deadline: tokio::time::Instant, problems: &mut Vec<String>) {
    if !s.is_running() {
        return;
    }
    match s.wait_stopped(deadline).await {
        Some(status) if status.success() => {}
        Some(status) => problems.push(format!(
            "{} exited with {status} when asked to stop; see {}",
            s.name(),
            s.log().display()
        )),
        None => problems.push(format!(
            "{} did not stop within {STOP_GRACE:?} when asked to (killed); see {}",
            s.name(),
            s.log().display()
        )),
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
