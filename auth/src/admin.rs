//! lula-auth's admin listener (`--admin-listen`): `GET /healthz`,
//! `GET /readyz` (probes) and `GET /metrics` (Prometheus), off the port
//! devices reach, so only the cluster sees them.
//!
//! Without `--admin-listen` they stay on the device port, as before
//! (deprecated, for one release: keeping it costs one `merge`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;

use crate::{AppState, AuthError, routes};

/// The admin routes, answering 404 (JSON) to anything else.
pub fn app(state: Arc<AppState>) -> Router {
    routes(state)
        .fallback(|| async { AuthError::NotFound })
        .method_not_allowed_fallback(|| async { AuthError::MethodNotAllowed })
}

/// The admin routes alone, to merge into the device router (which has the
/// fallbacks) when there is no admin listener.
pub fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `GET /metrics`: OpenMetrics or the classic text format, by `Accept`.
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    lula_runtime::metrics::response(state.metrics.render(), &headers)
}
