//! The benchmark's and tests' service backend: a small keep-alive HTTP/1.1 server (std only,
//! built static so an image needs nothing else) on $PORT. `GET /stream` answers three chunks
//! 300 ms apart; `GET /sleep/N` answers `ok` after N ms; a request with `Upgrade:` is switched
//! (101) to echoing raw bytes; anything else gets `ok`.

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
        let mut upgrade = false;
        let mut path = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            if first {
                path = line.split(' ').nth(1).unwrap_or("/").to_string();
            } else if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
                if k.eq_ignore_ascii_case("upgrade") {
                    upgrade = true;
                }
            }
            first = false;
        }
        if content_length > 0 {
            let mut body = vec![0u8; content_length];
            std::io::Read::read_exact(&mut reader, &mut body)?;
        }
        if upgrade {
            out.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")?;
            // Whatever was read ahead, then the rest of the connection, echoed.
            let ahead = reader.buffer().to_vec();
            out.write_all(&ahead)?;
            let mut raw = reader.into_inner();
            std::io::copy(&mut raw, &mut out)?;
            return Ok(());
        }
        if path == "/stream" {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            for i in 1..=3 {
                let chunk = format!("chunk {i}\n");
                out.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())?;
                out.flush()?;
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            out.write_all(b"0\r\n\r\n")?;
            continue;
        }
        if let Some(ms) = path.strip_prefix("/sleep/").and_then(|n| n.parse::<u64>().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms.min(60_000)));
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
