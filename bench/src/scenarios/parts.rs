//! Scenario 9, entries in parts (issue 13): entries too wide (more than
//! 1,024 field pairs) or too large (more than a frame) for one batch travel
//! in parts, at the default limits (1 MiB frames, 100,000 pairs and 64 MiB
//! per entry, a hub-wide assembly budget of 128 MiB).
//!
//! - Up: one lula-client daemon, a process of its own, connects with an
//!   empty out stream and idles; it is stopped (`SIGSTOP`), large entries
//!   (one binary value of random, incompressible bytes, keys plus values just
//!   under 64 MiB), wide entries (100,000 short pairs) and small entries
//!   around them are appended to its out stream, and it is resumed. Measured:
//!   seconds from the resume until the hub's in stream holds them all, and
//!   the peak resident memory of the daemon and of the hub above idle (both
//!   sampled every 10 ms).
//! - Down: slow subscribers (as in scenario 8: daemons in lula-bench, each
//!   behind a throttled link of its own) are connected and idle; large
//!   broadcasts (16 MiB of random bytes), a wide one (100,000 pairs) and
//!   small ones around them are appended. Measured: the hub's peak resident
//!   memory above idle, and seconds from the first append until every
//!   subscriber stored them all.
//!
//! Both end with the exactly-once, in-order check, every field compared
//! byte for byte. No goal is checked: the numbers are for the record.

use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use super::heavy::{self, memory_rows};
use super::{Ctx, Outcome};
use crate::cloud::Cloud;
use crate::config::Scenario;
use crate::devices::DeviceServers;
use crate::load;
use crate::procstat::{self, RssSampler};
use crate::report::{Row, bytes, secs, thousands};
use crate::verify;

const SCENARIO: Scenario = Scenario::Parts;
/// Entries per page when verifying: a page of 64 MiB entries is 128 MiB.
const VERIFY_PAGE: usize = 2;

/// Runs scenario 9: entries up, then broadcasts down.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let up = upstream(ctx).await?;
    let down = broadcasts(ctx).await?;
    Ok(heavy::up_then_down(SCENARIO, up, down))
}

/// What one entry of a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `n <i> payload <payload bytes>`.
    Small,
    /// `n <i> blob <random bytes>`, this many bytes of keys and values.
    Large(usize),
    /// `n <i>` and short `k<j> v<j>` pairs, this many pairs in all.
    Wide(usize),
}

/// How many large and wide entries, of what size, and how many small ones.
#[derive(Debug, Clone, Copy)]
struct Mix {
    large: (u64, usize),
    wide: (u64, usize),
    small: u64,
}

impl Mix {
    /// The entries in order: large and wide ones alternating, the small
    /// ones spread evenly before, between and after them.
    fn plan(self) -> Vec<Shape> {
        let (mut l, mut w) = (self.large.0, self.wide.0);
        let mut heavy = Vec::new();
        while l + w > 0 {
            if l > 0 {
                heavy.push(Shape::Large(self.large.1));
                l -= 1;
            }
            if w > 0 {
                heavy.push(Shape::Wide(self.wide.1));
                w -= 1;
            }
        }
        let gaps = heavy.len() as u64 + 1;
        let small_in = |gap: u64| self.small * (gap + 1) / gaps - self.small * gap / gaps;
        let mut shapes = Vec::new();
        for (gap, h) in (0u64..).zip(heavy) {
            shapes.extend((0..small_in(gap)).map(|_| Shape::Small));
            shapes.push(h);
        }
        shapes.extend((0..small_in(gaps - 1)).map(|_| Shape::Small));
        shapes
    }

    /// `2 x 64.0 MiB, 2 x 100,000 pairs, 100 small`.
    fn describe(self) -> String {
        format!(
            "{} x {}, {} x {} pairs, {} small",
            self.large.0,
            bytes(self.large.1 as f64),
            self.wide.0,
            thousands(self.wide.1 as u64),
            thousands(self.small)
        )
    }
}

/// The fields of entry `i` of shape `shape`.
fn fields(i: usize, shape: Shape, payload_bytes: usize) -> Vec<Vec<u8>> {
    let mut fields = vec![b"n".to_vec(), i.to_string().into_bytes()];
    match shape {
        Shape::Small => {
            fields.push(b"payload".to_vec());
            fields.push(load::payload(payload_bytes).into_bytes());
        }
        Shape::Large(total) => {
            let used: usize = fields.iter().map(Vec::len).sum::<usize>() + b"blob".len();
            let mut blob = vec![0u8; total.saturating_sub(used)];
            rand::fill(&mut blob[..]);
            fields.push(b"blob".to_vec());
            fields.push(blob);
        }
        Shape::Wide(pairs) => {
            for j in 1..pairs {
                fields.push(format!("k{j}").into_bytes());
                fields.push(format!("v{j}").into_bytes());
            }
        }
    }
    fields
}

/// Appends the entries of `shapes` to `key`, one `XADD` at a time (a large
/// entry is made just before it is appended, so lula-bench holds one).
async fn append(
    conn: &redis::aio::MultiplexedConnection,
    key: &str,
    shapes: &[Shape],
    payload_bytes: usize,
) -> anyhow::Result<()> {
    let mut conn = conn.clone();
    for (i, &shape) in shapes.iter().enumerate() {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key).arg("*");
        for field in fields(i, shape, payload_bytes) {
            cmd.arg(field);
        }
        cmd.query_async::<()>(&mut conn)
            .await
            .with_context(|| format!("append entry {i} ({shape:?}) to {key}"))?;
    }
    Ok(())
}

/// A row of how long `n` entries took to arrive (`elapsed`), or of how many
/// had when the wait timed out.
fn arrived_row(
    metric: &str,
    elapsed: Option<Duration>,
    (len, n): (u64, u64),
    timeout: Duration,
) -> Row {
    match elapsed {
        Some(d) => Row::info(SCENARIO, metric, secs(d)),
        None => Row::info(
            SCENARIO,
            metric,
            format!(
                "timed out: {} of {} after {}",
                thousands(len),
                thousands(n),
                secs(timeout)
            ),
        )
        .target("arrive", false),
    }
}

/// Part one: large and wide entries up from a daemon, a process of its own.
async fn upstream(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let s = ctx.sizes;
    let mix = Mix {
        large: (s.parts_up_large, s.parts_up_large_bytes),
        wide: (s.parts_up_wide, s.parts_wide_pairs),
        small: s.parts_small_entries,
    };
    let shapes = mix.plan();
    let n = shapes.len() as u64;
    let what = format!("{}, 1 daemon, default limits", mix.describe());
    let up = heavy::start_daemon_process(ctx, "parts-up", None).await?;
    let (client, device, servers, cloud) = (&up.client, &up.device, &up.servers, &up.cloud);
    let idle = (client.rss_bytes()?, cloud.hub.rss_bytes()?);
    client.signal("STOP").await?;
    ctx.progress(SCENARIO, format_args!("appending {what}"));
    let out = device.keys.out_stream();
    let appended = append(&servers.conn(0), &out, &shapes, s.payload_bytes).await;
    let pids = (client.pid(), cloud.hub.pid());
    let sampler = RssSampler::start(vec![("daemon".into(), pids.0), ("hub".into(), pids.1)]);
    let resumed = Instant::now();
    client.signal("CONT").await?;
    appended?;
    let in_key = cloud.keys.in_stream();
    let (len, done) = load::wait_len(&mut cloud.conn(), &in_key, n, s.wait_timeout).await?;
    let peaks = sampler.peaks();
    drop(sampler);
    let mut rows = vec![
        Row::info(SCENARIO, "load (up)", &what),
        arrived_row(
            "up: seconds until the hub's in stream holds all",
            done.map(|t| t - resumed),
            (len, n),
            s.wait_timeout,
        ),
    ];
    let daemon = (idle.0, peaks[0].peak.max(idle.0));
    let hub = (idle.1, peaks[1].peak.max(idle.1));
    rows.extend(memory_rows(
        SCENARIO,
        "daemon",
        daemon,
        procstat::hwm_bytes(pids.0).ok(),
        None,
    ));
    rows.extend(memory_rows(
        SCENARIO,
        "hub (up)",
        hub,
        procstat::hwm_bytes(pids.1).ok(),
        None,
    ));
    // Give a stray duplicate a moment to show, then stop and compare.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(up.client);
    ctx.progress(SCENARIO, "verifying the entries up");
    let device_out = verify::DeviceOut {
        client: up.device.client.to_string(),
        conn: up.servers.conn(0),
        key: out,
    };
    let check = verify::upstream_in_pages(up.cloud.conn(), &in_key, vec![device_out], VERIFY_PAGE)
        .await
        .and_then(|got| super::moved_entries(Ok(got), Some(n)))
        .map(|n| format!("{} entries", thousands(n)))
        .map_err(|e| format!("{e:#}"));
    let notes = up.cloud.hub_log_note("parts (up)").into_iter().collect();
    Ok(Outcome { rows, check, notes })
}

/// Part two: large and wide broadcasts down to slow subscribers.
async fn broadcasts(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let s = ctx.sizes;
    let mix = Mix {
        large: (s.parts_down_large, s.parts_down_large_bytes),
        wide: (s.parts_down_wide, s.parts_wide_pairs),
        small: s.parts_small_entries,
    };
    let shapes = mix.plan();
    let (n, k) = (shapes.len() as u64, s.big_subscribers);
    let what = format!(
        "{} broadcasts, {k} subscribers at {} kbit/s, default limits",
        mix.describe(),
        thousands(s.big_subscriber_rate_kbit)
    );
    let cloud = Cloud::start(ctx.hub_exe).await?;
    let servers = DeviceServers::start(1).await?;
    let rate = (k, s.big_subscriber_rate_kbit);
    let subs = heavy::start_subscribers(&cloud, &servers, "parts-sub", rate, None).await?;
    tokio::time::sleep(heavy::SETTLE).await;
    let hub_pid = cloud.hub.pid();
    let idle = cloud.hub.rss_bytes()?;
    let sampler = RssSampler::start(vec![("hub".into(), hub_pid)]);
    ctx.progress(SCENARIO, format_args!("sending {what}"));
    let key = cloud.keys.broadcast_stream();
    let started = Instant::now();
    append(&cloud.conn(), &key, &shapes, s.payload_bytes).await?;
    let (stored, done) = heavy::wait_stored(&servers, &subs.devices, n, s.wait_timeout).await?;
    let peak = sampler.peaks()[0].peak.max(idle);
    drop(sampler);
    let mut rows = vec![
        Row::info(SCENARIO, "load (down)", &what),
        arrived_row(
            "down: seconds until every subscriber stored all",
            done.map(|t| t - started),
            (stored.iter().copied().min().unwrap_or(0), n),
            s.wait_timeout,
        ),
    ];
    let hwm = procstat::hwm_bytes(hub_pid).ok();
    rows.extend(memory_rows(SCENARIO, "hub (down)", (idle, peak), hwm, None));
    rows.push(heavy::stored_row(SCENARIO, &stored, n));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = subs.daemons.stop().await;
    ctx.progress(SCENARIO, "verifying the broadcasts");
    let check =
        heavy::verify_broadcasts(&cloud, &servers, &subs.devices, (&key, n), VERIFY_PAGE).await;
    let mut notes: Vec<String> = cloud.hub_log_note("parts (down)").into_iter().collect();
    if let Err(e) = stopped {
        notes.push(format!("{}: stopping the clients: {e:#}", SCENARIO.name()));
    }
    Ok(Outcome { rows, check, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_spreads_small_entries_around_alternating_large_and_wide_ones() {
        let mix = Mix {
            large: (2, 100),
            wide: (1, 5),
            small: 8,
        };
        let shapes = mix.plan();
        let heavy: Vec<Shape> = shapes
            .iter()
            .copied()
            .filter(|s| *s != Shape::Small)
            .collect();
        assert_eq!(
            heavy,
            [Shape::Large(100), Shape::Wide(5), Shape::Large(100)]
        );
        assert_eq!(shapes.len(), 11);
        assert_eq!(shapes[0], Shape::Small);
        assert_eq!(shapes[10], Shape::Small);
    }

    #[test]
    fn large_and_wide_entries_have_the_asked_size() {
        let large = fields(12, Shape::Large(1_000), 80);
        assert_eq!(large.iter().map(Vec::len).sum::<usize>(), 1_000);
        let wide = fields(3, Shape::Wide(5_000), 80);
        assert_eq!(wide.len(), 10_000);
    }
}
