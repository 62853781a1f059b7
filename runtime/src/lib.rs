//! What lula's binaries share at run time, so each `main.rs` stays thin and the
//! services behave alike: the HTTP accept loop with its limits, shutdown on
//! Ctrl-C or SIGTERM, and logging.
//!
//! # Layout
//! - [`serve`]: accepts connections for an axum [`Router`] until shutdown, with
//!   a header read timeout and a cap on connections still in their HTTP phase,
//!   over plain TCP or TLS ([`ServeOptions::tls`]).
//! - [`shutdown_on_signal`]: cancels a token on Ctrl-C or SIGTERM.
//! - [`init_tracing`]: `RUST_LOG`-filtered logs on stderr.
//! - [`tls`]: rustls configs: a service's certificate and key, a client's
//!   trusted roots (system plus a private CA).
//! - [`metrics`]: what every `GET /metrics` shares: `*_build_info`, the
//!   `process_*` series ([`process`]), OpenMetrics or the classic text format
//!   by the scraper's `Accept`.
//! - [`bearer`]: `Authorization: Bearer` as hub and auth read it, and
//!   constant-time comparison of secrets.
//! - [`writer`]: the WebSocket writer task both hub and client use, one
//!   flush per burst of queued frames.
//! - [`secret`]: secrets from files (`--<secret>-file`), refused when others
//!   may read them.
//! - [`redis`]: the cloud Redis, one server or a Redis Cluster, behind one
//!   connection type.
//! - [`redis_check`]: start-up checks of a Redis's eviction policy and
//!   persistence against what exactly-once needs.
//! - [`retention`]: trimming a stream below what every consumer group has
//!   acknowledged.
//! - [`Clock`]: the wall clock services take in their config, so tests can
//!   drive token expiry and TOTP windows.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod bearer;
mod clock;
pub mod listeners;
pub mod metrics;
pub mod process;
pub mod redis;
pub mod redis_check;
pub mod redis_tx;
pub mod retention;
pub mod secret;
pub mod tls;
pub mod writer;

pub use clock::Clock;

/// Limits of the accept loop, and its TLS.
#[derive(Clone)]
pub struct ServeOptions {
    /// A client must send its whole request head within this time, or the
    /// connection is closed: a peer that opens sockets and trickles bytes
    /// (a slow upgrade that never finishes) cannot hold them forever.
    pub header_read_timeout: Duration,
    /// Most connections in their HTTP phase at once (accepted, not yet upgraded
    /// or closed); beyond it the loop stops accepting until one ends. An
    /// upgraded WebSocket no longer counts: it is bounded by its own idle
    /// timeout and the process's file limit.
    pub max_http_connections: usize,
    /// Serve TLS with this config (see [`tls::server_config`]): each accepted
    /// connection completes its handshake, within `header_read_timeout`,
    /// before HTTP starts. `None`: plain TCP (behind an ingress that
    /// terminates TLS, or in tests).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long a service keeps serving after it was told to stop, with
    /// `/readyz` answering 503 meanwhile, so a load balancer that polls
    /// readiness (haproxy, a cloud LB) takes it out of rotation before it
    /// stops accepting. Zero: stop at once (Kubernetes does the same with a
    /// `preStop` pause).
    pub drain_delay: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            max_http_connections: 10_000,
            tls: None,
            drain_delay: Duration::ZERO,
        }
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_http_connections", &self.max_http_connections)
            .field("tls", &self.tls.is_some())
            .field("drain_delay", &self.drain_delay)
            .finish()
    }
}

/// Milliseconds since the epoch (0 if the clock is before it): the unit of
/// stream ids, status timestamps and the fleet view.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The stop of a service in two steps. `draining` is the caller's shutdown
/// token: once it is cancelled the service reports not ready; the returned
/// token is cancelled `delay` later, and stops the accept loop and closes
/// connections.
pub fn stop_after(draining: &CancellationToken, delay: Duration) -> CancellationToken {
    if delay.is_zero() {
        return draining.clone();
    }
    let stop = CancellationToken::new();
    let (draining, stopping) = (draining.clone(), stop.clone());
    tokio::spawn(async move {
        draining.cancelled().await;
        tracing::info!(?delay, "draining: not ready, still serving");
        tokio::time::sleep(delay).await;
        stopping.cancel();
    });
    stop
}

/// Serves an admin `router` (probes, metrics, the fleet) on `listener` until
/// `shutdown`: plain HTTP, and few connections, since only operators and
/// Prometheus reach a port the cluster keeps private.
pub async fn serve_admin(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let options = ServeOptions {
        max_http_connections: 64,
        ..Default::default()
    };
    serve(listener, router, shutdown, options).await
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets every
/// request in progress finish and returns. Upgraded connections (WebSockets)
/// are the caller's to track: axum hands them to tasks of their own.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    options: ServeOptions,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(options.max_http_connections.max(1)));
    let header_read_timeout = options.header_read_timeout;
    let acceptor = options.tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or a connection reset before
                    // accept: wait a moment rather than spin or give up.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = WithPeer {
            router: router.clone(),
            peer,
        };
        let shutdown = shutdown.clone();
        let acceptor = acceptor.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let Some(acceptor) = acceptor else {
                return serve_connection(stream, service, header_read_timeout, shutdown).await;
            };
            // The handshake is bounded like the request head: a peer that
            // opens a socket and never finishes its ClientHello is cut off.
            let handshake = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(header_read_timeout, acceptor.accept(stream)) => r,
            };
            match handshake {
                Ok(Ok(stream)) => {
                    serve_connection(stream, service, header_read_timeout, shutdown).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Serves HTTP/1.1 (with upgrades) on one accepted connection, plain or TLS,
/// until it ends or, after shutdown, its request in progress is answered.
async fn serve_connection<I>(
    io: I,
    service: WithPeer,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = service.peer;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The router, with each request told the address it came from
/// (`axum::extract::ConnectInfo<SocketAddr>`), as rate limits need.
#[derive(Clone)]
struct WithPeer {
    router: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let mut router = self.router.clone();
        tower_service::Service::call(&mut router, req)
    }
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
pub async fn shutdown_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The `--log-format` flag every binary takes (env `LULA_LOG_FORMAT`).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: `text` for people, `json` for log pipelines (one object a
    /// line, with the per-connection span fields: client, conn).
    #[arg(long, env = "LULA_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Logs to stderr as text, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    init_tracing_as(LogFormat::Text)
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `info`).
/// Colours only when stderr is a terminal (and `NO_COLOR` is unset): escape
/// codes in a file, a journal or a pod log are noise to every reader. Never
/// logs the WebSocket library's handshake requests ([`without_secrets`]).
pub fn init_tracing_as(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let secrets = tracing_subscriber::filter::filter_fn(without_secrets);
    match format {
        LogFormat::Text => builder.finish().with(secrets).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .finish()
            .with(secrets)
            .init(),
    }
}

/// False for events that would carry a credential whatever `RUST_LOG` says:
/// tungstenite logs the whole client handshake request, `Authorization:
/// Bearer <token>` included, at trace level (`tungstenite::handshake::client`,
/// "Request: ..."). Its debug lines and every other trace line stay.
pub fn without_secrets(meta: &tracing::Metadata<'_>) -> bool {
    !(*meta.level() == tracing::Level::TRACE
        && meta.target().starts_with("tungstenite::handshake::client"))
}

/// The start-up line every service writes first: its name, version, commit
/// and the configuration it runs with (`config`'s `Debug`, which redacts
/// secrets and URL passwords).
pub fn log_start(name: &str, version: &str, config: &dyn std::fmt::Debug) {
    tracing::info!(
        name,
        version,
        commit = metrics::COMMIT,
        config = ?config,
        "starting"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(options: ServeOptions) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let router = Router::new().route("/", get(|| async { "hi" }));
        tokio::spawn(serve(listener, router, shutdown.clone(), options));
        (addr, shutdown)
    }

    #[tokio::test]
    async fn serves_requests_and_stops_on_shutdown() {
        let (addr, shutdown) = start(ServeOptions::default()).await;
        let body = reqwest::get(format!("http://{addr}/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "hi");
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(reqwest::get(format!("http://{addr}/")).await.is_err());
    }

    #[tokio::test]
    async fn a_request_head_that_never_ends_is_cut_off() {
        let (addr, _shutdown) = start(ServeOptions {
            header_read_timeout: Duration::from_millis(300),
            ..ServeOptions::default()
        })
        .await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // Never finishes the head; the server must hang up by itself.
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server kept a half-sent request open");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_slot() {
        let (addr, _shutdown) = start(ServeOptions {
            header_read_timeout: Duration::from_millis(500),
            max_http_connections: 1,
            ..ServeOptions::default()
        })
        .await;
        // Holds the only slot with a half-sent request until the timeout frees it.
        let mut hog = tokio::net::TcpStream::connect(addr).await.unwrap();
        hog.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let started = tokio::time::Instant::now();
        let body = reqwest::get(format!("http://{addr}/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "hi");
        // Served only once the hog was cut off (not a speed check: a lower bound).
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
