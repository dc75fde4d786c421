//! HTTP at the edge, spoken raw over TCP to the real binary: a malformed chunked body is a 400
//! and runs nothing; a service whose process answers in HTTP/1.0 still answers the client in
//! HTTP/1.1 on a connection that stays open; a public function URL answers an unhandled error
//! to an anonymous caller without its details.

mod common;

use std::time::Duration;

use common::Server;
use common::oci::busybox_httpd;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one response (head and a Content-Length body) from `conn`.
async fn read_response(conn: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut byte)).await.expect("an answer").unwrap();
        assert!(n == 1, "the connection closed mid-answer: {}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8_lossy(&body).into_owned())
}

fn host_port(s: &Server) -> String {
    s.url.trim_start_matches("http://").to_string()
}

#[tokio::test]
async fn a_malformed_chunked_body_is_refused_and_runs_nothing() {
    let s = Server::start();
    s.deploy("hello", "hello", &["--public"]);
    let mut conn = TcpStream::connect(host_port(&s)).await.unwrap();
    let req = "POST /fn/default/hello/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nAda\r\nZZ\r\nnot a chunk\r\n0\r\n\r\n";
    conn.write_all(req.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not the JSON error shape ({e}): {body}"));
    assert_eq!(v["error"]["code"], "invalid_body", "{v}");
    assert!(s.invocations("hello").await.is_empty(), "the function ran on half a body");
    // A well-formed chunked body still works.
    let mut conn = TcpStream::connect(host_port(&s)).await.unwrap();
    conn.write_all(b"POST /fn/default/hello/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nAda\r\n0\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("Hello, Ada!"), "{answer}");
}

#[tokio::test]
async fn an_http_1_0_backend_is_answered_in_http_1_1_with_keep_alive() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = busybox_httpd(work.path(), "img", &[("www/index.html", b"one", 0o644)]);
    s.ok(&["image", "import", &layout, "--name", "web:1"]);
    s.ok(&["svc", "deploy", "web", "--image", "web:1", "--public"]);
    let mut conn = TcpStream::connect(host_port(&s)).await.unwrap();
    for round in 0..3 {
        conn.write_all(b"GET /svc/default/web/index.html HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let (head, body) = read_response(&mut conn).await;
        assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
        assert!(!head.to_ascii_lowercase().contains("connection: close"), "round {round}: {head}");
        assert_eq!(body, "one");
    }
}

#[tokio::test]
async fn a_public_function_url_keeps_its_errors_details_from_anonymous_callers() {
    let s = Server::start();
    let _code = common::python_fn(&s, "boom", "def handler(event, context):\n    raise ValueError('secret detail in /srv/app')\n", "handler", &["--public"]);
    let r = reqwest::get(format!("{}/fn/default/boom/", s.url)).await.unwrap();
    assert_eq!(r.status(), 502);
    let id = r.headers()["x-hangar-invocation-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert_eq!(body, r#"{"message":"Internal Server Error"}"#);
    // A caller with a key for the namespace gets Lambda's error shape.
    let r = s.get("/fn/default/boom/").send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errorType"], "ValueError", "{v}");
    assert!(v["stackTrace"].as_array().is_some_and(|t| !t.is_empty()), "{v}");
    // The details stay in the record.
    let recs = s.invocations("boom").await;
    let rec = recs.iter().find(|r| r["id"] == id).expect("the anonymous call was recorded");
    assert!(rec["error"].as_str().unwrap_or_default().contains("secret detail"), "{rec}");
}

/// Every answer of `resp` that is an error is the JSON error shape; returns (status, code).
async fn json_error(resp: reqwest::Response, what: &str) -> (u16, String) {
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = resp.text().await.unwrap_or_default();
    assert!(ctype.starts_with("application/json"), "{what}: {status} answered as `{ctype}`: {body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
    let code = v["error"]["code"].as_str().unwrap_or_else(|| panic!("{what}: no error code: {body}")).to_string();
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: no message: {body}");
    (status, code)
}

#[tokio::test]
async fn every_api_error_is_json_and_bad_fields_are_refused() {
    let s = Server::start();
    let http = s.http();
    let key = s.admin_key.clone();
    // Every route of the OpenAPI document, every method, with broken bodies: each error is the
    // JSON shape (axum's own rejections and empty 405s included).
    let doc: Value = s.get("/v1/openapi.json").send().await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut tried = 0;
    for (template, ops) in paths {
        // The document's parameters are right: path ones are exactly the template's.
        for (method, op) in ops.as_object().unwrap() {
            let in_template: Vec<String> =
                template.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}').map(|n| n.trim_start_matches('*').to_string())).collect();
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let mut in_path: Vec<String> = params.iter().filter(|p| p["in"] == "path").map(|p| p["name"].as_str().unwrap().to_string()).collect();
            in_path.sort();
            let mut want = in_template.clone();
            want.sort();
            assert_eq!(in_path, want, "{method} {template}: path parameters");
            assert!(params.iter().all(|p| p["in"] == "path" || p["in"] == "query" || p["in"] == "header"), "{method} {template}: {params:?}");
        }
        let path = template.split('/').map(|seg| if seg.starts_with('{') { "zz" } else { seg }).collect::<Vec<_>>().join("/");
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            for (ctype, body) in [("application/json", "{\"bad"), ("text/plain", "hello")] {
                let r = http.request(m.clone(), format!("{}{path}", s.url)).bearer_auth(&key).header("content-type", ctype).body(body).send().await.unwrap();
                if r.status().is_client_error() || r.status().is_server_error() {
                    assert!(!r.status().is_server_error(), "{method} {path}: {}", r.status());
                    json_error(r, &format!("{method} {path} ({ctype})")).await;
                    tried += 1;
                }
            }
        }
    }
    assert!(tried > 100, "{tried} error answers checked");

    // The shapes of particular refusals.
    let r = http.patch(format!("{}/v1/functions", s.url)).bearer_auth(&key).send().await.unwrap();
    assert!(r.headers().get("allow").is_some(), "Allow is kept");
    assert_eq!(json_error(r, "405").await, (405, "method_not_allowed".into()));
    let r = http.get(format!("{}/v1/functions/%ff%fe", s.url)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(json_error(r, "bad UTF-8").await.0, 400);
    let r = http.get(format!("{}/no/such/route", s.url)).send().await.unwrap();
    assert_eq!(json_error(r, "404").await, (404, "not_found".into()));
    let r = http.post(format!("{}/v1/namespaces", s.url)).bearer_auth(&key).header("content-type", "text/plain").body(r#"{"name":"x"}"#).send().await.unwrap();
    assert_eq!(json_error(r, "415").await, (415, "unsupported_media_type".into()));
    for name in ["a\u{0}b".to_string(), "x".repeat(100_000)] {
        let r = http.post(format!("{}/v1/keys", s.url)).bearer_auth(&key).json(&serde_json::json!({"name": name})).send().await.unwrap();
        let (status, code) = json_error(r, "key name").await;
        assert_eq!((status, code.as_str()), (400, "invalid_name"));
    }
    let keys: Value = s.get("/v1/keys").send().await.unwrap().json().await.unwrap();
    assert_eq!(keys["items"].as_array().unwrap().len(), 1, "no key was stored: {keys}");
    for route in ["/v1/invocations?cursor=garbage", "/v1/async-invocations?cursor=garbage"] {
        let r = s.get(route).send().await.unwrap();
        assert_eq!(json_error(r, route).await, (400, "invalid_query".into()));
    }
    let r =
        http.post(format!("{}/v1/images/pull", s.url)).bearer_auth(&key).json(&serde_json::json!({"reference": "127.0.0.1:99999/x:1"})).send().await.unwrap();
    assert_eq!(json_error(r, "bad registry port").await, (400, "invalid_reference".into()));
}
