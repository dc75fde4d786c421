//! `hangar sandbox exec -t`: an interactive command on a terminal in a sandbox, over the API's
//! WebSocket. The local terminal is in raw mode while it runs (keystrokes go through as they
//! are typed, Ctrl-C included) and its size is followed; the command's exit code is returned.

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use hangar_api::sandboxes::{ExecFrame, TtyControl, TtyRequest};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::client::{Client, Failure};

/// Puts the local terminal in raw mode until dropped.
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawMode(None);
        }
        let Ok(saved) = rustix::termios::tcgetattr(&stdin) else { return RawMode(None) };
        let mut raw = saved.clone();
        raw.make_raw();
        if rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, saved);
        }
    }
}

/// The local terminal's size (columns, rows), or 80 × 24 when there is none.
fn size() -> (u16, u16) {
    rustix::termios::tcgetwinsize(std::io::stdout()).ok().filter(|w| w.ws_col > 0 && w.ws_row > 0).map_or((80, 24), |w| (w.ws_col, w.ws_row))
}

/// Runs `req` (its size filled in here) on a terminal in the sandbox at `path`.
pub async fn run(client: &Client, path_and_query: &str, mut req: TtyRequest) -> Result<i32> {
    (req.cols, req.rows) = size();
    let (mut socket, _) = match tokio_tungstenite::connect_async(client.websocket(path_and_query)?).await {
        Ok(s) => s,
        Err(tungstenite::Error::Http(resp)) => {
            let status = reqwest::StatusCode::from_u16(resp.status().as_u16()).unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
            let body = resp.body().as_deref().unwrap_or_default();
            let failure = match serde_json::from_slice::<hangar_api::ErrorBody>(body) {
                Ok(b) => Failure::Api { status, code: b.error.code, message: b.error.message },
                Err(_) => Failure::Api { status, code: "http_error".into(), message: String::from_utf8_lossy(body).trim().to_string() },
            };
            return Err(failure.into());
        }
        Err(e) => return Err(Failure::Unreachable { url: client.base.clone(), reason: e.to_string() }.into()),
    };
    socket.send(Message::Text(serde_json::to_string(&req)?.into())).await.context("starting the command")?;
    let _raw = RawMode::enter();
    let mut stdin = tokio::io::stdin();
    let mut stdin_open = true;
    let mut buf = vec![0u8; 8192];
    let mut resized = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).context("following the terminal's size")?;
    let mut out = std::io::stdout();
    loop {
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => socket.send(Message::Binary(buf[..n].to_vec().into())).await.context("sending keystrokes")?,
            },
            _ = resized.recv() => {
                let (cols, rows) = size();
                socket.send(Message::Text(serde_json::to_string(&TtyControl::Resize { cols, rows })?.into())).await.context("resizing")?;
            }
            m = socket.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    out.write_all(&b)?;
                    out.flush()?;
                }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ExecFrame>(&t) {
                    Ok(ExecFrame::ExitCode(code)) => return Ok(code),
                    Ok(ExecFrame::Error(e)) => bail!("{e}"),
                    _ => {}
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("the terminal's connection broke: {e}"),
                None => bail!("the server closed the terminal without an exit code"),
            },
        }
    }
}
