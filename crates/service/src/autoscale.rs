//! The autoscaler of one service, after Knative's KPA: concurrency-based, with a stable and a
//! panic window.
//!
//! Twice a second (and at once when a request waits with no instance ready) it samples the
//! requests in flight at the service's ready instances plus those waiting at the gateway.
//! Wanted instances = ceil(average / `concurrency`) over the stable window (`scale_window_ms`)
//! or, in panic, over the panic window (a tenth of it). Panic starts when the panic window
//! asks for at least twice the ready instances and lasts a stable window after that; while it
//! lasts the service never shrinks, so a burst does not flap. Outside panic it shrinks at most
//! by half per step. The result is held between `min_instances` and `max_instances`; with
//! `min_instances = 0` a whole quiet window scales it to zero, and a waiting request starts
//! one instance at once.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hangar_api::services::ScalingStatus;

use crate::{Host, Service, slot};

/// Time between samples.
const TICK: Duration = Duration::from_millis(500);
/// Panic starts when the panic window wants this many times the ready instances.
const PANIC_RATIO: f64 = 2.0;

/// The autoscaler's memory between ticks.
#[derive(Debug, Default)]
pub(crate) struct Scaler {
    /// The first sample: nothing shrinks before a whole window was seen.
    since: Option<Instant>,
    samples: VecDeque<(Instant, f64)>,
    panic_until: Option<Instant>,
    /// What the last decision was (never lower while in panic).
    desired: u32,
}

/// What one tick decided, from its inputs (kept apart from the clock and the slots so it can
/// be tested).
pub(crate) fn decide(
    s: &mut Scaler,
    now: Instant,
    observed: f64,
    ready: u32,
    current: u32,
    waiting: u32,
    cfg: &hangar_api::services::ServiceConfig,
) -> ScalingStatus {
    let window = Duration::from_millis(cfg.scale_window_ms);
    let panic_window = window / 10;
    let since = *s.since.get_or_insert(now);
    s.samples.push_back((now, observed));
    while s.samples.front().is_some_and(|(t, _)| now.duration_since(*t) > window) {
        s.samples.pop_front();
    }
    let avg = |since: Duration| {
        let v: Vec<f64> = s.samples.iter().filter(|(t, _)| now.duration_since(*t) <= since).map(|(_, c)| *c).collect();
        if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
    };
    let (stable, panicky) = (avg(window), avg(panic_window));
    let target = f64::from(cfg.concurrency);
    let want = |c: f64| (c / target).ceil() as u32;
    let (want_stable, want_panic) = (want(stable), want(panicky));
    if ready > 0 && f64::from(want_panic) >= PANIC_RATIO * f64::from(ready) {
        s.panic_until = Some(now + window);
    }
    let panic = s.panic_until.is_some_and(|t| now < t);
    let mut desired = if panic {
        want_panic.max(s.desired)
    } else if now.duration_since(since) < window {
        // Not a whole window seen yet (just started or deployed): grow, never shrink.
        want_stable.max(current)
    } else {
        // Shrink at most by half per step.
        want_stable.max(current / 2)
    };
    if waiting > 0 {
        desired = desired.max(1);
    }
    // A node whose part of a service is nothing keeps none (the gateways send its requests to
    // the nodes that run it).
    desired = desired.clamp(cfg.min_instances, cfg.max_instances.max(cfg.min_instances));
    s.desired = desired;
    ScalingStatus { desired, panic, stable_concurrency: stable, panic_concurrency: panicky, waiting }
}

/// Runs until the service is gone.
pub(crate) async fn run(svc: Weak<Service>, host: Arc<Host>) {
    let mut scaler = Scaler::default();
    loop {
        let Some(s) = svc.upgrade() else { return };
        if s.removed.load(Ordering::Acquire) {
            return;
        }
        let demand = s.demand.notified();
        tokio::pin!(demand);
        demand.as_mut().enable();
        tick(&s, &host, &mut scaler);
        tokio::select! {
            _ = &mut demand => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

fn tick(svc: &Arc<Service>, host: &Arc<Host>, scaler: &mut Scaler) {
    let Some(rev) = svc.current.lock().unwrap_or_else(|p| p.into_inner()).clone() else { return };
    if svc.rolling.load(Ordering::Acquire) {
        return;
    }
    let (observed, ready) = {
        let routes = svc.routes.read().unwrap_or_else(|p| p.into_inner());
        (routes.iter().map(|e| e.inflight.load(Ordering::Acquire)).sum::<u32>(), routes.len() as u32)
    };
    let waiting = svc.waiting.load(Ordering::Acquire);
    let mut slots = svc.slots.lock().unwrap_or_else(|p| p.into_inner());
    let current = slots.len() as u32;
    // Adaptive mode's minimum in place of the configured one; then this node's part of both.
    let (min, max) = match svc.min_override.load(Ordering::Acquire) {
        crate::NO_MIN => (rev.config.min_instances, rev.config.max_instances),
        min => (min, rev.config.max_instances.max(min)),
    };
    let (min_here, max_here) = host.bounds(svc, min, max, &rev.config, current);
    let status = if (min_here, max_here) == (rev.config.min_instances, rev.config.max_instances) {
        decide(scaler, Instant::now(), f64::from(observed + waiting), ready, current, waiting, &rev.config)
    } else {
        let cfg = hangar_api::services::ServiceConfig { min_instances: min_here, max_instances: max_here, ..rev.config.clone() };
        decide(scaler, Instant::now(), f64::from(observed + waiting), ready, current, waiting, &cfg)
    };
    *svc.scaling.lock().unwrap_or_else(|p| p.into_inner()) = Some(status.clone());
    // Never past this node's instance cap.
    let desired_here = status.desired.min(current.saturating_add(host.spread().room()));
    if desired_here > current {
        tracing::info!(service = %svc.name, from = current, to = desired_here, panic = status.panic, "scaling up");
        for _ in current..desired_here {
            slots.push(slot::Slot::spawn(host.clone(), svc.clone(), rev.revision, rev.config.clone(), rev.image.clone(), rev.lower.clone()));
        }
    } else if status.desired < current {
        tracing::info!(service = %svc.name, from = current, to = status.desired, "scaling down");
        // Instances not serving yet go first, then those with the least in flight.
        let routes = svc.routes.read().unwrap_or_else(|p| p.into_inner()).clone();
        let load = |id: &str| routes.iter().find(|e| e.instance == id).map_or(-1, |e| i64::from(e.inflight.load(Ordering::Acquire)));
        slots.sort_by_key(|s| std::cmp::Reverse(load(s.id())));
        let excess: Vec<slot::Slot> = slots.split_off(status.desired as usize);
        tokio::spawn(async move {
            futures::future::join_all(excess.into_iter().map(|s| {
                let grace = s.grace_ms();
                s.stop(grace)
            }))
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_api::services::ServiceConfig;

    fn cfg(min: u32, max: u32) -> ServiceConfig {
        let mut c = ServiceConfig::new("x");
        (c.min_instances, c.max_instances, c.concurrency, c.scale_window_ms) = (min, max, 10, 10_000);
        c
    }

    #[test]
    fn a_burst_panics_up_and_does_not_flap_down() {
        let (mut s, c, t0) = (Scaler::default(), cfg(1, 10), Instant::now());
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(decide(&mut s, at(0), 5.0, 1, 1, 0, &c).desired, 1);
        // 60 in flight on one instance: the panic window wants 6.
        let d = decide(&mut s, at(1500), 60.0, 1, 1, 0, &c);
        assert!(d.panic);
        assert_eq!(d.desired, 6);
        // The burst stops: still in panic, so no shrinking.
        assert_eq!(decide(&mut s, at(3000), 0.0, 6, 6, 0, &c).desired, 6);
        // After a quiet stable window it shrinks, by half per step, down to min.
        let mut n = 6;
        let mut ms = 12_000;
        while n > 1 {
            let d = decide(&mut s, at(ms), 0.0, n, n, 0, &c);
            assert!(!d.panic && d.desired >= n / 2 && d.desired < n, "{d:?} from {n}");
            n = d.desired;
            ms += 500;
        }
        assert_eq!(n, 1);
    }

    #[test]
    fn steady_load_holds_and_limits_clamp() {
        let (mut s, c, t0) = (Scaler::default(), cfg(1, 3), Instant::now());
        for i in 0..20 {
            let d = decide(&mut s, t0 + Duration::from_millis(500 * i), 25.0, 3, 3, 0, &c);
            assert_eq!(d.desired, 3, "ceil(25 / 10) = 3, at most max");
        }
        let mut big = Scaler::default();
        assert_eq!(decide(&mut big, t0, 1000.0, 1, 1, 0, &c).desired, 3);
    }

    #[test]
    fn quiet_services_scale_to_zero_and_waiting_requests_start_one() {
        let (mut s, c, t0) = (Scaler::default(), cfg(0, 2), Instant::now());
        // Freshly deployed: kept until a whole quiet window has passed.
        assert_eq!(decide(&mut s, t0, 0.0, 1, 1, 0, &c).desired, 1);
        assert_eq!(decide(&mut s, t0 + Duration::from_millis(10_500), 0.0, 1, 1, 0, &c).desired, 0);
        assert_eq!(decide(&mut s, t0 + Duration::from_millis(11_000), 1.0, 0, 0, 1, &c).desired, 1);
    }
}
