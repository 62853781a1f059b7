//! What a process costs, read from `/proc`: resident memory, CPU time, open
//! file descriptors. Linux only; elsewhere the readings are errors and the
//! report says so instead of showing numbers.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Resident memory of `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/<pid>/status"))
}

/// Peak resident memory of `pid` in bytes since it started (`VmHWM`).
pub fn hwm_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other("no VmHWM in /proc/<pid>/status"))
}

/// User plus system CPU time of `pid`, in clock ticks (`/proc/<pid>/stat`).
pub fn cpu_ticks(pid: u32) -> io::Result<u64> {
    ticks_of(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

/// utime + stime of a `stat` file's text.
fn ticks_of(stat: &str) -> io::Result<u64> {
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("unreadable /proc/<pid>/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' come field 3 (state) onwards; utime is field 14, stime 15.
    let num = |i: usize| -> io::Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unreadable /proc/<pid>/stat"))
    };
    Ok(num(14)? + num(15)?)
}

/// CPU time the calling thread has used (`/proc/thread-self/stat`).
pub fn thread_cpu() -> io::Result<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    let ticks = ticks_of(&stat)?;
    Ok(std::time::Duration::from_secs_f64(
        ticks as f64 / ticks_per_second() as f64,
    ))
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on every common Linux).
pub fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// CPU used by a few labelled processes over a stretch of wall time.
pub struct CpuMeter {
    started: Instant,
    procs: Vec<(String, Vec<u32>, u64)>,
}

impl CpuMeter {
    /// Starts measuring; each label may cover several processes (summed).
    pub fn start(procs: Vec<(String, Vec<u32>)>) -> Self {
        let procs = procs
            .into_iter()
            .map(|(label, pids)| {
                let ticks = pids.iter().filter_map(|&p| cpu_ticks(p).ok()).sum();
                (label, pids, ticks)
            })
            .collect();
        CpuMeter {
            started: Instant::now(),
            procs,
        }
    }

    /// Cores each label kept busy on average since [`CpuMeter::start`]
    /// (1.0 = one core fully busy).
    pub fn finish(&self) -> Vec<(String, f64)> {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let hz = ticks_per_second() as f64;
        self.procs
            .iter()
            .map(|(label, pids, before)| {
                let now: u64 = pids.iter().filter_map(|&p| cpu_ticks(p).ok()).sum();
                let busy = now.saturating_sub(*before) as f64 / hz;
                (label.clone(), busy / wall)
            })
            .collect()
    }
}

/// The resident memory of a few labelled processes, sampled in the background
/// every [`RssSampler::EVERY`] while it lives, keeping each one's peak.
pub struct RssSampler {
    procs: Arc<Mutex<Vec<RssTrack>>>,
    task: tokio::task::JoinHandle<()>,
}

/// One process's readings.
#[derive(Debug, Clone)]
struct RssTrack {
    label: String,
    pid: u32,
    /// The first reading (at start), if any.
    first: Option<u64>,
    /// The highest reading so far.
    peak: u64,
}

/// The peak of one process's resident memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RssPeak {
    /// Its label.
    pub label: String,
    /// Resident memory when sampling started, bytes (0 if unreadable).
    pub start: u64,
    /// The highest reading since, bytes (0 if never readable).
    pub peak: u64,
}

impl RssSampler {
    /// How often the processes are read: often enough to catch the peak of a
    /// catch-up that lasts seconds, cheaply (one small `/proc` read each).
    pub const EVERY: Duration = Duration::from_millis(10);

    /// Starts sampling; call from within a tokio runtime.
    pub fn start(procs: Vec<(String, u32)>) -> Self {
        let tracks: Vec<RssTrack> = procs
            .into_iter()
            .map(|(label, pid)| {
                let first = rss_bytes(pid).ok();
                RssTrack {
                    label,
                    pid,
                    first,
                    peak: first.unwrap_or(0),
                }
            })
            .collect();
        let procs = Arc::new(Mutex::new(tracks));
        let shared = procs.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Self::EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                sample(&shared);
            }
        });
        RssSampler { procs, task }
    }

    /// Each process's reading at start and peak so far (read once more now).
    pub fn peaks(&self) -> Vec<RssPeak> {
        sample(&self.procs);
        lock(&self.procs)
            .iter()
            .map(|t| RssPeak {
                label: t.label.clone(),
                start: t.first.unwrap_or(0),
                peak: t.peak,
            })
            .collect()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn sample(procs: &Mutex<Vec<RssTrack>>) {
    for t in lock(procs).iter_mut() {
        if let Ok(rss) = rss_bytes(t.pid) {
            t.peak = t.peak.max(rss);
            t.first.get_or_insert(rss);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(hwm_bytes(me).unwrap() >= rss_bytes(me).unwrap() / 2);
        cpu_ticks(me).unwrap();
        thread_cpu().unwrap();
        assert!(open_fds(me).unwrap() >= 3);
    }

    #[tokio::test]
    async fn the_sampler_sees_this_process_grow() {
        let sampler = RssSampler::start(vec![("me".into(), std::process::id())]);
        let before = sampler.peaks()[0].clone();
        assert!(before.start > 0 && before.peak >= before.start);
        // 64 MiB, touched so it is resident.
        let big = vec![1u8; 64 << 20];
        tokio::time::sleep(RssSampler::EVERY * 3).await;
        let after = sampler.peaks()[0].clone();
        assert!(
            after.peak >= before.peak + (32 << 20),
            "{before:?} -> {after:?} (held {} bytes)",
            big.iter().map(|&b| b as usize).sum::<usize>()
        );
    }
}
