//! A request's path, query and `Host` as the services proxy routes them: `/svc/{ns}/{name}/...`
//! split, the path rewritten for the instance, the service named by `Host`. Whatever the input,
//! the instance's URI points at the instance and nowhere else, and the platform key never
//! reaches a private service.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (target, host) = text.split_once('\n').unwrap_or((&text, ""));
    // As hyper hands it over: a request target that parsed.
    let Ok(uri) = target.parse::<http::Uri>() else { return };
    let addr: std::net::SocketAddr = "10.77.0.2:8080".parse().expect("an address");
    let check = |path: &str| {
        if let Ok(up) = hangar_service::proxy::upstream_uri(addr, path, uri.query()) {
            assert_eq!(up.authority().map(|a| a.as_str()), Some("10.77.0.2:8080"), "{target} went to {up}");
            assert_eq!(up.scheme_str(), Some("http"));
            assert!(up.path().starts_with('/'));
        }
    };
    if let Some((ns, name, rest)) = hangar_service::proxy::split_route(uri.path()) {
        assert!(!ns.is_empty() && !name.is_empty() && !ns.contains('/') && !name.contains('/'));
        assert!(rest.starts_with('/'));
        check(&rest);
    }
    check(uri.path());
    let _ = hangar_service::proxy::host_service(host);
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static("Bearer hk_secret"));
    if let Ok(h) = http::HeaderValue::from_str(host) {
        headers.insert(http::header::HOST, h);
    }
    hangar_service::proxy::upstream_headers(&mut headers, false, false);
    assert!(!headers.contains_key(http::header::AUTHORIZATION));
});
