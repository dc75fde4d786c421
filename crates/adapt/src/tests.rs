//! Adaptive mode's decisions on fakes and a manual clock: looks are rounds, time only moves
//! when a test moves it.

use std::sync::Mutex;

use hangar_core::ManualClock;

use super::*;

const SECOND: Duration = Duration::from_secs(1);

/// One function in auto mode, its records, and the warm instances asked for.
struct FakeFunctions {
    row: FunctionRow,
    records: Mutex<Vec<InvocationRecord>>,
    warm: Mutex<Vec<u32>>,
}

#[async_trait]
impl Functions for FakeFunctions {
    async fn deployed(&self) -> Result<Vec<FunctionRow>, String> {
        Ok(vec![self.row.clone()])
    }
    async fn invocations(&self, _ns: &str, _name: &str, since_ms: i64, limit: u32) -> Result<Vec<InvocationRecord>, String> {
        let records = self.records.lock().unwrap();
        Ok(records.iter().filter(|r| r.started_ms >= since_ms).take(limit as usize).cloned().collect())
    }
    async fn set_warm(&self, _ns: &str, _name: &str, revision: u64, n: u32) -> bool {
        assert_eq!(revision, self.row.revision);
        self.warm.lock().unwrap().push(n);
        true
    }
}

/// One service in auto mode with counters the test moves.
struct FakeServices {
    view: Mutex<ServiceView>,
}

#[async_trait]
impl Services for FakeServices {
    async fn running(&self) -> Result<Vec<ServiceView>, String> {
        Ok(vec![self.view.lock().unwrap().clone()])
    }
    fn set_min_instances(&self, _ns: &str, _name: &str, n: u32) {
        self.view.lock().unwrap().min_instances = n;
    }
}

#[derive(Default)]
struct Log(Mutex<Vec<ModeSwitch>>);

#[async_trait]
impl SwitchLog for Log {
    async fn record(&self, _ns: &str, _name: &str, _at: i64, switch: &ModeSwitch) {
        self.0.lock().unwrap().push(switch.clone());
    }
}

fn function(config: serde_json::Value) -> FunctionRow {
    FunctionRow {
        namespace: "default".into(),
        name: "auto".into(),
        revision: 1,
        config: serde_json::from_value(config).unwrap(),
        code_digest: String::new(),
        code_size: 0,
        created_ms: 0,
        updated_ms: 0,
    }
}

fn record(started_ms: i64, start: hangar_api::StartKind) -> InvocationRecord {
    InvocationRecord {
        id: format!("inv-{started_ms}"),
        namespace: "default".into(),
        function: "auto".into(),
        revision: 1,
        trigger: hangar_api::Trigger::Http,
        started_ms,
        duration_us: 30_000,
        billed_ms: 30,
        memory_mb: 128,
        start,
        ending: hangar_api::Ending { status: 200, response_bytes: 2, ..Default::default() },
        parent_id: None,
    }
}

#[test]
fn a_change_needs_the_same_answer_streak_looks_in_a_row() {
    let mut s = Streak::default();
    assert!(!s.agrees(0, 1) && !s.agrees(0, 1));
    // Another answer, or none, starts over.
    assert!(!s.agrees(0, 2) && !s.agrees(0, 0) && !s.agrees(0, 1) && !s.agrees(0, 1));
    assert!(s.agrees(0, 1), "the third look in a row");
}

#[tokio::test]
async fn a_function_whose_cold_starts_break_its_objective_is_warmed_kept_while_busy_and_let_go_when_idle() {
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let functions = Arc::new(FakeFunctions {
        row: function(serde_json::json!({"runtime": "python3", "handler": "app.handler", "mode": "auto", "latency_objective_ms": 1})),
        records: Mutex::default(),
        warm: Mutex::default(),
    });
    let log = Arc::new(Log::default());
    let mut a = Adapter::new(functions.clone(), None, log.clone(), clock.clone(), None, 5 * SECOND);
    let call = |start| functions.records.lock().unwrap().push(record(clock.now_ms(), start));

    // Cold calls, one a second: warmed on the third look that agrees, not before.
    for look in 1..=3 {
        call(hangar_api::StartKind::Cold);
        clock.advance(SECOND);
        a.look().await;
        assert_eq!(log.0.lock().unwrap().len(), usize::from(look == 3), "look {look}");
    }
    assert_eq!(*functions.warm.lock().unwrap(), [1]);
    let warmed = log.0.lock().unwrap()[0].clone();
    assert_eq!((warmed.kind, warmed.from_warm, warmed.to_warm), (WorkloadKind::Function, 0, 1));
    assert!(warmed.reason.contains("objective of 1 ms") && warmed.reason.contains("3 looks in a row"), "{}", warmed.reason);

    // The same traffic, now served warm (no cold starts to see): it stays warm.
    for _ in 0..10 {
        call(hangar_api::StartKind::Provisioned);
        clock.advance(SECOND);
        a.look().await;
    }
    assert_eq!(log.0.lock().unwrap().len(), 1, "no flapping while the traffic holds");

    // Idle: once the window holds no request, three looks in a row send it back to zero.
    let mut looks = 0;
    while log.0.lock().unwrap().len() == 1 {
        clock.advance(SECOND);
        a.look().await;
        looks += 1;
        assert!(looks <= 8, "still warm after {looks} idle looks");
    }
    // The fourth idle look sees one request in the window, under half the rate it was warmed
    // at; the fifth and sixth see none: three looks in a row asked for zero.
    assert_eq!(looks, 6);
    let cooled = log.0.lock().unwrap()[1].clone();
    assert_eq!((cooled.from_warm, cooled.to_warm), (1, 0));
    assert!(cooled.reason.contains("no request in the last 5s"), "{}", cooled.reason);
    assert_eq!(*functions.warm.lock().unwrap(), [1, 0]);
}

#[tokio::test]
async fn a_function_in_fixed_mode_is_left_alone() {
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let functions = Arc::new(FakeFunctions {
        row: function(serde_json::json!({"runtime": "python3", "handler": "app.handler", "latency_objective_ms": 1})),
        records: Mutex::default(),
        warm: Mutex::default(),
    });
    let log = Arc::new(Log::default());
    let mut a = Adapter::new(functions.clone(), None, log.clone(), clock.clone(), None, 5 * SECOND);
    for _ in 0..10 {
        functions.records.lock().unwrap().push(record(clock.now_ms(), hangar_api::StartKind::Cold));
        clock.advance(SECOND);
        a.look().await;
    }
    assert!(log.0.lock().unwrap().is_empty() && functions.warm.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_idle_service_scales_to_zero_and_busy_traffic_warms_it_again() {
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let config: ServiceConfig = serde_json::from_value(serde_json::json!({"image": "web", "mode": "auto", "memory_mb": 64, "cpus": 0.25})).unwrap();
    let services = Arc::new(FakeServices {
        view: Mutex::new(ServiceView {
            namespace: "default".into(),
            name: "web".into(),
            revision: 1,
            config,
            min_instances: 1,
            requests: 0,
            busy_ms: 0,
            recent_ms: Vec::new(),
        }),
    });
    let functions = Arc::new(FakeFunctions { row: function(serde_json::json!({"runtime": "wasm"})), records: Mutex::default(), warm: Mutex::default() });
    let log = Arc::new(Log::default());
    let mut a = Adapter::new(functions, Some(services.clone()), log.clone(), clock.clone(), None, 3 * SECOND);

    // No request: nothing is decided before a whole window was seen, then three looks agree.
    let mut looks = 0;
    while log.0.lock().unwrap().is_empty() {
        clock.advance(SECOND);
        a.look().await;
        looks += 1;
        assert!(looks <= 10, "not scaled to zero after {looks} looks");
    }
    let s = log.0.lock().unwrap()[0].clone();
    assert_eq!((s.kind, s.from_warm, s.to_warm), (WorkloadKind::Service, 1, 0));
    assert!(s.reason.contains("no request in the last 3s"), "{}", s.reason);
    assert_eq!(services.view.lock().unwrap().min_instances, 0);

    // Steady and busy: a thousand short requests a second cost less on an always-on instance
    // than as a function.
    let mut looks = 0;
    while log.0.lock().unwrap().len() == 1 {
        {
            let mut v = services.view.lock().unwrap();
            v.requests += 1_000;
            v.busy_ms += 2_000;
            v.recent_ms = vec![2; 100];
        }
        clock.advance(SECOND);
        a.look().await;
        looks += 1;
        assert!(looks <= 10, "not warmed after {looks} busy looks: {:?}", log.0.lock().unwrap());
    }
    let s = log.0.lock().unwrap()[1].clone();
    assert_eq!((s.from_warm, s.to_warm), (0, 1));
    assert!(s.reason.contains("always-on service costs"), "{}", s.reason);
    assert_eq!(services.view.lock().unwrap().min_instances, 1);
}
