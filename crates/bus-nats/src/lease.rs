//! Leases in JetStream key-value buckets: a lease is a key whose value names its holder. It is
//! taken by creating the key (which fails while it exists) and renewed by updating it at the
//! revision the holder last wrote (compare-and-set), so two nodes never both hold it. Its time
//! is kept by the server: each bucket has a maximum age (the lease's TTL), after which the
//! server drops a key its holder stopped renewing. No wall clocks of nodes are compared: a
//! node whose clock is off by minutes neither steals nor keeps a lease. The revision the holder
//! wrote last is the lease's epoch, for fencing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_trait::async_trait;
use hangar_bus::Leases;

use crate::{Nats, timed};

#[derive(serde::Serialize, serde::Deserialize)]
struct Holder {
    holder: String,
}

/// See the module docs.
pub struct NatsLeases {
    nats: Nats,
    /// A bucket per TTL (in ms).
    buckets: tokio::sync::Mutex<HashMap<u128, kv::Store>>,
    /// The revision this node last wrote, per lease it holds.
    epochs: Mutex<HashMap<String, u64>>,
}

impl NatsLeases {
    pub fn new(nats: Nats) -> std::sync::Arc<NatsLeases> {
        std::sync::Arc::new(NatsLeases { nats, buckets: Default::default(), epochs: Mutex::default() })
    }

    async fn bucket(&self, ttl: Duration) -> Option<kv::Store> {
        let ms = ttl.as_millis().max(100);
        let mut buckets = self.buckets.lock().await;
        if let Some(b) = buckets.get(&ms) {
            return Some(b.clone());
        }
        let config = kv::Config {
            bucket: format!("hangar-leases-{ms}ms"),
            description: format!("Hangar leases that run out {ms} ms after their last renewal"),
            history: 1,
            max_age: Duration::from_millis(ms as u64),
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        };
        match self.nats.bucket(config).await {
            Ok(b) => Some(buckets.entry(ms).or_insert(b).clone()),
            Err(e) => {
                tracing::warn!("leases: {e}");
                None
            }
        }
    }

    /// The epoch of lease `name` if this node holds it: the revision it last wrote, which
    /// grows with every renewal and every change of holder.
    pub fn epoch(&self, name: &str) -> Option<u64> {
        self.epochs.lock().unwrap_or_else(|p| p.into_inner()).get(name).copied()
    }

    async fn try_acquire(&self, name: &str, holder: &str, ttl: Duration) -> Option<u64> {
        let bucket = self.bucket(ttl).await?;
        let value: bytes::Bytes = serde_json::to_vec(&Holder { holder: holder.to_string() }).ok()?.into();
        let entry = timed("reading a lease", bucket.entry(name)).await.ok()?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let current: Holder = serde_json::from_slice(&e.value).ok()?;
                if current.holder != holder {
                    return None;
                }
                // Renewed only if nobody took it over meanwhile.
                timed("renewing a lease", bucket.update(name, value, e.revision)).await.ok()
            }
            _ => timed("taking a lease", bucket.create(name, value)).await.ok(),
        }
    }
}

#[async_trait]
impl Leases for NatsLeases {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> bool {
        let epoch = self.try_acquire(name, holder, ttl).await;
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        match epoch {
            Some(e) => {
                epochs.insert(name.to_string(), e);
                true
            }
            None => {
                epochs.remove(name);
                false
            }
        }
    }

    async fn release(&self, name: &str, holder: &str) {
        let epoch = self.epochs.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        let Some(epoch) = epoch else { return };
        let buckets: Vec<kv::Store> = self.buckets.lock().await.values().cloned().collect();
        for bucket in buckets {
            // Deleted only at the revision this holder wrote: a lease taken over meanwhile stays.
            if timed("giving a lease back", bucket.delete_expect_revision(name, Some(epoch))).await.is_ok() {
                tracing::debug!(lease = name, holder, "lease given back");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_is_one_nodes_until_it_runs_out_on_the_server_or_is_given_back() {
        let server = hangar_testkit::Nats::start();
        let a = NatsLeases::new(Nats::connect(&server.url(), "a").await.unwrap());
        let b = NatsLeases::new(Nats::connect(&server.url(), "b").await.unwrap());
        let ttl = Duration::from_millis(1500);
        assert!(a.acquire("cron", "a", ttl).await);
        let first = a.epoch("cron").unwrap();
        assert!(!b.acquire("cron", "b", ttl).await, "held by a");
        assert!(b.acquire("adapt", "b", ttl).await, "leases are per name");
        // Renewed, it outlives its first term, and its epoch grows.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(a.acquire("cron", "a", ttl).await);
            assert!(!b.acquire("cron", "b", ttl).await);
        }
        assert!(a.epoch("cron").unwrap() > first);
        // a dies (stops renewing): the server drops it once its time ran out, and b takes it.
        let start = std::time::Instant::now();
        while !b.acquire("cron", "b", ttl).await {
            assert!(start.elapsed() < Duration::from_secs(5), "the lease was not taken over");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(start.elapsed() >= Duration::from_millis(900), "taken over before its time ran out ({:?})", start.elapsed());
        assert!(!a.acquire("cron", "a", ttl).await, "a lost it");
        assert_eq!(a.epoch("cron"), None);
        // Given back by its holder, it is free at once; a release by a non-holder changes nothing.
        a.release("cron", "a").await;
        assert!(!a.acquire("cron", "a", ttl).await);
        b.release("cron", "b").await;
        assert!(a.acquire("cron", "a", ttl).await);
    }
}
