//! Importing images from files: an OCI image layout (a directory, or a tar of one, as `skopeo
//! copy ... oci-archive:` or `docker save` since Docker 25 write) and the older `docker save`
//! archive (`manifest.json` with `RepoTags`). Archives may be gzip-compressed. Everything in
//! an archive is read beneath a directory handle, following no symbolic link, and only
//! regular files are opened.

use std::path::{Path, PathBuf};

use hangar_confine::Tree;

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

fn confined(e: hangar_confine::ConfineError) -> ImageError {
    if e.is_not_found() { bad(format!("the archive lacks {e}")) } else { bad(format!("in the archive: {e}")) }
}

/// A path inside the archive given by the archive itself, refused if it leaves it.
fn inside(rel: &str) -> Result<PathBuf, ImageError> {
    if rel.is_empty() {
        return Err(bad("the archive names an empty path"));
    }
    hangar_confine::clean(Path::new(rel)).map_err(confined)
}

fn read_small(tree: &Tree, rel: &Path) -> Result<Vec<u8>, ImageError> {
    tree.read_no_links(rel, MAX_JSON).map_err(confined)
}

fn blob_path(digest: &str) -> Result<PathBuf, ImageError> {
    Ok(Path::new("blobs/sha256").join(digest_hex(digest)?))
}

/// A small blob of an OCI layout, checked against its digest.
fn read_blob(tree: &Tree, d: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let digest = d.digest().to_string();
    let bytes = read_small(tree, &blob_path(&digest)?)?;
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
        let meta = std::fs::metadata(path)?;
        let scratch;
        let tree = if meta.is_dir() {
            Tree::open(path)?
        } else {
            // The archive is unpacked as it is (files, directories and links, nothing else, each
            // confined to the scratch directory); its contents are then read following no link.
            scratch = self.scratch("import-")?;
            let file = std::fs::File::open(path)?;
            let stream = decompressed(std::io::BufReader::new(file)).map_err(|e| bad(format!("reading the archive: {e}")))?;
            crate::unpack::unpack(stream, scratch.path(), "archive", crate::unpack::Specials::Archive, self.unpack_limits())
                .map_err(|e| bad(format!("the upload is not a readable image archive: {e}")))?;
            Tree::open(scratch.path())?
        };
        if tree.has_file(Path::new("index.json")) {
            self.import_layout(namespace, &tree, name)
        } else if tree.has_file(Path::new("manifest.json")) {
            self.import_docker(namespace, &tree, name)
        } else {
            Err(bad("the archive is neither an OCI image layout (a regular file index.json) nor a `docker save` archive (manifest.json)"))
        }
    }

    fn import_layout(&self, namespace: &str, root: &Tree, name: Option<&str>) -> Result<Vec<Image>, ImageError> {
        let index: ImageIndex = serde_json::from_slice(&read_small(root, Path::new("index.json"))?).map_err(|e| bad(format!("index.json: {e}")))?;
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
                let mut file = root.open_no_links(&blob_path(&digest)?).map_err(confined)?;
                let size = if self.has_layer(&diff_id) { l.size() } else { self.add_layer(std::io::BufReader::new(&file), Some(&digest), &diff_id)?.1 };
                self.keep_blob_file(&digest, &mut file)?;
                layers.push(Layer { diff_id, digest, size });
            }
            self.keep_blob(manifest.config().digest().as_ref(), &config_bytes[..])?;
            let id = manifest.config().digest().to_string();
            out.push(self.record(Image::new(id.clone(), tags(namespace, names, &id), Some(d.digest().to_string()), layers, &config))?);
        }
        Ok(out)
    }

    fn import_docker(&self, namespace: &str, root: &Tree, name: Option<&str>) -> Result<Vec<Image>, ImageError> {
        let entries: Vec<DockerEntry> =
            serde_json::from_slice(&read_small(root, Path::new("manifest.json"))?).map_err(|e| bad(format!("manifest.json: {e}")))?;
        if entries.is_empty() {
            return Err(bad("manifest.json lists no images"));
        }
        if name.is_some() && entries.len() > 1 {
            return Err(bad(format!("the archive holds {} images; import it without a name to keep theirs", entries.len())));
        }
        let mut out = Vec::new();
        for e in entries {
            let config_bytes = read_small(root, &inside(&e.config)?)?;
            let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|err| bad(format!("image config {}: {err}", e.config)))?;
            let diff_ids = check_config(&config, e.layers.len())?;
            let mut layers = Vec::new();
            for (file, diff_id) in e.layers.iter().zip(diff_ids) {
                let mut f = root.open_no_links(&inside(file)?).map_err(confined)?;
                let size = f.metadata()?.len();
                let digest = if self.has_layer(&diff_id) { diff_id.clone() } else { self.add_layer(std::io::BufReader::new(&f), None, &diff_id)?.0 };
                self.keep_blob_file(&digest, &mut f)?;
                layers.push(Layer { diff_id, digest, size });
            }
            self.keep_blob(&sha256_digest(&config_bytes), &config_bytes[..])?;
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
