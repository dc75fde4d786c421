//! Images between the nodes of a cluster: each node keeps its own image store, and a node
//! that must run an image it lacks fetches it from a node that has it ([`Source`]). Layer
//! blobs and configs are kept as they arrived (`blobs/sha256/<hex>`), so a node exports an
//! image as an OCI image layout whose every digest the receiving node checks again: it imports
//! it through the same confined, verified path as any upload.

use std::io::{self, Read, Seek as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::{Image, ImageError, ImageStore, digest_hex};

/// Where a node gets an image it lacks (the other nodes).
pub trait Source: Send + Sync + 'static {
    /// The image `reference` names in `namespace`, fetched from another node and imported here.
    fn fetch<'a>(&'a self, store: &'a Arc<ImageStore>, namespace: &'a str, reference: &'a str) -> futures::future::BoxFuture<'a, Result<Image, ImageError>>;
}

impl ImageStore {
    /// Where a blob is kept.
    fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("blobs").join("sha256").join(digest_hex(digest)?))
    }

    /// Keeps the blob `digest` read from `src`, unless it is kept already or the bytes do not
    /// match the digest (then nothing is kept: an export of the image will say so).
    pub(crate) fn keep_blob(&self, digest: &str, mut src: impl Read) -> Result<(), ImageError> {
        let dest = self.blob_path(digest)?;
        if dest.is_file() {
            return Ok(());
        }
        std::fs::create_dir_all(dest.parent().unwrap_or(&self.root))?;
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            tmp.write_all(&buf[..n])?;
        }
        if format!("sha256:{}", hex::encode(hash.finalize())) != digest {
            return Ok(());
        }
        tmp.persist(&dest).map_err(|e| ImageError::Io(e.error))?;
        Ok(())
    }

    /// Keeps the blob at `file` (rewound first).
    pub(crate) fn keep_blob_file(&self, digest: &str, file: &mut std::fs::File) -> Result<(), ImageError> {
        file.rewind()?;
        self.keep_blob(digest, io::BufReader::new(file))
    }

    /// The image `reference` names in `namespace` as an OCI image layout in a tar archive (an
    /// unnamed temporary file, rewound), named by its first name in the namespace.
    pub fn export(&self, namespace: &str, reference: &str) -> Result<std::fs::File, ImageError> {
        let image = self.get(namespace, reference).ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
        let missing = |what: &str| {
            ImageError::BadImage(format!(
                "{what} of image {} is not kept on this node (it was added by an older Hangar); import or pull the image again",
                image.id
            ))
        };
        let config = self.blob_path(&image.id)?;
        let config_size = std::fs::metadata(&config).map_err(|_| missing("the config"))?.len();
        let mut layers = Vec::new();
        for l in &image.layers {
            let path = self.blob_path(&l.digest)?;
            let size = std::fs::metadata(&path).map_err(|_| missing("a layer"))?.len();
            layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l.digest, "size": size}));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": image.id, "size": config_size},
            "layers": layers,
        }))
        .map_err(io::Error::other)?;
        let manifest_digest = crate::sha256_digest(&manifest);
        let name = image.names_in(namespace).into_iter().next().unwrap_or_default();
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {"io.containerd.image.name": name},
            }],
        }))
        .map_err(io::Error::other)?;
        let mut tar = tar::Builder::new(tempfile::tempfile_in(self.root.join("tmp"))?);
        let file = |size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h
        };
        let manifest_path = format!("blobs/sha256/{}", digest_hex(&manifest_digest)?);
        let layout: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
        for (path, bytes) in [("oci-layout", layout), ("index.json", &index), (manifest_path.as_str(), &manifest)] {
            tar.append_data(&mut file(bytes.len() as u64), path, bytes)?;
        }
        for digest in std::iter::once(&image.id).chain(image.layers.iter().map(|l| &l.digest)) {
            let mut f = std::fs::File::open(self.blob_path(digest)?)?;
            tar.append_data(&mut file(f.metadata()?.len()), format!("blobs/sha256/{}", digest_hex(digest)?), &mut f)?;
        }
        let mut file = tar.into_inner()?;
        file.flush()?;
        file.rewind()?;
        Ok(file)
    }

    /// Sets where images this node lacks come from (a cluster's other nodes).
    pub fn set_source(&self, source: Arc<dyn Source>) {
        *self.source.write().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// The image `reference` names in `namespace`: from this store, else fetched from another
    /// node of the cluster.
    pub async fn get_or_fetch(self: &Arc<Self>, namespace: &str, reference: &str) -> Result<Image, ImageError> {
        if let Some(image) = self.get(namespace, reference) {
            return Ok(image);
        }
        let source = self.source.read().unwrap_or_else(|p| p.into_inner()).clone();
        match source {
            Some(s) => s.fetch(self, namespace, reference).await,
            None => Err(ImageError::NotFound(reference.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `bytes` as blob of an OCI layout at `dir`; returns its digest and size.
    fn blob(dir: &std::path::Path, bytes: &[u8]) -> (String, usize) {
        let digest = crate::sha256_digest(bytes);
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("blobs/sha256").join(&digest[7..]), bytes).unwrap();
        (digest, bytes.len())
    }

    /// An OCI layout with one gzipped layer holding `hello.txt`.
    fn layout(dir: &std::path::Path) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        tar.append_data(&mut h, "hello.txt", &b"hello"[..]).unwrap();
        let plain = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let (layer, layer_size) = blob(dir, &gz.finish().unwrap());
        let config = serde_json::json!({"architecture": crate::host_architecture(), "os": "linux", "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [crate::sha256_digest(&plain)]}});
        let (config, config_size) = blob(dir, &serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size}]});
        let (manifest, manifest_size) = blob(dir, &serde_json::to_vec(&manifest).unwrap());
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest, "size": manifest_size, "annotations": {"io.containerd.image.name": "example.com/app:1"}}]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    #[test]
    fn an_image_goes_to_another_node_verified_and_a_tampered_one_is_refused() {
        let (src, a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        layout(src.path());
        let a = ImageStore::open(a.path()).unwrap();
        let image = a.import("team", src.path(), None).unwrap().remove(0);
        // Another namespace cannot export it: names are per namespace.
        assert!(matches!(a.export("other", &image.id), Err(ImageError::NotFound(_))));
        let mut archive = a.export("team", &image.id).unwrap();
        let path = b.path().join("from-a.tar");
        std::io::copy(&mut archive, &mut std::fs::File::create(&path).unwrap()).unwrap();
        let b_store = ImageStore::open(&b.path().join("store")).unwrap();
        let got = b_store.import("team", &path, None).unwrap().remove(0);
        assert_eq!((got.id.as_str(), got.names_in("team")), (image.id.as_str(), vec!["example.com/app:1".to_string()]));
        let lower = b_store.lower_dirs(&got).unwrap();
        assert_eq!(std::fs::read(lower[0].join("hello.txt")).unwrap(), b"hello");
        // B keeps the blobs too: it can hand the image on.
        assert!(b_store.export("team", &got.id).is_ok());

        // One byte of a layer's compressed data changed on the way: refused, nothing kept.
        let mut bytes = std::fs::read(&path).unwrap();
        let layer = image.layers[0].digest[7..].to_string();
        let at = bytes.windows(layer.len()).position(|w| w == layer.as_bytes()).unwrap() + 512 + 12;
        bytes[at] ^= 0xff;
        let c = tempfile::tempdir().unwrap();
        std::fs::write(c.path().join("bad.tar"), &bytes).unwrap();
        let c_store = ImageStore::open(&c.path().join("store")).unwrap();
        assert!(c_store.import("team", &c.path().join("bad.tar"), None).is_err());
        assert!(c_store.list("team").is_empty());
    }
}
