//! The WebAssembly runtime: `wasi:http/proxy` components on wasmtime, a fresh instance per request.
//!
//! Code is compiled once at deploy and the native artifact cached on disk by content digest
//! (a restart deserializes it, no recompilation). A loaded revision holds a `ProxyPre`
//! (pre-linked component) and each invocation instantiates it in the pooling allocator. Limits
//! are enforced per store: memory through a [`wasmtime::ResourceLimiter`], time through epoch
//! interruption plus a wall-clock deadline, outbound HTTP through an allow-list hook, and there
//! is no filesystem and no socket access at all.
//!
//! Design decisions:
//!
//! *Instance per request for WASM.* A fresh instance from `InstancePre` in the pooling allocator
//! costs microseconds and gives perfect isolation between requests; "cold" therefore means "the
//! revision had to be loaded from the artifact cache", and code is loaded lazily so that a
//! thousand deployed functions cost little memory until called.
//!
//! *Pool slots are reset in place.* Freed slots are rewritten (only the dirtied pages, found with
//! `PAGEMAP_SCAN` on Linux ≥ 6.7; up to 2 MiB per memory and table) instead of `madvise`d away, so
//! the next instance takes no page faults and no cross-core TLB shootdown; that was the top of the
//! profile and is most of the throughput difference to `wasmtime serve` (BENCHMARKS.md). State
//! never survives: `tests/limits.rs` checks that every request sees fresh globals and heap.

mod artifacts;
mod guest;
mod logs;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hangar_api::RuntimeKind;
use hangar_runtime::{CodeInfo, Loaded, RevisionSpec, Runtime, RuntimeError};
use prometheus_client::metrics::counter::Counter;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use guest::WasmFunction;

/// How often the epoch advances; timeouts are enforced to this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of each linear memory and table kept resident (reset in place) when a pool slot is
/// reused; beyond this, pages are returned to the kernel.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// Sizing of the instance pool: how many instances may run at once.
#[derive(Debug, Clone)]
pub struct PoolSize {
    /// Concurrent component instances across all functions.
    pub instances: u32,
    /// Largest linear memory any function may be configured with, in bytes.
    pub max_memory_bytes: usize,
}

impl Default for PoolSize {
    fn default() -> Self {
        PoolSize { instances: 1000, max_memory_bytes: 4 << 30 }
    }
}

/// Counters the runtime keeps, registered by whoever owns the metrics registry.
#[derive(Debug, Clone, Default)]
pub struct WasmCounters {
    /// Components compiled to native code (deploys of new code).
    pub compilations: Counter,
    /// Revisions loaded from the on-disk artifact cache.
    pub cache_loads: Counter,
}

/// The wasmtime-based [`Runtime`].
pub struct WasmRuntime {
    engine: Engine,
    linker: Arc<Linker<guest::GuestState>>,
    artifacts: artifacts::Artifacts,
    counters: WasmCounters,
    stop_ticker: Arc<AtomicBool>,
}

impl WasmRuntime {
    /// Creates the engine and the artifact directory under `dir`, and starts the epoch ticker.
    pub fn new(dir: PathBuf, pool: PoolSize, counters: WasmCounters) -> Result<Self, RuntimeError> {
        let mut pooling = PoolingAllocationConfig::default();
        // A component typically has a few core instances (the adapter, libc, the program).
        pooling
            .total_component_instances(pool.instances)
            .total_core_instances(pool.instances * 4)
            .total_memories(pool.instances * 2)
            .total_tables(pool.instances * 4)
            .total_stacks(pool.instances)
            .max_core_instances_per_component(32)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .max_memories_per_module(2)
            .max_tables_per_module(4)
            .table_elements(100_000)
            .max_memory_size(pool.max_memory_bytes)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20)
            // Reset a used slot by rewriting the pages the instance dirtied (found with
            // PAGEMAP_SCAN where the kernel has it) instead of `madvise`: no page faults and no
            // TLB shootdowns across cores on the next instance, which dominated the profile.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES);
        let mut config = Config::new();
        config.epoch_interruption(true).wasm_component_model(true).allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Internal(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|_| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
            .map_err(|e| RuntimeError::Internal(format!("linking WASI: {e:#}")))?;
        let artifacts = artifacts::Artifacts::open(dir, &engine)?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            std::thread::Builder::new()
                .name("hangar-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(RuntimeError::Storage)?;
        }
        Ok(WasmRuntime { engine, linker: Arc::new(linker), artifacts, counters, stop_ticker })
    }
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

#[async_trait]
impl Runtime for WasmRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Wasm
    }

    async fn prepare(&self, code: Bytes) -> Result<CodeInfo, RuntimeError> {
        artifacts::check_header(&code)?;
        let digest = artifacts::digest(&code);
        let info = CodeInfo { digest: digest.clone(), size: code.len() as u64 };
        if self.artifacts.has_compiled(&digest) {
            return Ok(info);
        }
        let (engine, linker, artifacts) = (self.engine.clone(), self.linker.clone(), self.artifacts.clone());
        let counters = self.counters.clone();
        tokio::task::spawn_blocking(move || {
            let component =
                wasmtime::component::Component::new(&engine, &code).map_err(|e| RuntimeError::InvalidCode(format!("the component does not compile: {e:#}")))?;
            guest::check_proxy(&linker, &component)?;
            counters.compilations.inc();
            artifacts.store(&digest, &code, &component)
        })
        .await
        .map_err(|e| RuntimeError::Internal(format!("compile task: {e}")))??;
        Ok(info)
    }

    async fn load(&self, spec: &RevisionSpec) -> Result<Arc<dyn Loaded>, RuntimeError> {
        Ok(Arc::new(self.load_function(spec).await?))
    }
}

impl WasmRuntime {
    /// [`Runtime::load`] with the concrete type, for measurements of the instance path.
    pub async fn load_function(&self, spec: &RevisionSpec) -> Result<WasmFunction, RuntimeError> {
        let (engine, linker, artifacts) = (self.engine.clone(), self.linker.clone(), self.artifacts.clone());
        let digest = spec.code_digest.clone();
        let counters = self.counters.clone();
        let pre = tokio::task::spawn_blocking(move || {
            let (component, compiled) = artifacts.load(&engine, &digest)?;
            if compiled {
                counters.compilations.inc();
            } else {
                counters.cache_loads.inc();
            }
            guest::check_proxy(&linker, &component)
        })
        .await
        .map_err(|e| RuntimeError::Internal(format!("load task: {e}")))??;
        Ok(WasmFunction::new(pre, spec.limits.clone()))
    }
}
