//! `/v1/sandboxes`: create, list, show, remove; exec (output streamed as NDJSON frames);
//! files in and out; pause, standby and resume; interactive commands on a terminal over a
//! WebSocket.

use axum::Json;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hangar_api::sandboxes::{ExecFrame, ExecRequest, Sandbox, SandboxConfig, SandboxList, TtyControl, TtyRequest};
use hangar_sandbox::files::Found;
use hangar_sandbox::{SandboxError, Sandboxes};
use serde::Deserialize;

use crate::AppState;
use crate::api::NamespaceQuery;
use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiQuery};

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> Self {
        let message = e.to_string();
        match e {
            SandboxError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            SandboxError::Invalid(_) => ApiError::bad_request("invalid_request", message),
            SandboxError::Failed(..) => ApiError::new(StatusCode::CONFLICT, "sandbox_failed", message),
            SandboxError::Quota(_) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded", message),
            SandboxError::Unavailable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "sandboxes_unavailable", message),
            SandboxError::Runtime(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "sandbox_error", message),
        }
    }
}

/// The items of a channel as a stream.
fn receiver_stream<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

fn sandboxes(state: &AppState) -> Result<&Sandboxes, ApiError> {
    state.sandboxes.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sandboxes_unavailable",
            format!("sandboxes are not available on this server: {}", state.sandboxes_unavailable.as_deref().unwrap_or("unknown reason")),
        )
    })
}

/// Makes a sandbox from an image and starts it.
#[utoipa::path(post, path = "/v1/sandboxes", request_body = SandboxConfig, params(NamespaceQuery), tag = "sandboxes",
    responses((status = 201, body = Sandbox), (status = 400, body = hangar_api::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
    headers: http::HeaderMap,
    ApiJson(config): ApiJson<SandboxConfig>,
) -> Result<Response, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    // A gateway of a cluster runs no sandboxes: a worker makes it (and owns it).
    if state.sandboxes.is_none()
        && let Some(peers) = &state.peers
        && let Some(worker) = peers.worker(false)
    {
        let body = serde_json::to_vec(&config).map_err(|e| ApiError::bad_request("invalid_sandbox", e.to_string()))?;
        return Ok(peers.forward_api(&worker, http::Method::POST, &format!("/v1/sandboxes?namespace={ns}"), &headers, body.into()).await);
    }
    let sb = state.control.create_sandbox(&ns, config).await?;
    Ok((StatusCode::CREATED, Json(sb)).into_response())
}

/// The sandboxes of a namespace, oldest first.
#[utoipa::path(get, path = "/v1/sandboxes", params(NamespaceQuery), tag = "sandboxes", responses((status = 200, body = SandboxList)))]
pub async fn list(State(state): State<AppState>, p: Principal, ApiQuery(q): ApiQuery<NamespaceQuery>) -> Result<Json<SandboxList>, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    if state.peers.is_none() {
        return Ok(Json(SandboxList { items: sandboxes(&state)?.list(Some(&ns)) }));
    }
    // A cluster's: every node's, as stored, this node's own as they are now.
    let here = state.sandboxes.as_ref().map(|s| s.list(Some(&ns))).unwrap_or_default();
    let mut items: Vec<Sandbox> = state.store.list_sandboxes().await?.into_iter().filter(|s| s.namespace == ns && !here.iter().any(|h| h.id == s.id)).collect();
    items.extend(here);
    items.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    Ok(Json(SandboxList { items }))
}

/// In a cluster, a call on a sandbox another node runs goes on to that node, with the caller's
/// own credentials (that node decides who may reach it).
pub async fn at_owner(State(state): State<AppState>, req: Request, next: axum::middleware::Next) -> Response {
    let Some(peers) = state.peers.clone() else { return next.run(req).await };
    let id = req.uri().path().strip_prefix("/v1/sandboxes/").and_then(|rest| rest.split('/').next()).filter(|id| !id.is_empty()).map(str::to_string);
    let Some(id) = id else { return next.run(req).await };
    if state.sandboxes.as_ref().is_some_and(|s| s.get(None, &id).is_ok()) {
        return next.run(req).await;
    }
    // Only a caller with a key makes this node look (as the handler would ask first).
    if let Err(e) = crate::auth::Credentials::from_headers(req.headers(), &state.keys).require() {
        return e.into_response();
    }
    let owner = match state.store.get_sandbox(&id).await {
        Ok(found) => found.and_then(|s| s.node),
        Err(e) => return ApiError::from(e).into_response(),
    };
    match owner.and_then(|n| peers.node(&n)) {
        Some(node) => peers.forward_raw(&node, req).await,
        None => next.run(req).await,
    }
}

/// One sandbox: state, timings, sizes, usage.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", params(("id" = String, Path), NamespaceQuery), tag = "sandboxes",
    responses((status = 200, body = Sandbox), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<Sandbox>, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    match (sandboxes(&state).and_then(|s| Ok(s.get(Some(&ns), &id)?)), &state.peers) {
        // In a cluster, one whose node is lost is shown as stored (failed, saying why).
        (Err(e), Some(_)) => state.store.get_sandbox(&id).await?.filter(|s| s.namespace == ns).map(Json).ok_or(e),
        (found, _) => found.map(Json),
    }
}

/// Stops a sandbox and removes it with its files and standby image.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", params(("id" = String, Path), NamespaceQuery), tag = "sandboxes",
    responses((status = 204), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<StatusCode, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    state.control.remove_sandbox(&ns, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `pause`, `resume` or `standby`.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/{action}", params(("id" = String, Path), ("action" = String, Path, description = "pause, resume or standby"), NamespaceQuery),
    tag = "sandboxes", responses((status = 200, body = Sandbox), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn lifecycle(
    State(state): State<AppState>,
    p: Principal,
    Path((id, action)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<Sandbox>, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let step: hangar_control::SandboxStep = action.parse().map_err(ApiError::not_found)?;
    Ok(Json(state.control.step_sandbox(&ns, &id, step).await?))
}

/// Runs a command. The answer streams `application/x-ndjson`: `{"stdout":...}` and
/// `{"stderr":...}` frames as output comes, then `{"exit_code":N}` (127: no such command).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", request_body = ExecRequest, params(("id" = String, Path), NamespaceQuery), tag = "sandboxes",
    responses((status = 200, description = "NDJSON frames", body = [hangar_api::sandboxes::ExecFrame]), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn exec(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let frames = sandboxes(&state)?.exec(Some(&ns), &id, req).await?;
    let lines = receiver_stream(frames).map(|f| {
        let mut line = serde_json::to_vec(&f).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
    });
    Ok(([(http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    pub namespace: Option<String>,
    /// Absolute path inside the sandbox.
    pub path: String,
}

/// A file's bytes, or a directory's entries as JSON.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", params(("id" = String, Path), FileQuery), tag = "sandboxes",
    responses((status = 200, description = "the file, or [FileEntry] for a directory"), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn read(State(state): State<AppState>, p: Principal, Path(id): Path<String>, ApiQuery(q): ApiQuery<FileQuery>) -> Result<Response, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let s = sandboxes(&state)?;
    match s.stat(Some(&ns), &id, &q.path).await.map_err(|e| match e {
        SandboxError::NotFound(_) => ApiError::not_found(format_args!("{} in sandbox `{id}`", q.path)),
        other => other.into(),
    })? {
        Found::Dir(entries) => Ok(Json(entries).into_response()),
        Found::File { size } => {
            let chunks = s.read(Some(&ns), &id, &q.path).await?;
            let body = Body::from_stream(receiver_stream(chunks).map(|c| c.map_err(std::io::Error::other)));
            Ok(([(http::header::CONTENT_TYPE, "application/octet-stream".to_string()), (http::header::CONTENT_LENGTH, size.to_string())], body).into_response())
        }
    }
}

/// Writes a file from the request body (making its directories).
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files", params(("id" = String, Path), FileQuery), tag = "sandboxes",
    responses((status = 201, description = "written"), (status = 413, body = hangar_api::ErrorBody)))]
pub async fn write(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let length = req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let mut body = req.into_body().into_data_stream();
    let written = match sandboxes(&state)?.write(Some(&ns), &id, &q.path, length, &mut body).await {
        Ok(n) => n,
        Err(e) => {
            // Refused before the body was all read (e.g. it does not fit): the client reads the
            // answer, not a broken pipe.
            crate::invoke::drain(&mut body).await;
            return Err(e.into());
        }
    };
    Ok((StatusCode::CREATED, Json(serde_json::json!({"path": q.path, "bytes": written}))).into_response())
}

/// Runs an interactive command on a terminal of its own, over a WebSocket: the first message
/// (text) is a `TtyRequest`; then binary messages carry keystrokes in and output out, a text
/// `TtyControl` resizes the terminal, and the last message is a text `ExecFrame` (`exit_code`
/// or `error`). Closing the socket kills the command.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/tty", params(("id" = String, Path), NamespaceQuery), tag = "sandboxes",
    responses((status = 101, description = "a WebSocket; see TtyRequest, TtyControl, ExecFrame"), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn tty(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let sbs = sandboxes(&state)?.clone();
    // Unknown sandboxes are told before the upgrade, as a plain 404.
    sbs.get(Some(&ns), &id)?;
    Ok(ws.on_upgrade(move |socket| terminal(sbs, ns, id, socket)))
}

/// Sends the last message and closes.
async fn end(socket: &mut (impl futures::Sink<Message> + Unpin), frame: ExecFrame) {
    use futures::SinkExt;
    let _ = socket.send(Message::Text(serde_json::to_string(&frame).unwrap_or_default().into())).await;
    let _ = socket.close().await;
}

async fn terminal(sbs: Sandboxes, ns: String, id: String, mut socket: WebSocket) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = match socket.recv().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str::<TtyRequest>(&t).map_err(|e| format!("the first message must be the command to run, as JSON: {e}")),
        _ => Err("the first message must be the command to run, as JSON text (a TtyRequest)".to_string()),
    };
    let started = match req {
        Ok(req) => sbs.tty(Some(&ns), &id, req).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let mut tty = match started {
        Ok(t) => t,
        Err(e) => return end(&mut socket, ExecFrame::Error(e)).await,
    };
    // Keystrokes go through a bounded channel to their own writer, so a command that does not
    // read its input never stops its output from being read.
    let (keys, mut pending) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    let mut input = tty.input.try_clone().await.ok();
    let writer = tokio::spawn(async move {
        while let Some(chunk) = pending.recv().await {
            let Some(w) = input.as_mut() else { return };
            if w.write_all(&chunk).await.is_err() || w.flush().await.is_err() {
                return;
            }
        }
    });
    let (mut sink, mut stream) = socket.split();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = tty.output.read(&mut buf) => match n {
                // The terminal's other end closed: the command is over.
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    use futures::SinkExt;
                    if sink.send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        tty.kill().await;
                        writer.abort();
                        return;
                    }
                }
            },
            m = stream.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if keys.send(b).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if let Ok(TtyControl::Resize { cols, rows }) = serde_json::from_str::<TtyControl>(&t).map_err(|_| ()).and_then(|c| c.validate().map(|()| c).map_err(|_| ())) {
                        let _ = tty.resize(cols, rows);
                    }
                }
                Some(Ok(_)) => {}
                // The caller went away: so does the command.
                Some(Err(_)) | None => {
                    tty.kill().await;
                    writer.abort();
                    return;
                }
            },
        }
    }
    writer.abort();
    let code = tty.wait().await;
    end(&mut sink, ExecFrame::ExitCode(code)).await;
}
