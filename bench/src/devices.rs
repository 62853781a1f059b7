//! The device side: device Redis servers shared by many devices (each device
//! has a key prefix of its own), and lula-client daemons running in this
//! process. Dropping [`Daemons`] stops every daemon; dropping the servers
//! kills them.

use std::time::Duration;

use anyhow::{Context as _, bail};
use lula_protocol::ClientId;
use lula_protocol::keys::DeviceKeys;
use lula_testkit::RedisServer;
use redis::aio::MultiplexedConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cloud::{Cloud, start_redis};
use crate::load;

/// One device: its id, where its keys live and its OTP secret.
pub struct Device {
    /// Its client id.
    pub client: ClientId,
    /// Its key names in the device Redis.
    pub keys: DeviceKeys,
    /// Index of its server in [`DeviceServers`].
    pub server: usize,
    /// Its provisioned OTP secret.
    pub otp_secret: String,
}

/// Device Redis servers, with a connection to each.
pub struct DeviceServers {
    servers: Vec<RedisServer>,
    conns: Vec<MultiplexedConnection>,
    pids: Vec<u32>,
}

impl DeviceServers {
    /// Starts `n` servers.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        let mut servers = Vec::new();
        let mut conns = Vec::new();
        let mut pids = Vec::new();
        for _ in 0..n.max(1) {
            let server = start_redis().await?;
            let mut conn = load::connect(&server.url()).await?;
            pids.push(load::redis_pid(&mut conn).await?);
            conns.push(conn);
            servers.push(server);
        }
        Ok(DeviceServers {
            servers,
            conns,
            pids,
        })
    }

    /// How many servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether there are none (never, once started).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// URL of server `i`.
    pub fn url(&self, i: usize) -> String {
        self.servers[i].url()
    }

    /// A connection to server `i`.
    pub fn conn(&self, i: usize) -> MultiplexedConnection {
        self.conns[i].clone()
    }

    /// The servers' pids.
    pub fn pids(&self) -> Vec<u32> {
        self.pids.clone()
    }

    /// Provisions `n` devices named `<name>-<i>` spread over the servers,
    /// each with the key prefix `lula-client:<client>` (or the default
    /// prefix when there is only one device).
    pub async fn provision(
        &self,
        cloud: &Cloud,
        name: &str,
        n: usize,
    ) -> anyhow::Result<Vec<Device>> {
        let clients: Vec<ClientId> = (0..n)
            .map(|i| format!("{name}-{i:05}").parse().context("client id"))
            .collect::<anyhow::Result<_>>()?;
        let secrets = cloud.provision(&clients).await?;
        Ok(clients
            .into_iter()
            .zip(secrets)
            .enumerate()
            .map(|(i, (client, otp_secret))| Device {
                keys: if n == 1 {
                    DeviceKeys::default()
                } else {
                    DeviceKeys::new(format!("lula-client:{client}"))
                },
                client,
                server: i % self.len(),
                otp_secret,
            })
            .collect())
    }
}

/// lula-client daemons on this process's runtime.
pub struct Daemons {
    /// The window [`Daemons::start`] asks for (`None`: JSON text frames).
    compression_window_bits: Option<u8>,
    /// `--max-frame-bytes` of the daemons started from now on (default: the client's).
    pub max_frame_bytes: Option<usize>,
    cancel: CancellationToken,
    handles: Vec<(ClientId, JoinHandle<anyhow::Result<()>>)>,
    state: tempfile::TempDir,
}

impl Daemons {
    /// No daemons yet; [`Daemons::start`] will ask for compression with
    /// `compression_window_bits` (or not).
    pub fn new(compression_window_bits: Option<u8>) -> anyhow::Result<Self> {
        Ok(Daemons {
            compression_window_bits,
            max_frame_bytes: None,
            cancel: CancellationToken::new(),
            handles: Vec::new(),
            state: tempfile::tempdir().context("state dirs")?,
        })
    }

    /// Starts the daemon of `device` against `cloud`, with default batching
    /// and quick retries, and the compression given to [`Daemons::new`].
    pub fn start(&mut self, device: &Device, servers: &DeviceServers, cloud: &Cloud) {
        let bits = self.compression_window_bits;
        self.start_via(device, servers, cloud, cloud.hub.url(), bits);
    }

    /// Like [`Daemons::start`], reaching the hub at `hub_url` (a proxy),
    /// asking for compressed frames with `compression_window_bits` (or not).
    pub fn start_via(
        &mut self,
        device: &Device,
        servers: &DeviceServers,
        cloud: &Cloud,
        hub_url: String,
        compression_window_bits: Option<u8>,
    ) {
        let mut config = lula_client::Config::new(
            device.client.clone(),
            device.otp_secret.clone(),
            self.state.path().join(device.client.as_str()),
        );
        config.auth_url = cloud.auth_url.clone();
        config.hub_url = hub_url;
        config.compression_window_bits = compression_window_bits;
        config.redis_url = servers.url(device.server);
        config.prefix = device.keys.prefix().to_owned();
        config.register_retry = Duration::from_millis(500);
        config.min_backoff = Duration::from_millis(50);
        config.max_backoff = Duration::from_secs(1);
        // The verification compares the cloud with out:x afterwards.
        config.keep_acked = lula_client::retention::KeepAcked::All;
        if let Some(max) = self.max_frame_bytes {
            config.max_frame_bytes = max;
        }
        let handle = tokio::spawn(lula_client::run(config, self.cancel.child_token()));
        self.handles.push((device.client.clone(), handle));
    }

    /// Asks every daemon to stop, as SIGTERM would, and waits for them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        let mut failed = Vec::new();
        for (client, handle) in std::mem::take(&mut self.handles) {
            match tokio::time::timeout(Duration::from_secs(30), handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => failed.push(format!("{client}: {e:#}")),
                Ok(Err(e)) => failed.push(format!("{client}: {e}")),
                Err(_) => failed.push(format!("{client}: did not stop within 30 s")),
            }
        }
        if let Some(first) = failed.first() {
            bail!("{} daemon(s) failed; first: {first}", failed.len());
        }
        Ok(())
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        self.cancel.cancel();
        for (_, handle) in &self.handles {
            handle.abort();
        }
    }
}

/// Waits until every device's daemon says it is connected
/// (`connected = 1` in its state hash); returns how many are.
pub async fn wait_connected(
    devices: &[Device],
    servers: &DeviceServers,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut connected = 0;
        for s in 0..servers.len() {
            let mine: Vec<&Device> = devices.iter().filter(|d| d.server == s).collect();
            if mine.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for d in mine {
                pipe.cmd("HGET").arg(d.keys.state()).arg("connected");
            }
            let states: Vec<Option<String>> = pipe
                .query_async(&mut servers.conn(s))
                .await
                .context("HGET connected")?;
            connected += states.iter().filter(|v| v.as_deref() == Some("1")).count();
        }
        if connected == devices.len() || tokio::time::Instant::now() > deadline {
            return Ok(connected);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
