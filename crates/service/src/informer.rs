//! The services table as a subscriber of the change bus: a service's change is applied by
//! reading its row from the store and making the table run it — rolled out at the stored
//! revision when the table runs another (or nothing), stopped when the row is gone.
//! [`Change::Everything`] does that for every stored service in the background (at start:
//! the API answers while services come back), and stops what runs but is not stored.
//!
//! A deploy through the control layer rolls out first and writes the store only once the new
//! instances are ready, so its own change finds the table as the store has it and does
//! nothing; a change whose rollout this informer must make comes from elsewhere (a restart, a
//! deploy that lost the store's compare-and-set to another, later another server).

use std::sync::Arc;

use hangar_bus::{Change, Subscriber};
use hangar_image::ImageStore;
use hangar_store::{ServiceRow, Store};

use crate::Services;

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct ServiceInformer {
    store: Arc<dyn Store>,
    services: Arc<Services>,
    images: Arc<ImageStore>,
    /// One converge of a service at a time, whoever asks (a change, or the start's catching
    /// up): each reads the store once it has its turn, so the last one runs what was stored last.
    turns: Arc<hangar_core::Turns<(String, String)>>,
}

impl ServiceInformer {
    pub fn new(store: Arc<dyn Store>, services: Arc<Services>, images: Arc<ImageStore>) -> ServiceInformer {
        ServiceInformer { store, services, images, turns: Arc::default() }
    }

    /// Makes the table run `namespace/name` as the store has it now.
    pub async fn converge(&self, namespace: &str, name: &str) {
        self.turns.run((namespace.to_string(), name.to_string()), self.converge_now(namespace, name)).await;
    }

    async fn converge_now(&self, namespace: &str, name: &str) {
        match self.store.get_service(namespace, name).await {
            Ok(Some(row)) => self.run(&row).await,
            Ok(None) => self.services.remove(namespace, name).await,
            Err(e) => tracing::error!(%namespace, service = %name, "reading the service failed ({e}); it stays as it runs"),
        }
    }

    async fn run(&self, row: &ServiceRow) {
        if self.services.get(&row.namespace, &row.name).is_some_and(|s| s.runs(row.revision, &row.config, &row.image_id)) {
            return;
        }
        // In a cluster, an image deployed through another node comes from there.
        let image = match self.images.get_or_fetch(&row.namespace, &row.image_id).await {
            Ok(image) => image,
            Err(e) => return tracing::error!(service = %row.name, namespace = %row.namespace, "image {}: {e}; the service cannot start here", row.image_id),
        };
        match self.services.follow(&row.namespace, &row.name, row.revision, row.config.clone(), image).await {
            Ok(()) => tracing::info!(service = %row.name, namespace = %row.namespace, revision = row.revision, "service runs as stored"),
            Err(e) => tracing::error!(service = %row.name, namespace = %row.namespace, "starting revision {} failed: {e}", row.revision),
        }
    }

    /// Every stored service brought to run as stored, in the background; what runs but is not
    /// stored is stopped.
    async fn reload(&self) {
        let rows = match self.store.list_services(None).await {
            Ok(rows) => rows,
            Err(e) => return tracing::error!("reading the services failed ({e}); they stay as they run"),
        };
        let me = self.clone();
        tokio::spawn(async move {
            for (namespace, name) in me.services.names() {
                if !rows.iter().any(|r| r.namespace == namespace && r.name == name) {
                    me.services.remove(&namespace, &name).await;
                }
            }
            let mut started = 0;
            for row in &rows {
                // Read again: a deploy or removal meanwhile wins.
                me.converge(&row.namespace, &row.name).await;
                started += usize::from(me.services.get(&row.namespace, &row.name).is_some());
            }
            if started > 0 {
                tracing::info!("{started} service(s) running as stored");
            }
        });
    }
}

#[async_trait::async_trait]
impl Subscriber for ServiceInformer {
    async fn apply(&self, change: &Change) {
        match change {
            Change::Service { namespace, name } => self.converge(namespace, name).await,
            Change::Everything => self.reload().await,
            _ => {}
        }
    }
}
