//! Scenario 3, fan-in: many devices on one hub, each producing steadily.
//!
//! The devices share a few device Redis servers (each device has a key prefix
//! of its own) and their daemons run in this process. They are provisioned,
//! then started a wave at a time (registration and login through lula-auth,
//! bcrypt cost 4) until all are connected. Then, on the same connected
//! devices, two phases of `fanin_duration` each, in which one producer per
//! device server appends, by schedule, small batches round-robin over its
//! devices, each entry stamped as in scenario 2:
//!
//! 1. Throughput, at `fanin_rate`, a little above the target. Throughput is
//!    what arrives in `lula-hub:in:x` per second (by `XLEN`) from the end of
//!    the warm-up until production ends; when the hub keeps up that is the
//!    offered rate, when it does not it is what the hub manages. No latency
//!    reader runs here: it reads every entry of the in stream, which at this
//!    rate costs about a quarter of a core that the measured system would
//!    otherwise have, and latency at saturation says nothing anyway, as it is
//!    the queue that builds up for as long as the run lasts. The CPU of each
//!    process is reported for this phase, to show what bounds it. The phase
//!    ends when everything produced has arrived.
//! 2. Latency, at `fanin_latency_rate`, below the ceiling, so that what is
//!    measured is the path through the hub rather than a queue. A latency
//!    reader reads the in stream from its last entry before the phase and
//!    reports the percentiles of the entries stamped after the warm-up, and
//!    its own CPU.
//!
//! The exactly-once check at the end covers the entries of both phases: they
//! all sit in the devices' out streams. The per-device counter `n` starts at
//! 0 again in the second phase, which is fine, since [`verify::upstream`]
//! matches entries by position and compares every field, never looking `n`
//! up. Producers and the latency reader run on threads of their own (see
//! [`load::isolated`]).

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use super::{Ctx, EXACTLY_ONCE, Outcome, check_row, cpu_rows, moved_entries};
use crate::cloud::Cloud;
use crate::config::Scenario;
use crate::devices::{Daemons, Device, DeviceServers, wait_connected};
use crate::load::{self, LatencyReader, Pace, Percentiles};
use crate::procstat::CpuMeter;
use crate::report::{Row, ms, per_second, secs, thousands};
use crate::verify;

const SCENARIO: Scenario = Scenario::Fanin;
/// Target from the issue, entries per second.
const TARGET_RATE: f64 = 50_000.0;

/// The connected devices both phases produce into.
struct Fleet<'a> {
    ctx: &'a Ctx<'a>,
    cloud: &'a Cloud,
    servers: &'a DeviceServers,
    devices: &'a [Device],
    in_key: String,
}

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
    let mut daemons = Daemons::new(ctx.compression_window_bits)?;
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
    let mut rows = vec![Row::info(
        SCENARIO,
        format!(
            "setup: provision, register, log in, connect {} devices",
            devices.len()
        ),
        secs(setup.elapsed()),
    )];

    let fleet = Fleet {
        ctx,
        cloud: &cloud,
        servers: &servers,
        devices: &devices,
        in_key: cloud.keys.in_stream(),
    };
    let mut hub = cloud.conn();
    let (produced, all_arrived) = fleet.throughput_phase(&mut hub, &mut rows).await?;
    if all_arrived {
        fleet.latency_phase(&mut hub, produced, &mut rows).await?;
    } else {
        // Entries of the first phase still on their way would count as the
        // second phase's.
        rows.push(Row::info(
            SCENARIO,
            "latency phase",
            "skipped: the throughput phase's entries did not all arrive",
        ));
    }

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
    let verified = verify::upstream(cloud.conn(), &fleet.in_key, outs).await;
    let check = moved_entries(verified, None)
        .map(|n| format!("{} entries of {} devices", thousands(n), devices.len()))
        .map_err(|e| format!("{e:#}"));
    rows.push(check_row(SCENARIO, EXACTLY_ONCE, &check));
    let mut notes: Vec<String> = cloud.hub_log_note(SCENARIO.name()).into_iter().collect();
    if let Err(e) = stopped {
        notes.push(format!("{}: stopping the clients: {e:#}", SCENARIO.name()));
    }
    Ok(Outcome { rows, check, notes })
}

impl Fleet<'_> {
    /// One producer per device server, together producing `rate` entries/s
    /// for `fanin_duration`, each server's share in proportion to its devices.
    fn paces(&self, rate: u64) -> Vec<Pace> {
        let s = self.ctx.sizes;
        (0..self.servers.len())
            .filter_map(|i| {
                let keys: Vec<String> = self
                    .devices
                    .iter()
                    .filter(|d| d.server == i)
                    .map(|d| d.keys.out_stream())
                    .collect();
                let rate = rate * keys.len() as u64 / self.devices.len().max(1) as u64;
                (!keys.is_empty()).then(|| Pace {
                    url: self.servers.url(i),
                    keys,
                    rate,
                    duration: s.fanin_duration,
                    batch: s.fanin_batch,
                    payload: load::payload(s.payload_bytes),
                })
            })
            .collect()
    }

    /// `@ 20,000/s offered`: which phase a row belongs to.
    fn at(rate: u64) -> String {
        format!("@ {}/s offered", thousands(rate))
    }

    /// Phase 1: produces at `fanin_rate` without a latency reader and pushes
    /// the throughput rows and the CPU each process used. Returns the entries
    /// produced and whether they all arrived.
    async fn throughput_phase(
        &self,
        hub: &mut MultiplexedConnection,
        rows: &mut Vec<Row>,
    ) -> anyhow::Result<(u64, bool)> {
        let s = self.ctx.sizes;
        let rate = s.fanin_rate;
        self.ctx.progress(
            SCENARIO,
            format_args!(
                "throughput phase: producing {} entries/s for {:?} in batches of {}",
                thousands(rate),
                s.fanin_duration,
                s.fanin_batch
            ),
        );
        let paces = self.paces(rate);
        let meter = self.cpu_meter();
        let start = Instant::now();
        // What has arrived once the warm-up is over: the start of the window
        // throughput is measured over.
        let window_start = {
            let (mut hub, key, at) = (self.cloud.conn(), self.in_key.clone(), start + s.warmup);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let len = load::xlen(&mut hub, &key).await;
                len.map(|len| (Instant::now(), len))
            })
        };
        let (produced, producer_cpu) = load::produce_all(paces).await?;
        let window_end = (Instant::now(), load::xlen(hub, &self.in_key).await?);
        let producing = start.elapsed();
        let produced: u64 = produced.iter().map(|p| p.entries).sum();
        let phase = "throughput phase";
        let mut cpu = cpu_rows(SCENARIO, phase, &meter);
        cpu.push(Row::info(
            SCENARIO,
            format!("cpu of which producer thread during {phase}"),
            format!(
                "{:.2} cores",
                producer_cpu.as_secs_f64() / producing.as_secs_f64()
            ),
        ));
        let (len, done) = load::wait_len(hub, &self.in_key, produced, s.wait_timeout).await?;

        let (window_from, window_from_len) =
            window_start.await.context("XLEN at warm-up end")??;
        let arriving = window_end.1.saturating_sub(window_from_len) as f64
            / window_end
                .0
                .duration_since(window_from)
                .as_secs_f64()
                .max(1e-6);
        rows.push(
            Row::info(
                SCENARIO,
                format!(
                    "aggregate entries/s arriving ({} devices, while producing {})",
                    self.devices.len(),
                    Self::at(rate)
                ),
                per_second(arriving, "entries"),
            )
            .ratio(self.ctx.ratio(arriving))
            .target(
                format!(">= {}", per_second(TARGET_RATE, "entries")),
                arriving >= TARGET_RATE,
            ),
        );
        rows.push(self.produced_row(rate, produced, producing));
        let arrived = format!("all arrived, after producers stopped {}", Self::at(rate));
        rows.push(match done {
            Some(done) => Row::info(
                SCENARIO,
                arrived,
                secs(done.duration_since(start).saturating_sub(producing)),
            ),
            None => Row::info(
                SCENARIO,
                arrived,
                format!("timed out: {} of {}", thousands(len), thousands(produced)),
            )
            .target("all arrive", false),
        });
        rows.extend(cpu);
        Ok((produced, done.is_some()))
    }

    /// Phase 2: produces at `fanin_latency_rate` with a latency reader that
    /// starts after the last entry already in the hub (`before` of them) and
    /// pushes the latency rows and the reader's CPU.
    async fn latency_phase(
        &self,
        hub: &mut MultiplexedConnection,
        before: u64,
        rows: &mut Vec<Row>,
    ) -> anyhow::Result<()> {
        let s = self.ctx.sizes;
        let rate = s.fanin_latency_rate;
        let at = Self::at(rate);
        self.ctx.progress(
            SCENARIO,
            format_args!(
                "latency phase: producing {} entries/s for {:?} in batches of {}",
                thousands(rate),
                s.fanin_duration,
                s.fanin_batch
            ),
        );
        let paces = self.paces(rate);
        let after = load::last_id(hub, &self.in_key).await?;
        let reader = LatencyReader::start(self.cloud.redis_url(), self.in_key.clone(), after);
        let start = Instant::now();
        let from = load::now_micros();
        let (produced, _) = load::produce_all(paces).await?;
        let to = load::now_micros();
        let producing = start.elapsed();
        let produced: u64 = produced.iter().map(|p| p.entries).sum();
        let (len, done) =
            load::wait_len(hub, &self.in_key, before + produced, s.wait_timeout).await?;
        let (samples, reader_cores) = reader.finish(produced, s.wait_timeout).await?;

        rows.push(self.produced_row(rate, produced, producing));
        if done.is_none() {
            rows.push(
                Row::info(
                    SCENARIO,
                    format!("all arrived, after producers stopped {at}"),
                    format!(
                        "timed out: {} of {}",
                        thousands(len.saturating_sub(before)),
                        thousands(produced)
                    ),
                )
                .target("all arrive", false),
            );
        }
        let p = Percentiles::of(&samples, from + s.warmup.as_micros() as u64, to);
        rows.push(Row::info(
            SCENARIO,
            format!("latency samples after warm-up {at}"),
            thousands(p.count as u64),
        ));
        rows.push(Row::info(SCENARIO, format!("latency p50 {at}"), ms(p.p50)));
        rows.push(Row::info(SCENARIO, format!("latency p99 {at}"), ms(p.p99)));
        rows.push(Row::info(
            SCENARIO,
            format!("latency p99.9 {at}"),
            ms(p.p999),
        ));
        rows.push(Row::info(
            SCENARIO,
            format!("cpu latency reader thread during latency phase {at}"),
            format!("{reader_cores:.2} cores"),
        ));
        Ok(())
    }

    /// What was offered: entries, time, rate achieved and rate asked.
    fn produced_row(&self, rate: u64, produced: u64, producing: Duration) -> Row {
        Row::info(
            SCENARIO,
            format!("produced {}", Self::at(rate)),
            format!(
                "{} in {} ({})",
                thousands(produced),
                secs(producing),
                per_second(produced as f64 / producing.as_secs_f64(), "entries"),
            ),
        )
    }

    /// CPU of the hub, the Redis servers and this process, from now on.
    fn cpu_meter(&self) -> CpuMeter {
        CpuMeter::start(vec![
            ("hub".into(), vec![self.cloud.hub.pid()]),
            ("hub redis".into(), vec![self.cloud.redis_pid()]),
            ("device redis".into(), self.servers.pids()),
            (
                "lula-bench (clients, auth, load)".into(),
                vec![std::process::id()],
            ),
        ])
    }
}
