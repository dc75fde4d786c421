//! Named network namespaces that Hangar prepares for a jail: only loopback is up, and Hangar
//! can bind listeners inside (e.g. the Lambda Runtime API), which the jailed process reaches
//! at `127.0.0.1` while nothing of the host's network is reachable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::JailError;

/// A network namespace under `/var/run/netns/<name>`; delete it with [`NetNs::delete`].
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

/// One iproute2 command (its words are checked names, never spaces), after `options`.
async fn ip(options: &[&str], command: &[&str]) -> Result<(), JailError> {
    crate::netcmd::ip(options, &command.join(" ")).await
}

impl NetNs {
    /// Creates the namespace and brings its loopback up.
    pub async fn create(name: &str) -> Result<NetNs, JailError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
            return Err(JailError::Invalid(format!("network namespace name `{name}` may only hold letters, digits, `_`, `.`, `-`")));
        }
        ip(&[], &["netns", "add", name]).await?;
        let ns = NetNs { name: name.to_string(), path: Path::new("/var/run/netns").join(name) };
        if let Err(e) = ip(&["-n", name], &["link", "set", "lo", "up"]).await {
            ns.delete().await;
            return Err(e);
        }
        Ok(ns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Binds a TCP listener inside the namespace. A short-lived thread enters the namespace to
    /// bind; the socket stays there after the thread ends, while Hangar keeps serving it.
    pub fn bind_tcp(&self, addr: SocketAddr) -> Result<std::net::TcpListener, JailError> {
        let path = self.path.clone();
        std::thread::spawn(move || -> Result<std::net::TcpListener, JailError> {
            let file = std::fs::File::open(&path)?;
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| JailError::Network(format!("entering the network namespace {}: {e}", path.display())))?;
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .join()
        .map_err(|_| JailError::Network("the thread binding inside a network namespace panicked".into()))?
    }

    /// Removes the namespace.
    pub async fn delete(self) {
        if let Err(e) = ip(&[], &["netns", "delete", &self.name]).await {
            tracing::warn!("removing network namespace {}: {e}", self.name);
        }
    }
}
