//! Set-ups and readings shared by the scenarios of large entries (8, `big`;
//! 9, `parts`): a lula-client daemon as a process of its own, slow
//! subscribers behind throttled links, memory rows, and waiting for and
//! verifying broadcasts on every subscriber.

use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use super::{Ctx, EXACTLY_ONCE, Outcome, check_row};
use crate::client_process::{ClientProcess, ClientSpec};
use crate::cloud::Cloud;
use crate::config::Scenario;
use crate::devices::{Daemons, Device, DeviceServers, wait_connected};
use crate::load;
use crate::report::{Row, bytes, thousands};
use crate::verify;
use crate::wire_proxy::{CountingProxy, Throttle};

/// Pause before the idle reading, so start-up allocations have settled.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Most time for the daemons to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// One device whose daemon runs as a process of its own, connected and
/// idle, with its cloud. Fields drop in order: the daemon goes first.
pub struct DaemonProcess {
    /// The daemon (`lula-bench serve-client`).
    pub client: ClientProcess,
    /// The device.
    pub device: Device,
    /// Its Redis.
    pub servers: DeviceServers,
    /// Cloud Redis, auth and hub.
    pub cloud: Cloud,
    _dir: tempfile::TempDir,
}

/// Starts a cloud with the hub's `max_frame_bytes` (or its default), one
/// device named `<name>-00000` and its daemon as a process of its own (with
/// the same frame limit), waits until it is connected and lets it settle.
pub async fn start_daemon_process(
    ctx: &Ctx<'_>,
    name: &str,
    max_frame_bytes: Option<usize>,
) -> anyhow::Result<DaemonProcess> {
    let cloud = Cloud::start_with(ctx.hub_exe, max_frame_bytes).await?;
    let servers = DeviceServers::start(1).await?;
    let device = servers
        .provision(&cloud, name, 1)
        .await?
        .pop()
        .context("one device")?;
    let dir = tempfile::tempdir().context("client state dir")?;
    let spec = ClientSpec {
        client: device.client.as_str(),
        otp_secret: &device.otp_secret,
        state_dir: dir.path().join("state"),
        auth_url: &cloud.auth_url,
        hub_url: &cloud.hub.url(),
        redis_url: &servers.url(0),
        prefix: device.keys.prefix(),
        max_frame_bytes,
    };
    let client = ClientProcess::spawn(ctx.hub_exe, spec, &dir.path().join("client.log"))?;
    let connected =
        wait_connected(std::slice::from_ref(&device), &servers, CONNECT_TIMEOUT).await?;
    anyhow::ensure!(connected == 1, "the daemon did not connect");
    tokio::time::sleep(SETTLE).await;
    Ok(DaemonProcess {
        client,
        device,
        servers,
        cloud,
        _dir: dir,
    })
}

/// Slow subscribers: daemons in lula-bench, each behind a throttled link of
/// its own. Stop the daemons ([`Daemons::stop`]) before the links go.
pub struct Subscribers {
    /// The devices.
    pub devices: Vec<Device>,
    /// Their daemons.
    pub daemons: Daemons,
    _proxies: Vec<CountingProxy>,
}

/// Provisions `n` devices named `<name>-<i>`, starts their daemons (JSON text
/// frames, `max_frame_bytes` or the client's default) behind links of `rate_kbit`
/// each way with 20 ms of delay, and waits until all are connected.
pub async fn start_subscribers(
    cloud: &Cloud,
    servers: &DeviceServers,
    name: &str,
    (n, rate_kbit): (usize, u64),
    max_frame_bytes: Option<usize>,
) -> anyhow::Result<Subscribers> {
    let devices = servers.provision(cloud, name, n).await?;
    let hub_addr = cloud
        .hub
        .url()
        .trim_start_matches("ws://")
        .parse()
        .context("hub address")?;
    let throttle = Throttle {
        rate_bytes_per_sec: rate_kbit * 1000 / 8,
        delay: Duration::from_millis(20),
    };
    let mut proxies = Vec::new();
    let mut daemons = Daemons::new(None)?;
    daemons.max_frame_bytes = max_frame_bytes;
    for device in &devices {
        let proxy = CountingProxy::start_throttled(hub_addr, Some(throttle)).await?;
        daemons.start_via(device, servers, cloud, proxy.url(), None);
        proxies.push(proxy);
    }
    let connected = wait_connected(&devices, servers, CONNECT_TIMEOUT).await?;
    anyhow::ensure!(connected == n, "{connected} of {n} subscribers connected");
    Ok(Subscribers {
        devices,
        daemons,
        _proxies: proxies,
    })
}

/// Waits (at most `timeout` in all) until every device's in stream holds
/// `n` entries; returns each one's length and when the last one got there
/// (`None` when one did not in time).
pub async fn wait_stored(
    servers: &DeviceServers,
    devices: &[Device],
    n: u64,
    timeout: Duration,
) -> anyhow::Result<(Vec<u64>, Option<Instant>)> {
    let deadline = Instant::now() + timeout;
    let mut stored = Vec::new();
    let mut last = Some(Instant::now());
    for device in devices {
        let left = deadline.saturating_duration_since(Instant::now());
        let in_key = device.keys.in_stream();
        let (len, done) =
            load::wait_len(&mut servers.conn(device.server), &in_key, n, left).await?;
        stored.push(len);
        last = last.zip(done).map(|(a, b)| a.max(b));
    }
    Ok((stored, last))
}

/// The row of how many broadcasts each subscriber stored, failed unless
/// every one stored `n`.
pub fn stored_row(scenario: Scenario, stored: &[u64], n: u64) -> Row {
    let row = Row::info(
        scenario,
        "broadcasts stored",
        format!("{stored:?} of {n} each"),
    );
    if stored.iter().all(|&len| len >= n) {
        row
    } else {
        row.target("all stored", false)
    }
}

/// The rows of one process's memory: idle, peak, peak above idle (against
/// `goal`, when there is one), and `VmHWM` (which also covers start-up).
pub fn memory_rows(
    scenario: Scenario,
    who: &str,
    (idle, peak): (u64, u64),
    hwm: Option<u64>,
    goal: Option<u64>,
) -> Vec<Row> {
    let above = peak.saturating_sub(idle);
    let above_row = Row::info(
        scenario,
        format!("{who} peak RSS above idle"),
        bytes(above as f64),
    );
    let mut rows = vec![
        Row::info(scenario, format!("{who} RSS idle"), bytes(idle as f64)),
        Row::info(scenario, format!("{who} peak RSS"), bytes(peak as f64)),
        match goal {
            Some(goal) => above_row.target(format!("<= {}", bytes(goal as f64)), above <= goal),
            None => above_row,
        },
    ];
    if let Some(hwm) = hwm {
        rows.push(Row::info(
            scenario,
            format!("{who} VmHWM at the end"),
            bytes(hwm as f64),
        ));
    }
    rows
}

/// Every subscriber holds every broadcast of `key` exactly once, in order,
/// all fields byte for byte, reading `page` entries at a time.
pub async fn verify_broadcasts(
    cloud: &Cloud,
    servers: &DeviceServers,
    devices: &[Device],
    (key, n): (&str, u64),
    page: usize,
) -> Result<String, String> {
    let mut total = 0;
    for device in devices {
        let got = verify::broadcasts(
            cloud.conn(),
            key,
            servers.conn(device.server),
            &device.keys.in_stream(),
            page,
        )
        .await
        .and_then(|got| super::moved_entries(Ok(got), Some(n)))
        .map_err(|e| format!("{}: {e:#}", device.client))?;
        total += got;
    }
    Ok(format!(
        "{} broadcasts on each of {} subscribers ({} stored)",
        thousands(n),
        devices.len(),
        thousands(total)
    ))
}

/// One outcome of a scenario's two halves: the upstream one's rows, then
/// the broadcasts', and one exactly-once row over both.
pub fn up_then_down(scenario: Scenario, up: Outcome, down: Outcome) -> Outcome {
    let mut rows = up.rows;
    rows.extend(down.rows);
    let check = match (up.check, down.check) {
        (Ok(a), Ok(b)) => Ok(format!("up: {a}; broadcasts: {b}")),
        (Err(e), _) => Err(format!("up: {e}")),
        (_, Err(e)) => Err(format!("broadcasts: {e}")),
    };
    rows.push(check_row(scenario, EXACTLY_ONCE, &check));
    let mut notes = up.notes;
    notes.extend(down.notes);
    Outcome { rows, check, notes }
}
