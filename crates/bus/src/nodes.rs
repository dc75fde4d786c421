//! Membership: which nodes there are and whether each is alive. A node reports itself
//! ([`hangar_api::nodes::NodeReport`]) with every heartbeat; [`Membership::nodes`] says what the
//! cluster knows of each. [`LocalMembership`] is the single node's (it is always ready); a
//! cluster's lives on its bus.

use std::sync::Arc;

use async_trait::async_trait;
use hangar_api::nodes::{NodeInfo, NodeReport, NodeState};

/// What a node reports of itself now (its free capacity and instances change).
pub type Reporter = Arc<dyn Fn() -> NodeReport + Send + Sync>;

/// See the module docs.
#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// Every node known (lost ones too, until forgotten), ordered by id.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, String>;
    /// Marks node `id` draining: it finishes what it runs and takes no new work. False if
    /// no such node.
    async fn drain(&self, id: &str) -> Result<bool, String>;
    /// The live nodes as of the last heartbeat, without waiting (for the request path).
    fn snapshot(&self) -> Arc<Vec<NodeInfo>>;
}

/// The one node of an embedded server.
pub struct LocalMembership {
    report: Reporter,
}

impl LocalMembership {
    pub fn new(report: Reporter) -> Arc<LocalMembership> {
        Arc::new(LocalMembership { report })
    }
}

#[async_trait]
impl Membership for LocalMembership {
    async fn nodes(&self) -> Result<Vec<NodeInfo>, String> {
        Ok(vec![NodeInfo { report: (self.report)(), state: NodeState::Ready, last_heartbeat: hangar_api::rfc3339(hangar_core::now_ms()) }])
    }

    fn snapshot(&self) -> Arc<Vec<NodeInfo>> {
        Arc::new(vec![NodeInfo { report: (self.report)(), state: NodeState::Ready, last_heartbeat: hangar_api::rfc3339(hangar_core::now_ms()) }])
    }

    async fn drain(&self, id: &str) -> Result<bool, String> {
        if (self.report)().id != id {
            return Ok(false);
        }
        Err("this server is the only node: there is no other node to move its work to (drain is for clusters: `hangar up --bus nats://…`)".into())
    }
}

/// A part that takes over a lost node's work (its queued events, its service instances). Run
/// on one node of the cluster for each loss.
#[async_trait]
pub trait Failover: Send + Sync + 'static {
    async fn node_lost(&self, node: &str);

    /// This node has been cut off from the bus long enough for the others to find it lost:
    /// it starts nothing they may take over.
    async fn fenced(&self) {}

    /// This node reaches the bus again after being fenced: what others took over meanwhile is
    /// no longer its own.
    async fn rejoined(&self) {}
}
