//! Scenario 7, drain: a device back from a day offline on a slow metered link
//! (issue 16). Its out stream holds a backlog of small telemetry entries when
//! its daemon starts; the daemon reaches the hub through a [`CountingProxy`]
//! playing a 2G-class link ([`Throttle`]: 256 kbit/s each way, 300 ms one-way
//! delay by default). The clock runs from the daemon's start (login and
//! connect included) until the hub's in stream holds the whole backlog; the
//! bytes both ways are counted at the proxy. Verified exactly once, in order.
//! Run twice: with JSON text frames, then with compressed frames.

use anyhow::Context as _;
use tokio::time::Instant;

use super::wire::{Mode, Shape, preload};
use super::{Ctx, EXACTLY_ONCE, Outcome, check_row};
use crate::cloud::Cloud;
use crate::config::Scenario;
use crate::devices::{Daemons, DeviceServers};
use crate::load;
use crate::report::{Row, secs, thousands};
use crate::verify;
use crate::wire_proxy::{CountingProxy, Throttle};

const SCENARIO: Scenario = Scenario::Drain;

/// Runs scenario 7, once per mode.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut verified = Vec::new();
    let mut failed = Vec::new();
    for mode in Mode::ALL {
        let outcome = run_mode(ctx, mode).await?;
        rows.extend(outcome.rows);
        notes.extend(outcome.notes);
        match outcome.check {
            Ok(what) => verified.push(format!("{}: {what}", mode.name())),
            Err(e) => failed.push(format!("{}: {e}", mode.name())),
        }
    }
    let check = if failed.is_empty() {
        Ok(verified.join("; "))
    } else {
        Err(failed.join("; "))
    };
    rows.push(check_row(SCENARIO, EXACTLY_ONCE, &check));
    Ok(Outcome { rows, check, notes })
}

/// One drain in one mode, with its own cloud and device.
async fn run_mode(ctx: &Ctx<'_>, mode: Mode) -> anyhow::Result<Outcome> {
    let s = ctx.sizes;
    let n = s.drain_entries;
    let throttle = Throttle {
        rate_bytes_per_sec: s.drain_rate_kbit * 1000 / 8,
        delay: s.drain_delay,
    };
    let cloud = Cloud::start(ctx.hub_exe).await?;
    let servers = DeviceServers::start(1).await?;
    let device = servers
        .provision(&cloud, "drain", 1)
        .await?
        .pop()
        .context("one device")?;
    let hub_addr = cloud
        .hub
        .url()
        .trim_start_matches("ws://")
        .parse()
        .context("hub address")?;
    let proxy = CountingProxy::start_throttled(hub_addr, Some(throttle)).await?;
    ctx.progress(
        SCENARIO,
        format_args!("preloading {} telemetry entries", thousands(n)),
    );
    let field_bytes = preload(
        &servers.conn(0),
        &device.keys.out_stream(),
        n,
        Shape::Telemetry,
    )
    .await?;

    let link = format!(
        "{} kbit/s each way, {} ms one-way delay",
        s.drain_rate_kbit,
        s.drain_delay.as_millis()
    );
    ctx.progress(SCENARIO, format_args!("draining through {link}"));
    let in_key = cloud.keys.in_stream();
    let mut daemons = Daemons::new(None)?;
    let start = Instant::now();
    daemons.start_via(&device, &servers, &cloud, proxy.url(), mode.window_bits());
    let (len, done) = load::wait_len(&mut cloud.conn(), &in_key, n, s.wait_timeout).await?;
    let bytes = proxy.bytes();
    let mut rows = vec![Row::info(SCENARIO, format!("link ({})", mode.name()), link)];
    let metric = format!(
        "time to drain {} telemetry entries ({})",
        thousands(n),
        mode.name()
    );
    rows.push(match done {
        Some(done) => Row::info(SCENARIO, metric, secs(done.duration_since(start))),
        None => Row::info(
            SCENARIO,
            metric,
            format!(
                "timed out: {} of {} after {}",
                thousands(len),
                thousands(n),
                secs(s.wait_timeout)
            ),
        )
        .target("drains", false),
    });
    let per = |b: u64| b as f64 / n.max(1) as f64;
    rows.push(Row::info(
        SCENARIO,
        format!("wire bytes/entry, both ways ({})", mode.name()),
        format!(
            "{:.1} B (device to hub {:.1}, hub to device {:.1}; fields {:.1})",
            per(bytes.up + bytes.down),
            per(bytes.up),
            per(bytes.down),
            per(field_bytes)
        ),
    ));

    let stopped = daemons.stop().await;
    ctx.progress(SCENARIO, "verifying");
    let check = verify::upstream(
        cloud.conn(),
        &in_key,
        vec![verify::DeviceOut {
            client: device.client.to_string(),
            conn: servers.conn(0),
            key: device.keys.out_stream(),
        }],
    )
    .await
    .map(|n| format!("{} entries", thousands(n)))
    .map_err(|e| format!("{e:#}"));
    let mut notes: Vec<String> = cloud.hub_log_note(SCENARIO.name()).into_iter().collect();
    if let Err(e) = stopped {
        notes.push(format!("{}: stopping the client: {e:#}", SCENARIO.name()));
    }
    Ok(Outcome { rows, check, notes })
}
