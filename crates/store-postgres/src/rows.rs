//! Rows as PostgreSQL returns them, decoded into the store's types; a value of an unexpected
//! type is a corrupt row, never a panic.

use hangar_store::{AsyncRecord, FunctionRow, InvocationRecord, NamespaceRow, Result, ServiceRow, StoreError, TriggerRow};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

pub const FUNCTION_COLUMNS: &str = "namespace, name, revision, config, code_digest, code_size, created_ms, updated_ms";
pub const SERVICE_COLUMNS: &str = "namespace, name, revision, config, image_id, created_ms, updated_ms";
pub const INVOCATION_COLUMNS: &str = "id, namespace, function, revision, trigger, started_ms, \
    duration_us, billed_ms, memory_mb, start_kind, outcome, status, response_bytes, error, \
    logs_truncated, parent_id";
pub const ASYNC_COLUMNS: &str =
    "id, namespace, target, content_type, idempotency_key, state, attempts, accepted_ms, next_ms, finished_ms, error, destination_id, kind, path, trace";

/// Column `i` of `row`.
pub fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i).map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

fn parsed<T: std::str::FromStr<Err = String>>(row: &Row, i: usize) -> Result<T> {
    col::<String>(row, i)?.parse().map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

fn unsigned(row: &Row, i: usize) -> Result<u64> {
    Ok(col::<i64>(row, i)?.max(0) as u64)
}

pub fn namespace(r: &Row) -> Result<NamespaceRow> {
    Ok(NamespaceRow { name: col(r, 0)?, created_ms: col(r, 1)?, max_concurrency: col::<Option<i64>>(r, 2)?.map(|v| v.clamp(0, u32::MAX as i64) as u32) })
}

pub fn function(r: &Row) -> Result<FunctionRow> {
    let (namespace, name): (String, String) = (col(r, 0)?, col(r, 1)?);
    let config = serde_json::from_str(&col::<String>(r, 3)?).map_err(|e| StoreError::Corrupt(format!("config of function {namespace}/{name}: {e}")))?;
    Ok(FunctionRow {
        revision: unsigned(r, 2)?,
        config,
        code_digest: col(r, 4)?,
        code_size: unsigned(r, 5)?,
        created_ms: col(r, 6)?,
        updated_ms: col(r, 7)?,
        namespace,
        name,
    })
}

pub fn service(r: &Row) -> Result<ServiceRow> {
    let (namespace, name): (String, String) = (col(r, 0)?, col(r, 1)?);
    let config = serde_json::from_str(&col::<String>(r, 3)?).map_err(|e| StoreError::Corrupt(format!("service {namespace}/{name}: config: {e}")))?;
    Ok(ServiceRow { revision: unsigned(r, 2)?, config, image_id: col(r, 4)?, created_ms: col(r, 5)?, updated_ms: col(r, 6)?, namespace, name })
}

pub fn trigger(r: &Row) -> Result<TriggerRow> {
    let (namespace, name): (String, String) = (col(r, 0)?, col(r, 1)?);
    let config = serde_json::from_str(&col::<String>(r, 2)?).map_err(|e| StoreError::Corrupt(format!("trigger {namespace}/{name}: {e}")))?;
    Ok(TriggerRow { config, created_ms: col(r, 3)?, last_fired_ms: col(r, 4)?, namespace, name })
}

/// Reads [`INVOCATION_COLUMNS`], then `logs` when `with_logs`.
pub fn invocation(r: &Row, with_logs: bool) -> Result<InvocationRecord> {
    Ok(InvocationRecord {
        id: col(r, 0)?,
        namespace: col(r, 1)?,
        function: col(r, 2)?,
        revision: unsigned(r, 3)?,
        trigger: parsed(r, 4)?,
        started_ms: col(r, 5)?,
        duration_us: unsigned(r, 6)?,
        billed_ms: unsigned(r, 7)?,
        memory_mb: unsigned(r, 8)?.min(u32::MAX as u64) as u32,
        start: parsed(r, 9)?,
        ending: hangar_api::Ending {
            outcome: parsed(r, 10)?,
            status: unsigned(r, 11)?.min(u16::MAX as u64) as u16,
            response_bytes: unsigned(r, 12)?,
            error: col(r, 13)?,
            logs_truncated: col(r, 14)?,
            logs: if with_logs { col(r, 16)? } else { String::new() },
        },
        parent_id: col(r, 15)?,
    })
}

/// Reads [`ASYNC_COLUMNS`], then `payload` when `with_payload`.
pub fn async_record(r: &Row, with_payload: bool) -> Result<AsyncRecord> {
    Ok(AsyncRecord {
        id: col(r, 0)?,
        namespace: col(r, 1)?,
        target: col(r, 2)?,
        content_type: col(r, 3)?,
        idempotency_key: col(r, 4)?,
        state: parsed(r, 5)?,
        attempts: serde_json::from_str(&col::<String>(r, 6)?).map_err(|e| StoreError::Corrupt(format!("attempts: {e}")))?,
        accepted_ms: col(r, 7)?,
        next_ms: col(r, 8)?,
        finished_ms: col(r, 9)?,
        error: col(r, 10)?,
        destination_id: col(r, 11)?,
        kind: parsed(r, 12)?,
        path: col(r, 13)?,
        trace: col(r, 14)?,
        payload: if with_payload { col(r, 15)? } else { Vec::new() },
    })
}

pub fn attempts_json(a: &AsyncRecord) -> String {
    serde_json::to_string(&a.attempts).unwrap_or_else(|_| "[]".into())
}

pub fn usage(r: &Row) -> Result<hangar_api::cost::UsageDelta> {
    Ok(hangar_api::cost::UsageDelta {
        namespace: col(r, 0)?,
        kind: parsed(r, 1)?,
        name: col(r, 2)?,
        hour_ms: col(r, 3)?,
        requests: unsigned(r, 4)?,
        errors: unsigned(r, 5)?,
        cold_starts: unsigned(r, 6)?,
        billed_ms: unsigned(r, 7)?,
        mb_ms: unsigned(r, 8)?,
        vcpu_milli_ms: unsigned(r, 9)?,
        running_ms: unsigned(r, 10)?,
        paused_ms: unsigned(r, 11)?,
        standby_ms: unsigned(r, 12)?,
        standby_byte_ms: unsigned(r, 13)?,
    })
}
