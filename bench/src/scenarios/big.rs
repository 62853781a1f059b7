//! Scenario 8, big entries (issue 13): memory must be bounded by bytes, not
//! entry counts, on both sides.
//!
//! - Up: one lula-client daemon, a process of its own ([`ClientProcess`]),
//!   connects with an empty out stream and idles; then it is stopped
//!   (`SIGSTOP`), a backlog of large entries (1,500 of 300 KB) is appended to
//!   its out stream, and it is resumed. Its resident memory is sampled from
//!   the idle reading to the moment the hub's in stream holds the backlog.
//! - Down: slow subscribers (8 daemons in lula-bench, each behind a
//!   throttled link of its own) are connected and idle; then 20 broadcasts of
//!   5 MB are appended. The hub's resident memory is sampled from the idle
//!   reading until every subscriber stored every broadcast. The hub and the
//!   clients run with `--max-frame-bytes` raised (8 MiB) so a 5 MB entry fits.
//!
//! Both report the peak above the idle reading (the goals: daemon
//! <= 64 MiB, hub <= 128 MiB), and `VmHWM` as a cross-check of the 10 ms
//! sampling. Both end with the exactly-once, in-order check.

use std::time::Duration;

use anyhow::Context as _;

use super::{Ctx, EXACTLY_ONCE, Outcome, check_row};
use crate::client_process::{ClientProcess, ClientSpec};
use crate::cloud::Cloud;
use crate::config::Scenario;
use crate::devices::{Daemons, DeviceServers, wait_connected};
use crate::load;
use crate::procstat::{self, RssSampler};
use crate::report::{Row, bytes, secs, thousands};
use crate::verify;
use crate::wire_proxy::{CountingProxy, Throttle};

const SCENARIO: Scenario = Scenario::Big;
/// The goal for the daemon, above idle.
const DAEMON_GOAL: u64 = 64 << 20;
/// The goal for the hub, above idle.
const HUB_GOAL: u64 = 128 << 20;
/// Large entries appended per pipeline (keeps lula-bench's own memory small).
const APPEND_PIPELINE: u64 = 8;
/// Entries per page when verifying: a page of 5 MB entries is 20 MB.
const VERIFY_PAGE: usize = 4;
/// Pause before the idle reading, so start-up allocations have settled.
const SETTLE: Duration = Duration::from_secs(2);
/// Most time for the daemons to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs scenario 8: the backlog up, then the broadcasts down.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let up = upstream(ctx).await?;
    let down = broadcasts(ctx).await?;
    let mut rows = up.rows;
    rows.extend(down.rows);
    let check = match (up.check, down.check) {
        (Ok(a), Ok(b)) => Ok(format!("up: {a}; broadcasts: {b}")),
        (Err(e), _) => Err(format!("up: {e}")),
        (_, Err(e)) => Err(format!("broadcasts: {e}")),
    };
    rows.push(check_row(SCENARIO, EXACTLY_ONCE, &check));
    let mut notes = up.notes;
    notes.extend(down.notes);
    Ok(Outcome { rows, check, notes })
}

/// Appends `n` entries `n <i> payload <bytes of payload>` to `key`, a few
/// per pipeline.
async fn append_large(
    conn: &redis::aio::MultiplexedConnection,
    key: &str,
    n: u64,
    payload_bytes: usize,
) -> anyhow::Result<()> {
    let payload = load::payload(payload_bytes);
    let mut conn = conn.clone();
    for from in (0..n).step_by(APPEND_PIPELINE as usize) {
        let mut pipe = redis::pipe();
        for i in from..n.min(from + APPEND_PIPELINE) {
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("n")
                .arg(i)
                .arg("payload")
                .arg(&payload)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .with_context(|| format!("append to {key}"))?;
    }
    Ok(())
}

/// The rows of one process's memory: idle, peak, peak above idle against
/// `goal`, and `VmHWM` (which also covers start-up).
fn memory_rows(who: &str, idle: u64, peak: u64, hwm: Option<u64>, goal: u64) -> Vec<Row> {
    let above = peak.saturating_sub(idle);
    let mut rows = vec![
        Row::info(SCENARIO, format!("{who} RSS idle"), bytes(idle as f64)),
        Row::info(SCENARIO, format!("{who} peak RSS"), bytes(peak as f64)),
        Row::info(
            SCENARIO,
            format!("{who} peak RSS above idle"),
            bytes(above as f64),
        )
        .target(format!("<= {}", bytes(goal as f64)), above <= goal),
    ];
    if let Some(hwm) = hwm {
        rows.push(Row::info(
            SCENARIO,
            format!("{who} VmHWM at the end"),
            bytes(hwm as f64),
        ));
    }
    rows
}

/// Part one: the daemon's memory through a backlog of large entries.
async fn upstream(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let s = ctx.sizes;
    let n = s.big_backlog_entries;
    let what = format!(
        "{} x {} KB backlog, 1 daemon",
        thousands(n),
        s.big_backlog_bytes / 1000
    );
    let cloud = Cloud::start(ctx.hub_exe).await?;
    let servers = DeviceServers::start(1).await?;
    let device = servers
        .provision(&cloud, "big-up", 1)
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
        max_frame_bytes: None,
    };
    let client = ClientProcess::spawn(ctx.hub_exe, spec, &dir.path().join("client.log"))?;
    let connected =
        wait_connected(std::slice::from_ref(&device), &servers, CONNECT_TIMEOUT).await?;
    anyhow::ensure!(connected == 1, "the daemon did not connect");
    tokio::time::sleep(SETTLE).await;
    let idle = client.rss_bytes()?;
    client.signal("STOP").await?;
    ctx.progress(SCENARIO, format_args!("appending a backlog of {what}"));
    let appended = append_large(
        &servers.conn(0),
        &device.keys.out_stream(),
        n,
        s.big_backlog_bytes,
    )
    .await;
    client.signal("CONT").await?;
    appended?;
    let sampler = RssSampler::start(vec![("daemon".into(), client.pid())]);
    let in_key = cloud.keys.in_stream();
    let (len, done) = load::wait_len(&mut cloud.conn(), &in_key, n, s.wait_timeout).await?;
    let peak = sampler.peaks()[0].peak.max(idle);
    let hwm = procstat::hwm_bytes(client.pid()).ok();
    drop(sampler);
    let mut rows = vec![Row::info(SCENARIO, "load (up)", &what)];
    rows.extend(memory_rows("daemon", idle, peak, hwm, DAEMON_GOAL));
    rows.push(match done {
        Some(_) => Row::info(SCENARIO, "backlog synced", "yes"),
        None => Row::info(
            SCENARIO,
            "backlog synced",
            format!(
                "timed out: {} of {} after {}",
                thousands(len),
                thousands(n),
                secs(s.wait_timeout)
            ),
        )
        .target("syncs", false),
    });
    // Give a stray duplicate a moment to show, then stop and compare.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(client);
    ctx.progress(SCENARIO, "verifying the backlog");
    let device_out = verify::DeviceOut {
        client: device.client.to_string(),
        conn: servers.conn(0),
        key: device.keys.out_stream(),
    };
    let check = verify::upstream_in_pages(cloud.conn(), &in_key, vec![device_out], VERIFY_PAGE * 8)
        .await
        .and_then(|got| super::moved_entries(Ok(got), Some(n)))
        .map(|n| format!("{} entries", thousands(n)))
        .map_err(|e| format!("{e:#}"));
    let notes = cloud.hub_log_note(SCENARIO.name()).into_iter().collect();
    Ok(Outcome { rows, check, notes })
}

/// Part two: the hub's memory through large broadcasts to slow subscribers.
async fn broadcasts(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let s = ctx.sizes;
    let (n, k) = (s.big_broadcasts, s.big_subscribers);
    let what = format!(
        "{} x {} MB broadcasts, {k} subscribers at {} kbit/s",
        thousands(n),
        s.big_broadcast_bytes / 1_000_000,
        thousands(s.big_subscriber_rate_kbit)
    );
    let cloud = Cloud::start_with(ctx.hub_exe, Some(s.big_max_frame_bytes)).await?;
    let servers = DeviceServers::start(1).await?;
    let devices = servers.provision(&cloud, "big-sub", k).await?;
    let hub_addr = cloud
        .hub
        .url()
        .trim_start_matches("ws://")
        .parse()
        .context("hub address")?;
    let throttle = Throttle {
        rate_bytes_per_sec: s.big_subscriber_rate_kbit * 1000 / 8,
        delay: Duration::from_millis(20),
    };
    let mut proxies = Vec::new();
    let mut daemons = Daemons::new(None)?;
    daemons.max_frame_bytes = Some(s.big_max_frame_bytes);
    for device in &devices {
        let proxy = CountingProxy::start_throttled(hub_addr, Some(throttle)).await?;
        daemons.start_via(device, &servers, &cloud, proxy.url(), None);
        proxies.push(proxy);
    }
    let connected = wait_connected(&devices, &servers, CONNECT_TIMEOUT).await?;
    anyhow::ensure!(connected == k, "{connected} of {k} subscribers connected");
    tokio::time::sleep(SETTLE).await;
    let hub_pid = cloud.hub.pid();
    let idle = cloud.hub.rss_bytes()?;
    let sampler = RssSampler::start(vec![("hub".into(), hub_pid)]);
    ctx.progress(SCENARIO, format_args!("sending {what}"));
    let key = cloud.keys.broadcast_stream();
    append_large(&cloud.conn(), &key, n, s.big_broadcast_bytes).await?;
    let deadline = tokio::time::Instant::now() + s.wait_timeout;
    let mut stored = Vec::new();
    for device in &devices {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let in_key = device.keys.in_stream();
        let (len, _) = load::wait_len(&mut servers.conn(device.server), &in_key, n, left).await?;
        stored.push(len);
    }
    let peak = sampler.peaks()[0].peak.max(idle);
    let hwm = procstat::hwm_bytes(hub_pid).ok();
    drop(sampler);
    let mut rows = vec![Row::info(SCENARIO, "load (down)", &what)];
    rows.extend(memory_rows("hub", idle, peak, hwm, HUB_GOAL));
    let all = stored.iter().all(|&len| len >= n);
    let row = Row::info(
        SCENARIO,
        "broadcasts stored",
        format!("{stored:?} of {n} each"),
    );
    rows.push(if all {
        row
    } else {
        row.target("all stored", false)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = daemons.stop().await;
    ctx.progress(SCENARIO, "verifying the broadcasts");
    let check = verify_broadcasts(&cloud, &servers, &devices, &key, n).await;
    let mut notes: Vec<String> = cloud.hub_log_note(SCENARIO.name()).into_iter().collect();
    if let Err(e) = stopped {
        notes.push(format!("{}: stopping the clients: {e:#}", SCENARIO.name()));
    }
    Ok(Outcome { rows, check, notes })
}

/// Every subscriber holds every broadcast exactly once, in order.
async fn verify_broadcasts(
    cloud: &Cloud,
    servers: &DeviceServers,
    devices: &[crate::devices::Device],
    key: &str,
    n: u64,
) -> Result<String, String> {
    let mut total = 0;
    for device in devices {
        let got = verify::broadcasts(
            cloud.conn(),
            key,
            servers.conn(device.server),
            &device.keys.in_stream(),
            VERIFY_PAGE,
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
