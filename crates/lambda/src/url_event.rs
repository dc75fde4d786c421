//! Lambda function-URL events: an HTTP request becomes the payload format 2.0 event, and the
//! handler's result becomes the HTTP response, with the rules Lambda applies:
//! a JSON object with `statusCode` is a structured response (`headers`, `cookies`, `body`,
//! `isBase64Encoded`); any other JSON value is the body of a `200 application/json` response.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Map, Value, json};

/// What the event is made from.
#[derive(Debug)]
pub struct UrlRequest<'a> {
    pub method: &'a str,
    /// The path the function sees, e.g. `/users/7`.
    pub raw_path: &'a str,
    /// The query without `?`, or empty.
    pub raw_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub source_ip: &'a str,
    pub request_id: &'a str,
    /// The function name, used where Lambda puts the URL id.
    pub api_id: &'a str,
    /// The `Host` the request came to.
    pub domain: &'a str,
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// The payload format 2.0 event.
pub fn to_event(r: &UrlRequest<'_>) -> Value {
    let mut headers = Map::new();
    let mut cookies = Vec::new();
    for name in r.headers.keys() {
        let values: Vec<&str> = r.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        if name == http::header::COOKIE {
            cookies.extend(values.iter().flat_map(|v| v.split(';')).map(|c| c.trim().to_string()).filter(|c| !c.is_empty()));
            continue;
        }
        headers.insert(name.as_str().to_string(), Value::String(values.join(",")));
    }
    let mut query = Map::new();
    for pair in r.raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        match query.get_mut(&k) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&v);
            }
            _ => {
                query.insert(k, Value::String(v));
            }
        }
    }
    let (body, is_b64) = match std::str::from_utf8(r.body) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (B64.encode(r.body), true),
    };
    let user_agent = r.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": r.raw_path,
        "rawQueryString": r.raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": r.api_id,
            "domainName": r.domain,
            "domainPrefix": r.domain.split('.').next().unwrap_or(r.domain),
            "http": {
                "method": r.method,
                "path": r.raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": r.source_ip,
                "userAgent": user_agent,
            },
            "requestId": r.request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": clf_time(r.time_ms),
            "timeEpoch": r.time_ms,
        },
        "isBase64Encoded": is_b64,
    });
    let obj = event.as_object_mut().expect("a JSON object literal");
    if !cookies.is_empty() {
        obj.insert("cookies".into(), json!(cookies));
    }
    if !query.is_empty() {
        obj.insert("queryStringParameters".into(), Value::Object(query));
    }
    if !r.body.is_empty() {
        obj.insert("body".into(), Value::String(body));
    }
    event
}

/// `12/Mar/2020:19:03:58 +0000`, as Lambda writes `requestContext.time`.
fn clf_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000");
    t.format(&fmt).unwrap_or_default()
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a handler's result cannot become an HTTP response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResultError {
    #[error("the function's result is not JSON: {0}")]
    NotJson(String),
    #[error("the function's result has an invalid `{field}`: {why}")]
    Invalid { field: &'static str, why: String },
}

/// The HTTP response for a handler's result.
pub fn to_response(result: &[u8]) -> Result<http::Response<Bytes>, ResultError> {
    let value: Value = serde_json::from_slice(result).map_err(|e| ResultError::NotJson(e.to_string()))?;
    let structured = value.as_object().filter(|o| o.contains_key("statusCode"));
    let Some(obj) = structured else {
        let mut resp = http::Response::new(Bytes::copy_from_slice(result));
        resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(resp);
    };
    let invalid = |field: &'static str, why: &str| ResultError::Invalid { field, why: why.to_string() };
    let status = obj["statusCode"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| invalid("statusCode", "not an HTTP status number"))?;
    let b64 = obj.get("isBase64Encoded").and_then(Value::as_bool).unwrap_or(false);
    let body = match obj.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if b64 => Bytes::from(B64.decode(s).map_err(|e| invalid("body", &format!("not base64: {e}")))?),
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(other) => Bytes::from(other.to_string()),
    };
    let mut resp = http::Response::new(body);
    *resp.status_mut() = status;
    if let Some(headers) = obj.get("headers") {
        let map = headers.as_object().ok_or_else(|| invalid("headers", "not an object"))?;
        for (k, v) in map {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| invalid("headers", &format!("`{k}` is not a header name")))?;
            let value = HeaderValue::from_str(&text).map_err(|_| invalid("headers", &format!("value of `{k}` is not a header value")))?;
            resp.headers_mut().append(name, value);
        }
    }
    if let Some(cookies) = obj.get("cookies") {
        let list = cookies.as_array().ok_or_else(|| invalid("cookies", "not an array"))?;
        for c in list {
            let c = c.as_str().ok_or_else(|| invalid("cookies", "an entry is not a string"))?;
            let v = HeaderValue::from_str(c).map_err(|_| invalid("cookies", "an entry is not a header value"))?;
            resp.headers_mut().append(http::header::SET_COOKIE, v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_becomes_payload_v2() {
        let mut h = HeaderMap::new();
        h.insert("user-agent", HeaderValue::from_static("curl/8"));
        h.insert("cookie", HeaderValue::from_static("a=1; b=2"));
        h.append("x-multi", HeaderValue::from_static("one"));
        h.append("x-multi", HeaderValue::from_static("two"));
        let r = UrlRequest {
            method: "POST",
            raw_path: "/users/7",
            raw_query: "q=hello%20world&tag=a&tag=b&plus=x+y",
            headers: &h,
            body: b"{\"x\":1}",
            source_ip: "127.0.0.1",
            request_id: "req-1",
            api_id: "users",
            domain: "localhost",
            time_ms: 1_583_348_638_390,
        };
        let e = to_event(&r);
        assert_eq!(e["version"], "2.0");
        assert_eq!(e["rawPath"], "/users/7");
        assert_eq!(e["rawQueryString"], "q=hello%20world&tag=a&tag=b&plus=x+y");
        assert_eq!(e["queryStringParameters"], json!({"q": "hello world", "tag": "a,b", "plus": "x y"}));
        assert_eq!(e["headers"]["x-multi"], "one,two");
        assert!(e["headers"].get("cookie").is_none());
        assert_eq!(e["cookies"], json!(["a=1", "b=2"]));
        assert_eq!(e["requestContext"]["http"]["method"], "POST");
        assert_eq!(e["requestContext"]["http"]["userAgent"], "curl/8");
        assert_eq!(e["requestContext"]["time"], "04/Mar/2020:19:03:58 +0000");
        assert_eq!(e["requestContext"]["timeEpoch"], 1_583_348_638_390i64);
        assert_eq!(e["body"], "{\"x\":1}");
        assert_eq!(e["isBase64Encoded"], false);
        let binary = UrlRequest { body: &[0xff, 0x00, 0x10], ..r };
        let e = to_event(&binary);
        assert_eq!(e["isBase64Encoded"], true);
        assert_eq!(e["body"], "/wAQ");
    }

    #[test]
    fn results_become_responses() {
        let r = to_response(br#"{"statusCode":201,"headers":{"x-a":"1","content-type":"text/plain"},"cookies":["s=1; Path=/"],"body":"made"}"#).unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers()["set-cookie"], "s=1; Path=/");
        assert_eq!(r.body(), "made");
        let r = to_response(br#"{"statusCode":200,"body":"aGk=","isBase64Encoded":true}"#).unwrap();
        assert_eq!(r.body(), "hi");
        let r = to_response(br#"{"message":"hello"}"#).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.body(), r#"{"message":"hello"}"#);
        assert_eq!(to_response(b"42").unwrap().body(), "42");
        assert!(matches!(to_response(b"not json"), Err(ResultError::NotJson(_))));
        assert!(matches!(to_response(br#"{"statusCode":"x"}"#), Err(ResultError::Invalid { field: "statusCode", .. })));
        assert!(matches!(to_response(br#"{"statusCode":200,"headers":[]}"#), Err(ResultError::Invalid { field: "headers", .. })));
        assert_eq!(percent_decode("100%25+off%2"), "100% off%2");
    }
}
