//! W3C trace context (`traceparent`): parsed from what callers send, made for what a hop
//! passes on, and written as AWS X-Ray's trace header for Lambda code.

use std::fmt;

/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header.
pub const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` passed on (the W3C limit is 32 members of at most 256 characters; a
/// longer one is dropped, as the spec allows).
pub const MAX_TRACESTATE: usize = 512;

/// A trace's id: 16 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// A span's id: 8 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    pub fn random() -> TraceId {
        loop {
            let id: [u8; 16] = rand::random();
            if id != [0; 16] {
                return TraceId(id);
            }
        }
    }

    /// 32 lowercase hex digits; `None` for anything else or all zeros.
    pub fn parse(hex_id: &str) -> Option<TraceId> {
        let mut id = [0u8; 16];
        lower_hex(hex_id, &mut id)?;
        (id != [0; 16]).then_some(TraceId(id))
    }

    /// Where this id falls in `0..u64::MAX` (its last 8 bytes, random in W3C ids): the same
    /// on every node, so a ratio samples whole traces.
    pub fn ratio_key(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(b)
    }
}

impl SpanId {
    pub fn random() -> SpanId {
        loop {
            let id: [u8; 8] = rand::random();
            if id != [0; 8] {
                return SpanId(id);
            }
        }
    }

    /// 16 lowercase hex digits; `None` for anything else or all zeros.
    pub fn parse(hex_id: &str) -> Option<SpanId> {
        let mut id = [0u8; 8];
        lower_hex(hex_id, &mut id)?;
        (id != [0; 8]).then_some(SpanId(id))
    }
}

/// Decodes lowercase hex of exactly `out.len()` bytes (W3C ids are lowercase).
fn lower_hex(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    hex::decode_to_slice(s, out).ok()
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where a span is: its trace, its own id, and whether the trace is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

impl SpanContext {
    /// The first span of a new trace.
    pub fn root(sampled: bool) -> SpanContext {
        SpanContext { trace_id: TraceId::random(), span_id: SpanId::random(), sampled }
    }

    /// A new span in the same trace (its parent is `self`).
    pub fn child(&self) -> SpanContext {
        SpanContext { trace_id: self.trace_id, span_id: SpanId::random(), sampled: self.sampled }
    }

    /// A `traceparent` value as W3C Trace Context level 1 defines it; `None` for anything
    /// malformed (the caller starts a new trace, it never refuses the request).
    pub fn parse(value: &str) -> Option<SpanContext> {
        let value = value.trim_matches([' ', '\t']);
        if !value.is_ascii() {
            return None;
        }
        let version = value.get(..2)?;
        let mut v = [0u8; 1];
        lower_hex(version, &mut v)?;
        match v[0] {
            0xff => return None,
            // Version 00 is exactly 55 characters; a later version may add fields after a dash.
            0x00 if value.len() != 55 => return None,
            _ if value.len() < 55 || (value.len() > 55 && value.as_bytes()[55] != b'-') => return None,
            _ => {}
        }
        let b = value.as_bytes();
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let trace_id = TraceId::parse(&value[3..35])?;
        let span_id = SpanId::parse(&value[36..52])?;
        let mut flags = [0u8; 1];
        lower_hex(&value[53..55], &mut flags)?;
        Some(SpanContext { trace_id, span_id, sampled: flags[0] & 1 == 1 })
    }

    /// This span as the `traceparent` of a request it sends.
    pub fn traceparent(&self) -> String {
        String::from_utf8_lossy(&self.traceparent_bytes()).into_owned()
    }

    /// [`SpanContext::traceparent`] without an allocation.
    fn traceparent_bytes(&self) -> [u8; 55] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, b) in self.trace_id.0.iter().enumerate() {
            out[3 + 2 * i] = HEX[usize::from(b >> 4)];
            out[4 + 2 * i] = HEX[usize::from(b & 15)];
        }
        for (i, b) in self.span_id.0.iter().enumerate() {
            out[36 + 2 * i] = HEX[usize::from(b >> 4)];
            out[37 + 2 * i] = HEX[usize::from(b & 15)];
        }
        if self.sampled {
            out[54] = b'1';
        }
        out
    }

    /// This span as a `traceparent` header value.
    pub fn header(&self) -> http::HeaderValue {
        http::HeaderValue::from_bytes(&self.traceparent_bytes())
            .unwrap_or_else(|_| http::HeaderValue::from_static("00-00000000000000000000000000000000-0000000000000000-00"))
    }

    /// This span as AWS X-Ray's trace header (`Lambda-Runtime-Trace-Id`, `_X_AMZN_TRACE_ID`):
    /// a W3C trace id's first 8 hex digits are X-Ray's epoch part, the other 24 its random part.
    pub fn xray(&self) -> String {
        let t = self.trace_id.to_string();
        format!("Root=1-{}-{};Parent={};Sampled={}", &t[..8], &t[8..], self.span_id, u8::from(self.sampled))
    }

    /// The context a request carries in its `traceparent` header, if valid.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<SpanContext> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let first = values.next()?;
        // More than one traceparent: ambiguous, so none.
        if values.next().is_some() {
            return None;
        }
        SpanContext::parse(first.to_str().ok()?)
    }

    /// Sets `traceparent` to this span (and drops a `tracestate` too long to pass on).
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        headers.insert(TRACEPARENT, self.header());
        if headers.get(TRACESTATE).is_some_and(|v| v.len() > MAX_TRACESTATE) || headers.get_all(TRACESTATE).iter().count() > 1 {
            headers.remove(TRACESTATE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips_and_maps_to_xray() {
        let c = SpanContext::parse(GOOD).unwrap();
        assert!(c.sampled);
        assert_eq!(c.traceparent(), GOOD);
        assert_eq!(c.header(), GOOD);
        assert_eq!(SpanContext { sampled: false, ..c }.traceparent(), GOOD.replace("-01", "-00"));
        assert_eq!(c.xray(), "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1");
        let child = c.child();
        assert_eq!((child.trace_id, child.sampled), (c.trace_id, true));
        assert_ne!(child.span_id, c.span_id);
        // A later version may carry more fields after a dash.
        assert!(SpanContext::parse(&format!("01{}-extra", &GOOD[2..])).is_some());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00",
            "garbage",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-\u{e9}",
        ] {
            assert!(SpanContext::parse(bad).is_none(), "{bad:?}");
        }
        let mut h = http::HeaderMap::new();
        h.append(TRACEPARENT, GOOD.parse().unwrap());
        assert!(SpanContext::from_headers(&h).is_some());
        h.append(TRACEPARENT, GOOD.parse().unwrap());
        assert!(SpanContext::from_headers(&h).is_none(), "two traceparents are ambiguous");
    }
}
