//! Wire types of `/v1/services`: long-running containers from OCI images.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validate::Invalid;

/// Which OCI runtime runs a service's containers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContainerRuntime {
    /// runc: Linux namespaces and cgroups.
    #[default]
    Runc,
    /// gVisor (`runsc`): a user-space kernel between the container and the host.
    Gvisor,
}

/// How Hangar tells that an instance can take traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// HTTP path answered with 2xx or 3xx; without it, a TCP connect to the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between checks, ms.
    #[serde(default = "default_probe_period_ms")]
    pub period_ms: u64,
    /// How long an instance may take to become ready before it counts as failed, ms.
    #[serde(default = "default_probe_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_probe_period_ms() -> u64 {
    200
}
fn default_probe_timeout_ms() -> u64 {
    60_000
}

impl Default for Probe {
    fn default() -> Self {
        Probe { path: None, period_ms: default_probe_period_ms(), timeout_ms: default_probe_timeout_ms() }
    }
}

/// A service's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Image reference or id in the namespace's image store.
    pub image: String,
    /// Port the container listens on; `PORT` is set to it. Default: the image's first exposed
    /// TCP port, else 8080.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Instances always running (0..=100); 0 lets the service scale to zero when idle, and
    /// the gateway holds requests while an instance starts.
    #[serde(default = "one")]
    pub min_instances: u32,
    /// Most instances (min..=100, at least 1); between min and max the autoscaler decides.
    #[serde(default = "one")]
    pub max_instances: u32,
    /// Requests in flight one instance should carry; the autoscaler keeps the average near
    /// it (1..=1000, default 80 as Cloud Run's concurrency).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// The autoscaler's stable window in ms (1000..=3600000, default 60000): it scales down
    /// (and to zero) only on this long an average; its panic window is a tenth of it.
    #[serde(default = "default_window_ms")]
    pub scale_window_ms: u64,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Replaces the image's Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Named volumes, `NAME:/absolute/path`; they outlive instances and revisions.
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub runtime: ContainerRuntime,
    /// Memory limit per instance, MiB (16..=65536).
    #[serde(default = "default_service_memory")]
    pub memory_mb: u32,
    /// CPU limit per instance, in CPUs (0.05..=64).
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    #[serde(default)]
    pub readiness: Probe,
    /// Host names whose requests the gateway sends to this service (whole path), e.g.
    /// `app.example.com`; each may belong to one service only.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Whether `/svc/{namespace}/{name}/...` answers without an API key.
    #[serde(default)]
    pub public: bool,
    /// Whether instances may open connections beyond Hangar's bridge.
    #[serde(default = "yes")]
    pub egress: bool,
    /// Time between SIGTERM and SIGKILL when an instance stops, ms.
    #[serde(default = "default_grace_ms")]
    pub stop_grace_ms: u64,
    /// `fixed` (default): `min_instances` as configured. `auto`: the advisor keeps
    /// `min_instances` (at least 1) warm while the service costs less than a scale-to-zero
    /// function would at its traffic, and lets it scale to zero while it does not.
    #[serde(default, skip_serializing_if = "crate::FunctionMode::is_fixed")]
    pub mode: crate::FunctionMode,
}

fn one() -> u32 {
    1
}
fn default_concurrency() -> u32 {
    80
}
fn default_window_ms() -> u64 {
    60_000
}
fn yes() -> bool {
    true
}
fn default_service_memory() -> u32 {
    512
}
fn default_cpus() -> f64 {
    1.0
}
fn default_grace_ms() -> u64 {
    10_000
}

impl ServiceConfig {
    /// A configuration with every default for `image`.
    pub fn new(image: impl Into<String>) -> Self {
        serde_json::from_value(serde_json::json!({ "image": image.into() })).unwrap_or_else(|_| unreachable!("the defaults deserialize"))
    }

    /// Checks every field; the first broken rule is the error.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.image.trim().is_empty() {
            return Err(Invalid::new("image", "must name an image (`hangar image ls` lists them)"));
        }
        if self.port == Some(0) {
            return Err(Invalid::new("port", "must be 1..=65535"));
        }
        if self.min_instances > 100 {
            return Err(Invalid::new("min_instances", "must be 0..=100"));
        }
        if self.max_instances < self.min_instances.max(1) || self.max_instances > 100 {
            return Err(Invalid::new("max_instances", format!("must be {}..=100 (at least min_instances and 1)", self.min_instances.max(1))));
        }
        if !(1..=1000).contains(&self.concurrency) {
            return Err(Invalid::new("concurrency", "must be 1..=1000 requests per instance"));
        }
        if !(1000..=3_600_000).contains(&self.scale_window_ms) {
            return Err(Invalid::new("scale_window_ms", "must be 1000..=3600000 (1 s to 1 h)"));
        }
        if !(16..=65536).contains(&self.memory_mb) {
            return Err(Invalid::new("memory_mb", "must be 16..=65536"));
        }
        if !(0.05..=64.0).contains(&self.cpus) || !self.cpus.is_finite() {
            return Err(Invalid::new("cpus", "must be 0.05..=64"));
        }
        for k in self.env.keys() {
            crate::validate::env_var_name(k)?;
        }
        if self.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > 64 * 1024 {
            return Err(Invalid::new("env", "is larger than 64 KiB"));
        }
        for v in &self.volumes {
            volume(v)?;
        }
        let mut seen = std::collections::HashSet::new();
        for v in &self.volumes {
            let (_, path) = v.split_once(':').unwrap_or_default();
            if !seen.insert(path) {
                return Err(Invalid::new("volumes", format!("`{path}` is mounted twice")));
            }
        }
        crate::validate::hosts(&self.hosts)?;
        if let Some(p) = &self.readiness.path
            && !p.starts_with('/')
        {
            return Err(Invalid::new("readiness.path", "must start with `/`"));
        }
        if !(10..=60_000).contains(&self.readiness.period_ms) || !(100..=3_600_000).contains(&self.readiness.timeout_ms) {
            return Err(Invalid::new("readiness", "period_ms must be 10..=60000 and timeout_ms 100..=3600000"));
        }
        if self.stop_grace_ms > 3_600_000 {
            return Err(Invalid::new("stop_grace_ms", "must be at most 3600000 (1 h)"));
        }
        if self.command.as_ref().is_some_and(Vec::is_empty) {
            return Err(Invalid::new("command", "must not be empty (leave it out to use the image's)"));
        }
        Ok(())
    }
}

/// Checks a volume spec `NAME:/path`: the name follows the naming rule and the path is
/// absolute, without `..`, and not a system path the container needs.
pub fn volume(spec: &str) -> Result<(String, String), Invalid> {
    let bad = |m: String| Invalid::new("volumes", m);
    let Some((name, path)) = spec.split_once(':') else {
        return Err(bad(format!("`{spec}` is not NAME:/path (e.g. `data:/var/lib/app`)")));
    };
    crate::validate::name("volumes", name).map_err(|e| bad(format!("`{spec}`: {}", e.message)))?;
    if !path.starts_with('/') || path.split('/').any(|c| c == ".." || c == ".") || path.contains('\0') || path.len() > 1024 {
        return Err(bad(format!("`{spec}`: the path must be absolute, without `.` or `..` (a volume is a Hangar-managed directory, never a host path)")));
    }
    let clean = path.trim_end_matches('/');
    if clean.is_empty()
        || ["/proc", "/sys", "/dev", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname"].iter().any(|p| clean == *p || clean.starts_with(&format!("{p}/")))
    {
        return Err(bad(format!("`{spec}`: `{path}` cannot hold a volume")));
    }
    Ok((name.to_string(), clean.to_string()))
}

/// A service as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub revision: u64,
    pub config: ServiceConfig,
    /// The image id the revision runs.
    pub image_id: String,
    /// Where the gateway serves it.
    pub url_path: String,
    /// Where it answers, as the caller reached this server: its `/svc/` URL, its own host
    /// name (`NAME.NAMESPACE.svc.DOMAIN`, whole path) and the hosts it claims.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Its instances now (empty when the server is not running it).
    #[serde(default)]
    pub instances: Vec<ServiceInstance>,
    /// What the autoscaler saw and decided last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingStatus>,
    /// In a cluster: its instances on each node, as the nodes' last heartbeats said (`instances`
    /// lists only those of the node that answered).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<ServiceOnNode>,
}

/// A service's instances on one node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceOnNode {
    pub node: String,
    /// Instances passing their readiness probe.
    pub ready: u32,
    /// Instances starting, serving or stopping.
    pub instances: u32,
    /// Instances of its minimum this node keeps (its part of the spread); `instances` differs
    /// while instances move between nodes.
    #[serde(default)]
    pub part: u32,
}

/// The autoscaler's last decision and what it was based on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScalingStatus {
    /// Instances it wants.
    pub desired: u32,
    /// Whether a burst put it in panic mode (no scaling down until a stable window passes).
    pub panic: bool,
    /// Average requests in flight (and waiting) over the stable window.
    pub stable_concurrency: f64,
    /// The same over the panic window.
    pub panic_concurrency: f64,
    /// Requests waiting at the gateway for a ready instance.
    pub waiting: u32,
}

/// States of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Started, not yet passing its readiness probe.
    Starting,
    /// Taking traffic.
    Ready,
    /// Finishing its requests before it stops (an older revision during a rollout).
    Draining,
    /// Exited; waiting for its restart backoff.
    Backoff,
    /// Exited repeatedly right after starting.
    CrashLoop,
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceInstance {
    pub id: String,
    pub revision: u64,
    pub state: InstanceState,
    /// Its address on Hangar's bridge.
    pub address: String,
    pub restarts: u32,
    pub started_at: String,
    /// Why it last ended, with its last log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// Answer to a deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServiceDeployed {
    /// created, updated or unchanged.
    pub status: String,
    pub service: Service,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_cannot_name_host_paths() {
        assert_eq!(volume("data:/var/lib/app").unwrap(), ("data".into(), "/var/lib/app".into()));
        for bad in ["/etc:/x", "../x:/y", "data", "data:relative", "data:/a/../b", "data:/proc", "data:/dev/x", "Data:/x", "data:/"] {
            assert!(volume(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_valid_and_limits_hold() {
        let c = ServiceConfig::new("busybox");
        assert_eq!((c.min_instances, c.max_instances, c.memory_mb, c.egress), (1, 1, 512, true));
        c.validate().unwrap();
        let mut c2 = c.clone();
        c2.max_instances = 0;
        assert!(c2.validate().is_err());
        let mut c3 = c;
        c3.cpus = f64::NAN;
        assert!(c3.validate().is_err());
    }
}
