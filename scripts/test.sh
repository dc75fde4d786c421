#!/usr/bin/env bash
# Runs every Hangar test (unit and black-box), installing what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "installing the wasm32-wasip2 target (the example components are built for it)"
  rustup target add wasm32-wasip2
fi

# The container tests run real containers with runc (as root, like CI).
if ! command -v runc >/dev/null; then
  echo "installing runc (the container tests run real containers)"
  apt-get update -qq && apt-get install -y -qq runc
fi

# Image tests pull from a real registry on loopback (Debian's docker-registry), pushed to with
# skopeo, one behind a token server that signs with openssl; service tests build images from
# busybox-static and run one under gVisor (runsc).
missing=()
for tool in docker-registry:docker-registry skopeo:skopeo openssl:openssl busybox:busybox-static runsc:runsc nft:nftables mkfs.ext4:e2fsprogs \
  nats-server:nats-server psql:postgresql; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
# The cluster tests start their own throwaway PostgreSQL clusters (initdb) and nats-servers
# with JetStream on loopback (hangar-testkit); Debian's postgresql package brings the server.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if ((${#missing[@]})); then
  echo "installing ${missing[*]} (image, service and cluster tests use them)"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi

# Process functions run the machine's python3 and node (pip installs awslambdaric in a test).
for tool in python3 node; do
  if ! command -v "$tool" >/dev/null; then
    echo "installing $tool (process functions run it)"
    apt-get update -qq && apt-get install -y -qq python3 python3-pip nodejs
  fi
done

# The example components the black-box tests deploy.
cargo build --locked --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml

# Style and lints are part of the tests.
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings

cargo test --locked --workspace "$@"

# A short run of every fuzz target (each parser of outside input) from the kept corpora.
./scripts/fuzz.sh 5
