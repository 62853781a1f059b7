//! Probes and metrics: `GET /healthz`, `GET /readyz`, `GET /metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use crate::{AppState, HubError};

/// The Prometheus text exposition of [`crate::metrics::HubMetrics`].
/// OpenMetrics or the classic text format, by the scraper's `Accept`.
pub(crate) async fn metrics_text(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Response {
    lula_runtime::metrics::response(state.metrics.render(), &headers)
}

/// Liveness: the process serves requests.
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: not draining, Redis answers (on a cluster, every node) and this hub's ingest
/// layout is the one recorded there, so devices connecting here can sync. A
/// load balancer stops sending devices to a hub that cannot reach its Redis,
/// and a rollout with a mistaken `--ingest-partitions` stalls at its first pod.
pub(crate) async fn readyz(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, HubError> {
    if state.draining.is_cancelled() {
        return Err(HubError::Draining);
    }
    redis::cmd("PING")
        .query_async::<()>(&mut state.redis.clone())
        .await?;
    state
        .ingestor
        .check_layout()
        .await
        .map_err(|e| HubError::Ingest(e.to_string()))?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}
