#!/usr/bin/env bash
# The whole test suite on a fresh machine: install what is missing, build, pull the models the
# tests use (real weights, no mocks), run every test. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/bootstrap.sh
# PostgreSQL, Chromium and playwright-core for the web tests (exports their locations).
source scripts/services.sh
# House style: rustfmt.toml, checked before anything is built.
cargo fmt -- --check >/dev/null || { echo "error: code not formatted: run cargo fmt (rustfmt.toml)" >&2; cargo fmt -- --check | head -40 >&2; exit 1; }
# Every target (benches included, which cargo test does not build) with clippy, warnings denied
# in the workspace's own code (vendor/ is a dependency: its warnings are shown, not denied).
cargo clippy --release --workspace --all-targets -- -D warnings
cargo build --release -p rapport
# vendor/ is the pinned crates.io releases plus the patches recorded in vendor/patches/.
bash scripts/vendor-check.sh
# The figures on BENCHMARKS.md are what benches/results/ says, not retyped.
python3 benches/benchmarks.py --check
for model in smollm2-135m minilm-l6; do
  "$RAPPORT_BIN" models pull "$model"
done
# cargo prints one summary per test binary and ends with doc-test binaries that have none; the
# last line here is the total over all of them.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i; if ($(i+1) ~ /^ignored;?$/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
