//! OTLP/HTTP export of the spans the store keeps and of every workload's metric samples:
//! protobuf (`opentelemetry-proto`), sent by tasks of their own behind bounded queues. Nothing
//! on the request path waits for them: a span or sample that finds its queue full, or whose
//! batch cannot be sent, is dropped and counted, and the failure logged at most once a minute.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use hangar_api::traces::{SpanKind, SpanStatus, WorkloadRef};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, span, status};
use prometheus_client::metrics::counter::Counter;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::span::{Span, Value};

/// Spans waiting for export at most; more are dropped.
pub const QUEUE: usize = 8192;
/// Most spans sent in one request.
const BATCH: usize = 512;
/// How long a span waits for its batch to fill.
const LINGER: Duration = Duration::from_secs(1);
/// How long a collector may take to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of the export, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ExportCounters {
    pub exported: Counter,
    pub dropped: Counter,
}

/// See the module docs.
pub struct Exporter {
    tx: mpsc::Sender<Arc<Span>>,
    counters: ExportCounters,
}

/// The URL spans are POSTed to: `base` as `OTEL_EXPORTER_OTLP_ENDPOINT` means it (the signal's
/// path appended), unless it already ends in `/v1/traces`.
pub fn traces_url(base: &str) -> Result<String, String> {
    signal_url(base, "traces")
}

/// The URL of `signal` (`traces`, `metrics`) at the collector `base`.
fn signal_url(base: &str, signal: &str) -> Result<String, String> {
    let base = base.trim_end_matches('/');
    let base = base.strip_suffix("/v1/traces").or_else(|| base.strip_suffix("/v1/metrics")).unwrap_or(base);
    let url = format!("{base}/v1/{signal}");
    match url.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => Ok(url),
        _ => Err(format!("`{base}` is not an http(s) URL of an OTLP/HTTP collector (e.g. http://127.0.0.1:4318)")),
    }
}

impl Exporter {
    /// Starts exporting to the collector at `base` (see [`traces_url`]); `node`: this server's
    /// id, kept as `service.instance.id`.
    pub fn start(base: &str, node: &str, counters: ExportCounters) -> Result<Exporter, String> {
        let url = traces_url(base)?;
        let client = reqwest::Client::builder().timeout(SEND_TIMEOUT).build().map_err(|e| format!("an HTTP client for OTLP: {e}"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_loop(rx, client, url, node.to_string(), counters.clone()));
        Ok(Exporter { tx, counters })
    }

    /// Queues a kept span for export, or counts it dropped.
    pub fn export(&self, span: &Arc<Span>) {
        if self.tx.try_send(span.clone()).is_err() {
            self.counters.dropped.inc();
            warn_dropped("the export queue is full (the collector is slow or unreachable)");
        }
    }
}

/// When a drop was last logged (Unix seconds).
static LAST_WARNED: AtomicI64 = AtomicI64::new(0);

/// Logs why spans were dropped, at most once a minute.
fn warn_dropped(why: &str) {
    let now = hangar_api::now_ms() / 1000;
    let last = LAST_WARNED.load(Ordering::Relaxed);
    if now - last >= 60 && LAST_WARNED.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        tracing::warn!(
            "spans are being dropped instead of exported over OTLP: {why} (counted in hangar_otlp_spans_dropped_total; logged at most once a minute)"
        );
    }
}

async fn send_loop(mut rx: mpsc::Receiver<Arc<Span>>, client: reqwest::Client, url: String, node: String, counters: ExportCounters) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // The first span of a batch waits as long as it must; the rest at most LINGER.
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let n = batch.len() as u64;
        let body = encode(&batch, &node);
        batch.clear();
        let sent = client.post(&url).header(http::header::CONTENT_TYPE, "application/x-protobuf").body(body).send().await;
        match sent {
            Ok(r) if r.status().is_success() => {
                counters.exported.inc_by(n);
            }
            Ok(r) => {
                counters.dropped.inc_by(n);
                warn_dropped(&format!("the collector at {url} answered {}", r.status()));
            }
            Err(e) => {
                counters.dropped.inc_by(n);
                warn_dropped(&format!("the collector at {url} could not be reached: {e}"));
            }
        }
    }
}

/// One value of a workload's metric over a sample, for export.
#[derive(Debug, Clone)]
pub struct MetricPoint {
    pub workload: WorkloadRef,
    /// `hangar.requests`, `hangar.duration_p95`, ...
    pub name: String,
    pub unit: &'static str,
    pub value: f64,
    /// A count of what happened in the sample (a delta sum), rather than a gauge.
    pub count: bool,
}

/// Exports metric samples (see the module docs).
pub struct MetricsExporter {
    tx: mpsc::Sender<(u64, u64, Vec<MetricPoint>)>,
    counters: ExportCounters,
}

impl MetricsExporter {
    /// Starts exporting to the collector at `base` (`/v1/metrics` appended).
    pub fn start(base: &str, node: &str, counters: ExportCounters) -> Result<MetricsExporter, String> {
        let url = signal_url(base, "metrics")?;
        let client = reqwest::Client::builder().timeout(SEND_TIMEOUT).build().map_err(|e| format!("an HTTP client for OTLP: {e}"))?;
        // A few samples' worth: a collector that is down loses the samples, not memory.
        let (tx, mut rx) = mpsc::channel::<(u64, u64, Vec<MetricPoint>)>(6);
        let node = node.to_string();
        let sent_counters = counters.clone();
        tokio::spawn(async move {
            while let Some((start_s, end_s, points)) = rx.recv().await {
                let n = points.len() as u64;
                let body = encode_metrics(&points, start_s, end_s, &node);
                let sent = client.post(&url).header(http::header::CONTENT_TYPE, "application/x-protobuf").body(body).send().await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        sent_counters.exported.inc_by(n);
                    }
                    Ok(r) => {
                        sent_counters.dropped.inc_by(n);
                        warn_dropped(&format!("the collector at {url} answered {} to metrics", r.status()));
                    }
                    Err(e) => {
                        sent_counters.dropped.inc_by(n);
                        warn_dropped(&format!("the collector at {url} could not be reached: {e}"));
                    }
                };
            }
        });
        Ok(MetricsExporter { tx, counters })
    }

    /// Queues one sample's points (from `start_s` to `end_s`), or counts them dropped.
    pub fn export(&self, start_s: u64, end_s: u64, points: Vec<MetricPoint>) {
        let n = points.len() as u64;
        if n > 0 && self.tx.try_send((start_s, end_s, points)).is_err() {
            self.counters.dropped.inc_by(n);
            warn_dropped("the metrics export queue is full (the collector is slow or unreachable)");
        }
    }
}

/// The resource attributes of a workload's signals (or the platform's own).
fn resource(w: Option<&WorkloadRef>, node: &str) -> Resource {
    let mut attributes = vec![string("service.instance.id", node)];
    match w {
        Some(w) => {
            attributes.push(string("service.name", format!("{}/{}", w.namespace, w.name)));
            attributes.push(string("service.namespace", w.namespace.clone()));
            attributes.push(string("hangar.workload.kind", w.kind.as_str()));
        }
        None => attributes.push(string("service.name", "hangar")),
    }
    Resource { attributes, ..Default::default() }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope { name: "hangar".into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }
}

/// `points` of one sample as an OTLP metrics request: one resource per workload; counts as
/// delta sums, the rest as gauges.
pub fn encode_metrics(points: &[MetricPoint], start_s: u64, end_s: u64, node: &str) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
    };
    let mut by_workload: Vec<(&WorkloadRef, Vec<Metric>)> = Vec::new();
    for p in points {
        let point = NumberDataPoint {
            start_time_unix_nano: start_s * 1_000_000_000,
            time_unix_nano: end_s * 1_000_000_000,
            value: Some(number_data_point::Value::AsDouble(p.value)),
            ..Default::default()
        };
        let data = match p.count {
            true => metric::Data::Sum(Sum { data_points: vec![point], aggregation_temporality: AggregationTemporality::Delta as i32, is_monotonic: true }),
            false => metric::Data::Gauge(Gauge { data_points: vec![point] }),
        };
        let m = Metric { name: p.name.clone(), unit: p.unit.into(), data: Some(data), ..Default::default() };
        match by_workload.iter_mut().find(|(w, _)| **w == p.workload) {
            Some((_, ms)) => ms.push(m),
            None => by_workload.push((&p.workload, vec![m])),
        }
    }
    let resource_metrics = by_workload
        .into_iter()
        .map(|(w, metrics)| ResourceMetrics {
            resource: Some(resource(Some(w), node)),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope()), metrics, ..Default::default() }],
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }.encode_to_vec()
}

fn string(key: &str, v: impl Into<String>) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }), ..Default::default() }
}

fn attribute(key: &str, v: &Value) -> KeyValue {
    let value = match v {
        Value::Str(s) => any_value::Value::StringValue(s.clone()),
        Value::Int(i) => any_value::Value::IntValue(*i),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
    };
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

/// `spans` as an OTLP request: one resource per workload (`service.name` = `NAMESPACE/NAME`,
/// as a collector groups them), the platform's own spans under `hangar`.
pub fn encode(spans: &[Arc<Span>], node: &str) -> Vec<u8> {
    let mut by_workload: Vec<(Option<&WorkloadRef>, Vec<opentelemetry_proto::tonic::trace::v1::Span>)> = Vec::new();
    for s in spans {
        let w = s.workload.as_ref();
        let at = match by_workload.iter().position(|(k, _)| *k == w) {
            Some(i) => i,
            None => {
                by_workload.push((w, Vec::new()));
                by_workload.len() - 1
            }
        };
        by_workload[at].1.push(to_proto(s));
    }
    let resource_spans = by_workload
        .into_iter()
        .map(|(w, spans)| ResourceSpans {
            resource: Some(resource(w, node)),
            scope_spans: vec![ScopeSpans { scope: Some(scope()), spans, ..Default::default() }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }.encode_to_vec()
}

fn to_proto(s: &Span) -> opentelemetry_proto::tonic::trace::v1::Span {
    let kind = match s.kind {
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Producer => span::SpanKind::Producer,
        SpanKind::Consumer => span::SpanKind::Consumer,
    };
    let code = match s.status {
        SpanStatus::Ok => status::StatusCode::Unset,
        SpanStatus::Error => status::StatusCode::Error,
    };
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: s.context.trace_id.0.to_vec(),
        span_id: s.context.span_id.0.to_vec(),
        parent_span_id: s.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags: u32::from(s.context.sampled) | 0x100,
        name: s.name.clone(),
        kind: kind as i32,
        start_time_unix_nano: s.start_ns,
        end_time_unix_nano: s.end_ns,
        attributes: s.attributes.iter().map(|(k, v)| attribute(k, v)).collect(),
        status: Some(opentelemetry_proto::tonic::trace::v1::Status { message: s.status_message.clone().unwrap_or_default(), code: code as i32 }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::SpanContext;
    use crate::span::Started;

    #[test]
    fn spans_encode_as_otlp_grouped_by_workload() {
        let root = SpanContext::root(true);
        let w = WorkloadRef { kind: hangar_api::WorkloadKind::Function, namespace: "team".into(), name: "hello".into() };
        let spans = vec![
            Arc::new(Span::ended(root.child(), Some(root.span_id), "hello", SpanKind::Server, Started::now()).with("faas.coldstart", true).of(w.clone())),
            Arc::new(Span::ended(root, None, "GET", SpanKind::Server, Started::now()).failed("502 Bad Gateway")),
            Arc::new(Span::ended(root.child(), Some(root.span_id), "instance cold", SpanKind::Internal, Started::now()).of(w)),
        ];
        let req = ExportTraceServiceRequest::decode(encode(&spans, "node-1").as_slice()).unwrap();
        assert_eq!(req.resource_spans.len(), 2);
        let names: Vec<String> = req
            .resource_spans
            .iter()
            .map(|r| r.resource.as_ref().unwrap().attributes.iter().find(|a| a.key == "service.name").unwrap().value.clone().unwrap())
            .map(|v| match v.value {
                Some(any_value::Value::StringValue(s)) => s,
                _ => String::new(),
            })
            .collect();
        assert_eq!(names, ["team/hello", "hangar"]);
        let fn_spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(fn_spans.len(), 2);
        assert_eq!(fn_spans[0].trace_id, root.trace_id.0.to_vec());
        assert_eq!(fn_spans[0].parent_span_id, root.span_id.0.to_vec());
        assert_eq!(fn_spans[0].kind, span::SpanKind::Server as i32);
        let gateway = &req.resource_spans[1].scope_spans[0].spans[0];
        assert!(gateway.parent_span_id.is_empty());
        assert_eq!(gateway.status.as_ref().unwrap().code, status::StatusCode::Error as i32);
    }

    #[test]
    fn metric_samples_encode_as_delta_sums_and_gauges() {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        let w = WorkloadRef { kind: hangar_api::WorkloadKind::Function, namespace: "team".into(), name: "hello".into() };
        let points = vec![
            MetricPoint { workload: w.clone(), name: "hangar.requests".into(), unit: "1", value: 12.0, count: true },
            MetricPoint { workload: w, name: "hangar.in_flight".into(), unit: "1", value: 2.0, count: false },
        ];
        let req = ExportMetricsServiceRequest::decode(encode_metrics(&points, 100, 110, "n").as_slice()).unwrap();
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 2);
        match &metrics[0].data {
            Some(Data::Sum(s)) => {
                assert!(s.is_monotonic && s.aggregation_temporality == 1);
                assert_eq!((s.data_points[0].start_time_unix_nano, s.data_points[0].time_unix_nano), (100_000_000_000, 110_000_000_000));
            }
            other => panic!("a sum: {other:?}"),
        }
        assert!(matches!(metrics[1].data, Some(Data::Gauge(_))));
        assert_eq!(signal_url("http://c:4318/v1/traces", "metrics").unwrap(), "http://c:4318/v1/metrics");
    }

    #[test]
    fn endpoints_take_the_signal_path() {
        assert_eq!(traces_url("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces/").unwrap(), "http://c:4318/v1/traces");
        assert!(traces_url("127.0.0.1:4318").is_err() && traces_url("ftp://x").is_err() && traces_url("").is_err());
    }
}
