//! The hub's admin listener (`--admin-listen`): what operators and their
//! tools use, kept off the port devices reach, as NATS keeps its monitoring
//! on 8222. `GET /healthz`, `GET /readyz` (probes), `GET /metrics`
//! (Prometheus), `GET /fleet` (JSON) and `GET /fleet/` (the fleet page,
//! [`crate::fleet_page`]), the last two behind the admin token.
//!
//! Without `--admin-listen` these routes stay on the device port, as before
//! (deprecated, for one release: it costs one `merge`, and a hub upgraded in
//! place keeps its probes working until its manifests move them).

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::{AppState, HubError};

/// The admin routes, answering 404 (JSON) to anything else.
pub fn app(state: Arc<AppState>) -> Router {
    routes(state).fallback(|| async { HubError::NotFound })
}

/// The admin routes alone, to merge into the device router (which has the
/// fallback) when there is no admin listener.
pub fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(crate::health::healthz))
        .route("/readyz", get(crate::health::readyz))
        .route("/metrics", get(crate::health::metrics_text))
        .route("/fleet", get(crate::fleet_route::fleet_view))
        .route("/fleet/", get(crate::fleet_page::page))
        .with_state(state)
}
