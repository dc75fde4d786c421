//! `/v1/images`: import an archive, pull from a registry (progress streamed as JSON lines),
//! list, show and remove the images of a namespace.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use hangar_api::images::{Image as ImageView, PullEvent, PullRequest};
use hangar_image::{Image, ImageError, Progress, PullOptions, RegistryFailure};
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

use crate::AppState;
use crate::api::NamespaceQuery;
use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiQuery};

pub fn view(image: &Image, namespace: &str) -> ImageView {
    ImageView {
        id: image.id.clone(),
        names: image.names_in(namespace),
        manifest: image.manifest.clone(),
        size: image.size,
        layers: image.layers.len(),
        os: image.os.clone(),
        architecture: image.architecture.clone(),
        entrypoint: image.config.entrypoint.clone(),
        cmd: image.config.cmd.clone(),
        env: image.config.env.clone(),
        working_dir: image.config.working_dir.clone(),
        user: image.config.user.clone(),
        exposed_ports: image.config.exposed_ports.clone(),
        added_at: hangar_api::rfc3339(image.added_ms),
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        let message = e.to_string();
        match e {
            ImageError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            ImageError::BadLayer { .. } | ImageError::BadImage(_) => ApiError::bad_request("invalid_image", message),
            ImageError::DigestMismatch { .. } => ApiError::bad_request("digest_mismatch", message),
            ImageError::BadReference(_) => ApiError::bad_request("invalid_reference", message),
            ImageError::InUse(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            ImageError::Registry { kind, .. } => {
                let status = match kind {
                    RegistryFailure::NotFound => StatusCode::NOT_FOUND,
                    RegistryFailure::Unauthorized => StatusCode::UNAUTHORIZED,
                    RegistryFailure::Unreachable | RegistryFailure::Other => StatusCode::BAD_GATEWAY,
                };
                ApiError::new(status, "registry_error", message)
            }
            ImageError::Io(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "image_store_error", message),
        }
    }
}

fn join<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("an image task failed: {e}")))
}

/// The images of a namespace.
#[utoipa::path(get, path = "/v1/images", params(NamespaceQuery), tag = "images", responses((status = 200, body = [ImageView])))]
pub async fn list_images(State(state): State<AppState>, p: Principal, ApiQuery(q): ApiQuery<NamespaceQuery>) -> Result<Json<Vec<ImageView>>, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    Ok(Json(state.images.list(&ns).iter().map(|i| view(i, &ns)).collect()))
}

/// One image, by name, id or id prefix.
#[utoipa::path(get, path = "/v1/images/{reference}", params(("reference" = String, Path), NamespaceQuery), tag = "images",
    responses((status = 200, body = ImageView), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn get_image(
    State(state): State<AppState>,
    p: Principal,
    Path(reference): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<ImageView>, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let image = state.images.get(&ns, &reference).ok_or(ImageError::NotFound(reference))?;
    Ok(Json(view(&image, &ns)))
}

/// Removes a name (or, given an id, the image's names) from the namespace; layers no image
/// uses are deleted.
#[utoipa::path(delete, path = "/v1/images/{reference}", params(("reference" = String, Path), NamespaceQuery), tag = "images",
    responses((status = 204), (status = 404, body = hangar_api::ErrorBody), (status = 409, body = hangar_api::ErrorBody)))]
pub async fn delete_image(
    State(state): State<AppState>,
    p: Principal,
    Path(reference): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<StatusCode, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let images = state.images.clone();
    let in_use = state.image_users.clone();
    let ns2 = ns.clone();
    join(tokio::task::spawn_blocking(move || images.remove(&ns2, &reference, |id| in_use(&ns2, id))).await)??;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    pub namespace: Option<String>,
    /// Name for the image (when the archive holds one).
    pub name: Option<String>,
}

/// Imports an image archive sent as the body: an OCI image layout as a tar, or a `docker
/// save` archive, optionally gzip-compressed.
#[utoipa::path(post, path = "/v1/images/import", params(ImportQuery), tag = "images", request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 201, body = [ImageView]), (status = 400, body = hangar_api::ErrorBody)))]
pub async fn import_image(State(state): State<AppState>, p: Principal, ApiQuery(q): ApiQuery<ImportQuery>, body: Body) -> Result<Response, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    if let Some(n) = &q.name {
        hangar_image::normalize(n)?;
    }
    let file = tempfile::NamedTempFile::new_in(state.images.tmp_dir()).map_err(ImageError::from)?;
    let mut out = tokio::fs::File::from_std(file.reopen().map_err(ImageError::from)?);
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("invalid_body", format!("reading the archive: {e}")))?;
        total += chunk.len() as u64;
        if total > state.limits.max_image_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the archive is larger than {} bytes (--max-image-bytes)", state.limits.max_image_bytes),
            ));
        }
        out.write_all(&chunk).await.map_err(ImageError::from)?;
    }
    out.flush().await.map_err(ImageError::from)?;
    drop(out);
    if total == 0 {
        return Err(ApiError::bad_request("invalid_image", "the request body is empty: send the image archive (`hangar image import FILE`)"));
    }
    let ns2 = ns.clone();
    let imported = state.images.unpacking(move |images| images.import(&ns2, file.path(), q.name.as_deref())).await?;
    Ok((StatusCode::CREATED, Json(imported.iter().map(|i| view(i, &ns)).collect::<Vec<_>>())).into_response())
}

/// Pulls an image. Errors found before any layer is fetched (bad reference, unknown tag,
/// auth, unreachable registry) are an error status; after that the answer is `200` with one
/// JSON event per line (`application/x-ndjson`), the last being `done` or `error`.
#[utoipa::path(post, path = "/v1/images/pull", params(NamespaceQuery), tag = "images", request_body = PullRequest,
    responses((status = 200, body = PullEvent, content_type = "application/x-ndjson"), (status = 400, body = hangar_api::ErrorBody),
        (status = 401, body = hangar_api::ErrorBody), (status = 404, body = hangar_api::ErrorBody), (status = 502, body = hangar_api::ErrorBody)))]
pub async fn pull_image(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
    ApiJson(req): ApiJson<PullRequest>,
) -> Result<Response, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    hangar_image::normalize(&req.reference)?;
    let options = PullOptions {
        credentials: match (req.username, req.password) {
            (Some(username), password) => Some(hangar_image::Credentials { username, password: password.unwrap_or_default() }),
            (None, Some(_)) => {
                return Err(ApiError::bad_request("invalid_field", "password: given without a username"));
            }
            (None, None) => None,
        },
    };
    // Progress and the outcome, in order; a failure is kept as an ApiError until it is known
    // whether it can still be the response's status.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<PullEvent, ApiError>>();
    let images: Arc<hangar_image::ImageStore> = state.images.clone();
    let reference = req.reference.clone();
    let ns2 = ns.clone();
    let events = tx.clone();
    tokio::spawn(async move {
        let r = images
            .pull(&ns2, &reference, &options, move |p| {
                let _ = events.send(Ok(match p {
                    Progress::Resolved { digest, layers, cached } => PullEvent::Resolved { digest, layers, cached },
                    Progress::Layer { digest, received, total } => PullEvent::Layer { digest, received, total },
                    Progress::Unpacked { digest } => PullEvent::Unpacked { digest },
                }));
            })
            .await;
        let _ = tx.send(r.map(|image| PullEvent::Done { image: Box::new(view(&image, &ns2)) }).map_err(ApiError::from));
    });
    let first = match rx.recv().await {
        Some(Ok(e)) => e,
        Some(Err(e)) => return Err(e),
        None => {
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the pull ended without a result"));
        }
    };
    let lines =
        futures::stream::once(async move { Ok(first) }).chain(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })).map(|e| {
            let e = e.unwrap_or_else(|e| PullEvent::Error { code: e.code.to_string(), message: e.message });
            let mut line = serde_json::to_vec(&e).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
        });
    Ok(([(http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}
