//! Durable state, backend-neutral: the traits by aggregate ([`DesiredState`], [`Ledger`],
//! [`Queue`], together [`Store`]), the rows they hold, one error type, and the [`conformance`]
//! suite every backend passes (`hangar-store-sqlite` is the embedded one).
//!
//! The store holds desired state (namespaces, keys, functions, services, triggers, sandboxes),
//! the ledger (invocation records, usage, adaptive-mode switches) and the durable queue of
//! asynchronous invocations. It is never on the hot path of an invocation: records reach it in
//! batches from the meter, and the gateway serves routes from memory. Writes of a function's or
//! a service's revision are compare-and-set: they name the revision they replace, so two
//! writers (two deploys, later two servers) never both win one revision.
#![forbid(unsafe_code)]

pub mod conformance;

use async_trait::async_trait;
use hangar_api::{FunctionConfig, Outcome};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be read or written (its own error is the source).
    #[error("store: the database failed: {0}; check that the data dir is writable and its disk not full")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database cannot be reached now (a networked store that is down or cut off); the
    /// same call may work once it is back.
    #[error("store: the database cannot be reached ({0}); check that it runs and this node reaches it")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The thing exists already.
    #[error("store: {0}")]
    Conflict(String),
    /// A compare-and-set write lost: the current revision is not the one the writer read.
    #[error("store: {what} is at revision {found} now, not {expected}: it changed meanwhile")]
    Stale {
        what: String,
        /// The revision the writer expected (0: that it did not exist).
        expected: u64,
        /// The revision it found (0: none).
        found: u64,
    },
    /// A row could not be decoded: the database was written by something else or is damaged.
    #[error("store: corrupt row: {0}")]
    Corrupt(String),
    /// The blocking worker died.
    #[error("store: worker failed: {0}")]
    Worker(String),
    /// The database's schema is not one this binary can use (written by a newer version).
    #[error("store: {0}")]
    Schema(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A namespace row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRow {
    pub name: String,
    pub created_ms: i64,
    /// Its concurrency limit, if it has its own.
    pub max_concurrency: Option<u32>,
}

/// An API key row: only the SHA-256 of the secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    /// `None` for an admin key.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub created_ms: i64,
}

/// The current revision of a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRow {
    pub namespace: String,
    pub name: String,
    pub revision: u64,
    pub config: FunctionConfig,
    /// `sha256:<hex>`.
    pub code_digest: String,
    pub code_size: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// The current revision of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRow {
    pub namespace: String,
    pub name: String,
    pub revision: u64,
    pub config: hangar_api::services::ServiceConfig,
    /// The image id (config digest) the revision runs.
    pub image_id: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

pub use hangar_api::InvocationRecord;

/// Which invocations to list.
#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    /// `None` lists every namespace (admin only).
    pub namespace: Option<String>,
    pub function: Option<String>,
    pub outcome: Option<Outcome>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Id to continue after (exclusive), in the listing's order.
    pub cursor: Option<String>,
    pub limit: u32,
    /// Oldest first instead of newest first.
    pub ascending: bool,
    /// Whether to read the logs column.
    pub with_logs: bool,
    /// Only the steps of this sequence invocation.
    pub parent: Option<String>,
}

/// Desired state: what should exist. Each write is one transaction.
#[async_trait]
pub trait DesiredState: Send + Sync + 'static {
    /// Creates a namespace; `Conflict` if it exists.
    async fn create_namespace(&self, name: &str, now_ms: i64) -> Result<NamespaceRow>;
    async fn list_namespaces(&self) -> Result<Vec<NamespaceRow>>;
    async fn get_namespace(&self, name: &str) -> Result<Option<NamespaceRow>>;
    /// Deletes an empty namespace and its keys; `Conflict` if workloads remain. `false` if absent.
    async fn delete_namespace(&self, name: &str) -> Result<bool>;
    /// Sets (or, with `None`, clears) a namespace's own concurrency limit; false if it does not exist.
    async fn set_namespace_limit(&self, name: &str, max_concurrency: Option<u32>) -> Result<bool>;

    async fn insert_key(&self, key: &KeyRow) -> Result<()>;
    async fn list_keys(&self) -> Result<Vec<KeyRow>>;
    async fn delete_key(&self, id: &str) -> Result<bool>;

    /// Writes a function's new current revision (`row.revision`) and keeps it in the revision
    /// history, if the current revision is still `expected` (0: the function must not exist);
    /// else `Stale` and nothing changes.
    async fn put_function(&self, row: &FunctionRow, expected: u64) -> Result<()>;
    async fn get_function(&self, namespace: &str, name: &str) -> Result<Option<FunctionRow>>;
    /// Functions of one namespace, or of all with `None`, ordered by namespace and name.
    async fn list_functions(&self, namespace: Option<&str>) -> Result<Vec<FunctionRow>>;
    async fn delete_function(&self, namespace: &str, name: &str) -> Result<bool>;

    /// Writes a service's new current revision if its current one is still `expected` (0: the
    /// service must not exist); else `Stale` and nothing changes.
    async fn put_service(&self, row: &ServiceRow, expected: u64) -> Result<()>;
    async fn get_service(&self, namespace: &str, name: &str) -> Result<Option<ServiceRow>>;
    /// `None` lists every namespace.
    async fn list_services(&self, namespace: Option<&str>) -> Result<Vec<ServiceRow>>;
    async fn delete_service(&self, namespace: &str, name: &str) -> Result<bool>;

    /// Creates or replaces a trigger (keeping when it last fired if it existed).
    async fn put_trigger(&self, row: &TriggerRow) -> Result<()>;
    /// `None` lists every namespace.
    async fn list_triggers(&self, namespace: Option<&str>) -> Result<Vec<TriggerRow>>;
    async fn delete_trigger(&self, namespace: &str, name: &str) -> Result<bool>;
    /// Records the scheduled time of the last event a cron trigger queued.
    async fn set_trigger_fired(&self, namespace: &str, name: &str, fired_ms: i64) -> Result<()>;

    /// Keeps uploaded code under its digest (`sha256:<hex>` of `code`); writing a digest that
    /// is there already changes nothing. Code is what every node loads a revision from.
    async fn put_code(&self, digest: &str, code: bytes::Bytes) -> Result<()>;
    /// The code kept under `digest`, if any.
    async fn get_code(&self, digest: &str) -> Result<Option<bytes::Bytes>>;

    /// Creates or replaces a sandbox's record.
    async fn put_sandbox(&self, sandbox: &hangar_api::sandboxes::Sandbox) -> Result<()>;
    /// Every sandbox of every namespace.
    async fn list_sandboxes(&self) -> Result<Vec<hangar_api::sandboxes::Sandbox>>;
    /// One sandbox's record (in a cluster: which node runs it).
    async fn get_sandbox(&self, id: &str) -> Result<Option<hangar_api::sandboxes::Sandbox>>;
    async fn delete_sandbox(&self, id: &str) -> Result<bool>;
}

/// The ledger: what happened (invocation records, metered usage, adaptive-mode switches).
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Appends a batch of records in one transaction (a record whose id is there already is
    /// skipped), adding the usage of the inserted ones to their hourly rows in the same
    /// transaction (what counts is [`hangar_api::cost::UsageDelta::of_invocation`]'s rule).
    async fn insert_invocations(&self, batch: Vec<InvocationRecord>) -> Result<()>;
    /// Deletes up to `most` invocation records (and their logs) that started before
    /// `before_ms`, oldest first; returns how many went.
    async fn prune_invocations(&self, before_ms: i64, most: u32) -> Result<u64>;
    async fn list_invocations(&self, filter: InvocationFilter) -> Result<Vec<InvocationRecord>>;
    /// One record; `namespace` restricts the look-up (`None`: any namespace).
    async fn get_invocation(&self, namespace: Option<&str>, id: &str) -> Result<Option<InvocationRecord>>;

    /// Adds usage to the hourly rows (made as needed). Function usage is added by
    /// [`Ledger::insert_invocations`] itself, in the same transaction as the records.
    /// `marks` replace the meter's marks of those sandboxes (each node gives its own), and the
    /// marks of sandboxes no longer stored are dropped, in the same transaction.
    async fn add_usage(&self, deltas: Vec<hangar_api::cost::UsageDelta>, marks: Option<Vec<hangar_api::cost::UsageMark>>) -> Result<()>;
    /// The meter's marks of sandboxes.
    async fn usage_marks(&self) -> Result<Vec<hangar_api::cost::UsageMark>>;
    /// Hourly rows (or summed per UTC day) in `[since_ms, until_ms)`, oldest first.
    async fn list_usage(&self, filter: UsageFilter) -> Result<Vec<hangar_api::cost::UsageDelta>>;
    /// Removes hourly rows before `before_ms`; how many went.
    async fn prune_usage(&self, before_ms: i64) -> Result<u64>;

    /// Records a change adaptive mode made to a workload (at `at_ms`).
    async fn add_mode_switch(&self, namespace: &str, name: &str, at_ms: i64, switch: &hangar_api::ModeSwitch) -> Result<()>;
    /// A workload's adaptive-mode changes, oldest first.
    async fn list_mode_switches(&self, namespace: &str, name: &str) -> Result<Vec<hangar_api::ModeSwitch>>;
}

/// The durable queue of asynchronous invocations.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// In one transaction: queues `new` asynchronous invocations, held by node `owner`, and
    /// writes the state of `changed` ones that `owner` still holds (a node whose events were
    /// taken over changes them no more). Returns, per new one, the id that holds it and whether
    /// that is an earlier invocation with the same idempotency key (then nothing was queued).
    async fn save_async(&self, owner: &str, new: Vec<AsyncRecord>, changed: Vec<AsyncRecord>) -> Result<Vec<(String, bool)>>;
    /// Every asynchronous invocation not yet finished (queued or running) that node `owner`
    /// holds, oldest first.
    async fn unfinished_async(&self, owner: &str) -> Result<Vec<AsyncRecord>>;
    /// Hands every unfinished asynchronous invocation node `lost` holds to node `to` (a lost
    /// node's queue taken over), oldest first.
    async fn adopt_async(&self, lost: &str, to: &str) -> Result<Vec<AsyncRecord>>;
    /// The ids among `ids` that a node other than `owner` holds now (taken over from it).
    async fn taken_over(&self, owner: &str, ids: Vec<String>) -> Result<Vec<String>>;
    /// How many writers may call [`Queue::save_async`] at once (each for its own events):
    /// one for a single-writer database, more where commits wait on round trips.
    fn parallel_writers(&self) -> usize {
        1
    }
    /// One asynchronous invocation; `namespace` restricts the look-up.
    async fn get_async(&self, namespace: Option<&str>, id: &str) -> Result<Option<AsyncRecord>>;
    /// Asynchronous invocations, newest first, without payloads.
    async fn list_async(&self, filter: AsyncFilter) -> Result<Vec<AsyncRecord>>;
}

/// The usage of the invocation records a batch inserted, summed per function and hour: what
/// [`Ledger::insert_invocations`] adds to the hourly rows in its transaction.
#[derive(Debug, Default)]
pub struct HourlyUsage(std::collections::HashMap<(String, String, i64), hangar_api::cost::UsageDelta>);

impl HourlyUsage {
    /// Counts one inserted record (by [`hangar_api::cost::UsageDelta::of_invocation`]'s rule).
    pub fn add(&mut self, record: &InvocationRecord) {
        if let Some(d) = hangar_api::cost::UsageDelta::of_invocation(record) {
            match self.0.entry((d.namespace.clone(), d.name.clone(), d.hour_ms)) {
                std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().add(&d),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(d);
                }
            }
        }
    }

    /// The sums, in key order (so that writers adding to the same rows never deadlock).
    pub fn into_rows(self) -> Vec<hangar_api::cost::UsageDelta> {
        let mut rows: Vec<_> = self.0.into_iter().collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter().map(|(_, d)| d).collect()
    }
}

/// A whole backend: desired state, ledger and queue behind one handle.
pub trait Store: DesiredState + Ledger + Queue {}

impl<T: DesiredState + Ledger + Queue> Store for T {}

/// Which usage rows to read.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub namespace: Option<String>,
    pub kind: Option<hangar_api::WorkloadKind>,
    pub name: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Sum the hours of each UTC day.
    pub per_day: bool,
}

/// A trigger as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerRow {
    pub namespace: String,
    pub name: String,
    pub config: hangar_api::events::TriggerConfig,
    pub created_ms: i64,
    pub last_fired_ms: Option<i64>,
}

pub use hangar_api::events::{AsyncRecord, AsyncState};

/// Which asynchronous invocations to list.
#[derive(Debug, Clone, Default)]
pub struct AsyncFilter {
    /// `None` lists every namespace (admin only).
    pub namespace: Option<String>,
    /// Only events for this function or service.
    pub target: Option<String>,
    pub state: Option<AsyncState>,
    /// Id to continue after (exclusive), newest first.
    pub cursor: Option<String>,
    pub limit: u32,
}
