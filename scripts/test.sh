#!/usr/bin/env bash
# The whole test suite on a fresh machine: install what is missing, build, pull the models the
# tests use (real weights, no mocks), run every test. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/bootstrap.sh
cargo build --release -p rapport
for model in smollm2-135m minilm-l6; do
  "$RAPPORT_BIN" models pull "$model"
done
cargo test --release --workspace "$@"
