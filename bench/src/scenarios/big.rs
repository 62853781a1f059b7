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

use super::heavy::{self, memory_rows};
use super::{Ctx, Outcome};
use crate::cloud::Cloud;
use crate::config::Scenario;
use crate::devices::DeviceServers;
use crate::load;
use crate::procstat::{self, RssSampler};
use crate::report::{Row, secs, thousands};
use crate::verify;

const SCENARIO: Scenario = Scenario::Big;
/// The goal for the daemon, above idle.
const DAEMON_GOAL: u64 = 64 << 20;
/// The goal for the hub, above idle.
const HUB_GOAL: u64 = 128 << 20;
/// Large entries appended per pipeline (keeps lula-bench's own memory small).
const APPEND_PIPELINE: u64 = 8;
/// Entries per page when verifying: a page of 5 MB entries is 20 MB.
const VERIFY_PAGE: usize = 4;

/// Runs scenario 8: the backlog up, then the broadcasts down.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let up = upstream(ctx).await?;
    let down = broadcasts(ctx).await?;
    Ok(heavy::up_then_down(SCENARIO, up, down))
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

/// Part one: the daemon's memory through a backlog of large entries.
async fn upstream(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let s = ctx.sizes;
    let n = s.big_backlog_entries;
    let what = format!(
        "{} x {} KB backlog, 1 daemon",
        thousands(n),
        s.big_backlog_bytes / 1000
    );
    let up = heavy::start_daemon_process(ctx, "big-up", None).await?;
    let (client, device, servers, cloud) = (&up.client, &up.device, &up.servers, &up.cloud);
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
    rows.extend(memory_rows(
        SCENARIO,
        "daemon",
        (idle, peak),
        hwm,
        Some(DAEMON_GOAL),
    ));
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
    drop(up.client);
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
    let subs = heavy::start_subscribers(
        &cloud,
        &servers,
        "big-sub",
        (k, s.big_subscriber_rate_kbit),
        Some(s.big_max_frame_bytes),
    )
    .await?;
    tokio::time::sleep(heavy::SETTLE).await;
    let hub_pid = cloud.hub.pid();
    let idle = cloud.hub.rss_bytes()?;
    let sampler = RssSampler::start(vec![("hub".into(), hub_pid)]);
    ctx.progress(SCENARIO, format_args!("sending {what}"));
    let key = cloud.keys.broadcast_stream();
    append_large(&cloud.conn(), &key, n, s.big_broadcast_bytes).await?;
    let (stored, _) = heavy::wait_stored(&servers, &subs.devices, n, s.wait_timeout).await?;
    let peak = sampler.peaks()[0].peak.max(idle);
    let hwm = procstat::hwm_bytes(hub_pid).ok();
    drop(sampler);
    let mut rows = vec![Row::info(SCENARIO, "load (down)", &what)];
    rows.extend(memory_rows(
        SCENARIO,
        "hub",
        (idle, peak),
        hwm,
        Some(HUB_GOAL),
    ));
    rows.push(heavy::stored_row(SCENARIO, &stored, n));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = subs.daemons.stop().await;
    ctx.progress(SCENARIO, "verifying the broadcasts");
    let check =
        heavy::verify_broadcasts(&cloud, &servers, &subs.devices, (&key, n), VERIFY_PAGE).await;
    let mut notes: Vec<String> = cloud.hub_log_note(SCENARIO.name()).into_iter().collect();
    if let Err(e) = stopped {
        notes.push(format!("{}: stopping the clients: {e:#}", SCENARIO.name()));
    }
    Ok(Outcome { rows, check, notes })
}
