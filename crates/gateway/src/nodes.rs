//! `/v1/nodes`: the nodes of the cluster (admin keys only: nodes are shared by every namespace).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hangar_api::nodes::NodeList;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;

fn bus_error(why: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "bus_unavailable", format!("the nodes cannot be read from the bus now ({why}); try again shortly"))
}

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes",
    responses((status = 200, body = NodeList), (status = 403, body = hangar_api::ErrorBody), (status = 503, body = hangar_api::ErrorBody)))]
pub async fn list(State(state): State<AppState>, p: Principal) -> Result<Json<NodeList>, ApiError> {
    p.require_admin()?;
    Ok(Json(NodeList { nodes: state.members.nodes().await.map_err(bus_error)? }))
}

#[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "nodes",
    responses((status = 202), (status = 404, body = hangar_api::ErrorBody), (status = 409, body = hangar_api::ErrorBody)))]
pub async fn drain(State(state): State<AppState>, p: Principal, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    p.require_admin()?;
    match state.members.drain(&id).await {
        Ok(true) => Ok(StatusCode::ACCEPTED),
        Ok(false) => Err(ApiError::not_found(format!("node `{id}`"))),
        Err(why) => Err(ApiError::new(StatusCode::CONFLICT, "cannot_drain", why)),
    }
}
