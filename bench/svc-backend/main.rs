//! The benchmark's service backend: a small keep-alive HTTP/1.1 server (std only, built
//! static for musl so an image needs nothing else) answering `ok` to every request on $PORT.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn serve(conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    let mut line = String::new();
    loop {
        // Request line and headers; bodies are not expected (GET).
        let mut content_length = 0usize;
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            if !first {
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        content_length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            first = false;
        }
        if content_length > 0 {
            let mut body = vec![0u8; content_length];
            std::io::Read::read_exact(&mut reader, &mut body)?;
        }
        out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")?;
    }
}

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = serve(conn);
        });
    }
}
