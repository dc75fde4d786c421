//! The AWS Lambda contract, as Hangar serves it to process functions: the Runtime API
//! ([`runtime_api`]) that a bootstrap polls for invocations, and the event shapes
//! ([`url_event`]) that turn a function-URL request into Lambda's payload v2.0 and a handler's
//! result back into an HTTP response, and [`mapping`]: one call of a process function as
//! Lambda code sees it. Unmodified Lambda runtime clients (`lambda_runtime`,
//! `awslambdaric`, Hangar's own shims) talk to this.
#![forbid(unsafe_code)]

pub mod mapping;
pub mod runtime_api;
pub mod url_event;

/// Largest response a function may return, like Lambda's synchronous limit (6 MiB).
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// Lambda's error body `{"errorMessage","errorType","stackTrace"}`, without a stack trace: for
/// errors the platform reports on a function's behalf (init timeouts, runtimes that exit).
pub fn error_body(error_type: &str, message: impl Into<String>) -> serde_json::Value {
    serde_json::json!({"errorMessage": message.into(), "errorType": error_type, "stackTrace": []})
}

/// Hangar's Python runtime shim (stdlib only): run as `python3 -c PYTHON_SHIM` or from a file.
pub const PYTHON_SHIM: &str = include_str!("../shims/bootstrap.py");
/// Hangar's zygote (stdlib only): imports a Python handler once, then forks each instance
/// into its own namespaces; or execs another runtime per instance. Runs beside [`PYTHON_SHIM`]
/// saved as `bootstrap.py`.
pub const ZYGOTE: &str = include_str!("../shims/zygote.py");
/// Hangar's Node.js runtime shim (no dependencies): run with `node`.
pub const NODE_SHIM: &str = include_str!("../shims/bootstrap.js");
