//! The cluster store: the store traits on PostgreSQL (tokio-postgres over a deadpool pool).
//! Every node of a cluster points at one database, which is the source of truth: desired state,
//! the code of every revision (content-addressed), the ledger and the durable async queue.
//!
//! The schema is versioned ([`MIGRATIONS`]): a node applies the migrations it knows at start,
//! under an advisory lock so nodes starting together apply each once, and refuses to start on a
//! database whose schema is newer than it knows. Writes of a revision are compare-and-set in
//! one statement (`UPDATE … WHERE revision = expected`, or an insert that must not conflict),
//! so two nodes deploying at once never both win a revision. Every call is bounded in time: a
//! database that cannot be reached answers [`StoreError::Unavailable`], never a hang.
#![forbid(unsafe_code)]

mod rows;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use hangar_store::{
    AsyncFilter, AsyncRecord, DesiredState, FunctionRow, InvocationFilter, InvocationRecord, KeyRow, Ledger, NamespaceRow, Queue, Result, ServiceRow,
    StoreError, TriggerRow, UsageFilter,
};
use tokio_postgres::NoTls;

use rows::{ASYNC_COLUMNS, FUNCTION_COLUMNS, INVOCATION_COLUMNS, SERVICE_COLUMNS, col};

/// The schema, one migration per entry; entry `i` makes version `i + 1`. Only ever appended to.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE namespaces (
    name            TEXT COLLATE "C" PRIMARY KEY,
    created_ms      BIGINT NOT NULL,
    max_concurrency BIGINT
);
CREATE TABLE api_keys (
    id          TEXT COLLATE "C" PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    namespace   TEXT COLLATE "C" REFERENCES namespaces(name) ON DELETE CASCADE,
    name        TEXT,
    created_ms  BIGINT NOT NULL
);
CREATE TABLE functions (
    namespace   TEXT COLLATE "C" NOT NULL REFERENCES namespaces(name),
    name        TEXT COLLATE "C" NOT NULL,
    revision    BIGINT NOT NULL,
    config      TEXT NOT NULL,
    code_digest TEXT NOT NULL,
    code_size   BIGINT NOT NULL,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE revisions (
    namespace   TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    revision    BIGINT NOT NULL,
    config      TEXT NOT NULL,
    code_digest TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (namespace, name, revision)
);
CREATE TABLE code (
    digest TEXT PRIMARY KEY,
    body   BYTEA NOT NULL
);
CREATE TABLE services (
    namespace   TEXT COLLATE "C" NOT NULL REFERENCES namespaces(name),
    name        TEXT COLLATE "C" NOT NULL,
    revision    BIGINT NOT NULL,
    config      TEXT NOT NULL,
    image_id    TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE invocations (
    id             TEXT COLLATE "C" PRIMARY KEY,
    namespace      TEXT COLLATE "C" NOT NULL,
    function       TEXT COLLATE "C" NOT NULL,
    revision       BIGINT NOT NULL,
    trigger        TEXT NOT NULL,
    started_ms     BIGINT NOT NULL,
    duration_us    BIGINT NOT NULL,
    billed_ms      BIGINT NOT NULL,
    memory_mb      BIGINT NOT NULL,
    start_kind     TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    status         BIGINT NOT NULL,
    response_bytes BIGINT NOT NULL,
    error          TEXT,
    logs           TEXT NOT NULL,
    logs_truncated BOOLEAN NOT NULL,
    parent_id      TEXT
);
CREATE INDEX invocations_by_function ON invocations(namespace, function, id);
CREATE INDEX invocations_by_namespace ON invocations(namespace, id);
CREATE INDEX invocations_by_parent ON invocations(parent_id) WHERE parent_id IS NOT NULL;
CREATE TABLE async_invocations (
    id              TEXT COLLATE "C" PRIMARY KEY,
    namespace       TEXT COLLATE "C" NOT NULL,
    kind            TEXT NOT NULL,
    target          TEXT COLLATE "C" NOT NULL,
    path            TEXT,
    payload         BYTEA NOT NULL,
    content_type    TEXT,
    idempotency_key TEXT,
    state           TEXT NOT NULL,
    attempts        TEXT NOT NULL,
    accepted_ms     BIGINT NOT NULL,
    next_ms         BIGINT NOT NULL,
    finished_ms     BIGINT,
    error           TEXT,
    destination_id  TEXT,
    owner           TEXT
);
CREATE INDEX async_by_owner ON async_invocations(owner) WHERE state IN ('queued', 'running');
CREATE UNIQUE INDEX async_by_key ON async_invocations(namespace, kind, target, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX async_unfinished ON async_invocations(state) WHERE state IN ('queued', 'running');
CREATE INDEX async_by_target ON async_invocations(namespace, target, id);
CREATE TABLE triggers (
    namespace     TEXT COLLATE "C" NOT NULL,
    name          TEXT COLLATE "C" NOT NULL,
    config        TEXT NOT NULL,
    created_ms    BIGINT NOT NULL,
    last_fired_ms BIGINT,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE sandboxes (
    id         TEXT COLLATE "C" PRIMARY KEY,
    namespace  TEXT COLLATE "C" NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX sandboxes_by_namespace ON sandboxes(namespace, id);
CREATE TABLE usage (
    namespace       TEXT COLLATE "C" NOT NULL,
    kind            TEXT COLLATE "C" NOT NULL,
    name            TEXT COLLATE "C" NOT NULL,
    hour_ms         BIGINT NOT NULL,
    requests        BIGINT NOT NULL DEFAULT 0,
    errors          BIGINT NOT NULL DEFAULT 0,
    cold_starts     BIGINT NOT NULL DEFAULT 0,
    billed_ms       BIGINT NOT NULL DEFAULT 0,
    mb_ms           BIGINT NOT NULL DEFAULT 0,
    vcpu_milli_ms   BIGINT NOT NULL DEFAULT 0,
    running_ms      BIGINT NOT NULL DEFAULT 0,
    paused_ms       BIGINT NOT NULL DEFAULT 0,
    standby_ms      BIGINT NOT NULL DEFAULT 0,
    standby_byte_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, kind, name, hour_ms)
);
CREATE INDEX usage_by_hour ON usage(hour_ms);
CREATE TABLE mode_switches (
    seq       BIGSERIAL PRIMARY KEY,
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    at_ms     BIGINT NOT NULL,
    body      TEXT NOT NULL
);
CREATE INDEX mode_switches_by_function ON mode_switches(namespace, name, at_ms, seq);
CREATE TABLE usage_marks (
    id              TEXT PRIMARY KEY,
    running_ms      BIGINT NOT NULL,
    paused_ms       BIGINT NOT NULL,
    standby_ms      BIGINT NOT NULL,
    standby_byte_ms TEXT NOT NULL
);
"#,
    // 2: the trace an asynchronous invocation continues.
    "ALTER TABLE async_invocations ADD COLUMN trace TEXT",
];

/// How long one store call may take before it counts as the database being unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per node.
const POOL_SIZE: usize = 16;
/// The advisory lock nodes take while migrating (`hangar` in ASCII).
const MIGRATION_LOCK: i64 = 0x68_61_6e_67_61_72;

/// An error of the database itself (a constraint, a bad statement) is the backend's; anything
/// else (refused, closed, timed out) means the database cannot be reached.
fn pg(e: tokio_postgres::Error) -> StoreError {
    if e.as_db_error().is_some() { StoreError::Backend(Box::new(e)) } else { StoreError::Unavailable(Box::new(e)) }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => StoreError::Unavailable(Box::new(other)),
    }
}

fn json<T: serde::Serialize>(what: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("{what} does not serialize: {e}")))
}

/// PostgreSQL-backed store. Cheap to clone (a pool).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    metering: bool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// Where a `postgres://` URL points, without its password: for messages.
pub fn describe(url: &str) -> String {
    match tokio_postgres::Config::from_str(url) {
        Ok(c) => {
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect();
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!("{}:{port}/{}", hosts.join(","), c.get_dbname().unwrap_or("postgres"))
        }
        Err(_) => "an unparsable URL".into(),
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://USER:PASS@HOST:PORT/DB`), checks the schema version and
    /// applies the migrations this binary knows. Fails with `Unavailable` if the database cannot
    /// be reached, `Schema` if a newer Hangar wrote it.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| StoreError::Schema(format!("`{}` is not a PostgreSQL URL: {e}", describe(url))))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives_idle(Duration::from_secs(5));
        config.application_name("hangar");
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let store = PostgresStore { pool, metering: true };
        store.migrate().await?;
        Ok(store)
    }

    /// The schema version of the database after [`PostgresStore::connect`].
    pub async fn schema_version(&self) -> Result<i64> {
        self.call(async {
            let c = self.client().await?;
            let row = c.query_one("SELECT COALESCE(MAX(version), 0) FROM hangar_schema", &[]).await.map_err(pg)?;
            col(&row, 0)
        })
        .await
    }

    async fn migrate(&self) -> Result<()> {
        self.call(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg)?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS hangar_schema (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)").await.map_err(pg)?;
            let row = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM hangar_schema", &[]).await.map_err(pg)?;
            let found: i64 = col(&row, 0)?;
            let known = MIGRATIONS.len() as i64;
            if found > known {
                return Err(StoreError::Schema(format!(
                    "the database's schema is at version {found}, newer than this Hangar knows ({known}): a newer Hangar wrote it; run that version (or newer) on this node"
                )));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
                tx.batch_execute(sql).await.map_err(pg)?;
                tx.execute("INSERT INTO hangar_schema(version, applied_ms) VALUES ($1, $2)", &[&(i as i64 + 1), &hangar_api_now_ms()]).await.map_err(pg)?;
                tracing::info!("store: applied schema migration {}", i + 1);
            }
            tx.commit().await.map_err(pg)
        })
        .await
    }

    /// Without metering, invocation records are written but not added to the usage rows.
    pub fn with_metering(mut self, on: bool) -> Self {
        self.metering = on;
        self
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs one store call, bounded by [`CALL_TIMEOUT`].
    async fn call<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!("no answer within {CALL_TIMEOUT:?}").into())),
        }
    }
}

fn hangar_api_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The compare-and-set of a revision write, in `tx`: `Stale` unless the current revision of
/// `namespace/name` in `table` is `expected` (0: none). `write` is the statement that makes the
/// new revision current: an insert that does nothing on conflict when `expected` is 0, else an
/// update guarded by `revision = expected`; its row count tells whether it won.
async fn compare_and_set(tx: &impl GenericClient, table: &str, what: &str, namespace: &str, name: &str, expected: u64, written: u64) -> Result<()> {
    if written == 1 {
        return Ok(());
    }
    let row = tx.query_opt(&format!("SELECT revision FROM {table} WHERE namespace = $1 AND name = $2"), &[&namespace, &name]).await.map_err(pg)?;
    let found = match row {
        Some(r) => col::<i64>(&r, 0)? as u64,
        None => 0,
    };
    Err(StoreError::Stale { what: format!("{what} `{name}` in namespace `{namespace}`"), expected, found })
}

/// Adds one delta to its hourly row (made if missing).
async fn upsert_usage(tx: &impl GenericClient, d: &hangar_api::cost::UsageDelta) -> Result<()> {
    let n = |v: u64| v.min(i64::MAX as u64) as i64;
    let statement = tx
        .prepare_cached(
            "INSERT INTO usage AS u (namespace, kind, name, hour_ms, requests, errors, cold_starts, billed_ms, mb_ms,
           vcpu_milli_ms, running_ms, paused_ms, standby_ms, standby_byte_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (namespace, kind, name, hour_ms) DO UPDATE SET
           requests = u.requests + excluded.requests, errors = u.errors + excluded.errors,
           cold_starts = u.cold_starts + excluded.cold_starts, billed_ms = u.billed_ms + excluded.billed_ms,
           mb_ms = u.mb_ms + excluded.mb_ms, vcpu_milli_ms = u.vcpu_milli_ms + excluded.vcpu_milli_ms,
           running_ms = u.running_ms + excluded.running_ms, paused_ms = u.paused_ms + excluded.paused_ms,
           standby_ms = u.standby_ms + excluded.standby_ms, standby_byte_ms = u.standby_byte_ms + excluded.standby_byte_ms",
        )
        .await
        .map_err(pg)?;
    tx.execute(
        &statement,
        &[
            &d.namespace,
            &d.kind.as_str(),
            &d.name,
            &d.hour_ms,
            &n(d.requests),
            &n(d.errors),
            &n(d.cold_starts),
            &n(d.billed_ms),
            &n(d.mb_ms),
            &n(d.vcpu_milli_ms),
            &n(d.running_ms),
            &n(d.paused_ms),
            &n(d.standby_ms),
            &n(d.standby_byte_ms),
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

async fn count(tx: &impl GenericClient, table: &str, namespace: &str) -> Result<i64> {
    let row = tx.query_one(&format!("SELECT count(*) FROM {table} WHERE namespace = $1"), &[&namespace]).await.map_err(pg)?;
    col(&row, 0)
}

#[async_trait]
impl DesiredState for PostgresStore {
    async fn create_namespace(&self, name: &str, now_ms: i64) -> Result<NamespaceRow> {
        self.call(async {
            let c = self.client().await?;
            let n = c.execute("INSERT INTO namespaces(name, created_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&name, &now_ms]).await.map_err(pg)?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("namespace `{name}` already exists")));
            }
            Ok(NamespaceRow { name: name.to_string(), created_ms: now_ms, max_concurrency: None })
        })
        .await
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceRow>> {
        self.call(async {
            let c = self.client().await?;
            let rows = c.query("SELECT name, created_ms, max_concurrency FROM namespaces ORDER BY name", &[]).await.map_err(pg)?;
            rows.iter().map(rows::namespace).collect()
        })
        .await
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<NamespaceRow>> {
        self.call(async {
            let c = self.client().await?;
            let row = c.query_opt("SELECT name, created_ms, max_concurrency FROM namespaces WHERE name = $1", &[&name]).await.map_err(pg)?;
            row.as_ref().map(rows::namespace).transpose()
        })
        .await
    }

    async fn delete_namespace(&self, name: &str) -> Result<bool> {
        self.call(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg)?;
            // Held until commit: no workload is added to it meanwhile (they reference the row).
            tx.query_opt("SELECT 1 FROM namespaces WHERE name = $1 FOR UPDATE", &[&name]).await.map_err(pg)?;
            for (table, what, hint) in [
                ("functions", "function(s); delete them first", ""),
                ("services", "service(s); delete them first", ""),
                ("triggers", "trigger(s); remove them first", " (`hangar triggers rm`)"),
                ("sandboxes", "sandbox(es); remove them first", " (`hangar sandbox rm`)"),
            ] {
                let n = count(&tx, table, name).await?;
                if n > 0 {
                    return Err(StoreError::Conflict(format!("namespace `{name}` still has {n} {what}{hint}")));
                }
            }
            tx.execute("DELETE FROM api_keys WHERE namespace = $1", &[&name]).await.map_err(pg)?;
            let n = tx.execute("DELETE FROM namespaces WHERE name = $1", &[&name]).await.map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            Ok(n > 0)
        })
        .await
    }

    async fn set_namespace_limit(&self, name: &str, max_concurrency: Option<u32>) -> Result<bool> {
        let limit = max_concurrency.map(i64::from);
        self.call(async {
            let c = self.client().await?;
            Ok(c.execute("UPDATE namespaces SET max_concurrency = $2 WHERE name = $1", &[&name, &limit]).await.map_err(pg)? > 0)
        })
        .await
    }

    async fn insert_key(&self, key: &KeyRow) -> Result<()> {
        self.call(async {
            let c = self.client().await?;
            c.execute(
                "INSERT INTO api_keys(id, hash, namespace, name, created_ms) VALUES ($1, $2, $3, $4, $5)",
                &[&key.id, &key.hash, &key.namespace, &key.name, &key.created_ms],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
        .await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRow>> {
        self.call(async {
            let c = self.client().await?;
            let rows = c.query("SELECT id, hash, namespace, name, created_ms FROM api_keys ORDER BY created_ms, id", &[]).await.map_err(pg)?;
            rows.iter().map(|r| Ok(KeyRow { id: col(r, 0)?, hash: col(r, 1)?, namespace: col(r, 2)?, name: col(r, 3)?, created_ms: col(r, 4)? })).collect()
        })
        .await
    }

    async fn delete_key(&self, id: &str) -> Result<bool> {
        self.call(async {
            let c = self.client().await?;
            Ok(c.execute("DELETE FROM api_keys WHERE id = $1", &[&id]).await.map_err(pg)? > 0)
        })
        .await
    }

    async fn put_function(&self, row: &FunctionRow, expected: u64) -> Result<()> {
        let config = json("the function's config", &row.config)?;
        let (revision, size) = (row.revision as i64, row.code_size as i64);
        self.call(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg)?;
            let written = if expected == 0 {
                tx.execute(
                    "INSERT INTO functions(namespace, name, revision, config, code_digest, code_size, created_ms, updated_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                    &[&row.namespace, &row.name, &revision, &config, &row.code_digest, &size, &row.created_ms, &row.updated_ms],
                )
                .await
            } else {
                tx.execute(
                    "UPDATE functions SET revision = $3, config = $4, code_digest = $5, code_size = $6, updated_ms = $7
                     WHERE namespace = $1 AND name = $2 AND revision = $8",
                    &[&row.namespace, &row.name, &revision, &config, &row.code_digest, &size, &row.updated_ms, &(expected as i64)],
                )
                .await
            }
            .map_err(pg)?;
            compare_and_set(&tx, "functions", "function", &row.namespace, &row.name, expected, written).await?;
            tx.execute(
                "INSERT INTO revisions(namespace, name, revision, config, code_digest, created_ms) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (namespace, name, revision) DO UPDATE SET config = excluded.config, code_digest = excluded.code_digest,
                   created_ms = excluded.created_ms",
                &[&row.namespace, &row.name, &revision, &config, &row.code_digest, &row.updated_ms],
            )
            .await
            .map_err(pg)?;
            tx.commit().await.map_err(pg)
        })
        .await
    }

    async fn get_function(&self, namespace: &str, name: &str) -> Result<Option<FunctionRow>> {
        self.call(async {
            let c = self.client().await?;
            let row =
                c.query_opt(&format!("SELECT {FUNCTION_COLUMNS} FROM functions WHERE namespace = $1 AND name = $2"), &[&namespace, &name]).await.map_err(pg)?;
            row.as_ref().map(rows::function).transpose()
        })
        .await
    }

    async fn list_functions(&self, namespace: Option<&str>) -> Result<Vec<FunctionRow>> {
        self.call(async {
            let c = self.client().await?;
            let rows = c
                .query(&format!("SELECT {FUNCTION_COLUMNS} FROM functions WHERE ($1::text IS NULL OR namespace = $1) ORDER BY namespace, name"), &[&namespace])
                .await
                .map_err(pg)?;
            rows.iter().map(rows::function).collect()
        })
        .await
    }

    async fn delete_function(&self, namespace: &str, name: &str) -> Result<bool> {
        self.call(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg)?;
            let n = tx.execute("DELETE FROM functions WHERE namespace = $1 AND name = $2", &[&namespace, &name]).await.map_err(pg)?;
            tx.execute("DELETE FROM revisions WHERE namespace = $1 AND name = $2", &[&namespace, &name]).await.map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_service(&self, row: &ServiceRow, expected: u64) -> Result<()> {
        let config = json("the service's config", &row.config)?;
        let revision = row.revision as i64;
        self.call(async {
            let c = self.client().await?;
            let written = if expected == 0 {
                c.execute(
                    "INSERT INTO services(namespace, name, revision, config, image_id, created_ms, updated_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    &[&row.namespace, &row.name, &revision, &config, &row.image_id, &row.created_ms, &row.updated_ms],
                )
                .await
            } else {
                c.execute(
                    "UPDATE services SET revision = $3, config = $4, image_id = $5, updated_ms = $6
                     WHERE namespace = $1 AND name = $2 AND revision = $7",
                    &[&row.namespace, &row.name, &revision, &config, &row.image_id, &row.updated_ms, &(expected as i64)],
                )
                .await
            }
            .map_err(pg)?;
            compare_and_set(&c, "services", "service", &row.namespace, &row.name, expected, written).await
        })
        .await
    }

    async fn get_service(&self, namespace: &str, name: &str) -> Result<Option<ServiceRow>> {
        self.call(async {
            let c = self.client().await?;
            let row =
                c.query_opt(&format!("SELECT {SERVICE_COLUMNS} FROM services WHERE namespace = $1 AND name = $2"), &[&namespace, &name]).await.map_err(pg)?;
            row.as_ref().map(rows::service).transpose()
        })
        .await
    }

    async fn list_services(&self, namespace: Option<&str>) -> Result<Vec<ServiceRow>> {
        self.call(async {
            let c = self.client().await?;
            let rows = c
                .query(&format!("SELECT {SERVICE_COLUMNS} FROM services WHERE ($1::text IS NULL OR namespace = $1) ORDER BY namespace, name"), &[&namespace])
                .await
                .map_err(pg)?;
            rows.iter().map(rows::service).collect()
        })
        .await
    }

    async fn delete_service(&self, namespace: &str, name: &str) -> Result<bool> {
        self.call(async {
            let c = self.client().await?;
            Ok(c.execute("DELETE FROM services WHERE namespace = $1 AND name = $2", &[&namespace, &name]).await.map_err(pg)? > 0)
        })
        .await
    }

    async fn put_trigger(&self, row: &TriggerRow) -> Result<()> {
        let config = json("the trigger's config", &row.config)?;
        self.call(async {
            let c = self.client().await?;
            c.execute(
                "INSERT INTO triggers(namespace, name, config, created_ms, last_fired_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (namespace, name) DO UPDATE SET config = excluded.config",
                &[&row.namespace, &row.name, &config, &row.created_ms, &row.last_fired_ms],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
        .await
    }

    async fn list_triggers(&self, namespace: Option<&str>) -> Result<Vec<TriggerRow>> {
        self.call(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT namespace, name, config, created_ms, last_fired_ms FROM triggers WHERE ($1::text IS NULL OR namespace = $1) ORDER BY namespace, name",
                    &[&namespace],
                )
                .await
                .map_err(pg)?;
            rows.iter().map(rows::trigger).collect()
        })
        .await
    }

    async fn delete_trigger(&self, namespace: &str, name: &str) -> Result<bool> {
        self.call(async {
            let c = self.client().await?;
            Ok(c.execute("DELETE FROM triggers WHERE namespace = $1 AND name = $2", &[&namespace, &name]).await.map_err(pg)? > 0)
        })
        .await
    }

    async fn set_trigger_fired(&self, namespace: &str, name: &str, fired_ms: i64) -> Result<()> {
        self.call(async {
            let c = self.client().await?;
            c.execute("UPDATE triggers SET last_fired_ms = $3 WHERE namespace = $1 AND name = $2", &[&namespace, &name, &fired_ms]).await.map_err(pg)?;
            Ok(())
        })
        .await
    }

    async fn put_code(&self, digest: &str, code: Bytes) -> Result<()> {
        self.call(async {
            let c = self.client().await?;
            c.execute("INSERT INTO code(digest, body) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&digest, &&code[..]]).await.map_err(pg)?;
            Ok(())
        })
        .await
    }

    async fn get_code(&self, digest: &str) -> Result<Option<Bytes>> {
        self.call(async {
            let c = self.client().await?;
            let row = c.query_opt("SELECT body FROM code WHERE digest = $1", &[&digest]).await.map_err(pg)?;
            row.map(|r| col::<Vec<u8>>(&r, 0).map(Bytes::from)).transpose()
        })
        .await
    }

    async fn put_sandbox(&self, sandbox: &hangar_api::sandboxes::Sandbox) -> Result<()> {
        let body = json("the sandbox", sandbox)?;
        self.call(async {
            let c = self.client().await?;
            c.execute(
                "INSERT INTO sandboxes(id, namespace, body) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                &[&sandbox.id, &sandbox.namespace, &body],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
        .await
    }

    async fn list_sandboxes(&self) -> Result<Vec<hangar_api::sandboxes::Sandbox>> {
        self.call(async {
            let c = self.client().await?;
            let rows = c.query("SELECT id, body FROM sandboxes ORDER BY id", &[]).await.map_err(pg)?;
            rows.iter()
                .map(|r| {
                    let (id, body): (String, String) = (col(r, 0)?, col(r, 1)?);
                    serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("sandbox {id}: {e}")))
                })
                .collect()
        })
        .await
    }

    async fn get_sandbox(&self, id: &str) -> Result<Option<hangar_api::sandboxes::Sandbox>> {
        self.call(async {
            let c = self.client().await?;
            let row = c.query_opt("SELECT body FROM sandboxes WHERE id = $1", &[&id]).await.map_err(pg)?;
            row.map(|r| {
                let body: String = col(&r, 0)?;
                serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("sandbox {id}: {e}")))
            })
            .transpose()
        })
        .await
    }

    async fn delete_sandbox(&self, id: &str) -> Result<bool> {
        self.call(async {
            let c = self.client().await?;
            Ok(c.execute("DELETE FROM sandboxes WHERE id = $1", &[&id]).await.map_err(pg)? > 0)
        })
        .await
    }
}

#[async_trait]
impl Ledger for PostgresStore {
    async fn insert_invocations(&self, batch: Vec<InvocationRecord>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.call(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg)?;
            let insert = tx
                .prepare_cached(
                    "INSERT INTO invocations(id, namespace, function, revision, trigger, started_ms, duration_us, billed_ms,
                       memory_mb, start_kind, outcome, status, response_bytes, error, logs, logs_truncated, parent_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(pg)?;
            let mut usage = hangar_store::HourlyUsage::default();
            for r in &batch {
                let inserted = tx
                    .execute(
                        &insert,
                        &[
                            &r.id,
                            &r.namespace,
                            &r.function,
                            &(r.revision as i64),
                            &r.trigger.as_str(),
                            &r.started_ms,
                            &(r.duration_us as i64),
                            &(r.billed_ms as i64),
                            &i64::from(r.memory_mb),
                            &r.start.as_str(),
                            &r.ending.outcome.as_str(),
                            &i64::from(r.ending.status),
                            &(r.ending.response_bytes as i64),
                            &r.ending.error,
                            &r.ending.logs,
                            &r.ending.logs_truncated,
                            &r.parent_id,
                        ],
                    )
                    .await
                    .map_err(pg)?;
                // Metered once: a record written again (a retried batch) is not counted again.
                if !self.metering || inserted == 0 {
                    continue;
                }
                usage.add(r);
            }
            // In key order, so that two nodes adding to the same rows never deadlock.
            for d in &usage.into_rows() {
                upsert_usage(&tx, d).await?;
            }
            tx.commit().await.map_err(pg)
        })
        .await
    }

    async fn list_invocations(&self, f: InvocationFilter) -> Result<Vec<InvocationRecord>> {
        let (cmp, order) = if f.ascending { (">", "ASC") } else { ("<", "DESC") };
        let logs = if f.with_logs { ", logs" } else { "" };
        let sql = format!(
            "SELECT {INVOCATION_COLUMNS}{logs} FROM invocations
             WHERE ($1::text IS NULL OR namespace = $1) AND ($2::text IS NULL OR function = $2)
               AND ($3::text IS NULL OR outcome = $3) AND ($4::bigint IS NULL OR started_ms >= $4)
               AND ($5::bigint IS NULL OR started_ms < $5) AND ($6::text IS NULL OR id {cmp} $6)
               AND ($8::text IS NULL OR parent_id = $8)
             ORDER BY id {order} LIMIT $7"
        );
        let outcome = f.outcome.map(|o| o.as_str());
        let limit = i64::from(f.limit);
        self.call(async {
            let c = self.client().await?;
            let rows = c.query(&sql, &[&f.namespace, &f.function, &outcome, &f.since_ms, &f.until_ms, &f.cursor, &limit, &f.parent]).await.map_err(pg)?;
            rows.iter().map(|r| rows::invocation(r, f.with_logs)).collect()
        })
        .await
    }

    async fn get_invocation(&self, namespace: Option<&str>, id: &str) -> Result<Option<InvocationRecord>> {
        self.call(async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    &format!("SELECT {INVOCATION_COLUMNS}, logs FROM invocations WHERE id = $1 AND ($2::text IS NULL OR namespace = $2)"),
                    &[&id, &namespace],
                )
                .await
                .map_err(pg)?;
            row.map(|r| rows::invocation(&r, true)).transpose()
        })
        .await
    }

    async fn add_usage(&self, deltas: Vec<hangar_api::cost::UsageDelta>, marks: Option<Vec<hangar_api::cost::UsageMark>>) -> Result<()> {
        if deltas.is_empty() && marks.is_none() {
            return Ok(());
        }
        self.call(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg)?;
            for d in &deltas {
                upsert_usage(&tx, d).await?;
            }
            if let Some(marks) = &marks {
                tx.execute("DELETE FROM usage_marks WHERE id NOT IN (SELECT id FROM sandboxes)", &[]).await.map_err(pg)?;
                for m in marks {
                    tx.execute(
                        "INSERT INTO usage_marks(id, running_ms, paused_ms, standby_ms, standby_byte_ms) VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (id) DO UPDATE SET running_ms = excluded.running_ms, paused_ms = excluded.paused_ms,
                           standby_ms = excluded.standby_ms, standby_byte_ms = excluded.standby_byte_ms",
                        &[&m.id, &(m.running_ms as i64), &(m.paused_ms as i64), &(m.standby_ms as i64), &m.standby_byte_ms.to_string()],
                    )
                    .await
                    .map_err(pg)?;
                }
            }
            tx.commit().await.map_err(pg)
        })
        .await
    }

    async fn usage_marks(&self) -> Result<Vec<hangar_api::cost::UsageMark>> {
        self.call(async {
            let c = self.client().await?;
            let rows = c.query("SELECT id, running_ms, paused_ms, standby_ms, standby_byte_ms FROM usage_marks", &[]).await.map_err(pg)?;
            rows.iter()
                .map(|r| {
                    Ok(hangar_api::cost::UsageMark {
                        id: col(r, 0)?,
                        running_ms: col::<i64>(r, 1)?.max(0) as u64,
                        paused_ms: col::<i64>(r, 2)?.max(0) as u64,
                        standby_ms: col::<i64>(r, 3)?.max(0) as u64,
                        standby_byte_ms: col::<String>(r, 4)?.parse().unwrap_or(0),
                    })
                })
                .collect()
        })
        .await
    }

    async fn list_usage(&self, f: UsageFilter) -> Result<Vec<hangar_api::cost::UsageDelta>> {
        let period = if f.per_day { "(hour_ms / 86400000) * 86400000" } else { "hour_ms" };
        let sql = format!(
            "SELECT namespace, kind, name, {period} AS p, SUM(requests)::bigint, SUM(errors)::bigint, SUM(cold_starts)::bigint,
               SUM(billed_ms)::bigint, SUM(mb_ms)::bigint, SUM(vcpu_milli_ms)::bigint, SUM(running_ms)::bigint,
               SUM(paused_ms)::bigint, SUM(standby_ms)::bigint, SUM(standby_byte_ms)::bigint
             FROM usage
             WHERE ($1::text IS NULL OR namespace = $1) AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR name = $3)
               AND ($4::bigint IS NULL OR hour_ms >= $4) AND ($5::bigint IS NULL OR hour_ms < $5)
             GROUP BY namespace, kind, name, p
             ORDER BY p, namespace, kind, name"
        );
        let kind = f.kind.map(|k| k.as_str());
        self.call(async {
            let c = self.client().await?;
            let rows = c.query(&sql, &[&f.namespace, &kind, &f.name, &f.since_ms, &f.until_ms]).await.map_err(pg)?;
            rows.iter().map(rows::usage).collect()
        })
        .await
    }

    async fn prune_usage(&self, before_ms: i64) -> Result<u64> {
        self.call(async {
            let c = self.client().await?;
            c.execute("DELETE FROM usage WHERE hour_ms < $1", &[&before_ms]).await.map_err(pg)
        })
        .await
    }

    async fn prune_invocations(&self, before_ms: i64, most: u32) -> Result<u64> {
        self.call(async {
            let c = self.client().await?;
            c.execute(
                "DELETE FROM invocations WHERE id IN (SELECT id FROM invocations WHERE started_ms < $1 ORDER BY id LIMIT $2)",
                &[&before_ms, &i64::from(most)],
            )
            .await
            .map_err(pg)
        })
        .await
    }

    async fn add_mode_switch(&self, namespace: &str, name: &str, at_ms: i64, switch: &hangar_api::ModeSwitch) -> Result<()> {
        let body = json("a mode switch", switch)?;
        self.call(async {
            let c = self.client().await?;
            c.execute("INSERT INTO mode_switches(namespace, name, at_ms, body) VALUES ($1, $2, $3, $4)", &[&namespace, &name, &at_ms, &body])
                .await
                .map_err(pg)?;
            Ok(())
        })
        .await
    }

    async fn list_mode_switches(&self, namespace: &str, name: &str) -> Result<Vec<hangar_api::ModeSwitch>> {
        self.call(async {
            let c = self.client().await?;
            let rows =
                c.query("SELECT body FROM mode_switches WHERE namespace = $1 AND name = $2 ORDER BY at_ms, seq", &[&namespace, &name]).await.map_err(pg)?;
            rows.iter().map(|r| serde_json::from_str(&col::<String>(r, 0)?).map_err(|e| StoreError::Corrupt(format!("a mode switch: {e}")))).collect()
        })
        .await
    }
}

#[async_trait]
impl Queue for PostgresStore {
    async fn save_async(&self, owner: &str, new: Vec<AsyncRecord>, changed: Vec<AsyncRecord>) -> Result<Vec<(String, bool)>> {
        if new.is_empty() && changed.is_empty() {
            return Ok(Vec::new());
        }
        self.call(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg)?;
            // One statement for the batch's new events and one for its changes: the queue's
            // writer sends one batch at a time, so round trips bound its rate.
            let inserted: std::collections::HashSet<String> = if new.is_empty() {
                Default::default()
            } else {
                let insert = tx
                    .prepare_cached(
                        "INSERT INTO async_invocations(id, namespace, target, content_type, idempotency_key, state,
                           attempts, accepted_ms, next_ms, finished_ms, error, destination_id, kind, path, payload, trace, owner)
                         SELECT u.*, $16 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                           $8::bigint[], $9::bigint[], $10::bigint[], $11::text[], $12::text[], $13::text[], $14::text[], $15::bytea[],
                           $17::text[]) AS u
                         ON CONFLICT DO NOTHING RETURNING id",
                    )
                    .await
                    .map_err(pg)?;
                let text = |f: fn(&AsyncRecord) -> Option<String>| new.iter().map(f).collect::<Vec<Option<String>>>();
                let (ids, namespaces, targets) = (text(|a| Some(a.id.clone())), text(|a| Some(a.namespace.clone())), text(|a| Some(a.target.clone())));
                let (types, keys, states) = (text(|a| a.content_type.clone()), text(|a| a.idempotency_key.clone()), text(|a| Some(a.state.as_str().into())));
                let attempts = text(|a| Some(rows::attempts_json(a)));
                let (errors, destinations, kinds, paths) =
                    (text(|a| a.error.clone()), text(|a| a.destination_id.clone()), text(|a| Some(a.kind.as_str().into())), text(|a| a.path.clone()));
                let accepted: Vec<i64> = new.iter().map(|a| a.accepted_ms).collect();
                let next: Vec<i64> = new.iter().map(|a| a.next_ms).collect();
                let finished: Vec<Option<i64>> = new.iter().map(|a| a.finished_ms).collect();
                let payloads: Vec<&[u8]> = new.iter().map(|a| a.payload.as_slice()).collect();
                let traces = text(|a| a.trace.clone());
                let rows = tx
                    .query(
                        &insert,
                        &[
                            &ids,
                            &namespaces,
                            &targets,
                            &types,
                            &keys,
                            &states,
                            &attempts,
                            &accepted,
                            &next,
                            &finished,
                            &errors,
                            &destinations,
                            &kinds,
                            &paths,
                            &payloads,
                            &owner,
                            &traces,
                        ],
                    )
                    .await
                    .map_err(pg)?;
                rows.iter().map(|r| col::<String>(r, 0)).collect::<Result<_>>()?
            };
            let mut held = Vec::with_capacity(new.len());
            for a in &new {
                if inserted.contains(&a.id) {
                    held.push((a.id.clone(), false));
                    continue;
                }
                // Held by an earlier event with its idempotency key (rare: one query each).
                let row = tx
                    .query_opt(
                        "SELECT id FROM async_invocations WHERE namespace = $1 AND kind = $2 AND target = $3 AND idempotency_key = $4",
                        &[&a.namespace, &a.kind.as_str(), &a.target, &a.idempotency_key],
                    )
                    .await
                    .map_err(pg)?;
                let id: String = match row {
                    Some(r) => col(&r, 0)?,
                    None => return Err(StoreError::Conflict(format!("asynchronous invocation `{}` exists already", a.id))),
                };
                held.push((id, true));
            }
            if !changed.is_empty() {
                let update = tx
                    .prepare_cached(
                        "UPDATE async_invocations a SET state = u.state, attempts = u.attempts, next_ms = u.next_ms, finished_ms = u.finished_ms,
                           error = u.error, destination_id = u.destination_id
                         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[])
                           AS u(id, state, attempts, next_ms, finished_ms, error, destination_id)
                         WHERE a.id = u.id AND a.owner = $8",
                    )
                    .await
                    .map_err(pg)?;
                let ids: Vec<&str> = changed.iter().map(|a| a.id.as_str()).collect();
                let states: Vec<&str> = changed.iter().map(|a| a.state.as_str()).collect();
                let attempts: Vec<String> = changed.iter().map(rows::attempts_json).collect();
                let next: Vec<i64> = changed.iter().map(|a| a.next_ms).collect();
                let finished: Vec<Option<i64>> = changed.iter().map(|a| a.finished_ms).collect();
                let errors: Vec<Option<&str>> = changed.iter().map(|a| a.error.as_deref()).collect();
                let destinations: Vec<Option<&str>> = changed.iter().map(|a| a.destination_id.as_deref()).collect();
                tx.execute(&update, &[&ids, &states, &attempts, &next, &finished, &errors, &destinations, &owner]).await.map_err(pg)?;
            }
            tx.commit().await.map_err(pg)?;
            Ok(held)
        })
        .await
    }

    async fn unfinished_async(&self, owner: &str) -> Result<Vec<AsyncRecord>> {
        self.call(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    &format!("SELECT {ASYNC_COLUMNS}, payload FROM async_invocations WHERE state IN ('queued', 'running') AND owner = $1 ORDER BY id"),
                    &[&owner],
                )
                .await
                .map_err(pg)?;
            rows.iter().map(|r| rows::async_record(r, true)).collect()
        })
        .await
    }

    /// Commits of separate connections overlap (and share WAL flushes).
    fn parallel_writers(&self) -> usize {
        4
    }

    async fn taken_over(&self, owner: &str, ids: Vec<String>) -> Result<Vec<String>> {
        self.call(async {
            let c = self.client().await?;
            let rows = c
                .query("SELECT id FROM async_invocations WHERE id = ANY($1) AND owner IS DISTINCT FROM $2 AND owner IS NOT NULL ORDER BY id", &[&ids, &owner])
                .await
                .map_err(pg)?;
            rows.iter().map(|r| col(r, 0)).collect()
        })
        .await
    }

    async fn adopt_async(&self, lost: &str, to: &str) -> Result<Vec<AsyncRecord>> {
        self.call(async {
            let c = self.client().await?;
            // One statement: two nodes adopting at once cannot both take an event.
            let rows = c
                .query(
                    &format!(
                        "UPDATE async_invocations SET owner = $2 WHERE owner = $1 AND state IN ('queued', 'running')
                         RETURNING {ASYNC_COLUMNS}, payload"
                    ),
                    &[&lost, &to],
                )
                .await
                .map_err(pg)?;
            let mut out: Vec<AsyncRecord> = rows.iter().map(|r| rows::async_record(r, true)).collect::<Result<_>>()?;
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
        .await
    }

    async fn get_async(&self, namespace: Option<&str>, id: &str) -> Result<Option<AsyncRecord>> {
        self.call(async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    &format!("SELECT {ASYNC_COLUMNS}, payload FROM async_invocations WHERE id = $1 AND ($2::text IS NULL OR namespace = $2)"),
                    &[&id, &namespace],
                )
                .await
                .map_err(pg)?;
            row.map(|r| rows::async_record(&r, true)).transpose()
        })
        .await
    }

    async fn list_async(&self, f: AsyncFilter) -> Result<Vec<AsyncRecord>> {
        let state = f.state.map(|s| s.as_str());
        let limit = i64::from(f.limit);
        self.call(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    &format!(
                        "SELECT {ASYNC_COLUMNS} FROM async_invocations
                         WHERE ($1::text IS NULL OR namespace = $1) AND ($2::text IS NULL OR target = $2) AND ($3::text IS NULL OR state = $3)
                           AND ($4::text IS NULL OR id < $4)
                         ORDER BY id DESC LIMIT $5"
                    ),
                    &[&f.namespace, &f.target, &state, &f.cursor, &limit],
                )
                .await
                .map_err(pg)?;
            rows.iter().map(|r| rows::async_record(r, false)).collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_conformance_suite() {
        let pg = hangar_testkit::Postgres::start();
        hangar_store::conformance::run(|| {
            let url = pg.fresh_database();
            async move { Arc::new(PostgresStore::connect(&url).await.expect("connecting to the test database")) as Arc<dyn hangar_store::Store> }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrations_run_once_and_a_newer_schema_is_refused() {
        let pg = hangar_testkit::Postgres::start();
        let url = pg.fresh_database();
        // Nodes starting together apply each migration once.
        let (a, b) = tokio::join!(PostgresStore::connect(&url), PostgresStore::connect(&url));
        let (a, _b) = (a.expect("the first node"), b.expect("the second node"));
        assert_eq!(a.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
        a.create_namespace("kept", 1).await.unwrap();
        // Connecting again changes nothing.
        let again = PostgresStore::connect(&url).await.unwrap();
        assert!(again.get_namespace("kept").await.unwrap().is_some());
        // A newer Hangar migrated it further: this one refuses, saying why.
        let db = url.rsplit('/').next().unwrap();
        pg.sql(db, &format!("INSERT INTO hangar_schema VALUES ({}, 0)", MIGRATIONS.len() + 1));
        match PostgresStore::connect(&url).await {
            Err(StoreError::Schema(m)) => assert!(m.contains("newer than this Hangar knows"), "{m}"),
            other => panic!("expected a schema refusal, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_database_is_unavailable_not_a_hang() {
        let port = hangar_testkit::free_port();
        let url = format!("postgres://postgres@127.0.0.1:{port}/hangar");
        match PostgresStore::connect(&url).await {
            Err(e @ StoreError::Unavailable(_)) => assert!(e.to_string().contains("cannot be reached"), "{e}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert_eq!(describe("postgres://u:secret@db.example:6543/prod"), "db.example:6543/prod");
    }
}
