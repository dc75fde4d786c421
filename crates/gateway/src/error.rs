//! API errors in one JSON shape, and extractors whose rejections use it too.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use hangar_api::validate::Invalid;
use hangar_runtime::RuntimeError;
use hangar_store::StoreError;
use serde::de::DeserializeOwned;

/// An error answered to an API caller: status, stable code, and a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

/// Where the host's own files live: paths under these are internals, kept out of answers.
const HOST_PREFIXES: &[&str] = &["/run/", "/sys/", "/proc/", "/tmp/", "/var/", "/root/", "/home/", "/srv/", "/opt/", "/usr/", "/etc/", "/dev/", "/mnt/"];

/// `message` with every host path in it replaced by `<host path>`: a server error's message is
/// logged whole and answered without the machine's layout.
fn without_host_paths(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find('/') {
        let (before, at) = rest.split_at(i);
        out.push_str(before);
        let starts_word = before.chars().last().is_none_or(|c| !c.is_alphanumeric() && c != '.' && c != '-' && c != '_');
        let end = at.find(|c: char| c.is_whitespace() || "`'\"()[]{},;".contains(c)).unwrap_or(at.len());
        let token = &at[..end];
        if starts_word && HOST_PREFIXES.iter().any(|p| token.starts_with(p)) {
            out.push_str("<host path>");
        } else {
            out.push_str(token);
        }
        rest = &at[end..];
    }
    out.push_str(rest);
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
            without_host_paths(&self.message)
        } else {
            self.message
        };
        let mut resp = hangar_runtime::error_response(self.status, self.code, &message).map(axum::body::Body::new);
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<hangar_events::EventsError> for ApiError {
    fn from(e: hangar_events::EventsError) -> Self {
        match e {
            hangar_events::EventsError::Full { .. } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", e.to_string()),
            _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_accepted", e.to_string()),
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        let code = if e.field == "name" || e.field == "namespace" { "invalid_name" } else { "invalid_field" };
        ApiError::bad_request(code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Stale { what, found, .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", format!("{what} changed while this request ran (it is at revision {found} now); send it again"))
            }
            StoreError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the store cannot be reached from this node now, so nothing can change; warm routes keep serving; try again shortly",
            ),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", other.to_string()),
        }
    }
}

impl From<hangar_control::ControlError> for ApiError {
    fn from(e: hangar_control::ControlError) -> Self {
        use hangar_control::ControlError as C;
        match e {
            C::Invalid(i) => i.into(),
            C::Refused { code, message } => ApiError::bad_request(code, message),
            C::NotFound(what) => ApiError::not_found(what),
            C::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            C::Forbidden(m) => ApiError::forbidden(m),
            C::Store(e) => e.into(),
            C::Runtime(e) => e.into(),
            C::Unavailable { code, message } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message),
            C::Service(e) => e.into(),
            C::Sandbox(e) => e.into(),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::InvalidCode(m) => ApiError::bad_request("invalid_code", m),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "runtime_error", other.to_string()),
        }
    }
}

/// JSON body extractor: malformed JSON, unknown fields and wrong types are a 400 in the API's
/// error shape naming the problem.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(axum::http::header::CONTENT_TYPE) {
            let text = ct.to_str().unwrap_or("");
            let mime = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if mime != "application/json" && !mime.ends_with("+json") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("the body must be JSON, but its Content-Type is `{}`; send `Content-Type: application/json`", hangar_api::validate::shown(text)),
                ));
            }
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("request body: {e}")))?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON into `T` with an error that names the line, column and problem.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("invalid_json", format!("the JSON body is not valid: {e}")))
}

/// Query-string extractor with errors in the API's shape.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text().to_string()))
    }
}

/// Most bytes of a plain-text error answer carried into the JSON message.
const MAX_REJECTION_TEXT: usize = 4096;

/// A tower layer (as middleware) over the API's routes: every error answer there is the JSON
/// error shape. axum's own answers (an empty 405 with `Allow`, a path segment that is not UTF-8,
/// a missing WebSocket upgrade, a form that is not one) come as plain text or nothing; they keep
/// their status and headers and get a code and a message. Answers already in JSON pass as they
/// are. Not for `/fn/` and `/svc/`, whose answers are the workloads' own.
pub async fn json_errors(req: Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_TEXT).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let allowed = parts.headers.get(axum::http::header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let path = hangar_api::validate::shown(&path);
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", format!("`{method} {path}` is not allowed; this route takes {allowed}")),
        StatusCode::NOT_FOUND => ("not_found", if text.is_empty() { format!("route `{method} {path}` not found") } else { text }),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", format!("the request body is too large for `{method} {path}`")),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", if text.is_empty() { "unsupported Content-Type".into() } else { text }),
        s if s.is_client_error() => ("invalid_request", if text.is_empty() { s.canonical_reason().unwrap_or("bad request").to_string() } else { text }),
        s => ("internal", if text.is_empty() { s.canonical_reason().unwrap_or("server error").to_string() } else { text }),
    };
    let shaped = hangar_runtime::error_response(status, code, &message);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    for (k, v) in shaped.headers() {
        parts.headers.insert(k, v.clone());
    }
    Response::from_parts(parts, axum::body::Body::new(shaped.into_body()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_paths_are_kept_out_of_server_errors() {
        let m = super::without_host_paths("preparing /run/hangar-ab12/bundles: permission denied (`/var/lib/x/y.db`), route /v1/functions kept");
        assert_eq!(m, "preparing <host path> permission denied (`<host path>`), route /v1/functions kept");
        assert_eq!(super::without_host_paths("no path here"), "no path here");
        assert_eq!(super::without_host_paths("a/tmp/b and /tmp"), "a/tmp/b and /tmp");
    }
}
