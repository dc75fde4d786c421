//! Pulling images from OCI distribution registries (Docker Hub, GHCR, a `docker-registry` on
//! loopback, ...): HTTPS, or plain HTTP for loopback registries; anonymous, basic, or the
//! bearer-token exchange registries ask for. Layers stream to a temporary file (digest checked),
//! then unpack like imported ones; layers already here are not fetched.

use std::io::Write as _;
use std::sync::Arc;

use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::ImageConfiguration;

use crate::{Image, ImageError, ImageStore, Layer, RegistryFailure, Tag, check_config, sha256_digest};

/// Registry credentials.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub credentials: Option<Credentials>,
}

/// What a pull reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The manifest is read: these layers (digest, size) will be fetched, the others are here.
    Resolved { digest: String, layers: Vec<(String, u64)>, cached: usize },
    /// Bytes of one layer received so far.
    Layer { digest: String, received: u64, total: u64 },
    /// One layer is verified and unpacked.
    Unpacked { digest: String },
}

/// Whether a registry host is this machine (served over plain HTTP, like Docker's default for
/// `localhost`).
fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { registry });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn registry_error(reference: &Reference, e: oci_client::errors::OciDistributionError) -> ImageError {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    let registry = reference.resolve_registry();
    let text = e.to_string();
    let kind = match &e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => RegistryFailure::Unauthorized,
        E::ImageManifestNotFoundError(_) => RegistryFailure::NotFound,
        E::RequestError(_) => RegistryFailure::Unreachable,
        E::RegistryError { envelope, .. } => {
            if envelope.errors.iter().any(|x| matches!(x.code, C::Unauthorized | C::Denied)) {
                RegistryFailure::Unauthorized
            } else if envelope.errors.iter().any(|x| matches!(x.code, C::ManifestUnknown | C::NameUnknown | C::NotFound | C::BlobUnknown)) {
                RegistryFailure::NotFound
            } else {
                RegistryFailure::Other
            }
        }
        E::ServerError { code: 401 | 403, .. } => RegistryFailure::Unauthorized,
        E::ServerError { code: 404, .. } => RegistryFailure::NotFound,
        _ => RegistryFailure::Other,
    };
    let message = match kind {
        RegistryFailure::Unauthorized => {
            format!("the registry {registry} refused access to {reference} ({text}); pass --username and --password if it needs them, and check them")
        }
        RegistryFailure::NotFound => {
            format!("{reference} was not found on {registry}: no such repository or tag ({text})")
        }
        RegistryFailure::Unreachable => format!("could not reach the registry {registry} ({text}); check the address and that it is running"),
        RegistryFailure::Other => format!("pulling {reference} from {registry}: {text}"),
    };
    ImageError::Registry { kind, message }
}

impl ImageStore {
    /// Pulls `reference` and adds it to the store, named in `namespace`; `progress` hears how
    /// it goes.
    pub async fn pull(
        self: &Arc<Self>,
        namespace: &str,
        reference: &str,
        options: &PullOptions,
        progress: impl Fn(Progress) + Send + Sync,
    ) -> Result<Image, ImageError> {
        let r: Reference = reference.parse().map_err(|_| ImageError::BadReference(reference.to_string()))?;
        let registry = r.resolve_registry().to_string();
        let protocol = if is_loopback(&registry) { ClientProtocol::Http } else { ClientProtocol::Https };
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        });
        let auth = match &options.credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let (manifest, digest, config_text) = client.pull_manifest_and_config(&r, &auth).await.map_err(|e| registry_error(&r, e))?;
        let config_digest = sha256_digest(config_text.as_bytes());
        if config_digest != manifest.config.digest {
            return Err(ImageError::DigestMismatch { what: "the image config".into(), expected: manifest.config.digest.clone(), actual: config_digest });
        }
        let config: ImageConfiguration = serde_json::from_str(&config_text).map_err(|e| ImageError::BadImage(format!("the image config of {r}: {e}")))?;
        let diff_ids = check_config(&config, manifest.layers.len())?;
        let missing: Vec<(String, u64)> =
            manifest.layers.iter().zip(&diff_ids).filter(|(_, d)| !self.has_layer(d)).map(|(l, _)| (l.digest.clone(), l.size.max(0) as u64)).collect();
        progress(Progress::Resolved { digest: digest.clone(), cached: manifest.layers.len() - missing.len(), layers: missing });

        let mut layers = Vec::new();
        for (l, diff_id) in manifest.layers.iter().zip(diff_ids) {
            let size = l.size.max(0) as u64;
            if !self.has_layer(&diff_id) {
                crate::digest_hex(&l.digest)?;
                let mut file = tempfile::tempfile_in(self.root.join("tmp"))?;
                let mut blob = client.pull_blob_stream(&r, l).await.map_err(|e| registry_error(&r, e))?;
                let total = blob.content_length.unwrap_or(size);
                let mut received = 0u64;
                let mut last = std::time::Instant::now();
                while let Some(chunk) = blob.stream.next().await {
                    let chunk = chunk
                        .map_err(|e| ImageError::Registry { kind: RegistryFailure::Other, message: format!("downloading layer {} of {r}: {e}", l.digest) })?;
                    file.write_all(&chunk)?;
                    received += chunk.len() as u64;
                    if last.elapsed() > std::time::Duration::from_millis(100) {
                        last = std::time::Instant::now();
                        progress(Progress::Layer { digest: l.digest.clone(), received, total });
                    }
                }
                progress(Progress::Layer { digest: l.digest.clone(), received, total });
                let (digest, diff) = (l.digest.clone(), diff_id.clone());
                self.unpacking(move |store| {
                    use std::io::Seek as _;
                    file.rewind()?;
                    store.add_layer(std::io::BufReader::new(&file), Some(&digest), &diff)?;
                    store.keep_blob_file(&digest, &mut file)
                })
                .await?;
                progress(Progress::Unpacked { digest: l.digest.clone() });
            }
            layers.push(Layer { diff_id, digest: l.digest.clone(), size });
        }
        self.keep_blob(&manifest.config.digest, config_text.as_bytes())?;
        let store = self.clone();
        let image = Image::new(manifest.config.digest.clone(), vec![Tag { namespace: namespace.to_string(), name: r.whole() }], Some(digest), layers, &config);
        tokio::task::spawn_blocking(move || store.record(image)).await.map_err(|e| ImageError::Io(std::io::Error::other(e)))?
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_registries_are_told_apart() {
        for (r, want) in [
            ("localhost:5000", true),
            ("127.0.0.1:5000", true),
            ("[::1]:5000", true),
            ("localhost", true),
            ("docker.io", false),
            ("ghcr.io", false),
            ("10.0.0.1:5000", false),
        ] {
            assert_eq!(super::is_loopback(r), want, "{r}");
        }
    }
}
