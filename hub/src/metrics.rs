//! The hub's Prometheus metrics, at `GET /metrics`.
//!
//! No per-device labels: a fleet has too many devices for a time series each
//! (the fleet view in Redis answers per-device questions). Label values come
//! from small fixed sets (close reasons, refusal reasons).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A counter by one label.
pub type ByLabel = Family<[(&'static str, &'static str); 1], Counter>;

/// Everything the hub counts. Cheap to share; updates are atomic.
pub struct HubMetrics {
    registry: Registry,
    /// Live device connections on this hub.
    pub connections: Gauge,
    /// Connections closed, by reason.
    pub closed: ByLabel,
    /// Upgrades refused, by reason.
    pub refused: ByLabel,
    /// Frames received from devices.
    pub frames_in: Counter,
    /// Frames sent to devices (replies and pushes).
    pub frames_out: Counter,
    /// Entries appended to the in streams.
    pub entries_in: Counter,
    /// Entries the hub already had (suppressed duplicates).
    pub duplicates: Counter,
    /// Batches refused for a gap (409).
    pub gaps: Counter,
    /// Entries per batch.
    pub batch_entries: Histogram,
    /// Ingest script calls (each carries the batches queued meanwhile).
    pub ingest_calls: Counter,
    /// Batches per ingest call.
    pub ingest_batches: Histogram,
    /// Ingest script latency, seconds.
    pub ingest_seconds: Histogram,
    /// Ingest calls that failed (Redis down or timed out).
    pub ingest_errors: Counter,
    /// Entries pushed to devices.
    pub entries_out: Counter,
    /// Messages for devices deleted as expired instead of pushed.
    pub expired: Counter,
    /// Entries set aside (past a limit) instead of carried, by direction:
    /// `up` (markers from devices), `down` (direct messages recorded in
    /// `lula-hub:dead:x`), `broadcast`.
    pub set_aside: ByLabel,
    /// Entries pushed and not yet acknowledged, over all devices here: the
    /// downstream lag.
    pub unacked: Gauge,
    /// Upstream entries put together from parts and appended.
    pub assembled: Counter,
    /// Bytes of the assembly budget held by entries being put together or
    /// appended.
    pub assembly_bytes: Gauge,
    /// First parts refused because the assembly budget was spent (the
    /// device retries after a backoff).
    pub assembly_busy: Counter,
    /// Session renewals on live connections, by outcome.
    pub renewals: ByLabel,
    /// Seconds from an entry's device seq (the device's clock when it was
    /// added to `out:x`) to its append, per batch (its last entry).
    pub upstream_lag: Histogram,
    /// Seconds from a message's hub id (the hub Redis's clock when a cloud
    /// service added it) to its push, per frame (its last entry).
    pub downstream_lag: Histogram,
    /// Latency of the hub's Redis commands besides ingest, by operation.
    pub redis_seconds: LatencyByOp,
    /// Bytes on device links and the JSON they carried: `link_sent_bytes /
    /// link_sent_plain_bytes` is the compression ratio downstream.
    pub link: crate::link::LinkMetrics,
}

/// A latency histogram per operation.
pub type LatencyByOp = Family<[(&'static str, &'static str); 1], Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

fn lag_histogram() -> Histogram {
    // 1 ms to ~9 h: from live sync to a device that was offline for hours.
    Histogram::new(exponential_buckets(0.001, 3.0, 16))
}

impl Default for HubMetrics {
    fn default() -> Self {
        let latency = || Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        let sizes = || Histogram::new(exponential_buckets(1.0, 4.0, 8));
        let m = HubMetrics {
            registry: Registry::default(),
            connections: Gauge::default(),
            closed: ByLabel::default(),
            refused: ByLabel::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            entries_in: Counter::default(),
            duplicates: Counter::default(),
            gaps: Counter::default(),
            batch_entries: sizes(),
            ingest_calls: Counter::default(),
            ingest_batches: sizes(),
            ingest_seconds: latency(),
            ingest_errors: Counter::default(),
            entries_out: Counter::default(),
            expired: Counter::default(),
            set_aside: ByLabel::default(),
            unacked: Gauge::default(),
            assembled: Counter::default(),
            assembly_bytes: Gauge::default(),
            assembly_busy: Counter::default(),
            renewals: ByLabel::default(),
            upstream_lag: lag_histogram(),
            downstream_lag: lag_histogram(),
            redis_seconds: LatencyByOp::new_with_constructor(latency_histogram),
            link: crate::link::LinkMetrics::default(),
        };
        let mut root = lula_runtime::metrics::registry("lula_hub", env!("CARGO_PKG_VERSION"));
        let r = root.sub_registry_with_prefix("lula_hub");
        r.register_collector(Box::new(lula_runtime::redis_check::UnsafeSettingsGauge));
        m.register_upstream(r);
        m.register_downstream(r);
        m.link.register(r);
        HubMetrics {
            registry: root,
            ..m
        }
    }
}

impl HubMetrics {
    /// Registers the connection and ingest metrics.
    fn register_upstream(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "connections",
            "Live device connections",
            m.connections.clone(),
        );
        r.register("closed", "Connections closed, by reason", m.closed.clone());
        r.register("refused", "Upgrades refused, by reason", m.refused.clone());
        r.register(
            "assembled_entries",
            "Upstream entries put together from parts and appended",
            m.assembled.clone(),
        );
        r.register(
            "assembly_bytes",
            "Bytes of the assembly budget held by upstream entries being put together from parts",
            m.assembly_bytes.clone(),
        );
        r.register(
            "assembly_busy",
            "First parts refused while the assembly budget was spent (retried by the device)",
            m.assembly_busy.clone(),
        );
        r.register(
            "frames_in",
            "Frames received from devices",
            m.frames_in.clone(),
        );
        r.register("frames_out", "Frames sent to devices", m.frames_out.clone());
        r.register(
            "entries_in",
            "Entries appended to the in streams",
            m.entries_in.clone(),
        );
        r.register(
            "duplicates",
            "Entries the hub already had (suppressed)",
            m.duplicates.clone(),
        );
        r.register("gaps", "Batches refused for a gap (409)", m.gaps.clone());
        r.register(
            "batch_entries",
            "Entries per batch",
            m.batch_entries.clone(),
        );
        r.register(
            "ingest_calls",
            "Ingest script calls",
            m.ingest_calls.clone(),
        );
        r.register(
            "ingest_batches",
            "Batches per ingest script call",
            m.ingest_batches.clone(),
        );
        r.register(
            "ingest_seconds",
            "Ingest script latency",
            m.ingest_seconds.clone(),
        );
        r.register(
            "ingest_errors",
            "Ingest calls that failed",
            m.ingest_errors.clone(),
        );
    }

    /// Registers the push, session and Redis metrics.
    fn register_downstream(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "entries_out",
            "Entries pushed to devices",
            m.entries_out.clone(),
        );
        r.register(
            "expired_entries",
            "Messages for devices deleted as expired (expiresAt, --downstream-max-age) instead of pushed",
            m.expired.clone(),
        );
        r.register(
            "set_aside_entries",
            "Entries set aside past a limit instead of carried, by direction (up, down, broadcast)",
            m.set_aside.clone(),
        );
        r.register(
            "unacked_entries",
            "Entries pushed and not yet acknowledged (downstream lag)",
            m.unacked.clone(),
        );
        r.register(
            "renewals",
            "Session renewals on live connections, by outcome",
            m.renewals.clone(),
        );
        r.register(
            "upstream_lag_seconds",
            "From an entry's device seq time to its append, per batch (includes device clock skew)",
            m.upstream_lag.clone(),
        );
        r.register(
            "downstream_lag_seconds",
            "From a message's hub id time to its push, per frame",
            m.downstream_lag.clone(),
        );
        r.register(
            "redis_seconds",
            "Latency of Redis commands besides ingest, by operation",
            m.redis_seconds.clone(),
        );
    }
}

impl HubMetrics {
    /// Counts one of a labelled counter.
    pub fn count(family: &ByLabel, key: &'static str, value: &'static str) {
        family.get_or_create(&[(key, value)]).inc();
    }

    /// Records one ingest call.
    pub fn ingest_call(&self, batches: usize, took: Duration, ok: bool) {
        self.ingest_calls.inc();
        self.ingest_batches.observe(batches as f64);
        self.ingest_seconds.observe(took.as_secs_f64());
        if !ok {
            self.ingest_errors.inc();
        }
    }

    /// Runs one Redis call and records its latency under `op`.
    pub async fn timed<T>(&self, op: &'static str, call: impl Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let result = call.await;
        self.redis_seconds
            .get_or_create(&[("op", op)])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Records the age of an entry whose id was taken at `id_ms` (epoch ms).
    pub fn lag(histogram: &Histogram, id_ms: u64) {
        let now = lula_runtime::now_ms();
        histogram.observe(now.saturating_sub(id_ms) as f64 / 1000.0);
    }

    /// The OpenMetrics text exposition (see [`lula_runtime::metrics::response`]).
    pub fn render(&self) -> String {
        lula_runtime::metrics::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_counters_show_their_label() {
        let m = HubMetrics::default();
        HubMetrics::count(&m.closed, "reason", "idle");
        m.ingest_call(3, Duration::from_millis(2), true);
        let text = m.render();
        assert!(
            text.contains(r#"lula_hub_closed_total{reason="idle"} 1"#),
            "{text}"
        );
        assert!(text.contains("lula_hub_ingest_calls_total 1"), "{text}");
        assert!(text.contains("lula_hub_ingest_seconds_bucket"), "{text}");
    }
}
