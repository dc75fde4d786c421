//! A bounded log buffer for one invocation: writes past the bound are dropped (never failed,
//! so chatty code keeps running) and the text ends with a marker saying it was cut.

/// See the module docs.
#[derive(Debug, Default)]
pub struct LogBuffer {
    data: Vec<u8>,
    truncated: bool,
    cap: usize,
}

impl LogBuffer {
    pub fn new(cap: usize) -> Self {
        LogBuffer { data: Vec::new(), truncated: false, cap }
    }

    pub fn append(&mut self, bytes: &[u8]) {
        let room = self.cap.saturating_sub(self.data.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.data.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Bytes kept so far.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The logs as text (invalid UTF-8 replaced), with a marker when cut; empties the buffer.
    pub fn take(&mut self) -> (String, bool) {
        let mut text = String::from_utf8_lossy(&self.data).into_owned();
        let truncated = std::mem::take(&mut self.truncated);
        if truncated {
            if !text.ends_with('\n') && !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&format!("[hangar: logs truncated at {} bytes]\n", self.cap));
        }
        self.data.clear();
        (text, truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_a_marker() {
        let mut b = LogBuffer::new(8);
        b.append(b"hello ");
        b.append(b"world");
        let (text, cut) = b.take();
        assert!(cut);
        assert_eq!(text, "hello wo\n[hangar: logs truncated at 8 bytes]\n");
        b.append(b"ok\n");
        assert_eq!(b.take(), ("ok\n".to_string(), false));
    }
}
