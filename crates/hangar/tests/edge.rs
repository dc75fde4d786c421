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
