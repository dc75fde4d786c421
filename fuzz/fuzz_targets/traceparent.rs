//! A `traceparent` header from any caller: parsed or ignored, never a panic; whatever parses
//! writes back as a valid version-00 header of the same trace and span, and maps to X-Ray.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(ctx) = hangar_trace::SpanContext::parse(text) else { return };
    let written = ctx.traceparent();
    assert_eq!(written.len(), 55);
    assert_eq!(hangar_trace::SpanContext::parse(&written), Some(ctx));
    assert!(ctx.xray().starts_with("Root=1-"));
    let child = ctx.child();
    assert_eq!(child.trace_id, ctx.trace_id);
});
