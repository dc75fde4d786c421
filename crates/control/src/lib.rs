//! The control layer: every use-case that changes desired state — namespaces, keys, functions,
//! services, triggers, sandboxes' lifecycle, and the start-up restore — as one action type ([`Action`], answered with
//! [`Done`]) and one error type ([`ControlError`]), as Firecracker's `VmmAction`. The gateway
//! only translates HTTP into actions and their answers back; later the Lambda API and other
//! servers of a cluster send the same actions.
//!
//! An action validates its input before anything changes, writes the store (a function's
//! revision by compare-and-set: two deploys, or two servers, never write one revision; a deploy
//! that lost reads again and retries), then publishes the change on the bus, so the answer goes
//! out once every table of this server follows the store. A service is rolled out on this
//! server before its revision is written (a revision whose instances never become ready is not
//! kept, and the old one serves on); a deploy that then loses the compare-and-set lets the
//! services table follow the winner and tries again on top of it. Nothing orders deploys but
//! the store. Callers have already checked who may call (the gateway's `Principal`): actions
//! trust the namespace they are given.
#![forbid(unsafe_code)]

mod checks;

use std::sync::Arc;

use bytes::Bytes;
use hangar_api::events::TriggerConfig;
use hangar_api::sandboxes::{Sandbox, SandboxConfig};
use hangar_api::services::ServiceConfig;
use hangar_api::validate::{self, Invalid};
use hangar_api::{DeployStatus, FunctionConfig, NamespaceLimits, RuntimeKind, now_ms};
use hangar_bus::{Bus, Change};
use hangar_runtime::RuntimeError;
use hangar_sandbox::{SandboxError, Sandboxes};
use hangar_scheduler::Scheduler;
use hangar_service::{ServiceError, Services};
use hangar_store::{FunctionRow, KeyRow, NamespaceRow, ServiceRow, Store, StoreError, TriggerRow};

/// How often a deploy that lost the store's compare-and-set to a concurrent one reads the
/// function again and retries before it gives up with a conflict.
pub const DEPLOY_ATTEMPTS: u32 = 4;

/// A change to desired state. Each may be called at any time the server runs; what it needs
/// to exist is said per variant (a missing thing is [`ControlError::NotFound`]).
#[derive(Debug, Clone)]
pub enum Action {
    /// Makes a namespace (admin). Conflict if it exists.
    CreateNamespace { name: String, limits: NamespaceLimits },
    /// Sets a namespace's limits (admin); the namespace must exist.
    SetNamespaceLimits { name: String, limits: NamespaceLimits },
    /// Removes an empty namespace and its keys (admin); never `default`.
    RemoveNamespace { name: String },
    /// Makes a key, for one namespace (which must exist) or, with `None`, an admin key.
    CreateKey { namespace: Option<String>, name: Option<String> },
    /// Removes a key (admin); never the caller's own.
    RemoveKey { id: String, caller: String },
    /// Deploys a function: a new revision, or the same one again (`unchanged`). The namespace
    /// must exist; the first deploy must bring code; a sequence's steps and an `on_failure`
    /// target must exist unless `dry_run` (which changes nothing).
    DeployFunction { namespace: String, name: String, config: FunctionConfig, code: Option<Bytes>, dry_run: bool },
    /// Removes a function; it must exist.
    RemoveFunction { namespace: String, name: String },
    /// Creates or replaces a trigger; its namespace and target must exist.
    PutTrigger { namespace: String, name: String, config: TriggerConfig },
    /// Removes a trigger; it must exist.
    RemoveTrigger { namespace: String, name: String },
    /// Deploys a service: rolled out here, then stored. The namespace and the image must
    /// exist, this server must run services, and no other service may hold one of its hosts.
    DeployService { namespace: String, name: String, config: ServiceConfig },
    /// Removes a service (its instances stop gracefully; its volumes stay); it must exist.
    RemoveService { namespace: String, name: String },
    /// Makes a sandbox from an image of the namespace (which must exist) and starts it; this
    /// server must run sandboxes.
    CreateSandbox { namespace: String, config: SandboxConfig },
    /// Moves a sandbox of the namespace to another state (see [`SandboxStep`]); it must exist
    /// and not have failed.
    StepSandbox { namespace: String, id: String, step: SandboxStep },
    /// Stops a sandbox and removes it with its files and standby image; it must exist.
    RemoveSandbox { namespace: String, id: String },
    /// Fills every table of this server from the store: once, at start, before serving.
    Restore,
}

/// A move of a sandbox between its states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStep {
    /// Frozen in memory: no CPU, resumed in milliseconds. Any time it runs.
    Pause,
    /// Running again (from paused, or restored from standby). Any time.
    Resume,
    /// Checkpointed to disk and stopped: no memory, no CPU. Refused while a command's
    /// background job still holds that command's output.
    Standby,
}

impl std::str::FromStr for SandboxStep {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pause" => Ok(SandboxStep::Pause),
            "resume" => Ok(SandboxStep::Resume),
            "standby" => Ok(SandboxStep::Standby),
            other => Err(format!("sandbox action `{other}` (use pause, resume, standby or exec)")),
        }
    }
}

/// What an action did.
#[derive(Debug, Clone)]
pub enum Done {
    Namespace(NamespaceRow),
    /// A key and its secret (shown once; only its hash is kept).
    Key {
        row: KeyRow,
        secret: String,
    },
    Function {
        status: DeployStatus,
        row: FunctionRow,
    },
    Trigger {
        created: bool,
        row: TriggerRow,
    },
    Service {
        status: DeployStatus,
        row: ServiceRow,
    },
    /// How many functions are routed now (services come back in the background).
    Restored {
        functions: usize,
    },
    Sandbox(Sandbox),
    Removed,
}

/// Why an action was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A field is not valid.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The input is well-formed but cannot be done as asked (`code` says how, e.g.
    /// `invalid_code`, `unknown_target`).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// What the action needs does not exist (the message names it).
    #[error("{0} not found")]
    NotFound(String),
    /// It exists already, is in use, or changed meanwhile.
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// This server cannot do it (`code` says what is missing, the message why).
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// The services runtime failed or refused (e.g. the new instances never became ready).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A sandbox call failed or was refused.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

impl ControlError {
    fn refused(code: &'static str, message: impl Into<String>) -> Self {
        ControlError::Refused { code, message: message.into() }
    }
}

/// The services of this server, or why it has none.
pub enum ServicesHere {
    Running { services: Arc<Services>, images: Arc<hangar_image::ImageStore> },
    Unavailable(String),
}

/// See the module docs.
pub struct Control {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    scheduler: Arc<Scheduler>,
    services: ServicesHere,
    /// The sandboxes of this server, or why it has none.
    sandboxes: Result<Sandboxes, String>,
}

impl Control {
    /// Refuses a change while the bus is cut off: other nodes would not learn of it.
    fn bus_up(&self) -> Result<(), ControlError> {
        match self.bus.unavailable() {
            None => Ok(()),
            Some(why) => Err(ControlError::Unavailable { code: "bus_unavailable", message: format!("{why}; nothing was changed; try again once it is back") }),
        }
    }

    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, scheduler: Arc<Scheduler>) -> Control {
        Control {
            store,
            bus,
            scheduler,
            services: ServicesHere::Unavailable("this server was built without services".into()),
            sandboxes: Err("this server was built without sandboxes".into()),
        }
    }

    /// The sandboxes this server runs, or why it runs none.
    pub fn with_sandboxes(mut self, sandboxes: Result<Sandboxes, String>) -> Control {
        self.sandboxes = sandboxes;
        self
    }

    fn sandboxes(&self) -> Result<&Sandboxes, ControlError> {
        self.sandboxes
            .as_ref()
            .map_err(|why| ControlError::Unavailable { code: "sandboxes_unavailable", message: format!("sandboxes are not available on this server: {why}") })
    }

    /// See [`Action::CreateSandbox`].
    pub async fn create_sandbox(&self, ns: &str, config: SandboxConfig) -> Result<Sandbox, ControlError> {
        if self.store.get_namespace(ns).await?.is_none() {
            return Err(ControlError::NotFound(format!("namespace `{ns}`")));
        }
        Ok(self.sandboxes()?.create(ns, config).await?)
    }

    /// See [`Action::StepSandbox`].
    pub async fn step_sandbox(&self, ns: &str, id: &str, step: SandboxStep) -> Result<Sandbox, ControlError> {
        let s = self.sandboxes()?;
        Ok(match step {
            SandboxStep::Pause => s.pause(Some(ns), id).await?,
            SandboxStep::Resume => s.resume(Some(ns), id).await?,
            SandboxStep::Standby => s.standby(Some(ns), id).await?,
        })
    }

    /// See [`Action::RemoveSandbox`].
    pub async fn remove_sandbox(&self, ns: &str, id: &str) -> Result<(), ControlError> {
        let here = match self.sandboxes() {
            Ok(s) => s.remove(Some(ns), id).await,
            Err(e) => Err(hangar_sandbox::SandboxError::Unavailable(e.to_string())),
        };
        match here {
            // Not this node's: one whose node was lost (the live ones' calls go to their node)
            // is only a record now.
            Err(e @ (hangar_sandbox::SandboxError::NotFound(_) | hangar_sandbox::SandboxError::Unavailable(_))) => {
                let stored = self.store.get_sandbox(id).await?.filter(|s| s.namespace == ns);
                match stored {
                    Some(s) if s.state == hangar_api::sandboxes::SandboxState::Failed => {
                        self.store.delete_sandbox(id).await?;
                        Ok(())
                    }
                    _ => Err(e.into()),
                }
            }
            other => Ok(other?),
        }
    }

    /// The services this server runs (deploys of services need them).
    pub fn with_services(mut self, services: ServicesHere) -> Control {
        self.services = services;
        self
    }

    /// Runs one action.
    pub async fn run(&self, action: Action) -> Result<Done, ControlError> {
        match action {
            Action::CreateNamespace { name, limits } => self.create_namespace(&name, limits).await.map(Done::Namespace),
            Action::SetNamespaceLimits { name, limits } => self.set_namespace_limits(&name, limits).await.map(Done::Namespace),
            Action::RemoveNamespace { name } => self.remove_namespace(&name).await.map(|()| Done::Removed),
            Action::CreateKey { namespace, name } => self.create_key(namespace, name).await.map(|(row, secret)| Done::Key { row, secret }),
            Action::RemoveKey { id, caller } => self.remove_key(&id, &caller).await.map(|()| Done::Removed),
            Action::DeployFunction { namespace, name, config, code, dry_run } => {
                self.deploy_function(&namespace, &name, config, code, dry_run).await.map(|(status, row)| Done::Function { status, row })
            }
            Action::RemoveFunction { namespace, name } => self.remove_function(&namespace, &name).await.map(|()| Done::Removed),
            Action::PutTrigger { namespace, name, config } => {
                self.put_trigger(&namespace, &name, config).await.map(|(created, row)| Done::Trigger { created, row })
            }
            Action::RemoveTrigger { namespace, name } => self.remove_trigger(&namespace, &name).await.map(|()| Done::Removed),
            Action::DeployService { namespace, name, config } => {
                self.deploy_service(&namespace, &name, config).await.map(|(status, row)| Done::Service { status, row })
            }
            Action::RemoveService { namespace, name } => self.remove_service(&namespace, &name).await.map(|()| Done::Removed),
            Action::CreateSandbox { namespace, config } => self.create_sandbox(&namespace, config).await.map(Done::Sandbox),
            Action::StepSandbox { namespace, id, step } => self.step_sandbox(&namespace, &id, step).await.map(Done::Sandbox),
            Action::RemoveSandbox { namespace, id } => self.remove_sandbox(&namespace, &id).await.map(|()| Done::Removed),
            Action::Restore => self.restore().await.map(|functions| Done::Restored { functions }),
        }
    }

    /// A first start: makes the `default` namespace, and an admin key when there is none, whose
    /// secret `save` keeps (before the key is stored: a key nobody could know is never made).
    /// Returns the new secret. Later starts change nothing.
    pub async fn bootstrap(&self, save: impl FnOnce(&str) -> Result<(), String>) -> Result<Option<String>, ControlError> {
        if self.store.get_namespace(hangar_api::DEFAULT_NAMESPACE).await?.is_none() {
            self.store.create_namespace(hangar_api::DEFAULT_NAMESPACE, now_ms()).await?;
        }
        if self.store.list_keys().await?.iter().any(|k| k.namespace.is_none()) {
            return Ok(None);
        }
        let secret = new_secret();
        save(&secret).map_err(|why| ControlError::Unavailable { code: "bootstrap_failed", message: format!("saving the first admin key: {why}") })?;
        let row = KeyRow {
            id: "key_admin".into(),
            hash: hash_secret(&secret),
            namespace: None,
            name: Some("admin (created at first start)".into()),
            created_ms: now_ms(),
        };
        self.store.insert_key(&row).await?;
        Ok(Some(secret))
    }

    /// See [`Action::Restore`]: every subscriber of the bus reads the whole store (keys,
    /// namespaces' limits, routes, triggers; services start in the background). Returns how
    /// many functions are routed.
    pub async fn restore(&self) -> Result<usize, ControlError> {
        self.bus.publish(Change::Everything).await;
        Ok(self.store.list_functions(None).await?.len())
    }

    /// See [`Action::DeployService`].
    pub async fn deploy_service(&self, ns: &str, name: &str, config: ServiceConfig) -> Result<(DeployStatus, ServiceRow), ControlError> {
        self.bus_up()?;
        if self.store.get_namespace(ns).await?.is_none() {
            return Err(ControlError::NotFound(format!("namespace `{ns}`")));
        }
        validate::name("name", name)?;
        config.validate()?;
        let (services, images) = match &self.services {
            ServicesHere::Running { services, images } => (services, images),
            ServicesHere::Unavailable(why) => {
                return Err(ControlError::Unavailable { code: "services_unavailable", message: format!("services are not available on this server: {why}") });
            }
        };
        // In a cluster, an image imported through another node comes from there.
        let image = images.get_or_fetch(ns, &config.image).await.map_err(|_| {
            ControlError::refused(
                "unknown_image",
                format!("image `{}` is not in namespace `{ns}`: `hangar image pull` or `hangar image import` it first", config.image),
            )
        })?;
        for _ in 0..DEPLOY_ATTEMPTS {
            checks::hosts_free(self.store.as_ref(), ("svc", ns, name), &config.hosts).await?;
            let existing = self.store.get_service(ns, name).await?;
            if let Some(row) = &existing
                && row.config == config
                && row.image_id == image.id
                && services.get(ns, name).is_some_and(|s| s.runs(row.revision, &row.config, &row.image_id))
            {
                return Ok((DeployStatus::Unchanged, row.clone()));
            }
            let now = now_ms();
            let row = ServiceRow {
                namespace: ns.to_string(),
                name: name.to_string(),
                revision: existing.as_ref().map_or(1, |r| r.revision + 1),
                config: config.clone(),
                image_id: image.id.clone(),
                created_ms: existing.as_ref().map_or(now, |r| r.created_ms),
                updated_ms: now,
            };
            // Ready here first: a revision that never becomes ready is not stored.
            services.rollout(ns, name, row.revision, config.clone(), image.clone()).await?;
            let change = Change::Service { namespace: ns.to_string(), name: name.to_string() };
            match self.store.put_service(&row, existing.as_ref().map_or(0, |r| r.revision)).await {
                Ok(()) => {}
                Err(StoreError::Stale { .. }) => {
                    // Another deploy stored this revision first: run what it stored, then
                    // deploy again on top of it.
                    self.bus.publish(change).await;
                    continue;
                }
                Err(e) => {
                    self.bus.publish(change).await;
                    return Err(e.into());
                }
            }
            self.bus.publish(change).await;
            let status = if existing.is_some() { DeployStatus::Updated } else { DeployStatus::Created };
            return Ok((status, row));
        }
        Err(ControlError::Conflict(format!("service `{name}` in namespace `{ns}` changed {DEPLOY_ATTEMPTS} times while this deploy ran; send it again")))
    }

    /// See [`Action::RemoveService`]: answered once its instances have stopped.
    pub async fn remove_service(&self, ns: &str, name: &str) -> Result<(), ControlError> {
        self.bus_up()?;
        if !self.store.delete_service(ns, name).await? {
            return Err(ControlError::NotFound(format!("service `{name}` in namespace `{ns}`")));
        }
        self.bus.publish(Change::Service { namespace: ns.to_string(), name: name.to_string() }).await;
        Ok(())
    }

    pub async fn create_namespace(&self, name: &str, limits: NamespaceLimits) -> Result<NamespaceRow, ControlError> {
        self.bus_up()?;
        validate::name("name", name)?;
        limits.validate()?;
        let mut row = self.store.create_namespace(name, now_ms()).await?;
        if limits.max_concurrency.is_some() {
            self.store.set_namespace_limit(&row.name, limits.max_concurrency).await?;
            row.max_concurrency = limits.max_concurrency;
        }
        self.bus.publish(Change::Namespace { name: row.name.clone() }).await;
        Ok(row)
    }

    pub async fn set_namespace_limits(&self, name: &str, limits: NamespaceLimits) -> Result<NamespaceRow, ControlError> {
        self.bus_up()?;
        limits.validate()?;
        if !self.store.set_namespace_limit(name, limits.max_concurrency).await? {
            return Err(ControlError::NotFound(format!("namespace `{name}`")));
        }
        self.bus.publish(Change::Namespace { name: name.to_string() }).await;
        self.store.get_namespace(name).await?.ok_or_else(|| ControlError::NotFound(format!("namespace `{name}`")))
    }

    pub async fn remove_namespace(&self, name: &str) -> Result<(), ControlError> {
        self.bus_up()?;
        if name == hangar_api::DEFAULT_NAMESPACE {
            return Err(ControlError::Conflict("the `default` namespace cannot be deleted".into()));
        }
        if !self.store.delete_namespace(name).await? {
            return Err(ControlError::NotFound(format!("namespace `{name}`")));
        }
        // Its keys went with it.
        self.bus.publish(Change::Namespace { name: name.to_string() }).await;
        Ok(())
    }

    pub async fn create_key(&self, namespace: Option<String>, name: Option<String>) -> Result<(KeyRow, String), ControlError> {
        self.bus_up()?;
        if let Some(n) = &name {
            validate::label("name", n)?;
        }
        if let Some(ns) = &namespace {
            validate::name("namespace", ns)?;
            if self.store.get_namespace(ns).await?.is_none() {
                return Err(ControlError::NotFound(format!("namespace `{ns}` (create it first with `hangar ns create {ns}`)")));
            }
        }
        let secret = new_secret();
        let row = KeyRow {
            id: format!("key_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
            hash: hash_secret(&secret),
            namespace,
            name,
            created_ms: now_ms(),
        };
        self.store.insert_key(&row).await?;
        self.bus.publish(Change::Keys).await;
        Ok((row, secret))
    }

    pub async fn remove_key(&self, id: &str, caller: &str) -> Result<(), ControlError> {
        self.bus_up()?;
        if id == caller {
            return Err(ControlError::Conflict("a key cannot delete itself; use another admin key".into()));
        }
        if !self.store.delete_key(id).await? {
            return Err(ControlError::NotFound(format!("key `{id}`")));
        }
        self.bus.publish(Change::Keys).await;
        Ok(())
    }

    /// See [`Action::DeployFunction`].
    pub async fn deploy_function(
        &self,
        ns: &str,
        name: &str,
        config: FunctionConfig,
        code: Option<Bytes>,
        dry_run: bool,
    ) -> Result<(DeployStatus, FunctionRow), ControlError> {
        self.bus_up()?;
        validate::name("name", name)?;
        if self.store.get_namespace(ns).await?.is_none() {
            return Err(ControlError::NotFound(format!("namespace `{ns}`")));
        }
        validate::function_config(&config)?;
        let is_sequence = config.runtime == RuntimeKind::Sequence;
        let runtime = match is_sequence {
            true => None,
            false => Some(self.scheduler.runtime(config.runtime).cloned().ok_or_else(|| {
                ControlError::refused(
                    "invalid_field",
                    format!("runtime: `{}` is not available on this server (process runtimes need root, runc and python3; nodejs needs node; the server log says what is missing)", config.runtime),
                )
            })?),
        };
        // Compiled once, whatever the attempts below.
        let code_info = match (code, &runtime) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(ControlError::refused("invalid_code", "a sequence has no code of its own: deploy its steps as functions and name them in `steps`"));
            }
            (Some(code), Some(_)) if code.is_empty() => return Err(ControlError::refused("invalid_code", "the `code` part is empty")),
            (Some(code), Some(runtime)) => {
                let info = runtime.prepare(code.clone()).await?;
                // Kept where every node finds it, before any revision names it.
                if !dry_run {
                    self.store.put_code(&info.digest, code).await?;
                }
                Some(info)
            }
        };
        for _ in 0..DEPLOY_ATTEMPTS {
            let existing = self.store.get_function(ns, name).await?;
            // A dry run (a manifest's check) cannot know the functions deployed before this one.
            if let Some(target) = config.async_.on_failure.as_deref().filter(|_| !dry_run) {
                checks::on_failure(self.store.as_ref(), ns, name, target).await?;
            }
            if is_sequence && !dry_run {
                checks::steps(self.store.as_ref(), ns, name, &config.steps).await?;
            }
            checks::hosts_free(self.store.as_ref(), ("fn", ns, name), &config.hosts).await?;
            if let (None, Some(e)) = (&code_info, &existing)
                && e.config.runtime != config.runtime
                && !is_sequence
            {
                return Err(ControlError::refused(
                    "invalid_code",
                    format!("function `{name}` runs on {}; changing its runtime to {} needs new code (upload `code` too)", e.config.runtime, config.runtime),
                ));
            }
            let (digest, size) = match (&code_info, &existing) {
                _ if is_sequence => (String::new(), 0),
                (Some(c), _) => (c.digest.clone(), c.size),
                (None, Some(e)) => (e.code_digest.clone(), e.code_size),
                (None, None) => {
                    return Err(ControlError::refused("invalid_code", format!("function `{name}` does not exist yet: the first deploy must upload code")));
                }
            };
            if let Some(e) = existing.as_ref().filter(|e| e.code_digest == digest && e.config == config) {
                return Ok((DeployStatus::Unchanged, e.clone()));
            }
            let now = now_ms();
            let row = FunctionRow {
                namespace: ns.to_string(),
                name: name.to_string(),
                revision: existing.as_ref().map_or(1, |e| e.revision + 1),
                config: config.clone(),
                code_digest: digest,
                code_size: size,
                created_ms: existing.as_ref().map_or(now, |e| e.created_ms),
                updated_ms: now,
            };
            let status = if existing.is_some() { DeployStatus::Updated } else { DeployStatus::Created };
            if dry_run {
                return Ok((status, row));
            }
            // Durable before acknowledged, then routable (on every subscriber of the bus).
            match self.store.put_function(&row, existing.as_ref().map_or(0, |e| e.revision)).await {
                Ok(()) => {}
                Err(StoreError::Stale { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
            self.bus.publish(Change::Function { namespace: row.namespace.clone(), name: row.name.clone() }).await;
            return Ok((status, row));
        }
        Err(ControlError::Conflict(format!("function `{name}` in namespace `{ns}` changed {DEPLOY_ATTEMPTS} times while this deploy ran; send it again")))
    }

    pub async fn remove_function(&self, ns: &str, name: &str) -> Result<(), ControlError> {
        self.bus_up()?;
        if !self.store.delete_function(ns, name).await? {
            return Err(ControlError::NotFound(format!("function `{name}` in namespace `{ns}`")));
        }
        self.bus.publish(Change::Function { namespace: ns.to_string(), name: name.to_string() }).await;
        Ok(())
    }

    /// See [`Action::PutTrigger`]; `created` is false when it replaced one.
    pub async fn put_trigger(&self, ns: &str, name: &str, config: TriggerConfig) -> Result<(bool, TriggerRow), ControlError> {
        self.bus_up()?;
        validate::name("name", name)?;
        config.validate()?;
        if let Some(c) = &config.cron {
            hangar_events::Schedule::parse(c, config.timezone.as_deref()).map_err(|e| ControlError::refused("invalid_field", format!("cron: {e}")))?;
        }
        if self.store.get_namespace(ns).await?.is_none() {
            return Err(ControlError::NotFound(format!("namespace `{ns}`")));
        }
        if let Some(f) = &config.function
            && self.store.get_function(ns, f).await?.is_none()
        {
            return Err(ControlError::refused("unknown_target", format!("function `{f}` does not exist in namespace `{ns}`; deploy it first")));
        }
        if let Some(s) = &config.service
            && self.store.get_service(ns, s).await?.is_none()
        {
            return Err(ControlError::refused("unknown_target", format!("service `{s}` does not exist in namespace `{ns}`; deploy it first")));
        }
        let existing = self.store.list_triggers(Some(ns)).await?.into_iter().find(|t| t.name == name);
        let row = TriggerRow {
            namespace: ns.to_string(),
            name: name.to_string(),
            config,
            created_ms: existing.as_ref().map_or_else(now_ms, |e| e.created_ms),
            last_fired_ms: existing.as_ref().and_then(|e| e.last_fired_ms),
        };
        self.store.put_trigger(&row).await?;
        self.bus.publish(Change::Trigger { namespace: row.namespace.clone(), name: row.name.clone() }).await;
        Ok((existing.is_none(), row))
    }

    pub async fn remove_trigger(&self, ns: &str, name: &str) -> Result<(), ControlError> {
        self.bus_up()?;
        if !self.store.delete_trigger(ns, name).await? {
            return Err(ControlError::NotFound(format!("trigger `{name}` in namespace `{ns}`")));
        }
        self.bus.publish(Change::Trigger { namespace: ns.to_string(), name: name.to_string() }).await;
        Ok(())
    }
}

/// Hex SHA-256 of a key's secret: what the store keeps.
pub fn hash_secret(secret: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// A new random secret: `hk_` and 32 random bytes in hex.
pub fn new_secret() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("hk_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests;
