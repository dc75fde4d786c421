//! Bad input gets a clear 4xx naming the problem, never a panic or a 500, and leaves existing
//! state untouched.

mod common;

use common::{Server, error_code, guest};
use reqwest::multipart::{Form, Part};

fn form(config: serde_json::Value, code: Vec<u8>) -> Form {
    Form::new().part("config", Part::text(config.to_string()).mime_str("application/json").unwrap()).part("code", Part::bytes(code))
}

#[tokio::test]
async fn bad_deploys_are_rejected_and_change_nothing() {
    let s = Server::start_with(&["--max-code-bytes", "200000"]);
    s.deploy("keep", "probe", &["--env", "COLOR=blue"]);
    let c = s.http();
    let put = |name: &str| c.put(format!("{}/v1/functions/{name}", s.url)).bearer_auth(&s.admin_key);
    let wasm = std::fs::read(guest("probe")).unwrap();
    let cfg = serde_json::json!({"runtime": "wasm"});

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str, &str)> = vec![
        ("invalid name", put("Bad_Name").multipart(form(cfg.clone(), wasm.clone())), 400, "invalid_name", "not a valid name"),
        ("name too long", put(&"a".repeat(64)).multipart(form(cfg.clone(), wasm.clone())), 400, "invalid_name", "not a valid name"),
        ("unknown runtime", put("keep").multipart(form(serde_json::json!({"runtime": "cobol"}), wasm.clone())), 400, "invalid_json", "unknown variant `cobol`"),
        (
            "unknown field",
            put("keep").multipart(form(serde_json::json!({"runtime": "wasm", "memroy": 5}), wasm.clone())),
            400,
            "invalid_json",
            "unknown field `memroy`",
        ),
        (
            "malformed config",
            put("keep").multipart(Form::new().text("config", "{not json").part("code", Part::bytes(wasm.clone()))),
            400,
            "invalid_json",
            "not valid",
        ),
        (
            "memory out of range",
            put("keep").multipart(form(serde_json::json!({"runtime": "wasm", "memory_mb": 1}), wasm.clone())),
            400,
            "invalid_field",
            "memory_mb",
        ),
        (
            "timeout out of range",
            put("keep").multipart(form(serde_json::json!({"runtime": "wasm", "timeout_ms": 0}), wasm.clone())),
            400,
            "invalid_field",
            "timeout_ms",
        ),
        (
            "bad env name",
            put("keep").multipart(form(serde_json::json!({"runtime": "wasm", "env": {"1X": "y"}}), wasm.clone())),
            400,
            "invalid_field",
            "variable name",
        ),
        (
            "bad outbound host",
            put("keep").multipart(form(serde_json::json!({"runtime": "wasm", "allow_outbound": ["http://x/y"]}), wasm.clone())),
            400,
            "invalid_field",
            "allow_outbound",
        ),
        ("not wasm", put("keep").multipart(form(cfg.clone(), b"#!/bin/sh\necho hi\n".to_vec())), 400, "invalid_code", "not WebAssembly"),
        ("core module", put("keep").multipart(form(cfg.clone(), b"\0asm\x01\0\0\0".to_vec())), 400, "invalid_code", "core WebAssembly module"),
        ("no incoming-handler", put("keep").multipart(form(cfg.clone(), b"\0asm\x0d\0\x01\0".to_vec())), 400, "invalid_code", "wasi:http/incoming-handler"),
        ("garbage component", put("keep").multipart(form(cfg.clone(), b"\0asm\x0d\0\x01\0\xff\xff\xff".to_vec())), 400, "invalid_code", "does not compile"),
        ("empty code", put("keep").multipart(form(cfg.clone(), Vec::new())), 400, "invalid_code", "empty"),
        ("code too large", put("keep").multipart(form(cfg.clone(), vec![0u8; 300_000])), 413, "code_too_large", "200000"),
        ("no code for a new function", put("fresh").json(&cfg), 400, "invalid_code", "must upload code"),
        ("missing config", put("keep").multipart(Form::new().part("code", Part::bytes(wasm.clone()))), 400, "invalid_multipart", "config"),
        ("wrong content type", put("keep").body("x"), 415, "unsupported_media_type", "multipart"),
        ("unknown query", c.get(format!("{}/v1/functions?bogus=1", s.url)).bearer_auth(&s.admin_key), 400, "invalid_query", "bogus"),
        ("bad status filter", c.get(format!("{}/v1/invocations?status=fine", s.url)).bearer_auth(&s.admin_key), 400, "invalid_query", "fine"),
        ("bad limit", c.get(format!("{}/v1/invocations?limit=0", s.url)).bearer_auth(&s.admin_key), 400, "invalid_query", "limit"),
        ("bad time", c.get(format!("{}/v1/invocations?since=yesterday", s.url)).bearer_auth(&s.admin_key), 400, "invalid_query", "RFC 3339"),
        ("malformed json", c.post(format!("{}/v1/namespaces", s.url)).bearer_auth(&s.admin_key).body("{"), 400, "invalid_json", "not valid"),
        (
            "unknown json field",
            c.post(format!("{}/v1/namespaces", s.url)).bearer_auth(&s.admin_key).json(&serde_json::json!({"name": "x", "extra": 1})),
            400,
            "invalid_json",
            "unknown field `extra`",
        ),
        (
            "bad namespace name",
            c.post(format!("{}/v1/namespaces", s.url)).bearer_auth(&s.admin_key).json(&serde_json::json!({"name": "No"})),
            400,
            "invalid_name",
            "not a valid name",
        ),
        (
            "duplicate namespace",
            c.post(format!("{}/v1/namespaces", s.url)).bearer_auth(&s.admin_key).json(&serde_json::json!({"name": "default"})),
            409,
            "conflict",
            "already exists",
        ),
        (
            "key for a missing namespace",
            c.post(format!("{}/v1/keys", s.url)).bearer_auth(&s.admin_key).json(&serde_json::json!({"namespace": "nope"})),
            404,
            "not_found",
            "nope",
        ),
        ("deploy into a missing namespace", put("keep").query(&[("namespace", "nope")]).multipart(form(cfg.clone(), wasm.clone())), 404, "not_found", "nope"),
        ("unknown route", c.get(format!("{}/v2/things", s.url)), 404, "not_found", "/v2/things"),
        ("bad function url", c.get(format!("{}/fn/default", s.url)).bearer_auth(&s.admin_key), 400, "invalid_path", "/fn/"),
    ];
    for (what, req, status, code, fragment) in cases {
        let (st, got_code, msg) = error_code(req.send().await.unwrap()).await;
        assert_eq!((st, got_code.as_str()), (status, code), "{what}: {msg}");
        assert!(msg.contains(fragment), "{what}: message `{msg}` should mention `{fragment}`");
    }

    // Nothing changed: still revision 1 with its env, still answering.
    let f: serde_json::Value = s.get("/v1/functions/keep").send().await.unwrap().json().await.unwrap();
    assert_eq!(f["revision"], 1);
    assert_eq!(f["config"]["env"]["COLOR"], "blue");
    assert_eq!(s.get("/fn/default/keep/env?name=COLOR").send().await.unwrap().text().await.unwrap(), "blue");
    let fns: serde_json::Value = s.get("/v1/functions").send().await.unwrap().json().await.unwrap();
    assert_eq!(fns["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn payloads_over_the_limit_get_413() {
    let s = Server::start_with(&["--max-payload-bytes", "1000"]);
    s.deploy("probe", "probe", &[]);
    let c = s.http();
    let url = format!("{}/fn/default/probe/echo", s.url);
    assert_eq!(c.post(&url).bearer_auth(&s.admin_key).body(vec![b'x'; 1000]).send().await.unwrap().status(), 200);
    let (st, code, msg) = error_code(c.post(&url).bearer_auth(&s.admin_key).body(vec![b'x'; 1001]).send().await.unwrap()).await;
    assert_eq!((st, code.as_str()), (413, "payload_too_large"));
    assert!(msg.contains("1000 bytes"), "{msg}");
    // Far over the limit: the client still gets to read the 413 (no broken pipe).
    let r = c.post(&url).bearer_auth(&s.admin_key).body(vec![b'z'; 2 << 20]).send().await.expect("the 413 arrives");
    assert_eq!(r.status(), 413);
    // Chunked, without a Content-Length.
    let chunks = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 400])));
    let r = c.post(&url).bearer_auth(&s.admin_key).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn cli_reports_failures_with_exit_codes() {
    let s = Server::start();
    let err = s.fails(&["fn", "get", "nothing"], 4);
    assert!(err.contains("function `nothing` in namespace `default` not found"), "{err}");
    let err = s.fails(&["fn", "deploy", "Bad_Name", "--code", guest("hello").to_str().unwrap()], 1);
    assert!(err.contains("not a valid name"), "{err}");
    let err = s.fails(&["fn", "deploy", "x", "--runtime", "cobol", "--code", "x.wasm"], 1);
    assert!(err.contains("unknown runtime `cobol`"), "{err}");
    let err = s.fails(&["fn", "deploy", "x", "--code", "/nonexistent.wasm"], 1);
    assert!(err.contains("/nonexistent.wasm"), "{err}");
    let err = s.fails(&["fn", "deploy", "x", "--code", guest("hello").to_str().unwrap(), "--timeout", "soon"], 1);
    assert!(err.contains("--timeout"), "{err}");
    let err = s.fails(&["fn", "deploy", "x", "--code", "Cargo.toml"], 6);
    assert!(err.contains("not WebAssembly"), "{err}");
    let err = s.fails(&["invoke", "nothing"], 4);
    assert!(err.contains("not found"), "{err}");
    // An unreachable server.
    let out = std::process::Command::new(common::BIN).args(["--url", "http://127.0.0.1:9", "--key", "k", "fn", "ls"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach Hangar"));
    // A failing function: non-zero exit and the invocation id.
    s.deploy("probe", "probe", &[]);
    let err = s.fails(&["invoke", "probe", "--path", "/trap"], 7);
    assert!(err.contains("invocation ") && err.contains("function_error"), "{err}");
}

#[tokio::test]
async fn manifest_errors_apply_nothing() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let hello = guest("hello");
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0").unwrap();
    let write = |text: &str| {
        let p = dir.path().join("hangar.toml");
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    // A field error names the line and the field.
    let p = write(&format!("[functions.a]\nruntime = \"wasm\"\ncode = \"{}\"\nmemory = 100000\n", hello.display()));
    let err = s.fails(&["deploy", "-f", &p], 1);
    assert!(err.contains("hangar.toml:4: functions.a.memory"), "{err}");
    // A syntax error names the line.
    let p = write("[functions.a]\nruntime = \"wasm\"\ncode = \n");
    let err = s.fails(&["deploy", "-f", &p], 1);
    assert!(err.contains("hangar.toml:3"), "{err}");
    // One good and one bad function: the bad one is rejected by the server and nothing is applied.
    let p = write(&format!("[functions.a]\nruntime = \"wasm\"\ncode = \"{}\"\n\n[functions.b]\nruntime = \"wasm\"\ncode = \"bad.wasm\"\n", hello.display()));
    let err = s.fails(&["deploy", "-f", &p], 6);
    assert!(err.contains("function `b` was rejected; nothing was deployed") && err.contains("core WebAssembly module"), "{err}");
    let fns: serde_json::Value = serde_json::from_str(&s.ok(&["fn", "ls", "-o", "json"])).unwrap();
    assert!(fns["items"].as_array().unwrap().is_empty(), "nothing applied: {fns}");

    // A good manifest: created, then unchanged, then updated.
    let good = format!("[functions.a]\nruntime = \"wasm\"\ncode = \"{}\"\npublic = true\n", hello.display());
    let p = write(&good);
    assert!(s.ok(&["deploy", "-f", &p]).contains("created"));
    assert!(s.ok(&["deploy", "-f", &p]).contains("unchanged"));
    let p = write(&good.replace("public = true", "public = true\nmemory = 64"));
    assert!(s.ok(&["deploy", "-f", &p]).contains("updated"));
    assert_eq!(reqwest::get(format!("{}/fn/default/a/", s.url)).await.unwrap().text().await.unwrap(), "Hello, world!\n");
}
