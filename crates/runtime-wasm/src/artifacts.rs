//! The on-disk code and native-artifact cache, keyed by the SHA-256 of the uploaded bytes.
//!
//! `code/<hex>.wasm` keeps what the user uploaded; `compiled/<hex>-<engine>.cwasm` keeps what
//! wasmtime compiled from it for this engine configuration. A different wasmtime version or
//! configuration gets a different `<engine>` tag and recompiles from the kept code.
#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hangar_runtime::RuntimeError;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// `sha256:<hex>` of the bytes.
pub fn digest(code: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(code)))
}

/// Rejects bytes that are not a WebAssembly component, with a message that says what they are.
pub fn check_header(code: &[u8]) -> Result<(), RuntimeError> {
    if code.len() < 8 || &code[..4] != b"\0asm" {
        return Err(RuntimeError::InvalidCode(
            "the code is not WebAssembly (no `\\0asm` header); upload a .wasm component built for \
             the wasi:http/proxy world, e.g. `cargo build --target wasm32-wasip2`"
                .into(),
        ));
    }
    if code[4..8] == [1, 0, 0, 0] {
        return Err(RuntimeError::InvalidCode(
            "the code is a core WebAssembly module, not a component; build it for \
             `wasm32-wasip2` or wrap it with `wasm-tools component new`"
                .into(),
        ));
    }
    Ok(())
}

#[derive(Clone)]
pub struct Artifacts {
    inner: Arc<Dirs>,
}

struct Dirs {
    code: PathBuf,
    compiled: PathBuf,
    engine_tag: String,
}

impl Artifacts {
    pub fn open(dir: PathBuf, engine: &Engine) -> Result<Self, RuntimeError> {
        let code = dir.join("code");
        let compiled = dir.join("compiled");
        std::fs::create_dir_all(&code)?;
        std::fs::create_dir_all(&compiled)?;
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_tag = format!("{:016x}", h.finish());
        Ok(Artifacts { inner: Arc::new(Dirs { code, compiled, engine_tag }) })
    }

    fn hex(digest: &str) -> Result<&str, RuntimeError> {
        digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| RuntimeError::Internal(format!("malformed code digest `{digest}`")))
    }

    fn code_path(&self, digest: &str) -> Result<PathBuf, RuntimeError> {
        Ok(self.inner.code.join(format!("{}.wasm", Self::hex(digest)?)))
    }

    fn compiled_path(&self, digest: &str) -> Result<PathBuf, RuntimeError> {
        Ok(self.inner.compiled.join(format!("{}-{}.cwasm", Self::hex(digest)?, self.inner.engine_tag)))
    }

    pub fn has_compiled(&self, digest: &str) -> bool {
        self.compiled_path(digest).map(|p| p.exists()).unwrap_or(false) && self.code_path(digest).map(|p| p.exists()).unwrap_or(false)
    }

    /// Writes the uploaded code and the compiled artifact, each atomically.
    pub fn store(&self, digest: &str, code: &[u8], component: &Component) -> Result<(), RuntimeError> {
        let native = component.serialize().map_err(|e| RuntimeError::Internal(format!("serializing compiled code: {e:#}")))?;
        write_atomic(&self.code_path(digest)?, code)?;
        write_atomic(&self.compiled_path(digest)?, &native)?;
        Ok(())
    }

    /// Loads the compiled artifact; recompiles from the kept code when it is missing or was
    /// made by another engine. Returns whether it compiled.
    pub fn load(&self, engine: &Engine, digest: &str) -> Result<(Component, bool), RuntimeError> {
        let compiled = self.compiled_path(digest)?;
        if compiled.exists() {
            // SAFETY: the artifact was written by `store` above, from a component compiled by an
            // engine with the same compatibility hash (it is in the file name), into the data
            // dir that only Hangar writes. wasmtime still checks the header and version.
            match unsafe { Component::deserialize_file(engine, &compiled) } {
                Ok(c) => return Ok((c, false)),
                Err(e) => tracing::warn!(path = %compiled.display(), "cached artifact unusable, recompiling: {e:#}"),
            }
        }
        let code = match std::fs::read(self.code_path(digest)?) {
            Ok(code) => code,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RuntimeError::MissingCode(digest.to_string())),
            Err(e) => return Err(RuntimeError::Internal(format!("reading code {digest}: {e}"))),
        };
        let component = Component::new(engine, &code).map_err(|e| RuntimeError::InvalidCode(format!("the component does not compile: {e:#}")))?;
        self.store(digest, &code, &component)?;
        Ok((component, true))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
