//! Nodes of a cluster as the API shows them (`GET /v1/nodes`, `hangar nodes`), and what each
//! node says of itself in its heartbeats.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

wire_enum! {
    /// What a node does: every node is the same binary.
    NodeRole, "role" {
        /// Gateway and worker (the default).
        All = "all",
        /// Accepts requests and the API, runs no instances.
        Gateway = "gateway",
        /// Runs instances, reached by the gateways.
        Worker = "worker",
    }
}

impl NodeRole {
    /// Whether instances are placed on a node of this role.
    pub fn runs_instances(self) -> bool {
        self != NodeRole::Gateway
    }
}

wire_enum! {
    /// Whether a node takes work.
    NodeState, "node state" {
        /// Heartbeating and taking work.
        Ready = "ready",
        /// Heartbeating, finishing what it runs, taking no new work.
        Draining = "draining",
        /// Missed its heartbeats: its work is taken over by the others.
        Lost = "lost",
    }
}

/// CPU and memory of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    /// CPUs, in thousandths.
    pub cpu_milli: u64,
    pub memory_mb: u64,
}

/// What a node reports of itself with each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeReport {
    pub id: String,
    pub role: NodeRole,
    /// The address other nodes reach it on (`--advertise`); none for a single node.
    pub address: Option<String>,
    pub capacity: Resources,
    pub free: Resources,
    /// Instances it runs now: warm function instances, service instances, sandboxes.
    pub instances: u32,
    /// Most instances it runs at once (`--max-node-instances`).
    #[serde(default)]
    pub max_instances: u32,
    /// Function revisions resident here (`namespace/name@revision`), which calls prefer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm: Vec<String>,
    /// Whether it runs service instances (a worker with the services runtime).
    #[serde(default)]
    pub runs_services: bool,
    /// The services it has (every worker has every service, perhaps with no instance here)
    /// and their instances here: how gateways find where to send a service's requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceCount>,
    /// `true` once it was told to drain.
    pub draining: bool,
    pub version: String,
    /// When it started (Unix ms).
    pub started_ms: i64,
}

/// A service's instances on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceCount {
    pub namespace: String,
    pub name: String,
    /// Instances passing their readiness probe.
    pub ready: u32,
    /// Instances starting, serving or stopping.
    pub instances: u32,
    /// Instances of the service's minimum this node keeps (its part of the spread).
    #[serde(default)]
    pub part: u32,
}

/// A node as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    #[serde(flatten)]
    pub report: NodeReport,
    pub state: NodeState,
    /// When its last heartbeat reached the bus (RFC 3339, the bus server's clock).
    pub last_heartbeat: String,
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeInfo>,
}
