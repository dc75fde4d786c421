//! A URL per workload: every function and service answers on `NAME.NAMESPACE.fn.DOMAIN` /
//! `NAME.NAMESPACE.svc.DOMAIN` and on the hosts it claims, whole path, and sees the
//! `X-Forwarded-*` headers an edge proxy sets. Host names are resolved to the server as curl and
//! browsers resolve `*.localhost`. The services test needs root and runc; the FastAPI test
//! installs FastAPI and Mangum with pip (it fails, saying so, when PyPI cannot be reached).

mod common;

use std::process::Command;

use common::{Server, python_fn};
use serde_json::Value;

/// A client that sends every request for `hosts` to the server, as curl does for `*.localhost`.
fn resolving(s: &Server, hosts: &[&str]) -> reqwest::Client {
    let addr: std::net::SocketAddr = s.url.trim_start_matches("http://").parse().unwrap();
    let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    for h in hosts {
        b = b.resolve(h, addr);
    }
    b.build().unwrap()
}

fn port(s: &Server) -> String {
    s.url.rsplit(':').next().unwrap().to_string()
}

const WHO: &str = r#"
import json
def handler(event, context):
    h = event.get("headers", {})
    keep = {k: v for k, v in h.items() if k == "host" or k.startswith("x-forwarded")}
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({"path": event["rawPath"], "query": event["rawQueryString"], "headers": keep,
                                "source_ip": event["requestContext"]["http"]["sourceIp"],
                                "domain": event["requestContext"]["domainName"]})}
"#;

#[tokio::test]
async fn a_function_answers_on_its_own_host_name_whole_path_with_forwarded_headers() {
    let s = Server::start();
    let _code = python_fn(&s, "who", WHO, "handler", &["--host", "who.example.test"]);
    let p = port(&s);
    let own = format!("who.default.fn.localhost:{p}");
    let client = resolving(&s, &["who.default.fn.localhost", "who.example.test", "nobody.default.fn.localhost", "who.fn.localhost"]);

    // Its own host name, whole path: the function sees the path and the host asked for.
    let r = client.get(format!("http://{own}/items/1?x=2")).bearer_auth(&s.admin_key).header("x-forwarded-host", "spoofed.example").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["path"].as_str(), v["query"].as_str()), (Some("/items/1"), Some("x=2")), "{v}");
    let h = &v["headers"];
    assert_eq!(h["host"], own.as_str(), "{v}");
    assert_eq!(h["x-forwarded-host"], own.as_str(), "a client's X-Forwarded-Host is replaced: {v}");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert!(h.get("x-forwarded-prefix").is_none(), "{v}");
    assert_eq!((v["source_ip"].as_str(), v["domain"].as_str()), (Some("127.0.0.1"), Some(own.as_str())));

    // Under the prefix route, the prefix is said; a client's own X-Forwarded-For is kept before
    // the address the server saw, which is the one the function's event takes.
    let r = s.http().post(format!("{}/fn/default/who/a/b", s.url)).bearer_auth(&s.admin_key).header("x-forwarded-for", "10.9.8.7").send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["headers"]["x-forwarded-prefix"], "/fn/default/who");
    assert_eq!(v["headers"]["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(v["source_ip"], "127.0.0.1");

    // A host it claims (`--host`) reaches it the same way.
    let v: Value = client.get(format!("http://who.example.test:{p}/x")).bearer_auth(&s.admin_key).send().await.unwrap().json().await.unwrap();
    assert_eq!((v["path"].as_str(), v["headers"]["x-forwarded-host"].as_str()), (Some("/x"), Some(format!("who.example.test:{p}").as_str())));

    // A private function's host name without a key, or with another namespace's key, is a 404
    // like its /fn/ URL; unknown and malformed names are 404s too.
    s.ok(&["ns", "create", "other"]);
    let other_key = s.ok(&["key", "create", "--namespace", "other"]).lines().last().unwrap().trim().to_string();
    for key in [None, Some(other_key.as_str())] {
        let mut req = client.get(format!("http://{own}/"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let status = req.send().await.unwrap().status();
        assert!(status == 401 || status == 404, "{key:?}: {status}");
    }
    for host in ["nobody.default.fn.localhost", "who.fn.localhost"] {
        let r = client.get(format!("http://{host}:{p}/")).bearer_auth(&s.admin_key).send().await.unwrap();
        assert_eq!(r.status(), 404, "{host}");
    }

    // A host routes to one workload: another function cannot claim it.
    let err = s.fails(
        &["fn", "deploy", "thief", "--runtime", "python3", "--handler", "app.handler", "--code", _code.path().to_str().unwrap(), "--host", "who.example.test"],
        6,
    );
    assert!(err.contains("already routed"), "{err}");
    let err = s.fails(
        &["fn", "deploy", "bad", "--runtime", "python3", "--handler", "app.handler", "--code", _code.path().to_str().unwrap(), "--host", "Not_A_Host"],
        1,
    );
    assert!(err.contains("hosts"), "{err}");

    // `fn get` prints where it answers.
    let out = s.ok(&["fn", "get", "who"]);
    for url in [format!("http://127.0.0.1:{p}/fn/default/who/"), format!("http://{own}/"), format!("http://who.example.test:{p}/")] {
        assert!(out.contains(&format!("url: {url}")), "{url} missing from:\n{out}");
    }
}

#[tokio::test]
async fn a_fastapi_app_behind_mangum_redirects_on_its_own_host_url() {
    let code = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
        .arg(code.path())
        .args(["fastapi==0.115.*", "mangum==0.19.*"])
        .output()
        .expect("running python3 -m pip");
    assert!(
        out.status.success(),
        "installing FastAPI and Mangum with pip failed (network or PyPI unreachable?); this test needs them:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        code.path().join("app.py"),
        r#"
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from mangum import Mangum

app = FastAPI()

@app.get("/items/{item_id}")
def item(item_id: int, request: Request):
    return {"item": item_id, "url": str(request.url)}

@app.post("/items")
def create(request: Request):
    return RedirectResponse(request.url_for("item", item_id=1), status_code=303)

handler = Mangum(app, lifespan="off")
"#,
    )
    .unwrap();
    let s = Server::start();
    s.ok(&[
        "fn",
        "deploy",
        "shop",
        "--runtime",
        "python3",
        "--handler",
        "app.handler",
        "--code",
        code.path().to_str().unwrap(),
        "--public",
        "--timeout",
        "20s",
        "--memory",
        "256",
    ]);
    let host = format!("shop.default.fn.localhost:{}", port(&s));
    let client = resolving(&s, &["shop.default.fn.localhost"]);
    let r = client.post(format!("http://{host}/items")).send().await.unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("http://{host}/items/1"), "the redirect stays on the function's own URL");
    let r = client.get(&location).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["item"].as_i64(), v["url"].as_str()), (Some(1), Some(location.as_str())));
}

#[tokio::test]
async fn a_service_answers_on_its_own_host_name_and_sees_forwarded_headers() {
    let work = tempfile::tempdir().unwrap();
    let env = "#!/bin/busybox sh\necho Content-Type: text/plain\necho\necho \"path=$REQUEST_URI\"\n/bin/busybox env | /bin/busybox grep HTTP_X_FORWARDED\n";
    let image = common::oci::cgi_image(work.path(), "headers", "env", env);
    let s = Server::start();
    s.ok(&["image", "import", &image, "--name", "headers:1"]);
    s.ok(&["svc", "deploy", "hdr", "--image", "headers:1", "--public"]);
    let p = port(&s);
    let own = format!("hdr.default.svc.localhost:{p}");
    let client = resolving(&s, &["hdr.default.svc.localhost"]);

    let text = client.get(format!("http://{own}/cgi-bin/env?q=1")).header("x-forwarded-for", "10.1.1.1").send().await.unwrap().text().await.unwrap();
    assert!(text.contains("path=/cgi-bin/env?q=1"), "the whole path: {text}");
    assert!(text.contains(&format!("HTTP_X_FORWARDED_HOST={own}")), "{text}");
    assert!(text.contains("HTTP_X_FORWARDED_PROTO=http"), "{text}");
    assert!(text.contains("HTTP_X_FORWARDED_FOR=10.1.1.1, 127.0.0.1"), "{text}");
    assert!(!text.contains("HTTP_X_FORWARDED_PREFIX"), "{text}");

    let text = reqwest::get(format!("{}/svc/default/hdr/cgi-bin/env", s.url)).await.unwrap().text().await.unwrap();
    assert!(text.contains("HTTP_X_FORWARDED_PREFIX=/svc/default/hdr"), "{text}");
    assert!(text.contains(&format!("HTTP_X_FORWARDED_HOST=127.0.0.1:{p}")), "{text}");

    let out = s.ok(&["svc", "get", "hdr"]);
    assert!(out.contains(&format!("url: http://{own}/")), "{out}");
}
