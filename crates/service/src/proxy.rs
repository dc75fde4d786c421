//! The services data plane: a request for a service goes to its ready instance with the fewest
//! requests in flight, over pooled keep-alive HTTP/1.1 connections, streamed both ways, with
//! WebSocket and other upgrades passed through; queued events reach services the same way
//! ([`EventSink`]). Whoever calls [`forward`] has decided the caller may reach the service.
//!
//! **Architecture Invariant:** whatever the path of a request holds, it goes to the instance's
//! address and nowhere else ([`upstream_uri`]); a private service never sees the platform key
//! ([`upstream_headers`]).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{Service, Services};

/// The bodies the proxy sends (a body that broke off is an I/O error).
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// An instance's answer, streamed to the caller; the request counts as in flight on its
/// instance (and in the service's traffic) until this body ends or is dropped.
#[derive(Debug)]
pub struct Answer {
    body: Option<hyper::body::Incoming>,
    _hold: Option<(crate::EndpointGuard, Served)>,
}

impl Answer {
    fn empty() -> Answer {
        Answer { body: None, _hold: None }
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        match self.body.as_mut() {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.as_ref().map_or_else(|| http_body::SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

/// An empty body.
pub fn empty() -> Body {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// Why a request did not reach a service or got no answer from it.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request's path is not a URI an instance can be sent.
    #[error("the request path is not a valid URI")]
    InvalidPath,
    /// No instance became ready in time (scaled to zero, or all starting).
    #[error("service `{name}` got no ready instance within {wait_ms} ms; `hangar svc get {name}` shows why")]
    NoReadyInstance { name: String, wait_ms: u128 },
    /// The instance did not answer (refused, reset, closed early).
    #[error("service `{name}` (instance at {addr}) did not answer: {why}")]
    Upstream {
        name: String,
        addr: SocketAddr,
        why: String,
        #[source]
        source: Box<hyper_util::client::legacy::Error>,
    },
}

fn client() -> &'static Client<HttpConnector, Body> {
    static CLIENT: OnceLock<Client<HttpConnector, Body>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(connector)
    })
}

const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"];

/// Splits a `/svc/{namespace}/{name}/{rest...}` path into the namespace, the name and the path
/// the service sees (`/{rest...}`); `None` unless both names are there.
pub fn split_route(path: &str) -> Option<(&str, &str, String)> {
    let mut parts = path.strip_prefix("/svc/")?.splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Some((ns, name, format!("/{}", parts.next().unwrap_or("")))),
        _ => None,
    }
}

/// The service a `Host` header names, for calls between services: the port dropped, lowercased.
pub fn host_service(host: &str) -> String {
    host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h).to_ascii_lowercase()
}

/// The URI an instance at `addr` is sent: `path` (which must start with `/`) and the request's
/// query. Whatever the path holds, the request goes to `addr` and nowhere else.
pub fn upstream_uri(addr: SocketAddr, path: &str, query: Option<&str>) -> Result<http::Uri, ProxyError> {
    if !path.starts_with('/') {
        return Err(ProxyError::InvalidPath);
    }
    let path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let path_and_query = http::uri::PathAndQuery::try_from(path_and_query).map_err(|_| ProxyError::InvalidPath)?;
    http::Uri::builder().scheme("http").authority(addr.to_string()).path_and_query(path_and_query).build().map_err(|_| ProxyError::InvalidPath)
}

/// The headers an instance gets: hop-by-hop ones dropped, the platform key kept from a private
/// service, `X-Forwarded-Host`/`-Proto` set unless the gateway set them, `Connection: upgrade`
/// kept for an upgrade.
pub fn upstream_headers(headers: &mut http::HeaderMap, public: bool, upgrade: bool) {
    if !public {
        // The platform key is for Hangar, not for the service.
        headers.remove(http::header::AUTHORIZATION);
    }
    let host = headers.get(http::header::HOST).cloned();
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    if upgrade {
        headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
    }
    // Set by the gateway for a request from outside; a call between services gets them here.
    if let Some(h) = host
        && !headers.contains_key("x-forwarded-host")
    {
        headers.insert("x-forwarded-host", h);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", http::HeaderValue::from_static("http"));
    }
}

/// Sends `req` to the service's ready instance with the fewest requests in flight, at `path`
/// (plus the request's query), and streams the answer back.
pub async fn forward(svc: &Arc<Service>, req: http::Request<Body>, path: &str) -> Result<http::Response<Answer>, ProxyError> {
    forward_to(svc, None, req, path).await
}

/// [`forward`] to `endpoint` when one was picked already (the caller saw it ready).
pub async fn forward_to(
    svc: &Arc<Service>,
    endpoint: Option<crate::EndpointGuard>,
    mut req: http::Request<Body>,
    path: &str,
) -> Result<http::Response<Answer>, ProxyError> {
    // Counted when the answer's body ends (or the request fails first: dropped early).
    let mut served = Served { svc: svc.clone(), start: Instant::now(), failed: true };
    let name = svc.name.clone();
    let endpoint = match endpoint.or_else(|| svc.pick()) {
        Some(e) => e,
        None => {
            // No instance ready (scaled to zero, or all starting): wait for one, as long as
            // an instance may take to become ready.
            let wait = Duration::from_millis(svc.config.read().unwrap_or_else(|p| p.into_inner()).readiness.timeout_ms);
            svc.wait_ready(wait).await.ok_or_else(|| ProxyError::NoReadyInstance { name: name.clone(), wait_ms: wait.as_millis() })?
        }
    };
    let uri = upstream_uri(endpoint.addr(), path, req.uri().query())?;
    let public = svc.config.read().unwrap_or_else(|p| p.into_inner()).public;
    let upgrade = req.headers().contains_key(http::header::UPGRADE);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut head, body) = req.into_parts();
    head.uri = uri;
    upstream_headers(&mut head.headers, public, upgrade);
    // A request that is safe to repeat and has no body may be sent again, twice at most, when
    // the connection failed before an answer (e.g. an instance closed a pooled connection).
    let replay = (!upgrade && http_body::Body::is_end_stream(&body) && matches!(head.method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS))
        .then(|| (head.method.clone(), head.uri.clone(), head.headers.clone(), head.version));
    let mut endpoint = endpoint;
    let mut resp = client().request(http::Request::from_parts(head, body)).await;
    if let Some((method, uri, headers, version)) = replay {
        // Twice more at most, after a short pause each (an instance's network stack, gVisor's
        // above all, may refuse a new connection for a moment under load).
        for pause_ms in [0, 50] {
            if resp.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            endpoint = svc.pick().unwrap_or(endpoint);
            let mut again = http::Request::new(empty());
            *again.method_mut() = method.clone();
            *again.uri_mut() = upstream_uri(endpoint.addr(), uri.path(), uri.query()).unwrap_or_else(|_| uri.clone());
            *again.headers_mut() = headers.clone();
            *again.version_mut() = version;
            resp = client().request(again).await;
        }
    }
    let resp = resp.map_err(|source| {
        // The error's causes say why (refused, reset, closed early).
        let mut why = source.to_string();
        let mut cause = std::error::Error::source(&source);
        while let Some(c) = cause {
            why.push_str(&format!(": {c}"));
            cause = c.source();
        }
        ProxyError::Upstream { name: name.clone(), addr: endpoint.addr(), why, source: Box::new(source) }
    })?;
    served.failed = resp.status().is_server_error();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = client_upgrade
    {
        let (head, body) = resp.into_parts();
        let mut upstream = http::Response::from_parts(head.clone(), body);
        let upstream_side = hyper::upgrade::on(&mut upstream);
        tokio::spawn(async move {
            let _hold = endpoint;
            if let (Ok(a), Ok(b)) = (client_side.await, upstream_side.await) {
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
            }
        });
        return Ok(http::Response::from_parts(head, Answer::empty()));
    }
    let (mut head, body) = resp.into_parts();
    for h in HOP_BY_HOP {
        head.headers.remove(*h);
    }
    // The client's connection is ours, not the backend's: answer in HTTP/1.1 (keep-alive kept)
    // whatever the instance spoke.
    head.version = http::Version::HTTP_11;
    // The request counts as outstanding until its response body ends.
    Ok(http::Response::from_parts(head, Answer { body: Some(body), _hold: Some((endpoint, served)) }))
}

/// Hands queued events to services through the same path as requests.
pub struct EventSink {
    pub services: Arc<Services>,
    pub store: Arc<dyn hangar_store::Store>,
}

/// Most of a service's answer to an event that its record keeps.
const MAX_EVENT_ANSWER: usize = 256 * 1024;

#[async_trait::async_trait]
impl hangar_events::ServiceSink for EventSink {
    async fn deliver(
        &self,
        namespace: &str,
        service: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
        trace: Option<hangar_trace::SpanContext>,
    ) -> Result<(StatusCode, Bytes), hangar_events::SinkError> {
        let Some(svc) = self.services.get(namespace, service) else {
            // Deployed but not running (yet): after a restart services come back in the background.
            return match self.store.get_service(namespace, service).await {
                Ok(Some(_)) => Err(hangar_events::SinkError::Failed(format!("service `{service}` is not running yet"))),
                Ok(None) => Err(hangar_events::SinkError::Missing(service.to_string())),
                Err(e) => Err(hangar_events::SinkError::Failed(e.to_string())),
            };
        };
        let mut req = http::Request::new(full(body));
        *req.method_mut() = http::Method::POST;
        if let Some(v) = content_type.and_then(|c| http::HeaderValue::from_str(c).ok()) {
            req.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        if let Some(ctx) = trace {
            ctx.inject(req.headers_mut());
        }
        let resp = forward(&svc, req, path).await.map_err(|e| hangar_events::SinkError::Failed(e.to_string()))?;
        kept_answer(service, resp).await
    }
}

/// A service's answer to an event, as its record keeps it (256 KiB at most).
pub async fn kept_answer<B>(service: &str, resp: http::Response<B>) -> Result<(StatusCode, Bytes), hangar_events::SinkError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_EVENT_ANSWER);
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        // Delivered; only the record keeps less of the answer.
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Bytes::from_static(b"(an answer over 256 KiB is not kept)"),
        Err(e) => return Err(hangar_events::SinkError::Failed(format!("the answer of service `{service}` broke off: {e}"))),
    };
    Ok((status, bytes))
}

/// One request to a service, counted in its traffic when dropped.
#[derive(Debug)]
struct Served {
    svc: Arc<Service>,
    start: Instant,
    failed: bool,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.svc.traffic.record(self.start, self.failed);
        if let Some(h) = &self.svc.history {
            h.observe(self.start.elapsed().as_micros() as u64, self.failed, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_goes_to_the_instance_whatever_its_path() {
        let addr: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        for path in ["/a", "//evil.example/x", "/@evil.example/", "/a?b"] {
            let uri = upstream_uri(addr, path, Some("q=1")).unwrap();
            assert_eq!(uri.authority().map(|a| a.as_str()), Some("10.0.0.2:8080"), "{path}");
        }
        assert!(matches!(upstream_uri(addr, "evil.example/", None), Err(ProxyError::InvalidPath)));
        assert_eq!(split_route("/svc/ns/web/a/b"), Some(("ns", "web", "/a/b".to_string())));
        assert_eq!(split_route("/svc/ns/web"), Some(("ns", "web", "/".to_string())));
        assert_eq!(split_route("/svc/ns/"), None);
        assert_eq!(host_service("Web:8080"), "web");
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "Bearer k".parse().unwrap());
        h.insert(http::header::HOST, "web".parse().unwrap());
        upstream_headers(&mut h, false, false);
        assert!(h.get(http::header::AUTHORIZATION).is_none() && h["x-forwarded-host"] == "web");
    }
}
