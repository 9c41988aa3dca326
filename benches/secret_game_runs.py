#!/usr/bin/env python3
"""Summarises the secret game over `rapport eval run` directories: per simulated user, the turn
at which the wedding host's secret unlocked (or that it never did), what listening the pipeline
read, and the time steps 1-8 took per turn (the traces' `timings_us.prepare`).

    python3 benches/secret_game_runs.py RUN_DIR [RUN_DIR ...] [--json OUT]

A run made by a build before the listening signals existed has no `signals.thread` in its
traces; its listening columns read 0.
"""
import json
import statistics
import sys
from pathlib import Path


def dialogues(run: Path):
    path = run / "dialogues.jsonl"
    if not path.exists():
        sys.exit(f"{path}: no dialogues.jsonl (is {run} a run directory of `rapport eval run`?)")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON ({e})")


def summarise(run: Path) -> dict:
    rows, prepare = [], []
    for d in dialogues(run):
        traces = [t["trace"] for t in d["turns"] if t.get("trace")]
        unlocked = next((t["turn"] for t in traces if t["secret"].get("status") == "unlocked"), None)
        close = next((t["turn"] for t in traces if t["stage"]["to"] == "close"), None)
        thread = [t["signals"].get("thread", {}) for t in traces]
        prepare += [t["timings_us"]["prepare"] / 1000 for t in traces]
        rows.append({
            "dialogue": d["id"],
            "turns": len(traces),
            "unlocked_at": unlocked,
            "close_at": close,
            "final_closeness": traces[-1]["closeness"]["after"] if traces else None,
            "listened": sum(1 for t in thread if t.get("listened")),
            "answered": sum(1 for t in thread if t.get("answered")),
            "repeats": sum(1 for t in thread if t.get("repeats")),
        })
    unlocked = [r["unlocked_at"] for r in rows if r["unlocked_at"]]
    return {
        "run": str(run),
        "dialogues": len(rows),
        "unlocked": len(unlocked),
        "median_turn_to_unlock": statistics.median(unlocked) if unlocked else None,
        "prepare_ms_p50": statistics.median(prepare) if prepare else None,
        "prepare_ms_p95": sorted(prepare)[int(0.95 * (len(prepare) - 1))] if prepare else None,
        "turns_measured": len(prepare),
        "rows": rows,
    }


def main(argv):
    out = None
    if "--json" in argv:
        i = argv.index("--json")
        out = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if not argv:
        sys.exit(__doc__)
    summaries = [summarise(Path(a)) for a in argv]
    for s in summaries:
        print(f"## {s['run']}: {s['unlocked']} of {s['dialogues']} dialogues unlocked"
              f" (median turn {s['median_turn_to_unlock']}); steps 1-8 p50 {s['prepare_ms_p50']:.2f} ms,"
              f" p95 {s['prepare_ms_p95']:.2f} ms over {s['turns_measured']} turns")
        print("| dialogue | turns | unlocked at | close at | final closeness | listened | answered | repeats |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in s["rows"]:
            print(f"| {r['dialogue']} | {r['turns']} | {r['unlocked_at'] or '—'} | {r['close_at'] or '—'} | {r['final_closeness']} | {r['listened']} | {r['answered']} | {r['repeats']} |")
        print()
    if out:
        Path(out).write_text(json.dumps(summaries, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
