//! The conformance suite: what every backend of the store traits must do, checked against a
//! real backend. A backend's tests run it with one line:
//!
//! ```ignore
//! hangar_store::conformance::run(|| async { Arc::new(MyStore::fresh().await) as Arc<dyn Store> }).await;
//! ```
//!
//! Each check gets a fresh, empty store from the factory and panics with what went wrong.

use std::future::Future;
use std::sync::Arc;

use hangar_api::events::{AsyncState, Attempt, TargetKind, TriggerConfig};
use hangar_api::{FunctionConfig, InvocationRecord, Outcome, RuntimeKind, StartKind, Trigger};

use crate::{AsyncFilter, AsyncRecord, FunctionRow, InvocationFilter, KeyRow, ServiceRow, Store, StoreError, TriggerRow, UsageFilter};

/// Runs every check, each on a fresh store from `fresh`.
pub async fn run<F, Fut>(mut fresh: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    namespaces_and_keys(fresh().await).await;
    functions_round_trip_and_history(fresh().await).await;
    function_writes_are_compare_and_set(fresh().await).await;
    concurrent_writers_of_one_revision_one_wins(fresh().await).await;
    services_are_compare_and_set(fresh().await).await;
    triggers_and_sandboxes(fresh().await).await;
    invocations_list_filter_and_page(fresh().await).await;
    usage_is_added_once_by_the_billing_rules(fresh().await).await;
    usage_rows_marks_and_pruning(fresh().await).await;
    async_invocations_deduplicate_by_key_and_keep_their_state(fresh().await).await;
    mode_switches_keep_their_order(fresh().await).await;
    code_is_kept_by_digest(fresh().await).await;
}

fn function(name: &str, revision: u64) -> FunctionRow {
    FunctionRow {
        namespace: "default".into(),
        name: name.into(),
        revision,
        config: FunctionConfig::new(RuntimeKind::Wasm),
        code_digest: format!("sha256:{revision:02x}"),
        code_size: 10,
        created_ms: 1,
        updated_ms: revision as i64,
    }
}

fn record(id: &str, function: &str, outcome: Outcome) -> InvocationRecord {
    InvocationRecord {
        id: id.into(),
        namespace: "default".into(),
        function: function.into(),
        revision: 1,
        trigger: Trigger::Http,
        started_ms: 1000,
        duration_us: 1500,
        billed_ms: 2,
        memory_mb: 128,
        start: StartKind::Warm,
        ending: hangar_api::Ending { outcome, status: 200, response_bytes: 5, error: None, logs: format!("log of {id}"), logs_truncated: false },
        parent_id: None,
    }
}

fn queued(id: &str, key: Option<&str>) -> AsyncRecord {
    AsyncRecord {
        id: id.into(),
        namespace: "default".into(),
        kind: TargetKind::Function,
        target: "f".into(),
        path: None,
        payload: b"{}".to_vec(),
        content_type: Some("application/json".into()),
        idempotency_key: key.map(str::to_string),
        state: AsyncState::Queued,
        attempts: Vec::new(),
        accepted_ms: 1,
        next_ms: 1,
        finished_ms: None,
        error: None,
        destination_id: None,
        trace: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    }
}

async fn namespaces_and_keys(s: Arc<dyn Store>) {
    let ns = s.create_namespace("default", 1).await.expect("create a namespace");
    assert_eq!((ns.name.as_str(), ns.created_ms, ns.max_concurrency), ("default", 1, None));
    assert!(matches!(s.create_namespace("default", 2).await, Err(StoreError::Conflict(_))), "a second create is a conflict");
    s.create_namespace("team", 3).await.unwrap();
    let names: Vec<String> = s.list_namespaces().await.unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["default", "team"]);
    assert!(s.set_namespace_limit("team", Some(5)).await.unwrap());
    assert_eq!(s.get_namespace("team").await.unwrap().unwrap().max_concurrency, Some(5));
    assert!(s.set_namespace_limit("team", None).await.unwrap());
    assert_eq!(s.get_namespace("team").await.unwrap().unwrap().max_concurrency, None);
    assert!(!s.set_namespace_limit("nope", Some(1)).await.unwrap());

    let key = |id: &str, ns: Option<&str>| KeyRow { id: id.into(), hash: format!("hash-{id}"), namespace: ns.map(str::to_string), name: None, created_ms: 1 };
    s.insert_key(&key("k1", None)).await.unwrap();
    s.insert_key(&key("k2", Some("team"))).await.unwrap();
    assert_eq!(s.list_keys().await.unwrap().len(), 2);
    // A namespace's keys go with it.
    assert!(s.delete_namespace("team").await.unwrap());
    assert!(s.get_namespace("team").await.unwrap().is_none());
    assert_eq!(s.list_keys().await.unwrap().iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["k1"]);
    assert!(!s.delete_namespace("team").await.unwrap());
    assert!(s.delete_key("k1").await.unwrap());
    assert!(!s.delete_key("k1").await.unwrap());
}

async fn functions_round_trip_and_history(s: Arc<dyn Store>) {
    s.create_namespace("default", 1).await.unwrap();
    let mut f = function("hello", 1);
    s.put_function(&f, 0).await.expect("the first revision");
    f.revision = 2;
    f.config.memory_mb = 256;
    s.put_function(&f, 1).await.expect("the second revision");
    assert_eq!(s.get_function("default", "hello").await.unwrap(), Some(f.clone()));
    s.put_function(&function("abc", 1), 0).await.unwrap();
    let names: Vec<String> = s.list_functions(Some("default")).await.unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["abc", "hello"], "ordered by name");
    assert!(s.list_functions(Some("other")).await.unwrap().is_empty());
    assert!(matches!(s.delete_namespace("default").await, Err(StoreError::Conflict(_))), "a namespace with functions is not deleted");
    assert!(s.delete_function("default", "hello").await.unwrap());
    assert!(!s.delete_function("default", "hello").await.unwrap());
    assert!(s.get_function("default", "hello").await.unwrap().is_none());
}

async fn function_writes_are_compare_and_set(s: Arc<dyn Store>) {
    s.create_namespace("default", 1).await.unwrap();
    s.put_function(&function("f", 1), 0).await.unwrap();
    // Creating what exists, or replacing a revision that is not the current one, loses.
    match s.put_function(&function("f", 1), 0).await {
        Err(StoreError::Stale { expected: 0, found: 1, .. }) => {}
        other => panic!("creating an existing function: {other:?}"),
    }
    s.put_function(&function("f", 2), 1).await.unwrap();
    match s.put_function(&function("f", 2), 1).await {
        Err(StoreError::Stale { expected: 1, found: 2, .. }) => {}
        other => panic!("replacing revision 1 when 2 is current: {other:?}"),
    }
    assert_eq!(s.get_function("default", "f").await.unwrap().unwrap().revision, 2, "a lost write changes nothing");
    match s.put_function(&function("g", 2), 1).await {
        Err(StoreError::Stale { expected: 1, found: 0, .. }) => {}
        other => panic!("replacing a function that does not exist: {other:?}"),
    }
    assert!(s.get_function("default", "g").await.unwrap().is_none());
}

async fn concurrent_writers_of_one_revision_one_wins(s: Arc<dyn Store>) {
    s.create_namespace("default", 1).await.unwrap();
    s.put_function(&function("f", 1), 0).await.unwrap();
    // Eight writers read revision 1 and race to write revision 2: exactly one wins; each loser
    // reads again and retries until it has written a revision of its own, so none is lost.
    let mut writers = Vec::new();
    for w in 0..8u32 {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            let mut seen = 1;
            let mut lost = 0;
            loop {
                let mut row = function("f", seen + 1);
                row.config.memory_mb = 128 + w;
                match s.put_function(&row, seen).await {
                    Ok(()) => return (seen + 1, lost),
                    Err(StoreError::Stale { found, .. }) => {
                        lost += 1;
                        seen = found;
                    }
                    Err(e) => panic!("a racing writer: {e}"),
                }
            }
        }));
    }
    let mut won = Vec::new();
    for w in writers {
        won.push(w.await.expect("a writer").0);
    }
    won.sort_unstable();
    assert_eq!(won, (2..=9).collect::<Vec<u64>>(), "every revision written exactly once");
    assert_eq!(s.get_function("default", "f").await.unwrap().unwrap().revision, 9);
}

async fn services_are_compare_and_set(s: Arc<dyn Store>) {
    s.create_namespace("default", 1).await.unwrap();
    let svc = |revision: u64| ServiceRow {
        namespace: "default".into(),
        name: "web".into(),
        revision,
        config: hangar_api::services::ServiceConfig::new("app:1"),
        image_id: "sha256:ab".into(),
        created_ms: 1,
        updated_ms: revision as i64,
    };
    s.put_service(&svc(1), 0).await.unwrap();
    assert!(matches!(s.put_service(&svc(1), 0).await, Err(StoreError::Stale { expected: 0, found: 1, .. })));
    s.put_service(&svc(2), 1).await.unwrap();
    assert!(matches!(s.put_service(&svc(3), 1).await, Err(StoreError::Stale { expected: 1, found: 2, .. })));
    assert_eq!(s.get_service("default", "web").await.unwrap(), Some(svc(2)));
    assert_eq!(s.list_services(None).await.unwrap().len(), 1);
    assert!(matches!(s.delete_namespace("default").await, Err(StoreError::Conflict(_))));
    assert!(s.delete_service("default", "web").await.unwrap());
    assert!(!s.delete_service("default", "web").await.unwrap());
}

async fn triggers_and_sandboxes(s: Arc<dyn Store>) {
    s.create_namespace("default", 1).await.unwrap();
    let config: TriggerConfig = serde_json::from_value(serde_json::json!({"cron": "* * * * *", "function": "f"})).expect("a trigger config");
    let row = TriggerRow { namespace: "default".into(), name: "tick".into(), config, created_ms: 1, last_fired_ms: None };
    s.put_trigger(&row).await.unwrap();
    s.set_trigger_fired("default", "tick", 60_000).await.unwrap();
    // Replacing a trigger keeps when it last fired.
    s.put_trigger(&row).await.unwrap();
    let listed = s.list_triggers(Some("default")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_fired_ms, Some(60_000));
    assert!(s.list_triggers(Some("other")).await.unwrap().is_empty());
    assert!(s.delete_trigger("default", "tick").await.unwrap());
    assert!(!s.delete_trigger("default", "tick").await.unwrap());

    let sandbox: hangar_api::sandboxes::Sandbox = serde_json::from_value(serde_json::json!({
        "id": "sb1", "namespace": "default", "config": {"image": "app:1"}, "image_id": "sha256:ab",
        "state": "running", "created_ms": 1, "state_since_ms": 1, "last_active_ms": 1
    }))
    .expect("a sandbox record");
    s.put_sandbox(&sandbox).await.unwrap();
    let mut changed = sandbox.clone();
    changed.last_active_ms = 9;
    s.put_sandbox(&changed).await.unwrap();
    assert_eq!(s.list_sandboxes().await.unwrap(), vec![changed.clone()]);
    assert_eq!(s.get_sandbox("sb1").await.unwrap(), Some(changed));
    assert_eq!(s.get_sandbox("sb2").await.unwrap(), None);
    assert!(s.delete_sandbox("sb1").await.unwrap());
    assert!(!s.delete_sandbox("sb1").await.unwrap());
    assert_eq!(s.get_sandbox("sb1").await.unwrap(), None);
}

async fn invocations_list_filter_and_page(s: Arc<dyn Store>) {
    let batch = vec![record("01", "hello", Outcome::Ok), record("02", "hello", Outcome::Error), record("03", "other", Outcome::Ok)];
    s.insert_invocations(batch.clone()).await.unwrap();
    // The same records again (a retried batch) are skipped.
    s.insert_invocations(batch).await.unwrap();
    let all = s.list_invocations(InvocationFilter { namespace: Some("default".into()), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["03", "02", "01"], "newest first, once each");
    assert!(all[0].ending.logs.is_empty(), "logs are only read when asked for");
    let page = s
        .list_invocations(InvocationFilter {
            namespace: Some("default".into()),
            function: Some("hello".into()),
            cursor: Some("02".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["01"], "a page continues after its cursor");
    let oldest = s.list_invocations(InvocationFilter { limit: 2, ascending: true, ..Default::default() }).await.unwrap();
    assert_eq!(oldest.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["01", "02"]);
    let errors = s.list_invocations(InvocationFilter { outcome: Some(Outcome::Error), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(errors.len(), 1);
    let one = s.get_invocation(Some("default"), "02").await.unwrap().expect("one record");
    assert_eq!(one.ending.logs, "log of 02");
    assert!(s.get_invocation(Some("other"), "02").await.unwrap().is_none(), "another namespace does not see it");
    assert!(s.get_invocation(None, "02").await.unwrap().is_some());
    // Pruning: records started before a time go, oldest first, at most as many as asked.
    let mut late = record("04", "hello", Outcome::Ok);
    late.started_ms = 5000;
    s.insert_invocations(vec![late]).await.unwrap();
    assert_eq!(s.prune_invocations(2000, 2).await.unwrap(), 2);
    assert_eq!(s.prune_invocations(2000, 100).await.unwrap(), 1);
    let left = s.list_invocations(InvocationFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(left.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["04"]);
}

async fn usage_is_added_once_by_the_billing_rules(s: Arc<dyn Store>) {
    let mut cold = record("c1", "f", Outcome::Ok);
    cold.start = StartKind::Cold;
    let mut prewarmed = record("c2", "f", Outcome::Error);
    prewarmed.start = StartKind::Prewarmed;
    let throttled = record("c3", "f", Outcome::Throttled);
    let batch = vec![cold, prewarmed, throttled];
    s.insert_invocations(batch.clone()).await.unwrap();
    s.insert_invocations(batch).await.unwrap();
    let rows = s.list_usage(UsageFilter { namespace: Some("default".into()), ..Default::default() }).await.unwrap();
    assert_eq!(rows.len(), 1, "one row for the function's hour: {rows:?}");
    let r = &rows[0];
    assert_eq!((r.kind, r.name.as_str(), r.hour_ms), (hangar_api::WorkloadKind::Function, "f", 0));
    // Throttled: not billed; a retried batch: not counted again; prewarmed: a cold start.
    assert_eq!((r.requests, r.errors, r.cold_starts, r.billed_ms, r.mb_ms), (2, 1, 2, 4, 4 * 128));
}

async fn usage_rows_marks_and_pruning(s: Arc<dyn Store>) {
    use hangar_api::cost::{UsageDelta, UsageMark};
    const HOUR: i64 = 3_600_000;
    let delta = |hour: i64, running_ms: u64| UsageDelta {
        namespace: "default".into(),
        kind: hangar_api::WorkloadKind::Service,
        name: "web".into(),
        hour_ms: hour * HOUR,
        running_ms,
        ..Default::default()
    };
    s.add_usage(vec![delta(0, 10), delta(0, 5), delta(1, 7)], None).await.unwrap();
    let rows = s.list_usage(UsageFilter { kind: Some(hangar_api::WorkloadKind::Service), ..Default::default() }).await.unwrap();
    assert_eq!(rows.iter().map(|r| (r.hour_ms, r.running_ms)).collect::<Vec<_>>(), [(0, 15), (HOUR, 7)], "added into hourly rows, oldest first");
    let days = s.list_usage(UsageFilter { per_day: true, ..Default::default() }).await.unwrap();
    assert_eq!(days.iter().map(|r| r.running_ms).collect::<Vec<_>>(), [22], "summed per day");
    let mark = |id: &str, running_ms: u64| UsageMark { id: id.into(), running_ms, paused_ms: 1, standby_ms: 0, standby_byte_ms: 0 };
    for id in ["sb1", "sb2"] {
        let sandbox: hangar_api::sandboxes::Sandbox = serde_json::from_value(serde_json::json!({
            "id": id, "namespace": "default", "config": {"image": "app:1"}, "image_id": "sha256:ab",
            "state": "running", "created_ms": 1, "state_since_ms": 1, "last_active_ms": 1
        }))
        .expect("a sandbox record");
        s.put_sandbox(&sandbox).await.unwrap();
    }
    // Two nodes, each with its sandbox: neither drops the other's marks.
    s.add_usage(vec![], Some(vec![mark("sb1", 3)])).await.unwrap();
    s.add_usage(vec![], Some(vec![mark("sb2", 4)])).await.unwrap();
    s.add_usage(vec![], Some(vec![mark("sb1", 5)])).await.unwrap();
    let mut kept = s.usage_marks().await.unwrap();
    kept.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(kept, [mark("sb1", 5), mark("sb2", 4)]);
    // A sandbox gone from the store loses its marks.
    s.delete_sandbox("sb1").await.unwrap();
    s.add_usage(vec![], Some(vec![])).await.unwrap();
    assert_eq!(s.usage_marks().await.unwrap(), [mark("sb2", 4)], "marks of sandboxes gone are dropped");
    assert_eq!(s.prune_usage(HOUR).await.unwrap(), 1);
    assert_eq!(s.list_usage(UsageFilter::default()).await.unwrap().len(), 1);
}

async fn async_invocations_deduplicate_by_key_and_keep_their_state(s: Arc<dyn Store>) {
    // A key seen twice in one batch and again in a later one holds the first id.
    let held = s.save_async("n1", vec![queued("a1", Some("k")), queued("a2", Some("k")), queued("a3", None)], vec![]).await.unwrap();
    assert_eq!(held, vec![("a1".into(), false), ("a1".into(), true), ("a3".into(), false)]);
    let held = s.save_async("n2", vec![queued("a4", Some("k"))], vec![]).await.unwrap();
    assert_eq!(held, vec![("a1".into(), true)]);
    let mut done = queued("a1", Some("k"));
    done.state = AsyncState::Succeeded;
    done.finished_ms = Some(5);
    done.attempts.push(Attempt { invocation_id: Some("i1".into()), started_ms: 2, outcome: Outcome::Ok, status: 200, error: None });
    s.save_async("n1", vec![], vec![done.clone()]).await.unwrap();
    let unfinished = |owner: &'static str| {
        let s = s.clone();
        async move { s.unfinished_async(owner).await.unwrap().into_iter().map(|a| a.id).collect::<Vec<_>>() }
    };
    assert_eq!(unfinished("n1").await, ["a3"]);
    assert!(unfinished("n2").await.is_empty(), "a duplicate key queues nothing for its sender");
    assert_eq!(s.get_async(Some("default"), "a1").await.unwrap().unwrap(), done);
    assert!(s.get_async(Some("other"), "a1").await.unwrap().is_none());
    let succeeded = s.list_async(AsyncFilter { state: Some(AsyncState::Succeeded), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(succeeded.len(), 1);
    assert!(succeeded[0].payload.is_empty(), "listings leave payloads out");

    // n1 is lost: n2 takes its unfinished events over, payloads and all; n1's late writes to
    // them change nothing.
    let adopted = s.adopt_async("n1", "n2").await.unwrap();
    assert_eq!(adopted.iter().map(|a| (a.id.as_str(), a.payload.len())).collect::<Vec<_>>(), [("a3", 2)]);
    assert!(unfinished("n1").await.is_empty());
    assert_eq!(unfinished("n2").await, ["a3"]);
    assert!(s.adopt_async("n1", "n2").await.unwrap().is_empty(), "taken over once");
    // n1 learns which of its events are another's now (an id it never stored is not).
    assert_eq!(s.taken_over("n1", vec!["a3".into(), "never-stored".into()]).await.unwrap(), ["a3"]);
    assert!(s.taken_over("n2", vec!["a3".into()]).await.unwrap().is_empty());
    let mut late = queued("a3", None);
    late.state = AsyncState::Failed;
    s.save_async("n1", vec![], vec![late]).await.unwrap();
    assert_eq!(s.get_async(None, "a3").await.unwrap().unwrap().state, AsyncState::Queued, "the lost node is fenced off");
    let mut done = queued("a3", None);
    done.state = AsyncState::Succeeded;
    s.save_async("n2", vec![], vec![done]).await.unwrap();
    assert_eq!(s.get_async(None, "a3").await.unwrap().unwrap().state, AsyncState::Succeeded);
}

async fn mode_switches_keep_their_order(s: Arc<dyn Store>) {
    let switch = |to: u32| hangar_api::ModeSwitch {
        kind: hangar_api::WorkloadKind::Function,
        at: String::new(),
        revision: 1,
        from_warm: 0,
        to_warm: to,
        reason: format!("to {to}"),
    };
    s.add_mode_switch("default", "f", 2, &switch(1)).await.unwrap();
    s.add_mode_switch("default", "f", 1, &switch(2)).await.unwrap();
    s.add_mode_switch("default", "g", 3, &switch(3)).await.unwrap();
    let got: Vec<u32> = s.list_mode_switches("default", "f").await.unwrap().into_iter().map(|m| m.to_warm).collect();
    assert_eq!(got, [2, 1], "oldest first");
}

async fn code_is_kept_by_digest(s: Arc<dyn Store>) {
    let code = bytes::Bytes::from_static(b"\0asm code");
    assert_eq!(s.get_code("sha256:aa").await.unwrap(), None);
    s.put_code("sha256:aa", code.clone()).await.unwrap();
    // Written again (two nodes deploying the same upload), nothing changes and nothing fails.
    s.put_code("sha256:aa", code.clone()).await.unwrap();
    assert_eq!(s.get_code("sha256:aa").await.unwrap(), Some(code));
    let big = bytes::Bytes::from(vec![7u8; 3 << 20]);
    s.put_code("sha256:bb", big.clone()).await.unwrap();
    assert_eq!(s.get_code("sha256:bb").await.unwrap().map(|b| b.len()), Some(big.len()));
}
