//! What the daemon counts, exported in the Prometheus text format on
//! `--metrics-listen` (`GET /metrics`), for fleets that scrape their devices.
//!
//! One device per daemon, so there are no per-device labels: the device is
//! whatever the scraper knows the address as.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The daemon's metrics. Cheap to share; every update is an atomic operation.
pub struct Metrics {
    registry: Registry,
    /// 1 while a hub session is up.
    pub connected: Gauge,
    /// Hub sessions established (a reconnect counts one more).
    pub sessions: Counter,
    /// Entries of `out:x` the hub acknowledged (duplicates included).
    pub upstream_entries: Counter,
    /// Of those, entries the hub already had.
    pub upstream_duplicates: Counter,
    /// Entries per upstream batch sent.
    pub upstream_batch_entries: Histogram,
    /// Entries in `out:x` the hub has not acknowledged yet, when known.
    pub upstream_lag: Gauge,
    /// Hub messages stored in `in:x`.
    pub downstream_entries: Counter,
    /// Entries waiting for the device in its out stream on the hub, as the
    /// hub last reported (with its pushes).
    pub downstream_backlog: Gauge,
    /// Times entries were found deleted from `out:x` before sync.
    pub gaps: Counter,
    /// Broadcasts stored in `in:x`.
    pub broadcast_entries: Counter,
    /// Times the hub reported broadcasts deleted before this device got them.
    pub broadcast_gaps: Counter,
    /// Session tokens renewed on a live connection.
    pub renewals: Counter,
    /// `entries-added` of `out:x` at the reader's last read (not exported;
    /// with the cursor's ordinal it gives the lag).
    pub out_added: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = lula_runtime::metrics::registry("lula_client", env!("CARGO_PKG_VERSION"));
        let registry = root.sub_registry_with_prefix("lula_client");
        let m = Metrics {
            connected: Gauge::default(),
            sessions: Counter::default(),
            upstream_entries: Counter::default(),
            upstream_duplicates: Counter::default(),
            upstream_batch_entries: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            upstream_lag: Gauge::default(),
            downstream_entries: Counter::default(),
            downstream_backlog: Gauge::default(),
            gaps: Counter::default(),
            broadcast_entries: Counter::default(),
            broadcast_gaps: Counter::default(),
            renewals: Counter::default(),
            out_added: AtomicU64::new(0),
            registry: Registry::default(),
        };
        registry.register(
            "connected",
            "1 while a hub session is up",
            m.connected.clone(),
        );
        registry.register("sessions", "Hub sessions established", m.sessions.clone());
        registry.register(
            "upstream_entries",
            "Entries of out:x the hub acknowledged, duplicates included",
            m.upstream_entries.clone(),
        );
        registry.register(
            "upstream_duplicates",
            "Acknowledged entries the hub already had",
            m.upstream_duplicates.clone(),
        );
        registry.register(
            "upstream_batch_entries",
            "Entries per upstream batch",
            m.upstream_batch_entries.clone(),
        );
        registry.register(
            "upstream_lag_entries",
            "Entries in out:x the hub has not acknowledged yet (when known)",
            m.upstream_lag.clone(),
        );
        registry.register(
            "downstream_entries",
            "Hub messages stored in in:x",
            m.downstream_entries.clone(),
        );
        registry.register(
            "downstream_backlog_entries",
            "Entries waiting for this device on the hub, as the hub last reported",
            m.downstream_backlog.clone(),
        );
        registry.register(
            "gaps",
            "Times entries were found deleted from out:x before they were synced",
            m.gaps.clone(),
        );
        registry.register(
            "broadcast_entries",
            "Broadcasts stored in in:x",
            m.broadcast_entries.clone(),
        );
        registry.register(
            "broadcast_gaps",
            "Times broadcasts were deleted (past the hub's retention) before this device received them",
            m.broadcast_gaps.clone(),
        );
        registry.register(
            "renewals",
            "Session tokens renewed on a live connection",
            m.renewals.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        lula_runtime::metrics::render(&self.registry)
    }
}

/// Serves `GET /metrics` on `listen` until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("bind --metrics-listen {listen}: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics at /metrics");
    let router = Router::new().route(
        "/metrics",
        get(move |headers: axum::http::HeaderMap| {
            let metrics = metrics.clone();
            async move { lula_runtime::metrics::response(metrics.render(), &headers) }
        }),
    );
    lula_runtime::serve(listener, router, shutdown, Default::default()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric() {
        let m = Metrics::default();
        m.upstream_entries.inc_by(5);
        m.connected.set(1);
        m.upstream_batch_entries.observe(3.0);
        let text = m.render();
        for name in [
            "lula_client_connected 1",
            "lula_client_sessions_total 0",
            "lula_client_upstream_entries_total 5",
            "lula_client_upstream_duplicates_total",
            "lula_client_upstream_batch_entries_bucket",
            "lula_client_upstream_lag_entries",
            "lula_client_downstream_entries_total",
            "lula_client_downstream_backlog_entries",
            "lula_client_gaps_total",
            "lula_client_broadcast_entries_total",
            "lula_client_broadcast_gaps_total",
            "lula_client_renewals_total",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
