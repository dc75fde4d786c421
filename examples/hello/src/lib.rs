//! The quick-start function: a `wasi:http/proxy` component that greets whoever calls it.
//!
//! `GET /` answers `Hello, world!`; `POST /` with a name in the body answers `Hello, <name>!`.
//! The greeting comes from the `GREETING` environment variable when set.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Hello;

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let mut name = String::new();
        if let Ok(body) = request.consume() {
            if let Ok(stream) = body.stream() {
                let mut buf = Vec::new();
                while let Ok(chunk) = stream.blocking_read(64 * 1024) {
                    buf.extend_from_slice(&chunk);
                }
                name = String::from_utf8_lossy(&buf).trim().to_string();
            }
        }
        if name.is_empty() {
            name = "world".into();
        }
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
        println!("greeting {name} on {path}");

        let headers = Fields::from_list(&[("content-type".into(), b"text/plain; charset=utf-8".to_vec())]).unwrap();
        let response = OutgoingResponse::new(headers);
        let body = response.body().unwrap();
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().unwrap();
        let text = format!("{greeting}, {name}!\n");
        for chunk in text.as_bytes().chunks(4096) {
            stream.blocking_write_and_flush(chunk).unwrap();
        }
        drop(stream);
        OutgoingBody::finish(body, None).unwrap();
    }
}

wasip2::http::proxy::export!(Hello);
