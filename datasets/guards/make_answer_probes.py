#!/usr/bin/env python3
"""Builds answers.jsonl: does a message answer the question just asked? Labelled pairs for the
'substance' signal of the closeness decision (crates/pipeline/src/listening.rs).

Positives are real: in chitchat-dataset (BYU PCC lab, MIT licence, 7,168 human conversations),
a turn that ends with a question, and the other person's next turn. Negatives are that same
question paired with the answer to a question in another conversation (an answer, but not to
this question), plus the farming lines of datasets/injection/farming.jsonl paired with questions
(a message that ignores what was asked). Each row carries the split its conversation falls in
(train or held_out, by a hash of the conversation id), so a threshold tuned on one is reported
on the other.

    python3 -m pip download --no-deps chitchat-dataset==0.9.0 -d /tmp/cc && cd /tmp/cc && unzip -q *.whl
    python3 datasets/guards/make_answer_probes.py /tmp/cc/chitchat_dataset/dataset.json > datasets/guards/answers.jsonl
"""
import hashlib
import json
import random
import sys
from pathlib import Path

PAIRS = 400
FARMING = Path(__file__).resolve().parent.parent / "injection" / "farming.jsonl"


def split_of(conversation_id: str) -> str:
    return "train" if hashlib.sha256(conversation_id.encode()).digest()[0] % 2 == 0 else "held_out"


def turns(conversation):
    return [" ".join(part["text"].strip() for part in turn).strip() for turn in conversation["messages"]]


def main(path: str) -> None:
    data = json.load(open(path))
    rng = random.Random(20261206)
    pairs = []
    for cid in sorted(data):
        t = turns(data[cid])
        for i in range(len(t) - 1):
            q, a = t[i], t[i + 1]
            if q.endswith("?") and 2 <= len(q.split()) <= 30 and 1 <= len(a.split()) <= 40:
                pairs.append((cid, q, a))
    rng.shuffle(pairs)
    chosen = pairs[:PAIRS]
    others = pairs[PAIRS:]
    farming = []
    if FARMING.exists():
        for line in FARMING.read_text().splitlines():
            if line.strip():
                farming.extend(json.loads(line)["turns"])
    farming = sorted(set(farming))
    out = sys.stdout
    for n, (cid, q, a) in enumerate(chosen):
        split = split_of(cid)
        out.write(json.dumps({"question": q, "message": a, "answers": True, "split": split, "source": "chitchat"}) + "\n")
        if n % 4 == 3 and farming:
            wrong = farming[rng.randrange(len(farming))]
            source = "farming"
        else:
            wrong = others[rng.randrange(len(others))][2]
            source = "chitchat-other"
        out.write(json.dumps({"question": q, "message": wrong, "answers": False, "split": split, "source": source}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
