//! A function-URL request turned into Lambda's payload 2.0 event: method, path, query, headers
//! and body from the input; always a JSON object, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(5, '\n');
    let (method, path, query, headers, body) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or("/"), parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut map = http::HeaderMap::new();
    for h in headers.split('\t') {
        if let Some((k, v)) = h.split_once(':')
            && let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v))
        {
            map.append(k, v);
        }
    }
    let event = hangar_lambda::url_event::to_event(&hangar_lambda::url_event::UrlRequest {
        method,
        raw_path: path,
        raw_query: query,
        headers: &map,
        body: body.as_bytes(),
        source_ip: "127.0.0.1",
        request_id: "id",
        api_id: "fn",
        domain: "localhost",
        time_ms: 0,
    });
    assert!(event.is_object());
});
