//! Files in and out of a sandbox. Every path is resolved inside gVisor by Hangar's static
//! busybox running as the sandbox's user, so a symlink in the sandbox can never point a file
//! call at the host; `..` is refused before anything runs. Uploads count against the
//! sandbox's disk quota as they stream, downloads stream through a bounded channel.

use std::process::Stdio;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use hangar_api::sandboxes::FileEntry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::bundle::BUSYBOX;
use crate::{SandboxError, Sandboxes};

/// Largest answer of a listing or `stat`.
const MAX_LISTING: usize = 4 << 20;

/// What is at a path.
pub enum Found {
    File { size: u64 },
    Dir(Vec<FileEntry>),
}

fn kind(mode: u32) -> &'static str {
    match mode & 0o170000 {
        0o040000 => "dir",
        0o100000 => "file",
        0o120000 => "symlink",
        _ => "other",
    }
}

/// One `stat -c '%s %f %Y %n'` line.
fn entry(line: &str) -> Option<FileEntry> {
    let mut it = line.splitn(4, ' ');
    let size = it.next()?.parse().ok()?;
    let raw = u32::from_str_radix(it.next()?, 16).ok()?;
    let modified_s = it.next()?.parse().ok()?;
    let name = it.next()?.to_string();
    Some(FileEntry { name, kind: kind(raw).to_string(), size, mode: raw & 0o7777, modified_s })
}

impl Sandboxes {
    /// Runs busybox in the sandbox to completion; returns its exit code, stdout and stderr.
    async fn busybox(&self, namespace: Option<&str>, id: &str, args: &[&str]) -> Result<(i32, String, String), SandboxError> {
        let active = self.activate(namespace, id).await?;
        let mut cmd = self.inner.runsc();
        cmd.arg("exec").arg(id).arg(BUSYBOX).args(args);
        let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().await.map_err(|e| SandboxError::Runtime(format!("runsc could not run: {e}")))?;
        drop(active);
        if out.stdout.len() > MAX_LISTING {
            return Err(SandboxError::Invalid(format!("the answer is larger than {MAX_LISTING} bytes")));
        }
        Ok((out.status.code().unwrap_or(128), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }

    /// What is at `path`: a file's size, or a directory's entries.
    pub async fn stat(&self, namespace: Option<&str>, id: &str, path: &str) -> Result<Found, SandboxError> {
        hangar_api::sandboxes::path("path", path).map_err(|e| SandboxError::Invalid(e.to_string()))?;
        let script = r#"p=$1; if [ -d "$p" ]; then echo dir; cd -- "$p" || exit 2; for f in * .*; do case "$f" in .|..) continue;; esac; if [ -e "$f" ] || [ -L "$f" ]; then stat -c '%s %f %Y %n' -- "$f"; fi; done; exit 0; fi; [ -e "$p" ] || exit 3; echo file; stat -L -c '%s %f %Y %n' -- "$p""#;
        let (code, out, err) = self.busybox(namespace, id, &["sh", "-c", script, "stat", path]).await?;
        match code {
            0 => {}
            3 => return Err(SandboxError::NotFound(format!("{id}:{path}"))),
            _ => return Err(SandboxError::Invalid(format!("{path}: {err}"))),
        }
        let mut lines = out.lines();
        match lines.next() {
            Some("dir") => Ok(Found::Dir(lines.filter_map(entry).collect())),
            Some("file") => {
                let e = lines.next().and_then(entry).ok_or_else(|| SandboxError::Runtime(format!("stat of {path} said nothing")))?;
                if e.kind == "dir" {
                    return Err(SandboxError::Invalid(format!("{path} changed while it was read")));
                }
                Ok(Found::File { size: e.size })
            }
            _ => Err(SandboxError::Runtime(format!("stat of {path} answered `{out}`"))),
        }
    }

    /// Streams a file's bytes out of the sandbox.
    pub async fn read(&self, namespace: Option<&str>, id: &str, path: &str) -> Result<mpsc::Receiver<Result<Bytes, String>>, SandboxError> {
        hangar_api::sandboxes::path("path", path).map_err(|e| SandboxError::Invalid(e.to_string()))?;
        let active = self.activate(namespace, id).await?;
        let mut cmd = self.inner.runsc();
        cmd.arg("exec").arg(id).arg(BUSYBOX).args(["cat", "--", path]);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SandboxError::Runtime(format!("runsc could not run: {e}")))?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let _active = active;
            let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else { return };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match out.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send(Ok(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            return; // the caller went away: the child is killed on drop
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string())).await;
                        return;
                    }
                }
            }
            let mut why = String::new();
            let _ = err.read_to_string(&mut why).await;
            if !child.wait().await.is_ok_and(|s| s.success()) {
                let _ = tx.send(Err(format!("reading {}", why.trim()))).await;
            }
        });
        Ok(rx)
    }

    /// Writes a file (making its directories), streaming `body` into it; refused when the
    /// sandbox's files would pass its disk quota (then nothing of it is left).
    pub async fn write<S, E>(&self, namespace: Option<&str>, id: &str, path: &str, length: Option<u64>, body: S) -> Result<u64, SandboxError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        hangar_api::sandboxes::path("path", path).map_err(|e| SandboxError::Invalid(e.to_string()))?;
        if path.ends_with('/') {
            return Err(SandboxError::Invalid(format!("{path} names a directory; give the file's path")));
        }
        let active = self.activate(namespace, id).await?;
        let disk_mb = active.entry.snapshot().config.disk_mb;
        let inner = self.inner.clone();
        let sid = id.to_string();
        let room = tokio::task::spawn_blocking(move || inner.room(&sid, disk_mb)).await.unwrap_or(0);
        let over = |n: u64| {
            SandboxError::Quota(format!(
                "{path}: {n} bytes do not fit on the sandbox's disk of {disk_mb} MiB ({room} bytes free); remove files or make the sandbox with a larger --disk"
            ))
        };
        if let Some(n) = length.filter(|n| *n > room) {
            return Err(over(n));
        }
        let script = r#"mkdir -p -- "$(dirname -- "$1")" && cat > "$1""#;
        let mut cmd = self.inner.runsc();
        cmd.arg("exec").arg(id).arg(BUSYBOX).args(["sh", "-c", script, "put", path]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SandboxError::Runtime(format!("runsc could not run: {e}")))?;
        let mut stdin = child.stdin.take().ok_or_else(|| SandboxError::Runtime("no stdin pipe".into()))?;
        let mut written = 0u64;
        let mut body = body;
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failure = Some(SandboxError::Invalid(format!("reading the upload: {e}")));
                    break;
                }
            };
            written += chunk.len() as u64;
            if written > room {
                failure = Some(over(written));
                break;
            }
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
        drop(stdin);
        if let Some(f) = failure {
            let _ = child.kill().await;
            drop(active);
            let _ = self.busybox(namespace, id, &["rm", "-f", "--", path]).await;
            return Err(f);
        }
        let out = child.wait_with_output().await.map_err(|e| SandboxError::Runtime(e.to_string()))?;
        drop(active);
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if why.contains("No space left") {
                // Someone else wrote meanwhile: the disk filled up under the upload.
                let _ = self.busybox(namespace, id, &["rm", "-f", "--", path]).await;
                return Err(over(written));
            }
            return Err(SandboxError::Invalid(format!("writing {path}: {why}")));
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_become_entries() {
        let e = entry("12 81a4 1700000000 notes with spaces.txt").unwrap();
        assert_eq!((e.name.as_str(), e.kind.as_str(), e.size, e.mode), ("notes with spaces.txt", "file", 12, 0o644));
        assert_eq!(entry("4096 41ed 1700000000 sub").unwrap().kind, "dir");
        assert_eq!(entry("7 a1ff 1700000000 link").unwrap().kind, "symlink");
        assert!(entry("garbage").is_none());
    }
}
