//! Chaos through the real binary: rounds of mixed load (a WASM and a Python function whose
//! instances pause, a service, a sandbox, async events with and without idempotency keys),
//! `kill -9` of the server at a random moment of each, and a restart. Every round the server is
//! healthy again at once and nothing of the killed run is left once its cleanup ends; at the
//! end every accepted event is final and every idempotency key names one event.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::Server;
use common::oci::busybox_httpd;
use serde_json::{Value, json};

const ROUNDS: usize = 30;
/// The bound on "healthy again": the 1 s, with room for a loaded CI machine running a
/// debug build (BENCHMARKS.md has the release figures).
const HEALTHY_WITHIN: Duration = Duration::from_millis(1500);

const PY: &str = "import time\ndef handler(event, context):\n    time.sleep(0.05)\n    return {'id': context.aws_request_id}\n";

/// A small xorshift, seeded from the clock and printed, so a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Every pid in the server's cgroups (process functions, services, sandboxes), by its cgroup
/// names, which contain the server id.
fn server_pids(sid: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    fn walk(dir: &Path, out: &mut BTreeSet<i32>) {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    for root in ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().contains(sid) {
                walk(&e.path(), &mut out);
            }
        }
    }
    out
}

fn alive(pid: i32) -> bool {
    // A zombie has left its cgroup and holds nothing; only live processes count.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// The server id, from the process runtime's cgroup (`hangar-<sid>`) a prewarmed zygote made.
async fn server_id(s: &Server, before: &BTreeSet<String>) -> String {
    common::eventually("the server's cgroups to appear", Duration::from_secs(30), || async {
        let now: BTreeSet<String> = std::fs::read_dir("/sys/fs/cgroup/pids")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("hangar-") && !n.starts_with("hangar-sb-") && !n.ends_with("-svc"))
            .collect();
        let _ = s;
        now.difference(before).next().map(|n| n.trim_start_matches("hangar-").to_string()).ok_or_else(|| format!("{now:?}"))
    })
    .await
}

#[tokio::test]
async fn kill_9_under_mixed_load_loses_nothing_and_leaves_nothing() {
    let before: BTreeSet<String> =
        std::fs::read_dir("/sys/fs/cgroup/pids").into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let mut s = Server::start();
    let sid = server_id(&s, &before).await;
    s.deploy("hello", "hello", &["--public"]);
    let _py = common::python_fn(&s, "py", PY, "handler", &["--pause-after", "200ms", "--max-instances", "16"]);
    let work = tempfile::tempdir().unwrap();
    let layout = busybox_httpd(work.path(), "img", &[("www/index.html", b"up", 0o644)]);
    s.ok(&["image", "import", &layout, "--name", "web:1"]);
    s.ok(&["svc", "deploy", "web", "--image", "web:1"]);
    let sandbox = s.ok(&["sandbox", "create", "--image", "web:1", "--memory", "128"]).trim().to_string();

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("chaos seed {seed}");
    let mut rng = Rng(seed);
    // Accepted events (id → idempotency key) and the id each key got.
    let mut accepted: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    let mut worst = Duration::ZERO;
    for round in 0..ROUNDS {
        let url = s.url.clone();
        let key = s.admin_key.clone();
        let mut load = tokio::task::JoinSet::new();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        for i in 0..40 {
            let (c, url, key, sandbox) = (client.clone(), url.clone(), key.clone(), sandbox.clone());
            load.spawn(async move {
                let auth = format!("Bearer {key}");
                let r = match i % 8 {
                    0 | 1 => c.get(format!("{url}/fn/default/hello/")).send().await,
                    2 | 3 => c.post(format!("{url}/v1/functions/py/invoke")).header("authorization", &auth).body("{}").send().await,
                    4 => c.get(format!("{url}/svc/default/web/index.html")).header("authorization", &auth).send().await,
                    5 if i == 5 => {
                        let _ = c.post(format!("{url}/v1/sandboxes/{sandbox}/resume")).header("authorization", &auth).send().await;
                        c.post(format!("{url}/v1/sandboxes/{sandbox}/exec")).header("authorization", &auth).json(&json!({"cmd": ["echo", "hi"]})).send().await
                    }
                    _ => {
                        let mut req = c
                            .post(format!("{url}/v1/functions/py/invoke?async=true"))
                            .header("authorization", &auth)
                            .body(format!("{{\"round\":{round},\"i\":{i}}}"));
                        let k = (i % 2 == 0).then(|| format!("r{round}-{i}"));
                        if let Some(k) = &k {
                            req = req.header("idempotency-key", k);
                        }
                        let r = req.send().await;
                        if let Ok(r) = r
                            && r.status() == 202
                            && let Ok(v) = r.json::<Value>().await
                        {
                            return Some((v["id"].as_str().unwrap_or_default().to_string(), k));
                        }
                        return None;
                    }
                };
                let _ = r;
                None
            });
        }
        // The kill comes at a random moment: during the burst, or after it, when the Python
        // instances have been paused.
        tokio::time::sleep(Duration::from_millis(rng.below(900))).await;
        let pids_before = server_pids(&sid);
        s.kill();
        while let Some(done) = load.join_next().await {
            if let Ok(Some((id, k))) = done {
                if let Some(k) = &k {
                    keys.insert(k.clone(), id.clone());
                }
                accepted.insert(id, k);
            }
        }

        let t = Instant::now();
        s.restart_after_stop();
        let r = s.http().get(format!("{}/healthz", s.url)).send().await.unwrap();
        let healthy = t.elapsed();
        assert_eq!(r.status(), 200, "round {round}");
        assert!(healthy <= HEALTHY_WITHIN, "round {round}: healthy after {healthy:?}");
        worst = worst.max(healthy);

        // Nothing of the killed run lives on once its cleanup ends.
        common::eventually(&format!("round {round}: the killed run's processes to be gone"), Duration::from_secs(20), || async {
            let left: Vec<i32> = pids_before.iter().copied().filter(|p| alive(*p)).collect();
            if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
        })
        .await;
        // A key sent again after the restart names the same event.
        for (k, id) in keys.iter().filter(|(k, _)| k.starts_with(&format!("r{round}-"))) {
            let r = s
                .http()
                .post(format!("{}/v1/functions/py/invoke?async=true", s.url))
                .bearer_auth(&s.admin_key)
                .header("idempotency-key", k)
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["id"].as_str(), Some(id.as_str()), "round {round}: key {k} named another event: {v}");
            assert_eq!(v["duplicate"], true);
        }
    }
    eprintln!("worst time to healthy over {ROUNDS} kills: {worst:?}; {} events accepted", accepted.len());
    assert!(accepted.len() > ROUNDS, "the load accepted events: {}", accepted.len());

    // Every accepted event is there and ends.
    for id in accepted.keys() {
        common::eventually(&format!("event {id} to be final"), Duration::from_secs(90), || async {
            let r = s.get(&format!("/v1/async-invocations/{id}")).send().await.map_err(|e| e.to_string())?;
            if r.status() == 404 {
                panic!("accepted event {id} was lost");
            }
            let v: Value = r.json().await.map_err(|e| e.to_string())?;
            match v["state"].as_str() {
                Some("succeeded") | Some("failed") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    // Functions, the service and the sandbox all serve after the last restart.
    assert_eq!(s.get("/fn/default/hello/").send().await.unwrap().status(), 200);
    assert_eq!(s.http().post(format!("{}/v1/functions/py/invoke", s.url)).bearer_auth(&s.admin_key).body("{}").send().await.unwrap().status(), 200);
    common::eventually("the service to serve again", Duration::from_secs(30), || async {
        let r = s.get("/svc/default/web/index.html").send().await.map_err(|e| e.to_string())?;
        if r.status() == 200 { Ok(()) } else { Err(r.status().to_string()) }
    })
    .await;
}
