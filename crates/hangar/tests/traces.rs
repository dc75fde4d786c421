//! Traces across every hop, read back through `/v1/traces` and the CLI: a function URL → a
//! WebAssembly function → its outbound call to a service; an asynchronous invocation → a
//! three-step sequence → its on-failure function; Lambda code sees the trace as X-Ray's
//! `_X_AMZN_TRACE_ID`. The service part needs root and runc (scripts/test.sh).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Server, eventually, python_fn};
use serde_json::Value;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str) -> String {
    format!("00-{trace}-{CALLER_SPAN}-01")
}

/// The spans of trace `id` once `n` of them are there.
async fn spans(s: &Server, id: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} spans of trace {id}"), Duration::from_secs(30), || async {
        let r = s.get(&format!("/v1/traces/{id}")).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        let spans = v["spans"].as_array().cloned().unwrap_or_default();
        if spans.len() >= n { Ok(spans) } else { Err(format!("{v}")) }
    })
    .await
}

/// The one span named `name` (panics, showing them all, if there is not exactly one).
fn one<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    let found: Vec<&Value> = spans.iter().filter(|s| s["name"] == name).collect();
    assert_eq!(found.len(), 1, "one span named {name:?} in {}", serde_json::to_string_pretty(spans).unwrap());
    found[0]
}

fn child_of(child: &Value, parent: &Value) -> bool {
    child["parent_span_id"] == parent["span_id"]
}

/// Whether `inner` starts no earlier than `outer` and ends no later (1 ms of slack for the
/// response body, which a gateway span does not wait for).
fn within(inner: &Value, outer: &Value) -> bool {
    let (is, id) = (inner["start_us"].as_u64().unwrap(), inner["duration_us"].as_u64().unwrap());
    let (os, od) = (outer["start_us"].as_u64().unwrap(), outer["duration_us"].as_u64().unwrap());
    is >= os && is + id <= os + od + 1000
}

#[tokio::test]
async fn a_trace_runs_from_a_function_url_through_wasm_to_a_service_it_calls() {
    let s = Server::start_with(&["--trace-sample", "1"]);
    let work = tempfile::tempdir().unwrap();
    let env = "#!/bin/busybox sh\necho Content-Type: text/plain\necho\necho \"traceparent=$HTTP_TRACEPARENT\"\n";
    let image = common::oci::cgi_image(work.path(), "tp", "tp", env);
    s.ok(&["image", "import", &image, "--name", "tp:1"]);
    s.ok(&["svc", "deploy", "web", "--image", "tp:1", "--public"]);
    let gateway = s.url.trim_start_matches("http://").to_string();
    s.deploy("probe", "probe", &["--allow-outbound", &gateway]);

    let target = format!("{}/svc/default/web/cgi-bin/tp", s.url).replace(':', "%3A").replace('/', "%2F");
    let r = s.get(&format!("/fn/default/probe/fetch?url={target}")).header("traceparent", traceparent(TRACE)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let invocation = r.headers()["x-hangar-invocation-id"].to_str().unwrap().to_string();
    let seen_by_service = r.text().await.unwrap();

    let spans = spans(&s, TRACE, 5).await;
    let fn_ingress = one(&spans, "GET /fn/{namespace}/{name}/*");
    let probe = one(&spans, "probe");
    let instance = spans.iter().find(|s| s["name"].as_str().unwrap().starts_with("instance ")).unwrap();
    let svc_ingress = one(&spans, "GET /svc/{namespace}/{name}/*");
    let svc_client = one(&spans, "GET");
    // The links: caller → gateway → invocation → (instance, outbound call → gateway → instance).
    assert_eq!(fn_ingress["parent_span_id"], CALLER_SPAN);
    assert!(child_of(probe, fn_ingress) && child_of(instance, probe) && child_of(svc_ingress, probe) && child_of(svc_client, svc_ingress));
    // The service's instance got the client span as its parent.
    assert_eq!(seen_by_service.trim(), format!("traceparent=00-{TRACE}-{}-01", svc_client["span_id"].as_str().unwrap()));
    // Attributes per the semantic conventions.
    let a = &probe["attributes"];
    assert_eq!(
        (a["faas.invocation_id"].as_str(), a["faas.trigger"].as_str(), a["faas.coldstart"].as_bool()),
        (Some(invocation.as_str()), Some("http"), Some(true))
    );
    assert_eq!(probe["kind"], "server");
    assert_eq!(probe["workload"]["name"], "probe");
    assert_eq!(fn_ingress["attributes"]["http.response.status_code"], 200);
    assert_eq!(fn_ingress["attributes"]["http.request.method"], "GET");
    assert_eq!(svc_client["kind"], "client");
    assert_eq!(svc_client["workload"]["kind"], "service");
    assert_eq!(instance["attributes"]["hangar.instance.start"], "cold");
    // Timings nest.
    assert!(within(svc_ingress, probe) && within(svc_client, svc_ingress) && within(instance, probe), "{}", serde_json::to_string_pretty(&spans).unwrap());

    // Found by search, and drawn by the CLI.
    let list: Value = s.get("/v1/traces?workload=web&kind=service").send().await.unwrap().json().await.unwrap();
    assert!(list["items"].as_array().unwrap().iter().any(|t| t["trace_id"] == TRACE), "{list}");
    let list: Value = s.get("/v1/traces?min_duration=1h").send().await.unwrap().json().await.unwrap();
    assert!(list["items"].as_array().unwrap().is_empty());
    let out = s.ok(&["trace", TRACE]);
    assert!(
        out.starts_with(&format!("trace {TRACE}")) && out.contains("  probe  [function default/probe]") && out.contains("  GET  [service default/web]"),
        "{out}"
    );
    let out = s.ok(&["traces", "probe"]);
    assert!(out.contains(TRACE), "{out}");

    // A malformed traceparent starts a new trace; it never fails the request.
    let r = s.get("/fn/default/probe/counter").header("traceparent", "00-zz-not-a-trace").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Bad queries name the parameter.
    for (q, field) in [("since=soon", "since"), ("status=maybe", "status"), ("limit=0", "limit"), ("kind=vm", "kind")] {
        let (status, _, message) = common::error_code(s.get(&format!("/v1/traces?{q}")).send().await.unwrap()).await;
        assert!(status == 400 && message.contains(field), "{q}: {status} {message}");
    }
    assert_eq!(s.get("/v1/traces/not-a-trace").send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn an_async_sequence_and_its_on_failure_function_stay_in_the_callers_trace() {
    let s = Server::start_with(&["--trace-sample", "1"]);
    let code = r#"
def ok(event, context):
    return event
def boom(event, context):
    raise ValueError("step three fails")
def dlq(event, context):
    print("dead letter", event["requestContext"]["condition"])
    return {}
"#;
    let _a = python_fn(&s, "one", code, "ok", &[]);
    let _b = python_fn(&s, "two", code, "ok", &[]);
    let _c = python_fn(&s, "three", code, "boom", &[]);
    let _d = python_fn(&s, "dlq", code, "dlq", &[]);
    s.ok(&["fn", "deploy", "flow", "--sequence", "one,two,three", "--retries", "0", "--on-failure", "dlq"]);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = s
        .http()
        .post(format!("{}/v1/functions/flow/invoke", s.url))
        .bearer_auth(&s.admin_key)
        .header("x-hangar-invocation-type", "Event")
        .header("traceparent", traceparent(trace))
        .body(r#"{"order": 7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let spans = spans(&s, trace, 13).await;
    let ingress = one(&spans, "POST /v1/functions/{name}/invoke");
    let send = one(&spans, "send flow");
    let process = one(&spans, "process flow");
    let flow = one(&spans, "flow");
    let steps: Vec<&Value> = ["one", "two", "three"].iter().map(|n| one(&spans, n)).collect();
    let send_dlq = one(&spans, "send dlq");
    let process_dlq = one(&spans, "process dlq");
    let dlq = one(&spans, "dlq");
    assert_eq!(ingress["parent_span_id"], CALLER_SPAN);
    assert!(child_of(send, ingress) && child_of(process, send) && child_of(flow, process));
    assert!(steps.iter().all(|step| child_of(step, flow)), "each step is a child of the sequence");
    assert!(child_of(send_dlq, send) && child_of(process_dlq, send_dlq) && child_of(dlq, process_dlq));
    // Kinds, attributes and failures.
    assert_eq!((send["kind"].as_str(), process["kind"].as_str()), (Some("producer"), Some("consumer")));
    assert_eq!(send["attributes"]["messaging.operation.type"], "send");
    assert_eq!(process["attributes"]["messaging.destination.name"], "flow");
    assert_eq!(flow["attributes"]["faas.trigger"], "other");
    assert_eq!(steps[2]["status"], "error");
    assert!(steps[2]["status_message"].as_str().unwrap().contains("step three fails"), "{}", steps[2]);
    assert_eq!((process["status"].as_str(), flow["status"].as_str(), dlq["status"].as_str()), (Some("error"), Some("error"), Some("ok")));
    // Steps run in order, inside the sequence's span.
    assert!(steps.windows(2).all(|w| w[0]["start_us"].as_u64() <= w[1]["start_us"].as_u64()));
    assert!(steps.iter().all(|step| within(step, flow)));

    let by_kind: HashMap<&str, usize> = spans.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s["kind"].as_str().unwrap()).or_default() += 1;
        m
    });
    assert_eq!(by_kind.get("producer"), Some(&2), "{by_kind:?}");
}

#[tokio::test]
async fn python_code_sees_the_trace_as_xray_and_a_namespace_key_sees_only_its_own() {
    let s = Server::start_with(&["--trace-sample", "1"]);
    let code = "import os\ndef handler(event, context):\n    return {'trace': os.environ.get('_X_AMZN_TRACE_ID')}\n";
    let _code = python_fn(&s, "xray", code, "handler", &[]);
    let r = s
        .http()
        .post(format!("{}/v1/functions/xray/invoke", s.url))
        .bearer_auth(&s.admin_key)
        .header("traceparent", traceparent(TRACE))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let spans = spans(&s, TRACE, 2).await;
    let invocation = one(&spans, "xray");
    let want = format!("Root=1-{}-{};Parent={};Sampled=1", &TRACE[..8], &TRACE[8..], invocation["span_id"].as_str().unwrap());
    assert_eq!(v["trace"], want.as_str());

    // Another namespace's key sees neither the trace nor it in a search.
    s.ok(&["ns", "create", "other"]);
    let key = s.ok(&["key", "create", "--namespace", "other"]).lines().last().unwrap().trim().to_string();
    let r = s.http().get(format!("{}/v1/traces/{TRACE}", s.url)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let list: Value = s.http().get(format!("{}/v1/traces", s.url)).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    assert!(list["items"].as_array().unwrap().is_empty(), "{list}");
    let r = s.http().get(format!("{}/v1/traces?namespace=default", s.url)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

type Spans = tokio::sync::mpsc::UnboundedReceiver<(String, opentelemetry_proto::tonic::trace::v1::Span)>;
type Metrics = tokio::sync::mpsc::UnboundedReceiver<(String, String, f64)>;

/// The `service.name` of an OTLP resource.
fn service_of(r: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    let service = r.iter().flat_map(|r| r.attributes.iter()).find(|a| a.key == "service.name");
    match service.and_then(|a| a.value.clone()).and_then(|v| v.value) {
        Some(Any::StringValue(s)) => s,
        _ => String::new(),
    }
}

/// An OTLP/HTTP receiver on loopback: every span it is sent, as (service.name, span), and every
/// metric point, as (service.name, metric, value).
async fn receiver() -> (String, Spans, Metrics, tokio::task::JoinHandle<()>) {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value as Number};
    use prost::Message as _;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (mtx, mrx) = tokio::sync::mpsc::unbounded_channel();
    let metrics = axum::routing::post(move |body: bytes::Bytes| {
        let mtx = mtx.clone();
        async move {
            let req = ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics request");
            for r in req.resource_metrics {
                let service = service_of(r.resource.as_ref());
                for m in r.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                    let points = match m.data {
                        Some(Data::Sum(s)) => s.data_points,
                        Some(Data::Gauge(g)) => g.data_points,
                        _ => Vec::new(),
                    };
                    for p in points {
                        if let Some(Number::AsDouble(v)) = p.value {
                            let _ = mtx.send((service.clone(), m.name.clone(), v));
                        }
                    }
                }
            }
            axum::http::StatusCode::OK
        }
    });
    let app = axum::Router::new().route("/v1/metrics", metrics).route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let tx = tx.clone();
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
                for r in req.resource_spans {
                    let service = service_of(r.resource.as_ref());
                    for span in r.scope_spans.into_iter().flat_map(|s| s.spans) {
                        let _ = tx.send((service.clone(), span));
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, rx, mrx, task)
}

#[tokio::test]
async fn kept_spans_are_exported_over_otlp_and_dropped_and_counted_while_the_collector_is_down() {
    let (url, mut received, mut metrics, collector) = receiver().await;
    let s = Server::start_with(&["--trace-sample", "1", "--otlp-endpoint", &url]);
    s.deploy("hello", "hello", &["--public"]);
    let r = s.http().get(format!("{}/fn/default/hello/", s.url)).header("traceparent", traceparent(TRACE)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut mine = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while mine.len() < 3 {
        let (service, span) = tokio::time::timeout_at(deadline, received.recv()).await.expect("spans arrive at the collector within 20 s").unwrap();
        if hex_of(&span.trace_id) == TRACE {
            mine.push((service, span));
        }
    }
    let invocation = mine.iter().find(|(_, s)| s.name == "hello").expect("the invocation's span");
    assert_eq!(invocation.0, "default/hello");
    let gateway = mine.iter().find(|(_, s)| s.name.starts_with("GET")).expect("the gateway's span");
    assert_eq!(hex_of(&gateway.1.parent_span_id), CALLER_SPAN);
    assert_eq!(invocation.1.parent_span_id, gateway.1.span_id);
    assert!(invocation.1.attributes.iter().any(|a| a.key == "faas.invocation_id"));
    assert!(s.metric("hangar_otlp_spans_exported_total").await >= 3.0);
    // The metric history's samples arrive too, as delta sums and gauges per workload.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut requests = 0.0;
    while requests < 1.0 {
        let (service, name, value) = tokio::time::timeout_at(deadline, metrics.recv()).await.expect("metric points within 30 s").unwrap();
        if service == "default/hello" && name == "hangar.requests" {
            requests += value;
        }
    }
    assert_eq!(requests, 1.0);

    // The collector goes away: requests are answered as before; the spans are dropped and counted.
    collector.abort();
    let _ = collector.await;
    for _ in 0..20 {
        assert_eq!(s.http().get(format!("{}/fn/default/hello/", s.url)).send().await.unwrap().status(), 200);
    }
    eventually("dropped spans counted", Duration::from_secs(30), || async {
        let dropped = s.metric("hangar_otlp_spans_dropped_total").await;
        if dropped >= 1.0 { Ok(()) } else { Err(format!("{dropped} dropped")) }
    })
    .await;
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn without_sampling_every_failed_trace_is_kept_and_ok_ones_only_by_the_reservoir() {
    let s = Server::start_with(&["--trace-sample", "0"]);
    s.deploy("probe", "probe", &["--public"]);
    for _ in 0..20 {
        assert_eq!(s.http().get(format!("{}/fn/default/probe/counter", s.url)).send().await.unwrap().status(), 200);
    }
    let failing = "0af7651916cd43dd8448eb211c80319c";
    let r = s.http().get(format!("{}/fn/default/probe/trap", s.url)).header("traceparent", format!("00-{failing}-{CALLER_SPAN}-00")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let errors: Value = s.get("/v1/traces?status=error").send().await.unwrap().json().await.unwrap();
    let errors = errors["items"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["trace_id"], failing);
    // The invocation and the gateway's span (how the instance was obtained, too).
    assert!(errors[0]["spans"].as_u64().unwrap() >= 2, "{errors:?}");
    let ok: Value = s.get("/v1/traces?status=ok").send().await.unwrap().json().await.unwrap();
    let kept = ok["items"].as_array().unwrap().len();
    assert!((1..=5).contains(&kept), "one trace per workload per second is kept; 20 calls took a few seconds at most: {kept}");
}
