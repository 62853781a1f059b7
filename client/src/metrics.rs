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
use prometheus_client::metrics::family::Family;
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
    /// Settings of the device Redis that can break the guarantees (eviction
    /// policy, persistence), as read at start.
    pub redis_unsafe_settings: Gauge,
    /// Messages for this device that expired on the hub before delivery.
    pub downstream_expired: Counter,
    /// Acknowledged entries the daemon removed from `out:x` (retention).
    pub out_trimmed: Counter,
    /// Entries removed from `in:x` after every consumer group acknowledged
    /// them (`--trim-in-consumed`).
    pub in_trimmed: Counter,
    /// Broadcasts stored in `in:x`.
    pub broadcast_entries: Counter,
    /// Times the hub reported broadcasts deleted before this device got them.
    pub broadcast_gaps: Counter,
    /// Session tokens renewed on a live connection.
    pub renewals: Counter,
    /// Entries set aside past a limit instead of carried, by direction:
    /// `up` (into `lula-client:dead:x`), `down` and `broadcast` (the hub's
    /// markers; the entries are in `lula-hub:dead:x`).
    pub set_aside: Family<[(&'static str, &'static str); 1], Counter>,
    /// `entries-added` of `out:x` at the reader's last read (not exported;
    /// with the cursor's ordinal it gives the lag).
    pub out_added: AtomicU64,
    /// Bytes on the link to the hub and the JSON they carried:
    /// `link_sent_bytes / link_sent_plain_bytes` is the compression ratio upstream.
    pub link: crate::link::LinkMetrics,
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
            out_trimmed: Counter::default(),
            downstream_expired: Counter::default(),
            redis_unsafe_settings: Gauge::default(),
            in_trimmed: Counter::default(),
            broadcast_entries: Counter::default(),
            broadcast_gaps: Counter::default(),
            renewals: Counter::default(),
            set_aside: Family::default(),
            out_added: AtomicU64::new(0),
            link: crate::link::LinkMetrics::default(),
            registry: Registry::default(),
        };
        m.register_upstream(registry);
        m.register_downstream(registry);
        Metrics {
            registry: root,
            ..m
        }
    }
}

impl Metrics {
    /// Registers the session and upstream metrics.
    fn register_upstream(&self, r: &mut Registry) {
        r.register(
            "connected",
            "1 while a hub session is up",
            self.connected.clone(),
        );
        r.register(
            "sessions",
            "Hub sessions established",
            self.sessions.clone(),
        );
        r.register(
            "upstream_entries",
            "Entries of out:x the hub acknowledged, duplicates included",
            self.upstream_entries.clone(),
        );
        r.register(
            "upstream_duplicates",
            "Acknowledged entries the hub already had",
            self.upstream_duplicates.clone(),
        );
        r.register(
            "upstream_batch_entries",
            "Entries per upstream batch",
            self.upstream_batch_entries.clone(),
        );
        r.register(
            "upstream_lag_entries",
            "Entries in out:x the hub has not acknowledged yet (when known)",
            self.upstream_lag.clone(),
        );
    }

    /// Registers the downstream, retention, broadcast and renewal metrics.
    fn register_downstream(&self, r: &mut Registry) {
        self.link.register(r);
        r.register(
            "downstream_entries",
            "Hub messages stored in in:x",
            self.downstream_entries.clone(),
        );
        r.register(
            "downstream_backlog_entries",
            "Entries waiting for this device on the hub, as the hub last reported",
            self.downstream_backlog.clone(),
        );
        r.register(
            "gaps",
            "Times entries were found deleted from out:x before they were synced",
            self.gaps.clone(),
        );
        r.register(
            "redis_unsafe_settings",
            "Settings of the device Redis that can break exactly-once (maxmemory-policy, appendonly), as read at start",
            self.redis_unsafe_settings.clone(),
        );
        r.register(
            "downstream_expired_entries",
            "Messages for this device that expired on the hub before delivery (expiresAt, --downstream-max-age)",
            self.downstream_expired.clone(),
        );
        r.register(
            "out_trimmed_entries",
            "Acknowledged entries removed from out:x by the daemon (--keep-acked)",
            self.out_trimmed.clone(),
        );
        r.register(
            "in_trimmed_entries",
            "Entries removed from in:x after every consumer group acknowledged them (--trim-in-consumed)",
            self.in_trimmed.clone(),
        );
        r.register(
            "broadcast_entries",
            "Broadcasts stored in in:x",
            self.broadcast_entries.clone(),
        );
        r.register(
            "broadcast_gaps",
            "Times broadcasts were deleted (past the hub's retention) before this device received them",
            self.broadcast_gaps.clone(),
        );
        r.register(
            "renewals",
            "Session tokens renewed on a live connection",
            self.renewals.clone(),
        );
        r.register(
            "set_aside_entries",
            "Entries set aside past a limit instead of carried, by direction (up: lula-client:dead:x; down, broadcast: lula-hub:dead:x)",
            self.set_aside.clone(),
        );
    }

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
        m.set_aside.get_or_create(&[("direction", "up")]).inc();
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
            "lula_client_out_trimmed_entries_total",
            "lula_client_downstream_expired_entries_total",
            "lula_client_redis_unsafe_settings",
            "lula_client_in_trimmed_entries_total",
            "lula_client_broadcast_entries_total",
            "lula_client_broadcast_gaps_total",
            "lula_client_renewals_total",
            r#"lula_client_set_aside_entries_total{direction="up"} 1"#,
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
