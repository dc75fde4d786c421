//! The cluster's bus on NATS: [`NatsBus`] carries change notifications between nodes (core
//! NATS, subject `hangar.changes`), [`NatsLeases`] keeps leases in JetStream key-value buckets,
//! and [`membership`] has heartbeats, the node registry and the take-over of lost nodes' work.
//!
//! The store stays the only source of truth: a message says only what changed, and a node that
//! may have missed messages (it was cut off, or fell behind) applies [`Change::Everything`],
//! which rebuilds its tables from the store. Everything here works on nats-server 2.9
//! (Debian 12): key-value buckets with a maximum age, compare-and-set on a key's revision.
#![forbid(unsafe_code)]

pub mod lease;
pub mod membership;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use futures::StreamExt as _;
use hangar_bus::{Bus, Change, LocalBus, Subscriber};

pub use lease::NatsLeases;
pub use membership::NatsMembership;

/// The subject changes travel on.
const CHANGES: &str = "hangar.changes";
/// How long a JetStream call may take before the bus counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the bus failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("the bus at {address} cannot be reached: {source}; check that nats-server runs there with JetStream on (`nats-server -js`)")]
    Connect {
        address: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("the bus's JetStream failed ({0}); check that nats-server runs with JetStream on (`-js -sd DIR`)")]
    JetStream(String),
    #[error("node id `{0}` is in use by another live node; give each node its own data dir (the node id comes from it)")]
    DuplicateNode(String),
}

/// One connection to nats-server, shared by the bus, the leases and the membership.
#[derive(Clone)]
pub struct Nats {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    link: Arc<Link>,
}

/// Whether the connection is up, and who to tell when it comes back.
#[derive(Default)]
struct Link {
    up: AtomicBool,
    /// Since when it is up (without a break).
    up_since: std::sync::Mutex<Option<std::time::Instant>>,
    /// Told when the connection came back after a loss (messages may have been missed).
    back: tokio::sync::Notify,
}

/// The address part of a `nats://` URL (credentials left out), for messages.
pub fn describe(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.rsplit_once('@').map_or(rest, |(_, host)| host).trim_end_matches('/').to_string()
}

impl Nats {
    /// Connects to `url` as node `node`; fails at once (within 5 s) if the server cannot be
    /// reached. Once connected, the client reconnects by itself for as long as it takes.
    pub async fn connect(url: &str, node: &str) -> Result<Nats, NatsError> {
        let link = Arc::new(Link::default());
        let events = link.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("hangar {node}"))
            .connection_timeout(Duration::from_secs(5))
            // A link that goes silent (dropped packets, not a closed connection) is noticed
            // within a few seconds, not the client's default of minutes.
            .ping_interval(Duration::from_secs(1))
            .event_callback(move |event| {
                let link = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            link.set_up(true);
                            if !link.up.swap(true, Ordering::AcqRel) {
                                link.back.notify_waiters();
                            }
                        }
                        async_nats::Event::Disconnected => {
                            link.set_up(false);
                            link.up.store(false, Ordering::Release);
                            tracing::warn!("the bus connection is lost; changes are refused until it is back");
                        }
                        async_nats::Event::SlowConsumer(_) => {
                            tracing::warn!("this node fell behind the bus; it catches up from the store");
                            link.back.notify_waiters();
                        }
                        other => tracing::debug!("bus: {other}"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|source| NatsError::Connect { address: describe(url), source })?;
        link.up.store(true, Ordering::Release);
        link.set_up(true);
        let jetstream = jetstream::new(client.clone());
        Ok(Nats { client, jetstream, link })
    }

    /// Whether the connection is up now.
    pub fn is_up(&self) -> bool {
        self.link.up.load(Ordering::Acquire)
    }

    /// How long the connection has been up without a break (`None`: it is down).
    pub fn up_for(&self) -> Option<Duration> {
        self.link.up_since.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }

    /// A key-value bucket, made if missing. Its stream is made here, shaped as JetStream's
    /// key-value buckets are (`KV_<bucket>` over `$KV.<bucket>.>`), because the client's own
    /// bucket creation first asks for account details that nats-server 2.9 answers in an older
    /// shape.
    pub async fn bucket(&self, config: jetstream::kv::Config) -> Result<jetstream::kv::Store, NatsError> {
        let name = config.bucket.clone();
        let failed = |e: &dyn std::fmt::Display| NatsError::JetStream(format!("bucket {name}: {e}"));
        let timeout = |_| NatsError::JetStream(format!("bucket {name}: no answer within {CALL_TIMEOUT:?}"));
        if let Ok(kv) = tokio::time::timeout(CALL_TIMEOUT, self.jetstream.get_key_value(&name)).await.map_err(timeout)? {
            return Ok(kv);
        }
        let stream = jetstream::stream::Config {
            name: format!("KV_{name}"),
            description: Some(config.description),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: config.history.max(1),
            max_age: config.max_age,
            storage: config.storage,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: 1,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        };
        // Made meanwhile by another node: the same config is accepted again.
        tokio::time::timeout(CALL_TIMEOUT, self.jetstream.get_or_create_stream(stream)).await.map_err(timeout)?.map_err(|e| failed(&e))?;
        tokio::time::timeout(CALL_TIMEOUT, self.jetstream.get_key_value(&name)).await.map_err(timeout)?.map_err(|e| failed(&e))
    }
}

impl Link {
    fn set_up(&self, up: bool) {
        let mut since = self.up_since.lock().unwrap_or_else(|p| p.into_inner());
        match (up, since.is_some()) {
            (true, false) => *since = Some(std::time::Instant::now()),
            (false, _) => *since = None,
            (true, true) => {}
        }
    }
}

/// A call to the bus, bounded by [`CALL_TIMEOUT`]; its error says what failed.
pub(crate) async fn timed<T, E: std::fmt::Display>(what: &str, f: impl Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: the bus did not answer within {CALL_TIMEOUT:?}")),
    }
}

/// What travels on [`CHANGES`].
#[derive(serde::Serialize, serde::Deserialize)]
struct Message {
    /// The node that published it (it applied the change itself before publishing).
    origin: String,
    change: Change,
}

/// The change bus of a cluster node: a change is applied here (as [`LocalBus`] does) and sent
/// to every other node, which applies it by reading the store.
pub struct NatsBus {
    local: Arc<LocalBus>,
    nats: Nats,
    node: String,
}

impl NatsBus {
    /// Starts listening for other nodes' changes, and catching up from the store whenever the
    /// connection comes back.
    pub async fn start(nats: Nats, node: &str) -> Result<Arc<NatsBus>, NatsError> {
        let bus = Arc::new(NatsBus { local: LocalBus::new(), nats: nats.clone(), node: node.to_string() });
        let mut changes = nats.client.subscribe(CHANGES).await.map_err(|e| NatsError::JetStream(format!("subscribing to {CHANGES}: {e}")))?;
        // Once flushed, the server has the subscription: nothing published after `start`
        // returns is missed (what came before, the caller reads from the store).
        nats.client.flush().await.map_err(|e| NatsError::JetStream(format!("subscribing to {CHANGES}: {e}")))?;
        let weak = Arc::downgrade(&bus);
        tokio::spawn(async move {
            while let Some(msg) = changes.next().await {
                let Some(bus) = weak.upgrade() else { return };
                match serde_json::from_slice::<Message>(&msg.payload) {
                    Ok(m) if m.origin == bus.node => {}
                    // Applied side by side; the local bus orders applies of one thing.
                    Ok(m) => drop(tokio::spawn(async move { bus.local.publish(m.change).await })),
                    Err(e) => tracing::warn!("an unreadable change on {CHANGES} was ignored: {e}"),
                }
            }
        });
        let weak = Arc::downgrade(&bus);
        tokio::spawn(async move {
            loop {
                let Some(link) = weak.upgrade().map(|b| b.nats.link.clone()) else { return };
                link.back.notified().await;
                let Some(bus) = weak.upgrade() else { return };
                tracing::info!("the bus is back: catching up with the store");
                bus.local.publish(Change::Everything).await;
            }
        });
        Ok(bus)
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, change: Change) {
        let message = Message { origin: self.node.clone(), change: change.clone() };
        match serde_json::to_vec(&message) {
            Ok(body) => {
                if let Err(e) = self.nats.client.publish(CHANGES, body.into()).await {
                    tracing::warn!("sending a change to the other nodes failed ({e}); they catch up when their bus is back");
                }
            }
            Err(e) => tracing::error!("a change does not serialize: {e}"),
        }
        self.local.publish(change).await;
    }

    fn subscribe(&self, subscriber: Arc<dyn Subscriber>) {
        self.local.subscribe(subscriber);
    }

    fn unavailable(&self) -> Option<String> {
        (!self.nats.is_up()).then(|| "this node is cut off from the bus (nats-server), so other nodes would not learn of a change".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Seen(Mutex<Vec<Change>>);

    #[async_trait]
    impl Subscriber for Seen {
        async fn apply(&self, change: &Change) {
            self.0.lock().unwrap().push(change.clone());
        }
    }

    async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_reaches_the_other_nodes_and_a_node_catches_up_after_losing_the_bus() {
        let mut server = hangar_testkit::Nats::start();
        let (a, b) = (Nats::connect(&server.url(), "a").await.unwrap(), Nats::connect(&server.url(), "b").await.unwrap());
        let (bus_a, bus_b) = (NatsBus::start(a, "a").await.unwrap(), NatsBus::start(b, "b").await.unwrap());
        let (seen_a, seen_b) = (Arc::new(Seen(Mutex::default())), Arc::new(Seen(Mutex::default())));
        bus_a.subscribe(seen_a.clone());
        bus_b.subscribe(seen_b.clone());
        let change = Change::Function { namespace: "default".into(), name: "hello".into() };
        bus_a.publish(change.clone()).await;
        // Applied on the publishing node before publish returns, once.
        assert_eq!(*seen_a.0.lock().unwrap(), std::slice::from_ref(&change));
        wait_for("node b to apply the change", || seen_b.0.lock().unwrap().contains(&change)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(seen_a.0.lock().unwrap().len(), 1, "a node does not apply its own change twice");

        // Cut off: changes are refused; back: every node catches up from the store.
        server.stop();
        wait_for("the loss to be noticed", || bus_b.unavailable().is_some()).await;
        assert!(bus_b.unavailable().unwrap().contains("cut off from the bus"));
        server.resume();
        wait_for("node b to catch up", || seen_b.0.lock().unwrap().contains(&Change::Everything)).await;
        assert_eq!(bus_b.unavailable(), None);
    }

    #[tokio::test]
    async fn an_unreachable_bus_says_where_and_what_to_check() {
        let url = format!("nats://user:secret@127.0.0.1:{}", hangar_testkit::free_port());
        let e = Nats::connect(&url, "a").await.err().expect("nothing listens there");
        let text = e.to_string();
        assert!(text.contains("127.0.0.1:") && text.contains("nats-server") && !text.contains("secret"), "{text}");
    }
}
