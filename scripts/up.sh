#!/usr/bin/env bash
# Builds Hangar and starts it on embedded defaults with the example function deployed.
# Extra arguments go to `hangar up` (e.g. --listen 127.0.0.1:8080, --data-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
cargo build --locked --release -p hangar
# examples/hangar.toml builds examples/hello for wasm32-wasip2 and deploys it as a public function.
exec target/release/hangar up --apply examples/hangar.toml "$@"
