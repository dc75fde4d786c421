#!/usr/bin/env bash
# Benchmarks Hangar side by side with `wasmtime serve` and rewrites BENCHMARKS.md.
# Installs its tools if missing: wrk and nginx (Debian), the musl target, and wasmtime-cli 48.0.8
# (crates.io, into target/bench-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx)
if ((${#missing[@]})); then apt-get update -qq && apt-get install -y -qq "${missing[@]}"; fi
# The services benchmark's backend is a static (musl) binary.
rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
if ! target/bench-tools/bin/wasmtime --version 2>/dev/null | grep -q '48.0.8'; then
  cargo install --locked wasmtime-cli --version 48.0.8 --root target/bench-tools
fi
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --locked --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml
cargo build --locked --release -p hangar -p hangar-bench
exec target/release/hangar-bench "$@"
