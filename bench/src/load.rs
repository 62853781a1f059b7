//! Load: Redis connections, the entries every scenario writes, pipelined
//! preloads, producers paced by a schedule, and the latency reader.
//!
//! Every entry is `n <i> payload <payload_bytes>` (about 100 bytes at the
//! default 80), and paced entries start with `t <µs since the epoch>`, taken
//! right before the `XADD` is sent, so the reader can measure arrival latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures_util::{StreamExt as _, TryStreamExt as _};
use lula_protocol::StreamId;
use lula_protocol::redis_value::{entries_from_range, entries_from_read};
use redis::aio::MultiplexedConnection;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::procstat;

/// `XADD`s per pipeline when preloading.
const PRELOAD_PIPELINE: u64 = 1_000;
/// Preload pipelines in flight at once on the one connection (which keeps
/// them in order).
const PRELOAD_INFLIGHT: usize = 4;
/// Most entries one paced tick sends, so a producer that fell behind catches
/// up in bounded pipelines.
const MAX_TICK_ENTRIES: u64 = 2_000;
/// How long the latency reader's `XREAD` blocks.
const READ_BLOCK: Duration = Duration::from_millis(500);

/// A connection with timeouts long enough for a loaded machine. redis-rs gives
/// up on a reply after 500 ms by default; a benchmark must not fail for being
/// slow.
pub async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(30)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    redis::Client::open(url)
        .with_context(|| format!("redis url {url}"))?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("connect to {url}"))
}

/// The value of every entry's `payload` field.
pub fn payload(bytes: usize) -> String {
    "p".repeat(bytes)
}

/// Microseconds since the epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// `XLEN key`.
pub async fn xlen(conn: &mut MultiplexedConnection, key: &str) -> anyhow::Result<u64> {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(conn)
        .await
        .with_context(|| format!("XLEN {key}"))
}

/// The id of the last entry of `key` (`XREVRANGE key + - COUNT 1`), or
/// `0-0` when it is empty: where a reader starts to see only what comes next.
pub async fn last_id(conn: &mut MultiplexedConnection, key: &str) -> anyhow::Result<StreamId> {
    let reply: redis::Value = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .with_context(|| format!("XREVRANGE {key}"))?;
    let entries = entries_from_range(reply).context("XREVRANGE reply")?;
    Ok(entries.first().map_or(StreamId::ZERO, |e| e.id))
}

/// The pid of the Redis server behind `conn` (`INFO server`).
pub async fn redis_pid(conn: &mut MultiplexedConnection) -> anyhow::Result<u32> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .context("INFO server")?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .context("no process_id in INFO server")
}

/// Appends `XADD key * n <i> payload <payload>` for `i` in `0..n`, in order,
/// pipelined.
pub async fn preload(
    conn: &MultiplexedConnection,
    key: &str,
    n: u64,
    payload: &str,
) -> anyhow::Result<()> {
    futures_util::stream::iter((0..n).step_by(PRELOAD_PIPELINE as usize))
        .map(|from| {
            let mut conn = conn.clone();
            let mut pipe = redis::pipe();
            for i in from..n.min(from + PRELOAD_PIPELINE) {
                pipe.cmd("XADD")
                    .arg(key)
                    .arg("*")
                    .arg("n")
                    .arg(i)
                    .arg("payload")
                    .arg(payload)
                    .ignore();
            }
            async move { pipe.query_async::<()>(&mut conn).await }
        })
        // Buffered, not unordered: the pipelines go out in order on the one connection.
        .buffered(PRELOAD_INFLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .with_context(|| format!("preload {key}"))?;
    Ok(())
}

/// Runs `make()` to completion on a thread of its own, with a single-threaded
/// runtime of its own, and returns its result and the thread's CPU time.
///
/// Producers and the latency reader run like this so that the thousand
/// lula-client daemons on the main runtime cannot delay them (a reader that
/// lags would report its own lag as latency), and so their CPU can be told
/// apart from the clients'. Connections must be opened inside `make`: a
/// redis-rs connection is driven by the runtime it was opened on.
pub async fn isolated<F, Fut, T>(name: &str, make: F) -> anyhow::Result<(T, Duration)>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("load thread runtime")
                .and_then(|rt| rt.block_on(make()));
            let cpu = procstat::thread_cpu().unwrap_or_default();
            let _ = tx.send(result.map(|r| (r, cpu)));
        })
        .with_context(|| format!("spawn thread {name}"))?;
    rx.await
        .with_context(|| format!("thread {name} panicked"))?
}

/// What a paced producer did.
#[derive(Debug, Clone, Copy)]
pub struct Produced {
    /// Entries written.
    pub entries: u64,
    /// From the first tick to the last write.
    pub elapsed: Duration,
}

/// One paced producer: where and how fast.
#[derive(Debug, Clone)]
pub struct Pace {
    /// The Redis to write to.
    pub url: String,
    /// The streams, served round-robin a batch at a time.
    pub keys: Vec<String>,
    /// Entries per second.
    pub rate: u64,
    /// For how long.
    pub duration: Duration,
    /// Entries per batch (to one key).
    pub batch: usize,
    /// The `payload` value.
    pub payload: String,
}

/// Writes `rate` entries per second for `duration` into `keys`, by schedule:
/// every millisecond it sends, in one pipeline, the entries due by then
/// (`elapsed × rate`) in whole batches of `batch` entries, the batches going
/// round-robin over `keys`. Each entry is `t <µs> n <i> payload <payload>`,
/// `i` counting per key, `t` taken as the entry's `XADD` is queued.
pub async fn produce_paced(pace: Pace) -> anyhow::Result<Produced> {
    let Pace {
        url,
        keys,
        rate,
        duration,
        batch,
        payload,
    } = pace;
    anyhow::ensure!(!keys.is_empty(), "a producer needs at least one stream");
    let mut conn = connect(&url).await?;
    let batch = batch.max(1) as u64;
    let total = (rate as f64 * duration.as_secs_f64()) as u64 / batch * batch;
    let mut counters = vec![0u64; keys.len()];
    let mut next_key = 0usize;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let start = Instant::now();
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        let batches = (due.saturating_sub(sent) / batch).min(MAX_TICK_ENTRIES / batch);
        if batches == 0 {
            continue;
        }
        let mut pipe = redis::pipe();
        for _ in 0..batches {
            let k = next_key;
            next_key = (next_key + 1) % keys.len();
            for _ in 0..batch {
                pipe.cmd("XADD")
                    .arg(&keys[k])
                    .arg("*")
                    .arg("t")
                    .arg(now_micros())
                    .arg("n")
                    .arg(counters[k])
                    .arg("payload")
                    .arg(&payload)
                    .ignore();
                counters[k] += 1;
            }
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .context("paced XADD")?;
        sent += batches * batch;
    }
    Ok(Produced {
        entries: sent,
        elapsed: start.elapsed(),
    })
}

/// Runs the producers concurrently on one load thread; returns what each did
/// and the thread's CPU time.
pub async fn produce_all(paces: Vec<Pace>) -> anyhow::Result<(Vec<Produced>, Duration)> {
    isolated("lula-bench-producer", move || async move {
        futures_util::future::try_join_all(paces.into_iter().map(produce_paced)).await
    })
    .await
}

/// Arrival latencies seen in the hub's in stream: (send stamp `t` in µs,
/// arrival − `t` in µs), one per entry that carries a `t`.
pub type Samples = Vec<(u64, u64)>;

/// A latency reader on a load thread of its own: [`LatencyReader::finish`]
/// collects its samples.
pub struct LatencyReader {
    started: Instant,
    want: Arc<AtomicU64>,
    stop: CancellationToken,
    result: tokio::task::JoinHandle<anyhow::Result<(Samples, Duration)>>,
}

impl LatencyReader {
    /// Starts reading `key` of the Redis at `url`, from the entry after
    /// `after` (`StreamId::ZERO` for the whole stream).
    pub fn start(url: String, key: String, after: StreamId) -> Self {
        let want = Arc::new(AtomicU64::new(u64::MAX));
        let stop = CancellationToken::new();
        let (w, s) = (want.clone(), stop.clone());
        let result = tokio::spawn(isolated("lula-bench-reader", move || {
            read_latencies(url, key, after, w, s)
        }));
        LatencyReader {
            started: Instant::now(),
            want,
            stop,
            result,
        }
    }

    /// Waits until the reader has seen `entries` entries after its start id
    /// (or `timeout` passes), stops it, and returns its samples and the cores
    /// it kept busy on average.
    pub async fn finish(
        mut self,
        entries: u64,
        timeout: Duration,
    ) -> anyhow::Result<(Samples, f64)> {
        self.want.store(entries, Ordering::Relaxed);
        let result = match tokio::time::timeout(timeout, &mut self.result).await {
            Ok(r) => r,
            Err(_) => {
                self.stop.cancel();
                (&mut self.result).await
            }
        };
        let (samples, cpu) = result.context("latency reader")??;
        Ok((
            samples,
            cpu.as_secs_f64() / self.started.elapsed().as_secs_f64(),
        ))
    }
}

impl Drop for LatencyReader {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Reads `key` from the entry after `after` with `XREAD BLOCK` on a
/// connection of its own until it has seen `want` entries or `stop`, noting
/// for each entry with a `t` field how long after `t` it was read.
async fn read_latencies(
    url: String,
    key: String,
    mut after: StreamId,
    want: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<Samples> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(30)))
        .set_response_timeout(Some(READ_BLOCK + Duration::from_secs(30)));
    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("latency reader connect")?;
    let mut samples = Vec::new();
    let mut seen = 0u64;
    while seen < want.load(Ordering::Relaxed) {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(10_000)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(after.to_string());
        let reply: redis::Value = tokio::select! {
            _ = stop.cancelled() => break,
            r = cmd.query_async(&mut conn) => r.context("latency reader XREAD")?,
        };
        let arrived = now_micros();
        let entries = entries_from_read(reply).context("latency reader reply")?;
        seen += entries.len() as u64;
        for entry in &entries {
            let t = entry
                .pairs()
                .find(|(k, _)| *k == b"t")
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
            if let Some(t) = t {
                samples.push((t, arrived.saturating_sub(t)));
            }
        }
        if let Some(last) = entries.last() {
            after = last.id;
        }
    }
    Ok(samples)
}

/// Latency percentiles of the samples stamped within `[from, to)` µs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Samples counted.
    pub count: usize,
    /// Median, µs.
    pub p50: u64,
    /// 99th percentile, µs.
    pub p99: u64,
    /// 99.9th percentile, µs.
    pub p999: u64,
    /// Largest, µs.
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `samples` stamped within `[from, to)`.
    pub fn of(samples: &Samples, from: u64, to: u64) -> Self {
        let mut v: Vec<u64> = samples
            .iter()
            .filter(|(t, _)| (from..to).contains(t))
            .map(|&(_, l)| l)
            .collect();
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Percentiles {
            count: v.len(),
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: v[v.len() - 1],
        }
    }
}

/// Polls `XLEN key` every 10 ms until it reaches `n` or `timeout` passes;
/// returns the length last seen and when it first reached `n` (None on timeout).
pub async fn wait_len(
    conn: &mut MultiplexedConnection,
    key: &str,
    n: u64,
    timeout: Duration,
) -> anyhow::Result<(u64, Option<Instant>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let len = xlen(conn, key).await?;
        if len >= n {
            return Ok((len, Some(Instant::now())));
        }
        if Instant::now() > deadline {
            return Ok((len, None));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks_within_the_window() {
        let samples: Samples = (0..1000).map(|i| (i, i + 1)).collect();
        let p = Percentiles::of(&samples, 0, 1000);
        assert_eq!(
            (p.count, p.p50, p.p99, p.p999, p.max),
            (1000, 500, 990, 999, 1000)
        );
        let p = Percentiles::of(&samples, 500, 600);
        assert_eq!((p.count, p.p50, p.max), (100, 550, 600));
        assert_eq!(Percentiles::of(&samples, 2000, 3000).count, 0);
    }
}
