//! End-to-end harness: a cloud (Redis, lula-auth, lula-hub) and devices (Redis,
//! lula-client), all real, on free ports.
//!
//! Each service runs in its own Tokio runtime on its own thread. Stopping one
//! gracefully cancels its shutdown token; killing one drops its runtime at once,
//! abandoning every task mid-flight and cutting its sockets without a close
//! frame, the way a crashed or SIGKILLed process would. A killed hub restarts on
//! the same port, so clients find it again at the URL they already have.

pub mod binary;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use lula_protocol::keys::{AuthKeys, DeviceKeys, HubKeys, IngestLayout};
use lula_protocol::redis_value::entries_from_range;
use lula_protocol::{ClientId, Entry, StreamId};
use lula_runtime::redis::{RedisConn, RedisTarget};
use lula_testkit::{RedisCluster, RedisServer};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use tokio_util::sync::CancellationToken;

/// Turns on test logging once (`RUST_LOG=lula_hub=debug cargo test ...`).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A service running on a runtime of its own.
pub struct Isolated {
    shutdown: CancellationToken,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<anyhow::Result<()>>>>,
}

impl Isolated {
    /// Runs `make(shutdown)` on a fresh two-thread runtime.
    pub fn spawn<F, Fut>(name: &str, make: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let token = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                let task = rt.spawn(make(token));
                let outcome = rt.block_on(async move {
                    tokio::select! {
                        r = task => Some(r.unwrap_or_else(|e| Err(anyhow::anyhow!("task panicked: {e}")))),
                        _ = kill_rx => None,
                    }
                });
                // Abandon whatever still runs, without waiting for it.
                rt.shutdown_background();
                outcome
            })
            .expect("spawn service thread");
        Isolated {
            shutdown,
            kill: Some(kill_tx),
            thread: Some(thread),
        }
    }

    /// Drops the runtime at once, as a crash would.
    pub fn kill(mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Cancels the shutdown token and waits for the service to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let thread = self.thread.take().expect("running");
        let outcome = tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join");
        self.kill.take();
        match outcome {
            Ok(Some(r)) => r,
            Ok(None) => Ok(()),
            Err(_) => Err(anyhow::anyhow!("service thread panicked")),
        }
    }

    /// Whether the service has returned by itself.
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `addr`, retrying briefly while a killed predecessor's socket lingers.
fn bind(addr: SocketAddr) -> std::net::TcpListener {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true).expect("nonblocking");
                return l;
            }
            Err(e) if std::time::Instant::now() > deadline => panic!("bind {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Options for [`Cloud::start_with`].
#[derive(Debug, Clone)]
pub struct CloudOptions {
    /// lula-auth's failed-attempt limits (its defaults when `None`).
    pub auth_limits: Option<lula_auth::throttle::Limits>,
    /// Lifetime of session tokens.
    pub token_ttl: Duration,
    /// Run the cloud Redis with AOF (`appendfsync always`), so it can be
    /// restarted without losing what it acknowledged.
    pub persistent: bool,
    /// Serve lula-auth and lula-hub over TLS with this config (their URLs
    /// become `https://` and `wss://`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// More `redis-server` arguments for the cloud Redis (e.g. ACL users).
    pub redis_args: Vec<String>,
    /// `user:password` the services and the harness put in the cloud Redis URL.
    pub redis_userinfo: Option<String>,
    /// Reach the cloud Redis at `rediss://` on this port, a `--tls-port` given
    /// in `redis_args` (its certificate must be trusted by the process, e.g.
    /// through `SSL_CERT_FILE`).
    pub redis_tls_port: Option<u16>,
    /// Run the cloud Redis as a Redis Cluster of this many masters (at least
    /// 3), with hubs and auth on `--redis-cluster`. (`persistent`,
    /// `redis_args` and the TLS and user options apply to one server only.)
    pub cluster_masters: Option<usize>,
    /// The hubs' `--ingest-partitions`.
    pub ingest_partitions: u32,
    /// The hubs' `--broadcast-retention` and how often they trim to it
    /// (their defaults when `None`).
    pub broadcast_retention: Option<(Duration, Duration)>,
    /// The hubs' admin token (opens `/fleet` on the admin listener).
    pub admin_token: Option<String>,
    /// The hubs' `--max-entry-pairs` and `--max-entry-bytes` (`None`: the
    /// defaults).
    pub part_limits: Option<lula_protocol::parts::PartLimits>,
}

impl Default for CloudOptions {
    fn default() -> Self {
        CloudOptions {
            token_ttl: Duration::from_secs(3600),
            persistent: false,
            tls: None,
            redis_args: Vec::new(),
            redis_userinfo: None,
            redis_tls_port: None,
            auth_limits: None,
            cluster_masters: None,
            ingest_partitions: 1,
            broadcast_retention: None,
            admin_token: None,
            part_limits: None,
        }
    }
}

/// The cloud Redis: one server, or a Redis Cluster.
pub enum CloudRedis {
    /// One `redis-server`.
    Server(RedisServer),
    /// A Redis Cluster of local `redis-server`s.
    Cluster(RedisCluster),
}

impl CloudRedis {
    /// The one server; panics on a cluster.
    pub fn server(&mut self) -> &mut RedisServer {
        match self {
            CloudRedis::Server(s) => s,
            CloudRedis::Cluster(_) => panic!("the cloud Redis is a cluster"),
        }
    }

    /// The cluster, if it is one.
    pub fn cluster(&self) -> Option<&RedisCluster> {
        match self {
            CloudRedis::Server(_) => None,
            CloudRedis::Cluster(c) => Some(c),
        }
    }

    /// The port of the server, or of the cluster's seed node.
    pub fn port(&self) -> u16 {
        match self {
            CloudRedis::Server(s) => s.port(),
            CloudRedis::Cluster(c) => c.nodes()[0].port(),
        }
    }

    /// Kills the one server (see [`RedisServer::kill`]).
    pub fn kill(&mut self) {
        self.server().kill()
    }

    /// Restarts the one server (see [`RedisServer::restart`]).
    pub fn restart(&mut self) {
        self.server().restart()
    }
}

/// The cloud side: one Redis (or a Redis Cluster), lula-auth and lula-hub.
pub struct Cloud {
    /// The cloud Redis (hub streams, auth keys).
    pub redis: CloudRedis,
    /// Hub key names.
    pub keys: HubKeys,
    /// Where hubs append devices' entries.
    pub layout: IngestLayout,
    /// Auth key names.
    pub auth_keys: AuthKeys,
    redis_url: String,
    redis_cluster: bool,
    tls: Option<Arc<rustls::ServerConfig>>,
    broadcast_retention: Option<(Duration, Duration)>,
    downstream_max_age: Option<Duration>,
    part_limits: Option<lula_protocol::parts::PartLimits>,
    auth_addr: SocketAddr,
    auth_admin_addr: SocketAddr,
    hub_addr: SocketAddr,
    hub_admin_addr: SocketAddr,
    admin_token: Option<String>,
    /// Seconds the hubs' clock is ahead of the system clock (negative:
    /// behind); read at every look, so it can change while hubs run.
    hub_clock_offset: Arc<AtomicI64>,
    _auth: Isolated,
    hub: Option<Isolated>,
}

impl Cloud {
    /// Starts Redis, auth and hub with defaults.
    pub async fn start() -> Cloud {
        Self::start_with(CloudOptions::default()).await
    }

    /// Starts Redis, auth and hub.
    pub async fn start_with(options: CloudOptions) -> Cloud {
        init_logging();
        let redis = match options.cluster_masters {
            Some(masters) => CloudRedis::Cluster(RedisCluster::start(masters)),
            None => CloudRedis::Server(RedisServer::start_with(lula_testkit::RedisOptions {
                appendonly: options.persistent,
                extra_args: options.redis_args.clone(),
                ..Default::default()
            })),
        };
        let scheme = if options.redis_tls_port.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let userinfo = (options.redis_userinfo.as_ref())
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let port = options.redis_tls_port.unwrap_or(redis.port());
        let redis_url = format!("{scheme}://{userinfo}127.0.0.1:{port}");
        let redis_cluster = options.cluster_masters.is_some();
        let auth_listener = bind("127.0.0.1:0".parse().expect("addr"));
        let auth_addr = auth_listener.local_addr().expect("addr");
        let mut auth_config = lula_auth::Config::new(redis_url.clone());
        auth_config.redis_cluster = redis_cluster;
        auth_config.serve.tls = options.tls.clone();
        auth_config.bcrypt_cost = 4;
        auth_config.token_ttl = options.token_ttl;
        if let Some(limits) = options.auth_limits {
            auth_config.limits = limits;
        }
        let auth_admin = bind("127.0.0.1:0".parse().expect("addr"));
        let auth_admin_addr = auth_admin.local_addr().expect("addr");
        let auth = Isolated::spawn("lula-auth", move |shutdown| async move {
            let listener = tokio::net::TcpListener::from_std(auth_listener)?;
            let admin = tokio::net::TcpListener::from_std(auth_admin)?;
            lula_auth::run_with_admin(listener, Some(admin), auth_config, shutdown).await
        });
        let free = || {
            bind("127.0.0.1:0".parse().expect("addr"))
                .local_addr()
                .expect("addr")
        };
        let (hub_addr, hub_admin_addr) = (free(), free());
        let keys = HubKeys::default();
        let mut cloud = Cloud {
            layout: IngestLayout::new(&keys, options.ingest_partitions, redis_cluster),
            keys,
            auth_keys: AuthKeys::default(),
            redis,
            redis_url,
            redis_cluster,
            tls: options.tls,
            broadcast_retention: options.broadcast_retention,
            downstream_max_age: None,
            part_limits: options.part_limits,
            auth_addr,
            auth_admin_addr,
            hub_addr,
            hub_admin_addr,
            admin_token: options.admin_token,
            hub_clock_offset: Arc::default(),
            _auth: auth,
            hub: None,
        };
        cloud.start_hub();
        cloud.wait_ready().await;
        cloud
    }

    async fn wait_ready(&self) {
        for addr in [self.auth_addr, self.hub_addr] {
            lula_testkit::eventually(
                "service to accept connections",
                Duration::from_secs(10),
                || async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
            )
            .await;
        }
    }

    /// Sets the `--downstream-max-age` of hubs started from now on.
    pub fn set_downstream_max_age(&mut self, max_age: Option<Duration>) {
        self.downstream_max_age = max_age;
    }

    /// Sets the `--broadcast-retention` and trim interval of hubs started
    /// from now on (`None`: their defaults).
    pub fn set_broadcast_retention(&mut self, retention: Option<(Duration, Duration)>) {
        self.broadcast_retention = retention;
    }

    /// Starts the hub (again) on its port.
    pub fn start_hub(&mut self) {
        assert!(self.hub.is_none(), "hub already running");
        let listener = bind(self.hub_addr);
        let admin = bind(self.hub_admin_addr);
        let config = self.hub_config();
        self.hub = Some(Isolated::spawn("lula-hub", move |shutdown| async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let admin = tokio::net::TcpListener::from_std(admin)?;
            lula_hub::run_with_admin(listener, Some(admin), config, shutdown).await
        }));
    }

    /// Sets the hubs' clock (the one they judge tokens' expiry by) `secs`
    /// seconds ahead of the system clock (negative: behind), at once for the
    /// hubs running and those started later; lula-auth and the devices keep
    /// the system clock. A test makes a device's token expired for the hub
    /// while the device still thinks it good, or gives renewals slack.
    pub fn set_hub_clock_offset(&self, secs: i64) {
        self.hub_clock_offset.store(secs, Ordering::SeqCst);
    }

    /// The cloud Redis URL hubs and auth use.
    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    /// The configuration every hub of this cloud runs with.
    pub fn hub_config(&self) -> lula_hub::Config {
        let mut config = lula_hub::Config::new(self.redis_url.clone());
        let offset = self.hub_clock_offset.clone();
        config.clock = lula_hub::Clock::from_fn(move || {
            let secs = offset.load(Ordering::SeqCst);
            let shift = Duration::from_secs(secs.unsigned_abs());
            if secs >= 0 {
                SystemTime::now() + shift
            } else {
                SystemTime::now() - shift
            }
        });
        config.serve.tls = self.tls.clone();
        config.redis_cluster = self.redis_cluster;
        config.ingest_partitions = self.layout.partitions();
        config.admin_token = self.admin_token.clone().map(Into::into);
        if let Some((retention, every)) = self.broadcast_retention {
            config.broadcast_retention = retention;
            config.broadcast_trim_interval = every;
        }
        config.downstream_max_age = self.downstream_max_age;
        if let Some(limits) = self.part_limits {
            config.part_limits = limits;
        }
        config
    }

    /// Kills the hub abruptly.
    pub fn kill_hub(&mut self) {
        if let Some(hub) = self.hub.take() {
            hub.kill();
        }
    }

    /// lula-auth's base URL.
    pub fn auth_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.auth_addr)
    }

    /// The hub's admin listener (`/metrics`, `/fleet`, probes), plain HTTP.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.hub_admin_addr)
    }

    /// lula-auth's admin listener (`/metrics`, probes), plain HTTP.
    pub fn auth_admin_url(&self) -> String {
        format!("http://{}", self.auth_admin_addr)
    }

    /// lula-hub's WebSocket URL.
    pub fn hub_url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}", self.hub_addr)
    }

    /// A connection to the cloud Redis (to the cluster, on a cluster).
    pub async fn conn(&self) -> RedisConn {
        // Generous: a loaded CI machine reading a long stream can be slow, and
        // a test must not fail for being slow.
        let mut target = RedisTarget::new(self.redis_url.as_str(), self.redis_cluster);
        target.timeout = Duration::from_secs(60);
        target.connect().await.expect("connect to the cloud Redis")
    }

    /// Provisions `client` and returns its OTP secret.
    pub async fn provision(&self, client: &str) -> String {
        let client: ClientId = client.parse().expect("client id");
        let mut conn = self.conn().await;
        let provisioned = lula_auth::provision::provision(
            &mut conn,
            &self.auth_keys,
            &client,
            Duration::from_secs(3600),
            false,
        )
        .await
        .expect("provision");
        provisioned.otp_secret
    }

    /// Length of `lula-hub:in:x` (of every partition's in stream together).
    pub async fn in_len(&self) -> u64 {
        let mut conn = self.conn().await;
        let mut total = 0;
        for stream in self.layout.in_streams() {
            let n: u64 = redis::cmd("XLEN")
                .arg(stream)
                .query_async(&mut conn)
                .await
                .expect("XLEN");
            total += n;
        }
        total
    }

    /// Every entry of `lula-hub:in:x` (of every partition's in stream, one
    /// after the other: a device's entries are all in one of them).
    pub async fn in_entries(&self) -> Vec<Entry> {
        let mut conn = self.conn().await;
        let mut all = Vec::new();
        for stream in self.layout.in_streams() {
            all.extend(read_all(&mut conn, &stream).await);
        }
        all
    }

    /// How many connections the hubs have counted for `client` (its
    /// connection generation): a reconnect loop shows here.
    pub async fn connections(&self, client: &str) -> u64 {
        let key = self
            .keys
            .connection_generation(&client.parse::<ClientId>().expect("client id"));
        let n: Option<u64> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn().await)
            .await
            .expect("GET");
        n.unwrap_or(0)
    }

    /// The running hub's `/metrics` text.
    pub async fn hub_metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin_url()))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Appends a message for `client` to `lula-hub:out:<client>:x`.
    pub async fn send_down(&self, client: &str, fields: &[(&str, String)]) -> StreamId {
        let client: ClientId = client.parse().expect("client id");
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.keys.out_stream(&client)).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(v);
        }
        let id: String = cmd
            .query_async(&mut self.conn().await)
            .await
            .expect("XADD out");
        id.parse().expect("stream id")
    }
}

impl Cloud {
    /// Appends a broadcast for every device to `lula-hub:broadcast:x` with
    /// id `id` (`*` for a new one) and returns its id.
    pub async fn broadcast_with_id(&self, id: &str, fields: &[(&str, String)]) -> StreamId {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.keys.broadcast_stream()).arg(id);
        for (k, v) in fields {
            cmd.arg(*k).arg(v);
        }
        let id: String = cmd
            .query_async(&mut self.conn().await)
            .await
            .expect("XADD broadcast");
        id.parse().expect("stream id")
    }

    /// Appends a broadcast for every device to `lula-hub:broadcast:x`.
    pub async fn broadcast(&self, fields: &[(&str, String)]) -> StreamId {
        self.broadcast_with_id("*", fields).await
    }

    /// Every entry of `lula-hub:broadcast:x`.
    pub async fn broadcast_entries(&self) -> Vec<Entry> {
        read_all(&mut self.conn().await, &self.keys.broadcast_stream()).await
    }
}

/// One more lula-hub on the cloud's Redis, on a port of its own: for several
/// replicas behind a load balancer.
pub struct Replica {
    /// Where it listens.
    pub addr: SocketAddr,
    config: lula_hub::Config,
    hub: Option<Isolated>,
}

impl Replica {
    /// Starts a hub on `cloud`'s Redis.
    pub fn start(cloud: &Cloud) -> Replica {
        let addr = bind("127.0.0.1:0".parse().expect("addr"))
            .local_addr()
            .expect("addr");
        let mut replica = Replica {
            addr,
            config: cloud.hub_config(),
            hub: None,
        };
        replica.restart();
        replica
    }

    /// Starts it again on its port (after [`Replica::stop`] or [`Replica::kill`]).
    pub fn restart(&mut self) {
        assert!(self.hub.is_none(), "replica already running");
        let listener = bind(self.addr);
        let config = self.config.clone();
        self.hub = Some(Isolated::spawn("lula-hub", move |shutdown| async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            lula_hub::run(listener, config, shutdown).await
        }));
    }

    /// Stops it as SIGTERM does: it drains and closes every socket with 1001.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        match self.hub.take() {
            Some(h) => h.stop().await,
            None => Ok(()),
        }
    }

    /// Kills it abruptly.
    pub fn kill(&mut self) {
        if let Some(h) = self.hub.take() {
            h.kill();
        }
    }
}

/// A device: its Redis, state dir and (when started) lula-client daemon.
pub struct Device {
    /// The device Redis.
    pub redis: RedisServer,
    /// The daemon's configuration.
    pub config: lula_client::Config,
    /// Device key names.
    pub keys: DeviceKeys,
    state_dir: tempfile::TempDir,
    daemon: Option<Isolated>,
}

impl Device {
    /// A device of `cloud` with its own Redis; the daemon is not started yet.
    pub fn new(cloud: &Cloud, client: &str, otp_secret: &str) -> Device {
        Self::with_redis(cloud, client, otp_secret, RedisServer::start())
    }

    /// A device of `cloud` on a Redis the test started (e.g. with persistence).
    pub fn with_redis(cloud: &Cloud, client: &str, otp_secret: &str, redis: RedisServer) -> Device {
        let state_dir = tempfile::tempdir().expect("state dir");
        let mut config = lula_client::Config::new(
            client.parse().expect("client id"),
            otp_secret,
            state_dir.path(),
        );
        config.auth_url = cloud.auth_url();
        config.hub_url = cloud.hub_url();
        config.redis_url = redis.url();
        config.register_retry = Duration::from_millis(500);
        config.min_backoff = Duration::from_millis(50);
        config.max_backoff = Duration::from_millis(500);
        // Tests compare the cloud with out:x, so the device keeps all of it;
        // the retention tests set their own.
        config.keep_acked = lula_client::retention::KeepAcked::All;
        Device {
            redis,
            keys: DeviceKeys::default(),
            config,
            state_dir,
            daemon: None,
        }
    }

    /// The daemon's state dir.
    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// Starts the daemon.
    pub fn start(&mut self) {
        assert!(self.daemon.is_none(), "daemon already running");
        let config = self.config.clone();
        self.daemon = Some(Isolated::spawn("lula-client", move |shutdown| {
            lula_client::run(config, shutdown)
        }));
    }

    /// Kills the daemon abruptly.
    pub fn kill(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.kill();
        }
    }

    /// Asks the daemon to stop (as SIGTERM does) and returns its result.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        match self.daemon.take() {
            Some(d) => d.stop().await,
            None => Ok(()),
        }
    }

    /// A connection to the device Redis.
    pub async fn conn(&self) -> MultiplexedConnection {
        connect(&self.redis.url()).await
    }

    /// Publishes entries `from..to` as a producer would (`XADD out:x * n <i> payload <...>`),
    /// pipelined, and returns their ids.
    pub async fn produce(&self, from: u64, to: u64) -> Vec<StreamId> {
        produce_into(
            &mut self.conn().await,
            &self.keys.out_stream(),
            from,
            to,
            500,
        )
        .await
    }

    /// `XADD out:x MAXLEN = max * n <i>` for `i` in `from..to`: a producer that
    /// caps its stream, as devices with little memory do.
    pub async fn produce_capped(&self, from: u64, to: u64, max: u64) {
        let mut conn = self.conn().await;
        for i in from..to {
            let _: String = redis::cmd("XADD")
                .arg(self.keys.out_stream())
                .arg("MAXLEN")
                .arg("=")
                .arg(max)
                .arg("*")
                .arg("n")
                .arg(i)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }

    /// Publishes entries `from..to` in the background, `chunk` at a time with a
    /// `pause` between chunks, so the daemon is mid-stream whenever a test
    /// injects a fault. Await the handle to know all were written.
    pub fn produce_paced(
        &self,
        from: u64,
        to: u64,
        chunk: u64,
        pause: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let url = self.redis.url();
        let key = self.keys.out_stream();
        tokio::spawn(async move {
            let mut conn = connect(&url).await;
            let mut at = from;
            while at < to {
                let end = to.min(at + chunk);
                produce_into(&mut conn, &key, at, end, chunk as usize).await;
                at = end;
                tokio::time::sleep(pause).await;
            }
        })
    }

    /// Every entry of `lula-client:in:x`.
    pub async fn in_entries(&self) -> Vec<Entry> {
        read_all(&mut self.conn().await, &self.keys.in_stream()).await
    }

    /// Every entry of `lula-client:out:x`.
    pub async fn out_entries(&self) -> Vec<Entry> {
        read_all(&mut self.conn().await, &self.keys.out_stream()).await
    }

    /// Waits until the hub has acknowledged this device's entries up to
    /// `last` (its status's upstream cursor); a hang guard of 3 minutes.
    pub async fn synced_to(&self, last: StreamId) {
        lula_testkit::eventually(
            "the hub's cursor at the last entry",
            Duration::from_secs(180),
            || async { (self.status().await.upstream_cursor == Some(last)).then_some(()) },
        )
        .await;
    }

    /// `lula-client status` for this device.
    pub async fn status(&self) -> lula_client::status::StatusReport {
        lula_client::status::status(self.state_dir(), &self.redis.url(), self.keys.prefix())
            .await
            .expect("status")
    }
}

/// `XADD key * n <i> payload <80 bytes>` for `i` in `from..to`, pipelined.
async fn produce_into(
    conn: &mut MultiplexedConnection,
    key: &str,
    from: u64,
    to: u64,
    pipeline: usize,
) -> Vec<StreamId> {
    let mut ids = Vec::new();
    let payload = "p".repeat(80);
    for chunk_start in (from..to).step_by(pipeline.max(1)) {
        let mut pipe = redis::pipe();
        for i in chunk_start..to.min(chunk_start + pipeline as u64) {
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("n")
                .arg(i)
                .arg("payload")
                .arg(&payload);
        }
        let chunk: Vec<String> = pipe.query_async(conn).await.expect("XADD out:x");
        ids.extend(
            chunk
                .into_iter()
                .map(|s| s.parse::<StreamId>().expect("id")),
        );
    }
    ids
}

/// A test's own connection. redis-rs 1.x gives up on a reply after 500 ms by
/// default; a loaded CI machine reading a long stream can take longer, and a
/// test must not fail for being slow.
async fn connect(url: &str) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(30)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect")
}

/// All entries of a stream, paged.
pub async fn read_all<C: ConnectionLike>(conn: &mut C, key: &str) -> Vec<Entry> {
    let mut all = Vec::new();
    let mut from = "-".to_owned();
    loop {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(key)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(5000)
            .query_async(conn)
            .await
            .expect("XRANGE");
        let page = entries_from_range(v).expect("entries");
        let n = page.len();
        if let Some(last) = page.last() {
            from = format!("({}", last.id);
        }
        all.extend(page);
        if n < 5000 {
            return all;
        }
    }
}

/// The value of field `name` in an entry.
pub fn field<'a>(entry: &'a Entry, name: &str) -> Option<&'a [u8]> {
    entry
        .pairs()
        .find(|(k, _)| *k == name.as_bytes())
        .map(|(_, v)| v)
}

/// Checks that `hub_in` holds exactly the device entries `sent` of `client`, once
/// each, in order, with `client` and `seq` first and the original fields after
/// (reserved names escaped, `lula_protocol::field_names`).
/// Returns a description of the first difference.
pub fn check_upstream(client: &str, sent: &[Entry], hub_in: &[Entry]) -> Result<(), String> {
    let mine: Vec<&Entry> = hub_in
        .iter()
        .filter(|e| field(e, "client") == Some(client.as_bytes()))
        .collect();
    if mine.len() != sent.len() {
        let seqs: std::collections::HashSet<&[u8]> =
            mine.iter().filter_map(|e| field(e, "seq")).collect();
        return Err(format!(
            "{client}: {} entries in the hub, {} sent ({} distinct seqs in the hub)",
            mine.len(),
            sent.len(),
            seqs.len()
        ));
    }
    for (i, (got, want)) in mine.iter().zip(sent).enumerate() {
        let mut expected = vec![
            b"client".to_vec(),
            client.as_bytes().to_vec(),
            b"seq".to_vec(),
            want.id.to_string().into_bytes(),
        ];
        expected.extend(lula_protocol::escape_fields(&want.fields));
        if got.fields != expected {
            return Err(format!(
                "{client}: entry {i} differs: got {got:?}, want seq {} with {want:?}",
                want.id
            ));
        }
    }
    Ok(())
}

/// Checks that the broadcasts among the device's `in:x` entries (those whose
/// first field is `broadcast`) are exactly `sent` (entries of
/// `lula-hub:broadcast:x`), once each, in order, with `broadcast` = their id
/// first and the original fields after (reserved names escaped).
pub fn check_broadcasts(sent: &[Entry], device_in: &[Entry]) -> Result<(), String> {
    let got: Vec<&Entry> = device_in
        .iter()
        .filter(|e| e.fields.first().map(Vec::as_slice) == Some(b"broadcast".as_slice()))
        .collect();
    if got.len() != sent.len() {
        let ids: std::collections::HashSet<&[u8]> = got
            .iter()
            .filter_map(|e| e.fields.get(1).map(Vec::as_slice))
            .collect();
        return Err(format!(
            "{} broadcasts on the device ({} distinct), {} sent",
            got.len(),
            ids.len(),
            sent.len()
        ));
    }
    for (i, (got, want)) in got.iter().zip(sent).enumerate() {
        let mut expected = vec![b"broadcast".to_vec(), want.id.to_string().into_bytes()];
        expected.extend(lula_protocol::escape_fields(&want.fields));
        if got.fields != expected {
            return Err(format!("broadcast {i} differs: got {got:?}, want {want:?}"));
        }
    }
    Ok(())
}

/// Checks that the device's `in:x` holds exactly `sent` (hub out-stream entries),
/// once each, in order, with `seq` = hub id first and the original fields
/// after (reserved names escaped).
pub fn check_downstream(sent: &[Entry], device_in: &[Entry]) -> Result<(), String> {
    if device_in.len() != sent.len() {
        return Err(format!(
            "{} entries on the device, {} sent",
            device_in.len(),
            sent.len()
        ));
    }
    for (i, (got, want)) in device_in.iter().zip(sent).enumerate() {
        let mut expected = vec![b"seq".to_vec(), want.id.to_string().into_bytes()];
        expected.extend(lula_protocol::escape_fields(&want.fields));
        if got.fields != expected {
            return Err(format!("entry {i} differs: got {got:?}, want {want:?}"));
        }
    }
    Ok(())
}

/// Runs the `#[ignore]`d test `name` of the current test binary in a child
/// process whose system roots are the test CA of `pki` (`SSL_CERT_FILE`), with
/// the server certificate and key in `LULA_TEST_TLS_CERT` / `LULA_TEST_TLS_KEY`
/// and `env` besides; panics unless it passed. Trusting a CA through the
/// system roots is process-wide, so such tests get a process of their own.
pub fn run_child_test(name: &str, pki: &lula_testkit::pki::TestPki, env: &[(&str, &Path)]) {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--nocapture"])
        .env("SSL_CERT_FILE", pki.ca_file())
        .env_remove("SSL_CERT_DIR")
        .env("LULA_TEST_TLS_CERT", pki.cert_file())
        .env("LULA_TEST_TLS_KEY", pki.key_file())
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .expect("run this test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child {name} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}
