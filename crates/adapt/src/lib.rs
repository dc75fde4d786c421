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
//!
//! The [`Adapter`] sees the server only through three narrow traits — [`Functions`],
//! [`Services`], [`SwitchLog`] — and reads time from a [`Clock`], so its decisions are tested
//! on fakes and a manual clock; [`fleets`] has the real ones. It runs as a
//! [`hangar_supervisor::Scope::Once`] loop: one server of a cluster adapts.
#![forbid(unsafe_code)]

pub mod fleets;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hangar_api::services::ServiceConfig;
use hangar_api::{FunctionMode, InvocationRecord, ModeSwitch, Model, WorkloadKind};
use hangar_core::Clock;
use hangar_cost::money::show_fixed;
use hangar_store::FunctionRow;

/// Looks in a row that must agree before a change.
pub const STREAK: u32 = 3;
/// Most invocations read per look.
pub const MAX_RECORDS: u32 = 10_000;

/// The functions adaptive mode may warm and cool.
#[async_trait]
pub trait Functions: Send + Sync {
    /// Every deployed function (those in auto mode are looked at).
    async fn deployed(&self) -> Result<Vec<FunctionRow>, String>;
    /// A function's invocations that started at `since_ms` or later, at most `limit`.
    async fn invocations(&self, namespace: &str, name: &str, since_ms: i64, limit: u32) -> Result<Vec<InvocationRecord>, String>;
    /// Keeps `n` instances of `revision` warm; false when that revision is not the one routed,
    /// or its runtime keeps none.
    async fn set_warm(&self, namespace: &str, name: &str, revision: u64, n: u32) -> bool;
}

/// A service as adaptive mode sees it.
#[derive(Debug, Clone)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    pub revision: u64,
    pub config: ServiceConfig,
    /// Its minimum instances now.
    pub min_instances: u32,
    /// Requests served and ms spent serving them since it started.
    pub requests: u64,
    pub busy_ms: u64,
    /// Durations of its recent requests, ms.
    pub recent_ms: Vec<u64>,
}

/// The services adaptive mode may scale to zero and back.
#[async_trait]
pub trait Services: Send + Sync {
    /// The deployed services that run on this server.
    async fn running(&self) -> Result<Vec<ServiceView>, String>;
    fn set_min_instances(&self, namespace: &str, name: &str, n: u32);
}

/// Where the changes made are recorded.
#[async_trait]
pub trait SwitchLog: Send + Sync {
    async fn record(&self, namespace: &str, name: &str, at_ms: i64, switch: &ModeSwitch);
}

/// The hysteresis of one workload: the change asked for, and how many looks in a row did.
#[derive(Debug, Default)]
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

/// See the module docs; [`Adapter::look`] is one round.
pub struct Adapter {
    functions: Arc<dyn Functions>,
    services: Option<Arc<dyn Services>>,
    log: Arc<dyn SwitchLog>,
    clock: Arc<dyn Clock>,
    /// The user's price sheets (`<data>/prices`), read every look.
    prices_dir: Option<PathBuf>,
    window: Duration,
    tracks: HashMap<(String, String), Track>,
    service_tracks: HashMap<(String, String), ServiceTrack>,
}

impl Adapter {
    pub fn new(
        functions: Arc<dyn Functions>,
        services: Option<Arc<dyn Services>>,
        log: Arc<dyn SwitchLog>,
        clock: Arc<dyn Clock>,
        prices_dir: Option<PathBuf>,
        window: Duration,
    ) -> Adapter {
        Adapter { functions, services, log, clock, prices_dir, window, tracks: HashMap::new(), service_tracks: HashMap::new() }
    }

    /// One look at every workload in auto mode.
    pub async fn look(&mut self) {
        let sheets = match hangar_cost::Sheets::load(self.prices_dir.as_deref()) {
            Ok(s) => s,
            Err(e) => return tracing::error!("adaptive mode: {e}"),
        };
        let now = self.clock.now_ms();
        let window_ms = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX).max(1000);
        self.look_at_functions(&sheets, now, window_ms).await;
        self.look_at_services(&sheets, now, window_ms).await;
    }

    async fn look_at_services(&mut self, sheets: &hangar_cost::Sheets, now: i64, window_ms: i64) {
        let Some(services) = self.services.clone() else { return };
        let views = match services.running().await {
            Ok(r) => r,
            Err(e) => return tracing::error!("adaptive mode: listing services: {e}"),
        };
        let auto: Vec<_> = views.into_iter().filter(|r| r.config.mode == FunctionMode::Auto).collect();
        self.service_tracks.retain(|(ns, name), _| auto.iter().any(|r| &r.namespace == ns && &r.name == name));
        for svc in auto {
            let floor = svc.config.min_instances.max(1);
            let track = self.service_tracks.entry((svc.namespace.clone(), svc.name.clone())).or_insert(ServiceTrack {
                revision: svc.revision,
                min: svc.min_instances,
                samples: VecDeque::new(),
                streak: Streak::default(),
            });
            if track.revision != svc.revision {
                *track = ServiceTrack { revision: svc.revision, min: svc.min_instances, samples: VecDeque::new(), streak: Streak::default() };
            }
            track.samples.push_back((now, svc.requests, svc.busy_ms));
            while track.samples.len() >= 2 && track.samples.get(1).is_some_and(|(t, _, _)| now - t >= window_ms) {
                track.samples.pop_front();
            }
            // Nothing is decided before a whole window was seen.
            let Some(&(since, requests_then, busy_then)) = track.samples.front().filter(|(t, _, _)| now - t >= window_ms) else { continue };
            let span_ms = (now - since).max(1000);
            let requests = svc.requests.saturating_sub(requests_then);
            let window = humantime::format_duration(Duration::from_secs(span_ms as u64 / 1000)).to_string();
            let (desired, reason) = if requests == 0 {
                (0, format!("no request in the last {window}: scale to zero"))
            } else {
                let stats = hangar_cost::advice::Stats {
                    hourly_requests: vec![requests],
                    period_s: (span_ms as u64 / 1000).max(1),
                    requests,
                    billed_ms: svc.busy_ms.saturating_sub(busy_then),
                    recent: svc.recent_ms.iter().map(|ms| (*ms, false)).collect(),
                    memory_mb: svc.config.memory_mb,
                    cpus: Some(format!("{:.3}", svc.config.cpus)),
                    // Scaled to zero it is a function in all but name: warming it must save
                    // the margin, and so must cooling it.
                    current: Some(if track.min == 0 { Model::Function } else { Model::Service }),
                };
                let policy = hangar_cost::advice::Policy { concurrency: Some(svc.config.concurrency), ..Default::default() };
                match hangar_cost::advice::advise(&stats, &policy, sheets) {
                    Ok(d) if d.recommendation == Model::Function => (0, d.reasons.last().cloned().unwrap_or_default()),
                    Ok(d) => (floor, d.reasons.last().cloned().unwrap_or_default()),
                    Err(e) => {
                        tracing::warn!(service = %svc.name, "adaptive mode: {e}");
                        continue;
                    }
                }
            };
            if !track.streak.agrees(track.min, desired) {
                continue;
            }
            services.set_min_instances(&svc.namespace, &svc.name, desired);
            let from = track.min;
            track.min = desired;
            track.streak = Streak::default();
            self.record(&svc.namespace, &svc.name, WorkloadKind::Service, svc.revision, (from, desired), &reason, now).await;
        }
    }

    async fn look_at_functions(&mut self, sheets: &hangar_cost::Sheets, now: i64, window_ms: i64) {
        let functions = match self.functions.deployed().await {
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
            let records: Vec<_> = match self.functions.invocations(&f.namespace, &f.name, now - window_ms, MAX_RECORDS).await {
                Ok(r) => r.into_iter().filter(|r| r.ending.outcome != hangar_api::Outcome::Throttled).collect(),
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
                        recent: records.iter().map(InvocationRecord::latency).collect(),
                        memory_mb: f.config.memory_mb,
                        cpus: None,
                        current: None,
                    };
                    let policy = hangar_cost::advice::Policy { objective_ms: f.config.latency_objective_ms, ..Default::default() };
                    match hangar_cost::advice::advise(&stats, &policy, sheets) {
                        // Warm instances answer `provisioned` and `service` alike; a sandbox per
                        // job is not something a function can switch to by itself.
                        Ok(d) if matches!(d.recommendation, Model::Provisioned | Model::Service) => {
                            let n = d.costs.estimates.iter().find(|e| e.model == Model::Provisioned).and_then(|e| e.instances).unwrap_or(1).max(1);
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
            if !self.functions.set_warm(&f.namespace, &f.name, f.revision, desired).await {
                continue;
            }
            let track = self.tracks.get_mut(&(f.namespace.clone(), f.name.clone())).expect("tracked above");
            let from = track.warm;
            if desired > 0 {
                track.warm_rate_milli = rate_milli;
            }
            track.warm = desired;
            track.streak = Streak::default();
            self.record(&f.namespace, &f.name, WorkloadKind::Function, f.revision, (from, desired), &reason, now).await;
        }
    }

    /// Records a change adaptive mode made, `(from, to)` warm instances, with its reason.
    #[allow(clippy::too_many_arguments)]
    async fn record(&self, namespace: &str, name: &str, kind: WorkloadKind, revision: u64, (from, to): (u32, u32), reason: &str, now: i64) {
        let reason = format!("{reason} (the same answer {STREAK} looks in a row)");
        tracing::info!(%kind, name, from, to, "adaptive mode: {reason}");
        let switch = ModeSwitch { kind, at: hangar_api::rfc3339(now), revision, from_warm: from, to_warm: to, reason };
        self.log.record(namespace, name, now, &switch).await;
    }
}

#[async_trait]
impl hangar_supervisor::Loop for Adapter {
    async fn tick(&mut self) {
        self.look().await;
    }
}

#[cfg(test)]
mod tests;
