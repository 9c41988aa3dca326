#!/usr/bin/env python3
"""Rapport (mistral.rs) against llama.cpp on the same GGUF, the same prompts, in one run.

Both engines: greedy decoding, the same chat template (the GGUF's own), the same number of new
tokens, one request at a time, all cores of this machine. Per prompt, run 0 is cold; runs 1..N
keep the system prompt and vary the user line, as the next person talking to the same persona
does, so the shared prefix may come from a cache (llama-cpp-python keeps the matching prefix of
its KV cache, mistral.rs has a prefix cache).

  python3 benches/compare_llamacpp.py --model smollm2-135m --runs 5

The llama.cpp side runs under the interpreter that benches/setup_llamacpp.sh prints. This
script runs the two engines one after the other, never together, and prints a Markdown table
of ratios: decode = Rapport tok/s / llama.cpp tok/s (>= 1 means Rapport is as fast or faster);
TTFT = Rapport seconds / llama.cpp seconds (<= 1 means Rapport answers as soon or sooner).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_prompts(path):
    prompts = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        p = json.loads(line)
        system = p.get("system") or (Path(path).parent / p["system_file"]).read_text().strip()
        prompts.append({"id": p["id"], "messages": [{"role": "system", "content": system}, {"role": "user", "content": p["user"]}]})
    return prompts


def nearest_rank(values, pct):
    v = sorted(values)
    k = max(1, -(-int(pct * len(v)) // 100))
    return v[min(k, len(v)) - 1]


def run_llamacpp(model_path, prompts, runs, max_tokens, threads):
    from llama_cpp import Llama  # imported here: only the peer's interpreter has it

    llm = Llama(model_path=str(model_path), n_ctx=4096, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
    out = []
    for p in prompts:
        ttfts, decode, cold, tokens = [], [], None, 0
        for run in range(runs + 1):
            # Same as `rapport bench llm`: later runs change only the user line.
            messages = [dict(m) for m in p["messages"]]
            if run > 0:
                messages[-1]["content"] = f"{messages[-1]['content']} ({run})"
            start = time.perf_counter()
            first, n = None, 0
            for chunk in llm.create_chat_completion(messages, temperature=0.0, top_k=1, max_tokens=max_tokens, stream=True):
                delta = chunk["choices"][0].get("delta", {})
                if delta.get("content"):
                    n += 1
                    if first is None:
                        first = time.perf_counter() - start
            total = time.perf_counter() - start
            tokens = n
            if run == 0:
                cold = first
            else:
                ttfts.append(first)
                if n > 1 and total > first:
                    decode.append((n - 1) / (total - first))
        out.append({
            "id": p["id"], "completion_tokens": tokens, "ttft_cold_s": cold,
            "ttft_p50_s": nearest_rank(ttfts, 50), "ttft_p95_s": nearest_rank(ttfts, 95),
            "decode_tok_per_s_p50": nearest_rank(decode, 50) if decode else 0.0,
        })
    return out


def machine():
    """The CPU this ran on, so that a figure is never read as another machine's: kernels tuned on
    one CPU have lost on the next (issue 36). Model name, the SIMD flags the engines can use,
    cores, and the date."""
    info = {"cpu": "unknown", "flags": [], "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and info["cpu"] == "unknown":
            info["cpu"] = value.strip()
        elif key == "flags" and not info["flags"]:
            wanted = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16")
            have = set(value.split())
            info["flags"] = [f for f in wanted if f in have]
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--prompts", default=str(ROOT / "datasets/prompts/bench-llm.jsonl"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rapport", default=os.environ.get("RAPPORT_BIN", "rapport"))
    ap.add_argument("--json-out")
    ap.add_argument("--llamacpp-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    prompts = load_prompts(args.prompts)
    model_path = subprocess.run([args.rapport, "models", "path", args.model], check=True, capture_output=True, text=True).stdout.strip()

    if args.llamacpp_only:
        print(json.dumps(run_llamacpp(model_path, prompts, args.runs, args.max_tokens, args.threads)))
        return

    setup = ROOT / "benches/setup_llamacpp.sh"
    peer_python = subprocess.run(["bash", str(setup)], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    print(f"llama.cpp: {args.model}, {len(prompts)} prompts x {args.runs + 1} runs ...", file=sys.stderr)
    peer = json.loads(subprocess.run(
        [peer_python, __file__, "--llamacpp-only", "--model", args.model, "--runs", str(args.runs), "--max-tokens", str(args.max_tokens),
         "--prompts", args.prompts, "--threads", str(args.threads), "--rapport", args.rapport],
        check=True, capture_output=True, text=True).stdout)
    print(f"rapport: {args.model} ...", file=sys.stderr)
    ours = json.loads(subprocess.run(
        [args.rapport, "bench", "llm", "--model", args.model, "--runs", str(args.runs), "--max-tokens", str(args.max_tokens),
         "--prompts", args.prompts, "--json"], check=True, capture_output=True, text=True).stdout)

    rows = []
    for theirs, mine in zip(peer, ours["prompts"]):
        rows.append({
            "prompt": mine["id"], "prompt_tokens": mine["prompt_tokens"],
            "llamacpp": theirs, "rapport": mine,
            "decode_ratio": mine["decode_tok_per_s_p50"] / theirs["decode_tok_per_s_p50"] if theirs["decode_tok_per_s_p50"] else None,
            "ttft_ratio": mine["ttft_p50_s"] / theirs["ttft_p50_s"] if theirs["ttft_p50_s"] else None,
            "ttft_cold_ratio": mine["ttft_cold_s"] / theirs["ttft_cold_s"] if theirs["ttft_cold_s"] else None,
        })

    def f(x, spec):
        return "-" if x is None else format(x, spec)

    cpu = machine()
    print(f"\n{args.model}, greedy, {args.max_tokens} new tokens, {args.threads} threads, p50 of {args.runs} runs after a cold one")
    print(f"{cpu['cpu']} ({cpu['cores']} cores; {' '.join(cpu['flags'])}), {cpu['date']}\n")
    print("| prompt | tokens | decode tok/s llama.cpp | decode tok/s Rapport | decode ratio | TTFT llama.cpp | TTFT Rapport | TTFT ratio | cold TTFT llama.cpp | cold TTFT Rapport |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, m = r["llamacpp"], r["rapport"]
        print(f"| {r['prompt']} | {r['prompt_tokens']} | {f(t['decode_tok_per_s_p50'], '.1f')} | {f(m['decode_tok_per_s_p50'], '.1f')} | "
              f"{f(r['decode_ratio'], '.2f')}x | {f(t['ttft_p50_s'], '.2f')} s | {f(m['ttft_p50_s'], '.2f')} s | {f(r['ttft_ratio'], '.2f')}x | "
              f"{f(t['ttft_cold_s'], '.2f')} s | {f(m['ttft_cold_s'], '.2f')} s |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"model": args.model, "runs": args.runs, "max_tokens": args.max_tokens, "machine": cpu, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
