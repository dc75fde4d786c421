//! Wire types of `/v1/sandboxes`: machines for untrusted code (gVisor), driven by exec and
//! file calls, paused or put on standby when idle.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validate::Invalid;

/// Memory of a sandbox, MiB.
pub const SANDBOX_MEMORY_MB: std::ops::RangeInclusive<u32> = 32..=16_384;
/// Disk a sandbox may fill through uploads, MiB.
pub const SANDBOX_DISK_MB: std::ops::RangeInclusive<u32> = 16..=65_536;
/// Longest a sandbox may live, seconds (30 days).
pub const MAX_TTL_S: u64 = 30 * 24 * 3600;
/// Largest stdin given to one exec.
pub const MAX_EXEC_STDIN_BYTES: usize = 1 << 20;

/// When an idle sandbox (no exec or file call running) is paused and put on standby.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdlePolicy {
    /// Idle seconds before it is paused (frozen: no CPU, memory kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_after_s: Option<u64>,
    /// Idle seconds before it is put on standby (checkpointed to disk: no CPU, no memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_after_s: Option<u64>,
}

/// What a sandbox is made from and may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Image reference or id in the namespace's image store.
    pub image: String,
    /// Memory limit, MiB (32..=16384, default 512).
    #[serde(default = "default_memory")]
    pub memory_mb: u32,
    /// CPU limit in CPUs (0.05..=64, default 1).
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    /// Disk the sandbox's own files may take, MiB (16..=65536, default 1024); uploads beyond
    /// it are refused.
    #[serde(default = "default_disk")]
    pub disk_mb: u32,
    /// Environment of every command (on top of the image's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds after creation when the sandbox is destroyed, whatever its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    #[serde(default)]
    pub idle: IdlePolicy,
    /// What the sandbox may reach over the network; by default nothing but its own loopback.
    #[serde(default, skip_serializing_if = "NetworkPolicy::is_none")]
    pub network: NetworkPolicy,
}

/// A sandbox's network: none, or connections to the hosts and ports of an allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    /// `host:port` entries the sandbox may connect to (TCP and UDP): `host` a DNS name
    /// (resolved by the server when the sandbox starts) or an IPv4 address, `port` a number or
    /// `*` for any. Nothing else is reachable: not the host, not other sandboxes, functions or
    /// services, not the rest of the network.
    #[serde(default)]
    pub allow: Vec<String>,
}

impl NetworkPolicy {
    pub fn is_none(&self) -> bool {
        self.allow.is_empty()
    }
}

/// Most entries in a sandbox's network allow-list.
pub const MAX_ALLOW_ENTRIES: usize = 64;

/// One allow-list entry, parsed: the host and the port (`None`: any port).
pub fn allow_entry(entry: &str) -> Result<(String, Option<u16>), Invalid> {
    let field = "network.allow";
    let (host, port) = entry.rsplit_once(':').ok_or_else(|| Invalid::new(field, format!("`{entry}` is not `host:port` (a port, or `*` for any)")))?;
    if host.contains(':') || host.starts_with('[') {
        return Err(Invalid::new(field, format!("`{entry}`: IPv6 addresses are not supported; give a name or an IPv4 address")));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.len() > 253 || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return Err(Invalid::new(field, format!("`{entry}`: `{host}` is not a host name or an IPv4 address")));
    }
    if let Ok(ip) = host.parse::<std::net::Ipv4Addr>()
        && (ip.is_loopback() || ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast())
    {
        return Err(Invalid::new(field, format!("`{entry}`: {ip} cannot be allowed (loopback is always the sandbox's own)")));
    }
    let port = match port {
        "*" => None,
        p => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(Invalid::new(field, format!("`{entry}`: the port must be 1..=65535 or `*`"))),
        },
    };
    Ok((host, port))
}

fn default_memory() -> u32 {
    512
}
fn default_cpus() -> f64 {
    1.0
}
fn default_disk() -> u32 {
    1024
}

impl SandboxConfig {
    /// A configuration with every default for `image`.
    pub fn new(image: impl Into<String>) -> Self {
        serde_json::from_value(serde_json::json!({ "image": image.into() })).unwrap_or_else(|_| unreachable!("the defaults deserialize"))
    }

    /// Checks every field; the first broken rule is the error.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.image.trim().is_empty() {
            return Err(Invalid::new("image", "give the image to make the sandbox from (`hangar image ls` lists them)"));
        }
        if !SANDBOX_MEMORY_MB.contains(&self.memory_mb) {
            return Err(Invalid::new("memory_mb", format!("{} is out of range {}..={}", self.memory_mb, SANDBOX_MEMORY_MB.start(), SANDBOX_MEMORY_MB.end())));
        }
        if !(self.cpus.is_finite() && (0.05..=64.0).contains(&self.cpus)) {
            return Err(Invalid::new("cpus", format!("{} is out of range 0.05..=64", self.cpus)));
        }
        if !SANDBOX_DISK_MB.contains(&self.disk_mb) {
            return Err(Invalid::new("disk_mb", format!("{} is out of range {}..={}", self.disk_mb, SANDBOX_DISK_MB.start(), SANDBOX_DISK_MB.end())));
        }
        env(&self.env)?;
        if let Some(t) = self.ttl_s
            && !(1..=MAX_TTL_S).contains(&t)
        {
            return Err(Invalid::new("ttl_s", format!("{t} is out of range 1..={MAX_TTL_S}")));
        }
        let IdlePolicy { pause_after_s, standby_after_s } = self.idle;
        for (field, v) in [("idle.pause_after_s", pause_after_s), ("idle.standby_after_s", standby_after_s)] {
            if let Some(v) = v
                && !(1..=MAX_TTL_S).contains(&v)
            {
                return Err(Invalid::new(field, format!("{v} is out of range 1..={MAX_TTL_S}")));
            }
        }
        if let (Some(p), Some(s)) = (pause_after_s, standby_after_s)
            && s <= p
        {
            return Err(Invalid::new("idle.standby_after_s", format!("{s} must be later than pause_after_s ({p})")));
        }
        if self.network.allow.len() > MAX_ALLOW_ENTRIES {
            return Err(Invalid::new("network.allow", format!("{} entries are more than {MAX_ALLOW_ENTRIES}", self.network.allow.len())));
        }
        for entry in &self.network.allow {
            allow_entry(entry)?;
        }
        if !self.network.is_none() && standby_after_s.is_some() {
            return Err(Invalid::new(
                "idle.standby_after_s",
                "a sandbox with network access cannot go on standby (the gVisor release here does not restore its network); use idle.pause_after_s",
            ));
        }
        Ok(())
    }
}

fn env(env: &BTreeMap<String, String>) -> Result<(), Invalid> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(Invalid::new("env", format!("`{k}` is not a valid variable name (no `=`, no NUL, not empty)")));
        }
    }
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if total > 64 * 1024 {
        return Err(Invalid::new("env", format!("{total} bytes is more than 64 KiB")));
    }
    Ok(())
}

wire_enum! {
    /// Where a sandbox is in its life.
    SandboxState, "sandbox state" {
        /// Running: commands execute now.
        Running = "running",
        /// Frozen: no CPU, memory kept; the next call resumes it at once.
        Paused = "paused",
        /// Checkpointed to disk: no CPU, no memory; the next call restores it.
        Standby = "standby",
        /// Broken (e.g. its standby image could not be restored); only `rm` is left.
        Failed = "failed",
    }
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    pub id: String,
    pub namespace: String,
    pub config: SandboxConfig,
    /// The image it was made from (its id, whatever its names become).
    pub image_id: String,
    pub state: SandboxState,
    pub created_ms: i64,
    /// When the state last changed.
    pub state_since_ms: i64,
    /// When an exec or file call last ended (or started, while one runs).
    pub last_active_ms: i64,
    /// Size of the standby image on disk (while on standby).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_bytes: Option<u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes its disk takes on the host now (the blocks written so far, at most `disk_mb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// How long the last transitions took.
    #[serde(default)]
    pub timings: SandboxTimings,
    /// Time spent in each state so far, for metering.
    #[serde(default)]
    pub usage: SandboxUsage,
    /// The node it lives on (its processes, files and standby image are there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Durations of a sandbox's last transitions, ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxTimings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_ms: Option<f64>,
}

/// What a sandbox used, as the meter needs it: milliseconds in each state (up to the last
/// change of state), and standby storage in byte-milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxUsage {
    pub running_ms: u64,
    pub paused_ms: u64,
    pub standby_ms: u64,
    pub standby_byte_ms: u128,
}

/// A page of sandboxes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    pub items: Vec<Sandbox>,
}

/// A command to run in a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments; the program is looked up in the image's `PATH`.
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute); default the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Given to the command's standard input (UTF-8, at most 1 MiB); without it, stdin is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Seconds after which the command and its process group are killed (exit code 137), whatever
    /// it left running; default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Who runs it: `uid[:gid]` or `name[:group]` of the image; default the image's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ExecRequest {
    pub fn validate(&self) -> Result<(), Invalid> {
        let Some(program) = self.cmd.first() else {
            return Err(Invalid::new("cmd", "give the command to run, e.g. [\"ls\", \"-l\"]"));
        };
        if program.is_empty() || self.cmd.iter().any(|a| a.contains('\0')) {
            return Err(Invalid::new("cmd", "the program must be named, and no argument may hold NUL"));
        }
        env(&self.env)?;
        if let Some(cwd) = &self.cwd {
            path("cwd", cwd)?;
        }
        if self.stdin.as_ref().is_some_and(|s| s.len() > MAX_EXEC_STDIN_BYTES) {
            return Err(Invalid::new("stdin", format!("more than {MAX_EXEC_STDIN_BYTES} bytes")));
        }
        if let Some(t) = self.timeout_s
            && !(1..=24 * 3600).contains(&t)
        {
            return Err(Invalid::new("timeout_s", format!("{t} is out of range 1..=86400")));
        }
        if let Some(u) = &self.user
            && (u.is_empty() || u.len() > 64 || !u.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-:".contains(&b)))
        {
            return Err(Invalid::new("user", "give `uid[:gid]` or `name[:group]` of the image (letters, digits, `_.-`)"));
        }
        Ok(())
    }
}

/// The first message of an interactive command (`GET /v1/sandboxes/{id}/tty`, a WebSocket):
/// what to run and the terminal's size. Then binary messages carry keystrokes in and output
/// out; a text message [`TtyControl`] resizes; the last message is a text [`ExecFrame`]
/// (`exit_code` or `error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TtyRequest {
    /// The program and its arguments; default the image's shell, `/bin/sh`.
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Columns and rows of the terminal (1..=1000; default 80 × 24).
    #[serde(default = "default_cols")]
    pub cols: u16,
    #[serde(default = "default_rows")]
    pub rows: u16,
}

fn default_cols() -> u16 {
    80
}

fn default_rows() -> u16 {
    24
}

fn size(cols: u16, rows: u16) -> Result<(), Invalid> {
    if !(1..=1000).contains(&cols) || !(1..=1000).contains(&rows) {
        return Err(Invalid::new("cols/rows", format!("{cols} × {rows} is out of range 1..=1000")));
    }
    Ok(())
}

impl TtyRequest {
    /// The command to run: the one given, or `/bin/sh`.
    pub fn command(&self) -> Vec<String> {
        if self.cmd.is_empty() { vec!["/bin/sh".to_string()] } else { self.cmd.clone() }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if self.cmd.first().is_some_and(String::is_empty) || self.cmd.iter().any(|a| a.contains('\0')) {
            return Err(Invalid::new("cmd", "the program must be named, and no argument may hold NUL"));
        }
        env(&self.env)?;
        if let Some(cwd) = &self.cwd {
            path("cwd", cwd)?;
        }
        size(self.cols, self.rows)
    }
}

/// A control message of an interactive command, sent as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TtyControl {
    /// The terminal's new size.
    Resize { cols: u16, rows: u16 },
}

impl TtyControl {
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            TtyControl::Resize { cols, rows } => size(*cols, *rows),
        }
    }
}

/// One line of an exec's answer (`application/x-ndjson`): output as it comes, then the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecFrame {
    /// Bytes the command wrote to stdout (UTF-8, invalid sequences replaced).
    Stdout(String),
    Stderr(String),
    /// The command ended with this code (128 + N when killed by signal N; 127 when the
    /// program does not exist).
    ExitCode(i32),
    /// Hangar could not run it or follow it to its end.
    Error(String),
}

/// A file or directory in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    /// Permission bits, e.g. 420 (0o644).
    pub mode: u32,
    pub modified_s: i64,
}

/// Checks a path inside a sandbox: absolute, no `..`, no NUL, at most 4096 bytes.
pub fn path(field: &str, p: &str) -> Result<(), Invalid> {
    if !p.starts_with('/') || p.len() > 4096 || p.contains('\0') {
        return Err(Invalid::new(field, format!("`{p}` must be an absolute path (starting with `/`) of at most 4096 bytes")));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(Invalid::new(field, format!("`{p}` holds `..`; give the path without it")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_and_commands_are_checked() {
        assert!(SandboxConfig::new("busybox").validate().is_ok());
        let mut c = SandboxConfig::new("busybox");
        c.memory_mb = 8;
        assert_eq!(c.validate().unwrap_err().field, "memory_mb");
        let mut c = SandboxConfig::new("busybox");
        c.idle = IdlePolicy { pause_after_s: Some(10), standby_after_s: Some(5) };
        assert_eq!(c.validate().unwrap_err().field, "idle.standby_after_s");
        let bad: Result<SandboxConfig, _> = serde_json::from_str(r#"{"image":"x","cpu":2}"#);
        assert!(bad.is_err(), "unknown fields are refused");
        let e = ExecRequest { cmd: vec![], env: BTreeMap::new(), cwd: None, stdin: None, timeout_s: None, user: None };
        assert_eq!(e.validate().unwrap_err().field, "cmd");
        assert!(path("path", "/tmp/../etc/shadow").is_err());
        assert!(path("path", "tmp/x").is_err());
        assert!(path("path", "/tmp/x..y").is_ok());
        assert_eq!(serde_json::to_string(&ExecFrame::ExitCode(3)).unwrap(), r#"{"exit_code":3}"#);
    }

    #[test]
    fn allow_lists_are_checked() {
        assert_eq!(allow_entry("API.example.com.:443").unwrap(), ("api.example.com".to_string(), Some(443)));
        assert_eq!(allow_entry("10.1.2.3:*").unwrap(), ("10.1.2.3".to_string(), None));
        for bad in ["example.com", "example.com:0", "example.com:70000", ":80", "[::1]:80", "::1:80", "bad host:80", "127.0.0.1:80", "0.0.0.0:*"] {
            assert!(allow_entry(bad).is_err(), "{bad}");
        }
        let mut c = SandboxConfig::new("busybox");
        c.network.allow = vec!["example.com:443".into()];
        assert!(c.validate().is_ok());
        c.idle.standby_after_s = Some(60);
        assert_eq!(c.validate().unwrap_err().field, "idle.standby_after_s", "no standby with a network");
        c.idle.standby_after_s = None;
        c.network.allow = vec!["x:1".into(); MAX_ALLOW_ENTRIES + 1];
        assert_eq!(c.validate().unwrap_err().field, "network.allow");
        let json = serde_json::to_value(SandboxConfig::new("b")).unwrap();
        assert!(json.get("network").is_none(), "no network, nothing said: {json}");
    }
}
