//! One log search across functions and services: `GET /v1/logs`, and with `follow=true` a
//! live tail as server-sent events. Functions' lines come from their invocation records (in
//! the store, kept for `--log-retention`); services' from the lines their instances wrote on
//! this node (the last MiB of each).

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use hangar_api::WorkloadKind;
use hangar_api::logs::{LogLine, LogList};
use hangar_store::{InvocationFilter, InvocationRecord};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiQuery};

/// Longest text searched for.
const MAX_Q: usize = 256;
/// Invocation records read per search at most.
const MAX_RECORDS: u32 = 1000;
/// How far back a follower looks for records written late (a call ends, or its batch lands).
const LATE: i64 = 60_000;
/// Live tails one namespace may have open at once.
pub const MAX_FOLLOWERS: u32 = 16;

/// How many live tails each namespace has open.
#[derive(Debug, Default, Clone)]
pub struct Followers(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>);

/// One open tail, counted until it is dropped (the client went away).
struct Following {
    followers: Followers,
    namespace: String,
}

impl Followers {
    fn enter(&self, namespace: &str) -> Result<Following, ApiError> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(namespace.to_string()).or_default();
        if *n >= MAX_FOLLOWERS {
            return Err(ApiError::new(
                http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_followers",
                format!("namespace `{namespace}` already follows {MAX_FOLLOWERS} log tails; close one (or search without follow)"),
            ));
        }
        *n += 1;
        Ok(Following { followers: self.clone(), namespace: namespace.to_string() })
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut open = self.followers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.namespace) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.namespace);
            }
        }
    }
}

/// Query of `GET /v1/logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    pub namespace: Option<String>,
    /// Only this function's or service's lines.
    pub workload: Option<String>,
    /// `function` or `service` (default: both).
    pub kind: Option<String>,
    /// From: a duration back (`15m`) or an RFC 3339 time; default `1h`.
    pub since: Option<String>,
    /// Until: an RFC 3339 time or a duration back; default now.
    pub until: Option<String>,
    /// Only lines holding this text (any case; at most 256 characters).
    pub q: Option<String>,
    /// At most this many lines, newest first (1..=5000; default 200).
    pub limit: Option<usize>,
    /// Keep the answer open and send new lines as server-sent events (`data:` a JSON line).
    #[serde(default)]
    pub follow: bool,
}

/// What a search asks for, checked.
#[derive(Clone)]
struct Search {
    namespace: String,
    workload: Option<String>,
    functions: bool,
    services: bool,
    since_ms: i64,
    until_ms: i64,
    q: Option<String>,
    limit: usize,
}

impl Search {
    fn matches(&self, line: &str) -> bool {
        self.q.as_ref().is_none_or(|q| line.to_lowercase().contains(q))
    }
}

fn bad(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_query", format!("{field}: {message}"))
}

async fn search(state: &AppState, p: &Principal, q: LogQuery) -> Result<(Search, bool), ApiError> {
    let namespace = crate::api::existing_namespace(state, p, q.namespace.as_deref()).await?;
    let (functions, services) = match q.kind.as_deref() {
        None => (true, true),
        Some("function") => (true, false),
        Some("service") => (false, true),
        Some(other) => return Err(bad("kind", format_args!("`{}`: choose function or service", hangar_api::validate::shown(other)))),
    };
    let since_ms = crate::usage::time("since", q.since.as_deref().unwrap_or("1h"))?;
    let until_ms = q.until.as_deref().map(|v| crate::usage::time("until", v)).transpose()?.unwrap_or(i64::MAX);
    if until_ms < since_ms {
        return Err(bad("until", "is before since"));
    }
    if let Some(text) = &q.q
        && (text.is_empty() || text.chars().count() > MAX_Q)
    {
        return Err(bad("q", format_args!("give 1 to {MAX_Q} characters to search for")));
    }
    let limit = q.limit.unwrap_or(200);
    if !(1..=5000).contains(&limit) {
        return Err(bad("limit", format_args!("{limit} is out of range; choose 1 to 5000")));
    }
    // A named workload must exist (as a function, or a service, of the kinds asked for).
    let (mut functions, mut services) = (functions, services);
    if let Some(name) = &q.workload {
        functions = functions && state.store.get_function(&namespace, name).await?.is_some();
        services = services && state.store.get_service(&namespace, name).await?.is_some();
        if !functions && !services {
            return Err(ApiError::not_found(format_args!("workload `{name}` in namespace `{namespace}`")));
        }
    }
    let s = Search { namespace, workload: q.workload, functions, services, since_ms, until_ms, q: q.q.map(|t| t.to_lowercase()), limit };
    Ok((s, q.follow))
}

/// The lines of invocation `r` that match, as log lines.
fn record_lines(r: &InvocationRecord, s: &Search) -> Vec<LogLine> {
    let time = hangar_api::rfc3339(r.started_ms);
    r.ending
        .logs
        .lines()
        .filter(|l| !l.is_empty() && s.matches(l))
        .map(|l| LogLine {
            time: time.clone(),
            kind: WorkloadKind::Function,
            namespace: r.namespace.clone(),
            workload: r.function.clone(),
            invocation_id: Some(r.id.clone()),
            instance: None,
            line: l.to_string(),
        })
        .collect()
}

fn service_line(namespace: &str, service: &str, at_ms: i64, line: &str) -> LogLine {
    let (instance, text) = hangar_service::logs::split_instance(line);
    LogLine {
        time: hangar_api::rfc3339(at_ms),
        kind: WorkloadKind::Service,
        namespace: namespace.to_string(),
        workload: service.to_string(),
        invocation_id: None,
        instance: instance.map(str::to_string),
        line: text.to_string(),
    }
}

/// The services of the search running here.
fn services_of(state: &AppState, s: &Search) -> Vec<std::sync::Arc<hangar_service::Service>> {
    let Some(all) = state.services.as_ref().filter(|_| s.services) else { return Vec::new() };
    match &s.workload {
        Some(name) => all.get(&s.namespace, name).into_iter().collect(),
        None => all.list(&s.namespace),
    }
}

/// Lines across functions and services, newest first.
#[utoipa::path(get, path = "/v1/logs", params(LogQuery), tag = "logs",
    responses((status = 200, body = LogList, description = "the lines; with follow=true, server-sent events"), (status = 400, body = hangar_api::ErrorBody), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn list(State(state): State<AppState>, p: Principal, ApiQuery(q): ApiQuery<LogQuery>) -> Result<Response, ApiError> {
    let (s, follow) = search(&state, &p, q).await?;
    if follow {
        return Ok(tail(state, s).await?.into_response());
    }
    let mut items: Vec<(i64, LogLine)> = Vec::new();
    if s.functions {
        let filter = InvocationFilter {
            namespace: Some(s.namespace.clone()),
            function: s.workload.clone(),
            since_ms: Some(s.since_ms),
            until_ms: (s.until_ms != i64::MAX).then_some(s.until_ms),
            limit: MAX_RECORDS,
            with_logs: true,
            ..InvocationFilter::default()
        };
        for r in state.store.list_invocations(filter).await? {
            items.extend(record_lines(&r, &s).into_iter().map(|l| (r.started_ms, l)));
            if items.len() >= s.limit * 4 {
                break;
            }
        }
    }
    for svc in services_of(&state, &s) {
        for (at, line) in svc.logs.between(s.since_ms, s.until_ms) {
            if s.matches(hangar_service::logs::split_instance(&line).1) {
                items.push((at, service_line(&svc.namespace, &svc.name, at, &line)));
            }
        }
    }
    // Newest first; a function's lines keep their order within its invocation.
    items.reverse();
    items.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    items.truncate(s.limit);
    Ok(Json(LogList { items: items.into_iter().map(|(_, l)| l).collect() }).into_response())
}

/// New lines as server-sent events until the client goes away.
async fn tail(state: AppState, s: Search) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let following = state.log_followers.enter(&s.namespace)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<LogLine>(1024);
    // The records there before the answer starts are the search's, not the tail's.
    let newest = hangar_api::now_ms();
    let before: HashSet<String> = match s.functions {
        true => state.store.list_invocations(recent(&s, newest)).await?.into_iter().map(|r| r.id).collect(),
        false => HashSet::new(),
    };
    for svc in services_of(&state, &s) {
        let (tx, s, mut lines) = (tx.clone(), s.clone(), svc.logs.subscribe());
        tokio::spawn(async move {
            loop {
                // A follower that went away ends this task even if the service stays quiet.
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = lines.recv() => next,
                };
                let line = match next {
                    Ok(l) => l,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if s.matches(hangar_service::logs::split_instance(&line).1)
                    && tx.send(service_line(&svc.namespace, &svc.name, hangar_api::now_ms(), &line)).await.is_err()
                {
                    return;
                }
            }
        });
    }
    if s.functions {
        tokio::spawn(follow_functions(state, s, tx, before, newest));
    }
    // The stream holds the count: it ends when the client goes away.
    let events = futures::stream::unfold((rx, following), |(mut rx, following)| async move {
        let line = rx.recv().await?;
        let event = Event::default().json_data(&line).unwrap_or_else(|_| Event::default().data("{}"));
        Some((Ok(event), (rx, following)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The records of the search started within a minute of `newest`, oldest first.
fn recent(s: &Search, newest: i64) -> InvocationFilter {
    InvocationFilter {
        namespace: Some(s.namespace.clone()),
        function: s.workload.clone(),
        since_ms: Some(newest - LATE),
        limit: MAX_RECORDS,
        with_logs: true,
        ascending: true,
        ..InvocationFilter::default()
    }
}

/// Sends the lines of invocation records as they land in the store after the tail began: each
/// second it reads the records started within a minute of the newest seen (they land when
/// calls end, in batches, from any node) and sends those not sent yet.
async fn follow_functions(state: AppState, s: Search, tx: tokio::sync::mpsc::Sender<LogLine>, mut sent: HashSet<String>, mut newest: i64) {
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Ok(records) = state.store.list_invocations(recent(&s, newest)).await else { continue };
        for r in records {
            if r.started_ms < s.since_ms.max(newest - LATE) || !sent.insert(r.id.clone()) {
                continue;
            }
            newest = newest.max(r.started_ms);
            for line in record_lines(&r, &s) {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        }
        if sent.len() > 100_000 {
            sent.clear();
        }
    }
}
