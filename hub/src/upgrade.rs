//! `GET /`: the WebSocket upgrade. The session token is checked (from
//! `Authorization: Bearer` or the query) before the request is looked at as
//! an upgrade, then the device's connection takes over and is served by
//! [`crate::connection::serve`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use lula_runtime::bearer::bearer_token;
use serde::Deserialize;
use tracing::Instrument as _;

use crate::take_over::take_over;
use crate::{AppState, HubError, connection, metrics};

/// Bytes a connection reads from its socket at a time. tungstenite zero-fills
/// this much of its read buffer on every read, so the default (128 KiB) costs
/// that much resident memory per idle device; larger frames still arrive whole,
/// in more reads.
const READ_BUFFER_BYTES: usize = 4 * 1024;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TokenQuery {
    session_token: Option<String>,
    access_token: Option<String>,
}

/// The token from `Authorization: Bearer`, else `?sessionToken=`, else
/// `?accessToken=` (what the Node lula-client sends).
fn token_from(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    bearer_token(headers).map(str::to_owned).or_else(|| {
        let q: TokenQuery = serde_urlencoded::from_str(query?).unwrap_or_default();
        q.session_token.or(q.access_token).filter(|t| !t.is_empty())
    })
}

pub(crate) async fn upgrade(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HubError> {
    let result = authenticated_upgrade(state.clone(), headers, query, ws).await;
    if let Err(e) = &result {
        let reason = match e {
            HubError::MissingToken | HubError::Token(_) => "unauthorized",
            HubError::NotUpgrade(_) => "not_websocket",
            HubError::Redis(_) => "unavailable",
            _ => "other",
        };
        metrics::HubMetrics::count(&state.metrics.refused, "reason", reason);
    }
    result
}

async fn authenticated_upgrade(
    state: Arc<AppState>,
    headers: HeaderMap,
    query: Option<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HubError> {
    // Authenticate before looking at the upgrade, so an unauthenticated caller
    // learns nothing but 401.
    let token = token_from(&headers, query.as_deref()).ok_or(HubError::MissingToken)?;
    let claims = state
        .metrics
        .timed(
            "authenticate",
            state
                .auth
                .authenticate(&mut state.auth_redis.clone(), &token),
        )
        .await?;
    let ws = ws?;
    let generation = state
        .metrics
        .timed("take_over", take_over(&state, &claims.sub))
        .await?;
    let conn_id = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", client = %claims.sub, conn = conn_id);
    let limit = state.config.max_frame_bytes;
    let tracker = state.tracker.clone();
    Ok(ws
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            tracker.track_future(
                connection::serve(socket, claims, generation, conn_id, state).instrument(span),
            )
        })
        .into_response())
}
