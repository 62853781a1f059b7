//! Scenario 2, upstream latency: one connected device whose producer appends
//! at a fixed rate, by schedule, each entry stamped with the time right before
//! its `XADD`; a reader blocked on `lula-hub:in:x` notes how long after its
//! stamp each entry arrived. One rate after the other, each over a fresh
//! window; the first `warmup` of each is left out.

use std::time::Duration;

use anyhow::Context as _;
use lula_protocol::StreamId;

use super::{Ctx, EXACTLY_ONCE, Outcome, check_row, cpu_rows, moved_entries};
use crate::cloud::Cloud;
use crate::config::Scenario;
use crate::devices::{Daemons, DeviceServers, wait_connected};
use crate::load::{self, LatencyReader, Pace, Percentiles};
use crate::procstat::CpuMeter;
use crate::report::{Row, ms, per_second, thousands};
use crate::verify;

const SCENARIO: Scenario = Scenario::Latency;

/// The p99 target at `rate`, µs.
fn target_p99(rate: u64) -> Option<u64> {
    match rate {
        1_000 => Some(5_000),
        10_000 => Some(20_000),
        _ => None,
    }
}

/// Runs scenario 2.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let s = ctx.sizes;
    let cloud = Cloud::start(ctx.hub_exe).await?;
    let servers = DeviceServers::start(1).await?;
    let devices = servers.provision(&cloud, "lat", 1).await?;
    let device = devices.first().context("one device")?;
    let mut daemons = Daemons::new(ctx.compression_window_bits)?;
    daemons.start(device, &servers, &cloud);
    let connected = wait_connected(&devices, &servers, s.wait_timeout).await?;
    anyhow::ensure!(connected == 1, "the client did not connect");

    let in_key = cloud.keys.in_stream();
    let reader = LatencyReader::start(cloud.redis_url(), in_key.clone(), StreamId::ZERO);
    let payload = load::payload(s.payload_bytes);
    let mut hub = cloud.conn();
    let mut rows = Vec::new();
    let mut cpu = Vec::new();
    let mut phases = Vec::new();
    let mut sent = 0u64;
    let mut timed_out = false;
    for (i, &rate) in s.latency_rates.iter().enumerate() {
        ctx.progress(
            SCENARIO,
            format_args!("{} entries/s for {:?}", thousands(rate), s.latency_duration),
        );
        let last = i + 1 == s.latency_rates.len();
        let meter = CpuMeter::start(vec![
            ("hub".into(), vec![cloud.hub.pid()]),
            ("hub redis".into(), vec![cloud.redis_pid()]),
            ("device redis".into(), servers.pids()),
            (
                "lula-bench (client, auth, load)".into(),
                vec![std::process::id()],
            ),
        ]);
        let from = load::now_micros();
        let (produced, producer_cpu) = load::produce_all(vec![Pace {
            url: servers.url(0),
            keys: vec![device.keys.out_stream()],
            rate,
            duration: s.latency_duration,
            batch: 1,
            payload: payload.clone(),
        }])
        .await?;
        let produced = produced[0];
        let to = load::now_micros();
        sent += produced.entries;
        let (_, done) = load::wait_len(&mut hub, &in_key, sent, s.wait_timeout).await?;
        if last {
            let phase = format!("the {}/s run", thousands(rate));
            cpu = cpu_rows(SCENARIO, &phase, &meter);
            cpu.push(Row::info(
                SCENARIO,
                format!("cpu of which producer thread during {phase}"),
                format!(
                    "{:.2} cores",
                    producer_cpu.as_secs_f64() / produced.elapsed.as_secs_f64()
                ),
            ));
        }
        phases.push((rate, from, to, produced));
        if done.is_none() {
            timed_out = true;
            break;
        }
    }
    let (samples, reader_cores) = reader.finish(sent, s.wait_timeout).await?;
    for (rate, from, to, produced) in phases {
        let p = Percentiles::of(&samples, from + s.warmup.as_micros() as u64, to);
        let at = format!("@ {}/s", thousands(rate));
        rows.push(Row::info(
            SCENARIO,
            format!("produced {at}"),
            format!(
                "{} in {:.1} s ({}), {} samples after warm-up",
                thousands(produced.entries),
                produced.elapsed.as_secs_f64(),
                per_second(
                    produced.entries as f64 / produced.elapsed.as_secs_f64(),
                    "entries"
                ),
                thousands(p.count as u64)
            ),
        ));
        rows.push(Row::info(SCENARIO, format!("p50 {at}"), ms(p.p50)));
        let p99 = Row::info(SCENARIO, format!("p99 {at}"), ms(p.p99));
        rows.push(match target_p99(rate) {
            Some(t) => p99.target(format!("<= {}", ms(t)), p.count > 0 && p.p99 <= t),
            None => p99,
        });
        rows.push(Row::info(SCENARIO, format!("p99.9 {at}"), ms(p.p999)));
        rows.push(Row::info(SCENARIO, format!("max {at}"), ms(p.max)));
    }
    rows.extend(cpu);
    rows.push(Row::info(
        SCENARIO,
        "cpu of which latency reader thread, whole scenario",
        format!("{reader_cores:.2} cores"),
    ));
    if timed_out {
        rows.push(
            Row::info(
                SCENARIO,
                "arrival",
                "timed out waiting for the entries to arrive",
            )
            .target("all arrive", false),
        );
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = daemons.stop().await;
    ctx.progress(SCENARIO, "verifying");
    let verified = verify::upstream(
        cloud.conn(),
        &in_key,
        vec![verify::DeviceOut {
            client: device.client.to_string(),
            conn: servers.conn(0),
            key: device.keys.out_stream(),
        }],
    )
    .await;
    let check = moved_entries(verified, Some(sent))
        .map(|n| format!("{} entries", thousands(n)))
        .map_err(|e| format!("{e:#}"));
    rows.push(check_row(SCENARIO, EXACTLY_ONCE, &check));
    let mut notes: Vec<String> = cloud.hub_log_note(SCENARIO.name()).into_iter().collect();
    if let Err(e) = stopped {
        notes.push(format!("{}: stopping the client: {e:#}", SCENARIO.name()));
    }
    Ok(Outcome { rows, check, notes })
}
