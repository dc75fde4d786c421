//! What the metric history samples of each service here: instances ready and starting,
//! requests in flight, and the CPU and memory its instances use (from their cgroups).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hangar_meter::history::{GaugeSource, Gauges};

use crate::Services;

/// See the module docs.
pub struct ServiceGauges {
    services: Arc<Services>,
    /// Each container's CPU time at the last sample, to make a rate of.
    last_cpu: Mutex<HashMap<String, (u64, Instant)>>,
}

impl ServiceGauges {
    pub fn new(services: Arc<Services>) -> Self {
        ServiceGauges { services, last_cpu: Mutex::default() }
    }
}

impl GaugeSource for ServiceGauges {
    fn gauges(&self) -> Vec<(hangar_api::traces::WorkloadRef, Gauges)> {
        let parent = self.services.host.cgroup_parent.clone();
        let mut last = self.last_cpu.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = HashMap::new();
        let now = Instant::now();
        let out = self
            .services
            .all()
            .into_iter()
            .map(|svc| {
                let (mut cpu_milli, mut memory) = (0u64, 0u64);
                let cids: Vec<String> = svc.slots.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(crate::slot::Slot::cid).collect();
                let instances = svc.slots.lock().unwrap_or_else(|p| p.into_inner()).len() as u32;
                for cid in cids {
                    let cg = hangar_container::cgroup::Cgroup::open(&parent, &cid);
                    memory += cg.memory_usage();
                    let used = cg.cpu_usage_ns();
                    if let Some((before, at)) = last.get(&cid) {
                        let wall = now.duration_since(*at).as_nanos().max(1) as u64;
                        cpu_milli += used.saturating_sub(*before).saturating_mul(1000) / wall;
                    }
                    seen.insert(cid, (used, now));
                }
                let routes = svc.routes.read().unwrap_or_else(|p| p.into_inner());
                let ready = routes.len() as u32;
                let in_flight: u32 = routes.iter().map(|e| e.inflight.load(std::sync::atomic::Ordering::Acquire)).sum();
                drop(routes);
                let gauges = Gauges([in_flight, ready, instances.saturating_sub(ready), cpu_milli.min(u64::from(u32::MAX)) as u32, (memory >> 20) as u32]);
                (crate::service_ref(&svc.namespace, &svc.name), gauges)
            })
            .collect();
        // Containers gone since are forgotten.
        *last = seen;
        out
    }
}
