//! `GET /v1/functions/{name}/switches` and `GET /v1/services/{name}/switches`: the changes
//! adaptive mode (`hangar-adapt`) made, with their reasons.

use axum::Json;
use axum::extract::{Path, State};
use hangar_api::{ModeSwitchList, WorkloadKind};

use crate::AppState;
use crate::api::NamespaceQuery;
use crate::auth::Principal;
use crate::error::{ApiError, ApiQuery};

/// The changes adaptive mode made to a function, oldest first.
#[utoipa::path(get, path = "/v1/functions/{name}/switches", params(("name" = String, Path), NamespaceQuery), tag = "cost",
    responses((status = 200, body = ModeSwitchList), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn switches(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<ModeSwitchList>, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let exists = state.store.get_function(&ns, &name).await?.is_some();
    switches_of(&state, &ns, &name, WorkloadKind::Function, exists).await
}

/// The changes adaptive mode made to a service's minimum instances, oldest first.
#[utoipa::path(get, path = "/v1/services/{name}/switches", params(("name" = String, Path), NamespaceQuery), tag = "cost",
    responses((status = 200, body = ModeSwitchList), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn service_switches(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<ModeSwitchList>, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let exists = state.store.get_service(&ns, &name).await?.is_some();
    switches_of(&state, &ns, &name, WorkloadKind::Service, exists).await
}

/// The switches of the `kind` workload `name` (a function and a service may share a name).
async fn switches_of(state: &AppState, ns: &str, name: &str, kind: WorkloadKind, exists: bool) -> Result<Json<ModeSwitchList>, ApiError> {
    if !exists {
        return Err(ApiError::not_found(format_args!("{kind} `{name}` in namespace `{ns}`")));
    }
    let items = state.store.list_mode_switches(ns, name).await?.into_iter().filter(|s| s.kind == kind).collect();
    Ok(Json(ModeSwitchList { items }))
}
