//! The TCP fault proxy between a device's daemon and the hub.
//!
//! Each daemon's `--hub-url` points at its own proxy, which forwards every
//! connection to the hub, WebSocket upgrade included. While faults are on, each
//! connection meets a fault at random times (exponential gaps, its own seeded
//! generator), one of:
//! - **cut**: both sides closed, with FIN or, half the time, RST;
//! - **stall**: nothing forwarded either way for a while, then it resumes;
//! - **delay**: every chunk held back for a while, in order;
//! - **mid-frame cut**: only the start of the next chunk in one direction is
//!   forwarded, then both sides are closed, so a frame (a batch upstream, a
//!   push downstream) arrives cut in two;
//! - **blackhole** (long mode): nothing forwarded for longer than the idle
//!   timeouts, then cut, so both ends must notice silence by themselves.
//!
//! When either side closes or fails, the proxy closes the other.
//!
//! Each daemon also reaches lula-auth through a proxy of its own, without
//! random faults: the expiry injector ([`crate::expiry`]) blackholes it through
//! its [`ProxyControl`] for longer than a token lives, and keeps the device's
//! hub proxy quiet meanwhile, so the token expires on a live connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::FaultSettings;
use crate::events::Events;
use crate::faults::{FaultCounts, FaultKind};

/// Bytes forwarded per read.
const CHUNK: usize = 16 * 1024;
/// Time allowed to connect to the hub.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One proxy's settings.
pub struct ProxyOptions {
    /// Whose connections these are (the device), in the timeline.
    pub name: String,
    /// The hub.
    pub upstream: SocketAddr,
    /// Fault rates and durations.
    pub settings: FaultSettings,
    /// Faults are injected while this is set.
    pub faults_on: Arc<AtomicBool>,
    /// Where injected faults are counted.
    pub counts: Arc<FaultCounts>,
    /// The run's timeline.
    pub events: Arc<Events>,
    /// Seed of this proxy's choices (each connection derives its own).
    pub seed: u64,
    /// Outages and quiet spells imposed from outside.
    pub control: Arc<ProxyControl>,
}

/// What an injector outside the proxy can do to all its connections at once.
#[derive(Debug)]
pub struct ProxyControl {
    /// `Some(until)`: every connection, old or new, is blackholed until then
    /// (nothing forwarded either way), and each one that had bytes held is cut
    /// when it ends.
    blackhole: watch::Sender<Option<Instant>>,
    /// No random faults are injected before this.
    quiet_until: Mutex<Option<Instant>>,
}

impl Default for ProxyControl {
    fn default() -> Self {
        ProxyControl {
            blackhole: watch::channel(None).0,
            quiet_until: Mutex::new(None),
        }
    }
}

impl ProxyControl {
    /// Blackholes every connection until `until`.
    pub fn blackhole_until(&self, until: Instant) {
        self.blackhole.send_replace(Some(until));
    }

    /// Injects no random faults until `until`.
    pub fn quiet_until(&self, until: Instant) {
        *self.quiet_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }

    /// Ends any blackhole or quiet spell now.
    pub fn clear(&self) {
        self.blackhole.send_replace(None);
        *self.quiet_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn quiet(&self) -> bool {
        self.quiet_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t > Instant::now())
    }

    /// Holds a chunk while a blackhole lasts; true if it was held (or the
    /// connection closed meanwhile): the caller then cuts the connection.
    async fn held(&self, closed: &CancellationToken) -> bool {
        if self.blackhole.borrow().is_none() {
            return false;
        }
        let mut rx = self.blackhole.subscribe();
        let mut held = false;
        loop {
            let until = *rx.borrow_and_update();
            match until {
                Some(t) if t > Instant::now() => {
                    held = true;
                    tokio::select! {
                        _ = closed.cancelled() => return true,
                        _ = tokio::time::sleep_until(t) => {}
                        _ = rx.changed() => {}
                    }
                }
                _ => return held,
            }
        }
    }
}

/// What every connection of one proxy shares.
struct Shared {
    options: ProxyOptions,
    connections: AtomicU64,
}

/// Starts a proxy on a free port of 127.0.0.1, forwarding to the hub until
/// `shutdown`. Returns the address to point the daemon at.
pub async fn start(
    options: ProxyOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        options,
        connections: AtomicU64::new(0),
    });
    tokio::spawn(accept_loop(listener, shared, shutdown));
    Ok(addr)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, _)) => {
                let n = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
                tokio::spawn(connection(
                    socket,
                    n,
                    shared.clone(),
                    shutdown.child_token(),
                ));
            }
            Err(e) => {
                let o = &shared.options;
                o.events
                    .note(format_args!("proxy {}: accept failed: {e}", o.name));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Which way bytes flow.
#[derive(Debug, Clone, Copy)]
enum Dir {
    /// Daemon to hub.
    Up = 0,
    /// Hub to daemon.
    Down = 1,
}

/// The faults currently applied to one connection.
struct ConnState {
    /// Cancelled when the connection is to close.
    closed: CancellationToken,
    /// Close with RST rather than FIN.
    reset: AtomicBool,
    /// Nothing is forwarded before this.
    stall_until: Mutex<Option<Instant>>,
    /// Until when chunks are held, and how long each.
    delay: Mutex<Option<(Instant, Duration)>>,
    /// Cut the next chunk in this direction in two, then close.
    mid_frame: [AtomicBool; 2],
}

impl ConnState {
    fn stalled_until(&self) -> Option<Instant> {
        let until = *self.stall_until.lock().unwrap_or_else(|p| p.into_inner());
        until.filter(|t| *t > Instant::now())
    }

    fn delay_now(&self) -> Option<Duration> {
        let delay = *self.delay.lock().unwrap_or_else(|p| p.into_inner());
        delay
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, d)| d)
    }

    fn stall_for(&self, d: Duration) {
        *self.stall_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + d);
    }

    fn delay_for(&self, window: Duration, per_chunk: Duration) {
        *self.delay.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now() + window, per_chunk));
    }

    fn close(&self, reset: bool) {
        self.reset.store(reset, Ordering::Relaxed);
        self.closed.cancel();
    }
}

async fn connection(client: TcpStream, n: u64, shared: Arc<Shared>, closed: CancellationToken) {
    let o = &shared.options;
    let hub = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(o.upstream)).await {
        Ok(Ok(hub)) => hub,
        // The hub is down: the daemon sees its connection closed, as it would
        // see a refused one.
        _ => return,
    };
    let _ = client.set_nodelay(true);
    let _ = hub.set_nodelay(true);
    let seed = o.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let state = Arc::new(ConnState {
        closed,
        reset: AtomicBool::new(false),
        stall_until: Mutex::new(None),
        delay: Mutex::new(None),
        mid_frame: [AtomicBool::new(false), AtomicBool::new(false)],
    });
    let (client_rd, client_wr) = client.into_split();
    let (hub_rd, hub_wr) = hub.into_split();
    let up = tokio::spawn(pump(
        client_rd,
        hub_wr,
        Dir::Up,
        state.clone(),
        shared.clone(),
        n,
        StdRng::seed_from_u64(seed ^ 1),
    ));
    let down = tokio::spawn(pump(
        hub_rd,
        client_wr,
        Dir::Down,
        state.clone(),
        shared.clone(),
        n,
        StdRng::seed_from_u64(seed ^ 2),
    ));
    inject(&state, &shared, n, StdRng::seed_from_u64(seed)).await;
    let _ = up.await;
    let _ = down.await;
}

/// Injects faults into connection `n` at random times until it closes.
async fn inject(state: &ConnState, shared: &Shared, n: u64, mut rng: StdRng) {
    let o = &shared.options;
    let s = &o.settings;
    let note = |what: String| {
        o.events
            .detail(format_args!("proxy {} conn {n}: {what}", o.name));
    };
    loop {
        let gap = crate::chance::exponential(&mut rng, s.proxy_mean_gap);
        tokio::select! {
            _ = state.closed.cancelled() => return,
            _ = tokio::time::sleep(gap) => {}
        }
        if !o.faults_on.load(Ordering::Relaxed) || o.control.quiet() {
            continue;
        }
        // Out of 100: cut 30, stall 25, delay 20, mid-frame cut 25; blackholes,
        // which take a minute each to play out, add 2 when enabled.
        let blackhole_weight = if s.blackhole.is_some() { 2 } else { 0 };
        let roll = rng.random_range(0..100 + blackhole_weight);
        if roll < 30 {
            let reset = rng.random_bool(0.5);
            note(format!("cut ({})", if reset { "RST" } else { "FIN" }));
            o.counts.add(FaultKind::ProxyCut);
            state.close(reset);
            return;
        } else if roll < 55 {
            let d = rng.random_range(s.stall.clone());
            note(format!("stall {d:?}"));
            o.counts.add(FaultKind::ProxyStall);
            state.stall_for(d);
        } else if roll < 75 {
            let window = rng.random_range(s.delay_window.clone());
            let per_chunk = rng.random_range(s.delay_per_chunk.clone());
            note(format!("delay {per_chunk:?} per chunk for {window:?}"));
            o.counts.add(FaultKind::ProxyDelay);
            state.delay_for(window, per_chunk);
        } else if roll < 100 {
            let dir = if rng.random_bool(0.5) {
                Dir::Up
            } else {
                Dir::Down
            };
            // Counted by the pump when a chunk comes to cut.
            state.mid_frame[dir as usize].store(true, Ordering::Relaxed);
        } else if let Some(silence) = s.blackhole {
            note(format!("blackhole for {silence:?}, then cut"));
            o.counts.add(FaultKind::ProxyBlackhole);
            state.stall_for(silence);
            tokio::select! {
                _ = state.closed.cancelled() => return,
                _ = tokio::time::sleep(silence) => {}
            }
            state.close(false);
            return;
        }
    }
}

/// Forwards `rd` to `wr`, applying the connection's faults, until it closes.
async fn pump(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    dir: Dir,
    state: Arc<ConnState>,
    shared: Arc<Shared>,
    n: u64,
    mut rng: StdRng,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let len = tokio::select! {
            biased;
            _ = state.closed.cancelled() => break,
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    state.close(false);
                    break;
                }
                Ok(len) => len,
            },
        };
        // A stall may be extended (or a blackhole begin) while waiting out another.
        while let Some(until) = state.stalled_until() {
            tokio::select! {
                _ = state.closed.cancelled() => break,
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        if let Some(d) = state.delay_now() {
            tokio::select! {
                _ = state.closed.cancelled() => {}
                _ = tokio::time::sleep(d) => {}
            }
        }
        if shared.options.control.held(&state.closed).await {
            let o = &shared.options;
            o.events.detail(format_args!(
                "proxy {} conn {n}: {dir:?} held by a blackhole, cut",
                o.name
            ));
            state.close(false);
            break;
        }
        if state.closed.is_cancelled() {
            break;
        }
        if len >= 2 && state.mid_frame[dir as usize].swap(false, Ordering::Relaxed) {
            let cut = rng.random_range(1..len);
            let _ = wr.write_all(&buf[..cut]).await;
            let _ = wr.flush().await;
            let reset = rng.random_bool(0.5);
            let o = &shared.options;
            o.events.detail(format_args!(
                "proxy {} conn {n}: cut {dir:?} after {cut} of {len} bytes ({})",
                o.name,
                if reset { "RST" } else { "FIN" }
            ));
            o.counts.add(FaultKind::ProxyMidFrameCut);
            state.close(reset);
            break;
        }
        let written = tokio::select! {
            biased;
            _ = state.closed.cancelled() => break,
            w = wr.write_all(&buf[..len]) => w,
        };
        if written.is_err() {
            state.close(false);
            break;
        }
    }
    if state.reset.load(Ordering::Relaxed) {
        // RST instead of FIN: linger zero, and no shutdown when this half goes.
        let _ = wr.as_ref().set_zero_linger();
        wr.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port, serving every connection; its address.
    async fn spawn_echo() -> SocketAddr {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// A proxy in front of an echo server, faults off: bytes go through unchanged.
    #[tokio::test]
    async fn forwards_both_ways_when_faults_are_off() {
        let echo_addr = spawn_echo().await;
        let dir = std::env::temp_dir().join(format!("lula-chaos-proxy-{}", std::process::id()));
        let events = Arc::new(Events::create(&dir, false).unwrap());
        let shutdown = CancellationToken::new();
        let addr = start(
            ProxyOptions {
                name: "t".into(),
                upstream: echo_addr,
                settings: FaultSettings::for_mode(crate::config::Mode::Short),
                faults_on: Arc::new(AtomicBool::new(false)),
                counts: Arc::default(),
                events,
                seed: 1,
                control: Arc::default(),
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let msg = vec![7u8; 100_000];
        c.write_all(&msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
        shutdown.cancel();
        let _ = std::fs::remove_file(dir);
    }

    /// With faults on and a tiny mean gap, connections get cut sooner or later.
    #[tokio::test]
    async fn cuts_connections_when_faults_are_on() {
        let sink_addr = spawn_echo().await;
        let dir = std::env::temp_dir().join(format!("lula-chaos-proxy-cut-{}", std::process::id()));
        let events = Arc::new(Events::create(&dir, false).unwrap());
        let counts: Arc<FaultCounts> = Arc::default();
        let mut settings = FaultSettings::for_mode(crate::config::Mode::Short);
        settings.proxy_mean_gap = Duration::from_millis(5);
        let shutdown = CancellationToken::new();
        let addr = start(
            ProxyOptions {
                name: "t".into(),
                upstream: sink_addr,
                settings,
                faults_on: Arc::new(AtomicBool::new(true)),
                counts: counts.clone(),
                events,
                seed: 7,
                control: Arc::default(),
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        // Each of five connections must be cut within the deadline (the loop
        // only ends on a cut); the proxy must have counted each as a cut.
        for _ in 0..5 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut buf = [0u8; 1024];
            loop {
                assert!(Instant::now() < deadline, "connection never cut");
                if c.write_all(&[1u8; 1024]).await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
            }
        }
        assert!(
            counts.get(FaultKind::ProxyCut) + counts.get(FaultKind::ProxyMidFrameCut) >= 5,
            "{:?}",
            counts.snapshot()
        );
        shutdown.cancel();
        let _ = std::fs::remove_file(dir);
    }

    /// A blackhole holds bytes until it ends, then cuts the connection; a
    /// connection made afterwards goes through.
    #[tokio::test]
    async fn a_blackhole_holds_then_cuts_and_later_connections_work() {
        let echo_addr = spawn_echo().await;
        let dir = std::env::temp_dir().join(format!("lula-chaos-proxy-bh-{}", std::process::id()));
        let events = Arc::new(Events::create(&dir, false).unwrap());
        let control: Arc<ProxyControl> = Arc::default();
        let shutdown = CancellationToken::new();
        let addr = start(
            ProxyOptions {
                name: "t".into(),
                upstream: echo_addr,
                settings: FaultSettings::for_mode(crate::config::Mode::Short),
                faults_on: Arc::new(AtomicBool::new(false)),
                counts: Arc::default(),
                events,
                seed: 3,
                control: control.clone(),
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        control.blackhole_until(Instant::now() + Duration::from_millis(500));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("the blackhole never ended");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "bytes went through a blackhole: {read:?}"
        );
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        shutdown.cancel();
        let _ = std::fs::remove_file(dir);
    }
}
