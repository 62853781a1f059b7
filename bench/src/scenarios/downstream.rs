//! Scenario 4, downstream: the hub's out stream for one device already holds
//! the whole load when the device's daemon starts; how fast it all reaches
//! the device's `lula-client:in:x`. The clock runs from the daemon's start
//! until `XLEN` of the device's in stream reaches the count, sampling the
//! resident memory of the hub and of lula-bench (the client runs in it).

use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use super::{Ctx, EXACTLY_ONCE, Outcome, catch_up_sampler, check_row, cpu_rows, memory_rows};
use crate::cloud::Cloud;
use crate::config::Scenario;
use crate::devices::{Daemons, DeviceServers};
use crate::load;
use crate::procstat::CpuMeter;
use crate::report::{Row, per_second, secs, thousands};
use crate::verify;

const SCENARIO: Scenario = Scenario::Downstream;
/// Target from the issue, entries per second.
const TARGET_RATE: f64 = 100_000.0;

/// Runs scenario 4.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let s = ctx.sizes;
    let n = s.downstream_entries;
    let cloud = Cloud::start(ctx.hub_exe).await?;
    let servers = DeviceServers::start(1).await?;
    let device = servers
        .provision(&cloud, "down", 1)
        .await?
        .pop()
        .context("one device")?;
    let out_key = cloud.keys.out_stream(&device.client);
    ctx.progress(
        SCENARIO,
        format_args!("preloading {} entries", thousands(n)),
    );
    load::preload(&cloud.conn(), &out_key, n, &load::payload(s.payload_bytes)).await?;

    ctx.progress(SCENARIO, "starting the client");
    let in_key = device.keys.in_stream();
    let mut dev = servers.conn(0);
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
    let (_, first) = load::wait_len(&mut dev, &in_key, 1, s.wait_timeout).await?;
    load::wait_len(&mut dev, &in_key, (n / 10).max(1), s.wait_timeout).await?;
    let at_tenth = memory.peaks();
    let (len, done) = load::wait_len(&mut dev, &in_key, n, s.wait_timeout).await?;
    let at_end = memory.peaks();
    drop(memory);
    let mut rows = Vec::new();
    let metric = format!("entries/s ({} preloaded, 1 device)", thousands(n));
    let target = format!(">= {}", per_second(TARGET_RATE, "entries"));
    match done {
        Some(done) => {
            let elapsed = done.duration_since(start);
            let rate = n as f64 / elapsed.as_secs_f64();
            rows.push(
                Row::info(SCENARIO, metric, per_second(rate, "entries"))
                    .ratio(ctx.ratio(rate))
                    .target(target, rate >= TARGET_RATE),
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
                metric,
                format!(
                    "timed out: {} of {} after {}",
                    thousands(len),
                    thousands(n),
                    secs(s.wait_timeout)
                ),
            )
            .target(target, false),
        ),
    }
    if let Some(first) = first {
        rows.push(Row::info(
            SCENARIO,
            "first entry on the device after (register, login, connect)",
            secs(first.duration_since(start)),
        ));
    }
    rows.extend(cpu_rows(SCENARIO, "transfer", &meter));
    rows.extend(memory_rows(SCENARIO, &at_tenth, &at_end, n));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = daemons.stop().await;
    ctx.progress(SCENARIO, "verifying");
    let check = verify::downstream(cloud.conn(), &out_key, servers.conn(0), &in_key)
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
