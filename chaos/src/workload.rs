//! The workload: per device, a producer `XADD`ing to its out stream on the
//! device Redis, and a cloud producer `XADD`ing to its hub out stream, each at
//! a steady pace spread over the production window.
//!
//! Producers live through the Redis restarts like any real producer must:
//! after an error they reconnect and read the last entry of their stream to
//! learn which of their pipelined `XADD`s landed (entry `n` carries its number),
//! so each stream ends up holding exactly `n = 0..total`. Finding fewer entries
//! than Redis acknowledged would mean Redis lost acknowledged writes; that is
//! counted, since it would void the exactly-once checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lula_protocol::redis_value::entries_from_range;
use lula_protocol::{ClientId, Entry};
use redis::aio::MultiplexedConnection;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, connect};
use crate::config::Sizes;
use crate::events::Events;

/// How often a producer checks whether more entries are due.
const TICK: Duration = Duration::from_millis(50);
/// Most `XADD`s in one pipeline.
const PIPELINE: u64 = 200;
/// Pause after a failed connection attempt.
const RETRY: Duration = Duration::from_millis(200);

/// Which way an entry travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device out stream to `lula-hub:in:x`.
    Up,
    /// `lula-hub:out:<client>:x` to the device's in stream.
    Down,
}

/// The fields of entry `n` of `client`'s stream in direction `dir`: `n`
/// and a payload of `sizes.payload_bytes`, and for every
/// `sizes.in_parts_every`-th entry also 1,500 more pairs (too wide for a
/// batch or a push: it travels in parts) and, every other time, a 1.1 MB
/// value (larger than a frame), so faults also cut entries in parts.
pub fn fields(dir: Direction, client: &ClientId, n: u64, sizes: &Sizes) -> Vec<Vec<u8>> {
    let mut payload = format!("{client}/{n}/");
    while payload.len() < sizes.payload_bytes {
        payload.push(char::from(b'a' + (payload.len() % 26) as u8));
    }
    let mut f: Vec<Vec<u8>> = Vec::with_capacity(6);
    if dir == Direction::Down {
        f.push(b"cmd".to_vec());
        f.push(b"set".to_vec());
    }
    f.push(b"n".to_vec());
    f.push(n.to_string().into_bytes());
    f.push(b"payload".to_vec());
    f.push(payload.into_bytes());
    let every = match dir {
        Direction::Up => sizes.in_parts_every_up,
        Direction::Down => sizes.in_parts_every_down,
    };
    if every > 0 && n % every == every - 1 {
        for i in 0..WIDE_PAIRS {
            f.push(format!("w{i}").into_bytes());
            f.push(format!("{client}/{n}/{i}").into_bytes());
        }
        if (n / every).is_multiple_of(2) {
            f.push(b"blob".to_vec());
            f.push(
                (0..LARGE_VALUE)
                    .map(|i| (i * 7 + n as usize) as u8)
                    .collect(),
            );
        }
    }
    f
}

/// Extra pairs of an entry in parts.
const WIDE_PAIRS: usize = 1_500;
/// Bytes of the large value of every other entry in parts.
const LARGE_VALUE: usize = 1_100_000;

/// The `n` an entry was produced as.
pub fn number_of(entry: &Entry) -> Option<u64> {
    entry
        .pairs()
        .find(|(k, _)| *k == b"n")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
}

/// One stream to fill.
struct Target {
    name: String,
    client: ClientId,
    dir: Direction,
    url: String,
    key: String,
    total: u64,
}

/// What one producer saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProducerOutcome {
    /// Entries in its stream at the end.
    pub produced: u64,
    /// Times it lost its connection and resumed.
    pub reconnects: u64,
    /// Acknowledged entries Redis no longer had after a restart.
    pub lost_by_redis: u64,
}

/// Running producers.
pub struct Workload {
    /// Entries produced so far, up.
    pub produced_up: Arc<AtomicU64>,
    /// Entries produced so far, down.
    pub produced_down: Arc<AtomicU64>,
    tasks: Vec<(Direction, JoinHandle<ProducerOutcome>)>,
    stop: CancellationToken,
}

/// Every producer together.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkloadOutcome {
    /// Upstream producers.
    pub up: ProducerOutcome,
    /// Downstream producers.
    pub down: ProducerOutcome,
}

impl Workload {
    /// Starts a producer per device and direction, each spreading its entries
    /// evenly over `sizes.produce_for` from now.
    pub fn start(cluster: &Cluster, sizes: &Sizes, events: Arc<Events>) -> Workload {
        let produced_up = Arc::new(AtomicU64::new(0));
        let produced_down = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for d in &cluster.devices {
            let targets = [
                Target {
                    name: format!("{} out:x", d.client),
                    client: d.client.clone(),
                    dir: Direction::Up,
                    url: d.redis_url.clone(),
                    key: d.keys.out_stream(),
                    total: sizes.entries_up,
                },
                Target {
                    name: format!("hub out:{}:x", d.client),
                    client: d.client.clone(),
                    dir: Direction::Down,
                    url: cluster.cloud.url.clone(),
                    key: cluster.hub_keys.out_stream(&d.client),
                    total: sizes.entries_down,
                },
            ];
            for t in targets {
                let counter = match t.dir {
                    Direction::Up => produced_up.clone(),
                    Direction::Down => produced_down.clone(),
                };
                let dir = t.dir;
                tasks.push((
                    dir,
                    tokio::spawn(produce(
                        t,
                        start,
                        sizes.produce_for,
                        sizes.clone(),
                        counter,
                        events.clone(),
                        stop.clone(),
                    )),
                ));
            }
        }
        Workload {
            produced_up,
            produced_down,
            tasks,
            stop,
        }
    }

    /// Waits for every producer to finish (or until `timeout`, then stops them).
    pub async fn finish(self, timeout: Duration) -> WorkloadOutcome {
        let stop = self.stop.clone();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut outcome = WorkloadOutcome::default();
        for (dir, mut task) in self.tasks {
            let o = tokio::select! {
                o = &mut task => o.unwrap_or_default(),
                _ = &mut deadline => {
                    stop.cancel();
                    task.await.unwrap_or_default()
                }
            };
            let sum = match dir {
                Direction::Up => &mut outcome.up,
                Direction::Down => &mut outcome.down,
            };
            sum.produced += o.produced;
            sum.reconnects += o.reconnects;
            sum.lost_by_redis += o.lost_by_redis;
        }
        outcome
    }
}

async fn produce(
    t: Target,
    start: Instant,
    window: Duration,
    sizes: Sizes,
    counter: Arc<AtomicU64>,
    events: Arc<Events>,
    stop: CancellationToken,
) -> ProducerOutcome {
    let mut outcome = ProducerOutcome::default();
    let mut next = 0u64;
    let mut conn: Option<MultiplexedConnection> = None;
    while next < t.total && !stop.is_cancelled() {
        let due = due_by(t.total, start.elapsed(), window);
        if next >= due {
            tokio::time::sleep(TICK).await;
            continue;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match resume(&t).await {
                Ok((c, in_stream)) => {
                    if in_stream < next {
                        outcome.lost_by_redis += next - in_stream;
                        events.note(format_args!(
                            "producer {}: Redis lost acknowledged entries {in_stream}..{next}; producing them again",
                            t.name
                        ));
                    }
                    counter.fetch_add(in_stream.saturating_sub(next), Ordering::Relaxed);
                    next = in_stream;
                    conn.insert(c)
                }
                Err(_) => {
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        let end = due.min(next + PIPELINE);
        let mut pipe = redis::pipe();
        for n in next..end {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&t.key).arg("*");
            for f in fields(t.dir, &t.client, n, &sizes) {
                cmd.arg(f);
            }
            pipe.add_command(cmd);
        }
        match pipe.query_async::<Vec<String>>(c).await {
            Ok(_) => {
                counter.fetch_add(end - next, Ordering::Relaxed);
                next = end;
            }
            Err(_) => {
                // Which of these landed is read back from the stream on reconnect.
                conn = None;
                outcome.reconnects += 1;
            }
        }
    }
    outcome.produced = next;
    outcome
}

/// How many of `total` entries are due `elapsed` into a `window`.
fn due_by(total: u64, elapsed: Duration, window: Duration) -> u64 {
    if elapsed >= window || window.is_zero() {
        return total;
    }
    let share = elapsed.as_secs_f64() / window.as_secs_f64();
    ((total as f64 * share).ceil() as u64).min(total)
}

/// Connects and reads the stream's last entry: the `n` to produce next.
async fn resume(t: &Target) -> redis::RedisResult<(MultiplexedConnection, u64)> {
    let mut c = connect(&t.url).await?;
    let v: redis::Value = redis::cmd("XREVRANGE")
        .arg(&t.key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut c)
        .await?;
    let last = entries_from_range(v).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "bad XREVRANGE reply",
            e.to_string(),
        ))
    })?;
    let next = last.first().and_then(number_of).map_or(0, |n| n + 1);
    Ok((c, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_is_spread_over_the_window() {
        let w = Duration::from_secs(10);
        assert_eq!(due_by(1000, Duration::ZERO, w), 0);
        assert_eq!(due_by(1000, Duration::from_secs(5), w), 500);
        assert_eq!(due_by(1000, Duration::from_secs(11), w), 1000);
        assert_eq!(due_by(1000, Duration::from_secs(1), Duration::ZERO), 1000);
    }

    #[test]
    fn entries_carry_their_number_and_a_payload_of_the_asked_size() {
        let c: ClientId = "dev-01".parse().unwrap();
        let sizes = Sizes {
            in_parts_every_up: 10,
            ..Sizes::short()
        };
        let up = fields(Direction::Up, &c, 17, &sizes);
        assert_eq!(up[0], b"n");
        assert_eq!(up[1], b"17");
        assert_eq!(up[3].len(), 64);
        assert_eq!(up.len(), 4);
        // Every tenth is wide, every twentieth large too.
        let wide = fields(Direction::Up, &c, 19, &sizes);
        assert_eq!(wide.len(), 4 + 2 * WIDE_PAIRS);
        let large = fields(Direction::Up, &c, 9, &sizes);
        assert_eq!(large.len(), 6 + 2 * WIDE_PAIRS);
        assert_eq!(large.last().unwrap().len(), LARGE_VALUE);
        let down = fields(Direction::Down, &c, 3, &sizes);
        assert_eq!(down[0], b"cmd");
        let entry = Entry::new(lula_protocol::StreamId::new(1, 0), down);
        assert_eq!(number_of(&entry), Some(3));
    }
}
