//! `hangar traces` and `hangar trace ID`: the traces a server kept, and one as a text waterfall.

use std::collections::HashMap;

use anyhow::Result;
use hangar_api::traces::{SpanStatus, SpanView, TraceList, TraceView};
use reqwest::Method;

use crate::args::{Cli, Output};
use crate::util::{client, print_json, table};

/// Width of a waterfall's bars, in characters.
const BAR: usize = 32;

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

pub async fn list(cli: &Cli, name: Option<&str>, status: Option<&str>, since: &str, min_duration: Option<&str>, limit: u32) -> Result<()> {
    let client = client(cli);
    let mut q: Vec<(&str, String)> = vec![("since", since.to_string()), ("limit", limit.to_string())];
    for (k, v) in [("namespace", cli.namespace.as_deref()), ("workload", name), ("status", status), ("min_duration", min_duration)] {
        if let Some(v) = v {
            q.push((k, v.to_string()));
        }
    }
    let list: TraceList = client.json(client.request(Method::GET, "/v1/traces").query(&q)).await?;
    match cli.output {
        Output::Json => print_json(&list)?,
        Output::Table if list.items.is_empty() => {
            println!("no traces kept in that time (every error and slow trace is kept, and a share of the others: `hangar up --trace-sample`)")
        }
        Output::Table => {
            let mut t = table(&["TRACE", "STARTED", "DURATION", "STATUS", "SPANS", "ROOT", "WORKLOADS"]);
            for s in &list.items {
                let workloads: Vec<String> = s.workloads.iter().map(|w| format!("{} {}/{}", w.kind, w.namespace, w.name)).collect();
                t.add_row(vec![
                    s.trace_id.clone(),
                    hangar_api::rfc3339((s.start_us / 1000) as i64),
                    ms(s.duration_us),
                    s.status.to_string(),
                    s.spans.to_string(),
                    s.root.clone(),
                    workloads.join(", "),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

pub async fn show(cli: &Cli, id: &str) -> Result<()> {
    let client = client(cli);
    let q: Vec<(&str, String)> = cli.namespace.iter().map(|ns| ("namespace", ns.clone())).collect();
    let trace: TraceView = client.json(client.request(Method::GET, &format!("/v1/traces/{id}")).query(&q)).await?;
    match cli.output {
        Output::Json => print_json(&trace)?,
        Output::Table => print!("{}", waterfall(&trace)),
    }
    Ok(())
}

/// The spans as a tree (children under their parent, by start), each with its offset from
/// the trace's start, a bar where it ran, and its duration.
pub fn waterfall(trace: &TraceView) -> String {
    let start = trace.spans.iter().map(|s| s.start_us).min().unwrap_or(0);
    let end = trace.spans.iter().map(|s| s.start_us + s.duration_us).max().unwrap_or(start);
    let total = end.saturating_sub(start).max(1);
    let ids: std::collections::HashSet<&str> = trace.spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<Option<&str>, Vec<&SpanView>> = HashMap::new();
    for s in &trace.spans {
        // A span whose parent is not here (another node's, or the caller's) starts a tree.
        let parent = s.parent_span_id.as_deref().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(s);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_us);
    }
    let mut out = format!("trace {}  {}  {} spans\n", trace.trace_id, ms(total), trace.spans.len());
    let mut stack: Vec<(&SpanView, usize)> = children.get(&None).into_iter().flatten().rev().map(|s| (*s, 0)).collect();
    while let Some((s, depth)) = stack.pop() {
        let from = ((s.start_us - start) as f64 / total as f64 * BAR as f64) as usize;
        let width = ((s.duration_us as f64 / total as f64 * BAR as f64).ceil() as usize).clamp(1, BAR - from.min(BAR - 1));
        let bar = format!("{}{}{}", " ".repeat(from.min(BAR - 1)), "█".repeat(width), " ".repeat(BAR.saturating_sub(from.min(BAR - 1) + width)));
        let mut line = format!("{:>10}  {bar}  {:>10}  {}{}", ms(s.start_us - start), ms(s.duration_us), "  ".repeat(depth), s.name);
        if let Some(w) = &s.workload {
            line.push_str(&format!("  [{} {}/{}]", w.kind, w.namespace, w.name));
        }
        for key in ["http.response.status_code", "hangar.start", "faas.trigger", "faas.invocation_id", "messaging.operation.type"] {
            if let Some(v) = s.attributes.get(key) {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                line.push_str(&format!("  {key}={v}"));
            }
        }
        if s.status == SpanStatus::Error {
            line.push_str(&format!("  ERROR: {}", s.status_message.as_deref().unwrap_or("failed")));
        }
        out.push_str(line.trim_end());
        out.push('\n');
        for c in children.get(&Some(s.span_id.as_str())).into_iter().flatten().rev() {
            stack.push((c, depth + 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_api::traces::SpanKind;

    fn span(id: &str, parent: Option<&str>, name: &str, start_us: u64, duration_us: u64) -> SpanView {
        SpanView {
            span_id: id.into(),
            parent_span_id: parent.map(Into::into),
            name: name.into(),
            kind: SpanKind::Server,
            start_us,
            duration_us,
            status: SpanStatus::Ok,
            status_message: None,
            workload: None,
            attributes: Default::default(),
        }
    }

    #[test]
    fn a_waterfall_nests_children_under_their_parent() {
        let t = TraceView {
            trace_id: "t".into(),
            spans: vec![span("a", None, "GET", 1000, 4000), span("c", Some("b"), "instance cold", 1500, 1000), span("b", Some("a"), "hello", 1200, 3000)],
        };
        let text = waterfall(&t);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("trace t  4.00 ms  3 spans"), "{text}");
        assert!(lines[1].ends_with("GET") && lines[2].ends_with("  hello") && lines[3].ends_with("    instance cold"), "{text}");
        assert!(lines[1].contains(&"█".repeat(BAR)), "the root spans the whole trace: {text}");
    }
}
