//! The real [`Functions`], [`Services`] and [`SwitchLog`]: the store and the scheduler's route
//! table, the services table, the store's switch log.

use std::sync::Arc;

use async_trait::async_trait;
use hangar_api::{InvocationRecord, ModeSwitch};
use hangar_scheduler::Scheduler;
use hangar_store::{FunctionRow, InvocationFilter, Store};

use crate::{Functions, ServiceView, Services, SwitchLog};

/// Functions as deployed (the store) and routed (the scheduler).
pub struct RoutedFunctions {
    pub store: Arc<dyn Store>,
    pub scheduler: Arc<Scheduler>,
}

#[async_trait]
impl Functions for RoutedFunctions {
    async fn deployed(&self) -> Result<Vec<FunctionRow>, String> {
        self.store.list_functions(None).await.map_err(|e| e.to_string())
    }

    async fn invocations(&self, namespace: &str, name: &str, since_ms: i64, limit: u32) -> Result<Vec<InvocationRecord>, String> {
        let filter = InvocationFilter {
            namespace: Some(namespace.to_string()),
            function: Some(name.to_string()),
            since_ms: Some(since_ms),
            limit,
            ..Default::default()
        };
        self.store.list_invocations(filter).await.map_err(|e| e.to_string())
    }

    async fn set_warm(&self, namespace: &str, name: &str, revision: u64, n: u32) -> bool {
        match self.scheduler.route(namespace, name) {
            Some(slot) if slot.deployment().revision == revision => slot.set_provisioned(n).await,
            _ => false,
        }
    }
}

/// The deployed services (the store) that run here (the services table).
pub struct RunningServices {
    pub store: Arc<dyn Store>,
    pub services: Arc<hangar_service::Services>,
}

#[async_trait]
impl Services for RunningServices {
    async fn running(&self) -> Result<Vec<ServiceView>, String> {
        let rows = self.store.list_services(None).await.map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let svc = self.services.get(&row.namespace, &row.name)?;
                let (requests, busy_ms) = svc.traffic.totals();
                Some(ServiceView {
                    namespace: row.namespace,
                    name: row.name,
                    revision: row.revision,
                    config: row.config,
                    min_instances: svc.min_instances(),
                    requests,
                    busy_ms,
                    recent_ms: svc.traffic.recent_ms(),
                })
            })
            .collect())
    }

    fn set_min_instances(&self, namespace: &str, name: &str, n: u32) {
        if let Some(svc) = self.services.get(namespace, name) {
            svc.set_min_instances(n);
        }
    }
}

/// The store's log of switches.
pub struct StoredSwitches(pub Arc<dyn Store>);

#[async_trait]
impl SwitchLog for StoredSwitches {
    async fn record(&self, namespace: &str, name: &str, at_ms: i64, switch: &ModeSwitch) {
        if let Err(e) = self.0.add_mode_switch(namespace, name, at_ms, switch).await {
            tracing::error!(kind = %switch.kind, name, "adaptive mode: recording a switch: {e}");
        }
    }
}
