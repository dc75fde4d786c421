//! The image store: OCI images imported from files or pulled from registries, kept as
//! unpacked layers that overlayfs stacks into a container's root.
//!
//! Layout under the store's root:
//! - `layers/<diff-id hex>/`: one unpacked layer (see [`unpack`]), shared by every image that
//!   has it, unpacked once and verified against the image config's `diff_ids`;
//! - `index.json`: the images (id = config digest, names, layers bottom first, run config);
//! - `blobs/sha256/<hex>`: configs and layer blobs as they arrived, for other nodes
//!   ([`nodes`]);
//! - `tmp/`: work in progress, emptied when the store opens.
//!
//! Every layer is checked twice: its compressed bytes against the manifest's digest, its
//! uncompressed tar against the config's diff id. An import or pull that fails leaves nothing
//! behind: layers appear by rename only once complete, and the index changes last.

mod import;
pub mod nodes;
mod pull;
pub mod unpack;

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use pull::{Credentials, Progress, PullOptions};

/// What can go wrong with images; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("layer {layer}: {message}")]
    BadLayer { layer: String, message: String },
    #[error("{0}")]
    BadImage(String),
    #[error("digest mismatch for {what}: expected {expected}, got {actual}; the content is corrupt or was tampered with")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("no image `{0}`; `hangar image ls` lists the images")]
    NotFound(String),
    #[error("`{0}` is not a valid image reference (e.g. `busybox`, `registry.example:5000/team/app:v2`)")]
    BadReference(String),
    #[error("{message}")]
    Registry { kind: RegistryFailure, message: String },
    #[error("image {0} is used by a service; remove or redeploy the service first")]
    InUse(String),
    #[error("the image store: {0}")]
    Io(#[from] io::Error),
}

/// Why a registry could not give an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryFailure {
    /// No such repository or tag.
    NotFound,
    /// Credentials missing or refused.
    Unauthorized,
    /// Nothing answered.
    Unreachable,
    Other,
}

/// How an image runs, from its config (`Entrypoint`, `Cmd`, `Env`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
    /// TCP ports from `ExposedPorts`.
    #[serde(default)]
    pub exposed_ports: Vec<u16>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// Digest of the uncompressed tar (the config's diff id); names the unpacked directory.
    pub diff_id: String,
    /// Digest and size of the blob as stored or transferred.
    pub digest: String,
    pub size: u64,
}

/// A name of an image in one namespace. Names are per namespace, so one tenant can neither
/// see nor take over another's images; layers are shared (they are verified content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub namespace: String,
    /// The full reference (`docker.io/library/busybox:latest`).
    pub name: String,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The config's digest (`sha256:...`).
    pub id: String,
    /// Its names; an image with none is kept only while `in_use` says so.
    pub tags: Vec<Tag>,
    /// The manifest's digest, when the image came with one.
    #[serde(default)]
    pub manifest: Option<String>,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
    pub config: RunConfig,
    pub os: String,
    pub architecture: String,
    /// Sum of the layers' blob sizes.
    pub size: u64,
    /// When it was added (ms since the epoch).
    pub added_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: Vec<Image>,
}

/// See the module docs.
pub struct ImageStore {
    root: PathBuf,
    index: Mutex<Index>,
    /// Unpacks (imports and pulled layers) run on the blocking pool, at most this many at once,
    /// so that however many arrive the API's own blocking work always finds a thread.
    unpack_slots: tokio::sync::Semaphore,
    /// Wall time one import or one layer may take to unpack.
    unpack_time: std::time::Duration,
    /// Where images this node lacks come from, in a cluster.
    source: std::sync::RwLock<Option<std::sync::Arc<dyn nodes::Source>>>,
}

/// Unpacks at once (a core each on a small machine).
const UNPACK_SLOTS: usize = 2;
/// Wall time one import or layer may take to unpack.
const UNPACK_TIME: std::time::Duration = std::time::Duration::from_secs(600);

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore").field("root", &self.root).finish()
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:` digest, checked.
fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) => Ok(h),
        _ => Err(ImageError::BadImage(format!("`{digest}` is not a sha256 digest (only sha256 is supported)"))),
    }
}

/// The machine's architecture in OCI's words.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The full form of an image reference (`busybox` → `docker.io/library/busybox:latest`).
pub fn normalize(reference: &str) -> Result<String, ImageError> {
    let r: oci_client::Reference = reference.parse().map_err(|_| ImageError::BadReference(reference.to_string()))?;
    // The registry part must be an address a client can dial: a port, if any, is 1..=65535.
    if let Some((_, port)) = r.registry().rsplit_once(':')
        && !r.registry().ends_with(']')
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(ImageError::BadReference(reference.to_string()));
    }
    Ok(r.whole())
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing { inner, hash: Sha256::new(), bytes: 0 }
    }
    /// Reads what is left (a tar stream may end before its padding) and returns the digest.
    fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((format!("sha256:{}", hex::encode(self.hash.finalize())), self.bytes))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A stream that may be gzip- or zstd-compressed, told by its first bytes.
fn decompressed<'a, R: Read + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        let k = r.read(&mut magic[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let head = io::Cursor::new(magic[..n].to_vec());
    let whole = head.chain(r);
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(whole))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(whole)?)
    } else {
        Box::new(whole)
    })
}

impl ImageStore {
    /// Opens (or creates) the store at `root`, clearing unfinished work.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        std::fs::create_dir_all(root.join("layers"))?;
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        for e in std::fs::read_dir(root.join("layers"))?.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                std::fs::remove_dir_all(e.path())?;
            }
        }
        let index = match std::fs::read(root.join("index.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::BadImage(format!("{}: {e}", root.join("index.json").display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(e.into()),
        };
        Ok(ImageStore {
            root: root.to_path_buf(),
            index: Mutex::new(index),
            unpack_slots: tokio::sync::Semaphore::new(UNPACK_SLOTS),
            unpack_time: UNPACK_TIME,
            source: Default::default(),
        })
    }

    /// Runs `work` (an import or a layer's unpack) on the blocking pool once one of the store's
    /// unpack slots is free.
    pub async fn unpacking<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        work: impl FnOnce(&ImageStore) -> Result<T, ImageError> + Send + 'static,
    ) -> Result<T, ImageError> {
        let _slot = self.unpack_slots.acquire().await.map_err(|_| ImageError::Io(io::Error::other("the image store is closing")))?;
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store)).await.map_err(|e| ImageError::Io(io::Error::other(format!("an unpack task failed: {e}"))))?
    }

    fn unpack_limits(&self) -> unpack::Limits {
        unpack::Limits::within(self.unpack_time)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, index: &Index) -> Result<(), ImageError> {
        let path = self.root.join("index.json");
        let tmp = self.root.join("tmp").join(format!("index-{}.json", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(index).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Where uploads wait to be imported (same file system as the layers).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh directory under `tmp/`.
    fn scratch(&self, what: &str) -> Result<tempfile::TempDir, ImageError> {
        Ok(tempfile::Builder::new().prefix(what).tempdir_in(self.root.join("tmp"))?)
    }

    /// The directory of an unpacked layer.
    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("layers").join(digest_hex(diff_id)?))
    }

    fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_dir(diff_id).is_ok_and(|d| d.is_dir())
    }

    /// Unpacks one layer blob from `blob`, checking its digest (if given) and diff id, unless
    /// that layer is already here. Returns the blob's digest and size.
    fn add_layer<R: Read>(&self, blob: R, digest: Option<&str>, diff_id: &str) -> Result<(String, u64), ImageError> {
        let dest = self.layer_dir(diff_id)?;
        let name = diff_id.get(7..19).unwrap_or(diff_id).to_string();
        let work = tempfile::Builder::new().prefix(".unpacking-").tempdir_in(self.root.join("layers"))?;
        let mut outer = Hashing::new(blob);
        let mut inner = Hashing::new(decompressed(&mut outer).map_err(|e| ImageError::BadLayer { layer: name.clone(), message: format!("reading: {e}") })?);
        unpack::unpack(&mut inner, work.path(), &name, unpack::Specials::Layer, self.unpack_limits())?;
        let (got_diff, _) = inner.finish().map_err(|e| ImageError::BadLayer { layer: name.clone(), message: format!("reading: {e}") })?;
        let (got_digest, size) = outer.finish()?;
        if let Some(want) = digest
            && want != got_digest
        {
            return Err(ImageError::DigestMismatch { what: format!("layer {name}"), expected: want.to_string(), actual: got_digest });
        }
        if got_diff != diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("the uncompressed layer {name} (diff id)"),
                expected: diff_id.to_string(),
                actual: got_diff,
            });
        }
        let path = work.keep();
        if let Err(e) = std::fs::rename(&path, &dest) {
            // Another import of the same layer finished first: keep theirs.
            let _ = std::fs::remove_dir_all(&path);
            if !dest.is_dir() {
                return Err(e.into());
            }
        }
        Ok((got_digest, size))
    }

    /// Adds `image` (its layers already unpacked), merging names with an existing record of the
    /// same id and moving each name away from any other image that had it in that namespace.
    fn record(&self, mut image: Image) -> Result<Image, ImageError> {
        let mut index = self.lock();
        for other in index.images.iter_mut() {
            if other.id != image.id {
                other.tags.retain(|n| !image.tags.contains(n));
            }
        }
        if let Some(existing) = index.images.iter_mut().find(|i| i.id == image.id) {
            for n in &image.tags {
                if !existing.tags.contains(n) {
                    existing.tags.push(n.clone());
                }
            }
            if existing.manifest.is_none() {
                existing.manifest = image.manifest.clone();
            }
            image = existing.clone();
        } else {
            index.images.push(image.clone());
        }
        self.save(&index)?;
        Ok(image)
    }

    /// The images named in `namespace`, newest first.
    pub fn list(&self, namespace: &str) -> Vec<Image> {
        let mut all: Vec<Image> = self.lock().images.iter().filter(|i| i.named_in(namespace)).cloned().collect();
        all.sort_by(|a, b| b.added_ms.cmp(&a.added_ms).then(a.id.cmp(&b.id)));
        all
    }

    /// The image a reference names in `namespace`: a name (normalized: `busybox` =
    /// `docker.io/library/busybox:latest`), an id (`sha256:...`), or an id prefix of at least 12
    /// hex digits.
    pub fn get(&self, namespace: &str, reference: &str) -> Option<Image> {
        let index = self.lock();
        find(&index, namespace, reference).map(|i| index.images[i].clone())
    }

    /// Removes a name, or every name of the image in `namespace` if `reference` is its id;
    /// an image left without names is deleted unless `in_use(id)`, and unpacked layers no image
    /// uses any more are deleted. An image a service of this namespace uses keeps its names.
    pub fn remove(&self, namespace: &str, reference: &str, in_use: impl Fn(&str) -> bool) -> Result<Image, ImageError> {
        let mut index = self.lock();
        let Some(i) = find(&index, namespace, reference) else {
            return Err(ImageError::NotFound(reference.to_string()));
        };
        let image = index.images[i].clone();
        let name = normalize(reference).ok().filter(|n| image.tags.iter().any(|t| t.namespace == namespace && t.name == *n));
        let removing: Vec<Tag> = match name {
            Some(n) => vec![Tag { namespace: namespace.to_string(), name: n }],
            None => image.tags.iter().filter(|t| t.namespace == namespace).cloned().collect(),
        };
        let left_in_namespace = image.tags.iter().filter(|t| t.namespace == namespace && !removing.contains(t)).count();
        if left_in_namespace == 0 && in_use(&image.id) {
            return Err(ImageError::InUse(image.tags.iter().find(|t| t.namespace == namespace).map_or(image.id.clone(), |t| t.name.clone())));
        }
        index.images[i].tags.retain(|t| !removing.contains(t));
        if index.images[i].tags.is_empty() {
            index.images.remove(i);
        }
        self.save(&index)?;
        drop(index);
        self.collect_garbage()?;
        Ok(image)
    }

    /// Deletes unpacked layers that no image uses; returns how many.
    pub fn collect_garbage(&self) -> Result<usize, ImageError> {
        let index = self.lock();
        let wanted: HashSet<String> =
            index.images.iter().flat_map(|i| i.layers.iter()).filter_map(|l| digest_hex(&l.diff_id).ok().map(str::to_string)).collect();
        let mut removed = 0;
        // Blobs no image names (its config, its layers' blobs).
        let blobs: HashSet<String> = index
            .images
            .iter()
            .flat_map(|i| std::iter::once(&i.id).chain(i.layers.iter().map(|l| &l.digest)))
            .filter_map(|d| digest_hex(d).ok().map(str::to_string))
            .collect();
        for e in std::fs::read_dir(self.root.join("blobs").join("sha256")).into_iter().flatten().flatten() {
            if !blobs.contains(e.file_name().to_string_lossy().as_ref()) {
                std::fs::remove_file(e.path())?;
            }
        }
        for e in std::fs::read_dir(self.root.join("layers"))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !wanted.contains(&name) {
                std::fs::remove_dir_all(e.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The unpacked layers of `image`, top first (overlayfs's `lowerdir` order).
    pub fn lower_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        image.layers.iter().rev().map(|l| self.layer_dir(&l.diff_id)).collect()
    }
}

impl Image {
    /// An image added now: its config (run settings and platform) and layers.
    fn new(id: String, tags: Vec<Tag>, manifest: Option<String>, layers: Vec<Layer>, config: &oci_spec::image::ImageConfiguration) -> Image {
        Image {
            id,
            tags,
            manifest,
            size: layers.iter().map(|l| l.size).sum(),
            layers,
            config: run_config(config),
            os: config.os().to_string(),
            architecture: config.architecture().to_string(),
            added_ms: hangar_core::now_ms(),
        }
    }

    /// Whether `namespace` has a name for this image.
    pub fn named_in(&self, namespace: &str) -> bool {
        self.tags.iter().any(|t| t.namespace == namespace)
    }

    /// This image's names in `namespace`.
    pub fn names_in(&self, namespace: &str) -> Vec<String> {
        self.tags.iter().filter(|t| t.namespace == namespace).map(|t| t.name.clone()).collect()
    }
}

fn find(index: &Index, namespace: &str, reference: &str) -> Option<usize> {
    let visible = |i: &Image| i.named_in(namespace);
    if let Some(i) = index.images.iter().position(|i| i.id == reference && visible(i)) {
        return Some(i);
    }
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let matches: Vec<usize> = index.images.iter().enumerate().filter(|(_, i)| visible(i) && i.id[7..].starts_with(hex)).map(|(k, _)| k).collect();
        if matches.len() == 1 {
            return Some(matches[0]);
        }
    }
    let full = normalize(reference).ok()?;
    index.images.iter().position(|i| i.tags.iter().any(|t| t.namespace == namespace && t.name == full))
}

/// A [`RunConfig`] and platform from an image config.
fn run_config(config: &oci_spec::image::ImageConfiguration) -> RunConfig {
    let c = config.config().clone().unwrap_or_default();
    RunConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().unwrap_or_default(),
        user: c.user().clone().unwrap_or_default(),
        exposed_ports: c
            .exposed_ports()
            .clone()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                (proto == "tcp").then(|| port.parse().ok()).flatten()
            })
            .collect(),
        stop_signal: c.stop_signal().clone(),
    }
}

/// Checks an image config's platform and its layer count, returning its diff ids.
fn check_config(config: &oci_spec::image::ImageConfiguration, layers: usize) -> Result<Vec<String>, ImageError> {
    let os = config.os().to_string();
    let arch = config.architecture().to_string();
    if os != "linux" || arch != host_architecture() {
        return Err(ImageError::BadImage(format!("the image is for {os}/{arch}; this machine runs linux/{}", host_architecture())));
    }
    let diff_ids = config.rootfs().diff_ids().clone();
    if diff_ids.len() != layers {
        return Err(ImageError::BadImage(format!("the image config lists {} layers but the manifest has {layers}", diff_ids.len())));
    }
    for d in &diff_ids {
        digest_hex(d)?;
    }
    Ok(diff_ids)
}
