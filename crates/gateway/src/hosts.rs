//! Requests by host name: every function and service at `NAME.NAMESPACE.fn.DOMAIN` and
//! `NAME.NAMESPACE.svc.DOMAIN` (whole path, so redirects and cookies work), and at the host
//! names they claim (`--host`); and the `X-Forwarded-*` headers a workload sees.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;

/// The domain workloads get their host names under (`--domain`).
#[derive(Debug, Clone)]
pub struct Domain {
    name: String,
    functions: String,
    services: String,
}

impl Domain {
    /// `name`: a DNS name (`localhost`, `apps.example.com`); refused otherwise.
    pub fn new(name: &str) -> Result<Self, String> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let ok = !name.is_empty()
            && name.len() <= 200
            && name.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        if !ok {
            return Err(format!("`{}` is not a DNS name (e.g. `localhost` or `apps.example.com`)", hangar_api::validate::shown(&name)));
        }
        Ok(Domain { functions: format!(".fn.{name}"), services: format!(".svc.{name}"), name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host name of function `ns/name`.
    pub fn function_host(&self, ns: &str, name: &str) -> String {
        format!("{name}.{ns}{}", self.functions)
    }

    /// The host name of service `ns/name`.
    pub fn service_host(&self, ns: &str, name: &str) -> String {
        format!("{name}.{ns}{}", self.services)
    }

    fn target<'a>(&self, host: &'a str) -> Option<Target<'a>> {
        let split = |rest: &'a str| rest.split_once('.').filter(|(n, ns)| !n.is_empty() && !ns.is_empty());
        if let Some(rest) = host.strip_suffix(self.functions.as_str()) {
            return Some(split(rest).map_or(Target::Malformed, |(name, ns)| Target::Function(ns, name)));
        }
        if let Some(rest) = host.strip_suffix(self.services.as_str()) {
            return Some(split(rest).map_or(Target::Malformed, |(name, ns)| Target::Service(ns, name)));
        }
        None
    }
}

impl Default for Domain {
    fn default() -> Self {
        Domain::new("localhost").unwrap_or_else(|_| unreachable!("localhost is a DNS name"))
    }
}

/// Where the caller reached this server (the `Host` of its request): the base of the URLs
/// answers show.
pub struct Base {
    host: String,
    /// `:PORT` of that host, or empty.
    port: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Base {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let host = parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).filter(|h| h.parse::<http::uri::Authority>().is_ok());
        let host = host.unwrap_or("localhost").to_string();
        let port = host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(String::new(), |(_, p)| format!(":{p}"));
        Ok(Base { host, port })
    }
}

impl Base {
    /// The URLs function `ns/name` answers on.
    pub fn function_urls(&self, domain: &Domain, ns: &str, name: &str, claimed: &[String]) -> Vec<String> {
        self.urls("fn", &domain.function_host(ns, name), ns, name, claimed)
    }

    /// The URLs service `ns/name` answers on.
    pub fn service_urls(&self, domain: &Domain, ns: &str, name: &str, claimed: &[String]) -> Vec<String> {
        self.urls("svc", &domain.service_host(ns, name), ns, name, claimed)
    }

    fn urls(&self, route: &str, own: &str, ns: &str, name: &str, claimed: &[String]) -> Vec<String> {
        let mut urls = vec![format!("http://{}/{route}/{ns}/{name}/", self.host), format!("http://{own}{}/", self.port)];
        urls.extend(claimed.iter().map(|h| format!("http://{h}{}/", self.port)));
        urls
    }
}

/// What a host under the domain names.
enum Target<'a> {
    Function(&'a str, &'a str),
    Service(&'a str, &'a str),
    Malformed,
}

/// The `Host` of a request without its port, lowercased.
fn host_of(req: &Request) -> Option<std::borrow::Cow<'_, str>> {
    let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
    let name = host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
    // Every request passes here: no copy unless the name has capitals.
    Some(match name.bytes().any(|b| b.is_ascii_uppercase()) {
        true => std::borrow::Cow::Owned(name.to_ascii_lowercase()),
        false => std::borrow::Cow::Borrowed(name),
    })
}

/// Whether a request names a workload by its host (its own name, or one it claims).
pub(crate) fn is_workload_host(state: &AppState, req: &Request) -> bool {
    let Some(host) = host_of(req) else { return false };
    state.domain.target(&host).is_some() || state.scheduler.by_host(&host).is_some() || state.services.as_ref().is_some_and(|s| s.by_host(&host).is_some())
}

/// Where a host name routes.
enum Routed {
    Function(String, String),
    /// A service by its own name: whoever serves it checks the caller.
    Service(String, String),
    /// A service by a host it claims, and whether it is public.
    Claimed(String, String, bool),
    Malformed(String),
}

/// Requests for a workload's host name go to it, whole path; the workloads' own host names
/// come first, so a claimed host can never take one of them. Others pass on (with no copy).
pub async fn route(State(state): State<AppState>, req: Request, next: axum::middleware::Next) -> Response {
    // Between nodes the `Host` asked for is kept; the path says where the request goes.
    if req.uri().path().starts_with("/_hangar/") {
        return next.run(req).await;
    }
    let routed = {
        let Some(host) = host_of(&req) else { return next.run(req).await };
        match state.domain.target(&host) {
            Some(Target::Function(ns, name)) => Routed::Function(ns.to_string(), name.to_string()),
            Some(Target::Service(ns, name)) => Routed::Service(ns.to_string(), name.to_string()),
            Some(Target::Malformed) => Routed::Malformed(host.into_owned()),
            None => match (state.scheduler.by_host(&host), state.services.as_ref().and_then(|s| s.by_host(&host))) {
                (Some(slot), _) => Routed::Function(slot.deployment().namespace.clone(), slot.deployment().name.clone()),
                (None, Some(svc)) => {
                    let public = svc.config.read().unwrap_or_else(|p| p.into_inner()).public;
                    Routed::Claimed(svc.namespace.clone(), svc.name.clone(), public)
                }
                (None, None) => return next.run(req).await,
            },
        }
    };
    let path = req.uri().path().to_string();
    let answer = match routed {
        Routed::Function(ns, name) => crate::invoke::serve_function(&state, &ns, &name, req, &path, None).await,
        Routed::Service(ns, name) => crate::services::serve_by_host(&state, req, &ns, &name, None).await,
        Routed::Claimed(ns, name, public) => crate::services::serve_by_host(&state, req, &ns, &name, Some(public)).await,
        Routed::Malformed(host) => Err(ApiError::not_found(format_args!(
            "host `{host}`: a workload's host name is NAME.NAMESPACE{} or NAME.NAMESPACE{}",
            state.domain.functions, state.domain.services
        ))),
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// Sets the `X-Forwarded-*` headers of a request from outside, as the edge proxy in front of
/// the workload: the peer's address appended to `X-Forwarded-For`; `X-Forwarded-Host` (the
/// `Host` asked for) and `X-Forwarded-Proto` replaced; `X-Forwarded-Prefix` the route's prefix
/// (`/fn/NS/NAME`), or removed on a host route.
pub(crate) fn set_forwarded(head: &mut http::request::Parts, prefix: Option<&str>) {
    let h = &mut head.headers;
    if let Some(ConnectInfo(peer)) = head.extensions.get::<ConnectInfo<SocketAddr>>() {
        let ip = peer.ip().to_canonical().to_string();
        let chain = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty()) {
            Some(before) => format!("{before}, {ip}"),
            None => ip,
        };
        if let Ok(v) = http::HeaderValue::from_str(&chain) {
            h.insert("x-forwarded-for", v);
        }
    }
    match h.get(http::header::HOST).cloned() {
        Some(host) => h.insert("x-forwarded-host", host),
        None => h.remove("x-forwarded-host"),
    };
    h.insert("x-forwarded-proto", http::HeaderValue::from_static("http"));
    match prefix.and_then(|p| http::HeaderValue::from_str(p).ok()) {
        Some(p) => h.insert("x-forwarded-prefix", p),
        None => h.remove("x-forwarded-prefix"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_under_the_domain_name_a_workload() {
        let d = Domain::new("Apps.Example.com.").unwrap();
        assert_eq!(d.function_host("team", "hello"), "hello.team.fn.apps.example.com");
        assert!(matches!(d.target("hello.team.fn.apps.example.com"), Some(Target::Function("team", "hello"))));
        assert!(matches!(d.target("web.team.svc.apps.example.com"), Some(Target::Service("team", "web"))));
        assert!(matches!(d.target("hello.fn.apps.example.com"), Some(Target::Malformed)));
        assert!(matches!(d.target(".team.fn.apps.example.com"), Some(Target::Malformed)));
        assert!(d.target("apps.example.com").is_none() && d.target("hello.team.fn.other.com").is_none());
        assert!(Domain::new("bad_domain").is_err() && Domain::new("").is_err() && Domain::new("a..b").is_err());
    }

    #[test]
    fn forwarded_headers_say_what_the_client_asked_for() {
        let mut req = http::Request::get("/x").header("host", "web.default.svc.localhost:7070").header("x-forwarded-for", "10.0.0.9");
        req = req.header("x-forwarded-host", "evil.example").header("x-forwarded-prefix", "/evil");
        let (mut head, ()) = req.body(()).unwrap().into_parts();
        head.extensions.insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 5555))));
        set_forwarded(&mut head, None);
        let h = &head.headers;
        assert_eq!(h["x-forwarded-for"], "10.0.0.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "web.default.svc.localhost:7070");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("x-forwarded-prefix").is_none());
        set_forwarded(&mut head, Some("/svc/default/web"));
        assert_eq!(head.headers["x-forwarded-prefix"], "/svc/default/web");
    }
}
