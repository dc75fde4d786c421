//! Nodes on NATS: every node puts its report into two buckets each heartbeat (1 s apart by
//! default): `hangar-alive`, whose keys the server drops after three heartbeats' time, and
//! `hangar-nodes`, the registry. A node in the registry but no longer alive is lost: one node
//! (the holder of the `failover` lease) hands it to every [`Failover`] part, then moves it to
//! `hangar-lost`, where it is listed for an hour. A node is silent when its key is gone (the
//! server's clock) or has not changed for three heartbeats (the observer's monotonic clock);
//! nodes' wall clocks are never compared. Losses are judged only once the observer's own
//! connection has been up for four heartbeats (after a bus restart every key looks stale).
//!
//! A node joining with an id that a live node heartbeats under is refused. Draining is a key in
//! `hangar-drain`: the node reads it each heartbeat and reports itself draining, until it
//! leaves or starts again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_trait::async_trait;
use futures::TryStreamExt as _;
use hangar_api::nodes::{NodeInfo, NodeReport, NodeState};
use hangar_bus::nodes::Reporter;
use hangar_bus::{Failover, Leases, Membership};
use tokio_util::sync::CancellationToken;

use crate::{Nats, NatsError, NatsLeases, timed};

/// How long a lost node stays listed.
const LOST_KEPT: Duration = Duration::from_secs(3600);
/// Heartbeats a node may miss before it is lost.
const MISSED: u32 = 3;

#[derive(serde::Serialize, serde::Deserialize)]
struct Lost {
    report: NodeReport,
    /// When its last heartbeat reached the bus (the bus server's clock, Unix ms).
    last_ms: i64,
}

/// See the module docs.
pub struct NatsMembership {
    node: String,
    report: Reporter,
    alive: kv::Store,
    nodes: kv::Store,
    lost: kv::Store,
    drain: kv::Store,
    draining: AtomicBool,
    failover: Mutex<Vec<Arc<dyn Failover>>>,
    stopped: CancellationToken,
    nats: Nats,
    /// The live nodes as of the last heartbeat.
    view: std::sync::RwLock<Arc<Vec<NodeInfo>>>,
    every: Duration,
    /// Per node, the revision of its heartbeat key last seen and when (this node's monotonic
    /// clock): a key that stops changing is a silent node even before the server drops it.
    beats: Mutex<std::collections::HashMap<String, (u64, Instant)>>,
}

/// Sleeps `d`, or less if `stop` is cancelled meanwhile; false once cancelled.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => !stop.is_cancelled(),
    }
}

fn created_ms(e: &kv::Entry) -> i64 {
    (e.created.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Every key of a bucket, once each (a key written while the listing runs can come twice).
async fn keys(bucket: &kv::Store) -> Result<Vec<String>, String> {
    let mut keys =
        timed("listing keys", async { bucket.keys().await.map_err(|e| e.to_string())?.try_collect::<Vec<String>>().await.map_err(|e| e.to_string()) }).await?;
    keys.sort();
    keys.dedup();
    Ok(keys)
}

impl NatsMembership {
    /// Joins the cluster as the node `report` describes, heartbeating every `every`; refused
    /// if a live node heartbeats under the same id. One node at a time (the holder of the
    /// `failover` lease in `leases`) looks for lost nodes.
    pub async fn join(nats: Nats, report: Reporter, every: Duration, leases: Arc<NatsLeases>) -> Result<Arc<NatsMembership>, NatsError> {
        let bucket = |name: &str, max_age: Duration, storage| kv::Config { bucket: name.to_string(), history: 1, max_age, storage, ..Default::default() };
        use async_nats::jetstream::stream::StorageType::File;
        // On disk, like the rest: a bus restart keeps the buckets (a node judges losses again
        // only once every node had time to beat after it, see `watch_for_lost`).
        let alive = nats.bucket(bucket("hangar-alive", every * MISSED, File)).await?;
        let nodes = nats.bucket(bucket("hangar-nodes", Duration::ZERO, File)).await?;
        let lost = nats.bucket(bucket("hangar-lost", LOST_KEPT, File)).await?;
        let drain = nats.bucket(bucket("hangar-drain", Duration::ZERO, File)).await?;
        let node = report().id;
        // Another node beating under this id changes the key's revision within a heartbeat or
        // two; a killed one's last beat just runs out.
        if let Ok(Some(seen)) = timed("reading the heartbeats", alive.entry(&node)).await {
            let until = Instant::now() + every * MISSED + every;
            while Instant::now() < until {
                tokio::time::sleep(every / 2).await;
                match timed("reading the heartbeats", alive.entry(&node)).await {
                    Ok(Some(now)) if now.revision != seen.revision => return Err(NatsError::DuplicateNode(node)),
                    Ok(None) => break,
                    _ => {}
                }
            }
        }
        let m = Arc::new(NatsMembership {
            node,
            report,
            alive,
            nodes,
            lost,
            drain,
            draining: AtomicBool::new(false),
            failover: Mutex::default(),
            stopped: Default::default(),
            nats: nats.clone(),
            view: Default::default(),
            every,
            beats: Mutex::default(),
        });
        // A node back under its id is no longer lost, and starts undrained unless told again.
        let _ = timed("un-losing", m.lost.purge(&m.node)).await;
        let _ = timed("undraining", m.drain.purge(&m.node)).await;
        m.beat().await.map_err(NatsError::JetStream)?;
        m.refresh_view().await;
        tokio::spawn(heartbeats(Arc::downgrade(&m), every));
        tokio::spawn(fencing(Arc::downgrade(&m), every));
        tokio::spawn(watch_for_lost(Arc::downgrade(&m), every, leases));
        Ok(m)
    }

    /// Adds a part that takes over lost nodes' work.
    pub fn on_lost(&self, part: Arc<dyn Failover>) {
        self.failover.lock().unwrap_or_else(|p| p.into_inner()).push(part);
    }

    /// Whether this node was told to drain.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Leaves the cluster (a graceful stop): no longer alive, no longer listed, not lost.
    pub async fn leave(&self) {
        self.stopped.cancel();
        let _ = timed("leaving", self.alive.purge(&self.node)).await;
        let _ = timed("leaving", self.nodes.purge(&self.node)).await;
        let _ = timed("leaving", self.drain.purge(&self.node)).await;
    }

    async fn beat(&self) -> Result<(), String> {
        if let Ok(entry) = timed("reading the drain flag", self.drain.entry(&self.node)).await {
            let draining = entry.is_some_and(|e| e.operation == kv::Operation::Put);
            if draining && !self.draining.swap(true, Ordering::AcqRel) {
                tracing::info!("this node is draining: it takes no new work");
            }
        }
        let mut report = (self.report)();
        report.draining = self.is_draining();
        let body: bytes::Bytes = serde_json::to_vec(&report).map_err(|e| e.to_string())?.into();
        timed("heartbeat", self.alive.put(&self.node, body.clone())).await?;
        timed("registering", self.nodes.put(&self.node, body)).await?;
        Ok(())
    }

    /// Node `id`'s heartbeat entry if it still beats: present, and changed within the last
    /// [`MISSED`] heartbeats as this node's clock measures.
    async fn beating(&self, id: &str) -> Result<Option<kv::Entry>, String> {
        let entry = timed("reading a heartbeat", self.alive.entry(id)).await?.filter(|e| e.operation == kv::Operation::Put);
        let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = entry else {
            beats.remove(id);
            return Ok(None);
        };
        let now = Instant::now();
        let seen = beats.entry(id.to_string()).or_insert((entry.revision, now));
        if seen.0 != entry.revision {
            *seen = (entry.revision, now);
        }
        Ok((now.duration_since(seen.1) < self.every * MISSED).then_some(entry))
    }

    /// Reads the live nodes into the view the request path uses (kept as it was if the bus
    /// cannot be read: what is running keeps being reached).
    async fn refresh_view(&self) {
        match self.nodes().await {
            Ok(nodes) => {
                let live: Vec<NodeInfo> = nodes.into_iter().filter(|n| n.state != NodeState::Lost).collect();
                *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
            }
            Err(e) => tracing::debug!("reading the nodes: {e}"),
        }
    }

    /// Hands each registered node that stopped heartbeating to the failover parts, then lists
    /// it as lost.
    async fn find_lost(&self) -> Result<(), String> {
        let ids: Vec<String> = keys(&self.nodes).await?;
        for id in ids {
            if self.beating(&id).await?.is_some() {
                continue;
            }
            let Some(entry) = timed("reading a node", self.nodes.entry(&id)).await?.filter(|e| e.operation == kv::Operation::Put) else { continue };
            let Ok(report) = serde_json::from_slice::<NodeReport>(&entry.value) else { continue };
            tracing::warn!(node = %id, "node lost: it missed {MISSED} heartbeats; taking over its work");
            let parts = self.failover.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for part in parts {
                part.node_lost(&id).await;
            }
            let lost = Lost { report, last_ms: created_ms(&entry) };
            let body: bytes::Bytes = serde_json::to_vec(&lost).map_err(|e| e.to_string())?.into();
            timed("listing a lost node", self.lost.put(&id, body)).await?;
            // Only at the revision read: a node that came back meanwhile stays registered.
            timed("unregistering a lost node", self.nodes.delete_expect_revision(&id, Some(entry.revision))).await?;
        }
        Ok(())
    }
}

/// Fences this node while its link to the bus has been down for [`MISSED`] heartbeats (the
/// others may have found it lost and taken its work), and hands back what they took once the
/// link is back. Measured on this node's monotonic clock, without I/O.
async fn fencing(m: std::sync::Weak<NatsMembership>, every: Duration) {
    let mut down_since: Option<Instant> = None;
    let mut fenced = false;
    loop {
        let Some(me) = m.upgrade() else { return };
        if !pause(&me.stopped, every / 3).await {
            return;
        }
        let parts = || me.failover.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if me.nats.is_up() {
            down_since = None;
            if fenced {
                fenced = false;
                tracing::warn!("the bus is reachable again: handing back what other nodes took over meanwhile");
                for part in parts() {
                    part.rejoined().await;
                }
            }
            continue;
        }
        let since = *down_since.get_or_insert_with(Instant::now);
        if !fenced && since.elapsed() >= every * MISSED {
            fenced = true;
            tracing::warn!("cut off from the bus for {MISSED} heartbeats: other nodes may take this node's work; starting none of it");
            for part in parts() {
                part.fenced().await;
            }
        }
    }
}

async fn heartbeats(m: std::sync::Weak<NatsMembership>, every: Duration) {
    loop {
        let Some(me) = m.upgrade() else { return };
        if !pause(&me.stopped, every).await {
            return;
        }
        if let Err(e) = me.beat().await {
            tracing::warn!("heartbeat failed: {e}");
        }
        me.refresh_view().await;
    }
}

async fn watch_for_lost(m: std::sync::Weak<NatsMembership>, every: Duration, leases: Arc<NatsLeases>) {
    loop {
        let Some(me) = m.upgrade() else { return };
        if !pause(&me.stopped, every).await {
            leases.release("failover", &me.node).await;
            return;
        }
        // Right after this node's connection (re)started, every heartbeat may look stale (the
        // bus was down, or this node was cut off): losses are judged only once every node had
        // time to beat again.
        let settled = me.nats.up_for().is_some_and(|up| up >= every * (MISSED + 1));
        if settled
            && leases.acquire("failover", &me.node, every * MISSED).await
            && let Err(e) = me.find_lost().await
        {
            tracing::warn!("looking for lost nodes failed: {e}");
        }
    }
}

#[async_trait]
impl Membership for NatsMembership {
    async fn nodes(&self) -> Result<Vec<NodeInfo>, String> {
        let mut out = Vec::new();
        let ids: Vec<String> = keys(&self.nodes).await?;
        for id in &ids {
            let Some(entry) = timed("reading a node", self.nodes.entry(id)).await?.filter(|e| e.operation == kv::Operation::Put) else { continue };
            let Ok(report) = serde_json::from_slice::<NodeReport>(&entry.value) else { continue };
            let alive = self.beating(id).await?;
            let state = match &alive {
                None => NodeState::Lost,
                Some(_) if report.draining => NodeState::Draining,
                Some(_) => NodeState::Ready,
            };
            let last = alive.as_ref().map_or_else(|| created_ms(&entry), created_ms);
            out.push(NodeInfo { report, state, last_heartbeat: hangar_api::rfc3339(last) });
        }
        let lost = keys(&self.lost).await.unwrap_or_default();
        for id in lost.iter().filter(|id| !ids.contains(id)) {
            let Some(entry) = timed("reading a lost node", self.lost.entry(id)).await?.filter(|e| e.operation == kv::Operation::Put) else { continue };
            let Ok(l) = serde_json::from_slice::<Lost>(&entry.value) else { continue };
            out.push(NodeInfo { report: l.report, state: NodeState::Lost, last_heartbeat: hangar_api::rfc3339(l.last_ms) });
        }
        out.sort_by(|a, b| a.report.id.cmp(&b.report.id));
        Ok(out)
    }

    fn snapshot(&self) -> Arc<Vec<NodeInfo>> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn drain(&self, id: &str) -> Result<bool, String> {
        if timed("reading a node", self.nodes.entry(id)).await?.filter(|e| e.operation == kv::Operation::Put).is_none() {
            return Ok(false);
        }
        timed("marking a node draining", self.drain.put(id, bytes::Bytes::from_static(b"1"))).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_api::nodes::{NodeRole, Resources};

    fn reporter(id: &str) -> Reporter {
        let id = id.to_string();
        Arc::new(move || NodeReport {
            id: id.clone(),
            role: NodeRole::All,
            address: Some("127.0.0.1:1".into()),
            capacity: Resources { cpu_milli: 2000, memory_mb: 1024 },
            free: Resources { cpu_milli: 2000, memory_mb: 1024 },
            instances: 0,
            max_instances: 100,
            warm: Vec::new(),
            runs_services: false,
            services: Vec::new(),
            draining: false,
            version: "test".into(),
            started_ms: 0,
        })
    }

    struct Took(Mutex<Vec<String>>);

    #[async_trait]
    impl Failover for Took {
        async fn node_lost(&self, node: &str) {
            self.0.lock().unwrap().push(node.to_string());
        }
    }

    async fn join(server: &hangar_testkit::Nats, id: &str) -> Result<Arc<NatsMembership>, NatsError> {
        let nats = Nats::connect(&server.url(), id).await.unwrap();
        NatsMembership::join(nats.clone(), reporter(id), Duration::from_millis(300), NatsLeases::new(nats)).await
    }

    async fn states(m: &NatsMembership) -> Vec<(String, NodeState)> {
        m.nodes().await.unwrap().into_iter().map(|n| (n.report.id, n.state)).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_heartbeat_a_silent_one_is_lost_once_and_an_id_is_one_nodes() {
        let server = hangar_testkit::Nats::start();
        let a = join(&server, "a").await.unwrap();
        let took = Arc::new(Took(Mutex::default()));
        a.on_lost(took.clone());
        let b = join(&server, "b").await.unwrap();
        assert_eq!(states(&a).await, [("a".into(), NodeState::Ready), ("b".into(), NodeState::Ready)]);
        // A second node under a live id is refused.
        assert!(matches!(join(&server, "b").await, Err(NatsError::DuplicateNode(id)) if id == "b"));
        // Drained: reported so with its next heartbeats.
        assert!(a.drain("b").await.unwrap());
        assert!(!a.drain("nobody").await.unwrap());
        let start = Instant::now();
        while !b.is_draining() {
            assert!(start.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // b stops beating (killed): lost after its heartbeats ran out, handed over once.
        b.stopped.cancel();
        let start = Instant::now();
        while took.0.lock().unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(10), "b was never found lost");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(start.elapsed() >= Duration::from_millis(600), "lost before it missed its heartbeats");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*took.0.lock().unwrap(), ["b"], "handed over once");
        assert_eq!(states(&a).await, [("a".into(), NodeState::Ready), ("b".into(), NodeState::Lost)]);
        // Back under its id: registered again, no longer lost; a graceful leave unlists it.
        drop(b);
        let b = join(&server, "b").await.unwrap();
        assert_eq!(states(&a).await, [("a".into(), NodeState::Ready), ("b".into(), NodeState::Ready)]);
        b.leave().await;
        assert_eq!(states(&a).await, [("a".into(), NodeState::Ready)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bus_restart_loses_no_node_and_heartbeats_resume() {
        let mut server = hangar_testkit::Nats::start();
        let a = join(&server, "a").await.unwrap();
        let took = Arc::new(Took(Mutex::default()));
        a.on_lost(took.clone());
        let _b = join(&server, "b").await.unwrap();
        // Down for longer than three heartbeats: every heartbeat key is stale when it is back.
        server.stop();
        tokio::time::sleep(Duration::from_secs(2)).await;
        server.resume();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(took.0.lock().unwrap().is_empty(), "a bus restart is no node's loss: {:?}", took.0.lock().unwrap());
        assert_eq!(states(&a).await, [("a".into(), NodeState::Ready), ("b".into(), NodeState::Ready)]);
    }
}
