//! The deploy form: `multipart/form-data` with a `config` part (JSON) and a `code` part, read
//! whole and judged only once read (an answer sent while the client still uploads is lost).
//! Outside input: fuzzed by `fuzz/fuzz_targets/deploy_form.rs`.
//!
//! Design decisions:
//!
//! *Upload format.* `PUT /v1/functions/{name}` takes `multipart/form-data` (`config` JSON +
//! `code`) so code is sent as bytes (not base64); a JSON body alone changes only the
//! configuration.

use axum::extract::{FromRequest, Multipart};
use axum::http::StatusCode;
use bytes::Bytes;

use crate::error::ApiError;

/// Reads a deploy form: the `config` part's bytes and the `code` part, which may be at most
/// `max_code_bytes` (a larger one is read to its end and refused with 413). Unknown parts and a
/// missing `config` are 400 `invalid_multipart`.
pub async fn read_function_form(req: axum::extract::Request, max_code_bytes: usize) -> Result<(Bytes, Option<Bytes>), ApiError> {
    let mut form = Multipart::from_request(req, &()).await.map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
    // Parts are judged only once the whole form is read: an answer sent while the client is
    // still uploading the code part is lost when the connection closes.
    let (mut config, mut code, mut unknown) = (None, None, None);
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "code_too_large",
            format!("the code is larger than the limit of {} bytes; shrink it (e.g. build with --release and strip) or raise --max-code-bytes", max_code_bytes),
        )
    };
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(e) => return Err(ApiError::bad_request("invalid_multipart", e.body_text())),
        };
        match field.name().unwrap_or("") {
            "config" => {
                config = Some(field.bytes().await.map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?);
            }
            "code" => {
                let mut field = field;
                let mut buf = Vec::new();
                let mut over = false;
                loop {
                    match field.chunk().await {
                        // Past the limit, keep reading (and dropping) what the route's body limit
                        // still allows, so the client finishes sending and can read the 413.
                        Ok(Some(_)) if over => {}
                        Ok(Some(chunk)) if buf.len() + chunk.len() > max_code_bytes => {
                            over = true;
                            buf = Vec::new();
                        }
                        Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
                        Ok(None) if over => return Err(too_large()),
                        Ok(None) => break,
                        Err(e) if over || e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
                        Err(e) => return Err(ApiError::bad_request("invalid_multipart", e.body_text())),
                    }
                }
                code = Some(Bytes::from(buf));
            }
            other => {
                unknown.get_or_insert_with(|| other.to_string());
                let mut field = field;
                while let Ok(Some(_)) = field.chunk().await {}
            }
        }
    }
    if let Some(other) = unknown {
        return Err(ApiError::bad_request("invalid_multipart", format!("unknown form part `{other}`; expected `config` and `code`")));
    }
    let config = config.ok_or_else(|| ApiError::bad_request("invalid_multipart", "the `config` part is missing"))?;
    Ok((config, code))
}
