//! A deploy's `multipart/form-data` body (the boundary and the body from the input) read as the
//! gateway reads it: the config and code parts, or a 4xx error; never a panic, never a 5xx, and
//! never a code part over the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

const MAX_CODE: usize = 4096;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"))
}

fuzz_target!(|data: &[u8]| {
    // The first line is the boundary; the rest is the body.
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let boundary = String::from_utf8_lossy(&data[..split]).into_owned();
    let body = data.get(split + 1..).unwrap_or_default().to_vec();
    let Ok(req) = http::Request::builder()
        .method("PUT")
        .uri("/v1/functions/f")
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(axum::body::Body::from(body))
    else {
        return;
    };
    let read = runtime().block_on(hangar_gateway::form::read_function_form(req, MAX_CODE));
    match read {
        Ok((_, code)) => assert!(code.is_none_or(|c| c.len() <= MAX_CODE)),
        Err(e) => assert!(e.status.is_client_error(), "a form got {}", e.status),
    }
});
