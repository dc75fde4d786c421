//! The auth matrix: no key, wrong key, another namespace's key, a namespace key, the admin key.

mod common;

use common::{Server, error_code};

#[tokio::test]
async fn auth_matrix() {
    let s = Server::start();
    s.deploy("secret", "probe", &[]);
    s.ok(&["ns", "create", "team"]);
    s.ok(&["ns", "create", "other"]);
    let team_key = s.ok(&["key", "create", "--namespace", "team"]).lines().last().unwrap().trim().to_string();
    let other_key = s.ok(&["key", "create", "--namespace", "other"]).lines().last().unwrap().trim().to_string();
    assert!(team_key.starts_with("hk_"));

    // The team deploys its own function with its own key (CLI with --key).
    let code = common::guest("probe");
    let out = s.cli(&["--key", &team_key, "fn", "deploy", "tfn", "--code", code.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let c = s.http();
    let api = |path: &str| format!("{}{path}", s.url);

    // No key, wrong key.
    let (st, code, msg) = error_code(c.get(api("/v1/functions")).send().await.unwrap()).await;
    assert_eq!((st, code.as_str()), (401, "unauthorized"));
    assert!(msg.contains("Authorization: Bearer"), "{msg}");
    let (st, _, msg) = error_code(c.get(api("/v1/functions")).bearer_auth("hk_nope").send().await.unwrap()).await;
    assert_eq!(st, 401);
    assert!(msg.contains("invalid API key"));
    assert_eq!(c.get(api("/fn/default/secret/")).send().await.unwrap().status(), 401, "private function URL needs a key");
    assert_eq!(c.get(api("/fn/default/secret/")).bearer_auth("hk_nope").send().await.unwrap().status(), 401);
    assert_eq!(c.get(api("/fn/default/missing/")).send().await.unwrap().status(), 401, "anonymous callers learn nothing");
    assert_eq!(c.get(api("/metrics")).send().await.unwrap().status(), 401);
    assert_eq!(c.get(api("/healthz")).send().await.unwrap().status(), 200, "health needs no key");
    assert_eq!(c.get(api("/v1/openapi.json")).send().await.unwrap().status(), 200);

    // A namespace key sees only its namespace: others' resources are 404, not 403.
    let list: serde_json::Value = c.get(api("/v1/functions")).bearer_auth(&team_key).send().await.unwrap().json().await.unwrap();
    let names: Vec<_> = list["items"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["tfn"]);
    let (st, code, _) = error_code(c.get(api("/v1/functions/secret")).bearer_auth(&team_key).send().await.unwrap()).await;
    assert_eq!((st, code.as_str()), (404, "not_found"));
    assert_eq!(c.get(api("/v1/functions?namespace=default")).bearer_auth(&team_key).send().await.unwrap().status(), 404);
    assert_eq!(c.get(api("/fn/default/secret/")).bearer_auth(&team_key).send().await.unwrap().status(), 404);
    assert_eq!(c.delete(api("/v1/functions/secret?namespace=default")).bearer_auth(&team_key).send().await.unwrap().status(), 404);
    assert_eq!(c.get(api("/fn/team/tfn/echo")).bearer_auth(&team_key).send().await.unwrap().status(), 200);
    assert_eq!(c.get(api("/fn/team/tfn/echo")).bearer_auth(&other_key).send().await.unwrap().status(), 404);
    let invs: serde_json::Value = c.get(api("/v1/invocations")).bearer_auth(&other_key).send().await.unwrap().json().await.unwrap();
    assert!(invs["items"].as_array().unwrap().is_empty(), "another namespace's invocations are invisible");
    let team_inv: serde_json::Value = c.get(api("/v1/invocations")).bearer_auth(&team_key).send().await.unwrap().json().await.unwrap();
    let inv_id = team_inv["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(c.get(api(&format!("/v1/invocations/{inv_id}"))).bearer_auth(&other_key).send().await.unwrap().status(), 404);
    assert_eq!(c.get(api(&format!("/v1/invocations/{inv_id}"))).bearer_auth(&team_key).send().await.unwrap().status(), 200);

    // Namespace keys cannot manage namespaces, keys or metrics.
    assert_eq!(c.post(api("/v1/namespaces")).bearer_auth(&team_key).json(&serde_json::json!({"name":"x"})).send().await.unwrap().status(), 403);
    assert_eq!(c.get(api("/v1/keys")).bearer_auth(&team_key).send().await.unwrap().status(), 403);
    assert_eq!(c.get(api("/metrics")).bearer_auth(&team_key).send().await.unwrap().status(), 403);

    // The admin key sees every namespace.
    let f: serde_json::Value = c.get(api("/v1/functions/tfn?namespace=team")).bearer_auth(&s.admin_key).send().await.unwrap().json().await.unwrap();
    assert_eq!(f["namespace"], "team");
    assert_eq!(c.get(api("/fn/team/tfn/echo")).bearer_auth(&s.admin_key).send().await.unwrap().status(), 200);

    // A deleted key stops working at once; the CLI exits 5 on auth failures.
    let keys: serde_json::Value = serde_json::from_str(&s.ok(&["key", "ls", "-o", "json"])).unwrap();
    let other_id = keys["items"].as_array().unwrap().iter().find(|k| k["namespace"] == "other").unwrap()["id"].as_str().unwrap().to_string();
    s.ok(&["key", "rm", &other_id]);
    assert_eq!(c.get(api("/v1/functions")).bearer_auth(&other_key).send().await.unwrap().status(), 401);
    let err = s.fails(&["--key", &other_key, "fn", "ls"], 5);
    assert!(err.contains("invalid API key"), "{err}");

    // The function never sees the platform key.
    let r = c.get(api("/fn/default/secret/echo")).bearer_auth(&s.admin_key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-saw-authorization"], "no");

    // Admin key file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.dir.path().join("admin.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn openapi_document_describes_the_api() {
    let s = Server::start();
    let doc: serde_json::Value = reqwest::get(format!("{}/v1/openapi.json", s.url)).await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in
        ["/v1/functions", "/v1/functions/{name}", "/v1/functions/{name}/invoke", "/v1/invocations", "/v1/invocations/{id}", "/v1/namespaces", "/v1/keys"]
    {
        assert!(doc["paths"][path].is_object(), "missing {path}");
    }
    for schema in ["Function", "FunctionConfig", "Invocation", "ErrorBody"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "missing schema {schema}");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}
