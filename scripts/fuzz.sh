#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz with libFuzzer, `--sanitizer none` on stable) for a
# budget of seconds each, starting from the seeds kept in fuzz/corpus/TARGET; what it finds goes
# to fuzz/target/corpus/TARGET (FUZZ_KEEP=1 minimizes it into fuzz/corpus instead). A crash
# fails the run and leaves its input in fuzz/artifacts/TARGET.
#   ./scripts/fuzz.sh            # 60 s per target
#   ./scripts/fuzz.sh 5          # 5 s per target (the smoke run of scripts/test.sh)
#   ./scripts/fuzz.sh 300 tar_layer
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-60}
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (the fuzz targets run with it)"
  cargo install --locked cargo-fuzz
fi
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
cargo fuzz build --fuzz-dir fuzz --sanitizer none
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/target/corpus/$t"
  echo "fuzzing $t for ${budget}s"
  out=$(cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "fuzz/target/corpus/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$budget" -max_len=65536 -timeout=10 -rss_limit_mb=2048 2>&1) || {
    echo "$out" | tail -40
    echo "fuzz target $t failed: its input is in fuzz/artifacts/$t"
    exit 1
  }
  echo "$out" | grep -E '^Done [0-9]+ runs' | sed "s/^/  $t: /" || true
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then
    # Keep what adds coverage, as few and small inputs as do.
    cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "fuzz/corpus/$t" "fuzz/target/corpus/$t" -- -merge=1 >/dev/null 2>&1
  fi
done
