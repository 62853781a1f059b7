//! Scenario 6, wire: bytes on the link per entry, and the CPU each side spends
//! per entry, for three payload shapes (issue 16). The device's daemon reaches
//! the hub through a [`CountingProxy`], which counts every byte of the TCP
//! stream in each direction: the HTTP upgrade, WebSocket frame headers and
//! payloads, replies, acks and pings (not TCP/IP headers).
//!
//! Per shape, with its own Redis, hub and device:
//! 1. **up**: the device's out stream is preloaded, the daemon starts (login
//!    and connect count towards this phase), and the phase ends when the hub's
//!    in stream has every entry;
//! 2. **down**: with the daemon connected, the hub's out stream for the device
//!    gets as many entries, and the phase ends when the device has them all.
//!
//! Each phase reports bytes per entry both ways, entries per second, and µs of
//! CPU per entry of the hub process and of lula-bench (which runs the
//! client, and also the proxy, which copies every byte once). Both streams are
//! then verified exactly once, in order.
//!
//! Shapes: **telemetry** (5 numeric fields, about 100 bytes of JSON per
//! entry), **logs** (a JSON-ish log line of about 500 bytes) and **random**
//! (200 random bytes, sent base64-encoded as `fields64` because they are not
//! UTF-8).

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use super::{Ctx, EXACTLY_ONCE, Outcome, check_row};
use crate::cloud::Cloud;
use crate::config::Scenario;
use crate::devices::{Daemons, DeviceServers};
use crate::load;
use crate::procstat::{cpu_ticks, ticks_per_second};
use crate::report::{Row, per_second, secs, thousands};
use crate::verify;
use crate::wire_proxy::{CountingProxy, WireBytes};

const SCENARIO: Scenario = Scenario::Wire;

/// `XADD`s per preload pipeline.
const PRELOAD_PIPELINE: u64 = 500;

/// What each entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Five numeric readings.
    Telemetry,
    /// One JSON-ish log line of about 500 bytes.
    Logs,
    /// 200 random bytes.
    Random,
}

impl Shape {
    /// Every shape, in the order they run.
    pub const ALL: [Shape; 3] = [Shape::Telemetry, Shape::Logs, Shape::Random];

    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Telemetry => "telemetry",
            Shape::Logs => "logs",
            Shape::Random => "random",
        }
    }

    /// The fields (keys and values alternating) of entry `i`.
    pub fn fields(self, i: u64, noise: &mut Noise) -> Vec<Vec<u8>> {
        let pairs: Vec<(&str, Vec<u8>)> = match self {
            Shape::Telemetry => vec![
                ("temp", format!("{:.2}", 15.0 + noise.unit() * 15.0).into()),
                (
                    "humidity",
                    format!("{:.1}", 30.0 + noise.unit() * 50.0).into(),
                ),
                (
                    "pressure",
                    format!("{:.1}", 990.0 + noise.unit() * 40.0).into(),
                ),
                ("battery", (100 - (i / 1000) % 100).to_string().into()),
                ("rssi", format!("-{}", 40 + noise.below(50)).into()),
            ],
            Shape::Logs => vec![
                (
                    "ts",
                    format!(
                        "2026-12-04T15:{:02}:{:02}.{:03}Z",
                        (i / 60_000) % 60,
                        (i / 1000) % 60,
                        i % 1000
                    )
                    .into(),
                ),
                (
                    "level",
                    LEVELS[noise.below(LEVELS.len() as u64) as usize].into(),
                ),
                (
                    "service",
                    SERVICES[noise.below(SERVICES.len() as u64) as usize].into(),
                ),
                ("msg", log_line(noise).into()),
            ],
            Shape::Random => vec![("data", (0..200).map(|_| noise.below(256) as u8).collect())],
        };
        pairs
            .into_iter()
            .flat_map(|(k, v)| [k.as_bytes().to_vec(), v])
            .collect()
    }
}

const LEVELS: [&str; 4] = ["debug", "info", "info", "warn"];
const SERVICES: [&str; 5] = ["pump-ctl", "valve-mgr", "modem", "gps", "uploader"];
const WORDS: [&str; 48] = [
    "request",
    "completed",
    "valve",
    "opened",
    "closed",
    "pressure",
    "threshold",
    "exceeded",
    "retrying",
    "after",
    "timeout",
    "connection",
    "reset",
    "by",
    "peer",
    "sensor",
    "reading",
    "stale",
    "calibration",
    "drift",
    "detected",
    "on",
    "channel",
    "battery",
    "voltage",
    "low",
    "scheduled",
    "maintenance",
    "window",
    "starts",
    "firmware",
    "update",
    "available",
    "checksum",
    "verified",
    "queue",
    "depth",
    "flushed",
    "to",
    "disk",
    "in",
    "the",
    "of",
    "while",
    "waiting",
    "for",
    "modem",
    "signal",
];

/// About 420 bytes of log text: words, numbers, a request id, key=value pairs.
fn log_line(noise: &mut Noise) -> String {
    let mut s = format!("req={:016x} ", noise.next());
    while s.len() < 420 {
        match noise.below(8) {
            0 => s.push_str(&format!(
                "{}={} ",
                WORDS[noise.below(48) as usize],
                noise.below(10_000)
            )),
            1 => s.push_str(&format!("{:.3} ", noise.unit() * 100.0)),
            _ => {
                s.push_str(WORDS[noise.below(48) as usize]);
                s.push(' ');
            }
        }
    }
    s
}

/// Deterministic pseudo-random numbers (xorshift64*): the same entries on every run.
pub struct Noise(u64);

impl Noise {
    /// Seeded (a zero seed is bumped to one).
    pub fn new(seed: u64) -> Self {
        Noise(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Appends `n` entries of `shape` to `key`, pipelined, in order; returns the
/// bytes of their fields (keys plus values), for reference.
pub(crate) async fn preload(
    conn: &MultiplexedConnection,
    key: &str,
    n: u64,
    shape: Shape,
) -> anyhow::Result<u64> {
    let mut noise = Noise::new(n ^ shape as u64);
    let mut field_bytes = 0u64;
    let mut conn = conn.clone();
    for from in (0..n).step_by(PRELOAD_PIPELINE as usize) {
        let mut pipe = redis::pipe();
        for i in from..n.min(from + PRELOAD_PIPELINE) {
            let fields = shape.fields(i, &mut noise);
            field_bytes += fields.iter().map(|f| f.len() as u64).sum::<u64>();
            let cmd = pipe.cmd("XADD").arg(key).arg("*");
            for f in &fields {
                cmd.arg(f.as_slice());
            }
            cmd.ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .with_context(|| format!("preload {key}"))?;
    }
    Ok(field_bytes)
}

/// Bytes and CPU at one moment.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    bytes: WireBytes,
    hub_ticks: u64,
    bench_ticks: u64,
}

impl Mark {
    fn now(proxy: &CountingProxy, hub_pid: u32) -> Self {
        Mark {
            at: Instant::now(),
            bytes: proxy.bytes(),
            hub_ticks: cpu_ticks(hub_pid).unwrap_or(0),
            bench_ticks: cpu_ticks(std::process::id()).unwrap_or(0),
        }
    }
}

/// How the daemon talks to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// JSON text frames (no compression asked for).
    Json,
    /// Compressed frames, the default window.
    Deflate,
}

impl Mode {
    /// Both, in the order they run.
    pub const ALL: [Mode; 2] = [Mode::Json, Mode::Deflate];

    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Json => "json",
            Mode::Deflate => "deflate",
        }
    }

    /// The daemon's `compression_window_bits`.
    pub fn window_bits(self) -> Option<u8> {
        match self {
            Mode::Json => None,
            Mode::Deflate => Some(lula_protocol::compress::DEFAULT_WINDOW_BITS),
        }
    }
}

/// What one phase measured, for the comparison rows.
#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    bytes_per_entry: f64,
    rate: f64,
}

/// The rows of one phase of `n` entries between two marks.
fn phase_rows(label: &str, n: u64, field_bytes: u64, start: Mark, end: Mark) -> (Vec<Row>, Phase) {
    let b = end.bytes.since(start.bytes);
    let per = |x: u64| x as f64 / n.max(1) as f64;
    let elapsed = end.at.duration_since(start.at);
    let us_per_tick = 1e6 / ticks_per_second() as f64;
    let cpu = |t0: u64, t1: u64| t1.saturating_sub(t0) as f64 * us_per_tick / n.max(1) as f64;
    let rate = n as f64 / elapsed.as_secs_f64().max(1e-9);
    let phase = Phase {
        bytes_per_entry: per(b.up + b.down),
        rate,
    };
    let rows = vec![
        Row::info(
            SCENARIO,
            format!("{label}: wire bytes/entry, both ways"),
            format!(
                "{:.1} B (device to hub {:.1}, hub to device {:.1}; fields {:.1})",
                per(b.up + b.down),
                per(b.up),
                per(b.down),
                per(field_bytes)
            ),
        ),
        Row::info(
            SCENARIO,
            format!("{label}: entries/s"),
            format!(
                "{} ({} in {})",
                per_second(rate, "entries"),
                thousands(n),
                secs(elapsed)
            ),
        ),
        Row::info(
            SCENARIO,
            format!("{label}: CPU µs/entry"),
            format!(
                "hub {:.1}, lula-bench (client, proxy) {:.1}",
                cpu(start.hub_ticks, end.hub_ticks),
                cpu(start.bench_ticks, end.bench_ticks)
            ),
        ),
    ];
    (rows, phase)
}

/// Compressed against JSON, for one shape: bytes per entry each way (the
/// issue's goals: at most 0.35 for telemetry, 1.05 for random bytes) and
/// upstream entries/s (at least 0.8).
fn comparison_rows(shape: Shape, json: [Phase; 2], deflate: [Phase; 2]) -> Vec<Row> {
    let bytes_target = match shape {
        Shape::Telemetry => Some(0.35),
        Shape::Random => Some(1.05),
        Shape::Logs => None,
    };
    let mut rows = Vec::new();
    for (i, phase) in ["up", "down"].into_iter().enumerate() {
        let ratio = deflate[i].bytes_per_entry / json[i].bytes_per_entry.max(1e-9);
        let row = Row::info(
            SCENARIO,
            format!("{} {phase}: deflate / json bytes per entry", shape.name()),
            format!(
                "{ratio:.3} ({:.1} B vs {:.1} B)",
                deflate[i].bytes_per_entry, json[i].bytes_per_entry
            ),
        );
        rows.push(match bytes_target {
            Some(t) => row.target(format!("<= {t}"), ratio <= t),
            None => row,
        });
    }
    let rate = deflate[0].rate / json[0].rate.max(1e-9);
    rows.push(
        Row::info(
            SCENARIO,
            format!("{} up: deflate / json entries/s", shape.name()),
            format!("{rate:.2}"),
        )
        .target(">= 0.8", rate >= 0.8),
    );
    rows
}

/// Runs scenario 6: every shape, one after the other.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut verified = Vec::new();
    let mut failed = Vec::new();
    for shape in Shape::ALL {
        let mut phases = Vec::new();
        for mode in Mode::ALL {
            let run = run_shape(ctx, shape, mode).await?;
            rows.extend(run.rows);
            notes.extend(run.notes);
            let name = format!("{} {}", shape.name(), mode.name());
            match run.check {
                Ok(what) => verified.push(format!("{name}: {what}")),
                Err(e) => failed.push(format!("{name}: {e}")),
            }
            phases.push(run.phases);
        }
        rows.extend(comparison_rows(shape, phases[0], phases[1]));
    }
    let check = if failed.is_empty() {
        Ok(verified.join("; "))
    } else {
        Err(failed.join("; "))
    };
    rows.push(check_row(SCENARIO, EXACTLY_ONCE, &check));
    Ok(Outcome { rows, check, notes })
}

/// One shape: its own cloud and device, the up phase, then the down phase.
/// What one run of a shape in one mode found.
struct ShapeRun {
    rows: Vec<Row>,
    check: Result<String, String>,
    notes: Vec<String>,
    /// Up, down.
    phases: [Phase; 2],
}

/// One shape in one mode: its own cloud and device, the up phase, then the
/// down phase.
async fn run_shape(ctx: &Ctx<'_>, shape: Shape, mode: Mode) -> anyhow::Result<ShapeRun> {
    let s = ctx.sizes;
    let n = s.wire_entries;
    let cloud = Cloud::start(ctx.hub_exe).await?;
    let servers = DeviceServers::start(1).await?;
    let device = servers
        .provision(&cloud, &format!("wire-{}", shape.name()), 1)
        .await?
        .pop()
        .context("one device")?;
    let hub_addr = cloud
        .hub
        .url()
        .trim_start_matches("ws://")
        .parse()
        .context("hub address")?;
    let proxy = CountingProxy::start(hub_addr).await?;
    let hub_pid = cloud.hub.pid();
    ctx.progress(
        SCENARIO,
        format_args!(
            "{} {}: preloading {} entries up",
            shape.name(),
            mode.name(),
            thousands(n)
        ),
    );
    let up_fields = preload(&servers.conn(0), &device.keys.out_stream(), n, shape).await?;

    let in_key = cloud.keys.in_stream();
    let mut daemons = Daemons::new(None)?;
    let start = Mark::now(&proxy, hub_pid);
    daemons.start_via(&device, &servers, &cloud, proxy.url(), mode.window_bits());
    let (len, done) = load::wait_len(&mut cloud.conn(), &in_key, n, s.wait_timeout).await?;
    if done.is_none() {
        anyhow::bail!(
            "{}: up: {} of {} entries after {}",
            shape.name(),
            thousands(len),
            thousands(n),
            secs(s.wait_timeout)
        );
    }
    let up_end = Mark::now(&proxy, hub_pid);
    let label = |phase: &str| format!("{} {phase} ({})", shape.name(), mode.name());
    let (mut rows, up) = phase_rows(&label("up"), n, up_fields, start, up_end);

    ctx.progress(
        SCENARIO,
        format_args!("{}: {} entries down", shape.name(), thousands(n)),
    );
    let out_key = cloud.keys.out_stream(&device.client);
    let in_dev = device.keys.in_stream();
    let down_start = Mark::now(&proxy, hub_pid);
    let down_fields = preload(&cloud.conn(), &out_key, n, shape).await?;
    let (len, done) = load::wait_len(&mut servers.conn(0), &in_dev, n, s.wait_timeout).await?;
    if done.is_none() {
        anyhow::bail!(
            "{}: down: {} of {} entries after {}",
            shape.name(),
            thousands(len),
            thousands(n),
            secs(s.wait_timeout)
        );
    }
    let (down_rows, down) = phase_rows(
        &label("down"),
        n,
        down_fields,
        down_start,
        Mark::now(&proxy, hub_pid),
    );
    rows.extend(down_rows);
    let phases = [up, down];

    // Give a stray duplicate a moment to show, then stop and compare.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = daemons.stop().await;
    let verified_up = verify::upstream(
        cloud.conn(),
        &in_key,
        vec![verify::DeviceOut {
            client: device.client.to_string(),
            conn: servers.conn(0),
            key: device.keys.out_stream(),
        }],
    )
    .await;
    let verified_down = verify::downstream(cloud.conn(), &out_key, servers.conn(0), &in_dev).await;
    let check = match (verified_up, verified_down) {
        (Ok(u), Ok(d)) => Ok(format!("{} up, {} down", thousands(u), thousands(d))),
        (Err(e), _) => Err(format!("up: {e:#}")),
        (_, Err(e)) => Err(format!("down: {e:#}")),
    };
    let mut notes: Vec<String> = cloud.hub_log_note(SCENARIO.name()).into_iter().collect();
    if let Err(e) = stopped {
        notes.push(format!(
            "{} {} {}: stopping the client: {e:#}",
            SCENARIO.name(),
            shape.name(),
            mode.name()
        ));
    }
    Ok(ShapeRun {
        rows,
        check,
        notes,
        phases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON an entry of `shape` takes on the wire today, in bytes.
    fn json_bytes(shape: Shape) -> usize {
        let mut noise = Noise::new(3);
        let fields = shape.fields(12_345, &mut noise);
        let entry = lula_protocol::Entry::new("1733300000000-12345".parse().expect("id"), fields);
        serde_json::to_string(&entry).expect("json").len()
    }

    #[test]
    fn shapes_have_the_sizes_the_issue_names() {
        let telemetry = json_bytes(Shape::Telemetry);
        assert!(
            (80..=130).contains(&telemetry),
            "telemetry entry {telemetry} B"
        );
        let logs = json_bytes(Shape::Logs);
        assert!((450..=600).contains(&logs), "log entry {logs} B");
        let mut noise = Noise::new(1);
        let random = Shape::Random.fields(0, &mut noise);
        assert_eq!(random[1].len(), 200);
        assert!(
            std::str::from_utf8(&random[1]).is_err(),
            "random bytes go as fields64"
        );
    }
}
