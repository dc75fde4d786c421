//! What a service's requests did, counted at the gateway without locks: requests, failures,
//! the time spent serving them, and a ring of recent durations (for the advisor's p99). The
//! usage meter takes the counters every sample and adds them to the service's hourly row.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// Recent durations kept per service.
pub const RING: usize = 1024;

/// The counters of one service.
#[derive(Debug)]
pub struct Traffic {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Time serving requests, µs, since the meter last took it.
    busy_us: AtomicU64,
    /// Requests and µs serving them since the service started (never taken; adaptive mode
    /// reads their growth over its window).
    total_requests: AtomicU64,
    total_busy_us: AtomicU64,
    /// Recent durations, ms + 1 (0: an empty place), written round-robin.
    ring: Box<[AtomicU32]>,
    next: AtomicUsize,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            total_requests: AtomicU64::new(0),
            total_busy_us: AtomicU64::new(0),
            ring: (0..RING).map(|_| AtomicU32::new(0)).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

/// What the meter takes: requests, failed ones, and ms spent serving them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Taken {
    pub requests: u64,
    pub errors: u64,
    pub busy_ms: u64,
}

impl Traffic {
    /// Counts one request that took from `start` until now.
    pub fn record(&self, start: Instant, failed: bool) {
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.busy_us.fetch_add(us, Ordering::Relaxed);
        self.total_requests.fetch_add(1, Ordering::Relaxed);
        self.total_busy_us.fetch_add(us, Ordering::Relaxed);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % RING;
        let ms = u32::try_from(us.div_ceil(1000)).unwrap_or(u32::MAX - 1);
        self.ring[i].store(ms + 1, Ordering::Relaxed);
    }

    /// Takes the counters (they start again from zero). Busy time is taken in whole ms; the
    /// rest stays for the next sample, so nothing is lost to rounding.
    pub fn take(&self) -> Taken {
        let requests = self.requests.swap(0, Ordering::Relaxed);
        let errors = self.errors.swap(0, Ordering::Relaxed);
        let us = self.busy_us.load(Ordering::Relaxed);
        let busy_ms = us / 1000;
        self.busy_us.fetch_sub(busy_ms * 1000, Ordering::Relaxed);
        Taken { requests, errors, busy_ms }
    }

    /// Requests and ms spent serving them since the service started.
    pub fn totals(&self) -> (u64, u64) {
        (self.total_requests.load(Ordering::Relaxed), self.total_busy_us.load(Ordering::Relaxed) / 1000)
    }

    /// Durations of the last requests (up to [`RING`]), ms, in no order.
    pub fn recent_ms(&self) -> Vec<u64> {
        self.ring.iter().map(|a| a.load(Ordering::Relaxed)).filter(|v| *v > 0).map(|v| u64::from(v - 1)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_and_takes_without_losing_time() {
        let t = Traffic::default();
        let start = Instant::now() - Duration::from_micros(2_500);
        t.record(start, false);
        t.record(start, true);
        let first = t.take();
        assert_eq!((first.requests, first.errors), (2, 1));
        assert!(first.busy_ms >= 5, "{first:?}");
        // The part under a ms waits for the next take.
        let rest = t.take();
        assert_eq!((rest.requests, rest.errors, rest.busy_ms), (0, 0, 0));
        assert_eq!(t.totals().0, 2, "totals are never taken");
        assert_eq!(t.recent_ms().len(), 2);
        assert!(t.recent_ms().iter().all(|ms| *ms >= 3));
    }

    #[test]
    fn the_ring_keeps_the_latest() {
        let t = Traffic::default();
        for _ in 0..RING + 10 {
            t.record(Instant::now(), false);
        }
        assert_eq!(t.recent_ms().len(), RING);
        assert_eq!(t.take().requests, (RING + 10) as u64);
    }
}
