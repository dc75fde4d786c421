//! The embedded store: the store traits on one SQLite file in WAL mode (`synchronous=FULL`),
//! driven from tokio's blocking pool. Its tests run the backend-neutral conformance suite.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use hangar_store::{
    AsyncFilter, AsyncRecord, DesiredState, FunctionRow, InvocationFilter, InvocationRecord, KeyRow, Ledger, NamespaceRow, Queue, Result, ServiceRow,
    StoreError, TriggerRow, UsageFilter,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

/// What a closure run on the connection can fail with: SQLite's own error, or the store's.
#[derive(Debug)]
enum SqlError {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for SqlError {
    fn from(e: rusqlite::Error) -> Self {
        SqlError::Sql(e)
    }
}

impl From<StoreError> for SqlError {
    fn from(e: StoreError) -> Self {
        SqlError::Store(e)
    }
}

impl From<SqlError> for StoreError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Sql(e) => StoreError::Backend(Box::new(e)),
            SqlError::Store(e) => e,
        }
    }
}

type SqlResult<T> = std::result::Result<T, SqlError>;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS namespaces (
    name        TEXT PRIMARY KEY,
    created_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    namespace   TEXT REFERENCES namespaces(name) ON DELETE CASCADE,
    name        TEXT,
    created_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS functions (
    namespace   TEXT NOT NULL REFERENCES namespaces(name),
    name        TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    config      TEXT NOT NULL,
    code_digest TEXT NOT NULL,
    code_size   INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS revisions (
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    config      TEXT NOT NULL,
    code_digest TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (namespace, name, revision)
);
CREATE TABLE IF NOT EXISTS services (
    namespace   TEXT NOT NULL REFERENCES namespaces(name),
    name        TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    config      TEXT NOT NULL,
    image_id    TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS invocations (
    id             TEXT PRIMARY KEY,
    namespace      TEXT NOT NULL,
    function       TEXT NOT NULL,
    revision       INTEGER NOT NULL,
    trigger        TEXT NOT NULL,
    started_ms     INTEGER NOT NULL,
    duration_us    INTEGER NOT NULL,
    billed_ms      INTEGER NOT NULL,
    memory_mb      INTEGER NOT NULL,
    start_kind     TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    status         INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    error          TEXT,
    logs           TEXT NOT NULL,
    logs_truncated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations(namespace, function, id);
CREATE INDEX IF NOT EXISTS invocations_by_namespace ON invocations(namespace, id);
CREATE TABLE IF NOT EXISTS async_invocations (
    id              TEXT PRIMARY KEY,
    namespace       TEXT NOT NULL,
    kind            TEXT NOT NULL,
    target          TEXT NOT NULL,
    path            TEXT,
    payload         BLOB NOT NULL,
    content_type    TEXT,
    idempotency_key TEXT,
    state           TEXT NOT NULL,
    attempts        TEXT NOT NULL,
    accepted_ms     INTEGER NOT NULL,
    next_ms         INTEGER NOT NULL,
    finished_ms     INTEGER,
    error           TEXT,
    destination_id  TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS async_by_key ON async_invocations(namespace, kind, target, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS async_unfinished ON async_invocations(state) WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS async_by_target ON async_invocations(namespace, target, id);
CREATE TABLE IF NOT EXISTS triggers (
    namespace     TEXT NOT NULL,
    name          TEXT NOT NULL,
    config        TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    last_fired_ms INTEGER,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS sandboxes (
    id         TEXT PRIMARY KEY,
    namespace  TEXT NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sandboxes_by_namespace ON sandboxes(namespace, id);
CREATE TABLE IF NOT EXISTS usage (
    namespace       TEXT NOT NULL,
    kind            TEXT NOT NULL,
    name            TEXT NOT NULL,
    hour_ms         INTEGER NOT NULL,
    requests        INTEGER NOT NULL DEFAULT 0,
    errors          INTEGER NOT NULL DEFAULT 0,
    cold_starts     INTEGER NOT NULL DEFAULT 0,
    billed_ms       INTEGER NOT NULL DEFAULT 0,
    mb_ms           INTEGER NOT NULL DEFAULT 0,
    vcpu_milli_ms   INTEGER NOT NULL DEFAULT 0,
    running_ms      INTEGER NOT NULL DEFAULT 0,
    paused_ms       INTEGER NOT NULL DEFAULT 0,
    standby_ms      INTEGER NOT NULL DEFAULT 0,
    standby_byte_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, kind, name, hour_ms)
);
CREATE INDEX IF NOT EXISTS usage_by_hour ON usage(hour_ms);
CREATE TABLE IF NOT EXISTS mode_switches (
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    at_ms     INTEGER NOT NULL,
    body      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS mode_switches_by_function ON mode_switches(namespace, name, at_ms);
CREATE TABLE IF NOT EXISTS code (
    digest TEXT PRIMARY KEY,
    body   BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_marks (
    id              TEXT PRIMARY KEY,
    running_ms      INTEGER NOT NULL,
    paused_ms       INTEGER NOT NULL,
    standby_ms      INTEGER NOT NULL,
    standby_byte_ms TEXT NOT NULL
);
"#;

/// The compare-and-set of a revision write: `Stale` unless the current revision of
/// `namespace/name` in `table` is `expected` (0: none).
fn expect_revision(tx: &rusqlite::Transaction<'_>, table: &str, what: &str, namespace: &str, name: &str, expected: u64) -> SqlResult<()> {
    let found: Option<i64> =
        tx.query_row(&format!("SELECT revision FROM {table} WHERE namespace = ?1 AND name = ?2"), params![namespace, name], |r| r.get(0)).optional()?;
    let found = found.map_or(0, |r| r as u64);
    if found != expected {
        return Err(StoreError::Stale { what: format!("{what} `{name}` in namespace `{namespace}`"), expected, found }.into());
    }
    Ok(())
}

/// Adds one delta to its hourly row (made if missing).
fn upsert_usage(tx: &rusqlite::Transaction<'_>, d: &hangar_api::cost::UsageDelta) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(
        "INSERT INTO usage(namespace, kind, name, hour_ms, requests, errors, cold_starts, billed_ms, mb_ms,
           vcpu_milli_ms, running_ms, paused_ms, standby_ms, standby_byte_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT(namespace, kind, name, hour_ms) DO UPDATE SET
           requests = requests + excluded.requests, errors = errors + excluded.errors,
           cold_starts = cold_starts + excluded.cold_starts, billed_ms = billed_ms + excluded.billed_ms,
           mb_ms = mb_ms + excluded.mb_ms, vcpu_milli_ms = vcpu_milli_ms + excluded.vcpu_milli_ms,
           running_ms = running_ms + excluded.running_ms, paused_ms = paused_ms + excluded.paused_ms,
           standby_ms = standby_ms + excluded.standby_ms, standby_byte_ms = standby_byte_ms + excluded.standby_byte_ms",
    )?;
    st.execute(params![
        d.namespace,
        d.kind.as_str(),
        d.name,
        d.hour_ms,
        d.requests as i64,
        d.errors as i64,
        d.cold_starts as i64,
        d.billed_ms as i64,
        d.mb_ms as i64,
        d.vcpu_milli_ms as i64,
        d.running_ms as i64,
        d.paused_ms as i64,
        d.standby_ms as i64,
        d.standby_byte_ms as i64
    ])?;
    Ok(())
}

/// Brings tables made by older versions up to date (columns added since).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has = |table: &str, column: &str| -> rusqlite::Result<bool> {
        let mut st = conn.prepare(&format!("PRAGMA table_info({table})"))?;
        let names = st.query_map([], |r| r.get::<_, String>(1))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(names.iter().any(|n| n == column))
    };
    if !has("namespaces", "max_concurrency")? {
        conn.execute_batch("ALTER TABLE namespaces ADD COLUMN max_concurrency INTEGER")?;
    }
    if !has("invocations", "parent_id")? {
        conn.execute_batch("ALTER TABLE invocations ADD COLUMN parent_id TEXT")?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS invocations_by_parent ON invocations(parent_id) WHERE parent_id IS NOT NULL")?;
    if !has("async_invocations", "owner")? {
        // Events from before nodes had ids belong to whoever opens the file next.
        conn.execute_batch("ALTER TABLE async_invocations ADD COLUMN owner TEXT")?;
    }
    if !has("async_invocations", "trace")? {
        conn.execute_batch("ALTER TABLE async_invocations ADD COLUMN trace TEXT")?;
    }
    Ok(())
}

/// SQLite-backed [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Whether invocation records are also added to the usage rows.
    metering: bool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(SqlError::from)?;
        Ok(Self::init(conn)?)
    }

    /// Without metering, invocation records are written but not added to the usage rows.
    pub fn with_metering(mut self, on: bool) -> Self {
        self.metering = on;
        self
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> Result<Self> {
        Ok(Self::init(Connection::open_in_memory().map_err(SqlError::from)?)?)
    }

    fn init(conn: Connection) -> SqlResult<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a deploy acknowledged to the user survives a power cut, not only a crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(SqliteStore { conn: Arc::new(Mutex::new(conn)), metering: true })
    }

    async fn with<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> SqlResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
            // back), so a poisoned lock is still safe to use.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard).map_err(StoreError::from)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }
}

fn function_from_row(r: &Row<'_>) -> rusqlite::Result<(FunctionRow, String)> {
    let config: String = r.get(3)?;
    Ok((
        FunctionRow {
            namespace: r.get(0)?,
            name: r.get(1)?,
            revision: r.get::<_, i64>(2)? as u64,
            config: hangar_api::FunctionConfig::new(hangar_api::RuntimeKind::Wasm),
            code_digest: r.get(4)?,
            code_size: r.get::<_, i64>(5)? as u64,
            created_ms: r.get(6)?,
            updated_ms: r.get(7)?,
        },
        config,
    ))
}

fn decode_function((mut row, config): (FunctionRow, String)) -> Result<FunctionRow> {
    row.config = serde_json::from_str(&config).map_err(|e| StoreError::Corrupt(format!("config of function {}/{}: {e}", row.namespace, row.name)))?;
    Ok(row)
}

const FUNCTION_COLUMNS: &str = "namespace, name, revision, config, code_digest, code_size, created_ms, updated_ms";
const INVOCATION_COLUMNS: &str = "id, namespace, function, revision, trigger, started_ms, \
    duration_us, billed_ms, memory_mb, start_kind, outcome, status, response_bytes, error, \
    logs_truncated, parent_id";

fn invocation_from_row(r: &Row<'_>, with_logs: bool) -> rusqlite::Result<InvocationRecord> {
    let text = |i: usize| -> rusqlite::Result<String> { r.get(i) };
    let parse_err = |i: usize, e: String| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into());
    Ok(InvocationRecord {
        id: r.get(0)?,
        namespace: r.get(1)?,
        function: r.get(2)?,
        revision: r.get::<_, i64>(3)? as u64,
        trigger: text(4)?.parse().map_err(|e| parse_err(4, e))?,
        started_ms: r.get(5)?,
        duration_us: r.get::<_, i64>(6)? as u64,
        billed_ms: r.get::<_, i64>(7)? as u64,
        memory_mb: r.get::<_, i64>(8)? as u32,
        start: text(9)?.parse().map_err(|e| parse_err(9, e))?,
        ending: hangar_api::Ending {
            outcome: text(10)?.parse().map_err(|e| parse_err(10, e))?,
            status: r.get::<_, i64>(11)? as u16,
            response_bytes: r.get::<_, i64>(12)? as u64,
            error: r.get(13)?,
            logs_truncated: r.get::<_, i64>(14)? != 0,
            logs: if with_logs { r.get(16)? } else { String::new() },
        },
        parent_id: r.get(15)?,
    })
}

#[async_trait]
impl DesiredState for SqliteStore {
    async fn create_namespace(&self, name: &str, now_ms: i64) -> Result<NamespaceRow> {
        let name = name.to_string();
        self.with(move |c| {
            let n = c.execute("INSERT INTO namespaces(name, created_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING", params![name, now_ms])?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("namespace `{name}` already exists")).into());
            }
            Ok(NamespaceRow { name, created_ms: now_ms, max_concurrency: None })
        })
        .await
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceRow>> {
        self.with(|c| {
            let mut st = c.prepare_cached("SELECT name, created_ms, max_concurrency FROM namespaces ORDER BY name")?;
            let rows = st.query_map([], |r| Ok(NamespaceRow { name: r.get(0)?, created_ms: r.get(1)?, max_concurrency: r.get(2)? }))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<NamespaceRow>> {
        let name = name.to_string();
        self.with(move |c| {
            Ok(c.query_row("SELECT name, created_ms, max_concurrency FROM namespaces WHERE name = ?1", [name], |r| {
                Ok(NamespaceRow { name: r.get(0)?, created_ms: r.get(1)?, max_concurrency: r.get(2)? })
            })
            .optional()?)
        })
        .await
    }

    async fn set_namespace_limit(&self, name: &str, max_concurrency: Option<u32>) -> Result<bool> {
        let name = name.to_string();
        self.with(move |c| Ok(c.execute("UPDATE namespaces SET max_concurrency = ?2 WHERE name = ?1", params![name, max_concurrency])? > 0)).await
    }

    async fn delete_namespace(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            let functions: i64 = tx.query_row("SELECT count(*) FROM functions WHERE namespace = ?1", [&name], |r| r.get(0))?;
            if functions > 0 {
                return Err(StoreError::Conflict(format!("namespace `{name}` still has {functions} function(s); delete them first")).into());
            }
            let services: i64 = tx.query_row("SELECT count(*) FROM services WHERE namespace = ?1", [&name], |r| r.get(0))?;
            if services > 0 {
                return Err(StoreError::Conflict(format!("namespace `{name}` still has {services} service(s); delete them first")).into());
            }
            let triggers: i64 = tx.query_row("SELECT count(*) FROM triggers WHERE namespace = ?1", [&name], |r| r.get(0))?;
            if triggers > 0 {
                return Err(
                    StoreError::Conflict(format!("namespace `{name}` still has {triggers} trigger(s); remove them first (`hangar triggers rm`)")).into()
                );
            }
            let sandboxes: i64 = tx.query_row("SELECT count(*) FROM sandboxes WHERE namespace = ?1", [&name], |r| r.get(0))?;
            if sandboxes > 0 {
                return Err(
                    StoreError::Conflict(format!("namespace `{name}` still has {sandboxes} sandbox(es); remove them first (`hangar sandbox rm`)")).into()
                );
            }
            tx.execute("DELETE FROM api_keys WHERE namespace = ?1", [&name])?;
            let n = tx.execute("DELETE FROM namespaces WHERE name = ?1", [&name])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn insert_key(&self, key: &KeyRow) -> Result<()> {
        let key = key.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO api_keys(id, hash, namespace, name, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key.id, key.hash, key.namespace, key.name, key.created_ms],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRow>> {
        self.with(|c| {
            let mut st = c.prepare_cached("SELECT id, hash, namespace, name, created_ms FROM api_keys ORDER BY created_ms, id")?;
            let rows = st.query_map([], |r| Ok(KeyRow { id: r.get(0)?, hash: r.get(1)?, namespace: r.get(2)?, name: r.get(3)?, created_ms: r.get(4)? }))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn delete_key(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.with(move |c| Ok(c.execute("DELETE FROM api_keys WHERE id = ?1", [id])? > 0)).await
    }

    async fn put_function(&self, row: &FunctionRow, expected: u64) -> Result<()> {
        let row = row.clone();
        let config = serde_json::to_string(&row.config).map_err(|e| StoreError::Corrupt(format!("config does not serialize: {e}")))?;
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            expect_revision(&tx, "functions", "function", &row.namespace, &row.name, expected)?;
            tx.execute(
                "INSERT INTO functions(namespace, name, revision, config, code_digest, code_size, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(namespace, name) DO UPDATE SET revision = excluded.revision,
                   config = excluded.config, code_digest = excluded.code_digest,
                   code_size = excluded.code_size, updated_ms = excluded.updated_ms",
                params![row.namespace, row.name, row.revision as i64, config, row.code_digest, row.code_size as i64, row.created_ms, row.updated_ms],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO revisions(namespace, name, revision, config, code_digest, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![row.namespace, row.name, row.revision as i64, config, row.code_digest, row.updated_ms],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn get_function(&self, namespace: &str, name: &str) -> Result<Option<FunctionRow>> {
        let (ns, name) = (namespace.to_string(), name.to_string());
        let raw = self
            .with(move |c| {
                Ok(c.query_row(&format!("SELECT {FUNCTION_COLUMNS} FROM functions WHERE namespace = ?1 AND name = ?2"), params![ns, name], function_from_row)
                    .optional()?)
            })
            .await?;
        raw.map(decode_function).transpose()
    }

    async fn list_functions(&self, namespace: Option<&str>) -> Result<Vec<FunctionRow>> {
        let ns = namespace.map(str::to_string);
        let raw = self
            .with(move |c| {
                let mut st =
                    c.prepare_cached(&format!("SELECT {FUNCTION_COLUMNS} FROM functions WHERE (?1 IS NULL OR namespace = ?1) ORDER BY namespace, name"))?;
                let rows = st.query_map([ns], function_from_row)?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await?;
        raw.into_iter().map(decode_function).collect()
    }

    async fn delete_function(&self, namespace: &str, name: &str) -> Result<bool> {
        let (ns, name) = (namespace.to_string(), name.to_string());
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute("DELETE FROM functions WHERE namespace = ?1 AND name = ?2", params![ns, name])?;
            tx.execute("DELETE FROM revisions WHERE namespace = ?1 AND name = ?2", params![ns, name])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_service(&self, row: &ServiceRow, expected: u64) -> Result<()> {
        let row = row.clone();
        let config = serde_json::to_string(&row.config).map_err(|e| StoreError::Corrupt(format!("service config does not serialize: {e}")))?;
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            expect_revision(&tx, "services", "service", &row.namespace, &row.name, expected)?;
            tx.execute(
                "INSERT INTO services(namespace, name, revision, config, image_id, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(namespace, name) DO UPDATE SET revision = excluded.revision,
                   config = excluded.config, image_id = excluded.image_id, updated_ms = excluded.updated_ms",
                params![row.namespace, row.name, row.revision as i64, config, row.image_id, row.created_ms, row.updated_ms],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn get_service(&self, namespace: &str, name: &str) -> Result<Option<ServiceRow>> {
        let (ns, name) = (namespace.to_string(), name.to_string());
        let raw = self
            .with(move |c| {
                Ok(c.query_row(&format!("SELECT {SERVICE_COLUMNS} FROM services WHERE namespace = ?1 AND name = ?2"), params![ns, name], service_from_row)
                    .optional()?)
            })
            .await?;
        raw.map(decode_service).transpose()
    }

    async fn list_services(&self, namespace: Option<&str>) -> Result<Vec<ServiceRow>> {
        let ns = namespace.map(str::to_string);
        let raw = self
            .with(move |c| {
                let mut st =
                    c.prepare_cached(&format!("SELECT {SERVICE_COLUMNS} FROM services WHERE (?1 IS NULL OR namespace = ?1) ORDER BY namespace, name"))?;
                let rows = st.query_map([ns], service_from_row)?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await?;
        raw.into_iter().map(decode_service).collect()
    }

    async fn delete_service(&self, namespace: &str, name: &str) -> Result<bool> {
        let (ns, name) = (namespace.to_string(), name.to_string());
        self.with(move |c| Ok(c.execute("DELETE FROM services WHERE namespace = ?1 AND name = ?2", params![ns, name])? > 0)).await
    }

    async fn put_trigger(&self, row: &TriggerRow) -> Result<()> {
        let row = row.clone();
        let config = serde_json::to_string(&row.config).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.with(move |c| {
            c.execute(
                "INSERT INTO triggers(namespace, name, config, created_ms, last_fired_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(namespace, name) DO UPDATE SET config = excluded.config",
                params![row.namespace, row.name, config, row.created_ms, row.last_fired_ms],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_triggers(&self, namespace: Option<&str>) -> Result<Vec<TriggerRow>> {
        let ns = namespace.map(str::to_string);
        let raw = self
            .with(move |c| {
                let mut st = c.prepare_cached(
                    "SELECT namespace, name, config, created_ms, last_fired_ms FROM triggers WHERE (?1 IS NULL OR namespace = ?1) ORDER BY namespace, name",
                )?;
                let rows = st.query_map(params![ns], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get::<_, Option<i64>>(4)?))
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await?;
        raw.into_iter()
            .map(|(namespace, name, config, created_ms, last_fired_ms)| {
                let config = serde_json::from_str(&config).map_err(|e| StoreError::Corrupt(format!("trigger {namespace}/{name}: {e}")))?;
                Ok(TriggerRow { namespace, name, config, created_ms, last_fired_ms })
            })
            .collect()
    }

    async fn delete_trigger(&self, namespace: &str, name: &str) -> Result<bool> {
        let (ns, name) = (namespace.to_string(), name.to_string());
        self.with(move |c| Ok(c.execute("DELETE FROM triggers WHERE namespace = ?1 AND name = ?2", params![ns, name])? > 0)).await
    }

    async fn set_trigger_fired(&self, namespace: &str, name: &str, fired_ms: i64) -> Result<()> {
        let (ns, name) = (namespace.to_string(), name.to_string());
        self.with(move |c| {
            c.execute("UPDATE triggers SET last_fired_ms = ?3 WHERE namespace = ?1 AND name = ?2", params![ns, name, fired_ms])?;
            Ok(())
        })
        .await
    }

    async fn put_code(&self, digest: &str, code: bytes::Bytes) -> Result<()> {
        let digest = digest.to_string();
        self.with(move |c| {
            c.execute("INSERT INTO code(digest, body) VALUES (?1, ?2) ON CONFLICT DO NOTHING", params![digest, &code[..]])?;
            Ok(())
        })
        .await
    }

    async fn get_code(&self, digest: &str) -> Result<Option<bytes::Bytes>> {
        let digest = digest.to_string();
        self.with(move |c| Ok(c.query_row("SELECT body FROM code WHERE digest = ?1", [digest], |r| r.get::<_, Vec<u8>>(0)).optional()?.map(bytes::Bytes::from)))
            .await
    }

    async fn put_sandbox(&self, sandbox: &hangar_api::sandboxes::Sandbox) -> Result<()> {
        let body = serde_json::to_string(sandbox).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (id, ns) = (sandbox.id.clone(), sandbox.namespace.clone());
        self.with(move |c| {
            c.execute(
                "INSERT INTO sandboxes(id, namespace, body) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                params![id, ns, body],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_sandboxes(&self) -> Result<Vec<hangar_api::sandboxes::Sandbox>> {
        let raw = self
            .with(move |c| {
                let mut st = c.prepare_cached("SELECT id, body FROM sandboxes ORDER BY id")?;
                let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await?;
        raw.into_iter().map(|(id, body)| serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("sandbox {id}: {e}")))).collect()
    }

    async fn get_sandbox(&self, id: &str) -> Result<Option<hangar_api::sandboxes::Sandbox>> {
        let key = id.to_string();
        let body = self.with(move |c| Ok(c.query_row("SELECT body FROM sandboxes WHERE id = ?1", [key], |r| r.get::<_, String>(0)).optional()?)).await?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| StoreError::Corrupt(format!("sandbox {id}: {e}")))).transpose()
    }

    async fn delete_sandbox(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.with(move |c| Ok(c.execute("DELETE FROM sandboxes WHERE id = ?1", params![id])? > 0)).await
    }
}

#[async_trait]
impl Ledger for SqliteStore {
    async fn insert_invocations(&self, batch: Vec<InvocationRecord>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let metering = self.metering;
        self.with(move |c| {
            let tx = c.transaction()?;
            let mut usage = hangar_store::HourlyUsage::default();
            {
                let mut st = tx.prepare_cached(
                    "INSERT OR IGNORE INTO invocations(id, namespace, function, revision, trigger, started_ms,
                       duration_us, billed_ms, memory_mb, start_kind, outcome, status, response_bytes, error,
                       logs, logs_truncated, parent_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                )?;
                for r in &batch {
                    let inserted = st.execute(params![
                        r.id,
                        r.namespace,
                        r.function,
                        r.revision as i64,
                        r.trigger.as_str(),
                        r.started_ms,
                        r.duration_us as i64,
                        r.billed_ms as i64,
                        r.memory_mb,
                        r.start.as_str(),
                        r.ending.outcome.as_str(),
                        r.ending.status,
                        r.ending.response_bytes as i64,
                        r.ending.error,
                        r.ending.logs,
                        r.ending.logs_truncated as i64,
                        r.parent_id
                    ])?;
                    // Metered once: a record written again (a retried batch) is not counted again.
                    if !metering || inserted == 0 {
                        continue;
                    }
                    usage.add(r);
                }
            }
            for d in usage.into_rows() {
                upsert_usage(&tx, &d)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn list_invocations(&self, f: InvocationFilter) -> Result<Vec<InvocationRecord>> {
        self.with(move |c| {
            let (cmp, order) = if f.ascending { (">", "ASC") } else { ("<", "DESC") };
            let logs = if f.with_logs { ", logs" } else { "" };
            let sql = format!(
                "SELECT {INVOCATION_COLUMNS}{logs} FROM invocations
                 WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR function = ?2)
                   AND (?3 IS NULL OR outcome = ?3) AND (?4 IS NULL OR started_ms >= ?4)
                   AND (?5 IS NULL OR started_ms < ?5) AND (?6 IS NULL OR id {cmp} ?6)
                   AND (?8 IS NULL OR parent_id = ?8)
                 ORDER BY id {order} LIMIT ?7"
            );
            let mut st = c.prepare_cached(&sql)?;
            let rows = st
                .query_map(params![f.namespace, f.function, f.outcome.map(|o| o.as_str()), f.since_ms, f.until_ms, f.cursor, f.limit, f.parent], |r| {
                    invocation_from_row(r, f.with_logs)
                })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn get_invocation(&self, namespace: Option<&str>, id: &str) -> Result<Option<InvocationRecord>> {
        let (ns, id) = (namespace.map(str::to_string), id.to_string());
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {INVOCATION_COLUMNS}, logs FROM invocations WHERE id = ?1 AND (?2 IS NULL OR namespace = ?2)"),
                params![id, ns],
                |r| invocation_from_row(r, true),
            )
            .optional()?)
        })
        .await
    }

    async fn add_usage(&self, deltas: Vec<hangar_api::cost::UsageDelta>, marks: Option<Vec<hangar_api::cost::UsageMark>>) -> Result<()> {
        if deltas.is_empty() && marks.is_none() {
            return Ok(());
        }
        self.with(move |c| {
            let tx = c.transaction()?;
            for d in &deltas {
                upsert_usage(&tx, d)?;
            }
            if let Some(marks) = marks {
                tx.execute("DELETE FROM usage_marks WHERE id NOT IN (SELECT id FROM sandboxes)", [])?;
                let mut st = tx.prepare_cached(
                    "INSERT INTO usage_marks(id, running_ms, paused_ms, standby_ms, standby_byte_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(id) DO UPDATE SET running_ms = excluded.running_ms, paused_ms = excluded.paused_ms,
                       standby_ms = excluded.standby_ms, standby_byte_ms = excluded.standby_byte_ms",
                )?;
                for m in &marks {
                    st.execute(params![m.id, m.running_ms as i64, m.paused_ms as i64, m.standby_ms as i64, m.standby_byte_ms.to_string()])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn usage_marks(&self) -> Result<Vec<hangar_api::cost::UsageMark>> {
        self.with(move |c| {
            let mut st = c.prepare_cached("SELECT id, running_ms, paused_ms, standby_ms, standby_byte_ms FROM usage_marks")?;
            let rows = st.query_map([], |r| {
                Ok(hangar_api::cost::UsageMark {
                    id: r.get(0)?,
                    running_ms: r.get::<_, i64>(1)?.max(0) as u64,
                    paused_ms: r.get::<_, i64>(2)?.max(0) as u64,
                    standby_ms: r.get::<_, i64>(3)?.max(0) as u64,
                    standby_byte_ms: r.get::<_, String>(4)?.parse().unwrap_or(0),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn list_usage(&self, f: UsageFilter) -> Result<Vec<hangar_api::cost::UsageDelta>> {
        self.with(move |c| {
            let period = if f.per_day { "(hour_ms / 86400000) * 86400000" } else { "hour_ms" };
            let mut st = c.prepare_cached(&format!(
                "SELECT namespace, kind, name, {period} AS p, SUM(requests), SUM(errors), SUM(cold_starts), SUM(billed_ms),
                   SUM(mb_ms), SUM(vcpu_milli_ms), SUM(running_ms), SUM(paused_ms), SUM(standby_ms), SUM(standby_byte_ms)
                 FROM usage
                 WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR name = ?3)
                   AND (?4 IS NULL OR hour_ms >= ?4) AND (?5 IS NULL OR hour_ms < ?5)
                 GROUP BY namespace, kind, name, p
                 ORDER BY p, namespace, kind, name"
            ))?;
            let rows = st.query_map(params![f.namespace, f.kind.map(|k| k.as_str()), f.name, f.since_ms, f.until_ms], |r| {
                let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                Ok(hangar_api::cost::UsageDelta {
                    namespace: r.get(0)?,
                    kind: r
                        .get::<_, String>(1)?
                        .parse()
                        .map_err(|e: String| rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into()))?,
                    name: r.get(2)?,
                    hour_ms: r.get(3)?,
                    requests: n(4)?,
                    errors: n(5)?,
                    cold_starts: n(6)?,
                    billed_ms: n(7)?,
                    mb_ms: n(8)?,
                    vcpu_milli_ms: n(9)?,
                    running_ms: n(10)?,
                    paused_ms: n(11)?,
                    standby_ms: n(12)?,
                    standby_byte_ms: n(13)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn add_mode_switch(&self, namespace: &str, name: &str, at_ms: i64, switch: &hangar_api::ModeSwitch) -> Result<()> {
        let (ns, name, body) = (namespace.to_string(), name.to_string(), serde_json::to_string(switch).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        self.with(move |c| {
            c.execute("INSERT INTO mode_switches(namespace, name, at_ms, body) VALUES (?1, ?2, ?3, ?4)", params![ns, name, at_ms, body])?;
            Ok(())
        })
        .await
    }

    async fn list_mode_switches(&self, namespace: &str, name: &str) -> Result<Vec<hangar_api::ModeSwitch>> {
        let (ns, name) = (namespace.to_string(), name.to_string());
        self.with(move |c| {
            let mut st = c.prepare_cached("SELECT body FROM mode_switches WHERE namespace = ?1 AND name = ?2 ORDER BY at_ms, rowid")?;
            let rows = st.query_map(params![ns, name], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
            rows.iter().map(|b| serde_json::from_str(b).map_err(|e| StoreError::Corrupt(format!("a mode switch: {e}")).into())).collect()
        })
        .await
    }

    async fn prune_usage(&self, before_ms: i64) -> Result<u64> {
        self.with(move |c| Ok(c.execute("DELETE FROM usage WHERE hour_ms < ?1", params![before_ms])? as u64)).await
    }

    async fn prune_invocations(&self, before_ms: i64, most: u32) -> Result<u64> {
        self.with(move |c| {
            // Ids are time-ordered (UUIDv7): the oldest first, by the primary key.
            let n = c.execute(
                "DELETE FROM invocations WHERE id IN (SELECT id FROM invocations WHERE started_ms < ?1 ORDER BY id LIMIT ?2)",
                params![before_ms, i64::from(most)],
            )?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl Queue for SqliteStore {
    async fn save_async(&self, owner: &str, new: Vec<AsyncRecord>, changed: Vec<AsyncRecord>) -> Result<Vec<(String, bool)>> {
        if new.is_empty() && changed.is_empty() {
            return Ok(Vec::new());
        }
        let owner = owner.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            let mut held = Vec::with_capacity(new.len());
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO async_invocations(id, namespace, target, content_type, idempotency_key, state,
                       attempts, accepted_ms, next_ms, finished_ms, error, destination_id, kind, path, payload, owner, trace)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
                     ON CONFLICT DO NOTHING",
                )?;
                let mut by_key =
                    tx.prepare_cached("SELECT id FROM async_invocations WHERE namespace = ?1 AND kind = ?2 AND target = ?3 AND idempotency_key = ?4")?;
                for a in &new {
                    let n = insert.execute(params![
                        a.id,
                        a.namespace,
                        a.target,
                        a.content_type,
                        a.idempotency_key,
                        a.state.as_str(),
                        attempts_json(a),
                        a.accepted_ms,
                        a.next_ms,
                        a.finished_ms,
                        a.error,
                        a.destination_id,
                        a.kind.as_str(),
                        a.path,
                        a.payload,
                        owner,
                        a.trace
                    ])?;
                    if n == 1 {
                        held.push((a.id.clone(), false));
                    } else {
                        let id: Option<String> =
                            by_key.query_row(params![a.namespace, a.kind.as_str(), a.target, a.idempotency_key], |r| r.get(0)).optional()?;
                        let id = id.ok_or_else(|| StoreError::Conflict(format!("asynchronous invocation `{}` exists already", a.id)))?;
                        held.push((id, true));
                    }
                }
                let mut update = tx.prepare_cached(
                    "UPDATE async_invocations SET state = ?2, attempts = ?3, next_ms = ?4, finished_ms = ?5, error = ?6,
                       destination_id = ?7 WHERE id = ?1 AND (owner = ?8 OR owner IS NULL)",
                )?;
                for a in &changed {
                    update.execute(params![a.id, a.state.as_str(), attempts_json(a), a.next_ms, a.finished_ms, a.error, a.destination_id, owner])?;
                }
            }
            tx.commit()?;
            Ok(held)
        })
        .await
    }

    async fn unfinished_async(&self, owner: &str) -> Result<Vec<AsyncRecord>> {
        let owner = owner.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute("UPDATE async_invocations SET owner = ?1 WHERE owner IS NULL AND state IN ('queued', 'running')", [&owner])?;
            let rows = {
                let mut st = tx.prepare_cached(&format!(
                    "SELECT {ASYNC_COLUMNS}, payload FROM async_invocations WHERE state IN ('queued', 'running') AND owner = ?1 ORDER BY id"
                ))?;
                st.query_map([&owner], |r| async_from_row(r, true))?.collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.commit()?;
            Ok(rows)
        })
        .await
    }

    async fn taken_over(&self, owner: &str, ids: Vec<String>) -> Result<Vec<String>> {
        let owner = owner.to_string();
        self.with(move |c| {
            let mut st = c.prepare_cached("SELECT owner FROM async_invocations WHERE id = ?1")?;
            let mut out = Vec::new();
            for id in ids {
                let holder: Option<Option<String>> = st.query_row([&id], |r| r.get(0)).optional()?;
                if let Some(Some(h)) = holder
                    && h != owner
                {
                    out.push(id);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn adopt_async(&self, lost: &str, to: &str) -> Result<Vec<AsyncRecord>> {
        let (lost, to) = (lost.to_string(), to.to_string());
        self.with(move |c| {
            let tx = c.transaction()?;
            let ids: Vec<String> = {
                let mut st = tx.prepare_cached("SELECT id FROM async_invocations WHERE owner = ?1 AND state IN ('queued', 'running') ORDER BY id")?;
                st.query_map([&lost], |r| r.get(0))?.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                tx.execute("UPDATE async_invocations SET owner = ?2 WHERE id = ?1", params![id, to])?;
                out.push(tx.query_row(&format!("SELECT {ASYNC_COLUMNS}, payload FROM async_invocations WHERE id = ?1"), [id], |r| async_from_row(r, true))?);
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn get_async(&self, namespace: Option<&str>, id: &str) -> Result<Option<AsyncRecord>> {
        let (ns, id) = (namespace.map(str::to_string), id.to_string());
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {ASYNC_COLUMNS}, payload FROM async_invocations WHERE id = ?1 AND (?2 IS NULL OR namespace = ?2)"),
                params![id, ns],
                |r| async_from_row(r, true),
            )
            .optional()?)
        })
        .await
    }

    async fn list_async(&self, f: AsyncFilter) -> Result<Vec<AsyncRecord>> {
        self.with(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ASYNC_COLUMNS} FROM async_invocations
                 WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR target = ?2) AND (?3 IS NULL OR state = ?3)
                   AND (?4 IS NULL OR id < ?4)
                 ORDER BY id DESC LIMIT ?5"
            ))?;
            let rows = st.query_map(params![f.namespace, f.target, f.state.map(|s| s.as_str()), f.cursor, f.limit], |r| async_from_row(r, false))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

const ASYNC_COLUMNS: &str =
    "id, namespace, target, content_type, idempotency_key, state, attempts, accepted_ms, next_ms, finished_ms, error, destination_id, kind, path, trace";

/// Reads [`ASYNC_COLUMNS`], then `payload` when `with_payload`.
fn async_from_row(r: &Row<'_>, with_payload: bool) -> rusqlite::Result<AsyncRecord> {
    let bad = |i: usize, e: String| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into());
    Ok(AsyncRecord {
        id: r.get(0)?,
        namespace: r.get(1)?,
        target: r.get(2)?,
        content_type: r.get(3)?,
        idempotency_key: r.get(4)?,
        state: r.get::<_, String>(5)?.parse().map_err(|e| bad(5, e))?,
        attempts: serde_json::from_str(&r.get::<_, String>(6)?).map_err(|e| bad(6, e.to_string()))?,
        accepted_ms: r.get(7)?,
        next_ms: r.get(8)?,
        finished_ms: r.get(9)?,
        error: r.get(10)?,
        destination_id: r.get(11)?,
        kind: r.get::<_, String>(12)?.parse().map_err(|e| bad(12, e))?,
        path: r.get(13)?,
        trace: r.get(14)?,
        payload: if with_payload { r.get(15)? } else { Vec::new() },
    })
}

fn attempts_json(a: &AsyncRecord) -> String {
    serde_json::to_string(&a.attempts).unwrap_or_else(|_| "[]".into())
}

const SERVICE_COLUMNS: &str = "namespace, name, revision, config, image_id, created_ms, updated_ms";

type RawService = (String, String, i64, String, String, i64, i64);

fn service_from_row(r: &Row<'_>) -> rusqlite::Result<RawService> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
}

fn decode_service((namespace, name, revision, config, image_id, created_ms, updated_ms): RawService) -> Result<ServiceRow> {
    let config = serde_json::from_str(&config).map_err(|e| StoreError::Corrupt(format!("service {namespace}/{name}: config: {e}")))?;
    Ok(ServiceRow { namespace, name, revision: revision as u64, config, image_id, created_ms, updated_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        hangar_store::conformance::run(|| async { Arc::new(SqliteStore::in_memory().expect("an in-memory store")) as Arc<dyn hangar_store::Store> }).await;
    }
}
