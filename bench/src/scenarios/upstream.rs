//! Scenario 1, upstream: one device whose out stream already holds the whole
//! load when its daemon starts; how fast it all reaches `lula-hub:in:x`.
//! The clock runs from the daemon's start (registration, login and connect
//! included) until `XLEN` of the hub's in stream reaches the count. Meanwhile
//! the resident memory of the hub and of lula-bench (the client runs in it) is
//! sampled: a long-offline device's backlog must not cost memory in proportion.

use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use super::{
    Ctx, EXACTLY_ONCE, Outcome, catch_up_sampler, check_row, compression_row, cpu_rows, memory_rows,
};
use crate::cloud::Cloud;
use crate::config::Scenario;
use crate::devices::{Daemons, DeviceServers};
use crate::load;
use crate::procstat::CpuMeter;
use crate::report::{Row, per_second, secs, thousands};
use crate::verify;

const SCENARIO: Scenario = Scenario::Upstream;
/// Target from the issue, entries per second.
const TARGET_RATE: f64 = 100_000.0;
/// Target from the issue, fraction of the baseline.
const TARGET_RATIO: f64 = 0.25;

/// Runs scenario 1.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let s = ctx.sizes;
    let n = s.upstream_entries;
    let cloud = Cloud::start(ctx.hub_exe).await?;
    let servers = DeviceServers::start(1).await?;
    let device = servers
        .provision(&cloud, "up", 1)
        .await?
        .pop()
        .context("one device")?;
    ctx.progress(
        SCENARIO,
        format_args!("preloading {} entries", thousands(n)),
    );
    load::preload(
        &servers.conn(0),
        &device.keys.out_stream(),
        n,
        &load::payload(s.payload_bytes),
    )
    .await?;

    ctx.progress(SCENARIO, "starting the client");
    let in_key = cloud.keys.in_stream();
    let mut hub = cloud.conn();
    let meter = CpuMeter::start(vec![
        ("hub".into(), vec![cloud.hub.pid()]),
        ("hub redis".into(), vec![cloud.redis_pid()]),
        ("device redis".into(), servers.pids()),
        ("lula-bench (client, auth)".into(), vec![std::process::id()]),
    ]);
    let memory = catch_up_sampler(cloud.hub.pid());
    let mut daemons = Daemons::new(ctx.compression_window_bits)?;
    let start = Instant::now();
    daemons.start(&device, &servers, &cloud);
    let (_, first) = load::wait_len(&mut hub, &in_key, 1, s.wait_timeout).await?;
    load::wait_len(&mut hub, &in_key, (n / 10).max(1), s.wait_timeout).await?;
    let at_tenth = memory.peaks();
    let (len, done) = load::wait_len(&mut hub, &in_key, n, s.wait_timeout).await?;
    let at_end = memory.peaks();
    drop(memory);
    let mut rows = vec![compression_row(SCENARIO, ctx.compression_window_bits)];
    match done {
        Some(done) => {
            let elapsed = done.duration_since(start);
            let rate = n as f64 / elapsed.as_secs_f64();
            let ratio = ctx.ratio(rate);
            rows.push(
                Row::info(
                    SCENARIO,
                    format!("entries/s ({} preloaded, 1 device)", thousands(n)),
                    per_second(rate, "entries"),
                )
                .ratio(ratio)
                .target(
                    format!(
                        ">= {} and >= {TARGET_RATIO} x baseline",
                        per_second(TARGET_RATE, "entries")
                    ),
                    rate >= TARGET_RATE && ratio.is_none_or(|r| r >= TARGET_RATIO),
                ),
            );
            rows.push(Row::info(
                SCENARIO,
                "elapsed (client start to last entry)",
                secs(elapsed),
            ));
        }
        None => rows.push(
            Row::info(
                SCENARIO,
                format!("entries/s ({} preloaded, 1 device)", thousands(n)),
                format!(
                    "timed out: {} of {} after {}",
                    thousands(len),
                    thousands(n),
                    secs(s.wait_timeout)
                ),
            )
            .target(format!(">= {}", per_second(TARGET_RATE, "entries")), false),
        ),
    }
    if let Some(first) = first {
        rows.push(Row::info(
            SCENARIO,
            "first entry in the hub after (register, login, connect)",
            secs(first.duration_since(start)),
        ));
    }
    rows.extend(cpu_rows(SCENARIO, "transfer", &meter));
    rows.extend(memory_rows(SCENARIO, &at_tenth, &at_end, n));

    // Give a stray duplicate a moment to show, then stop writing and compare.
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    rows.push(check_row(SCENARIO, EXACTLY_ONCE, &check));
    let mut notes: Vec<String> = cloud.hub_log_note(SCENARIO.name()).into_iter().collect();
    if let Err(e) = stopped {
        notes.push(format!("{}: stopping the client: {e:#}", SCENARIO.name()));
    }
    Ok(Outcome { rows, check, notes })
}
