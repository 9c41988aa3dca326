#!/usr/bin/env python3
"""Writes BENCHMARKS.md from the JSON results in benches/results/, so that the figures on that
page are generated from what the runs wrote, never retyped.

    python3 benches/benchmarks.py          # write BENCHMARKS.md
    python3 benches/benchmarks.py --check  # exit 1 if BENCHMARKS.md is not what the results give

Each table names the machine, the date and the command that reproduce it, as far as the result
file recorded them (files that predate recording say so).
"""
import glob
import json
import os
import random
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benches", "results")
OUT = os.path.join(ROOT, "BENCHMARKS.md")


def load(path):
    with open(path) as f:
        return json.load(f)


def rel(path):
    return os.path.relpath(path, ROOT)


def machine(context):
    m = context.get("machine") or {}
    cpu = m.get("cpu") or "CPU not recorded"
    cores = m.get("cores")
    return f"{cpu}, {cores} cores" if cores else cpu


def latency_section():
    files = sorted(glob.glob(os.path.join(RESULTS, "latency", "*.json")))
    if not files:
        return []
    out = ["## One person's wait for a reply", "",
           "`cargo run --release -p rapport-load -- latency --model MODEL --persona PERSONA --label LABEL` "
           "(one person, `datasets/prompts/secret-game-guest.txt`; method: [docs/latency.md](docs/latency.md)).", "",
           "| run | machine | date | first turn: first words, ms | turns 2+: first words p50 / p95, ms | TTFT p50, ms | whole reply p50, ms | file |",
           "|---|---|---|---|---|---|---|---|"]
    for f in files:
        d = load(f)
        c, r = d["context"], d["report"]
        ttft = [t["ttft_ms"] for t in r["turns"][1:] if t.get("ttft_ms") is not None]
        ttft_p50 = f"{statistics.median(ttft):.0f}" if ttft else "-"
        later = r["later_first_words_ms"]
        out.append(f"| {c['model']} · {c['persona']} · {c['label']} | {machine(c)} | {c.get('date', '?')} | "
                   f"{r['first_turn_first_words_ms']:.0f} | {later['p50']:.0f} / {later['p95']:.0f} | {ttft_p50} | "
                   f"{r['later_whole_reply_ms']['p50']:.0f} | `{rel(f)}` |")
    # Runs repeated under one label ("LABEL-1", "LABEL-2", …, alternated with another label's in
    # one session) are pooled: every later turn of every run, with a bootstrap interval.
    pooled = {}
    for f in files:
        d = load(f)
        label = d["context"]["label"]
        stem, _, n = label.rpartition("-")
        if stem and n.isdigit():
            pooled.setdefault(stem, []).append(d)
    if pooled:
        out += ["", "Repeated runs, pooled (every turn from the second of every run; 95% bootstrap interval of the median, 2,000 resamples, seed 36):", "",
                "| runs | machine | date | first turn: first words p50, ms | turns 2+: n | first words p50 [95% CI], ms | p95, ms | TTFT p50, ms | whole reply p50, ms |",
                "|---|---|---|---|---|---|---|---|---|"]
        for stem, runs in sorted(pooled.items()):
            c = runs[0]["context"]
            first = [r["report"]["first_turn_first_words_ms"] for r in runs]
            later = [t for r in runs for t in r["report"]["turns"][1:]]
            words = sorted(t["first_words_ms"] for t in later if t.get("first_words_ms") is not None)
            ttft = [t["ttft_ms"] for t in later if t.get("ttft_ms") is not None]
            whole = [t["whole_reply_ms"] for t in later if t.get("whole_reply_ms") is not None]
            lo, hi = median_interval(words)
            p95 = words[min(len(words) - 1, int(0.95 * len(words)))]
            out.append(f"| {c['model']} · {c['persona']} · {stem} × {len(runs)} | {machine(c)} | {c.get('date', '?')} | "
                       f"{statistics.median(first):.0f} | {len(words)} | {statistics.median(words):.0f} [{lo:.0f}, {hi:.0f}] | {p95:.0f} | "
                       f"{statistics.median(ttft):.0f} | {statistics.median(whole):.0f} |")
    return out + [""]


def median_interval(values, resamples=2000, seed=36):
    """95% percentile-bootstrap interval of the median."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def abuse_section():
    files = sorted(glob.glob(os.path.join(RESULTS, "abuse", "*.json")))
    if not files:
        return []
    out = ["## A guest during a flood", "",
           "`cargo run --release -p rapport-load -- abuse` (method and reading: [docs/operate/open.md](docs/operate/open.md)).", "",
           "| run | machine | date | guest first words p50, ms: quiet / flood | guest answered | reads changed the database | flood requests refused | file |",
           "|---|---|---|---|---|---|---|---|"]
    for f in files:
        d = load(f)
        c, r = d["context"], d["report"]
        answers = r["flood_answers"]
        total = sum(answers.values())
        refused = sum(n for k, n in answers.items() if " 429 " in k or " 503 " in k)
        changed = "no" if r["reads"]["rows_before"] == r["reads"]["rows_after"] else "YES"
        out.append(f"| {c['model']} · {r['shared_database']} × {r['processes']} · {c['flood_addresses']} flooding address(es) | "
                   f"{machine(c)} | {c.get('date', '?')} | {r['quiet']['first_words_ms']['p50']:.0f} / {r['flood']['first_words_ms']['p50']:.0f} | "
                   f"{r['quiet']['answered']}/{r['quiet']['sent']}, {r['flood']['answered']}/{r['flood']['sent']} | {changed} | "
                   f"{refused} of {total} ({100 * refused / max(total, 1):.1f}%) | `{rel(f)}` |")
    return out + [""]


def secret_section():
    files = sorted(f for f in glob.glob(os.path.join(RESULTS, "secret-game", "*.json")) if "-before" not in f and "simulated" not in f)
    if not files:
        return []
    out = ["## The secret game under attack", "",
           "`rapport eval injection --model MODEL [--attacks datasets/injection/farming.jsonl]` "
           "(method: [docs/secret-game.md](docs/secret-game.md); the files do not record the machine or date: 2026-12-06, the 2-core AMD EPYC VM, per that page).", "",
           "| suite | model | layout | attacks | secret in a locked prompt | secret in a reply | invented secrets shown | unlocked | file |",
           "|---|---|---|---|---|---|---|---|---|"]
    for f in files:
        d = load(f)
        suite = "farming (30 messages each)" if "farming" in os.path.basename(f) else "injection and invention"
        out.append(f"| {suite} | {d['model']} | {d.get('layout') or 'not recorded'} | {d['attacks']} | {d['secret_in_prompt']} | {d['secret_in_reply']} | "
                   f"{d.get('secret_invented', '-')} | {d.get('unlocked', '-')} | `{rel(f)}` |")
    return out + [""]


def llamacpp_section():
    files = sorted(glob.glob(os.path.join(RESULTS, "llamacpp-*.json")))
    if not files:
        return []
    out = ["## The engine against llama.cpp", "",
           "`python3 benches/compare_llamacpp.py --model MODEL --runs N` (greedy, 48 new tokens; ratios: decode Rapport ÷ llama.cpp, "
           "≥ 1 is as fast or faster). Each result records its machine since issue 36; the files without one predate that, and "
           "docs/dev/speed.md dates them (2026-11-24, a Zen 3). Issue 36 measured 0.74–0.76× for the default model with a persona in "
           "context on the 2-core AMD EPYC of the tables above, so read each row as its machine's figure only.", "",
           "| model | prompt | tokens | decode tok/s llama.cpp | decode tok/s Rapport | decode ratio | TTFT ratio | machine | file |",
           "|---|---|---|---|---|---|---|---|---|"]
    for f in files:
        d = load(f)
        m = d.get("machine")
        where = f"{m['cpu']}, {m['cores']} cores, {m['date']}" if m else "not recorded (2026-11-24, Zen 3)"
        for row in d["rows"]:
            out.append(f"| {d['model']} | {row['prompt']} | {row['prompt_tokens']} | {row['llamacpp']['decode_tok_per_s_p50']:.1f} | "
                       f"{row['rapport']['decode_tok_per_s_p50']:.1f} | {row['decode_ratio']:.2f}× | {row['ttft_ratio']:.2f}× | {where} | `{rel(f)}` |")
    return out + [""]


def change_rows(d, wanted, a_name, b_name):
    """A comparison's table (`rapport eval compare`'s compare.json), the measures in `wanted` order."""
    out = [f"| measure | {a_name} | {b_name} | change [95% CI] | p | Holm p | verdict |",
           "|---|---|---|---|---|---|---|"]
    by_id = {ch["id"]: ch for ch in d["changes"]}
    for key in wanted:
        ch = by_id.get(key)
        if not ch:
            continue
        delta = ch["difference"]["delta"]
        out.append(f"| {ch['name']} | {ch['mean_a']:.2f} | {ch['mean_b']:.2f} | {delta['value']:+.2f} [{delta['low']:+.2f}, {delta['high']:+.2f}] | "
                   f"{ch['difference']['p_value']:.3f} | {ch['p_adjusted']:.3f} | {ch['verdict']} |")
    return out


def partner_section():
    path = os.path.join(RESULTS, "partner", "compare.json")
    if not os.path.exists(path):
        return []
    d, c = load(path), load(os.path.join(RESULTS, "partner", "context.json"))
    out = ["## The character guard, off and on", "",
           f"{machine(c)}, {c['date']}, `{c['model']}` as persona, simulated users and judge (`--method expected`); "
           f"{d['paired_dialogues']} paired dialogues; {c['note']}. Commands: " + "; ".join(f"`{x}`" for x in c["commands"]) +
           " (reading: [docs/eval/partner-quality.md](docs/eval/partner-quality.md)).", ""]
    out += change_rows(d, ["character_breaks", "unanswered_questions", "in_role", "engaging", "empathy", "guard_rejections",
                           "fallbacks", "ttft_ms", "reply_ms"], "guard off", "guard on")
    return out + [f"", f"File: `{rel(path)}`.", ""]


def judged_batches_section(folder, title, reading, wanted):
    """Paired batch comparisons listed in `folder`/context.json, each as a table of `wanted`."""
    c_path = os.path.join(RESULTS, folder, "context.json")
    if not os.path.exists(c_path):
        return []
    c = load(c_path)
    out = [f"## {title}", "",
           f"{machine(c)}, {c['date']}, `{c['model']}` as persona, simulated users and judge (`--method expected`); "
           f"{c['note']}. Commands: " + "; ".join(f"`{x}`" for x in c["commands"]) +
           f" (reading: [{reading.split('#')[0]}]({reading})).", ""]
    for comparison in c["comparisons"]:
        path = os.path.join(RESULTS, folder, comparison["file"])
        d = load(path)
        out += [f"**{comparison['a']} → {comparison['b']}**, {d['paired_dialogues']} paired dialogues (`{rel(path)}`):", ""]
        out += change_rows(d, wanted, comparison["a"], comparison["b"])
        out.append("")
    return out


def partner_whole_section():
    return judged_batches_section(
        os.path.join("partner", "whole"), "The partner, judged: the first version against today's defaults",
        "docs/eval/partner-quality.md#the-whole-change-judged-2026-12-07",
        ["character_breaks", "fact_contradictions", "unanswered_questions", "emotion_mirroring", "in_role", "engaging",
         "empathy", "guard_rejections", "fallbacks", "new_prompt_tokens", "ttft_ms", "reply_ms"])


def best_of_section():
    files = sorted(glob.glob(os.path.join(RESULTS, "best-of", "*", "summary.json")))
    if not files:
        return []
    out = ["## Best of N against one draft", "",
           "Turns of a finished batch replayed from the same state with one draft and with N drafts chosen by the "
           "judge's turn scorer; the pairwise judge compares the two replies in both orders (a preference counts only "
           "when both orders agree). Net preference: mean of +1 (best of N preferred), −1 (one draft), 0 (tie), with "
           "a 95% bootstrap interval; p from sign flips, Holm-adjusted over the criteria. Wait: the replayed turn's "
           "whole prompt is read first, so both start from a warm cache (reading: "
           "[docs/eval/best-of.md](docs/eval/best-of.md)).", "",
           "| machine · date | model · N · chosen by | turns | criterion | N preferred / one preferred / tie | net preference | p (Holm) | "
           "first words p50, one → N | added wait to the first words | N drafts ÷ one draft's time | chooser s a turn | file |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    est = lambda e: "—" if not e else f"{e['value']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]"
    plain = lambda e: "—" if not e else f"{e['value']:.2f} [{e['low']:.2f}, {e['high']:.2f}]"
    commands = []
    for f in files:
        d = load(f)
        c_path = os.path.join(os.path.dirname(f), "context.json")
        c = load(c_path) if os.path.exists(c_path) else {}
        commands += c.get("commands", [])
        sm = d["summary"]
        one, many = sm["single_first_words_ms_p50"] / 1000, sm["best_first_words_ms_p50"] / 1000
        added = sm["added_first_words_s"]
        for p in sm["preferences"]:
            net = p["net"]
            out.append(f"| {machine(c)} · {c.get('date', '?')} | {d['model']} · {d['best_of']} · {', '.join(d['choose_by'])} | "
                       f"{sm['n']} | {p['criterion']} | {p['best']} / {p['single']} / {p['tie']} | "
                       f"{net['value']:+.2f} [{net['low']:+.2f}, {net['high']:+.2f}] | {p['p_value']:.3f} ({p['p_holm']:.3f}) | "
                       f"{one:.2f} → {many:.2f} s | {est(added)} s | {plain(sm.get('drafting_ratio'))}× | {plain(sm.get('chooser_s'))} | `{rel(f)}` |")
    if commands:
        out += ["", "Commands: " + "; ".join(f"`{x}`" for x in commands) + "."]
    return out + [""]


def optimize_section():
    files = sorted(glob.glob(os.path.join(RESULTS, "optimize", "*", "summary.json")))
    if not files:
        return []
    out = ["## Prompt search (`rapport eval optimize`), held out", "",
           "A persona's prompt choices (which examples and in what order, how many per stage, the notes' wording, the "
           "layout) searched by successive halving on turns of a finished batch's training cells (simulator × seed), "
           "each candidate answering the logged message after the logged conversation; the winner and the persona as "
           "it is are then scored on the held-out cells only. Value = the turn scorer's mean over the criteria minus "
           "the fault cost per fault (a sent break of character 1, a rejected first draft ½). Winner − as it is, "
           "paired by turn, 95% bootstrap interval, sign-flip p, Holm over value and the criteria (reading: "
           "[docs/eval/optimize.md](docs/eval/optimize.md)).", "",
           "| machine · date | model · persona | candidates · training turns | winner | held-out n | measure | as it is | winner | winner − as it is | p (Holm) | file |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    est = lambda e: "—" if not e else f"{e['value']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]"
    num = lambda v: "—" if v is None else f"{v:.2f}"
    commands = []
    for f in files:
        d = load(f)
        c_path = os.path.join(os.path.dirname(f), "context.json")
        c = load(c_path) if os.path.exists(c_path) else {}
        commands += c.get("commands", [])
        o = d["outcome"]
        n_candidates = len(o["rounds"][0]["standings"]) if o["rounds"] else 1
        winner = f"`{o['winner']['id']}`"
        gains = o["held_out"] or [{"measure": "value", "before": None, "after": None, "delta": None, "p_value": None, "p_holm": None, "n": 0}]
        for g in gains:
            if g["measure"] not in ("value", "in_role", "engaging", "empathy", "breaks", "redrafts"):
                continue
            p = "—" if g["p_value"] is None else (f"{g['p_value']:.3f}" + ("" if g["p_holm"] is None else f" ({g['p_holm']:.3f})"))
            out.append(f"| {machine(c)} · {c.get('date', '?')} | {d['model']} · {o['persona']} | {n_candidates} · {o['train_turns']} | "
                       f"{winner} | {g['n']} | {g['measure']} | {num(g['before'])} | {num(g['after'])} | {est(g['delta'])} | {p} | `{rel(f)}` |")
    if commands:
        out += ["", "Commands: " + "; ".join(f"`{x}`" for x in commands) + "."]
    return out + [""]


def layout_section():
    return judged_batches_section(
        "layout", "Prompt layouts, judged", "docs/eval/prompt-layout.md",
        ["character_breaks", "unanswered_questions", "in_role", "engaging", "empathy", "voice", "new_prompt_tokens",
         "prompt_tokens", "ttft_ms", "reply_ms", "guard_rejections", "fallbacks"])


def judge_section():
    files = sorted(f for f in glob.glob(os.path.join(RESULTS, "judge", "*.json")) if not f.endswith("context.json"))
    if not files:
        return []
    c = load(os.path.join(RESULTS, "judge", "context.json"))
    out = ["## How far the judge agrees with people", "",
           f"{machine(c)}, {c['date']}. Commands: " + "; ".join(f"`{x}`" for x in c["commands"]) +
           " (reading: [docs/eval/evaluation.md](docs/eval/evaluation.md#calibration-against-people)). "
           "Spearman ρ against the chitchat raters on the held-out split, with 95% bootstrap intervals.", "",
           "| judge · method | dimension | held-out n | ρ raw | ρ calibrated | expected − argmax of the same call | unreadable | file |",
           "|---|---|---|---|---|---|---|---|"]
    est = lambda e: "undefined" if not e else f"{e['value']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]"
    for f in files:
        r = load(f)
        cal = {v["dimension"]: v for v in r.get("calibrated_vs_raw", [])}
        arg = {v["dimension"]: v for v in r.get("expected_vs_argmax", [])}
        for dim in r["dimensions"]:
            name = dim["dimension"]
            out.append(f"| {r['judge_model']} · {r['method']} | {name} | {dim['n']} | {est(dim['spearman'])} | "
                       f"{est(cal.get(name, {}).get('rho'))} | {est(arg.get(name, {}).get('difference'))} | {dim['unreadable']} | `{rel(f)}` |")
    out.append("")
    turns = sorted(glob.glob(os.path.join(RESULTS, "judge", "turns", "*.json")))
    if turns and c.get("turn_commands"):
        out += [f"**The turn scorer** ({c.get('turn_date', c['date'])}, same machine): each message scored alone in the context before it (at most 8 a conversation, evenly "
                "spaced), averaged per conversation, against the whole-conversation judge on the same held-out items "
                "(paired bootstrap of the difference in ρ; the whole-conversation run's report is in `turns/whole/`). Commands: " + "; ".join(f"`{x}`" for x in c["turn_commands"]) + ".", "",
                "| dimension | n | ρ turn by turn | ρ whole conversation | turn − whole | messages scored | s per message | s per conversation, whole | file |",
                "|---|---|---|---|---|---|---|---|---|"]
        for f in turns:
            r = load(f)
            vs = {v["dimension"]: v for v in r.get("versus_baseline", [])}
            per_message = r["seconds"] / max(r.get("replies_judged", 0), 1)
            for dim in r["dimensions"]:
                v = vs.get(dim["dimension"], {})
                out.append(f"| {dim['dimension']} | {dim['n']} | {est(dim['spearman'])} | {est(v.get('rho_other'))} | "
                           f"{est(v.get('difference'))} | {r.get('replies_judged', 0)} | {per_message:.2f} | "
                           f"{c.get('whole_seconds_per_conversation', 0):.2f} | `{rel(f)}` |")
        out.append("")
    breaks = sorted(f for f in glob.glob(os.path.join(RESULTS, "judge", "turn-breaks", "*.json")))
    plain = lambda e: "undefined" if not e else f"{e['value']:.2f} [{e['low']:.2f}, {e['high']:.2f}]"
    if breaks:
        out += ["**Does the turn scorer see a broken character?** Every generated reply of a batch scored alone in its "
                "context, against the lexical character checks of the same reply (another identity, narration, \"as an "
                "AI\", help-desk lines). AUC: the chance a reply the checks pass scores above one they flag (ties half; "
                "0.5 is blind), 95% bootstrap interval over replies (reading: "
                "[docs/eval/evaluation.md](docs/eval/evaluation.md#the-turn-scorer)).", "",
                "| judge · criterion | batch | replies (flagged) | AUC | mean score, passed / flagged | command | file |",
                "|---|---|---|---|---|---|---|"]
        for f in breaks:
            r = load(f)
            sep = r["separation"]
            out.append(f"| {r['judge_model']} · {r['criterion']} | {r['batch']} | {sep['n']} ({sep['broken']}) | {plain(sep['auc'])} | "
                       f"{sep['mean_clean']:.2f} / {sep['mean_broken']:.2f} | `{r['command']}` | `{rel(f)}` |")
        out.append("")
    return out


def coach_section():
    """The practice coach: how far its detectors agree with a person, and its rewrites."""
    folder = os.path.join(RESULTS, "coach")
    if not os.path.exists(os.path.join(folder, "context.json")):
        return []
    c = load(os.path.join(folder, "context.json"))
    out = ["## The practice coach", "",
           f"{machine(c)}, {c['date']}. Reading: [docs/user/practice.md](docs/user/practice.md).", ""]
    trust = os.path.join(folder, "trust.json")
    if os.path.exists(trust):
        note = f", {c['trust_note']}" if c.get("trust_note") else ""
        out += [f"**Its detectors against a person's labels** (`{c['trust_command']}`{note}; 80 messages, 50 from people "
                "(chitchat) and 30 from simulated learners, labelled without looking at the detectors; none was tuned on them). "
                "Agreement and Cohen's κ with 95% bootstrap intervals:", "",
                "| detector | skill | n (positive) | agreement | κ |", "|---|---|---|---|---|"]
        for a in load(trust):
            k = "undefined" if a["kappa"] is None else (
                f"{a['kappa']:.2f}" + (f" [{a['kappa_ci'][0]:.2f}, {a['kappa_ci'][1]:.2f}]" if a["kappa_ci"] else ""))
            lo, hi = a["agreement_ci"]
            skill = (a["skill"] or "—").replace("_", " ")
            out.append(f"| {a['detector']} | {skill} | {a['n']} ({a['positives']}) | "
                       f"{100 * a['agreement']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] | {k} |")
        out.append("")
    empathy = os.path.join(folder, "empathy-calibration.json")
    if os.path.exists(empathy):
        e = load(empathy)
        out += [f"**The judged \"empathy shown\" against a person's ratings** (`{c['empathy_command']}`): 64 chitchat "
                "conversations (people, MIT licence) of 6–14 lines in which one speaker shares something personal (a word filter "
                "on that side only, then a seeded draw), the other's replies rated 1–5 against the rubric's anchors by one "
                "annotator before the judge ran; the mapping is fitted on the 40% training split, "
                f"agreement reported on the held-out split. Judge `{e['judge_model']}`, method `{e['method']}`, "
                f"{e['seconds'] / max(e['judged_now'], 1):.1f} s per conversation.", "",
                "| criterion | held-out n | unreadable | Spearman ρ [95% CI] | Kendall τ-b [95% CI] | mean: person / judge |",
                "|---|---|---|---|---|---|"]
        for d in e["dimensions"]:
            s, k = d["spearman"], d["kendall"]
            out.append(f"| {d['dimension'].replace('_', ' ')} | {d['n']} | {d['unreadable']} | "
                       f"{s['value']:.2f} [{s['low']:.2f}, {s['high']:.2f}] | {k['value']:.2f} [{k['low']:.2f}, {k['high']:.2f}] | "
                       f"{d['human_mean']:.2f} / {d['judge_mean']:.2f} |")
        out.append("")
    runs = sorted(glob.glob(os.path.join(folder, "rewrites-*.json")))
    if runs:
        out += [f"**Its rewrites on the default model** (`{c['rewrites_command']}`): learners' messages from evaluation "
                "batches whose tip suggests something; shown = passed the check. The checks were written on the tuning sets; "
                "the held-out set was run once, after.", "",
                "| set | dialogues | n | shown [95% CI] | judged better than the message | ms p50 / p95 | file |",
                "|---|---|---|---|---|---|---|"]
        for f in runs:
            r = load(f)
            sm = r["summary"]
            lo, hi = sm["shown_ci"]
            better = r.get("better")
            better = f"{better['yes']} of {better['rated']} ({better['by']})" if better else "not rated"
            share = 100 * sm['shown'] / max(sm['n'], 1)
            out.append(f"| {r['role']} | `{r['dialogues']}` | {sm['n']} | {sm['shown']} ({share:.0f}%) [{100 * lo:.0f}, {100 * hi:.0f}] | "
                       f"{better} | {sm['ms_p50']:.0f} / {sm['ms_p95']:.0f} | `{rel(f)}` |")
        out.append("")
    return out


def memory_section():
    """A memory of the person: recall of what was told in an earlier conversation, and facts that hold."""
    folder = os.path.join(RESULTS, "memory")
    if not os.path.exists(os.path.join(folder, "context.json")):
        return []
    c = load(os.path.join(folder, "context.json"))
    out = ["## A memory of the person", "",
           f"`{c['command']}` ({machine(c)}, {c['date']}): five simulated people each tell every persona four facts in a "
           "first conversation; each question about them is then asked in a fresh conversation with what the pipeline read "
           "from the first (the memory) and without it. Answered = the reply contains the fact. Each person also asks about "
           "something never told, where the right answer admits not knowing. Every reply as sent is read by the fact checker. "
           "`tuning`: `datasets/memory/people.jsonl`, on which the prompt was chosen; `held-out`: "
           "`datasets/memory/people-heldout.jsonl`, written before any run and measured once per version (3, 5 and 6, and 6 again once the help-desk cut became the default; every choice made on the tuning set). 95% Wilson intervals. "
           "Reading: [docs/eval/partner-quality.md](docs/eval/partner-quality.md#a-memory-of-the-person).", "",
           "Answered as theirs = answered, and no sentence with the fact says it as her own (\"My parrot is called Pablo\"). "
           "Build = what the pipeline did when the file was measured.", "",
           "| people | build | fact check | questions answered: with the memory | answered as theirs | without | \"I don't remember\" about what was never told: with / without | replies contradicting a fact | prompt tokens with / without | file |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    pct = lambda s: f"{s['k']}/{s['n']} = {100 * s['rate']:.0f}% [{100 * s['ci'][0]:.0f}, {100 * s['ci'][1]:.0f}]"
    builds = c.get("builds", {})
    for f in sorted(glob.glob(os.path.join(folder, "recall-*.json"))):
        r = load(f)
        people = "held-out" if "heldout" in os.path.basename(f) else "tuning"
        build = builds.get(os.path.basename(f), "not recorded")
        theirs = pct(r["recall_as_theirs"]) if r.get("recall_as_theirs") else "not measured"
        out.append(f"| {people} | {build} | {'on' if r['fact_guard'] else 'off'} | {pct(r['recall'])} | {theirs} | {pct(r['recall_without'])} | "
                   f"{r['admits_unknown']['k']} / {r['admits_unknown_without']['k']} of {r['admits_unknown']['n']} | "
                   f"{pct(r['contradictions'])} | {r['prompt_tokens'][0]:.0f} / {r['prompt_tokens'][1]:.0f} | `{rel(f)}` |")
    return out + [""]


def page():
    lines = ["# Benchmarks", "",
             "The current figures, generated from `benches/results/` by `python3 benches/benchmarks.py` "
             "(the test suite checks this page is what the files give). History and superseded figures: "
             "[docs/dev/speed.md](docs/dev/speed.md), [docs/dev/performance.md](docs/dev/performance.md).", ""]
    for section in (judge_section, coach_section, memory_section, layout_section, partner_section, partner_whole_section, best_of_section, optimize_section, latency_section, abuse_section, secret_section, llamacpp_section):
        lines += section()
    return "\n".join(lines).rstrip("\n") + "\n"


def main():
    text = page()
    if "--check" in sys.argv:
        current = open(OUT).read() if os.path.exists(OUT) else ""
        if current != text:
            print("BENCHMARKS.md is not what benches/results/ gives: run python3 benches/benchmarks.py", file=sys.stderr)
            sys.exit(1)
        print("BENCHMARKS.md matches benches/results/")
        return
    with open(OUT, "w") as f:
        f.write(text)
    print(f"wrote {rel(OUT)}")


if __name__ == "__main__":
    main()
