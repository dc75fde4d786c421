//! Outbound access for process functions: an HTTP proxy that Hangar serves inside an
//! instance's network namespace (the instance's only way out) and that lets through only the
//! function's `allow_outbound` hosts. `CONNECT host:port` (HTTPS and any TLS) is tunnelled;
//! plain HTTP in absolute form (`GET http://host/path`) is forwarded one request per
//! connection. Instances find it through `HTTP_PROXY`/`HTTPS_PROXY`, which common clients
//! (Python's urllib and requests, botocore, curl) honour; Hangar's Node shim routes Node's
//! built-in `http`, `https` and `fetch` through it too.

use std::sync::Arc;
use std::time::Duration;

use hangar_api::validate::outbound_allowed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;
/// Longest wait for an upstream connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the proxy on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, allowed: Arc<Vec<String>>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else { return };
        let allowed = allowed.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(conn, &allowed).await {
                tracing::debug!("egress proxy: {e}");
            }
        });
    }
}

async fn reply(conn: &mut TcpStream, status: &str, message: &str) -> std::io::Result<()> {
    let body = format!("{message}\n");
    let head = format!("HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await
}

/// `host` and `port` of an authority (`host:port`, `[v6]:port` or `host` with a default port).
fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, p.parse().ok()?),
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    (!host.is_empty()).then_some((host, port))
}

async fn handle(mut conn: TcpStream, allowed: &[String]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return reply(&mut conn, "431 Request Header Fields Too Large", "hangar egress: request head too large").await;
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target, version) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or("HTTP/1.1"));

    let (host, port, rewritten) = if method.eq_ignore_ascii_case("CONNECT") {
        let Some((host, port)) = split_authority(target, 443) else {
            return reply(&mut conn, "400 Bad Request", "hangar egress: CONNECT needs host:port").await;
        };
        (host, port, None)
    } else {
        let Some(rest) = target.strip_prefix("http://") else {
            return reply(&mut conn, "400 Bad Request", "hangar egress: send absolute http:// URLs or use CONNECT (set HTTP_PROXY/HTTPS_PROXY)").await;
        };
        let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
        let Some((host, port)) = split_authority(authority, 80) else {
            return reply(&mut conn, "400 Bad Request", "hangar egress: the URL has no host").await;
        };
        // One request per upstream connection: the client may send the next one elsewhere.
        let mut out = format!("{method} {path} {version}\r\n");
        for line in lines.filter(|l| !l.is_empty()) {
            let name = line.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
            if name != "connection" && name != "proxy-connection" && name != "proxy-authorization" && name != "keep-alive" {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        out.push_str("connection: close\r\n\r\n");
        (host, port, Some(out))
    };
    if !outbound_allowed(allowed, &host, port) {
        let msg = format!("hangar egress: {host}:{port} is not in this function's allow_outbound");
        return reply(&mut conn, "403 Forbidden", &msg).await;
    }
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return reply(&mut conn, "502 Bad Gateway", &format!("hangar egress: connecting to {host}:{port}: {e}")).await,
        Err(_) => return reply(&mut conn, "504 Gateway Timeout", &format!("hangar egress: {host}:{port} did not accept within 10 s")).await,
    };
    let mut upstream = upstream;
    match rewritten {
        None => conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await?,
        Some(head) => upstream.write_all(head.as_bytes()).await?,
    }
    upstream.write_all(&buf[head_end..]).await?;
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(split_authority("Api.Example.com:8443", 443), Some(("api.example.com".into(), 8443)));
        assert_eq!(split_authority("example.com", 80), Some(("example.com".into(), 80)));
        assert_eq!(split_authority("[::1]:9000", 80), Some(("::1".into(), 9000)));
        assert_eq!(split_authority(":80", 80), None);
    }

    #[tokio::test]
    async fn only_allowed_hosts_get_through() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = upstream.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = upstream.accept().await {
                let mut b = [0u8; 1024];
                let n = c.read(&mut b).await.unwrap_or(0);
                let asked = String::from_utf8_lossy(&b[..n]).lines().next().unwrap_or("").to_string();
                let body = format!("upstream saw {asked}");
                let _ = c.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes()).await;
            }
        });
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = proxy.local_addr().unwrap();
        tokio::spawn(serve(proxy, Arc::new(vec![format!("127.0.0.1:{port}")])));
        let ask = |req: String| async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = ask(format!("GET http://127.0.0.1:{port}/x?y=1 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")).await;
        assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("upstream saw GET /x?y=1 HTTP/1.1"), "{ok}");
        let denied = ask(format!("GET http://127.0.0.1:{}/ HTTP/1.1\r\n\r\n", port + 1)).await;
        assert!(denied.starts_with("HTTP/1.1 403") && denied.contains("allow_outbound"), "{denied}");
        let denied = ask("CONNECT example.com:443 HTTP/1.1\r\n\r\n".into()).await;
        assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
        let tunnel = ask(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nGET /t HTTP/1.1\r\n\r\n")).await;
        assert!(tunnel.starts_with("HTTP/1.1 200 Connection Established") && tunnel.contains("upstream saw GET /t"), "{tunnel}");
    }
}
