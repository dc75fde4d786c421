//! The CLI's HTTP client of the Hangar API, and how its failures map to messages and exit codes.

use anyhow::Result;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

/// A failure the server reported (or the server being unreachable), with its exit code.
#[derive(Debug)]
pub enum Failure {
    Unreachable { url: String, reason: String },
    Api { status: StatusCode, code: String, message: String },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable { url, reason } => {
                write!(f, "cannot reach Hangar at {url} ({reason}); start it with `hangar up`, or point --url / HANGAR_URL at it")
            }
            Failure::Api { status, code, message } => write!(f, "{message} ({code}, HTTP {})", status.as_u16()),
        }
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// Exit codes for scripts: 3 unreachable, 4 not found, 5 unauthorized or forbidden,
    /// 6 rejected input, 7 the function (or server) failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Unreachable { .. } => 3,
            Failure::Api { status, .. } => match *status {
                StatusCode::NOT_FOUND => 4,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => 5,
                s if s.is_client_error() => 6,
                _ => 7,
            },
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    key: Option<String>,
}

impl Client {
    pub fn new(base: String, key: Option<String>) -> Self {
        Client { http: reqwest::Client::new(), base: base.trim_end_matches('/').to_string(), key }
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    /// A WebSocket handshake request for `path` (with its query), with the API key.
    pub fn websocket(&self, path_and_query: &str) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let base = self.base.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
        let mut req = format!("{base}{path_and_query}").into_client_request()?;
        if let Some(k) = &self.key {
            req.headers_mut().insert(reqwest::header::AUTHORIZATION, format!("Bearer {k}").parse()?);
        }
        Ok(req)
    }

    /// Sends and returns the response if it is a success; a failure otherwise.
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response> {
        let resp = rb.send().await.map_err(|e| Failure::Unreachable { url: self.base.clone(), reason: root_cause(&e) })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(failure_of(resp).await.into())
    }

    pub async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T> {
        let resp = self.send(rb).await?;
        let bytes = resp.bytes().await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("the server's answer is not what this CLI expects ({e}); are the CLI and server the same version?"))
    }
}

/// Reads the API's error shape from a failed response.
pub async fn failure_of(resp: Response) -> Failure {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<hangar_api::ErrorBody>(&text) {
        Ok(b) => Failure::Api { status, code: b.error.code, message: b.error.message },
        Err(_) => Failure::Api {
            status,
            code: "http_error".into(),
            message: if text.trim().is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text.trim().to_string() },
        },
    }
}

fn root_cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(s) = source.source() {
        source = s;
    }
    source.to_string()
}
