//! Adaptive mode: functions deployed with `mode = "auto"` are moved between scale to zero and
//! warm (provisioned) instances by the advisor. Every look (`--adapt-every`) takes the
//! function's invocations of the last `--adapt-window`; a cold function is warmed when the
//! advisor picks a warm model (cold starts break its latency objective, or warm costs less);
//! a warm one goes back to zero when it had no request in the window, or its rate fell under
//! half of what it was warmed at (a band, since warm instances hide the cold starts that
//! warmed them). A change is made only after the same answer held for [`STREAK`] looks in a
//! row, and each is recorded with its reason (`GET /v1/functions/{name}/switches`).
//!
//! Services deployed with `mode = "auto"` are moved between their configured minimum (at least
//! one instance, always warm) and zero (scale to zero when idle): every look weighs the
//! requests the gateway counted over the window as a service against a scale-to-zero
//! function, with the margin against the model it is on now, so the two directions need
//! different costs and it does not flap (`GET /v1/services/{name}/switches`).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use hangar_api::{FunctionMode, ModeSwitch, ModeSwitchList};
use hangar_cost::money::show_fixed;

use crate::AppState;
use crate::api::NamespaceQuery;
use crate::auth::Principal;
use crate::error::{ApiError, ApiQuery};

/// Looks in a row that must agree before a change.
pub const STREAK: u32 = 3;
/// Most invocations read per look.
const MAX_RECORDS: u32 = 10_000;

/// The hysteresis of one workload: the change asked for, and how many looks in a row did.
#[derive(Default)]
struct Streak {
    candidate: Option<u32>,
    count: u32,
}

impl Streak {
    /// Whether to change from `now` to `desired`: only when the same change was asked for
    /// [`STREAK`] looks in a row (asking for no change starts over).
    fn agrees(&mut self, now: u32, desired: u32) -> bool {
        if desired == now {
            *self = Streak::default();
            return false;
        }
        if self.candidate == Some(desired) {
            self.count += 1;
        } else {
            *self = Streak { candidate: Some(desired), count: 1 };
        }
        self.count >= STREAK
    }
}

struct Track {
    revision: u64,
    /// Instances kept warm now.
    warm: u32,
    streak: Streak,
    /// The rate (thousandths of a request per second) when it was warmed.
    warm_rate_milli: u128,
}

/// What adaptive mode remembers of a service between looks.
struct ServiceTrack {
    revision: u64,
    /// Its minimum instances now.
    min: u32,
    /// `(when, requests, ms serving them)` since the service started, one per look, as far
    /// back as the window (and one before it).
    samples: VecDeque<(i64, u64, u64)>,
    streak: Streak,
}

/// See the module docs; [`Adapter::look`] is called every `--adapt-every`.
pub struct Adapter {
    state: AppState,
    window: Duration,
    tracks: HashMap<(String, String), Track>,
    service_tracks: HashMap<(String, String), ServiceTrack>,
}

impl Adapter {
    pub fn new(state: AppState, window: Duration) -> Adapter {
        Adapter { state, window, tracks: HashMap::new(), service_tracks: HashMap::new() }
    }

    pub async fn look(&mut self) {
        let sheets = match hangar_cost::Sheets::load(Some(&self.state.prices_dir)) {
            Ok(s) => s,
            Err(e) => return tracing::error!("adaptive mode: {e}"),
        };
        let now = hangar_api::now_ms();
        let window_ms = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX).max(1000);
        self.look_at_functions(&sheets, now, window_ms).await;
        self.look_at_services(&sheets, now, window_ms).await;
    }

    async fn look_at_services(&mut self, sheets: &hangar_cost::Sheets, now: i64, window_ms: i64) {
        let Some(services) = self.state.services.clone() else { return };
        let rows = match self.state.store.list_services(None).await {
            Ok(r) => r,
            Err(e) => return tracing::error!("adaptive mode: listing services: {e}"),
        };
        let auto: Vec<_> = rows.into_iter().filter(|r| r.config.mode == FunctionMode::Auto).collect();
        self.service_tracks.retain(|(ns, name), _| auto.iter().any(|r| &r.namespace == ns && &r.name == name));
        for row in auto {
            let Some(svc) = services.get(&row.namespace, &row.name) else { continue };
            let floor = row.config.min_instances.max(1);
            let track = self.service_tracks.entry((row.namespace.clone(), row.name.clone())).or_insert(ServiceTrack {
                revision: row.revision,
                min: svc.min_instances(),
                samples: VecDeque::new(),
                streak: Streak::default(),
            });
            if track.revision != row.revision {
                *track = ServiceTrack { revision: row.revision, min: svc.min_instances(), samples: VecDeque::new(), streak: Streak::default() };
            }
            let (requests_total, busy_total) = svc.traffic.totals();
            track.samples.push_back((now, requests_total, busy_total));
            while track.samples.len() >= 2 && track.samples.get(1).is_some_and(|(t, _, _)| now - t >= window_ms) {
                track.samples.pop_front();
            }
            // Nothing is decided before a whole window was seen.
            let Some(&(since, requests_then, busy_then)) = track.samples.front().filter(|(t, _, _)| now - t >= window_ms) else { continue };
            let span_ms = (now - since).max(1000);
            let requests = requests_total.saturating_sub(requests_then);
            let window = humantime::format_duration(Duration::from_secs(span_ms as u64 / 1000)).to_string();
            let (desired, reason) = if requests == 0 {
                (0, format!("no request in the last {window}: scale to zero"))
            } else {
                let stats = hangar_cost::advice::Stats {
                    hourly_requests: vec![requests],
                    period_s: (span_ms as u64 / 1000).max(1),
                    requests,
                    billed_ms: busy_total.saturating_sub(busy_then),
                    recent: svc.traffic.recent_ms().into_iter().map(|ms| (ms, false)).collect(),
                    memory_mb: row.config.memory_mb,
                    cpus: Some(format!("{:.3}", row.config.cpus)),
                    // Scaled to zero it is a function in all but name: warming it must save
                    // the margin, and so must cooling it.
                    current: Some(if track.min == 0 { "function" } else { "service" }.into()),
                };
                let policy = hangar_cost::advice::Policy { concurrency: Some(row.config.concurrency), ..Default::default() };
                match hangar_cost::advice::advise(&stats, &policy, sheets) {
                    Ok(d) if d.recommendation == "function" => (0, d.reasons.last().cloned().unwrap_or_default()),
                    Ok(d) => (floor, d.reasons.last().cloned().unwrap_or_default()),
                    Err(e) => {
                        tracing::warn!(service = %row.name, "adaptive mode: {e}");
                        continue;
                    }
                }
            };
            if !track.streak.agrees(track.min, desired) {
                continue;
            }
            svc.set_min_instances(desired);
            record(&self.state, &row.namespace, &row.name, "service", row.revision, (track.min, desired), &reason, now).await;
            track.min = desired;
            track.streak = Streak::default();
        }
    }

    async fn look_at_functions(&mut self, sheets: &hangar_cost::Sheets, now: i64, window_ms: i64) {
        let functions = match self.state.store.list_functions(None).await {
            Ok(f) => f,
            Err(e) => return tracing::error!("adaptive mode: listing functions: {e}"),
        };
        let auto: Vec<_> = functions.into_iter().filter(|f| f.config.mode == FunctionMode::Auto).collect();
        self.tracks.retain(|(ns, name), _| auto.iter().any(|f| &f.namespace == ns && &f.name == name));
        for f in auto {
            let track = self.tracks.entry((f.namespace.clone(), f.name.clone())).or_insert(Track {
                revision: f.revision,
                warm: f.config.provisioned_instances,
                streak: Streak::default(),
                warm_rate_milli: 0,
            });
            // A new revision starts from its own configuration.
            if track.revision != f.revision {
                *track = Track { revision: f.revision, warm: f.config.provisioned_instances, streak: Streak::default(), warm_rate_milli: 0 };
            }
            let filter = hangar_store::InvocationFilter {
                namespace: Some(f.namespace.clone()),
                function: Some(f.name.clone()),
                since_ms: Some(now - window_ms),
                limit: MAX_RECORDS,
                ..Default::default()
            };
            let records: Vec<_> = match self.state.store.list_invocations(filter).await {
                Ok(r) => r.into_iter().filter(|r| r.outcome != hangar_api::Outcome::Throttled).collect(),
                Err(e) => {
                    tracing::error!(function = %f.name, "adaptive mode: reading invocations: {e}");
                    continue;
                }
            };
            // With more records than read, the window is what they span.
            let span_ms =
                if records.len() as u32 >= MAX_RECORDS { records.iter().map(|r| now - r.started_ms).max().unwrap_or(window_ms).max(1000) } else { window_ms };
            let requests = records.len() as u64;
            let rate_milli = (u128::from(requests) * 1_000_000).div_ceil(span_ms as u128);
            let window = humantime::format_duration(Duration::from_millis(span_ms as u64)).to_string();
            let (desired, reason) = if track.warm == 0 {
                if requests == 0 {
                    (0, String::new())
                } else {
                    let stats = hangar_cost::advice::Stats {
                        hourly_requests: vec![requests],
                        period_s: (span_ms as u64 / 1000).max(1),
                        requests,
                        billed_ms: records.iter().map(|r| r.billed_ms).sum(),
                        recent: records.iter().map(crate::usage::latency).collect(),
                        memory_mb: f.config.memory_mb,
                        cpus: None,
                        current: None,
                    };
                    let policy = hangar_cost::advice::Policy { objective_ms: f.config.latency_objective_ms, ..Default::default() };
                    match hangar_cost::advice::advise(&stats, &policy, sheets) {
                        // Warm instances answer `provisioned` and `service` alike; a sandbox per
                        // job is not something a function can switch to by itself.
                        Ok(d) if matches!(d.recommendation.as_str(), "provisioned" | "service") => {
                            let n = d.costs.estimates.iter().find(|e| e.model == "provisioned").and_then(|e| e.instances).unwrap_or(1).max(1);
                            let n = u32::try_from(n).unwrap_or(u32::MAX).min(f.config.max_instances);
                            (n, d.reasons.last().cloned().unwrap_or_default())
                        }
                        _ => (0, String::new()),
                    }
                }
            } else if requests == 0 {
                (0, format!("no request in the last {window}: back to scale to zero"))
            } else if rate_milli * 2 < track.warm_rate_milli {
                (
                    0,
                    format!(
                        "traffic fell to {} req/s, under half of the {} req/s it was warmed at: back to scale to zero",
                        show_fixed(rate_milli, 3),
                        show_fixed(track.warm_rate_milli, 3)
                    ),
                )
            } else {
                (track.warm, String::new())
            };
            if !track.streak.agrees(track.warm, desired) {
                continue;
            }
            let applied = match self.state.scheduler.route(&f.namespace, &f.name) {
                Some(slot) if slot.deployment().revision == f.revision => slot.set_provisioned(desired).await,
                _ => false,
            };
            if !applied {
                continue;
            }
            record(&self.state, &f.namespace, &f.name, "function", f.revision, (track.warm, desired), &reason, now).await;
            if desired > 0 {
                track.warm_rate_milli = rate_milli;
            }
            track.warm = desired;
            track.streak = Streak::default();
        }
    }
}

/// Stores a change adaptive mode made, `(from, to)` warm instances, with its reason.
#[allow(clippy::too_many_arguments)]
async fn record(state: &AppState, namespace: &str, name: &str, kind: &str, revision: u64, (from, to): (u32, u32), reason: &str, now: i64) {
    let reason = format!("{reason} (the same answer {STREAK} looks in a row)");
    tracing::info!(kind, name, from, to, "adaptive mode: {reason}");
    let switch = ModeSwitch { kind: kind.into(), at: hangar_api::rfc3339(now), revision, from_warm: from, to_warm: to, reason };
    if let Err(e) = state.store.add_mode_switch(namespace, name, now, &switch).await {
        tracing::error!(kind, name, "adaptive mode: recording a switch: {e}");
    }
}

/// The changes adaptive mode made to a function, oldest first.
#[utoipa::path(get, path = "/v1/functions/{name}/switches", params(("name" = String, Path), NamespaceQuery), tag = "cost",
    responses((status = 200, body = ModeSwitchList), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn switches(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<ModeSwitchList>, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let exists = state.store.get_function(&ns, &name).await?.is_some();
    switches_of(&state, &ns, &name, "function", exists).await
}

/// The changes adaptive mode made to a service's minimum instances, oldest first.
#[utoipa::path(get, path = "/v1/services/{name}/switches", params(("name" = String, Path), NamespaceQuery), tag = "cost",
    responses((status = 200, body = ModeSwitchList), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn service_switches(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<ModeSwitchList>, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let exists = state.store.get_service(&ns, &name).await?.is_some();
    switches_of(&state, &ns, &name, "service", exists).await
}

/// The switches of the `kind` workload `name` (a function and a service may share a name).
async fn switches_of(state: &AppState, ns: &str, name: &str, kind: &str, exists: bool) -> Result<Json<ModeSwitchList>, ApiError> {
    if !exists {
        return Err(ApiError::not_found(format_args!("{kind} `{name}` in namespace `{ns}`")));
    }
    let items = state.store.list_mode_switches(ns, name).await?.into_iter().filter(|s| s.kind == kind).collect();
    Ok(Json(ModeSwitchList { items }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_needs_the_same_answer_streak_looks_in_a_row() {
        let mut s = Streak::default();
        assert!(!s.agrees(0, 1) && !s.agrees(0, 1));
        // Another answer, or none, starts over.
        assert!(!s.agrees(0, 2) && !s.agrees(0, 0) && !s.agrees(0, 1) && !s.agrees(0, 1));
        assert!(s.agrees(0, 1), "the third look in a row");
    }
}
