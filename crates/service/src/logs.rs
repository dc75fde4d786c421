//! A service's logs: the last lines of every instance (bounded by bytes), each prefixed with
//! its instance and stamped with when it came, and a broadcast of new lines for followers.

use std::collections::VecDeque;
use std::sync::Mutex;

/// See the module docs.
#[derive(Debug)]
pub struct LogRing {
    /// (Unix ms, line) oldest first, and their bytes.
    lines: Mutex<(VecDeque<(i64, String)>, usize)>,
    cap: usize,
    tx: tokio::sync::broadcast::Sender<String>,
}

impl LogRing {
    pub fn new(cap: usize) -> LogRing {
        LogRing { lines: Mutex::new((VecDeque::new(), 0)), cap, tx: tokio::sync::broadcast::channel(1024).0 }
    }

    pub fn push(&self, line: String) {
        let _ = self.tx.send(line.clone());
        let mut g = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        g.1 += line.len();
        g.0.push_back((hangar_api::now_ms(), line));
        while g.1 > self.cap {
            match g.0.pop_front() {
                Some((_, old)) => g.1 -= old.len(),
                None => break,
            }
        }
    }

    /// The kept lines, oldest first, and a receiver of the lines after them.
    pub fn snapshot(&self) -> (Vec<String>, tokio::sync::broadcast::Receiver<String>) {
        let g = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        (g.0.iter().map(|(_, l)| l.clone()).collect(), self.tx.subscribe())
    }

    /// The kept lines that came between `since_ms` and `until_ms`, with when each came,
    /// oldest first.
    pub fn between(&self, since_ms: i64, until_ms: i64) -> Vec<(i64, String)> {
        let g = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        g.0.iter().filter(|(t, _)| (since_ms..=until_ms).contains(t)).cloned().collect()
    }

    /// New lines from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.tx.subscribe()
    }
}

/// A service log line split into its instance (`[ID] text`) and text.
pub fn split_instance(line: &str) -> (Option<&str>, &str) {
    match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((id, text)) => (Some(id), text),
        None => (None, line),
    }
}
