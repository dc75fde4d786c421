//! Leases: work that must run once however many servers run (cron firing, adaptive mode,
//! usage pruning) runs only while its server holds the lease of that work. A holder renews
//! before the lease's time runs out; a holder that dies loses it when the time runs out and
//! another takes it over. [`LocalLeases`] is the in-process implementation (one server holds
//! everything); a cluster's lives in its shared store or bus.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hangar_core::Clock;

/// See the module docs.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// Takes, or renews, the lease `name` for `holder` until `ttl` from now. False while
    /// another holder's lease on it runs.
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> bool;
    /// Gives the lease back (at shutdown), if `holder` holds it.
    async fn release(&self, name: &str, holder: &str);
}

/// Leases held in this process.
pub struct LocalLeases {
    clock: Arc<dyn Clock>,
    held: Mutex<HashMap<String, (String, Instant)>>,
}

impl LocalLeases {
    pub fn new(clock: Arc<dyn Clock>) -> Arc<LocalLeases> {
        Arc::new(LocalLeases { clock, held: Mutex::default() })
    }
}

#[async_trait]
impl Leases for LocalLeases {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> bool {
        let now = self.clock.now();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.get(name) {
            Some((other, until)) if other != holder && *until > now => false,
            _ => {
                held.insert(name.to_string(), (holder.to_string(), now + ttl));
                true
            }
        }
    }

    async fn release(&self, name: &str, holder: &str) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.get(name).is_some_and(|(h, _)| h == holder) {
            held.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_core::ManualClock;

    #[tokio::test]
    async fn a_lease_is_one_holders_until_it_runs_out_or_is_given_back() {
        let clock = Arc::new(ManualClock::new(0));
        let leases = LocalLeases::new(clock.clone());
        let ttl = Duration::from_secs(10);
        assert!(leases.acquire("cron", "a", ttl).await);
        assert!(!leases.acquire("cron", "b", ttl).await, "held by another");
        assert!(leases.acquire("adapt", "b", ttl).await, "leases are per name");
        // Renewed by its holder, it outlives its first term.
        clock.advance(Duration::from_secs(8));
        assert!(leases.acquire("cron", "a", ttl).await);
        clock.advance(Duration::from_secs(8));
        assert!(!leases.acquire("cron", "b", ttl).await);
        // A holder that stops renewing (died) loses it once its time runs out.
        clock.advance(Duration::from_secs(3));
        assert!(leases.acquire("cron", "b", ttl).await, "taken over after the TTL");
        assert!(!leases.acquire("cron", "a", ttl).await);
        leases.release("cron", "a").await;
        assert!(!leases.acquire("cron", "a", ttl).await, "only the holder gives it back");
        leases.release("cron", "b").await;
        assert!(leases.acquire("cron", "a", ttl).await);
    }
}
