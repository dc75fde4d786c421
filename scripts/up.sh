#!/usr/bin/env bash
# Builds Hangar and starts it on embedded defaults with the examples deployed.
# Extra arguments go to `hangar up` (e.g. --listen 127.0.0.1:8080, --data-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
# Process functions and services run containers with runc, sandboxes gVisor's runsc; the example
# service's image is built from the machine's static busybox (also the sandboxes' file tool).
if [ "$(id -u)" = 0 ]; then
  missing=()
  command -v runc >/dev/null || missing+=(runc)
  command -v nft >/dev/null || missing+=(nftables)
  # Sandboxes run under gVisor, each on an ext4 disk image of its own.
  command -v runsc >/dev/null || missing+=(runsc)
  command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
  [ -x /bin/busybox ] && [[ "$(ldd /bin/busybox 2>&1 || true)" == *"not a dynamic"* ]] || missing+=(busybox-static)
  if ((${#missing[@]})); then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
  fi
fi
cargo build --locked --release -p hangar
# examples/hangar.toml builds examples/hello for wasm32-wasip2 and the example service's image,
# and deploys them with the Python and Node.js functions.
exec target/release/hangar up --apply examples/hangar.toml "$@"
