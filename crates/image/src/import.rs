//! Importing images from files: an OCI image layout (a directory, or a tar of one, as `skopeo
//! copy ... oci-archive:` or `docker save` since Docker 25 write) and the older `docker save`
//! archive (`manifest.json` with `RepoTags`). Archives may be gzip-compressed.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;

use crate::{Image, ImageError, ImageStore, Layer, Tag, check_config, decompressed, digest_hex, normalize, sha256_digest};

/// Largest manifest, index or config read into memory.
const MAX_JSON: u64 = 4 << 20;

/// One entry of a `docker save` archive's `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn bad(message: impl Into<String>) -> ImageError {
    ImageError::BadImage(message.into())
}

/// A path inside the archive given by the archive itself, refused if it leaves it.
fn inside(root: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(bad(format!("the archive names `{rel}`, which is outside it")));
    }
    Ok(root.join(p))
}

fn read_small(path: &Path) -> Result<Vec<u8>, ImageError> {
    let f = std::fs::File::open(path).map_err(|e| bad(format!("the archive lacks `{}`: {e}", path.display())))?;
    let mut out = Vec::new();
    f.take(MAX_JSON + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_JSON {
        return Err(bad(format!("`{}` is larger than {MAX_JSON} bytes", path.display())));
    }
    Ok(out)
}

fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    Ok(root.join("blobs/sha256").join(digest_hex(digest)?))
}

/// A small blob of an OCI layout, checked against its digest.
fn read_blob(root: &Path, d: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let digest = d.digest().to_string();
    let bytes = read_small(&blob_path(root, &digest)?)?;
    let got = sha256_digest(&bytes);
    if got != digest {
        return Err(ImageError::DigestMismatch { what: format!("blob {}", &digest[..19.min(digest.len())]), expected: digest, actual: got });
    }
    Ok(bytes)
}

fn is_index(m: &MediaType) -> bool {
    matches!(m, MediaType::ImageIndex) || m.to_string() == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// The names an OCI layout gives a manifest, made full.
fn layout_names(d: &Descriptor, name: Option<&str>) -> Vec<String> {
    let annotations = d.annotations().clone().unwrap_or_default();
    let mut names = Vec::new();
    if let Some(n) = name {
        names.extend(normalize(n).ok());
    } else if let Some(n) = annotations.get("io.containerd.image.name") {
        names.extend(normalize(n).ok());
    } else if let Some(n) = annotations.get("org.opencontainers.image.ref.name") {
        // Either a full reference or only a tag.
        if n.contains('/') || n.contains(':') {
            names.extend(normalize(n).ok());
        }
    }
    names
}

/// The tags for `names` in `namespace`, or a name made from the id when there are none.
fn tags(namespace: &str, names: Vec<String>, id: &str) -> Vec<Tag> {
    let names = if names.is_empty() { vec![format!("docker.io/imported/{}:latest", id.get(7..19).unwrap_or("image"))] } else { names };
    names.into_iter().map(|name| Tag { namespace: namespace.to_string(), name }).collect()
}

impl ImageStore {
    /// Imports every image in `path` (a directory or an archive) into `namespace`. `name` names
    /// the image when the file holds exactly one; an image the file does not name gets the
    /// name `imported/<first 12 digits of its id>:latest`.
    pub fn import(&self, namespace: &str, path: &Path, name: Option<&str>) -> Result<Vec<Image>, ImageError> {
        if let Some(n) = name {
            normalize(n)?;
        }
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read `{}`: {e}", path.display())))?;
        let scratch;
        let root = if meta.is_dir() {
            path.to_path_buf()
        } else {
            scratch = self.scratch("import-")?;
            let file = std::fs::File::open(path)?;
            let stream = decompressed(std::io::BufReader::new(file)).map_err(|e| bad(format!("reading `{}`: {e}", path.display())))?;
            crate::unpack::unpack(stream, scratch.path(), "archive").map_err(|e| bad(format!("`{}` is not a readable image archive: {e}", path.display())))?;
            scratch.path().to_path_buf()
        };
        if root.join("index.json").is_file() {
            self.import_layout(namespace, &root, name)
        } else if root.join("manifest.json").is_file() {
            self.import_docker(namespace, &root, name)
        } else {
            Err(bad(format!(
                "`{}` is neither an OCI image layout (index.json) nor a `docker save` archive (manifest.json)",
                path.display()
            )))
        }
    }

    fn import_layout(&self, namespace: &str, root: &Path, name: Option<&str>) -> Result<Vec<Image>, ImageError> {
        let index: ImageIndex = serde_json::from_slice(&read_small(&root.join("index.json"))?).map_err(|e| bad(format!("index.json: {e}")))?;
        let mut picked = Vec::new();
        for d in index.manifests() {
            if is_index(d.media_type()) {
                let nested: ImageIndex = serde_json::from_slice(&read_blob(root, d)?).map_err(|e| bad(format!("nested index: {e}")))?;
                let arch = crate::host_architecture();
                let m = nested
                    .manifests()
                    .iter()
                    .find(|m| m.platform().as_ref().is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == arch))
                    .ok_or_else(|| bad(format!("the image index has no linux/{arch} image")))?;
                picked.push((m.clone(), layout_names(d, name)));
            } else {
                picked.push((d.clone(), layout_names(d, name)));
            }
        }
        if picked.is_empty() {
            return Err(bad("index.json lists no images"));
        }
        if name.is_some() && picked.len() > 1 {
            return Err(bad(format!("the archive holds {} images; import it without a name to keep theirs", picked.len())));
        }
        let mut out = Vec::new();
        for (d, names) in picked {
            let bytes = read_blob(root, &d)?;
            let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest {}: {e}", d.digest())))?;
            let config_bytes = read_blob(root, manifest.config())?;
            let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|e| bad(format!("image config: {e}")))?;
            let diff_ids = check_config(&config, manifest.layers().len())?;
            let mut layers = Vec::new();
            for (l, diff_id) in manifest.layers().iter().zip(diff_ids) {
                let digest = l.digest().to_string();
                let size = if self.has_layer(&diff_id) {
                    l.size()
                } else {
                    let file = std::fs::File::open(blob_path(root, &digest)?).map_err(|e| bad(format!("the archive lacks layer {digest}: {e}")))?;
                    self.add_layer(std::io::BufReader::new(file), Some(&digest), &diff_id)?.1
                };
                layers.push(Layer { diff_id, digest, size });
            }
            let id = manifest.config().digest().to_string();
            out.push(self.record(Image::new(id.clone(), tags(namespace, names, &id), Some(d.digest().to_string()), layers, &config))?);
        }
        Ok(out)
    }

    fn import_docker(&self, namespace: &str, root: &Path, name: Option<&str>) -> Result<Vec<Image>, ImageError> {
        let entries: Vec<DockerEntry> = serde_json::from_slice(&read_small(&root.join("manifest.json"))?).map_err(|e| bad(format!("manifest.json: {e}")))?;
        if entries.is_empty() {
            return Err(bad("manifest.json lists no images"));
        }
        if name.is_some() && entries.len() > 1 {
            return Err(bad(format!("the archive holds {} images; import it without a name to keep theirs", entries.len())));
        }
        let mut out = Vec::new();
        for e in entries {
            let config_bytes = read_small(&inside(root, &e.config)?)?;
            let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|err| bad(format!("image config {}: {err}", e.config)))?;
            let diff_ids = check_config(&config, e.layers.len())?;
            let mut layers = Vec::new();
            for (file, diff_id) in e.layers.iter().zip(diff_ids) {
                let path = inside(root, file)?;
                let f = std::fs::File::open(&path).map_err(|err| bad(format!("the archive lacks layer `{file}`: {err}")))?;
                let size = f.metadata()?.len();
                let digest = if self.has_layer(&diff_id) {
                    diff_id.clone()
                } else {
                    self.add_layer(std::io::BufReader::new(f), None, &diff_id)?.0
                };
                layers.push(Layer { diff_id, digest, size });
            }
            let names = match name {
                Some(n) => vec![normalize(n)?],
                None => e.repo_tags.unwrap_or_default().iter().filter_map(|t| normalize(t).ok()).collect(),
            };
            let id = sha256_digest(&config_bytes);
            out.push(self.record(Image::new(id.clone(), tags(namespace, names, &id), None, layers, &config))?);
        }
        Ok(out)
    }
}
