//! A cluster on one machine: nodes of the real binary sharing a real PostgreSQL (the store) and
//! a real nats-server with JetStream (the bus), each node with its own data dir and port. A
//! deploy through one node runs through every other; nodes list each other and find a killed
//! one lost; its queued events run elsewhere; schedules fire once per time across a lease
//! hand-over; the store or bus going away refuses changes (503) while warm routes keep
//! serving, and everything recovers by itself. PostgreSQL and nats-server come from Debian
//! (scripts/test.sh installs them); each test starts its own on free loopback ports.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Server, eventually, guest};
use serde_json::{Value, json};

struct Cluster {
    pg: hangar_testkit::Postgres,
    nats: hangar_testkit::Nats,
    flags: Vec<String>,
}

impl Cluster {
    fn new() -> Cluster {
        let pg = hangar_testkit::Postgres::start();
        let nats = hangar_testkit::Nats::start();
        let flags = vec![
            "--store".into(),
            pg.fresh_database(),
            "--bus".into(),
            nats.url(),
            "--heartbeat".into(),
            "300ms".into(),
            "--cluster-secret".into(),
            "test-cluster-secret-0123456789".into(),
        ];
        Cluster { pg, nats, flags }
    }

    fn flags(&self) -> Vec<&str> {
        self.flags.iter().map(String::as_str).collect()
    }

    /// The first node: it makes the default namespace and the admin key.
    fn first(&self) -> Server {
        Server::start_with(&self.flags())
    }

    fn join(&self, first: &Server) -> Server {
        Server::join(&self.flags(), &first.admin_key)
    }

    fn join_as(&self, first: &Server, role: &str) -> Server {
        let mut flags = self.flags();
        flags.extend(["--role", role]);
        Server::join(&flags, &first.admin_key)
    }
}

async fn nodes(s: &Server) -> Vec<(String, String, Value)> {
    let v: Value = s.get("/v1/nodes").send().await.unwrap().json().await.unwrap();
    v["nodes"].as_array().unwrap().iter().map(|n| (n["id"].as_str().unwrap().to_string(), n["state"].as_str().unwrap().to_string(), n.clone())).collect()
}

/// Waits until `seen_by` lists node `id` in `state`.
async fn node_in_state(seen_by: &Server, id: &str, state: &str, within: Duration) {
    eventually(&format!("node {id} to be {state}"), within, || async {
        let n = nodes(seen_by).await;
        if n.iter().any(|(i, s, _)| i == id && s == state) { Ok(()) } else { Err(format!("{n:?}")) }
    })
    .await;
}

/// An asynchronous invocation of `function` through `s` with the admin key, ready to send.
fn send_async(s: &Server, function: &str, body: String) -> reqwest::RequestBuilder {
    s.http().post(format!("{}/v1/functions/{function}/invoke?async=true", s.url)).bearer_auth(&s.admin_key).body(body)
}

/// Waits until `s` lists `n` succeeded asynchronous invocations of `target`.
async fn all_succeeded(s: &Server, target: &str, n: usize, within: Duration) {
    eventually(&format!("{n} events of {target} to succeed"), within, || async {
        let v: Value = s.get(&format!("/v1/async-invocations?target={target}&state=succeeded&limit=1000")).send().await.unwrap().json().await.unwrap();
        let done = v["items"].as_array().unwrap().len();
        if done == n { Ok(()) } else { Err(format!("{done} succeeded")) }
    })
    .await;
}

async fn call(s: &Server, path: &str, body: &str) -> (u16, String) {
    let r = s.http().post(format!("{}{path}", s.url)).body(body.to_string()).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap().trim_end().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_deploys_keys_records_and_see_each_other() {
    let cluster = Cluster::new();
    let a = cluster.first();
    let b = cluster.join(&a);
    let c = cluster.join(&a);

    // Every node lists all three, ready, with where it is reached and what it offers.
    let listed = eventually("three ready nodes", Duration::from_secs(10), || async {
        let n = nodes(&c).await;
        if n.len() == 3 && n.iter().all(|(_, state, _)| state == "ready") { Ok(n) } else { Err(format!("{n:?}")) }
    })
    .await;
    for (_, _, n) in &listed {
        let address = n["address"].as_str().unwrap();
        assert!([&a, &b, &c].iter().any(|s| s.url.ends_with(address)), "{n}");
        assert!(n["capacity"]["cpu_milli"].as_u64().unwrap() >= 1000 && n["capacity"]["memory_mb"].as_u64().unwrap() > 0, "{n}");
        assert_eq!(n["role"], "all");
    }
    let table = a.ok(&["nodes"]);
    assert_eq!(table.matches("ready").count(), 3, "{table}");

    // Deployed through A, the function answers through B and C alike (each node prepares the
    // code it never received, from the store).
    a.ok(&["fn", "deploy", "hello", "--code", guest("hello").to_str().unwrap(), "--env", "GREETING=Hi", "--public"]);
    for s in [&b, &c] {
        let answer = eventually("the deploy to reach another node", Duration::from_secs(5), || async {
            let (status, body) = call(s, "/fn/default/hello/", "Ada").await;
            if status == 200 { Ok(body) } else { Err(format!("{status} {body}")) }
        })
        .await;
        assert_eq!(answer, "Hi, Ada!");
    }
    // A change through C reaches A; a namespace key made through B works on A and C.
    c.ok(&["fn", "deploy", "hello", "--code", guest("hello").to_str().unwrap(), "--env", "GREETING=Hello", "--public"]);
    eventually("revision 2 on A", Duration::from_secs(5), || async {
        let (status, body) = call(&a, "/fn/default/hello/", "Ada").await;
        if body == "Hello, Ada!" { Ok(()) } else { Err(format!("{status} {body}")) }
    })
    .await;
    let created: Value = b
        .http()
        .post(format!("{}/v1/keys", b.url))
        .bearer_auth(&b.admin_key)
        .json(&json!({"namespace": "default"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["secret"].as_str().unwrap().to_string();
    for s in [&a, &c] {
        eventually("the key on every node", Duration::from_secs(5), || async {
            let r = s.http().get(format!("{}/v1/functions", s.url)).bearer_auth(&secret).send().await.unwrap();
            if r.status() == 200 { Ok(()) } else { Err(r.status().to_string()) }
        })
        .await;
    }

    // Records from every node land in one place.
    eventually("the records of B's and C's calls, read through A", Duration::from_secs(10), || async {
        let n = a.invocations("hello").await.len();
        if n >= 3 { Ok(()) } else { Err(format!("{n} records")) }
    })
    .await;

    // `hangar logs -f` through A follows the calls whichever node runs them.
    let mut follow = Command::new(BIN)
        .arg("--data-dir")
        .arg(a.dir.path())
        .args(["-o", "json", "logs", "-f", "hello", "--limit", "1"])
        .env_remove("HANGAR_URL")
        .env_remove("HANGAR_KEY")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let followed = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let reader = {
        let (out, followed) = (follow.stdout.take().unwrap(), followed.clone());
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    followed.lock().unwrap().insert(v["id"].as_str().unwrap_or_default().to_string());
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before: std::collections::HashSet<String> = a.invocations("hello").await.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    for i in 0..20 {
        let s = [&b, &c][i % 2];
        assert_eq!(call(s, "/fn/default/hello/", &format!("P{i}")).await.0, 200);
    }
    eventually("every call in the followed log", Duration::from_secs(15), || async {
        let all: Vec<String> = a.invocations("hello").await.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
        let new: Vec<&String> = all.iter().filter(|id| !before.contains(*id)).collect();
        let seen = followed.lock().unwrap().clone();
        let missing: Vec<&&String> = new.iter().filter(|id| !seen.contains(**id)).collect();
        if new.len() == 20 && missing.is_empty() { Ok(()) } else { Err(format!("{} new, missing {missing:?}", new.len())) }
    })
    .await;
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = reader.join();

    // Usage is exactly the sum of the records, whichever node ran them; billed time too (read
    // until no record is still on its way to the store).
    let records = eventually("usage to equal the records", Duration::from_secs(10), || async {
        let records = a.invocations("hello").await;
        let usage: Value = c.get("/v1/usage?kind=function&name=hello").send().await.unwrap().json().await.unwrap();
        let rows = usage["items"].as_array().unwrap();
        let requests: u64 = rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
        let billed: u64 = rows.iter().map(|r| r["billed_ms"].as_u64().unwrap()).sum();
        let recorded: u64 = records.iter().map(|r| r["billed_ms"].as_u64().unwrap()).sum();
        if requests as usize == records.len() && billed == recorded { Ok(records) } else { Err(format!("{} records, {usage}", records.len())) }
    })
    .await;
    // One log of the function, read through any node.
    let logs = b.ok(&["invocations", "hello"]);
    assert_eq!(logs.matches(" ok ").count(), records.len(), "{logs}");

    // Draining is reported; a node killed without warning is found lost by the others.
    let b_id =
        listed.iter().map(|(id, _, n)| (id, n["address"].as_str().unwrap().to_string())).find(|(_, addr)| b.url.ends_with(addr.as_str())).unwrap().0.clone();
    let mut b = b;
    b.kill();
    let start = Instant::now();
    node_in_state(&a, &b_id, "lost", Duration::from_secs(10)).await;
    assert!(start.elapsed() >= Duration::from_millis(500), "lost before it missed its heartbeats");
    assert_eq!(call(&c, "/fn/default/hello/", "Ada").await, (200, "Hello, Ada!".to_string()), "the others keep serving");
    // Back with its data dir (its id): ready again.
    b.restart_after_stop();
    node_in_state(&a, &b_id, "ready", Duration::from_secs(10)).await;
    assert_eq!(call(&b, "/fn/default/hello/", "Ada").await.0, 200);
    let drained = a.http().post(format!("{}/v1/nodes/{b_id}/drain", a.url)).bearer_auth(&a.admin_key).send().await.unwrap();
    assert_eq!(drained.status(), 202);
    node_in_state(&c, &b_id, "draining", Duration::from_secs(5)).await;
    let missing = a.http().post(format!("{}/v1/nodes/nobody/drain", a.url)).bearer_auth(&a.admin_key).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let forbidden = a.http().get(format!("{}/v1/nodes", a.url)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(forbidden.status(), 403, "nodes are for admins");
    drop(cluster);
}

/// Calls of `function` this node ran, by its metrics.
async fn ran_here(s: &Server, function: &str) -> f64 {
    let text = s.get("/metrics").send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("hangar_invocations_total{") && l.contains(&format!("function=\"{function}\"")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_places_calls_on_workers_and_moves_off_a_dead_one() {
    let cluster = Cluster::new();
    let first = cluster.first();
    let gateway = cluster.join_as(&first, "gateway");
    let mut worker = cluster.join_as(&first, "worker");
    first.ok(&["fn", "deploy", "hello", "--code", guest("hello").to_str().unwrap(), "--public"]);
    eventually("the gateway to see both workers", Duration::from_secs(10), || async {
        let n = nodes(&gateway).await;
        let roles: Vec<String> = n.iter().map(|(_, _, v)| v["role"].as_str().unwrap().to_string()).collect();
        if n.len() == 3 && roles.contains(&"gateway".to_string()) { Ok(()) } else { Err(format!("{n:?}")) }
    })
    .await;
    // Every call through the gateway answers, and runs on a worker, never on the gateway.
    for i in 0..40 {
        let (status, body) = call(&gateway, "/fn/default/hello/", &format!("n{i}")).await;
        assert_eq!((status, body), (200, format!("Hello, n{i}!")));
    }
    let api: Value = gateway
        .http()
        .post(format!("{}/v1/functions/hello/invoke", gateway.url))
        .bearer_auth(&gateway.admin_key)
        .body("api")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| json!(t))
        .unwrap();
    assert_eq!(api, json!("Hello, api!\n"));
    assert_eq!(ran_here(&gateway, "hello").await, 0.0, "the gateway ran nothing");
    let (on_first, on_worker) = (ran_here(&first, "hello").await, ran_here(&worker, "hello").await);
    assert_eq!(on_first + on_worker, 41.0);
    // The records of calls placed elsewhere are in the one store.
    eventually("41 records", Duration::from_secs(10), || async {
        let n = gateway.invocations("hello").await.len();
        if n == 41 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;

    // Asynchronous calls accepted by the gateway run on the workers too.
    for i in 0..10 {
        let r = send_async(&gateway, "hello", format!("a{i}")).send().await.unwrap();
        assert_eq!(r.status(), 202);
    }
    all_succeeded(&gateway, "hello", 10, Duration::from_secs(20)).await;
    assert_eq!(ran_here(&gateway, "hello").await, 0.0, "the gateway ran none of them");

    // Node-to-node routes take only the cluster secret; without it they do not exist.
    let forged = gateway.http().post(format!("{}/_hangar/fn/default/hello/", worker.url)).header("x-hangar-cluster-secret", "guess").send().await.unwrap();
    assert_eq!(forged.status(), 404);
    let with_key = gateway.http().post(format!("{}/_hangar/fn/default/hello/", worker.url)).bearer_auth(&gateway.admin_key).send().await.unwrap();
    assert_eq!(with_key.status(), 404, "a user's key is not a node's");
    let forged = gateway.http().get(format!("{}/_hangar/svc/default/web/", worker.url)).bearer_auth(&gateway.admin_key).send().await.unwrap();
    assert_eq!(forged.status(), 404);

    // A service deployed through the gateway (its image imported there) runs on the workers,
    // one instance each, and is reached through the gateway.
    let work = tempfile::tempdir().unwrap();
    gateway.ok(&["image", "import", &web_image(work.path(), "v1"), "--name", "web:v1"]);
    let out = gateway.ok(&["svc", "deploy", "web", "--image", "web:v1", "--min", "2", "--public"]);
    assert!(out.contains("created default/web revision 1"), "{out}");
    // At once, before any heartbeat shows where it runs: the gateway knows the service (and
    // that it is public) and waits for a node with it; a service nobody has is 404 at once.
    let r = gateway.http().get(format!("{}/svc/default/web/", gateway.url)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "v1".to_string()));
    let r = gateway.get("/svc/default/nothing/").send().await.unwrap();
    assert_eq!(r.status(), 404);
    spread_ready(&gateway, "web", 2, 2, Duration::from_secs(30)).await;
    // An upgrade (as a WebSocket) through the gateway reaches the instance on a worker.
    gateway.ok(&["image", "import", common::oci::backend_image(work.path()).to_str().unwrap(), "--name", "backend:1"]);
    gateway.ok(&["svc", "deploy", "echo", "--image", "backend:1"]);
    common::upgrade_echoes(&gateway.url, &gateway.admin_key, "/svc/default/echo/").await;
    for _ in 0..4 {
        assert_eq!(gateway.get("/svc/default/web/").send().await.unwrap().text().await.unwrap(), "v1");
    }
    assert_eq!(instances_on(&gateway), 0);

    // A worker dies: calls placed on it fail fast with a clear 502 until it is found lost,
    // then all go to the other worker.
    worker.kill();
    let mut failed = 0;
    let start = Instant::now();
    loop {
        let r = gateway.http().post(format!("{}/fn/default/hello/", gateway.url)).body("x").send().await.unwrap();
        match r.status().as_u16() {
            200 => {
                if start.elapsed() > Duration::from_secs(3) {
                    break;
                }
            }
            502 => {
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "node_unreachable", "{body}");
                failed += 1;
            }
            other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
        }
        assert!(start.elapsed() < Duration::from_secs(15), "calls kept failing");
    }
    let settled = ran_here(&first, "hello").await;
    for _ in 0..10 {
        assert_eq!(call(&gateway, "/fn/default/hello/", "y").await.0, 200);
    }
    assert_eq!(ran_here(&first, "hello").await, settled + 10.0, "everything goes to the live worker");
    eprintln!("{failed} call(s) failed with 502 while the dead worker was not yet lost");
    // Back, it removes the instances it left when killed.
    worker.restart_after_stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nodes_events_run_elsewhere_and_keys_hold_across_nodes() {
    let cluster = Cluster::new();
    let a = cluster.first();
    let mut b = cluster.join(&a);
    // Slow enough (two instances of 20 ms per node) that B holds a backlog when it dies.
    let _code = common::python_fn(
        &a,
        "hello",
        "import time\ndef handler(event, context):\n    time.sleep(0.02)\n    return 'ok'\n",
        "handler",
        &["--max-instances", "2"],
    );
    // Events sent to both nodes, half with idempotency keys (each key sent to both nodes);
    // B is killed while its share is queued and running.
    let post = |s: &Server, i: usize, keyed: bool| {
        let mut r = send_async(s, "hello", format!("{{\"i\": {i}}}"));
        if keyed {
            r = r.header("idempotency-key", format!("k{i}"));
        }
        r.send()
    };
    eventually("the function on B", Duration::from_secs(10), || async {
        let r = b.http().post(format!("{}/v1/functions/hello/invoke", b.url)).bearer_auth(&b.admin_key).body("{}").send().await.unwrap();
        let status = r.status();
        if status == 200 { Ok(()) } else { Err(format!("{status} {}", r.text().await.unwrap())) }
    })
    .await;
    let mut ids = std::collections::BTreeSet::new();
    let mut on_b = Vec::new();
    let mut keyed_ids = std::collections::BTreeMap::new();
    for i in 0..1000 {
        let keyed = i % 2 == 0;
        let s = if i % 4 < 2 { &a } else { &b };
        let r: Value = post(s, i, keyed).await.unwrap().json().await.unwrap();
        let id = r["id"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
        if keyed {
            // The same key through the other node holds the same event.
            let other = if std::ptr::eq(s, &a) { &b } else { &a };
            let again: Value = post(other, i, true).await.unwrap().json().await.unwrap();
            assert_eq!(again["id"].as_str(), Some(id.as_str()), "{again}");
            keyed_ids.insert(i, id.clone());
        }
        if std::ptr::eq(s, &b) {
            on_b.push(id.clone());
        }
        ids.insert(id);
        if i == 700 {
            b.kill();
            break;
        }
    }
    // B's backlog: events only B held, unfinished when it died (read at once, in two listings).
    let mut unfinished = std::collections::HashSet::new();
    for state in ["queued", "running"] {
        let v: Value = a.get(&format!("/v1/async-invocations?target=hello&state={state}&limit=1000")).send().await.unwrap().json().await.unwrap();
        unfinished.extend(v["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()));
    }
    let stranded = on_b.iter().filter(|id| unfinished.contains(*id)).count();
    assert!(stranded > 0, "B had no backlog when it died; the test proves nothing");
    // The rest go to A alone.
    for i in 701..1000 {
        let r: Value = post(&a, i, i % 2 == 0).await.unwrap().json().await.unwrap();
        ids.insert(r["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1000);
    // Every accepted event completes, B's stranded ones too: A takes them over once B is lost.
    all_succeeded(&a, "hello", 1000, Duration::from_secs(120)).await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schedule_fires_once_per_time_across_a_lease_hand_over() {
    let cluster = Cluster::new();
    let mut a = cluster.first();
    a.ok(&["fn", "deploy", "tick", "--code", guest("hello").to_str().unwrap()]);
    a.ok(&["triggers", "add", "every-second", "--cron", "* * * * * *", "--function", "tick"]);
    // A holds the cron lease (the only node yet); B joins, then A dies.
    let b = cluster.join(&a);
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.kill();
    let killed = Instant::now();
    // B takes over within the lease's time and catches up on the times missed meanwhile.
    let times = eventually("B to fire for 5 s after the hand-over", Duration::from_secs(40), || async {
        let v: Value = b.get("/v1/async-invocations?target=tick&limit=1000").send().await.unwrap().json().await.unwrap();
        let mut times: Vec<i64> =
            v["items"].as_array().unwrap().iter().map(|e| e["idempotency_key"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap()).collect();
        times.sort();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let since_kill = now - killed.elapsed().as_millis() as i64;
        if times.last().is_some_and(|t| *t > since_kill + 15_000) { Ok(times) } else { Err(format!("{} times, last {:?}", times.len(), times.last())) }
    })
    .await;
    let mut dedup = times.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), times.len(), "a time fired twice: {times:?}");
    assert!(times.windows(2).all(|w| w[1] - w[0] == 1000), "a time was skipped: {times:?}");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_store_or_the_bus_refuses_changes_keeps_serving_and_recovers() {
    let mut cluster = Cluster::new();
    let a = cluster.first();
    let b = cluster.join(&a);
    a.ok(&["fn", "deploy", "hello", "--code", guest("hello").to_str().unwrap(), "--public"]);
    eventually("hello on B", Duration::from_secs(5), || async {
        let (status, body) = call(&b, "/fn/default/hello/", "x").await;
        if status == 200 { Ok(()) } else { Err(format!("{status} {body}")) }
    })
    .await;
    let deploy = |s: &Server, greeting: &str| {
        let form = reqwest::multipart::Form::new()
            .text("config", json!({"runtime": "wasm", "env": {"GREETING": greeting}, "public": true}).to_string())
            .part("code", reqwest::multipart::Part::bytes(std::fs::read(guest("hello")).unwrap()).file_name("hello.wasm"));
        s.http().put(format!("{}/v1/functions/hello", s.url)).bearer_auth(&s.admin_key).multipart(form).send()
    };
    // Once the outage is over, a deploy through A works again by itself and B follows it.
    let (node_a, node_b, deploy) = (&a, &b, &deploy);
    let deploys_again = |greeting: &'static str| async move {
        eventually("deploys to work again", Duration::from_secs(30), || async {
            let r = deploy(node_a, greeting).await.unwrap();
            if r.status().is_success() { Ok(()) } else { Err(r.text().await.unwrap()) }
        })
        .await;
        eventually("B to follow", Duration::from_secs(10), || async {
            let (_, body) = call(node_b, "/fn/default/hello/", "x").await;
            if body.starts_with(greeting) { Ok(()) } else { Err(body) }
        })
        .await;
    };

    // The store goes away: warm routes keep answering, changes are refused with the reason.
    cluster.pg.stop();
    assert_eq!(call(&b, "/fn/default/hello/", "x").await.0, 200, "a warm route needs no store");
    let r = deploy(&a, "Down").await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    // Back: changes work again by themselves.
    cluster.pg.resume();
    deploys_again("Back").await;

    // The bus goes away: the same, with bus_unavailable; back, B catches up from the store.
    cluster.nats.stop();
    let refused = eventually("changes to be refused", Duration::from_secs(10), || async {
        let r = deploy(&a, "Cut").await.unwrap();
        if r.status() == 503 { Ok(r.json::<Value>().await.unwrap()) } else { Err(r.status().to_string()) }
    })
    .await;
    assert_eq!(refused["error"]["code"], "bus_unavailable", "{refused}");
    assert!(call(&b, "/fn/default/hello/", "x").await.1.starts_with("Back"));
    cluster.nats.resume();
    deploys_again("Again").await;
}

#[test]
fn a_node_that_cannot_reach_its_store_or_bus_says_which_and_exits() {
    let port = hangar_testkit::free_port();
    for (flag, url, needle) in [
        ("--store", format!("postgres://hangar:secret@127.0.0.1:{port}/hangar"), format!("the store at 127.0.0.1:{port}/hangar cannot be used")),
        ("--bus", format!("nats://127.0.0.1:{port}"), format!("the bus at 127.0.0.1:{port} cannot be used")),
        ("--store", "mysql://x".to_string(), "expected postgres://".to_string()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args([flag, &url])
            .env("HANGAR_LOG", "error")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {url}: started anyway");
        assert!(stderr.contains(&needle), "{flag} {url}: {stderr}");
        assert!(!stderr.contains("secret"), "the password is never printed: {stderr}");
    }
    // A reachable bus, but no cluster secret (or a short one): refused, saying what to set.
    let nats = hangar_testkit::Nats::start();
    for secret in [None, Some("short")] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["up", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path()).args(["--bus", &nats.url()]).env("HANGAR_LOG", "error");
        if let Some(s) = secret {
            cmd.args(["--cluster-secret", s]);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("a cluster needs --cluster-secret"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sandbox_belongs_to_its_node_and_is_marked_failed_when_that_node_is_lost() {
    let cluster = Cluster::new();
    let mut a = cluster.first();
    let mut b = cluster.join_as(&a, "worker");
    let image = tempfile::tempdir().unwrap();
    let layout = common::oci::busybox_httpd(image.path(), "img", &[]);
    // Imported through A, made on B: B fetches the image from A.
    a.ok(&["image", "import", &layout, "--name", "sb/busybox:1"]);
    let id = b.ok(&["sandbox", "create", "--image", "sb/busybox:1", "--memory", "256"]).trim().to_string();
    let get = |s: &Server, id: &str| {
        let (url, key, id) = (s.url.clone(), s.admin_key.clone(), id.to_string());
        async move { reqwest::Client::new().get(format!("{url}/v1/sandboxes/{id}")).bearer_auth(key).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let seen = get(&b, &id).await;
    assert_eq!((seen["state"].as_str(), seen["node"].is_string()), (Some("running"), true), "{seen}");
    // Another node starting again leaves it alone (it used to take every stored sandbox for its
    // own and mark the running ones failed).
    a.restart();
    assert_eq!(get(&b, &id).await["state"], "running");
    assert!(b.ok(&["sandbox", "exec", &id, "--", "sh", "-c", "echo still here"]).contains("still here"));
    // Reached through A: listed, run in, written and read (A sends each call on to B).
    assert!(a.ok(&["sandbox", "ls"]).contains(&id));
    assert!(a.ok(&["sandbox", "exec", &id, "--", "sh", "-c", "echo through A > /tmp/a; cat /tmp/a"]).contains("through A"));
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("in.txt"), "via A").unwrap();
    a.ok(&["sandbox", "cp", local.path().join("in.txt").to_str().unwrap(), &format!("{id}:/tmp/in.txt")]);
    assert!(b.ok(&["sandbox", "exec", &id, "--", "sh", "-c", "cat /tmp/in.txt"]).contains("via A"));
    let no_key = reqwest::get(format!("{}/v1/sandboxes/{id}", a.url)).await.unwrap();
    assert_eq!(no_key.status(), 401);
    // A terminal through A: the WebSocket goes on to B.
    {
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("{}/v1/sandboxes/{id}/tty", a.url.replacen("http://", "ws://", 1)).into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {}", a.admin_key).parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::Text(json!({"cmd": ["sh"], "cols": 80, "rows": 24}).to_string().into())).await.unwrap();
        ws.send(Message::Binary(b"cat /tmp/a; exit 4\n".to_vec().into())).await.unwrap();
        let seen = common::read_until(&mut ws, r#"[{"exit_code":4}]"#).await;
        assert!(seen.contains("through A"), "{seen}");
    }
    // Its node dies: once lost, the sandbox is failed, saying why, as any node shows it.
    b.kill();
    let b_id = seen["node"].as_str().unwrap().to_string();
    node_in_state(&a, &b_id, "lost", Duration::from_secs(10)).await;
    let after = eventually("the sandbox failed", Duration::from_secs(5), || async {
        let v = get(&a, &id).await;
        if v["state"] == "failed" { Ok(v) } else { Err(v.to_string()) }
    })
    .await;
    assert!(after["error"].as_str().unwrap().contains(&format!("node `{b_id}`, which ran it, was lost")), "{after}");
    // Removed through A (only its record is left); B, back, has nothing of it.
    a.ok(&["sandbox", "rm", &id]);
    b.restart_after_stop();
    assert!(!b.ok(&["sandbox", "ls"]).contains(&id));
}

/// A TCP relay to `upstream` that can be cut (every connection closed, new ones refused) and
/// restored: one node's link to the bus, cut while the others keep theirs.
struct Relay {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    async fn start(upstream: u16) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c, g) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::Acquire) {
                    continue;
                }
                let (c, g) = (c.clone(), g.clone());
                let born = g.load(Ordering::Acquire);
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let relay = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let watch = async {
                        while !c.load(Ordering::Acquire) && g.load(Ordering::Acquire) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = relay => {}, _ = watch => {} }
                });
            }
        });
        Relay { port, cut, generation }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::Release);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_from_the_bus_hands_back_what_was_taken_over() {
    let cluster = Cluster::new();
    let a = cluster.first();
    let relay = Relay::start(cluster.nats.port).await;
    // B reaches the bus only through the relay (the store directly).
    let mut flags = cluster.flags();
    let through = format!("nats://127.0.0.1:{}", relay.port);
    let i = flags.iter().position(|f| *f == "--bus").unwrap();
    flags[i + 1] = &through;
    // One attempt at a time, so its backlog waits in its queue (attempts already started run
    // to their end wherever they are).
    flags.extend(["--async-concurrency", "1"]);
    let b = Server::join(&flags, &a.admin_key);
    let _code = common::python_fn(
        &a,
        "slow",
        "import time\ndef handler(event, context):\n    time.sleep(0.1)\n    return 'ok'\n",
        "handler",
        &["--max-instances", "1"],
    );
    eventually("slow on B", Duration::from_secs(10), || async {
        let r = b.http().post(format!("{}/v1/functions/slow/invoke", b.url)).bearer_auth(&b.admin_key).body("{}").send().await.unwrap();
        if r.status() == 200 { Ok(()) } else { Err(r.status().to_string()) }
    })
    .await;
    // A backlog on B (one at a time, 100 ms each).
    let mut ids = Vec::new();
    for i in 0..60 {
        let r: Value = send_async(&b, "slow", format!("{{\"i\": {i}}}")).send().await.unwrap().json().await.unwrap();
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    // B is cut off from the bus: A finds it lost and runs its backlog; B, back, drops it.
    relay.set_cut(true);
    eventually("B lost", Duration::from_secs(10), || async {
        let n = nodes(&a).await;
        if n.iter().any(|(_, state, v)| state == "lost" && b.url.ends_with(v["address"].as_str().unwrap())) { Ok(()) } else { Err(format!("{n:?}")) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.set_cut(false);
    all_succeeded(&a, "slow", ids.len(), Duration::from_secs(60)).await;
    // Each ran once, but for what B was running when it was cut (one at a time); B, fenced
    // before A took over, started nothing more, and dropped what A took: never its backlog twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ran = a.invocations("slow").await.into_iter().filter(|r| r["trigger"] == "async" && r["outcome"] == "ok").count();
    assert!(ran >= ids.len() && ran <= ids.len() + 5, "{ran} runs of {} events", ids.len());
}

/// A busybox httpd image answering `text` at `/`, and its revision's `GREETING` at `/cgi-bin/env`.
fn web_image(dir: &std::path::Path, text: &str) -> String {
    let env = "#!/bin/busybox sh\necho Content-Type: text/plain\necho\necho \"GREETING=$GREETING\"\n";
    common::oci::busybox_httpd(dir, &format!("web-{}", text.len()), &[("www/index.html", text.as_bytes(), 0o644), ("www/cgi-bin/env", env.as_bytes(), 0o755)])
}

/// A service's ready instances on each node not lost, as `seen_by` reports them.
async fn ready_by_node(seen_by: &Server, name: &str) -> Vec<(String, u64)> {
    let v: Value = seen_by.get(&format!("/v1/services/{name}")).send().await.unwrap().json().await.unwrap();
    v["nodes"].as_array().into_iter().flatten().map(|n| (n["node"].as_str().unwrap_or_default().to_string(), n["ready"].as_u64().unwrap_or(0))).collect()
}

/// Waits until `seen_by` sees `name` with `total` ready instances over `nodes` nodes (at most one
/// more on any node than on another); returns how long that took.
async fn spread_ready(seen_by: &Server, name: &str, total: u64, nodes: usize, within: Duration) -> Duration {
    let t = Instant::now();
    eventually(&format!("{name}: {total} ready over {nodes} nodes"), within, || async {
        let by = ready_by_node(seen_by, name).await;
        let serving: Vec<u64> = by.iter().map(|(_, r)| *r).filter(|r| *r > 0).collect();
        let even = serving.iter().max().unwrap_or(&0) - serving.iter().min().unwrap_or(&0) <= 1;
        if serving.iter().sum::<u64>() == total && serving.len() == nodes && even { Ok(()) } else { Err(format!("{by:?}")) }
    })
    .await;
    t.elapsed()
}

/// Waits until every node `seen_by` sees runs exactly its part of `name`, all ready, `total`
/// in all: no instance is still moving between nodes.
async fn settled(seen_by: &Server, name: &str, total: u64, within: Duration) {
    eventually(&format!("{name}: {total} instances where their parts are"), within, || async {
        let v: Value = seen_by.get(&format!("/v1/services/{name}")).send().await.unwrap().json().await.unwrap();
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        let placed = nodes.iter().all(|n| n["ready"] == n["part"] && n["instances"] == n["part"]);
        let sum: u64 = nodes.iter().filter_map(|n| n["ready"].as_u64()).sum();
        if placed && sum == total { Ok(()) } else { Err(format!("{nodes:?}")) }
    })
    .await;
}

/// Service instances running on `s`'s machine part (one cgroup each).
fn instances_on(s: &Server) -> usize {
    std::fs::read_dir(s.services_cgroup()).into_iter().flatten().flatten().filter(|e| e.path().is_dir()).count()
}

/// Sends GETs to `path` through every server in turn until `stop`; returns (answers, failures).
fn keep_calling(servers: Vec<(String, String)>, path: &'static str, stop: Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let (mut answers, mut failures) = (0u64, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            for (url, key) in &servers {
                match client.get(format!("{url}{path}")).bearer_auth(key).send().await {
                    Ok(r) if r.status() == 200 => answers += 1,
                    Ok(r) => failures.push(format!("{url}: {} {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => failures.push(format!("{url}: {e}")),
                }
            }
        }
        (answers, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_spreads_over_the_nodes_rolls_across_them_and_comes_back_after_a_kill() {
    let cluster = Cluster::new();
    let a = cluster.first();
    let b = cluster.join(&a);
    let mut c = cluster.join(&a);
    // The images are imported through A only: B and C fetch them from A when they need them.
    let work = tempfile::tempdir().unwrap();
    a.ok(&["image", "import", &web_image(work.path(), "v1"), "--name", "web:v1"]);
    a.ok(&["image", "import", &web_image(work.path(), "v2!"), "--name", "web:v2"]);
    for s in [&b, &c] {
        node_in_state(s, &nodes(&a).await[0].0, "ready", Duration::from_secs(10)).await;
    }
    eventually("three nodes", Duration::from_secs(10), || async { if nodes(&a).await.len() == 3 { Ok(()) } else { Err("fewer".to_string()) } }).await;

    // Three instances: one on each node.
    a.ok(&["svc", "deploy", "web", "--image", "web:v1", "--min", "3", "--max", "3", "--env", "GREETING=one"]);
    spread_ready(&a, "web", 3, 3, Duration::from_secs(30)).await;
    for s in [&a, &b, &c] {
        let r = s.get("/svc/default/web/").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "v1");
    }
    // One instance in the cluster: the two nodes without it send its requests and queued
    // events to the one with it, which decides who may reach it (no key: as if it did not exist).
    a.ok(&["image", "import", &common::oci::sink_image(work.path()), "--name", "sink:1"]);
    a.ok(&["svc", "deploy", "inbox", "--image", "sink:1"]);
    a.ok(&["triggers", "add", "to-inbox", "--topic", "orders", "--service", "inbox", "--path", "/cgi-bin/events"]);
    // Deployed through A, which starts one to answer; it moves to the node whose part it is.
    settled(&b, "inbox", 1, Duration::from_secs(30)).await;
    for (i, s) in [&a, &b, &c].iter().enumerate() {
        s.ok(&["events", "publish", "orders", &format!("{{\"n\": {i}}}")]);
        assert_eq!(reqwest::get(format!("{}/svc/default/inbox/", s.url)).await.unwrap().status(), 401);
    }
    for s in [&a, &b, &c] {
        eventually("the three events at the one instance", Duration::from_secs(30), || async {
            let r = s.get("/svc/default/inbox/cgi-bin/events").send().await.unwrap();
            let (status, kept) = (r.status(), r.text().await.unwrap());
            if status == 200 && kept.lines().filter(|l| l.contains("\"n\"")).count() == 3 { Ok(()) } else { Err(format!("{status} {kept}")) }
        })
        .await;
    }

    // A rolling update sent through B: every node replaces its own instance, and requests
    // through every node keep being answered, none failed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let servers: Vec<(String, String)> = [&a, &b, &c].iter().map(|s| (s.url.clone(), s.admin_key.clone())).collect();
    let calls = keep_calling(servers, "/svc/default/web/cgi-bin/env", stop.clone());
    b.ok(&["svc", "deploy", "web", "--image", "web:v2", "--min", "3", "--max", "3", "--env", "GREETING=two"]);
    for s in [&a, &b, &c] {
        eventually("the new revision on every node", Duration::from_secs(30), || async {
            let text = s.get("/svc/default/web/cgi-bin/env").send().await.unwrap().text().await.unwrap();
            if text.trim() == "GREETING=two" { Ok(()) } else { Err(text) }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (answers, failures) = calls.await.unwrap();
    assert!(answers > 100 && failures.is_empty(), "{answers} answered, failed: {failures:?}");
    spread_ready(&a, "web", 3, 3, Duration::from_secs(10)).await;

    // C is killed: once it is found lost, A and B start its instance, back to three ready.
    c.kill();
    let took = spread_ready(&a, "web", 3, 2, Duration::from_secs(10)).await;
    println!("kill -9 of a worker -> the service back at 3 ready instances in {} ms", took.as_millis());
    for s in [&a, &b] {
        assert_eq!(s.get("/svc/default/web/").send().await.unwrap().text().await.unwrap(), "v2!");
    }
    // Back (its leftovers removed at start), it takes its part again.
    c.restart_after_stop();
    spread_ready(&a, "web", 3, 3, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_a_node_moves_its_service_instances_first() {
    let cluster = Cluster::new();
    let a = cluster.first();
    let b = cluster.join(&a);
    let work = tempfile::tempdir().unwrap();
    a.ok(&["image", "import", &web_image(work.path(), "v1"), "--name", "web:v1"]);
    eventually("two nodes", Duration::from_secs(10), || async { if nodes(&a).await.len() == 2 { Ok(()) } else { Err("fewer".to_string()) } }).await;
    a.ok(&["svc", "deploy", "web", "--image", "web:v1", "--min", "2", "--max", "2"]);
    spread_ready(&a, "web", 2, 2, Duration::from_secs(30)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = keep_calling(vec![(a.url.clone(), a.admin_key.clone()), (b.url.clone(), b.admin_key.clone())], "/svc/default/web/", stop.clone());
    let b_id = nodes(&b).await.into_iter().map(|(id, _, v)| (id, v)).find(|(_, v)| b.url.ends_with(v["address"].as_str().unwrap())).unwrap().0;
    a.ok(&["nodes", "drain", &b_id]);
    // Both instances end up on A; B stopped its own only once A's second was ready.
    eventually("both instances on A", Duration::from_secs(30), || async {
        let by = ready_by_node(&a, "web").await;
        let on_b = by.iter().find(|(n, _)| *n == b_id).map_or(0, |(_, r)| *r);
        let on_a: u64 = by.iter().filter(|(n, _)| *n != b_id).map(|(_, r)| *r).sum();
        if on_a == 2 && on_b == 0 && instances_on(&b) == 0 { Ok(()) } else { Err(format!("{by:?}")) }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (answers, failures) = calls.await.unwrap();
    assert!(answers > 20 && failures.is_empty(), "{answers} answered, failed: {failures:?}");
}

/// Drops every packet to `ports` on this machine (nftables) until dropped: a partition, not a
/// closed connection.
struct Partition(String);

impl Partition {
    fn cut(ports: &[u16]) -> Partition {
        let table = format!("hangar_test_{}_{}", std::process::id(), ports[0]);
        let ports = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
        let script = format!("table inet {table} {{\n chain input {{\n  type filter hook input priority -10;\n  tcp dport {{ {ports} }} drop\n }}\n}}\n");
        let mut nft = Command::new("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().expect("nft (apt-get install nftables)");
        use std::io::Write as _;
        nft.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success(), "nft refused {script}");
        Partition(table)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_from_the_store_and_the_bus_stops_its_instances_and_the_others_run_them() {
    let cluster = Cluster::new();
    let a = cluster.first();
    let c = cluster.join(&a);
    // B reaches nats-server and PostgreSQL through relays of its own, which nftables cuts.
    let (bus_relay, store_relay) = (Relay::start(cluster.nats.port).await, Relay::start(cluster.pg.port).await);
    let mut flags = cluster.flags();
    let bus = format!("nats://127.0.0.1:{}", bus_relay.port);
    let i = flags.iter().position(|f| *f == "--bus").unwrap();
    flags[i + 1] = &bus;
    let i = flags.iter().position(|f| *f == "--store").unwrap();
    let store = flags[i + 1].replace(&format!(":{}/", cluster.pg.port), &format!(":{}/", store_relay.port));
    flags[i + 1] = &store;
    let b = Server::join(&flags, &a.admin_key);
    let work = tempfile::tempdir().unwrap();
    a.ok(&["image", "import", &web_image(work.path(), "v1"), "--name", "web:v1"]);
    eventually("three nodes", Duration::from_secs(10), || async { if nodes(&a).await.len() == 3 { Ok(()) } else { Err("fewer".to_string()) } }).await;
    a.ok(&["svc", "deploy", "web", "--image", "web:v1", "--min", "3", "--max", "3"]);
    spread_ready(&a, "web", 3, 3, Duration::from_secs(30)).await;
    let instances_on_b = || instances_on(&b);
    assert_eq!(instances_on_b(), 1);
    let sandbox = b.ok(&["sandbox", "create", "--image", "web:v1", "--memory", "256"]).trim().to_string();

    let cut = Partition::cut(&[bus_relay.port, store_relay.port]);
    // B fences itself and stops its instance; A and C find it lost and run three between them.
    eventually("B's instance stopped", Duration::from_secs(30), || async { if instances_on_b() == 0 { Ok(()) } else { Err("still running".to_string()) } })
        .await;
    spread_ready(&a, "web", 3, 2, Duration::from_secs(15)).await;
    assert_eq!(c.get("/svc/default/web/").send().await.unwrap().text().await.unwrap(), "v1");
    // Back in touch, B takes its part again; its sandbox, which the others found lost with
    // it, no longer runs there.
    drop(cut);
    spread_ready(&a, "web", 3, 3, Duration::from_secs(30)).await;
    assert_eq!(instances_on_b(), 1);
    let v: Value = b.get(&format!("/v1/sandboxes/{sandbox}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["state"], "failed", "{v}");
    eventually("the lost sandbox stopped on B", Duration::from_secs(10), || async {
        let out = b.cli(&["sandbox", "exec", &sandbox, "--", "true"]);
        if out.status.success() { Err("it still runs".to_string()) } else { Ok(()) }
    })
    .await;
    b.ok(&["sandbox", "rm", &sandbox]);
}
