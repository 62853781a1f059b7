//! A TCP proxy that counts the bytes it forwards, each direction on its own:
//! the bytes a device's link would carry (WebSocket frames and headers, the
//! HTTP upgrade; not TCP/IP headers). A daemon's `hub_url` points at it and it
//! forwards every connection to the hub. Dropping it stops the accept loop and
//! every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Bytes forwarded per read.
const CHUNK: usize = 64 * 1024;

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
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the counting proxy")?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(listener, target, counters.clone()));
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

async fn accept_loop(listener: TcpListener, target: SocketAddr, counters: Arc<Counters>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                connections.spawn(forward(client, target, counters.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards one connection both ways until either side closes.
async fn forward(client: TcpStream, target: SocketAddr, counters: Arc<Counters>) {
    let Ok(hub) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = hub.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (hub_read, hub_write) = hub.into_split();
    let up = pump(client_read, hub_write, counters.clone(), true);
    let down = pump(hub_read, client_write, counters, false);
    // When one direction ends, the other is dropped with it: both sockets close.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

async fn pump(
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
}
