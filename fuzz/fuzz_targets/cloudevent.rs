//! A topic publish (CloudEvents binary mode): `ce-*` and `content-type` headers checked, the
//! event wrapped in structured mode; always one JSON object with the spec's required
//! attributes, JSON data kept as JSON, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Four header values, one per line, then the data.
    let mut parts = data.splitn(5, |&b| b == b'\n');
    let mut headers = http::HeaderMap::new();
    for name in ["ce-id", "ce-type", "ce-source", "content-type"] {
        if let Some(v) = parts.next().filter(|v| !v.is_empty())
            && let Ok(v) = http::HeaderValue::from_bytes(v)
        {
            headers.insert(name, v);
        }
    }
    let body = parts.next().unwrap_or_default();
    let Ok(meta) = hangar_events::EventMeta::from_headers(&headers) else { return };
    let id = meta.id.as_deref().unwrap_or("generated");
    let event = hangar_events::triggers::cloudevent(id, meta.source.as_deref().unwrap_or("/s"), meta.kind.as_deref().unwrap_or("t"), 0, meta.content_type.as_deref(), body);
    let v: serde_json::Value = serde_json::from_slice(&event).expect("a CloudEvent is JSON");
    for attr in ["specversion", "id", "source", "type"] {
        assert!(v[attr].is_string(), "no {attr}");
    }
    if let Some(d) = v.get("data")
        && v["datacontenttype"] == "application/json"
    {
        assert_eq!(d, &serde_json::from_slice::<serde_json::Value>(body).expect("JSON data"));
    }
});
