//! How one call of a process function maps onto Lambda: the event a handler receives (the
//! invoke payload as is, or a function-URL request as payload v2.0), the invocation's
//! identifiers (request id, X-Ray trace id, function ARN), the handler's result back to HTTP,
//! the record of a function's own error, and the START / END / REPORT log lines Lambda writes
//! around an invocation's output. The process runtime only runs instances; what the call
//! looks like to Lambda code lives here.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;

use crate::url_event;

/// How the call came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The invoke API or an asynchronous attempt: the body is the event (JSON).
    Invoke,
    /// The function's URL: the HTTP request becomes a payload v2.0 event.
    Url,
}

/// An invoke payload that is not JSON.
#[derive(Debug, thiserror::Error)]
#[error("the payload of a process function is its event and must be JSON")]
pub struct NotJson;

/// What a function-URL request's event needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct UrlContext<'a> {
    pub request_id: &'a str,
    /// The function's name (the event's `apiId`).
    pub function: &'a str,
    pub time_ms: i64,
}

/// The event the handler receives: an invoke payload as is (blank: `{}`), a URL request as
/// payload v2.0.
pub fn event(source: Source, head: &http::request::Parts, body: Bytes, cx: UrlContext<'_>) -> Result<Bytes, NotJson> {
    match source {
        Source::Invoke if body.iter().all(u8::is_ascii_whitespace) => Ok(Bytes::from_static(b"{}")),
        Source::Invoke if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() => Err(NotJson),
        Source::Invoke => Ok(body),
        Source::Url => {
            let host = head.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
            // The gateway appends the peer it saw; earlier entries are the client's own claims.
            let ip = head.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).and_then(|v| v.rsplit(',').next()).unwrap_or("127.0.0.1");
            let event = url_event::to_event(&url_event::UrlRequest {
                method: head.method.as_str(),
                raw_path: head.uri.path(),
                raw_query: head.uri.query().unwrap_or(""),
                headers: &head.headers,
                body: &body,
                source_ip: ip.trim(),
                request_id: cx.request_id,
                api_id: cx.function,
                domain: host,
                time_ms: cx.time_ms,
            });
            Ok(Bytes::from(event.to_string()))
        }
    }
}

/// An X-Ray trace id (`Root=1-<8 hex seconds>-<24 hex>`) for an invocation, from its deadline
/// and request id.
pub fn trace_id(deadline_ms: i64, request_id: &str) -> String {
    format!("Root=1-{:08x}-{}", deadline_ms / 1000, request_id.replace('-', "").get(..24).unwrap_or("0"))
}

/// The ARN a function is known by inside its handler (`context.invoked_function_arn`).
pub fn function_arn(region: &str, namespace: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:000000000000:function:{namespace}_{name}")
}

/// The HTTP answer to a handler's result: JSON as is for an invoke, the URL result shape
/// (`statusCode`, `headers`, `body`, ...) for a URL call.
pub fn result(source: Source, bytes: Bytes) -> Result<http::Response<Bytes>, url_event::ResultError> {
    match source {
        Source::Invoke => {
            let mut resp = http::Response::new(bytes);
            resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            Ok(resp)
        }
        Source::Url => url_event::to_response(&bytes),
    }
}

/// How a function's own error is recorded: `<errorType>: <errorMessage>`, after
/// `init error: ` when it happened during init, followed by `logs` when there are any.
pub fn error_record(err: &serde_json::Value, init: bool, logs: &str) -> String {
    let mut error =
        format!("{}{}: {}", if init { "init error: " } else { "" }, err["errorType"].as_str().unwrap_or("Error"), err["errorMessage"].as_str().unwrap_or(""));
    if !logs.is_empty() {
        error.push('\n');
        error.push_str(logs);
    }
    error
}

/// What Lambda's REPORT line says of an invocation.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub revision: u64,
    pub elapsed: Duration,
    pub billed_ms: u64,
    pub memory_mb: u64,
    pub max_memory_used_mb: u64,
    /// The instance's init time, when this invocation started it.
    pub init: Option<Duration>,
}

/// An invocation's output between Lambda's START and END lines, then its REPORT line.
pub fn log_frame(request_id: &str, output: &str, r: &Report) -> String {
    let mut out = format!("START RequestId: {request_id} Version: {}\n", r.revision);
    out.push_str(output);
    if !output.is_empty() && !output.ends_with('\n') {
        out.push('\n');
    }
    let ms = r.elapsed.as_secs_f64() * 1000.0;
    let _ = write!(
        out,
        "END RequestId: {request_id}\nREPORT RequestId: {request_id}\tDuration: {ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\tMax Memory Used: {} MB",
        r.billed_ms, r.memory_mb, r.max_memory_used_mb,
    );
    if let Some(init) = r.init {
        let _ = write!(out, "\tInit Duration: {:.2} ms", init.as_secs_f64() * 1000.0);
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn invoke_events_are_json_and_url_events_are_payload_v2() {
        let cx = UrlContext { request_id: "0190-aaaa", function: "greet", time_ms: 0 };
        let head = parts(http::Request::post("/x").body(()).unwrap());
        assert_eq!(event(Source::Invoke, &head, Bytes::from_static(b" \n"), cx).unwrap(), "{}");
        assert_eq!(event(Source::Invoke, &head, Bytes::from_static(b"[1]"), cx).unwrap(), "[1]");
        assert!(event(Source::Invoke, &head, Bytes::from_static(b"Ada"), cx).is_err());
        let head = parts(http::Request::get("/items/1?a=b").header("host", "h.example").header("x-forwarded-for", "10.1.2.3, 1.1.1.1").body(()).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&event(Source::Url, &head, Bytes::new(), cx).unwrap()).unwrap();
        assert_eq!((v["version"].as_str(), v["rawPath"].as_str(), v["rawQueryString"].as_str()), (Some("2.0"), Some("/items/1"), Some("a=b")));
        assert_eq!(v["requestContext"]["http"]["sourceIp"], "1.1.1.1");
        assert_eq!(v["requestContext"]["apiId"], "greet");
    }

    #[test]
    fn identifiers_results_errors_and_log_lines_look_like_lambdas() {
        assert_eq!(trace_id(1_700_000_000_123, "01234567-89ab-cdef-0123-456789abcdef"), "Root=1-6553f100-0123456789abcdef01234567");
        assert_eq!(function_arn("eu-west-1", "default", "f"), "arn:aws:lambda:eu-west-1:000000000000:function:default_f");
        assert_eq!(result(Source::Invoke, Bytes::from_static(b"1")).unwrap().headers()["content-type"], "application/json");
        let r = result(Source::Url, Bytes::from_static(br#"{"statusCode": 201, "body": "made"}"#)).unwrap();
        assert_eq!((r.status().as_u16(), r.body().as_ref()), (201, b"made".as_slice()));
        let err = crate::error_body("ValueError", "bad");
        assert_eq!(error_record(&err, true, "trace"), "init error: ValueError: bad\ntrace");
        let report = Report {
            revision: 3,
            elapsed: Duration::from_micros(1500),
            billed_ms: 2,
            memory_mb: 128,
            max_memory_used_mb: 9,
            init: Some(Duration::from_millis(7)),
        };
        assert_eq!(
            log_frame("id", "hi", &report),
            "START RequestId: id Version: 3\nhi\nEND RequestId: id\nREPORT RequestId: id\tDuration: 1.50 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB\tMax Memory Used: 9 MB\tInit Duration: 7.00 ms\n"
        );
    }
}
