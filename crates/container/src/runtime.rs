//! The OCI runtimes Hangar drives, behind one trait: [`Runc`] (services, process functions)
//! and [`Runsc`] (gVisor: sandboxes, services that ask for it). Every call of a runtime's
//! binary is built here ([`ContainerRuntime::command`]: the binary, its state root, its global
//! flags), so what a server owns is always asked about and removed under the same root.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;

/// An OCI runtime's command line, with this server's state root.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + std::fmt::Debug {
    /// `runc` or `runsc`, as logs and errors name it.
    fn name(&self) -> &'static str;
    /// Where the runtime keeps the state of this server's containers.
    fn root(&self) -> &Path;
    /// The binary and its global flags (`--root`, ...), for a caller that must wrap the call
    /// in another command (`nsenter`, `unshare`, `setsid`).
    fn argv(&self) -> Vec<OsString>;

    /// A command running the binary with its global flags; its stdin is null.
    fn command(&self) -> tokio::process::Command {
        let argv = self.argv();
        let mut c = tokio::process::Command::new(&argv[0]);
        c.args(&argv[1..]).stdin(Stdio::null());
        c
    }

    /// The ids of the containers under the state root (none when the root does not exist:
    /// asking would only make it again).
    async fn list(&self) -> Vec<String> {
        if !self.root().exists() {
            return Vec::new();
        }
        let Ok(out) = self.command().args(["list", "-q"]).output().await else { return Vec::new() };
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
    }

    /// Kills every process of a container and deletes it (whatever its state).
    async fn remove(&self, id: &str) {
        let _ = self.command().args(["kill", "--all", id, "KILL"]).output().await;
        let _ = self.command().args(["delete", "--force", id]).output().await;
    }

    /// Deletes a container, killing it if it runs.
    async fn delete(&self, id: &str) {
        let _ = self.command().args(["delete", "--force", id]).output().await;
    }

    /// Removes every container under the state root, all at once (recovery after a crash).
    async fn remove_all(&self) {
        futures::future::join_all(self.list().await.iter().map(|id| self.remove(id))).await;
    }
}

/// `runc`, found on the `PATH`.
#[derive(Debug, Clone)]
pub struct Runc {
    root: PathBuf,
}

impl Runc {
    pub fn new(root: impl Into<PathBuf>) -> Runc {
        Runc { root: root.into() }
    }
}

impl ContainerRuntime for Runc {
    fn name(&self) -> &'static str {
        "runc"
    }
    fn root(&self) -> &Path {
        &self.root
    }
    fn argv(&self) -> Vec<OsString> {
        vec!["runc".into(), "--root".into(), self.root.clone().into()]
    }
}

/// gVisor's `runsc` on the ptrace platform (these machines cannot use KVM).
#[derive(Debug, Clone)]
pub struct Runsc {
    program: PathBuf,
    root: PathBuf,
}

impl Runsc {
    pub fn new(program: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Runsc {
        Runsc { program: program.into(), root: root.into() }
    }

    /// Where `runsc` is on the `PATH`, if it is.
    pub fn find() -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|d| d.join("runsc")).find(|p| p.is_file())
    }
}

impl ContainerRuntime for Runsc {
    fn name(&self) -> &'static str {
        "runsc"
    }
    fn root(&self) -> &Path {
        &self.root
    }
    fn argv(&self) -> Vec<OsString> {
        vec![self.program.clone().into(), "--root".into(), self.root.clone().into(), "--platform=ptrace".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_carry_the_state_root_and_a_missing_root_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let runc = Runc::new(dir.path().join("runc"));
        assert_eq!(runc.argv(), ["runc".into(), "--root".into(), OsString::from(dir.path().join("runc"))]);
        let runsc = Runsc::new("/usr/bin/runsc", dir.path().join("runsc"));
        assert_eq!(runsc.argv().last().unwrap(), "--platform=ptrace");
        let c = runsc.command();
        assert_eq!(c.as_std().get_program(), "/usr/bin/runsc");
        assert!(runc.list().await.is_empty());
        assert!(!dir.path().join("runc").exists(), "asking made no root");
    }
}
