//! The change bus: a change to desired state, once written to the store, reaches every part of
//! the server that keeps a copy of it (the route table, the key table, the trigger table, the
//! services table), and later every server of a cluster.
//!
//! Subscribers are informers: a [`Change`] names what changed, not how, and a subscriber brings
//! its copy up to date by reading the store. Applying is level-triggered, so the order in which
//! changes arrive does not matter as long as each is applied after its write: the last apply
//! sees the store's last state. [`LocalBus`] is the in-process bus: [`Bus::publish`] applies the
//! change to every subscriber and returns when they all have, so a deploy is routable when its
//! answer goes out; changes of one thing are applied one at a time, changes of different things
//! side by side (a service's slow rollout holds up no function deploy). [`Change::Everything`]
//! is how a server catches up with the store as a whole (at start; later after losing the
//! bus). [`lease`]: work that must run once. [`nodes`]: the nodes there are.
#![forbid(unsafe_code)]

pub mod lease;
pub mod nodes;

use std::sync::{Arc, RwLock};

pub use lease::{Leases, LocalLeases};
pub use nodes::{Failover, LocalMembership, Membership};

use async_trait::async_trait;

/// What changed in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Change {
    /// A function's current revision changed, or it was removed.
    Function { namespace: String, name: String },
    /// A namespace was made or removed, or its limits changed.
    Namespace { name: String },
    /// A key was made or removed.
    Keys,
    /// A trigger was made, changed or removed.
    Trigger { namespace: String, name: String },
    /// A service's current revision changed, or it was removed.
    Service { namespace: String, name: String },
    /// Anything may have changed: every subscriber brings all it keeps up to date (at start,
    /// the tables are filled this way).
    Everything,
}

/// A part that keeps a copy of some desired state.
#[async_trait]
pub trait Subscriber: Send + Sync + 'static {
    /// Brings this copy up to date for `change` (ignoring changes of what it does not keep).
    async fn apply(&self, change: &Change);
}

/// See the module docs.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes a change already written to the store; returns once this server's subscribers
    /// have applied it.
    async fn publish(&self, change: Change);
    /// Adds a subscriber for every change published from now on.
    fn subscribe(&self, subscriber: Arc<dyn Subscriber>);
    /// Why changes cannot be made now, if they cannot: a change written to the store but
    /// not announced would leave other nodes' copies behind, so the control layer refuses
    /// changes while the bus is cut off. Never, in process.
    fn unavailable(&self) -> Option<String> {
        None
    }
}

/// The in-process bus.
#[derive(Default)]
pub struct LocalBus {
    subscribers: RwLock<Vec<Arc<dyn Subscriber>>>,
    /// A turn per thing changed, so two applies of one thing never interleave.
    applying: hangar_core::Turns<Change>,
    /// [`Change::Everything`] is applied alone: a subscriber reading the whole store must not
    /// interleave with the change of one thing (it could put back what that change removed).
    whole: tokio::sync::RwLock<()>,
}

impl LocalBus {
    pub fn new() -> Arc<LocalBus> {
        Arc::new(LocalBus::default())
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, change: Change) {
        let (_alone, _shared);
        match change {
            Change::Everything => _alone = self.whole.write().await,
            _ => _shared = self.whole.read().await,
        }
        let subscribers = self.subscribers.read().unwrap_or_else(|p| p.into_inner()).clone();
        self.applying
            .run(change.clone(), async {
                for s in subscribers {
                    s.apply(&change).await;
                }
            })
            .await;
    }

    fn subscribe(&self, subscriber: Arc<dyn Subscriber>) {
        self.subscribers.write().unwrap_or_else(|p| p.into_inner()).push(subscriber);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A copy of one value kept from a "store".
    struct Copy {
        store: Arc<Mutex<u32>>,
        copy: Mutex<Option<u32>>,
        applied: Mutex<Vec<Change>>,
    }

    #[async_trait]
    impl Subscriber for Copy {
        async fn apply(&self, change: &Change) {
            if let Change::Function { .. } = change {
                let v = *self.store.lock().unwrap();
                tokio::task::yield_now().await;
                *self.copy.lock().unwrap() = Some(v);
            }
            self.applied.lock().unwrap().push(change.clone());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_subscriber_has_applied_a_change_when_publish_returns() {
        let bus = LocalBus::new();
        let store = Arc::new(Mutex::new(0));
        let subs: Vec<Arc<Copy>> = (0..2).map(|_| Arc::new(Copy { store: store.clone(), copy: Mutex::default(), applied: Mutex::default() })).collect();
        for s in &subs {
            bus.subscribe(s.clone());
        }
        let f = || Change::Function { namespace: "default".into(), name: "f".into() };
        *store.lock().unwrap() = 1;
        bus.publish(f()).await;
        assert!(subs.iter().all(|s| *s.copy.lock().unwrap() == Some(1)));
        // Concurrent writers each publish after their write: the copies end at the last value.
        let mut writers = tokio::task::JoinSet::new();
        for v in 2..=20 {
            let (bus, store) = (bus.clone(), store.clone());
            writers.spawn(async move {
                *store.lock().unwrap() = v;
                bus.publish(Change::Function { namespace: "default".into(), name: "f".into() }).await;
            });
        }
        while writers.join_next().await.is_some() {}
        let last = *store.lock().unwrap();
        assert!(subs.iter().all(|s| *s.copy.lock().unwrap() == Some(last)), "copies converge on the store's last value");
        bus.publish(Change::Keys).await;
        assert!(subs.iter().all(|s| s.applied.lock().unwrap().last() == Some(&Change::Keys)));
    }

    /// Holds every apply of a service's change until released.
    struct Slow {
        release: tokio::sync::Notify,
        applied: Mutex<Vec<Change>>,
    }

    #[async_trait]
    impl Subscriber for Slow {
        async fn apply(&self, change: &Change) {
            if let Change::Service { .. } = change {
                self.release.notified().await;
            }
            self.applied.lock().unwrap().push(change.clone());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_change_of_one_thing_holds_up_only_that_thing() {
        let bus = LocalBus::new();
        let slow = Arc::new(Slow { release: tokio::sync::Notify::new(), applied: Mutex::default() });
        bus.subscribe(slow.clone());
        let svc = || Change::Service { namespace: "default".into(), name: "web".into() };
        let first = tokio::spawn({
            let bus = bus.clone();
            async move { bus.publish(svc()).await }
        });
        let second = tokio::spawn({
            let bus = bus.clone();
            async move { bus.publish(svc()).await }
        });
        // Another thing's change goes through while the service's is applied.
        tokio::time::timeout(std::time::Duration::from_secs(5), bus.publish(Change::Keys)).await.expect("not held up by the service");
        assert_eq!(*slow.applied.lock().unwrap(), [Change::Keys]);
        // The service's two changes take turns (both hold its turn, with the map): one release
        // lets exactly one finish.
        while bus.applying.waiting(&svc()) < 2 {
            tokio::task::yield_now().await;
        }
        slow.release.notify_one();
        while slow.applied.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(slow.applied.lock().unwrap().len(), 2, "the second waits for its turn");
        slow.release.notify_one();
        first.await.unwrap();
        second.await.unwrap();
        assert_eq!(slow.applied.lock().unwrap().len(), 3);
        assert_eq!(bus.applying.busy(), 0, "turns are forgotten once nobody holds them");
    }
}
