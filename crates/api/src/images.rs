//! Wire types of `/v1/images`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An image as the API shows it to a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    /// The config's digest (`sha256:...`).
    pub id: String,
    /// Its names in this namespace (full references).
    pub names: Vec<String>,
    pub manifest: Option<String>,
    /// Sum of the layers' sizes as stored or transferred, in bytes.
    pub size: u64,
    pub layers: usize,
    pub os: String,
    pub architecture: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub exposed_ports: Vec<u16>,
    pub added_at: String,
}

/// What to pull.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// e.g. `busybox`, `127.0.0.1:5000/team/app:v2`
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// One line of a pull's progress stream (`application/x-ndjson`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest is read; `layers` (digest, size) will be fetched, `cached` are here.
    Resolved { digest: String, layers: Vec<(String, u64)>, cached: usize },
    /// Bytes of one layer received so far.
    Layer { digest: String, received: u64, total: u64 },
    /// One layer is verified and unpacked.
    Unpacked { digest: String },
    /// The image is in the store.
    Done { image: Box<Image> },
    /// The pull failed after it had started.
    Error { code: String, message: String },
}
