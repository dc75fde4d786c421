#!/usr/bin/env bash
# Builds the example service's image as an OCI image layout at $1: busybox (static, from the
# host's busybox-static package) running httpd on $PORT over ./www. Deterministic: the same
# inputs give the same digests, so re-applying the manifest changes nothing.
set -euo pipefail
out=${1:?usage: build-image.sh OUT-DIR}
here=$(cd "$(dirname "$0")" && pwd)
busybox=/bin/busybox
linkage=$(ldd "$busybox" 2>&1 || true)
if [ ! -x "$busybox" ] || [[ "$linkage" != *"not a dynamic"* ]]; then
  echo "the example image needs a static busybox: apt-get install busybox-static" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/data"
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
ln -s busybox "$root/bin/hostname"
ln -s busybox "$root/bin/cat"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
cp -r "$here/www" "$root/www"
chmod 1777 "$root/tmp"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -c "$work/layer.tar" > "$work/layer.tar.gz"
rm -rf "$out"
mkdir -p "$out/blobs/sha256"
layer=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
mv "$work/layer.tar.gz" "$out/blobs/sha256/$layer"
layer_size=$(stat -c %s "$out/blobs/sha256/$layer")
printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/busybox","sh","-c"],"Cmd":["exec /bin/busybox httpd -f -v -p \\"$PORT\\" -h /www"],"ExposedPorts":{"8080/tcp":{}},"WorkingDir":"/www"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff_id" > "$work/config.json"
config=$(sha256sum "$work/config.json" | cut -d' ' -f1)
config_size=$(stat -c %s "$work/config.json")
mv "$work/config.json" "$out/blobs/sha256/$config"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' "$config" "$config_size" "$layer" "$layer_size" > "$work/manifest.json"
manifest=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
manifest_size=$(stat -c %s "$work/manifest.json")
mv "$work/manifest.json" "$out/blobs/sha256/$manifest"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s}]}' "$manifest" "$manifest_size" > "$out/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
echo "built $out (config sha256:${config:0:12})"
