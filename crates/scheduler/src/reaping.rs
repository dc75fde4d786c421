//! How many instances of a process function stay, pause or go: a pure decision over a
//! snapshot of its idle instances (as the service autoscaler's `decide`). The process runtime
//! takes a snapshot four times a second and applies the [`Decision`]; it decides nothing itself.
//!
//! The rules: an idle instance that is not provisioned stops once idle for the keep-alive, the
//! longest idle first, while more than `min_instances` live; provisioned instances beyond the
//! target become ordinary ones (idle from now); ordinary instances idle for `pause_after` are
//! paused (zero: never); the kept ones are ordered so the most recently used is taken first
//! (LIFO: the others idle on towards their pause and keep-alive); instances are made while
//! fewer than the provisioned target or `min_instances` live.

use std::time::Duration;

/// One idle instance as the reaper sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle {
    /// How long since it last served (or was made).
    pub idle_for: Duration,
    pub provisioned: bool,
    pub paused: bool,
}

/// A function's instances at one tick.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    /// Its idle instances, in any order.
    pub idle: &'a [Idle],
    /// Instances that exist: idle, busy, starting or spare.
    pub live: u32,
    pub min_instances: u32,
    /// Provisioned instances that exist, and how many there should be.
    pub provisioned: u32,
    pub provisioned_target: u32,
    pub keep_alive: Duration,
    /// Zero: never pause.
    pub pause_after: Duration,
}

/// What to do with each idle instance (indices into [`Snapshot::idle`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Stop these.
    pub stop: Vec<usize>,
    /// Keep these, in this order: the last is taken first.
    pub keep: Vec<usize>,
    /// Of the kept: no longer provisioned (idle from now).
    pub unprovision: Vec<usize>,
    /// Of the kept: freeze these.
    pub pause: Vec<usize>,
    /// Make instances: fewer than the provisioned target or the minimum live.
    pub provision: bool,
}

/// See the module docs.
pub fn decide(s: &Snapshot<'_>) -> Decision {
    let mut order: Vec<usize> = (0..s.idle.len()).collect();
    // The longest idle first.
    order.sort_by_key(|&i| std::cmp::Reverse(s.idle[i].idle_for));
    let mut d = Decision::default();
    let mut above_min = s.live.saturating_sub(s.min_instances);
    for &i in &order {
        let inst = &s.idle[i];
        if above_min > 0 && !inst.provisioned && inst.idle_for >= s.keep_alive {
            d.stop.push(i);
            above_min -= 1;
        } else {
            d.keep.push(i);
        }
    }
    let mut excess = s.provisioned.saturating_sub(s.provisioned_target);
    for &i in &d.keep {
        if excess == 0 {
            break;
        }
        if s.idle[i].provisioned {
            d.unprovision.push(i);
            excess -= 1;
        }
    }
    if !s.pause_after.is_zero() {
        d.pause = d
            .keep
            .iter()
            .copied()
            .filter(|&i| {
                let inst = &s.idle[i];
                !inst.provisioned && !inst.paused && inst.idle_for >= s.pause_after && !d.unprovision.contains(&i)
            })
            .collect();
    }
    let live_after = s.live.saturating_sub(d.stop.len() as u32);
    d.provision = s.provisioned < s.provisioned_target || live_after < s.min_instances;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn idle(secs: u64, provisioned: bool, paused: bool) -> Idle {
        Idle { idle_for: S * secs as u32, provisioned, paused }
    }

    fn snapshot(idle: &[Idle]) -> Snapshot<'_> {
        Snapshot {
            idle,
            live: idle.len() as u32,
            min_instances: 0,
            provisioned: idle.iter().filter(|i| i.provisioned).count() as u32,
            provisioned_target: idle.iter().filter(|i| i.provisioned).count() as u32,
            keep_alive: 300 * S,
            pause_after: S,
        }
    }

    /// A fake clock: the same instances seen as time passes.
    fn after(idle: &[Idle], elapsed: Duration) -> Vec<Idle> {
        idle.iter().map(|i| Idle { idle_for: i.idle_for + elapsed, ..*i }).collect()
    }

    #[test]
    fn idle_instances_pause_then_stop_on_the_clock() {
        let now = [idle(0, false, false), idle(0, false, false)];
        let d = decide(&snapshot(&now));
        assert!(d.stop.is_empty() && d.pause.is_empty() && !d.provision, "{d:?}");
        // A second later both are paused; five minutes later both stop.
        let later = after(&now, S);
        assert_eq!(decide(&snapshot(&later)).pause.len(), 2);
        let paused: Vec<Idle> = later.iter().map(|i| Idle { paused: true, ..*i }).collect();
        let d = decide(&snapshot(&after(&paused, 299 * S)));
        assert_eq!((d.stop.len(), d.keep.len(), d.pause.len()), (2, 0, 0), "{d:?}");
    }

    #[test]
    fn the_minimum_stays_and_the_longest_idle_go_first() {
        let idle = [idle(400, false, true), idle(900, false, true), idle(350, false, true)];
        let mut s = snapshot(&idle);
        s.min_instances = 1;
        let d = decide(&s);
        assert_eq!(d.stop, [1, 0], "the longest idle first, down to the minimum");
        assert_eq!(d.keep, [2]);
        assert!(!d.provision);
        // Fewer live than the minimum: make more.
        s.live = 0;
        s.idle = &[];
        assert!(decide(&s).provision);
    }

    #[test]
    fn kept_instances_are_taken_most_recently_used_first() {
        let idle = [idle(5, false, true), idle(0, false, false), idle(2, false, true)];
        let d = decide(&snapshot(&idle));
        assert_eq!(d.keep, [0, 2, 1], "the last kept is the most recently used: taken first");
    }

    #[test]
    fn provisioned_instances_never_pause_or_stop_and_extra_ones_become_ordinary() {
        let idle = [idle(1000, true, false), idle(1000, true, false), idle(1000, true, false)];
        let mut s = snapshot(&idle);
        let d = decide(&s);
        assert!(d.stop.is_empty() && d.pause.is_empty() && d.unprovision.is_empty(), "{d:?}");
        // Adaptive mode lowers the target to one: two become ordinary, idle from now (not
        // paused or stopped this tick).
        s.provisioned_target = 1;
        let d = decide(&s);
        assert_eq!((d.unprovision.len(), d.stop.len(), d.pause.len()), (2, 0, 0), "{d:?}");
        // And the target raised: make more.
        s.provisioned_target = 5;
        assert!(decide(&s).provision);
    }

    #[test]
    fn zero_pause_after_never_pauses() {
        let idle = [idle(100, false, false)];
        let mut s = snapshot(&idle);
        s.pause_after = Duration::ZERO;
        assert!(decide(&s).pause.is_empty());
    }
}
