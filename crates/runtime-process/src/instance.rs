//! One instance of a process function: a forked, sandboxed process that serves one invocation
//! at a time through its own Runtime API. Dropping an instance kills it and everything it
//! started, and removes its cgroup.

use std::time::{Duration, Instant};

use hangar_container::cgroup::Cgroup;
use hangar_lambda::runtime_api::{Answer, Invocation, RuntimeApi};
use hangar_runtime::LogBuffer;
use tokio::net::unix::pipe;

use crate::channel::Channel;

/// How one invocation on an instance ended.
#[derive(Debug)]
pub enum Ran {
    Answer(Answer),
    /// The deadline passed; the instance must be killed.
    Timeout,
    /// The process ended without answering: how, and whether it ran out of memory.
    Exited {
        how: String,
        out_of_memory: bool,
    },
    /// The runtime never asked for an invocation within the init limit.
    InitTimeout,
}

/// See the module docs.
pub struct Instance {
    pid: i32,
    channel: Channel,
    logs: pipe::Receiver,
    cgroup: Option<Cgroup>,
    api: Option<RuntimeApi>,
    /// When the process was forked.
    pub created: Instant,
    /// When it last finished an invocation.
    pub last_used: Instant,
    /// Set once the runtime has polled for its first invocation.
    pub init: Option<Duration>,
    /// Whether the runtime was let go (see [`Instance::start`]).
    started: bool,
    egress: Option<tokio::task::JoinHandle<()>>,
    zygote: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Its place under the function's cap, given back when it ends.
    room: Option<hangar_scheduler::capacity::Room>,
    /// The function's count of provisioned instances, when this is one.
    provisioned: Option<std::sync::Arc<std::sync::atomic::AtomicU32>>,
    /// Frozen by the cgroup freezer while idle.
    paused: bool,
}

impl Instance {
    pub(crate) fn new(pid: i32, channel: Channel, logs: std::os::fd::OwnedFd, cgroup: Cgroup) -> std::io::Result<Instance> {
        let now = Instant::now();
        Ok(Instance {
            pid,
            channel,
            logs: pipe::Receiver::from_owned_fd(logs)?,
            cgroup: Some(cgroup),
            api: None,
            created: now,
            last_used: now,
            init: None,
            started: false,
            egress: None,
            zygote: None,
            room: None,
            provisioned: None,
            paused: false,
        })
    }

    pub(crate) fn attach(&mut self, api: RuntimeApi) {
        self.api = Some(api);
    }

    /// Whether the zygote that forked this instance still runs (instances die with it).
    pub fn zygote_alive(&self) -> bool {
        self.zygote.as_ref().is_none_or(|a| a.load(std::sync::atomic::Ordering::Acquire))
    }

    pub(crate) fn set_zygote(&mut self, alive: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.zygote = Some(alive);
    }

    /// The instance's egress proxy, stopped with the instance.
    pub(crate) fn attach_egress(&mut self, proxy: tokio::task::JoinHandle<()>) {
        self.egress = Some(proxy);
    }

    /// Lets a prepared instance drop its privileges and start its runtime.
    pub(crate) async fn start(&mut self) -> Result<(), String> {
        if self.started {
            return Ok(());
        }
        self.channel.send(&serde_json::json!({"type": "go"}), &[]).await.map_err(|e| format!("starting the instance: {e}"))?;
        self.started = true;
        self.created = Instant::now();
        Ok(())
    }

    /// Holds `room` under the function's cap until it ends.
    pub(crate) fn count_in(&mut self, room: hangar_scheduler::capacity::Room) {
        self.room = Some(room);
    }

    /// Makes this one of the function's provisioned instances (counted in `count`).
    pub(crate) fn provision(&mut self, count: std::sync::Arc<std::sync::atomic::AtomicU32>) {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.provisioned = Some(count);
    }

    /// Makes this an ordinary instance again (its function keeps fewer provisioned).
    pub(crate) fn unprovision(&mut self) {
        if let Some(p) = self.provisioned.take() {
            p.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
        // Counted as just used, so keep-alive starts from now.
        self.last_used = std::time::Instant::now();
    }

    pub(crate) fn is_provisioned(&self) -> bool {
        self.provisioned.is_some()
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Freezes an idle instance: no CPU until [`Instance::resume`], memory kept.
    pub(crate) fn pause(&mut self) {
        if self.paused {
            return;
        }
        match self.cgroup().freeze() {
            Ok(()) => self.paused = true,
            Err(e) => tracing::debug!("pausing an idle instance: {e}"),
        }
    }

    /// Thaws a paused instance; says whether it was paused.
    pub(crate) fn resume(&mut self) -> Result<bool, String> {
        if !self.paused {
            return Ok(false);
        }
        self.cgroup().thaw().map_err(|e| e.to_string())?;
        self.paused = false;
        Ok(true)
    }

    pub(crate) fn cgroup(&self) -> &Cgroup {
        self.cgroup.as_ref().expect("the cgroup lives as long as the instance")
    }

    /// The most memory the instance has used, in bytes.
    pub fn peak_memory(&self) -> u64 {
        self.cgroup.as_ref().map_or(0, Cgroup::peak_memory)
    }

    /// Runs one invocation until it is answered, the instance ends, or `deadline` passes;
    /// everything the instance prints meanwhile goes to `logs`. A new instance must poll for
    /// its first invocation before `init_deadline`.
    pub async fn run(&mut self, inv: Invocation, deadline: tokio::time::Instant, init_deadline: tokio::time::Instant, logs: &mut LogBuffer) -> Ran {
        let Some(api) = self.api.as_ref() else {
            return Ran::Exited { how: "the instance has no Runtime API".into(), out_of_memory: false };
        };
        let invoke = api.invoke(inv);
        tokio::pin!(invoke);
        let initialized = api.initialized();
        tokio::pin!(initialized);
        let mut buf = vec![0u8; 16 * 1024];
        let mut waiting_init = self.init.is_none();
        let mut logs_open = true;
        let ran = loop {
            tokio::select! {
                biased;
                answer = &mut invoke => break match answer {
                    Ok(a) => Ran::Answer(a),
                    Err(_) => Ran::Exited { how: "the runtime stopped serving".into(), out_of_memory: false },
                },
                at = &mut initialized, if waiting_init => {
                    waiting_init = false;
                    self.init = Some(at.saturating_duration_since(self.created));
                }
                ready = self.logs.readable(), if logs_open => {
                    // At end of file the pipe stays readable: stop watching it.
                    logs_open = ready.is_ok() && drain(&self.logs, &mut buf, logs);
                }
                msg = self.channel.recv() => {
                    let _ = drain(&self.logs, &mut buf, logs);
                    break self.exited(msg.ok().flatten());
                }
                _ = tokio::time::sleep_until(init_deadline), if waiting_init => break Ran::InitTimeout,
                _ = tokio::time::sleep_until(deadline) => break Ran::Timeout,
            }
        };
        let _ = drain(&self.logs, &mut buf, logs);
        if self.init.is_none() && matches!(ran, Ran::Answer(_)) {
            let polled = self.api.as_ref().and_then(RuntimeApi::polled_at);
            self.init = Some(polled.map_or_else(|| self.created.elapsed(), |at| at.saturating_duration_since(self.created)));
        }
        ran
    }

    fn exited(&self, msg: Option<crate::channel::Message>) -> Ran {
        let out_of_memory = self.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
        let how = match msg.as_ref().map(|m| &m.body) {
            Some(b) if b["signal"].is_number() => format!("was killed by signal {}", b["signal"]),
            Some(b) if b["code"].is_number() => format!("exited with status {}", b["code"]),
            Some(b) if b["error"].is_string() => format!("failed: {}", b["error"].as_str().unwrap_or_default()),
            _ => "ended".to_string(),
        };
        Ran::Exited { how: format!("the runtime {how}"), out_of_memory }
    }
}

/// Reads what the log pipe holds now, without waiting; false once the pipe is closed.
fn drain(pipe: &pipe::Receiver, buf: &mut [u8], logs: &mut LogBuffer) -> bool {
    loop {
        match pipe.try_read(buf) {
            Ok(0) => return false,
            Ok(n) => logs.append(&buf[..n]),
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(proxy) = self.egress.take() {
            proxy.abort();
        }
        drop(self.room.take());
        if let Some(p) = self.provisioned.take() {
            p.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        if let (Some(cgroup), Ok(rt)) = (self.cgroup.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(cgroup.remove());
        }
    }
}
