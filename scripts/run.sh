#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, pull the default model,
# and start chatting. Extra arguments go to `rapport chat` (e.g. --model smollm2-135m).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/bootstrap.sh
cargo build --release -p rapport
"$RAPPORT_BIN" chat --pull "$@"
