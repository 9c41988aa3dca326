#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, pull the models, and serve
# the chat page (SQLite in the user's data dir, the local default model) on
# http://127.0.0.1:8080. Extra arguments go to `rapport serve` (e.g. --model smollm2-135m,
# --listen 0.0.0.0:8080, --database-url postgres://…).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/bootstrap.sh
cargo build --release -p rapport
# The sentence model reads emotions and guards topics; the LLM is pulled by --pull.
"$RAPPORT_BIN" models pull minilm-l6
echo "rapport is $RAPPORT_BIN (in a shell: source scripts/env.sh, then \$RAPPORT_BIN --help; or cargo install --path crates/cli to put it on the PATH)" >&2
exec "$RAPPORT_BIN" serve --pull "$@"
