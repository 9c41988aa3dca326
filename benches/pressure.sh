#!/usr/bin/env bash
# Rapport under pressure, in one run: the load scenarios, the concurrency sweep, the chaos drills
# and the prompt-injection suite, each against real `rapport serve` processes with SmolLM2 on
# this machine. Results (JSON, Markdown, SVG charts) go to benches/results/load/.
#
#   bash benches/pressure.sh            # the full run the figures of docs/dev/performance.md come from
#   bash benches/pressure.sh --short    # a few minutes: the same steps with small numbers
#   bash benches/pressure.sh sweep      # one step (load, sweep, chaos, injection)
#
# The test suite (scripts/test.sh) runs short versions of every step as tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/services.sh
short=0
steps=()
for arg in "$@"; do
  case "$arg" in
    --short) short=1 ;;
    load|sweep|chaos|injection) steps+=("$arg") ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
[ ${#steps[@]} -gt 0 ] || steps=(sweep chaos injection load)
# Built one at a time: each package resolves its own features, as scripts/test.sh does for
# `rapport`, so neither build invalidates the other (mistral.rs is not rebuilt).
cargo build --release -p rapport
cargo build --release -p rapport-load
"$RAPPORT_BIN" models pull smollm2-135m
"$RAPPORT_BIN" models pull minilm-l6
load="$CARGO_TARGET_DIR/release/rapport-load"
out=benches/results/load
[ $short -eq 1 ] && out=$(mktemp -d)
mkdir -p "$out"
echo "results in $out" >&2
has() { local s; for s in "${steps[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

# `brief` (datasets/load/personas) has a ~150-token prompt; the shipped personas' ~750 tokens cost
# ~20 s of prefill per new conversation on two cores, which would turn every figure into a
# prefill figure (`rapport bench llm` measures that cost: its `persona-700` prompt).
brief=(--personas datasets/load/personas --persona brief)
if has sweep; then
  # Two curves. One worker (the default on a CPU): people queue for the model, fairly. As many
  # workers as people: mistral.rs batches their sequences; the ratio to one stream is the gain.
  # The batched servers log their engine steps, summarised beside the sweep: how much of the
  # engine's time went to reading prompts, which no batching shares on a CPU.
  mkdir -p "$out/sweep-batched"
  steps="$out/sweep-batched/engine-steps.log"
  rm -f "$steps"
  if [ $short -eq 1 ]; then
    "$load" sweep --levels 1,4 --turns 1 --min-conversations 4 --workers 1 "${brief[@]}" --out "$out/sweep-queue"
    "$load" sweep --levels 1,4 --turns 1 --min-conversations 4 "${brief[@]}" --engine-steps "$steps" --out "$out/sweep-batched"
  else
    "$load" sweep --levels 1,4,16,64 --turns 1 --min-conversations 8 --workers 1 "${brief[@]}" --out "$out/sweep-queue"
    "$load" sweep --levels 1,4,16,64 --turns 1 --min-conversations 8 "${brief[@]}" --engine-steps "$steps" --out "$out/sweep-batched"
  fi
  python3 benches/engine_steps.py "$steps" | tee "$out/sweep-batched/engine-steps.md"
fi
if has load; then
  if [ $short -eq 1 ]; then
    "$load" run --scenario short --users 4 --turns 2 "${brief[@]}" --out "$out"
    "$load" run --scenario long --users 1 --turns 12 "${brief[@]}" --serve-arg=--context-tokens --serve-arg=600 --out "$out"
    "$load" run --scenario burst --users 8 --turns 1 "${brief[@]}" --out "$out"
  else
    "$load" run --scenario short --users 8 --turns 2 "${brief[@]}" --out "$out"
    "$load" run --scenario long --users 1 --turns 40 "${brief[@]}" --serve-arg=--context-tokens --serve-arg=800 --out "$out"
    "$load" run --scenario burst --users 16 --turns 2 "${brief[@]}" --out "$out"
  fi
fi
if has chaos; then
  pg_db="rapport_pressure_$$"
  as_postgres "psql -p $pg_port -q -c \"CREATE DATABASE $pg_db OWNER rapport\""
  pg_url="${RAPPORT_TEST_POSTGRES_URL%/*}/$pg_db"
  if [ $short -eq 1 ]; then
    "$load" chaos kill --rounds 3 --people 2 --gap-ms 1000-4000 "${brief[@]}" --out "$out"
    "$load" chaos backend --people 2 --turns 3 --timeout-secs 15 "${brief[@]}" --out "$out"
    "$load" chaos sqlite-writers --people 4 --turns 2 "${brief[@]}" --out "$out"
    "$load" chaos postgres-restart --database-url "$pg_url" --restart-cmd "$RAPPORT_TEST_POSTGRES_RESTART" --rounds 1 --people 2 "${brief[@]}" --out "$out"
  else
    "$load" chaos kill --rounds 8 --people 3 --gap-ms 3000-12000 "${brief[@]}" --out "$out"
    "$load" chaos backend --people 3 --turns 3 "${brief[@]}" --out "$out"
    "$load" chaos sqlite-writers --people 4 --turns 2 "${brief[@]}" --out "$out"
    "$load" chaos postgres-restart --database-url "$pg_url" --restart-cmd "$RAPPORT_TEST_POSTGRES_RESTART" --rounds 2 --people 4 "${brief[@]}" --out "$out"
  fi
  as_postgres "psql -p $pg_port -q -c \"DROP DATABASE IF EXISTS $pg_db WITH (FORCE)\""
fi
if has injection; then
  "$RAPPORT_BIN" eval injection --model smollm2-135m --max-tokens 60 --out "$out/injection-smollm2-135m.json"
  if [ "${PRESSURE_QWEN:-0}" = 1 ]; then
    "$RAPPORT_BIN" eval injection --model qwen2.5-1.5b --pull --max-tokens 60 --out "$out/injection-qwen2.5-1.5b.json"
  fi
fi
