//! `GET /fleet`: the fleet view over HTTP, for the admin token only.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use lula_protocol::ClientId;
use serde::Deserialize;

use crate::{AppState, HubError, fleet, fleet_page};

#[derive(Deserialize, Default)]
struct FleetQuery {
    client: Option<String>,
    limit: Option<usize>,
}

/// `GET /fleet[?client=<id>][&limit=N]` with `Authorization: Bearer <admin
/// token>` (or the token as the Basic password, for the fleet page,
/// [`fleet_page::authorize`]): the fleet view as JSON (`{"devices": [...]}`, see
/// [`fleet::DeviceView`]). 404 unless the hub has an admin token, so a hub
/// without one exposes nothing.
pub(crate) async fn fleet_view(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, HubError> {
    fleet_page::authorize(&state, &headers)?;
    let q: FleetQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or_default())
        .map_err(|e| HubError::BadRequest(format!("bad query: {e}")))?;
    let client = q
        .client
        .map(|c| {
            c.parse::<ClientId>()
                .map_err(|e| HubError::BadRequest(format!("client: {e}")))
        })
        .transpose()?;
    let devices = fleet::list(
        &state.redis,
        &state.keys,
        state.ingestor.layout(),
        &fleet::Query {
            client,
            limit: q.limit.unwrap_or(0),
        },
    )
    .await?;
    Ok(Json(serde_json::json!({ "devices": devices })))
}
