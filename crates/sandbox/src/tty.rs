//! Interactive commands: a pseudo-terminal on the host whose other end becomes runsc's own
//! terminal (`runsc exec --process` with `terminal: true`, started by `setsid -c` so that it is
//! runsc's controlling terminal). runsc mirrors it into a terminal inside gVisor, size changes
//! (`SIGWINCH`) included. The caller writes keystrokes to the master end and reads the output.

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use hangar_api::sandboxes::TtyRequest;
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

use crate::{Active, SandboxError, Sandboxes, bundle, lock};

/// A running interactive command.
pub struct Tty {
    /// What the command writes to its terminal.
    pub output: tokio::fs::File,
    /// What the command reads from its terminal.
    pub input: tokio::fs::File,
    master: OwnedFd,
    child: tokio::process::Child,
    /// `runsc kill --pid`, waiting for the pid inside, the sandbox and the signal.
    kill: tokio::process::Command,
    sandbox: String,
    pid_file: PathBuf,
    process_file: PathBuf,
    _active: Active,
}

fn winsize(cols: u16, rows: u16) -> Winsize {
    Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 }
}

fn host(what: &str) -> impl FnOnce(rustix::io::Errno) -> SandboxError + '_ {
    move |e| SandboxError::Runtime(format!("{what}: {e}"))
}

impl Tty {
    /// Gives the terminal a new size; the command sees `SIGWINCH`.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), SandboxError> {
        rustix::termios::tcsetwinsize(&self.master, winsize(cols, rows)).map_err(host("resizing the terminal"))
    }

    /// Waits for the command to end; its exit code.
    pub async fn wait(&mut self) -> i32 {
        self.child.wait().await.ok().and_then(|s| s.code()).unwrap_or(128)
    }

    /// Kills the command inside the sandbox, and runsc with it.
    pub async fn kill(&mut self) {
        // runsc writes the pid a moment after the command starts: wait for it (while runsc
        // runs), or the command would outlive its terminal.
        for _ in 0..60 {
            if let Ok(pid) = tokio::fs::read_to_string(&self.pid_file).await
                && let Ok(pid) = pid.trim().parse::<u32>()
            {
                let _ = self.kill.arg(pid.to_string()).arg(&self.sandbox).arg("KILL").output().await;
                break;
            }
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let _ = self.child.kill().await;
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.process_file);
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

impl Sandboxes {
    /// Starts an interactive command on a new terminal of `req`'s size.
    pub async fn tty(&self, namespace: Option<&str>, id: &str, req: TtyRequest) -> Result<Tty, SandboxError> {
        req.validate().map_err(|e| SandboxError::Invalid(e.to_string()))?;
        let active = self.activate(namespace, id).await?;
        let entry = active.entry.clone();
        let config = lock(&entry.record).config.clone();
        let run = self.inner.run_dir(id);
        // The command's process: the sandbox's user, capabilities and limits, the terminal.
        let mut env = bundle::environment(&entry.image, &config);
        env.push(("TERM".into(), "xterm-256color".into()));
        for (k, v) in &req.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let env = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let user = bundle::user(&run.join("rootfs"), &entry.image)?;
        let cwd = req.cwd.clone().unwrap_or_else(|| bundle::working_dir(&entry.image));
        let process = bundle::process(&config, user, req.command(), env, cwd, true)?;
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let (process_file, pid_file) = (run.join(format!("tty-{tag}.json")), run.join(format!("tty-{tag}.pid")));
        std::fs::write(&process_file, serde_json::to_vec(&process).map_err(|e| SandboxError::Runtime(e.to_string()))?)?;

        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).map_err(host("opening a terminal"))?;
        rustix::pty::grantpt(&master).map_err(host("opening a terminal"))?;
        rustix::pty::unlockpt(&master).map_err(host("opening a terminal"))?;
        let name = rustix::pty::ptsname(&master, Vec::new()).map_err(host("opening a terminal"))?;
        rustix::termios::tcsetwinsize(&master, winsize(req.cols, req.rows)).map_err(host("sizing the terminal"))?;
        let slave =
            std::fs::OpenOptions::new().read(true).write(true).custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32).open(name.to_string_lossy().as_ref())?;

        let mut cmd = tokio::process::Command::new("setsid");
        cmd.arg("-c").args(hangar_container::ContainerRuntime::argv(&self.inner.runsc));
        cmd.arg("exec").arg("--internal-pid-file").arg(&pid_file).arg("--process").arg(&process_file).arg(id);
        cmd.stdin(slave.try_clone()?).stdout(slave.try_clone()?).stderr(slave).kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| SandboxError::Unavailable(format!("setsid could not run ({e}); interactive commands need util-linux")))?;
        let mut kill = self.inner.runsc();
        kill.args(["kill", "--pid"]);
        let file = |fd: &OwnedFd| -> Result<tokio::fs::File, SandboxError> { Ok(tokio::fs::File::from_std(std::fs::File::from(fd.try_clone()?))) };
        Ok(Tty { output: file(&master)?, input: file(&master)?, master, child, kill, sandbox: id.to_string(), pid_file, process_file, _active: active })
    }
}
