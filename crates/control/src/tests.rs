//! Control actions against a real store and bus (sequences need no runtime).

use std::sync::Arc;

use hangar_api::{DeployStatus, FunctionConfig, RuntimeKind};
use hangar_bus::{Bus as _, LocalBus};
use hangar_store::{FunctionRow, Store};
use hangar_store_sqlite::SqliteStore;

use crate::{Action, Control, ControlError, Done};

async fn control() -> (Control, Arc<dyn Store>, Arc<hangar_scheduler::Scheduler>) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    store.create_namespace("default", 1).await.unwrap();
    let (meter, _writer) = hangar_meter::Meter::start(store.clone(), hangar_meter::Metrics::new());
    let scheduler = Arc::new(hangar_scheduler::Scheduler::new(Vec::new(), meter, 1024, 100));
    let bus = LocalBus::new();
    bus.subscribe(Arc::new(hangar_scheduler::informer::RouteInformer { store: store.clone(), scheduler: scheduler.clone() }));
    // A step for the sequences, stored as a deployed function would be.
    store.put_function(&step(), 0).await.unwrap();
    (Control::new(store.clone(), bus, scheduler.clone()), store, scheduler)
}

/// A WebAssembly function as stored.
fn step() -> FunctionRow {
    FunctionRow {
        namespace: "default".into(),
        name: "step".into(),
        revision: 1,
        config: FunctionConfig::new(RuntimeKind::Wasm),
        code_digest: "sha256:00".into(),
        code_size: 1,
        created_ms: 1,
        updated_ms: 1,
    }
}

fn sequence(memory_mb: u32) -> FunctionConfig {
    let mut c = FunctionConfig::new(RuntimeKind::Sequence);
    c.steps = vec!["step".into()];
    c.memory_mb = memory_mb;
    c
}

fn deploy(config: FunctionConfig) -> Action {
    Action::DeployFunction { namespace: "default".into(), name: "seq".into(), config, code: None, dry_run: false }
}

#[tokio::test]
async fn a_deploy_is_stored_routed_and_unchanged_the_second_time() {
    let (control, store, scheduler) = control().await;
    let Done::Function { status, row } = control.run(deploy(sequence(128))).await.unwrap() else { panic!("a deploy answers with the function") };
    assert_eq!((status, row.revision), (DeployStatus::Created, 1));
    assert_eq!(scheduler.route("default", "seq").map(|s| s.deployment().revision), Some(1), "routable when the action returns");
    let Done::Function { status, .. } = control.run(deploy(sequence(128))).await.unwrap() else { panic!() };
    assert_eq!(status, DeployStatus::Unchanged);
    // A dry run changes nothing.
    let dry = Action::DeployFunction { namespace: "default".into(), name: "seq".into(), config: sequence(256), code: None, dry_run: true };
    let Done::Function { status, row } = control.run(dry).await.unwrap() else { panic!() };
    assert_eq!((status, row.revision), (DeployStatus::Updated, 2));
    assert_eq!(store.get_function("default", "seq").await.unwrap().unwrap().revision, 1);
    control.run(Action::RemoveFunction { namespace: "default".into(), name: "seq".into() }).await.unwrap();
    assert!(scheduler.route("default", "seq").is_none());
    assert!(matches!(control.run(Action::RemoveFunction { namespace: "default".into(), name: "seq".into() }).await, Err(ControlError::NotFound(_))));
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let (control, store, _) = control().await;
    let mut bad = sequence(128);
    bad.steps = vec!["missing".into()];
    assert!(matches!(control.run(deploy(bad)).await, Err(ControlError::Refused { code: "invalid_field", .. })));
    let elsewhere = Action::DeployFunction { namespace: "nope".into(), name: "seq".into(), config: sequence(128), code: None, dry_run: false };
    assert!(matches!(control.run(elsewhere).await, Err(ControlError::NotFound(_))));
    let bad_name = Action::DeployFunction { namespace: "default".into(), name: "Bad Name".into(), config: sequence(128), code: None, dry_run: false };
    assert!(matches!(control.run(bad_name).await, Err(ControlError::Invalid(_))));
    assert!(store.get_function("default", "seq").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_of_one_function_write_each_revision_once() {
    let (control, store, scheduler) = control().await;
    let control = Arc::new(control);
    let mut deploys = tokio::task::JoinSet::new();
    for i in 0..8 {
        let control = control.clone();
        deploys.spawn(async move { control.run(deploy(sequence(128 + i))).await });
    }
    let mut revisions = Vec::new();
    while let Some(done) = deploys.join_next().await {
        match done.unwrap() {
            Ok(Done::Function { row, .. }) => revisions.push(row.revision),
            // Lost the compare-and-set on every attempt: refused whole, never half-written.
            Err(ControlError::Conflict(_)) => {}
            other => panic!("a concurrent deploy: {other:?}"),
        }
    }
    revisions.sort_unstable();
    let n = revisions.len() as u64;
    assert!(n >= 1);
    assert_eq!(revisions, (1..=n).collect::<Vec<_>>(), "each revision won by exactly one deploy, none lost");
    assert_eq!(store.get_function("default", "seq").await.unwrap().unwrap().revision, n);
    assert_eq!(scheduler.route("default", "seq").map(|s| s.deployment().revision), Some(n), "the route follows the store");
}

#[tokio::test]
async fn namespaces_keys_and_triggers() {
    let (control, store, scheduler) = control().await;
    let limits = || hangar_api::NamespaceLimits { max_concurrency: Some(7) };
    control.run(Action::CreateNamespace { name: "team".into(), limits: limits() }).await.unwrap();
    assert_eq!(scheduler.namespace_limit("team"), 7);
    assert!(matches!(control.run(Action::CreateNamespace { name: "team".into(), limits: limits() }).await, Err(ControlError::Store(_))));
    let Done::Key { row, secret } = control.run(Action::CreateKey { namespace: Some("team".into()), name: None }).await.unwrap() else { panic!() };
    assert_eq!(row.hash, crate::hash_secret(&secret));
    assert!(matches!(control.run(Action::RemoveKey { id: row.id.clone(), caller: row.id.clone() }).await, Err(ControlError::Conflict(_))));
    assert!(matches!(control.run(Action::RemoveNamespace { name: "default".into() }).await, Err(ControlError::Conflict(_))));
    control.run(Action::RemoveNamespace { name: "team".into() }).await.unwrap();
    assert!(store.list_keys().await.unwrap().is_empty(), "the namespace's keys went with it");

    let config: hangar_api::events::TriggerConfig = serde_json::from_value(serde_json::json!({"cron": "* * * * *", "function": "step"})).unwrap();
    let put = |config| Action::PutTrigger { namespace: "default".into(), name: "tick".into(), config };
    assert!(matches!(control.run(put(config.clone())).await.unwrap(), Done::Trigger { created: true, .. }));
    assert!(matches!(control.run(put(config)).await.unwrap(), Done::Trigger { created: false, .. }));
    let missing: hangar_api::events::TriggerConfig = serde_json::from_value(serde_json::json!({"cron": "* * * * *", "function": "nope"})).unwrap();
    assert!(matches!(control.run(put(missing)).await, Err(ControlError::Refused { code: "unknown_target", .. })));
    control.run(Action::RemoveTrigger { namespace: "default".into(), name: "tick".into() }).await.unwrap();
}

/// The trigger table follows the store through the bus: a trigger put or removed through an
/// action is in the table or gone when the action returns, and a restore reads them all.
#[tokio::test]
async fn the_trigger_table_follows_the_store_through_the_bus() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let (meter, _writer) = hangar_meter::Meter::start(store.clone(), hangar_meter::Metrics::new());
    let scheduler = Arc::new(hangar_scheduler::Scheduler::new(Vec::new(), meter, 1024, 100));
    let queue = hangar_events::AsyncQueue::open(store.clone(), scheduler.clone(), 1, hangar_events::QueueLimits::default(), "test").await.unwrap();
    let triggers = hangar_events::Triggers::open(store.clone(), queue).await.unwrap();
    let bus = LocalBus::new();
    bus.subscribe(Arc::new(hangar_scheduler::informer::RouteInformer { store: store.clone(), scheduler: scheduler.clone() }));
    bus.subscribe(Arc::new(triggers.clone()));
    let control = Control::new(store.clone(), bus, scheduler.clone());
    // A first start: the default namespace and an admin key, its secret saved first.
    let mut saved = None;
    let secret = control
        .bootstrap(|s| {
            saved = Some(s.to_string());
            Ok(())
        })
        .await
        .unwrap()
        .expect("a first admin key");
    assert_eq!(saved.as_deref(), Some(secret.as_str()));
    assert_eq!(store.list_keys().await.unwrap()[0].hash, crate::hash_secret(&secret));
    assert!(control.bootstrap(|_| panic!("no second key")).await.unwrap().is_none(), "later starts change nothing");

    store.put_function(&step(), 0).await.unwrap();
    let topic = |name: &str| -> hangar_api::events::TriggerConfig { serde_json::from_value(serde_json::json!({"topic": name, "function": "step"})).unwrap() };
    control.put_trigger("default", "on-orders", topic("orders")).await.unwrap();
    assert!(triggers.has_topic("default", "orders"));
    control.remove_trigger("default", "on-orders").await.unwrap();
    assert!(!triggers.has_topic("default", "orders"));

    // Written behind the bus's back (another server, a restart): a restore reads it, routes
    // included.
    let row = hangar_store::TriggerRow { namespace: "default".into(), name: "t".into(), config: topic("audit"), created_ms: 1, last_fired_ms: None };
    store.put_trigger(&row).await.unwrap();
    let seq = FunctionRow { name: "seq".into(), config: sequence(128), code_digest: String::new(), ..step() };
    store.put_function(&seq, 0).await.unwrap();
    assert!(!triggers.has_topic("default", "audit") && scheduler.route("default", "seq").is_none());
    assert_eq!(control.restore().await.unwrap(), 2);
    assert!(triggers.has_topic("default", "audit"));
    assert_eq!(scheduler.route("default", "seq").map(|s| s.deployment().revision), Some(1));
}
