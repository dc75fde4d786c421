//! Running a command in a sandbox (`runsc exec`): its output streamed as frames through a
//! bounded channel (a slow reader stops the pipes being read, so the command blocks on its
//! writes; nothing piles up in memory), its exit code, a timeout, and the command killed when
//! the reader goes away.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use hangar_api::sandboxes::ExecFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Frames buffered between the command and the reader.
const FRAMES: usize = 16;
/// Largest chunk of output in one frame.
const CHUNK: usize = 16 * 1024;
/// How runsc says a command could not be started.
const NOT_STARTED: &str = "executing processes for container";
/// How long a command's pipes are read after it ended (or was killed at its timeout) before
/// the exec ends, whatever still holds them.
const LINGER: Duration = Duration::from_secs(1);

/// What to run, resolved by the sandbox: the runsc command line up to the container id.
pub struct Command {
    pub runsc: tokio::process::Command,
    pub argv: Vec<String>,
    pub stdin: Option<Bytes>,
    pub timeout: Option<Duration>,
    /// Where runsc writes the command's pid inside the sandbox (to kill it).
    pub pid_file: PathBuf,
    /// `runsc kill --pid PID <sandbox> KILL` for a pid inside the sandbox.
    pub kill: Box<dyn Fn(&str) -> tokio::process::Command + Send + Sync>,
    /// Asked when runsc itself failed: why the sandbox stopped, if it did.
    pub stopped: Box<dyn FnOnce() -> BoxFuture<'static, Option<String>> + Send + Sync>,
    /// Counts the outputs of ended commands that something they started still holds: those
    /// are read (and dropped) until it lets go, and while any is, the sandbox cannot be
    /// checkpointed (gVisor cannot save a process's hold on a host pipe).
    pub held: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

/// Starts the command; the frames end with `ExitCode` or `Error`. `done` runs when it ended.
pub fn start(cmd: Command, done: impl FnOnce() + Send + 'static) -> mpsc::Receiver<ExecFrame> {
    let (tx, rx) = mpsc::channel(FRAMES);
    tokio::spawn(async move {
        let frame = run(cmd, &tx).await;
        let _ = tx.send(frame).await;
        done();
    });
    rx
}

async fn run(mut cmd: Command, tx: &mpsc::Sender<ExecFrame>) -> ExecFrame {
    cmd.runsc.arg("--internal-pid-file").arg(&cmd.pid_file);
    // argv is the container id, then the command.
    let program = cmd.argv.get(1).cloned().unwrap_or_default();
    let mut child = match cmd.runsc.args(&cmd.argv).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).spawn() {
        Ok(c) => c,
        Err(e) => return ExecFrame::Error(format!("runsc could not run: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let input = cmd.stdin.take();
        tokio::spawn(async move {
            if let Some(input) = input {
                let _ = stdin.write_all(&input).await;
            }
            // Dropping it closes the command's stdin.
        });
    }
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return ExecFrame::Error("the command's output pipes are missing".into());
    };
    let (mut out_open, mut err_open) = (true, true);
    let (mut ob, mut eb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    // runsc's own complaint when the program cannot start, held until the exit code says so.
    let mut held: Option<String> = None;
    let deadline = cmd.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut timed_out = false;
    // Once the command has ended (or was killed), what it left running may still hold the
    // pipes: their output is read for a moment more, then the exec ends anyway.
    let mut exited = None;
    let mut last_call: Option<tokio::time::Instant> = None;
    while out_open || err_open {
        let frame = tokio::select! {
            status = child.wait(), if exited.is_none() => {
                exited = Some(status);
                last_call.get_or_insert(tokio::time::Instant::now() + LINGER);
                None
            }
            _ = sleep_until(last_call), if last_call.is_some() => break,
            n = out.read(&mut ob), if out_open => match n {
                Ok(0) | Err(_) => { out_open = false; None }
                Ok(n) => Some(ExecFrame::Stdout(String::from_utf8_lossy(&ob[..n]).into_owned())),
            },
            n = err.read(&mut eb), if err_open => match n {
                Ok(0) | Err(_) => { err_open = false; None }
                Ok(n) => {
                    let text = String::from_utf8_lossy(&eb[..n]).into_owned();
                    if held.is_none() && text.starts_with(NOT_STARTED) {
                        held = Some(text);
                        None
                    } else {
                        Some(ExecFrame::Stderr(text))
                    }
                }
            },
            _ = sleep_until(deadline), if !timed_out => {
                timed_out = true;
                kill(&cmd).await;
                last_call.get_or_insert(tokio::time::Instant::now() + LINGER);
                None
            }
            _ = tx.closed() => {
                // Nobody reads any more: the command goes.
                kill(&cmd).await;
                return ExecFrame::Error("the caller went away".into());
            }
        };
        if let Some(f) = frame
            && tx.send(f).await.is_err()
        {
            kill(&cmd).await;
            return ExecFrame::Error("the caller went away".into());
        }
    }
    if out_open || err_open {
        // Whatever the command left running still holds its output: keep reading it (so that
        // it never blocks on a full pipe) until it lets go.
        let held = cmd.held.clone();
        held.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        tokio::spawn(async move {
            let (mut ob, mut eb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
            while out_open || err_open {
                tokio::select! {
                    n = out.read(&mut ob), if out_open => out_open = matches!(n, Ok(n) if n > 0),
                    n = err.read(&mut eb), if err_open => err_open = matches!(n, Ok(n) if n > 0),
                }
            }
            held.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        });
    }
    let status = match exited {
        Some(s) => s,
        None => match tokio::time::timeout(LINGER, child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                let _ = child.start_kill();
                child.wait().await
            }
        },
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => return ExecFrame::Error(format!("waiting for the command: {e}")),
    };
    let code = status.code().unwrap_or(128);
    // 128 is runsc's own failure: the sandbox may have stopped under the command.
    if code == 128
        && let Some(why) = (cmd.stopped)().await
    {
        let _ = tx.send(ExecFrame::Stderr(format!("hangar: the sandbox stopped: {why}\n"))).await;
        return ExecFrame::ExitCode(137);
    }
    if let Some(text) = held {
        if code == 128 {
            let why = text.rsplit(": ").next().unwrap_or("").trim();
            let _ = tx.send(ExecFrame::Stderr(format!("hangar: {program}: command not found ({why})\n"))).await;
            return ExecFrame::ExitCode(127);
        }
        let _ = tx.send(ExecFrame::Stderr(text)).await;
    }
    if timed_out {
        let _ = tx.send(ExecFrame::Stderr(format!("hangar: killed after its timeout of {} s\n", cmd.timeout.unwrap_or_default().as_secs()))).await;
        return ExecFrame::ExitCode(137);
    }
    ExecFrame::ExitCode(code)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Kills the command inside the sandbox (by its pid there), not only the runsc process.
/// runsc writes the pid file a moment after the command starts, so a kill right after the
/// start waits for it (up to 3 s).
async fn kill(cmd: &Command) {
    for _ in 0..60 {
        if let Ok(pid) = tokio::fs::read_to_string(&cmd.pid_file).await
            && pid.trim().parse::<u32>().is_ok()
        {
            let _ = (cmd.kill)(pid.trim()).output().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
