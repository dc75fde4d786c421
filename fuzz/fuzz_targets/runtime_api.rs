//! Requests to the Lambda Runtime API as a bootstrap (user code) may send them, while an
//! invocation is in progress: each answered below 500, the invocation answered at most once,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime"))
}

const PATHS: &[&str] = &[
    "/2018-06-01/runtime/invocation/next",
    "/2018-06-01/runtime/invocation/r1/response",
    "/2018-06-01/runtime/invocation/r1/error",
    "/2018-06-01/runtime/init/error",
];

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (api, router) = hangar_lambda::runtime_api::RuntimeApi::in_memory();
        let invocation = hangar_lambda::runtime_api::Invocation {
            request_id: "r1".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            deadline_ms: 0,
            function_arn: "arn:aws:lambda:local:000000000000:function:f".into(),
            trace_id: "Root=1-0-0".into(),
            client_context: None,
            cognito_identity: None,
        };
        let pending = tokio::spawn(async move {
            let answer = tokio::time::timeout(std::time::Duration::from_millis(10), api.invoke(invocation)).await;
            (api, answer)
        });
        tokio::task::yield_now().await;
        // Requests: one byte picks the method and path (or a path from the input), a line of
        // headers, then the body up to a NUL.
        for request in data.split(|&b| b == 0).take(8) {
            let Some((&pick, rest)) = request.split_first() else { continue };
            let mut lines = rest.splitn(3, |&b| b == b'\n');
            let (custom, headers, body) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
            let path = match pick as usize % (PATHS.len() + 1) {
                i if i < PATHS.len() => PATHS[i].to_string(),
                _ => format!("/2018-06-01/runtime/invocation/{}", String::from_utf8_lossy(custom)),
            };
            let method = if pick & 0x80 == 0 { "POST" } else { "GET" };
            let mut req = http::Request::builder().method(method).uri(path.as_str());
            for h in headers.split(|&b| b == b'\t') {
                if let Some(at) = h.iter().position(|&b| b == b':')
                    && let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(&h[..at]), http::HeaderValue::from_bytes(&h[at + 1..]))
                {
                    req = req.header(k, v);
                }
            }
            let Ok(req) = req.body(axum::body::Body::from(body.to_vec())) else { continue };
            // `next` waits for an invocation that may never come: bounded.
            if let Ok(resp) = tokio::time::timeout(std::time::Duration::from_millis(5), router.clone().oneshot(req)).await {
                let resp = resp.expect("the router is infallible");
                assert!(resp.status().as_u16() < 500, "{method} {path} got {}", resp.status());
            }
        }
        let _ = pending.await;
    });
});
