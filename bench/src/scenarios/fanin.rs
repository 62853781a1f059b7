//! Scenario 3, fan-in: many devices on one hub, each producing steadily.
//!
//! The devices share a few device Redis servers (each device has a key prefix
//! of its own) and their daemons run in this process. They are provisioned,
//! then started a wave at a time (registration and login through lula-auth,
//! bcrypt cost 4) until all are connected. Then one producer per device server
//! appends, by schedule, small batches round-robin over its devices, at an
//! aggregate rate a little above the target, each entry stamped as in
//! scenario 2. Throughput is what arrives in `lula-hub:in:x` per second
//! (by `XLEN`) from the end of the warm-up until production ends; when the
//! hub keeps up that is the offered rate, when it does not it is what the
//! hub manages. Producers and the latency reader run on threads of their own
//! (see [`load::isolated`]).

use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use super::{Ctx, EXACTLY_ONCE, Outcome, check_row, cpu_rows};
use crate::cloud::Cloud;
use crate::config::Scenario;
use crate::devices::{Daemons, DeviceServers, wait_connected};
use crate::load::{self, LatencyReader, Pace, Percentiles};
use crate::procstat::CpuMeter;
use crate::report::{Row, ms, per_second, secs, thousands};
use crate::verify;

const SCENARIO: Scenario = Scenario::Fanin;
/// Target from the issue, entries per second.
const TARGET_RATE: f64 = 50_000.0;

/// Runs scenario 3.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let s = ctx.sizes;
    let cloud = Cloud::start(ctx.hub_exe).await?;
    let servers = DeviceServers::start(s.fanin_redis_servers).await?;
    ctx.progress(
        SCENARIO,
        format_args!(
            "provisioning and connecting {} devices on {} device redis servers",
            thousands(s.fanin_devices as u64),
            servers.len()
        ),
    );
    let setup = Instant::now();
    let devices = servers.provision(&cloud, "fan", s.fanin_devices).await?;
    let mut daemons = Daemons::new()?;
    for wave in devices.chunks(s.setup_concurrency.max(1)) {
        for device in wave {
            daemons.start(device, &servers, &cloud);
        }
        let connected = wait_connected(wave, &servers, s.wait_timeout).await?;
        anyhow::ensure!(
            connected == wave.len(),
            "only {connected} of a wave of {} devices connected within {:?}",
            wave.len(),
            s.wait_timeout
        );
    }
    let setup_row = Row::info(
        SCENARIO,
        format!(
            "setup: provision, register, log in, connect {} devices",
            devices.len()
        ),
        secs(setup.elapsed()),
    );

    let in_key = cloud.keys.in_stream();
    let reader = LatencyReader::start(cloud.redis_url(), in_key.clone());
    ctx.progress(
        SCENARIO,
        format_args!(
            "producing {} entries/s for {:?} in batches of {}",
            thousands(s.fanin_rate),
            s.fanin_duration,
            s.fanin_batch
        ),
    );
    let paces: Vec<Pace> = (0..servers.len())
        .filter_map(|i| {
            let keys: Vec<String> = devices
                .iter()
                .filter(|d| d.server == i)
                .map(|d| d.keys.out_stream())
                .collect();
            let rate = s.fanin_rate * keys.len() as u64 / devices.len().max(1) as u64;
            (!keys.is_empty()).then(|| Pace {
                url: servers.url(i),
                keys,
                rate,
                duration: s.fanin_duration,
                batch: s.fanin_batch,
                payload: load::payload(s.payload_bytes),
            })
        })
        .collect();
    let meter = CpuMeter::start(vec![
        ("hub".into(), vec![cloud.hub.pid()]),
        ("hub redis".into(), vec![cloud.redis_pid()]),
        ("device redis".into(), servers.pids()),
        (
            "lula-bench (clients, auth, load)".into(),
            vec![std::process::id()],
        ),
    ]);
    let start = Instant::now();
    let from = load::now_micros();
    // What has arrived once the warm-up is over: the start of the window
    // throughput is measured over.
    let mut hub = cloud.conn();
    let window_start = {
        let (mut hub, key, at) = (cloud.conn(), in_key.clone(), start + s.warmup);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let len = load::xlen(&mut hub, &key).await;
            len.map(|len| (Instant::now(), len))
        })
    };
    let (produced, producer_cpu) = load::produce_all(paces).await?;
    let window_end = (Instant::now(), load::xlen(&mut hub, &in_key).await?);
    let to = load::now_micros();
    let producing = start.elapsed();
    let produced: u64 = produced.iter().map(|p| p.entries).sum();
    let mut cpu = cpu_rows(SCENARIO, "production", &meter);
    cpu.push(Row::info(
        SCENARIO,
        "cpu of which producer thread during production",
        format!(
            "{:.2} cores",
            producer_cpu.as_secs_f64() / producing.as_secs_f64()
        ),
    ));
    let (len, done) = load::wait_len(&mut hub, &in_key, produced, s.wait_timeout).await?;
    let (samples, reader_cores) = reader.finish(produced, s.wait_timeout).await?;
    cpu.push(Row::info(
        SCENARIO,
        "cpu of which latency reader thread, whole scenario",
        format!("{reader_cores:.2} cores"),
    ));

    let (window_from, window_from_len) = window_start.await.context("XLEN at warm-up end")??;
    let rate = window_end.1.saturating_sub(window_from_len) as f64
        / window_end
            .0
            .duration_since(window_from)
            .as_secs_f64()
            .max(1e-6);
    let ratio = ctx.ratio(rate);
    let mut rows = vec![setup_row];
    rows.push(
        Row::info(
            SCENARIO,
            format!(
                "aggregate entries/s arriving ({} devices, while producing)",
                devices.len()
            ),
            per_second(rate, "entries"),
        )
        .ratio(ratio)
        .target(
            format!(">= {}", per_second(TARGET_RATE, "entries")),
            rate >= TARGET_RATE,
        ),
    );
    rows.push(Row::info(
        SCENARIO,
        "produced (offered)",
        format!(
            "{} in {} ({}; asked {})",
            thousands(produced),
            secs(producing),
            per_second(produced as f64 / producing.as_secs_f64(), "entries"),
            per_second(s.fanin_rate as f64, "entries")
        ),
    ));
    rows.push(match done {
        Some(done) => Row::info(
            SCENARIO,
            "all arrived, after producers stopped",
            secs(done.duration_since(start).saturating_sub(producing)),
        ),
        None => Row::info(
            SCENARIO,
            "all arrived, after producers stopped",
            format!("timed out: {} of {}", thousands(len), thousands(produced)),
        )
        .target("all arrive", false),
    });
    let p = Percentiles::of(&samples, from + s.warmup.as_micros() as u64, to);
    rows.push(Row::info(
        SCENARIO,
        "latency samples after warm-up",
        thousands(p.count as u64),
    ));
    rows.push(Row::info(SCENARIO, "latency p50", ms(p.p50)));
    rows.push(Row::info(SCENARIO, "latency p99", ms(p.p99)));
    rows.push(Row::info(SCENARIO, "latency p99.9", ms(p.p999)));
    rows.extend(cpu);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = daemons.stop().await;
    ctx.progress(SCENARIO, "verifying");
    let outs = devices
        .iter()
        .map(|d| verify::DeviceOut {
            client: d.client.to_string(),
            conn: servers.conn(d.server),
            key: d.keys.out_stream(),
        })
        .collect();
    let check = verify::upstream(cloud.conn(), &in_key, outs)
        .await
        .map(|n| format!("{} entries of {} devices", thousands(n), devices.len()))
        .map_err(|e| format!("{e:#}"));
    rows.push(check_row(SCENARIO, EXACTLY_ONCE, &check));
    let mut notes: Vec<String> = cloud.hub_log_note(SCENARIO.name()).into_iter().collect();
    if let Err(e) = stopped {
        notes.push(format!("{}: stopping the clients: {e:#}", SCENARIO.name()));
    }
    Ok(Outcome { rows, check, notes })
}
