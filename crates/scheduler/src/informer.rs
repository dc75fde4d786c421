//! The route table as a subscriber of the change bus: a function's change is applied by reading
//! its current row from the store (routed at that revision, or no longer routed when it is
//! gone), a namespace's by reading its concurrency limit; [`Change::Everything`] by reading
//! them all (how the table is filled at start).

use std::sync::Arc;

use hangar_bus::{Change, Subscriber};
use hangar_store::{FunctionRow, Store};

use crate::{Deployment, Scheduler};

impl Deployment {
    /// The deployment of a function's stored current revision.
    pub fn of(row: &FunctionRow) -> Deployment {
        Deployment {
            namespace: row.namespace.clone(),
            name: row.name.clone(),
            revision: row.revision,
            config: row.config.clone(),
            code_digest: row.code_digest.clone(),
        }
    }
}

/// The store as the source of code a node has not prepared yet.
pub struct StoredCode(pub Arc<dyn Store>);

#[async_trait::async_trait]
impl hangar_runtime::CodeSource for StoredCode {
    async fn fetch(&self, digest: &str) -> Result<Option<bytes::Bytes>, hangar_runtime::RuntimeError> {
        self.0.get_code(digest).await.map_err(|e| hangar_runtime::RuntimeError::Internal(format!("fetching the code from the store: {e}")))
    }
}

/// See the module docs.
pub struct RouteInformer {
    pub store: Arc<dyn Store>,
    pub scheduler: Arc<Scheduler>,
}

#[async_trait::async_trait]
impl Subscriber for RouteInformer {
    async fn apply(&self, change: &Change) {
        match change {
            Change::Function { namespace, name } => match self.store.get_function(namespace, name).await {
                Ok(Some(row)) => {
                    if let Err(e) = self.scheduler.install(Deployment::of(&row)) {
                        tracing::error!(%namespace, function = %name, "routing revision {} failed: {e}", row.revision);
                    }
                }
                Ok(None) => self.scheduler.remove(namespace, name),
                Err(e) => tracing::error!(%namespace, function = %name, "reading the function to route it failed ({e}); its route stays as it was"),
            },
            Change::Namespace { name } => match self.store.get_namespace(name).await {
                Ok(row) => self.scheduler.set_namespace_limit(name, row.and_then(|r| r.max_concurrency)),
                Err(e) => tracing::error!(namespace = %name, "reading the namespace's limit failed ({e}); it stays as it was"),
            },
            Change::Everything => self.reload().await,
            Change::Keys | Change::Trigger { .. } | Change::Service { .. } => {}
        }
    }
}

impl RouteInformer {
    /// Routes every stored function at its stored revision (code loads lazily, at the first
    /// call), drops routes of functions gone, and sets every namespace's limit.
    async fn reload(&self) {
        match self.store.list_namespaces().await {
            Ok(rows) => rows.iter().for_each(|ns| self.scheduler.set_namespace_limit(&ns.name, ns.max_concurrency)),
            Err(e) => tracing::error!("reading the namespaces' limits failed ({e}); they stay as they were"),
        }
        let rows = match self.store.list_functions(None).await {
            Ok(rows) => rows,
            Err(e) => return tracing::error!("reading the functions to route them failed ({e}); the routes stay as they were"),
        };
        let stored: std::collections::HashSet<(&str, &str)> = rows.iter().map(|r| (r.namespace.as_str(), r.name.as_str())).collect();
        for slot in self.scheduler.slots() {
            let d = slot.deployment();
            if !stored.contains(&(d.namespace.as_str(), d.name.as_str())) {
                self.scheduler.remove(&d.namespace, &d.name);
            }
        }
        for row in &rows {
            if let Err(e) = self.scheduler.install(Deployment::of(row)) {
                tracing::error!(namespace = %row.namespace, function = %row.name, "routing revision {} failed: {e}", row.revision);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_api::{FunctionConfig, RuntimeKind};
    use hangar_bus::{Bus as _, LocalBus};
    use hangar_store_sqlite::SqliteStore;

    fn sequence(revision: u64) -> FunctionRow {
        let mut config = FunctionConfig::new(RuntimeKind::Sequence);
        config.steps = vec!["a".into()];
        FunctionRow {
            namespace: "default".into(),
            name: "seq".into(),
            revision,
            config,
            code_digest: String::new(),
            code_size: 0,
            created_ms: 1,
            updated_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_published_change_reaches_the_route_table_as_the_store_has_it() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        store.create_namespace("default", 1).await.unwrap();
        let (meter, _writer) = hangar_meter::Meter::start(store.clone(), hangar_meter::Metrics::new());
        let scheduler = Arc::new(Scheduler::new(Vec::new(), meter, 1024, 100));
        let bus = LocalBus::new();
        bus.subscribe(Arc::new(RouteInformer { store: store.clone(), scheduler: scheduler.clone() }));
        let change = || Change::Function { namespace: "default".into(), name: "seq".into() };
        let routed = || scheduler.route("default", "seq").map(|s| s.deployment().revision);

        store.put_function(&sequence(1), 0).await.unwrap();
        bus.publish(change()).await;
        assert_eq!(routed(), Some(1));
        store.put_function(&sequence(2), 1).await.unwrap();
        bus.publish(change()).await;
        // A change published twice (or late) is applied as the store has it now.
        bus.publish(change()).await;
        assert_eq!(routed(), Some(2));
        store.delete_function("default", "seq").await.unwrap();
        bus.publish(change()).await;
        assert_eq!(routed(), None);

        store.set_namespace_limit("default", Some(3)).await.unwrap();
        bus.publish(Change::Namespace { name: "default".into() }).await;
        assert_eq!(scheduler.namespace_limit("default"), 3);

        // Catching up with the store as a whole: what is stored is routed, what is not is not.
        store.put_function(&sequence(3), 0).await.unwrap();
        let mut other = sequence(1);
        other.name = "gone".into();
        scheduler.install(Deployment::of(&other)).unwrap();
        store.set_namespace_limit("default", Some(5)).await.unwrap();
        bus.publish(Change::Everything).await;
        assert_eq!(routed(), Some(3));
        assert!(scheduler.route("default", "gone").is_none());
        assert_eq!(scheduler.namespace_limit("default"), 5);
    }
}
