//! A guest's stdout and stderr: one bounded in-memory buffer per invocation, cut with a marker.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hangar_runtime::LogBuffer;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Shared by the guest's stdout and stderr; writes past the bound are dropped, never failed,
/// so a chatty guest keeps running.
#[derive(Clone)]
pub struct LogSink {
    buf: Arc<Mutex<LogBuffer>>,
}

impl LogSink {
    pub fn new(cap: usize) -> Self {
        LogSink { buf: Arc::new(Mutex::new(LogBuffer::new(cap))) }
    }

    pub fn append(&self, bytes: &[u8]) {
        self.buf.lock().unwrap_or_else(|p| p.into_inner()).append(bytes);
    }

    /// The logs so far as text (invalid UTF-8 replaced), with a marker when cut; empties the sink.
    pub fn take(&self) -> (String, bool) {
        self.buf.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogSink {
    async fn ready(&mut self) {}
}

impl OutputStream for LogSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LogSink {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_with_marker() {
        let s = LogSink::new(8);
        s.append(b"hello ");
        s.append(b"world");
        let (text, cut) = s.take();
        assert!(cut);
        assert!(text.starts_with("hello wo\n[hangar: logs truncated at 8 bytes]"), "{text}");
        let s = LogSink::new(64);
        s.append(b"ok\n");
        assert_eq!(s.take(), ("ok\n".to_string(), false));
    }
}
