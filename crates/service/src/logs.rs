//! A service's logs: the last lines of every instance (bounded by bytes), each prefixed with
//! its instance, and a broadcast of new lines for followers.

use std::collections::VecDeque;
use std::sync::Mutex;

/// See the module docs.
#[derive(Debug)]
pub struct LogRing {
    lines: Mutex<(VecDeque<String>, usize)>,
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
        g.0.push_back(line);
        while g.1 > self.cap {
            match g.0.pop_front() {
                Some(old) => g.1 -= old.len(),
                None => break,
            }
        }
    }

    /// The kept lines, oldest first, and a receiver of the lines after them.
    pub fn snapshot(&self) -> (Vec<String>, tokio::sync::broadcast::Receiver<String>) {
        let g = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        (g.0.iter().cloned().collect(), self.tx.subscribe())
    }
}
