//! A `wasi:http/proxy` component that exercises what the platform must enforce, one route each;
//! Hangar's test suite and benchmarks deploy it.
//!
//! `/echo` body, method and whether an `Authorization` header arrived, back · `/env?name=K` · `/sleep?ms=N` · `/spin` (endless loop) ·
//! `/alloc?mb=N` · `/fetch?url=U` (outbound HTTP GET) · `/log?lines=N` · `/stream?chunks=N` ·
//! `/counter` (global state; always 1) · `/trap` (panics) · `/fs` (tries to read a host file) · `/noresponse` (returns without answering).

use std::io::Write;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};

struct Probe;

/// Incremented by `/counter`: every request gets a fresh instance, so it always answers 1.
static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Filled by `/counter` with a marker: a fresh instance never sees a previous one's heap.
static mut SCRATCH: [u8; 64] = [0; 64];

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%3A", ":").replace("%2F", "/"))
    })
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(body) = request.consume() {
        if let Ok(stream) = body.stream() {
            while let Ok(chunk) = stream.blocking_read(64 * 1024) {
                buf.extend_from_slice(&chunk);
            }
        }
    }
    buf
}

fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], chunks: &[&[u8]]) {
    let list: Vec<(String, Vec<u8>)> = headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
    let response = OutgoingResponse::new(Fields::from_list(&list).unwrap());
    response.set_status_code(status).unwrap();
    let body = response.body().unwrap();
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().unwrap();
    for chunk in chunks {
        for piece in chunk.chunks(4096) {
            stream.blocking_write_and_flush(piece).unwrap();
        }
    }
    drop(stream);
    OutgoingBody::finish(body, None).unwrap();
}

fn text(out: ResponseOutparam, status: u16, s: &str) {
    respond(out, status, &[("content-type", "text/plain")], &[s.as_bytes()]);
}

fn fetch(url: &str) -> Result<(u16, Vec<u8>), String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else {
        return Err(format!("unsupported url {url}"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).map_err(|_| "method")?;
    req.set_scheme(Some(&scheme)).map_err(|_| "scheme")?;
    req.set_authority(Some(authority)).map_err(|_| "authority")?;
    req.set_path_with_query(Some(path)).map_err(|_| "path")?;
    let future = wasip2::http::outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let resp = future.get().ok_or("no response")?.map_err(|_| "response taken")?.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let mut buf = Vec::new();
    let body = resp.consume().map_err(|_| "body")?;
    let stream = body.stream().map_err(|_| "stream")?;
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        buf.extend_from_slice(&chunk);
    }
    Ok((status, buf))
}

impl Guest for Probe {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let pq = request.path_with_query().unwrap_or_default();
        let (path, query) = pq.split_once('?').unwrap_or((pq.as_str(), ""));
        let path = path.to_string();
        let query = query.to_string();
        match path.as_str() {
            "/echo" => {
                let method = format!("{:?}", request.method());
                let saw_auth = if request.headers().has("authorization") { "yes" } else { "no" };
                let body = read_body(&request);
                let headers = [("x-method", method.as_str()), ("x-path", pq.as_str()), ("x-saw-authorization", saw_auth), ("content-type", "application/octet-stream")];
                respond(out, 200, &headers, &[&body]);
            }
            "/env" => {
                let name = query_param(&query, "name").unwrap_or_default();
                match std::env::var(&name) {
                    Ok(v) => text(out, 200, &v),
                    Err(_) => text(out, 404, &format!("{name} is not set")),
                }
            }
            "/sleep" => {
                let ms: u64 = query_param(&query, "ms").and_then(|v| v.parse().ok()).unwrap_or(100);
                wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                text(out, 200, &format!("slept {ms} ms"));
            }
            "/spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "/alloc" => {
                let mb: usize = query_param(&query, "mb").and_then(|v| v.parse().ok()).unwrap_or(1);
                let mut v: Vec<u8> = Vec::with_capacity(mb << 20);
                v.resize(mb << 20, 1);
                text(out, 200, &format!("allocated {} MiB", std::hint::black_box(v).len() >> 20));
            }
            "/fetch" => {
                let url = query_param(&query, "url").unwrap_or_default();
                match fetch(&url) {
                    Ok((status, body)) => respond(out, 200, &[("x-upstream-status", &status.to_string())], &[&body]),
                    Err(e) => text(out, 502, &format!("outbound request failed: {e}")),
                }
            }
            "/log" => {
                let lines: usize = query_param(&query, "lines").and_then(|v| v.parse().ok()).unwrap_or(1);
                for i in 0..lines {
                    println!("stdout line {i}");
                }
                eprintln!("stderr line");
                std::io::stdout().flush().ok();
                text(out, 200, &format!("logged {lines} lines"));
            }
            "/stream" => {
                let chunks: usize = query_param(&query, "chunks").and_then(|v| v.parse().ok()).unwrap_or(3);
                let parts: Vec<Vec<u8>> = (0..chunks).map(|i| format!("chunk {i}\n").into_bytes()).collect();
                let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
                respond(out, 200, &[("content-type", "text/plain")], &refs);
            }
            "/counter" => {
                let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                // SAFETY: a wasm instance is single-threaded; nothing else touches SCRATCH now.
                let seen = unsafe {
                    let p = &raw mut SCRATCH;
                    let before = (*p)[0];
                    (*p)[0] = 0xAB;
                    before
                };
                text(out, 200, &format!("count={n} scratch_before={seen}"));
            }
            "/trap" => panic!("the probe was asked to fail"),
            "/fs" => match std::fs::read_to_string("/etc/passwd") {
                Ok(s) => text(out, 200, &format!("read {} bytes of /etc/passwd", s.len())),
                Err(e) => text(out, 403, &format!("no filesystem: {e}")),
            },
            "/noresponse" => {}
            _ => text(out, 200, &format!("probe: {pq}")),
        }
    }
}

wasip2::http::proxy::export!(Probe);
