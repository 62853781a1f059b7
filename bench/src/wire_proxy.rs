//! A TCP proxy that counts the bytes it forwards, each direction on its own:
//! the bytes a device's link would carry (WebSocket frames and headers, the
//! HTTP upgrade; not TCP/IP headers). A daemon's `hub_url` points at it and it
//! forwards every connection to the hub. Dropping it stops the accept loop and
//! every connection.
//!
//! It can also play a slow link ([`Throttle`]): each direction is a queue
//! that sends at most `rate` bytes per second and delivers each chunk `delay`
//! after it was sent, like `tc netem rate .. delay ..` on both ends, without
//! needing root or a network namespace.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Duration, Instant};

/// Bytes forwarded per read.
const CHUNK: usize = 64 * 1024;
/// Bytes per read on a throttled link: about one TCP segment, so pacing is
/// smooth.
const THROTTLED_CHUNK: usize = 1_448;
/// Chunks queued per direction of a throttled link (about 46 KiB: beyond one
/// bandwidth-delay product at 256 kbit/s and 300 ms, so the queue never
/// starves the link).
const THROTTLED_QUEUE: usize = 32;

/// A slow link: both directions at `rate_bytes_per_sec`, each chunk arriving
/// `delay` after it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Bytes per second each way.
    pub rate_bytes_per_sec: u64,
    /// One-way delay.
    pub delay: Duration,
}

/// Bytes forwarded so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireBytes {
    /// Device to hub.
    pub up: u64,
    /// Hub to device.
    pub down: u64,
}

impl WireBytes {
    /// What was forwarded between `earlier` and `self`.
    pub fn since(self, earlier: WireBytes) -> WireBytes {
        WireBytes {
            up: self.up.saturating_sub(earlier.up),
            down: self.down.saturating_sub(earlier.down),
        }
    }
}

#[derive(Default)]
struct Counters {
    up: AtomicU64,
    down: AtomicU64,
}

/// A running counting proxy.
pub struct CountingProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    accept: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        Self::start_throttled(target, None).await
    }

    /// Like [`CountingProxy::start`], through a slow link if `throttle` says so.
    pub async fn start_throttled(
        target: SocketAddr,
        throttle: Option<Throttle>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the counting proxy")?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(listener, target, counters.clone(), throttle));
        Ok(CountingProxy {
            addr,
            counters,
            accept,
        })
    }

    /// `ws://<addr>`, for a daemon's `hub_url`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Bytes forwarded so far, over all connections.
    pub fn bytes(&self) -> WireBytes {
        WireBytes {
            up: self.counters.up.load(Ordering::Relaxed),
            down: self.counters.down.load(Ordering::Relaxed),
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet: aborting it drops
        // the set, which aborts them.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    counters: Arc<Counters>,
    throttle: Option<Throttle>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                connections.spawn(forward(client, target, counters.clone(), throttle));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards one connection both ways until either side closes.
async fn forward(
    client: TcpStream,
    target: SocketAddr,
    counters: Arc<Counters>,
    throttle: Option<Throttle>,
) {
    let Ok(hub) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = hub.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (hub_read, hub_write) = hub.into_split();
    let up = pump(client_read, hub_write, counters.clone(), true, throttle);
    let down = pump(hub_read, client_write, counters, false, throttle);
    // When one direction ends, the other is dropped with it: both sockets close.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

async fn pump(
    from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    counters: Arc<Counters>,
    up: bool,
    throttle: Option<Throttle>,
) {
    match throttle {
        None => copy(from, to, counters, up).await,
        Some(t) => slow_copy(from, to, counters, up, t).await,
    }
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counters: Arc<Counters>,
    up: bool,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let counter = if up { &counters.up } else { &counters.down };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// One direction of a slow link: a reader queues chunks with the time they
/// were read; the sender takes each off the link's queue when the link is
/// free (`len / rate` per chunk) and hands it over `delay` later. The bounded
/// queue pushes back on the sender's TCP window, as a full router queue would.
async fn slow_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counters: Arc<Counters>,
    up: bool,
    throttle: Throttle,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(THROTTLED_QUEUE);
    let reader = async move {
        let mut buf = vec![0u8; THROTTLED_CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let counter = if up { &counters.up } else { &counters.down };
            counter.fetch_add(n as u64, Ordering::Relaxed);
            if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let sender = async move {
        let per_byte =
            Duration::from_secs(1).as_secs_f64() / throttle.rate_bytes_per_sec.max(1) as f64;
        let mut link_free = Instant::now();
        while let Some((read_at, chunk)) = rx.recv().await {
            link_free =
                link_free.max(read_at) + Duration::from_secs_f64(chunk.len() as f64 * per_byte);
            tokio::time::sleep_until(link_free + throttle.delay).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    // The sender finishes what was queued after the reader ends (EOF).
    let (_, ()) = tokio::join!(reader, sender);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_what_it_forwards_each_way() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 100];
            let n = s.read_exact(&mut buf[..10]).await.unwrap();
            s.write_all(&buf[..n]).await.unwrap();
            s.write_all(b"and more").await.unwrap();
        });
        let proxy = CountingProxy::start(echo_addr).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"0123456789").await.unwrap();
        let mut back = [0u8; 18];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"0123456789and more");
        assert_eq!(proxy.bytes(), WireBytes { up: 10, down: 18 });
    }

    #[tokio::test]
    async fn a_throttled_link_paces_and_delays() {
        let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink_addr = sink.local_addr().unwrap();
        let received = tokio::spawn(async move {
            let (mut s, _) = sink.accept().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            (all.len(), Instant::now())
        });
        let throttle = Throttle {
            rate_bytes_per_sec: 10_000,
            delay: Duration::from_millis(100),
        };
        let proxy = CountingProxy::start_throttled(sink_addr, Some(throttle))
            .await
            .unwrap();
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let start = Instant::now();
        s.write_all(&[7u8; 5_000]).await.unwrap();
        s.shutdown().await.unwrap();
        let (len, at) = received.await.unwrap();
        assert_eq!(len, 5_000);
        // 5,000 bytes at 10,000 B/s, plus the delay. Only a lower bound: a
        // busy machine can make it slower, never faster.
        let took = at.duration_since(start);
        assert!(took >= Duration::from_millis(590), "{took:?}");
    }
}
