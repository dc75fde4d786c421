//! Events end to end through the real binary: asynchronous invocations (accepted means
//! persisted, retries with backoff, the dead-letter list, the on_failure function, idempotency
//! keys, bad input, `kill -9` with queued and running events), cron triggers (a fast schedule,
//! times missed while down caught up) and topics delivering CloudEvents to a
//! function and a service. Uses Python handlers and a busybox httpd image (root, runc, python3,
//! nftables and busybox-static, installed by scripts/test.sh).

mod common;

use std::time::{Duration, Instant};

use common::{Server, error_code};
use serde_json::{Value, json};

const APP: &str = r#"
import json, time

def handler(event, context):
    print("event", json.dumps(event))
    if event.get("fail"):
        raise ValueError("asked to fail")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"ok": event}
"#;

fn deploy(s: &Server, name: &str, flags: &[&str]) -> tempfile::TempDir {
    common::python_fn(s, name, APP, "handler", flags)
}

fn post_async(s: &Server, name: &str) -> reqwest::RequestBuilder {
    s.http().post(format!("{}/v1/functions/{name}/invoke?async=true", s.url)).bearer_auth(&s.admin_key)
}

async fn get_async(s: &Server, id: &str) -> Value {
    s.get(&format!("/v1/async-invocations/{id}")).send().await.unwrap().json().await.unwrap()
}

/// Polls an asynchronous invocation until it is in one of `states`.
async fn wait_for(s: &Server, id: &str, states: &[&str], timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let v = get_async(s, id).await;
        if states.iter().any(|st| v["state"] == *st) {
            return v;
        }
        assert!(Instant::now() < deadline, "{id} did not reach {states:?} in {timeout:?}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn async_invocations_retry_then_go_to_the_dead_letter_list_and_on_failure() {
    let s = Server::start();
    let _sink = deploy(&s, "sink", &[]);
    let _flaky = deploy(&s, "flaky", &["--retries", "1", "--retry-delay", "200ms", "--on-failure", "sink"]);

    // Accepted with an id; runs once; its attempt is an invocation record with trigger async.
    let id = s.ok(&["invoke", "flaky", "--async", "-d", r#"{"n": 1}"#]).trim().to_string();
    let v = wait_for(&s, &id, &["succeeded"], Duration::from_secs(30)).await;
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["attempts"][0]["outcome"], "ok");
    let record: Value = s.get(&format!("/v1/invocations/{}", v["attempts"][0]["invocation_id"].as_str().unwrap())).send().await.unwrap().json().await.unwrap();
    assert_eq!(record["trigger"], "async");
    assert!(record["logs"].as_str().unwrap().contains(r#"event {"n": 1}"#), "{record}");

    // A failing event: tried 1 + 1 times with backoff, then failed, kept as a dead letter and
    // handed to `sink` as a Lambda destination record.
    let r = s
        .http()
        .post(format!("{}/v1/functions/flaky/invoke", s.url))
        .bearer_auth(&s.admin_key)
        .header("x-hangar-invocation-type", "Event")
        .json(&json!({"fail": true, "order": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.unwrap();
    let failing = accepted["id"].as_str().unwrap().to_string();
    assert_eq!(accepted["state"], "queued");
    let v = wait_for(&s, &failing, &["failed"], Duration::from_secs(30)).await;
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{v}");
    assert!(attempts.iter().all(|a| a["outcome"] == "error" && a["status"] == 502), "{v}");
    let gap = attempts[1]["started_ms"].as_i64().unwrap() - attempts[0]["started_ms"].as_i64().unwrap();
    assert!(gap >= 200, "the retry waited the backoff: {gap} ms");
    // Both attempts are one Lambda request: the handler saw the event's id as its request id.
    for a in attempts {
        let record: Value = s.get(&format!("/v1/invocations/{}", a["invocation_id"].as_str().unwrap())).send().await.unwrap().json().await.unwrap();
        assert!(record["logs"].as_str().unwrap().contains(&format!("START RequestId: {failing}")), "{record}");
    }
    assert!(v["error"].as_str().unwrap().contains("ValueError: asked to fail"), "{v}");
    let dead: Value = s.get("/v1/async-invocations?target=flaky&state=failed").send().await.unwrap().json().await.unwrap();
    assert_eq!(dead["items"].as_array().unwrap().len(), 1);
    assert_eq!(dead["items"][0]["id"], failing.as_str());
    let listed = s.ok(&["async", "ls", "flaky", "--state", "failed"]);
    assert!(listed.contains(&failing), "{listed}");
    let shown = s.ok(&["async", "get", &failing]);
    assert!(shown.contains("asked to fail") && shown.contains("sent to on_failure"), "{shown}");

    let handed = v["destination_id"].as_str().expect("handed to on_failure").to_string();
    let d = wait_for(&s, &handed, &["succeeded"], Duration::from_secs(30)).await;
    assert_eq!((d["kind"].as_str(), d["target"].as_str()), (Some("function"), Some("sink")));
    let logs: Value = s.get(&format!("/v1/invocations/{}", d["attempts"][0]["invocation_id"].as_str().unwrap())).send().await.unwrap().json().await.unwrap();
    let logs = logs["logs"].as_str().unwrap();
    assert!(logs.contains("RetriesExhausted") && logs.contains(&failing) && logs.contains(r#""order": 7"#), "{logs}");

    // The same idempotency key twice: one event, one run.
    let first: Value = post_async(&s, "sink").header("idempotency-key", "order-42").json(&json!({"k": 1})).send().await.unwrap().json().await.unwrap();
    let again: Value = post_async(&s, "sink").header("idempotency-key", "order-42").json(&json!({"k": 1})).send().await.unwrap().json().await.unwrap();
    assert_eq!(first["duplicate"], false);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["id"], first["id"]);
    let once = wait_for(&s, first["id"].as_str().unwrap(), &["succeeded"], Duration::from_secs(30)).await;
    assert_eq!(once["attempts"].as_array().unwrap().len(), 1);
    let out = s.ok(&["invoke", "sink", "--async", "--idempotency-key", "order-42", "-d", "{}"]);
    assert!(out.contains(first["id"].as_str().unwrap()) && out.contains("already queued"), "{out}");
}

#[tokio::test]
async fn bad_async_requests_and_policies_are_refused() {
    let s = Server::start();
    let _f = deploy(&s, "f", &[]);
    let url = format!("{}/v1/functions/f/invoke", s.url);
    let http = s.http();
    let r = http.post(format!("{url}?async=maybe")).bearer_auth(&s.admin_key).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = http.post(&url).bearer_auth(&s.admin_key).header("x-hangar-invocation-type", "Later").body("{}").send().await.unwrap();
    let (status, code, msg) = error_code(r).await;
    assert_eq!((status, code.as_str()), (400, "invalid_header"), "{msg}");
    let r = post_async(&s, "f").body("not json").send().await.unwrap();
    assert_eq!(error_code(r).await.1, "invalid_payload");
    let r = post_async(&s, "f").body(vec![b' '; 1024 * 1024 + 1]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let r = post_async(&s, "f").header("idempotency-key", "has space").body("{}").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = post_async(&s, "nope").body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = s.get("/v1/async-invocations/0190aaaa-0000-7000-8000-000000000000").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = s.get("/v1/async-invocations?state=lost").send().await.unwrap();
    assert_eq!(r.status(), 400);
    // Nothing was queued by any of it.
    let all: Value = s.get("/v1/async-invocations").send().await.unwrap().json().await.unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 0, "{all}");

    // Policies: unknown target, a cycle, out-of-range numbers; the function is unchanged.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.py"), APP).unwrap();
    let code = dir.path().to_str().unwrap();
    let base = ["fn", "deploy", "f", "--runtime", "python3", "--handler", "app.handler", "--code", code];
    let err = s.fails(&[&base[..], &["--on-failure", "ghost"]].concat(), 6);
    assert!(err.contains("`ghost` does not exist"), "{err}");
    let err = s.fails(&[&base[..], &["--on-failure", "f"]].concat(), 6);
    assert!(err.contains("cycle"), "{err}");
    let _g = deploy(&s, "g", &["--on-failure", "f"]);
    let err = s.fails(&[&base[..], &["--on-failure", "g"]].concat(), 6);
    assert!(err.contains("f → g → f"), "{err}");
    let err = s.fails(&[&base[..], &["--retries", "3"]].concat(), 1);
    assert!(err.contains("max_retries"), "{err}");
    let r = s
        .http()
        .put(format!("{}/v1/functions/f", s.url))
        .bearer_auth(&s.admin_key)
        .json(&json!({"runtime": "python3", "handler": "app.handler", "async": {"max_event_age_s": 10}}))
        .send()
        .await
        .unwrap();
    let (status, _, msg) = error_code(r).await;
    assert_eq!(status, 400);
    assert!(msg.contains("max_event_age_s"), "{msg}");
    let f: Value = s.get("/v1/functions/f").send().await.unwrap().json().await.unwrap();
    assert_eq!(f["revision"], 1);
    assert!(f["config"].get("async").is_none(), "{f}");
}

#[tokio::test]
async fn accepted_events_survive_kill_9_and_keyed_ones_run_once() {
    let mut s = Server::start();
    let _slow = deploy(&s, "slow", &["--max-instances", "2", "--retry-delay", "100ms"]);
    let mut ids = Vec::new();
    for i in 0..8 {
        let r: Value =
            post_async(&s, "slow").header("idempotency-key", format!("job-{i}")).json(&json!({"sleep": 1, "i": i})).send().await.unwrap().json().await.unwrap();
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    // Two run (max_instances), the rest wait; then the server dies without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill();
    s.restart_after_stop();

    for id in &ids {
        let v = wait_for(&s, id, &["succeeded"], Duration::from_secs(60)).await;
        assert_eq!(v["attempts"].as_array().unwrap().last().unwrap()["outcome"], "ok", "{v}");
    }
    // The same keys again hold the same, finished events: nothing runs twice.
    for (i, id) in ids.iter().enumerate() {
        let r: Value =
            post_async(&s, "slow").header("idempotency-key", format!("job-{i}")).json(&json!({"sleep": 1, "i": i})).send().await.unwrap().json().await.unwrap();
        assert_eq!((r["id"].as_str().unwrap(), r["duplicate"].as_bool(), r["state"].as_str()), (id.as_str(), Some(true), Some("succeeded")));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = s.invocations("slow").await.into_iter().filter(|r| r["trigger"] == "async" && r["outcome"] == "ok").count();
    assert_eq!(ok, ids.len(), "every event completed exactly once");
}

/// Events whose target is `target`, newest first.
async fn events_for(s: &Server, target: &str) -> Vec<Value> {
    let v: Value = s.get(&format!("/v1/async-invocations?target={target}&limit=1000")).send().await.unwrap().json().await.unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn cron_fires_on_schedule_and_times_missed_while_down_each_fire_once() {
    let mut s = Server::start();
    let _tick = deploy(&s, "tick", &[]);
    let _late = deploy(&s, "late", &[]);
    let out = s.ok(&["triggers", "add", "every-second", "--cron", "* * * * * *", "--function", "tick", "--data", r#"{"n": 1}"#]);
    assert!(out.contains("next at"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let done: Vec<Value> = events_for(&s, "tick").await.into_iter().filter(|e| e["state"] == "succeeded").collect();
        if done.len() >= 3 {
            break done;
        }
        assert!(Instant::now() < deadline, "the schedule did not fire 3 times: {done:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Each is a CloudEvent with the trigger's data, one per scheduled second.
    let rec: Value =
        s.get(&format!("/v1/invocations/{}", done[0]["attempts"][0]["invocation_id"].as_str().unwrap())).send().await.unwrap().json().await.unwrap();
    let logs = rec["logs"].as_str().unwrap();
    assert!(logs.contains(r#""specversion": "1.0""#) && logs.contains(r#""type": "dev.hangar.cron""#) && logs.contains(r#""data": {"n": 1}"#), "{logs}");
    let mut keys: Vec<&str> = done.iter().map(|e| e["idempotency_key"].as_str().unwrap()).collect();
    keys.dedup();
    assert_eq!(keys.len(), done.len(), "one event per scheduled time: {keys:?}");
    let listed = s.ok(&["triggers", "ls"]);
    assert!(listed.contains("every-second") && listed.contains("cron * * * * * *") && listed.contains("function tick"), "{listed}");
    s.ok(&["triggers", "rm", "every-second"]);

    // A schedule whose three times all fall while the server is down (briefly): on restart
    // each fires once, late, and then not again until its next time (a minute later).
    let now = unix_ms();
    let secs: Vec<String> = (4..7).map(|d| (((now / 1000) + d) % 60).to_string()).collect();
    let cron = format!("{} * * * * *", secs.join(","));
    s.ok(&["triggers", "add", "catch-up", "--cron", &cron, "--function", "late"]);
    s.kill();
    let back = now + 8_000;
    tokio::time::sleep(Duration::from_millis(u64::try_from(back - unix_ms()).unwrap_or(0))).await;
    s.restart_after_stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fired = events_for(&s, "late").await;
    let mut times: Vec<i64> = fired.iter().map(|e| e["idempotency_key"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap()).collect();
    times.sort();
    let seconds: Vec<String> = times.iter().map(|at| ((at / 1000) % 60).to_string()).collect();
    assert_eq!(seconds, secs, "each missed time fired once: {fired:?}");
    for e in &fired {
        wait_for(&s, e["id"].as_str().unwrap(), &["succeeded"], Duration::from_secs(30)).await;
    }

    // Bad triggers are refused and change nothing.
    let put = |body: Value| s.http().put(format!("{}/v1/triggers/bad", s.url)).bearer_auth(&s.admin_key).json(&body).send();
    for (body, needle) in [
        (json!({"cron": "61 * * * *", "function": "tick"}), "cron"),
        (json!({"cron": "* * *", "function": "tick"}), "fields"),
        (json!({"cron": "* * * * *", "timezone": "Mars/Base", "function": "tick"}), "IANA"),
        (json!({"cron": "* * * * *", "function": "ghost"}), "ghost"),
        (json!({"topic": "t", "service": "ghost"}), "ghost"),
        (json!({"cron": "* * * * *", "topic": "t", "function": "tick"}), "exactly one"),
        (json!({"topic": "Bad Topic", "function": "tick"}), "topic"),
    ] {
        let (status, _, msg) = error_code(put(body.clone()).await.unwrap()).await;
        assert_eq!(status, 400, "{body}: {msg}");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let list: Value = s.get("/v1/triggers").send().await.unwrap().json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn topics_deliver_cloudevents_to_functions_and_services() {
    let s = Server::start();
    let _f = deploy(&s, "audit", &[]);
    let dir = tempfile::tempdir().unwrap();
    s.ok(&["image", "import", &common::oci::sink_image(dir.path()), "--name", "sink:1"]);
    s.ok(&["svc", "deploy", "inbox", "--image", "sink:1", "--port", "8080"]);
    s.ok(&["triggers", "add", "to-audit", "--topic", "orders.created", "--function", "audit"]);
    s.ok(&["triggers", "add", "to-inbox", "--topic", "orders.created", "--service", "inbox", "--path", "/cgi-bin/events"]);

    let out = s.ok(&["events", "publish", "orders.created", r#"{"order": 7}"#, "--type", "com.example.order", "--id", "evt-7"]);
    assert!(out.contains("delivered to 2 subscription(s)"), "{out}");
    let events = [events_for(&s, "audit").await, events_for(&s, "inbox").await];
    for e in &events {
        assert_eq!(e.len(), 1, "{e:?}");
        wait_for(&s, e[0]["id"].as_str().unwrap(), &["succeeded"], Duration::from_secs(30)).await;
    }
    // The function got the CloudEvent as its event.
    let done = get_async(&s, events[0][0]["id"].as_str().unwrap()).await;
    let rec: Value = s.get(&format!("/v1/invocations/{}", done["attempts"][0]["invocation_id"].as_str().unwrap())).send().await.unwrap().json().await.unwrap();
    let logs = rec["logs"].as_str().unwrap();
    assert!(logs.contains(r#""type": "com.example.order""#) && logs.contains(r#""id": "evt-7""#) && logs.contains(r#""data": {"order": 7}"#), "{logs}");
    // The service got it POSTed at its path.
    let kept = s.get("/svc/default/inbox/cgi-bin/events").send().await.unwrap().text().await.unwrap();
    let ev: Value = serde_json::from_str(kept.lines().next().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {kept}"));
    assert_eq!(
        (ev["specversion"].as_str(), ev["type"].as_str(), ev["source"].as_str()),
        (Some("1.0"), Some("com.example.order"), Some("/hangar/default/topics/orders.created"))
    );
    assert_eq!(ev["data"]["order"], 7);

    // The same ce-id again is delivered once; unknown topics and bad ids are refused.
    s.ok(&["events", "publish", "orders.created", r#"{"order": 7}"#, "--id", "evt-7"]);
    assert_eq!(events_for(&s, "audit").await.len(), 1);
    let r = s.http().post(format!("{}/v1/topics/nobody-listens/events", s.url)).bearer_auth(&s.admin_key).body("{}").send().await.unwrap();
    let (status, _, msg) = error_code(r).await;
    assert_eq!(status, 404);
    assert!(msg.contains("hangar triggers add"), "{msg}");
    let r = s
        .http()
        .post(format!("{}/v1/topics/orders.created/events", s.url))
        .bearer_auth(&s.admin_key)
        .header("ce-id", "has space")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Text data stays text.
    s.ok(&["events", "publish", "orders.created", "plain words"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let kept = s.get("/svc/default/inbox/cgi-bin/events").send().await.unwrap().text().await.unwrap();
        if kept.contains(r#""data":"plain words""#) {
            break;
        }
        assert!(Instant::now() < deadline, "text event not delivered: {kept}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const STEPS: &str = r#"
def inc(event, context):
    return {"v": event["v"] + 1}

def double(event, context):
    return {"v": event["v"] * 2}

def boom(event, context):
    raise RuntimeError("step exploded")
"#;

#[tokio::test]
async fn sequences_chain_functions_as_one_invocation_with_children() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("steps.py"), STEPS).unwrap();
    let code = dir.path().to_str().unwrap();
    for h in ["inc", "double", "boom"] {
        s.ok(&["fn", "deploy", h, "--runtime", "python3", "--handler", &format!("steps.{h}"), "--code", code]);
    }
    s.ok(&["fn", "deploy", "pipe", "--sequence", "inc,double,inc"]);

    let r = s.http().post(format!("{}/v1/functions/pipe/invoke", s.url)).bearer_auth(&s.admin_key).json(&json!({"v": 1})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-hangar-invocation-id"].to_str().unwrap().to_string();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"v": 5}), "(1 + 1) * 2 + 1");
    let rec: Value = s.get(&format!("/v1/invocations/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!((rec["function"].as_str(), rec["outcome"].as_str(), rec["billed_ms"].as_u64()), (Some("pipe"), Some("ok"), Some(0)), "{rec}");
    let children = rec["children"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{rec}");
    let mut names = Vec::new();
    for c in children {
        let child: Value = s.get(&format!("/v1/invocations/{}", c.as_str().unwrap())).send().await.unwrap().json().await.unwrap();
        assert_eq!(child["parent_id"], id.as_str());
        names.push(child["function"].as_str().unwrap().to_string());
    }
    assert_eq!(names, ["inc", "double", "inc"]);

    // Asynchronously too, through the queue.
    let accepted: Value = post_async(&s, "pipe").json(&json!({"v": 10})).send().await.unwrap().json().await.unwrap();
    wait_for(&s, accepted["id"].as_str().unwrap(), &["succeeded"], Duration::from_secs(30)).await;

    // A failing step ends the sequence with its answer.
    s.ok(&["fn", "deploy", "broken", "--sequence", "inc,boom,double"]);
    let r = s.http().post(format!("{}/v1/functions/broken/invoke", s.url)).bearer_auth(&s.admin_key).json(&json!({"v": 1})).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let id = r.headers()["x-hangar-invocation-id"].to_str().unwrap().to_string();
    assert_eq!(r.json::<Value>().await.unwrap()["errorMessage"], "step exploded");
    let rec: Value = s.get(&format!("/v1/invocations/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(rec["outcome"], "error");
    assert!(rec["error"].as_str().unwrap().contains("step 2 (`boom`)"), "{rec}");
    assert_eq!(rec["children"].as_array().unwrap().len(), 2);

    // Unknown steps and cycles are refused at deploy, and change nothing.
    let err = s.fails(&["fn", "deploy", "bad", "--sequence", "inc,ghost"], 6);
    assert!(err.contains("`ghost` does not exist"), "{err}");
    let err = s.fails(&["fn", "deploy", "loop", "--sequence", "loop"], 6);
    assert!(err.contains("run itself"), "{err}");
    s.ok(&["fn", "deploy", "outer", "--sequence", "pipe,inc"]);
    let err = s.fails(&["fn", "deploy", "pipe", "--sequence", "inc,outer"], 6);
    assert!(err.contains("pipe → outer → pipe"), "{err}");
    let r = s
        .http()
        .put(format!("{}/v1/functions/inc", s.url))
        .bearer_auth(&s.admin_key)
        .json(&json!({"runtime": "python3", "handler": "steps.inc", "steps": ["double"]}))
        .send()
        .await
        .unwrap();
    let (status, _, msg) = error_code(r).await;
    assert_eq!(status, 400);
    assert!(msg.contains("only sequences have steps"), "{msg}");
    let pipe: Value = s.get("/v1/functions/pipe").send().await.unwrap().json().await.unwrap();
    assert_eq!((pipe["revision"].as_u64(), pipe["config"]["steps"].clone()), (Some(1), json!(["inc", "double", "inc"])));
}

#[tokio::test]
async fn wasm_functions_run_from_the_queue_in_sequences_and_on_topics() {
    let s = Server::start();
    s.deploy("hello", "hello", &[]);
    let accepted: Value = post_async(&s, "hello").body("Ada").send().await.unwrap().json().await.unwrap();
    let done = wait_for(&s, accepted["id"].as_str().unwrap(), &["succeeded"], Duration::from_secs(30)).await;
    assert_eq!(done["attempts"][0]["status"], 200, "{done}");

    s.ok(&["fn", "deploy", "twice", "--sequence", "hello,hello"]);
    let r = s.http().post(format!("{}/v1/functions/twice/invoke", s.url)).bearer_auth(&s.admin_key).body("Ada").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("Hello, Hello, Ada!"), "{text}");

    s.ok(&["triggers", "add", "greet", "--topic", "names", "--function", "hello"]);
    let out = s.ok(&["events", "publish", "names", "Bob"]);
    assert!(out.contains("delivered to 1"), "{out}");
    let events = events_for(&s, "hello").await;
    let newest = events[0]["id"].as_str().unwrap().to_string();
    wait_for(&s, &newest, &["succeeded"], Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_full_queue_refuses_new_events_with_429_until_some_finish() {
    let s = Server::start_with(&["--async-concurrency", "1", "--async-queue-events", "3", "--async-queue-mb", "1"]);
    let _slow = deploy(&s, "slow", &[]);
    // One event runs (for 1.5 s) and two wait: the queue holds its 3.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = post_async(&s, "slow").json(&json!({"sleep": 1.5})).send().await.unwrap();
        assert_eq!(r.status(), 202);
        ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    let r = post_async(&s, "slow").json(&json!({"sleep": 0})).send().await.unwrap();
    assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()), Some("1".into()));
    let (status, code, message) = error_code(r).await;
    assert_eq!((status, code.as_str()), (429, "queue_full"), "{message}");
    assert!(message.contains("3 unfinished events") && message.contains("at most 3 events"), "{message}");
    // Nothing of the refused event was kept; the accepted ones all finish, then there is room.
    let listed: Value = s.get("/v1/async-invocations?target=slow").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(3), "{listed}");
    for id in &ids {
        wait_for(&s, id, &["succeeded"], Duration::from_secs(30)).await;
    }
    let r = post_async(&s, "slow").json(&json!({"sleep": 0})).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    wait_for(&s, &id, &["succeeded"], Duration::from_secs(30)).await;

    // The payload bytes are bounded too: 1 MiB here, so of two 600 kB events one is refused.
    let big = json!({"sleep": 1.0, "pad": "x".repeat(600_000)});
    assert_eq!(post_async(&s, "slow").json(&big).send().await.unwrap().status(), 202);
    let (status, code, message) = error_code(post_async(&s, "slow").json(&big).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (429, "queue_full"), "{message}");
}
