#!/usr/bin/env python3
"""Fine-tunes the top encoder layers of all-MiniLM-L6-v2 for GoEmotions, on a GPU.

Why this exists beside `rapport emotion train`: a head on frozen sentence features tops out
near macro-F1 0.375 on dev, because the frozen encoder was trained to place *topics* near each
other, not feelings. Moving the top layers is what closes most of the gap to fine-tuned BERT,
and that takes a GPU for minutes (hours on the 2-core machines Rapport runs on). The program
itself never needs PyTorch: this script writes the tuned layers and the head as safetensors
plus a JSON that `rapport` reads with candle.

The model it trains is a *branch* of the sentence encoder: the embeddings and the bottom
`layers - tuned` layers stay frozen (shared with the sentence vectors used for retrieval, so a
turn computes them once), the top `tuned` layers are copies that are trained, and the head is
the same two-layer MLP over [L2-normalised mean ‖ max] of the branch's last hidden states as
the frozen-feature head. With `--layers L < 6` the branch ends after L layers (a smaller,
faster student).

Nothing about the model is chosen on dev.tsv: a seeded 10 % of train.tsv picks the epoch and
fits the per-label Platt scaling and thresholds (as `rapport emotion train` does); dev.tsv is
scored once at the end and only reported.

Usage (PyTorch, `safetensors` and `tokenizers` installed; a CUDA GPU strongly advised):
    python3 crates/nlu/train/finetune_emotion.py \
        --model-dir ~/.cache/rapport/models/minilm-l6 \
        --data-dir datasets/goemotions \
        --variant 6:2 --out datasets/emotion/goemotions-branch
"""

import argparse
import json
import math
import os
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

NUM_LABELS = 28
MAX_TOKENS = 128  # GoEmotions comments are far shorter; rapport truncates at 256.


def read_tsv(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2:
                continue
            labels = [int(x) for x in parts[1].split(",") if x != ""]
            rows.append((parts[0], labels))
    return rows


class Layer(nn.Module):
    """One BERT layer, written out so that it matches rapport's own pass (crates/nlu/src/bert)
    operation for operation: post-norm, erf GELU, eps from config.json."""

    def __init__(self, hidden, heads, inter, eps):
        super().__init__()
        self.heads, self.eps = heads, eps
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.up = nn.Linear(hidden, inter)
        self.down = nn.Linear(inter, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x, key_mask):
        b, t, h = x.shape
        split = lambda y: y.view(b, t, self.heads, h // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        mask = key_mask[:, None, None, :]  # True where a key is a real token
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.1 if self.training else 0.0)
        ctx = ctx.transpose(1, 2).reshape(b, t, h)
        a = self.attn_norm(x + self.dropout(self.attn_out(ctx)))
        return self.out_norm(a + self.dropout(self.down(F.gelu(self.up(a)))))

    # Names as in the model's safetensors, so tuned layers load where the originals did.
    NAMES = {
        "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
        "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
        "up": "intermediate.dense", "down": "output.dense", "out_norm": "output.LayerNorm",
    }

    def load(self, weights, prefix):
        for mine, theirs in self.NAMES.items():
            module = getattr(self, mine)
            module.weight.data.copy_(weights[f"{prefix}.{theirs}.weight"].float())
            module.bias.data.copy_(weights[f"{prefix}.{theirs}.bias"].float())

    def export(self, prefix):
        out = {}
        for mine, theirs in self.NAMES.items():
            module = getattr(self, mine)
            out[f"{prefix}.{theirs}.weight"] = module.weight.detach().cpu().contiguous()
            out[f"{prefix}.{theirs}.bias"] = module.bias.detach().cpu().contiguous()
        return out


class Branch(nn.Module):
    def __init__(self, config, weights, layers, tuned, head_hidden):
        super().__init__()
        h, eps = config["hidden_size"], config["layer_norm_eps"]
        self.word = nn.Embedding.from_pretrained(weights["embeddings.word_embeddings.weight"].float(), freeze=True)
        self.position = nn.Embedding.from_pretrained(weights["embeddings.position_embeddings.weight"].float(), freeze=True)
        self.token_type0 = nn.Parameter(weights["embeddings.token_type_embeddings.weight"][0].float(), requires_grad=False)
        self.emb_norm = nn.LayerNorm(h, eps=eps)
        self.emb_norm.weight.data.copy_(weights["embeddings.LayerNorm.weight"].float())
        self.emb_norm.bias.data.copy_(weights["embeddings.LayerNorm.bias"].float())
        for p in self.emb_norm.parameters():
            p.requires_grad = False
        self.layers = nn.ModuleList()
        for i in range(layers):
            layer = Layer(h, config["num_attention_heads"], config["intermediate_size"], eps)
            layer.load(weights, f"encoder.layer.{i}")
            for p in layer.parameters():
                p.requires_grad = i >= layers - tuned
            self.layers.append(layer)
        self.first_tuned = layers - tuned
        self.fc1 = nn.Linear(2 * h, head_hidden)
        self.fc2 = nn.Linear(head_hidden, NUM_LABELS)
        self.head_dropout = nn.Dropout(0.2)

    def train(self, mode=True):
        super().train(mode)
        # Frozen layers run as at inference: no dropout, so the tuned layers learn on the
        # hidden states they will see in rapport.
        for layer in self.layers[: self.first_tuned]:
            layer.eval()
        return self

    def forward(self, ids, mask):
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.emb_norm(self.word(ids) + self.position(positions)[None] + self.token_type0)
        with torch.no_grad():
            for layer in self.layers[: self.first_tuned]:
                x = layer(x, mask)
        for layer in self.layers[self.first_tuned:]:
            x = layer(x, mask)
        m = mask[..., None].float()
        mean = F.normalize((x * m).sum(1) / m.sum(1), dim=-1, eps=1e-12)
        biggest = x.masked_fill(~mask[..., None], float("-inf")).amax(1)
        features = torch.cat([mean, biggest], dim=-1)
        return self.fc2(self.head_dropout(F.gelu(self.fc1(features))))


def batches(encoded, order, size, device):
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        longest = max(len(encoded[i][0]) for i in chunk)
        ids = torch.zeros((len(chunk), longest), dtype=torch.long)
        mask = torch.zeros((len(chunk), longest), dtype=torch.bool)
        target = torch.zeros((len(chunk), NUM_LABELS))
        for row, i in enumerate(chunk):
            tokens, labels = encoded[i]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = True
            target[row, labels] = 1.0
        yield ids.to(device), mask.to(device), target.to(device)


@torch.no_grad()
def logits_of(model, encoded, indices, device):
    model.eval()
    # Sorted by length: little padding, and padding does not change a text's result.
    order = sorted(indices, key=lambda i: len(encoded[i][0]))
    out = torch.empty((len(order), NUM_LABELS), device=device)
    gold = torch.empty((len(order), NUM_LABELS), device=device)
    done = 0
    for ids, mask, target in batches(encoded, order, 256, device):
        out[done : done + len(ids)] = model(ids, mask)
        gold[done : done + len(ids)] = target
        done += len(ids)
    return out.double(), gold.bool()


GRID = torch.arange(1, 100, dtype=torch.float64) / 100.0  # rapport's best_threshold grid


def f1_per_threshold(probs, gold):
    """[99, labels] F1 of each label at each grid threshold."""
    pred = probs[None] >= GRID.to(probs.device)[:, None, None]
    tp = (pred & gold[None]).sum(1).double()
    fp = (pred & ~gold[None]).sum(1).double()
    fn = (~pred & gold[None]).sum(1).double()
    return torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn), torch.zeros_like(tp))


def best_thresholds(probs, gold):
    f1 = f1_per_threshold(probs, gold)
    best = f1.argmax(0)  # first maximum, as rapport's strict '>' picks the lowest t
    return GRID.to(probs.device)[best], f1.max(0).values


def macro_f1_at(probs, gold, thresholds):
    pred = probs >= thresholds[None]
    tp = (pred & gold).sum(0).double()
    fp = (pred & ~gold).sum(0).double()
    fn = (~pred & gold).sum(0).double()
    f1 = torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn), torch.zeros_like(tp))
    pooled = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum())
    return f1.mean().item(), pooled.item(), f1.tolist()


def fit_platt(z, y):
    """Per-label Platt scaling by Newton's method with Platt's smoothed targets, all labels at
    once (the same fit as rapport's `fit_platt`)."""
    pos = y.sum(0).double()
    neg = y.shape[0] - pos
    t = torch.where(y, ((pos + 1) / (pos + 2))[None], (1 / (neg + 2))[None])
    a = torch.ones(z.shape[1], dtype=torch.float64, device=z.device)
    b = torch.zeros_like(a)
    for _ in range(100):
        p = torch.sigmoid(a[None] * z + b[None])
        d, w = p - t, (p * (1 - p)).clamp_min(1e-12)
        ga, gb = (d * z).sum(0), d.sum(0)
        haa, hab, hbb = (w * z * z).sum(0) + 1e-6, (w * z).sum(0), w.sum(0) + 1e-6
        det = haa * hbb - hab * hab
        da = (hbb * ga - hab * gb) / det
        db = (haa * gb - hab * ga) / det
        a, b = a - da, b - db
        if da.abs().max() < 1e-9 and db.abs().max() < 1e-9:
            break
    return a, b


def train_variant(args, config, weights, tokenizer, train, dev, layers, tuned, device):
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    encode = lambda rows: [(e.ids[:MAX_TOKENS], labels) for e, (_, labels) in zip(tokenizer.encode_batch([t for t, _ in rows]), rows)]
    encoded, dev_encoded = encode(train), encode(dev)
    order = list(range(len(encoded)))
    rng.shuffle(order)
    holdout_n = round(len(order) * args.holdout)
    holdout, fit = order[:holdout_n], order[holdout_n:]

    model = Branch(config, weights, layers, tuned, args.head_hidden).to(device)
    encoder_params = [p for layer in model.layers for p in layer.parameters() if p.requires_grad]
    head_params = list(model.fc1.parameters()) + list(model.fc2.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": encoder_params, "lr": args.lr}, {"params": head_params, "lr": args.head_lr}],
        weight_decay=args.weight_decay,
    )
    steps_per_epoch = math.ceil(len(fit) / args.batch)
    total = steps_per_epoch * args.epochs
    warmup = max(1, int(total * 0.06))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )

    best = None
    history = []
    started = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        rng.shuffle(fit)
        loss_sum, steps = 0.0, 0
        for ids, mask, target in batches(encoded, fit, args.batch, device):
            loss = F.binary_cross_entropy_with_logits(model(ids, mask), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item()
            steps += 1
        z, gold = logits_of(model, encoded, holdout, device)
        _, per_label = best_thresholds(torch.sigmoid(z), gold)
        tuned_f1 = per_label.mean().item()
        history.append({"epoch": epoch, "loss": loss_sum / steps, "holdout_tuned_macro_f1": tuned_f1})
        print(f"  L{layers}t{tuned} epoch {epoch}: loss {loss_sum / steps:.4f}, holdout tuned macro-F1 {tuned_f1:.4f} ({time.time() - started:.0f} s)", flush=True)
        if best is None or tuned_f1 > best[1]:
            best = (epoch, tuned_f1, {k: v.detach().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    if args.dtype == "f16":
        # Calibrate on the weights as they will be stored.
        for layer in model.layers[model.first_tuned:]:
            for param in layer.parameters():
                param.data = param.data.half().float()

    z, gold = logits_of(model, encoded, holdout, device)
    a, b = fit_platt(z, gold)
    calibrated = torch.sigmoid(a[None] * z + b[None])
    thresholds, _ = best_thresholds(calibrated, gold)
    holdout_macro, _, _ = macro_f1_at(calibrated, gold, thresholds)
    dz, dgold = logits_of(model, dev_encoded, list(range(len(dev_encoded))), device)
    dev_macro, dev_micro, dev_per_label = macro_f1_at(torch.sigmoid(a[None] * dz + b[None]), dgold, thresholds)
    result = {
        "layers": layers, "tuned": tuned, "best_epoch": best[0], "holdout_macro_f1": holdout_macro,
        "dev_macro_f1": dev_macro, "dev_micro_f1": dev_micro, "dev_per_label_f1": dev_per_label,
        "history": history, "seconds": time.time() - started,
    }
    print(f"  L{layers}t{tuned}: best epoch {best[0]}, holdout {holdout_macro:.4f}, dev macro {dev_macro:.4f} micro {dev_micro:.4f}", flush=True)
    return model, result, (a, b, thresholds), (len(fit), len(holdout))


def save(model, stem, args, config, layers, tuned, calibration, split, result, labels):
    a, b, thresholds = calibration
    dtype = torch.float16 if args.dtype == "f16" else torch.float32
    tensors = {}
    for i in range(layers - tuned, layers):
        for name, t in model.layers[i].export(f"encoder.layer.{i}").items():
            tensors[name] = t.to(dtype)
    for name in ("fc1", "fc2"):
        module = getattr(model, name)
        tensors[f"{name}.weight"] = module.weight.detach().cpu().contiguous()
        tensors[f"{name}.bias"] = module.bias.detach().cpu().contiguous()
    save_file(tensors, stem + ".safetensors")
    options = {k: v for k, v in vars(args).items() if k not in ("model_dir", "data_dir", "out", "variant")}
    meta = {
        "format": 2,
        "features": f"all-MiniLM-L6-v2 embeddings and layers 0..{layers - tuned} frozen (shared with the sentence "
                    f"vectors), layers {layers - tuned}..{layers} fine-tuned and stored here; "
                    "L2-normalised mean over tokens, then max over tokens (768)",
        "hidden": args.head_hidden,
        "encoder": {"layers": layers, "tuned_from": layers - tuned},
        "labels": labels,
        "platt": [[float(x), float(y)] for x, y in zip(a.tolist(), b.tolist())],
        "thresholds": [round(float(t), 2) for t in thresholds.tolist()],
        "training": {
            "trainer": "crates/nlu/train/finetune_emotion.py",
            "options": options,
            "report": {"fit_examples": split[0], "holdout_examples": split[1], "best_epoch": result["best_epoch"],
                       "holdout_macro_f1": result["holdout_macro_f1"], "history": result["history"]},
        },
        "attribution": "Trained on GoEmotions (Demszky et al., ACL 2020), CC BY 4.0.",
    }
    with open(stem + ".json", "w") as f:
        json.dump(meta, f, indent=2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True, help="config.json, tokenizer.json and model.safetensors (f32 or f16)")
    p.add_argument("--weights", default="model.safetensors", help="weights file name inside --model-dir")
    p.add_argument("--data-dir", required=True, help="train.tsv, dev.tsv and labels.txt of GoEmotions")
    p.add_argument("--variant", action="append", required=True,
                   help="LAYERS:TUNED, e.g. 6:2 = all six layers, the top two trained; repeatable")
    p.add_argument("--out", help="output stem (one variant) or directory (several); nothing saved if absent")
    p.add_argument("--results", help="write every variant's scores to this JSON file")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--head-hidden", type=int, default=512)
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=20201005)
    p.add_argument("--dtype", choices=["f16", "f32"], default="f16", help="storage of the tuned layers")
    args = p.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # rapport computes in f32; train the same numbers
    with open(os.path.join(args.model_dir, "config.json")) as f:
        config = json.load(f)
    weights = load_file(os.path.join(args.model_dir, args.weights))
    tokenizer = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    with open(os.path.join(args.data_dir, "labels.txt")) as f:
        labels = [line.strip() for line in f if line.strip()]
    assert len(labels) == NUM_LABELS, labels
    train, dev = read_tsv(os.path.join(args.data_dir, "train.tsv")), read_tsv(os.path.join(args.data_dir, "dev.tsv"))
    print(f"{len(train)} train, {len(dev)} dev, device {device}", flush=True)

    results = []
    for variant in args.variant:
        layers, tuned = (int(x) for x in variant.split(":"))
        assert 1 <= tuned <= layers <= config["num_hidden_layers"], variant
        model, result, calibration, split = train_variant(args, config, weights, tokenizer, train, dev, layers, tuned, device)
        results.append(result)
        if args.out:
            stem = args.out if len(args.variant) == 1 else os.path.join(args.out, f"goemotions-L{layers}t{tuned}")
            os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
            save(model, stem, args, config, layers, tuned, calibration, split, result, labels)
        if args.results:
            with open(args.results, "w") as f:
                json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
