#!/usr/bin/env python3
"""Where the embedded engine's time went, from its step log.

Run a server (or `rapport-load sweep`, which starts one per level) with `MISTRALRS_DEBUG=1` and
its log on stderr, then:

    MISTRALRS_DEBUG=1 RAPPORT_LOG=warn,mistralrs_core=info rapport-load sweep --levels 1,4,16 --turns 1 ... 2> steps.log
    python3 benches/engine_steps.py steps.log

The engine logs one line per step ("Prompt[552 (364 cached)] Completion[] - 314.7ms", or
"Prompt[] Completion[548, 536, 553] - 58.9ms") and one per change of a batch's cache, part of
that step's time: "Batch[4] rebuilt - 48.2ms" when every sequence was copied into a new one (a
prompt step that reuses cached prefixes, or a decoding batch that could not be joined), "Batch[5]
joined - 0.9ms" when the decoding batch kept its rows and only new or moved sequences were
copied. Each server's "Beginning dummy run"
(its model loading) starts a row, and its "· N worker(s)" line names it; the log must therefore
include `mistralrs_core`'s info lines, not only the engine's.

A prompt is read once per attempt (a reply, or a draft the clean-up rejected and wrote again),
so "per prompt" columns are per attempt. Why this matters: prompts are read one at a time and
reading one is compute-bound on a CPU, so batching can only shrink the decoding part of a reply.
For the one-stream row, "busy ÷ prompts" is therefore the most any number of workers could gain
over one stream, even if decoding cost nothing.
"""

import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STEP = re.compile(r"Prompt\[(.*?)\] Completion\[(.*?)\] - ([\d.]+)ms")
BATCH_CHANGE = re.compile(r"Batch\[(\d+)\] (rebuilt|joined) - ([\d.]+)ms")
SERVER = re.compile(r"· (\d+) worker\(s\)")
PROMPT = re.compile(r"(\d+)(?: \((\d+) cached\))?")


class Server:
    def __init__(self, label):
        self.label = label
        self.prompts = 0
        self.prompt_ms = 0.0
        self.prompt_tokens_read = 0
        self.decode_steps = 0
        self.decode_ms = 0.0
        self.decoded = 0
        self.rebuilds = 0
        self.rebuild_ms = 0.0
        self.joins = 0
        self.join_ms = 0.0

    def add_step(self, prompts, completions, ms):
        if prompts:
            for entry in prompts.split(", "):
                match = PROMPT.fullmatch(entry)
                if not match:
                    raise ValueError(f"unreadable prompt length {entry!r}")
                length, cached = int(match.group(1)), int(match.group(2) or 0)
                self.prompts += 1
                self.prompt_tokens_read += length - cached
            self.prompt_ms += ms
        else:
            self.decode_steps += 1
            self.decoded += len(completions.split(", "))
            self.decode_ms += ms

    def row(self):
        busy = self.prompt_ms + self.decode_ms
        if self.prompts == 0 or busy == 0:
            return None
        per_prompt = lambda ms: f"{ms / self.prompts:.0f} ms"
        return [
            self.label,
            str(self.prompts),
            f"{busy / 1000:.2f} s",
            f"{self.prompt_ms / 1000:.2f} s ({self.prompt_ms / busy:.0%})",
            per_prompt(self.prompt_ms),
            f"{self.prompt_tokens_read / self.prompts:.0f}",
            f"{self.prompt_tokens_read / (self.prompt_ms / 1000):.0f}",
            f"{self.decode_ms / 1000:.2f} s",
            per_prompt(self.decode_ms),
            f"{self.decoded / max(self.decode_steps, 1):.2f}",
            f"{self.rebuilds} / {self.rebuild_ms / 1000:.2f} s",
            f"{self.joins} / {self.join_ms / 1000:.2f} s",
            f"{busy / self.prompt_ms:.2f}×",
        ]


def read(lines):
    servers = []
    current = None
    warming_up = False
    for number, raw in enumerate(lines, 1):
        line = ANSI.sub("", raw)
        if "Beginning dummy run" in line:
            # A server loading its model: its warm-up steps belong to no reply, and what follows
            # belongs to this server (named once it says how many workers it has).
            current = Server("server")
            servers.append(current)
            warming_up = True
            continue
        if "Dummy run completed" in line:
            warming_up = False
            continue
        server = SERVER.search(line)
        if server and current is not None:
            current.label = f"{server.group(1)} worker(s)"
            continue
        if warming_up or current is None:
            continue
        step = STEP.search(line)
        change = BATCH_CHANGE.search(line)
        if step:
            try:
                current.add_step(step.group(1), step.group(2), float(step.group(3)))
            except ValueError as e:
                raise ValueError(f"line {number}: {e}") from None
        elif change and change.group(2) == "rebuilt":
            current.rebuilds += 1
            current.rebuild_ms += float(change.group(3))
        elif change:
            current.joins += 1
            current.join_ms += float(change.group(3))
    return servers


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        with open(sys.argv[1], encoding="utf-8", errors="replace") as log:
            servers = read(log)
    except OSError as e:
        sys.exit(f"{sys.argv[1]}: {e.strerror}")
    except ValueError as e:
        sys.exit(f"{sys.argv[1]}: {e}")
    rows = [row for row in (s.row() for s in servers) if row]
    if not rows:
        sys.exit(f"{sys.argv[1]}: no engine steps after a model load (were MISTRALRS_DEBUG=1 and RAPPORT_LOG=warn,mistralrs_core=info set?)")
    header = [
        "server", "prompts read", "engine busy", "reading prompts", "per prompt",
        "tokens read per prompt", "prefill tok/s", "decoding", "decoding per prompt",
        "mean batch", "batch rebuilds", "batch joins", "busy ÷ prompts",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
