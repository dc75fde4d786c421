#!/usr/bin/env bash
# Runs every Hangar test (unit and black-box), installing what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "installing the wasm32-wasip2 target (the example components are built for it)"
  rustup target add wasm32-wasip2
fi

# The example components the black-box tests deploy.
cargo build --locked --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml

cargo test --locked --workspace "$@"
