#!/usr/bin/env python3
"""Draws the emotion model's variants — dev macro-F1 against the layers a classification runs —
from the trainer's logs (benches/results/emotion-finetune.txt) into an SVG, with no plotting
library (the machines Rapport runs on have none).

    python3 benches/plot_emotion_variants.py [LOG] [SVG]
"""
import re
import sys

LOG = sys.argv[1] if len(sys.argv) > 1 else "benches/results/emotion-finetune.txt"
SVG = sys.argv[2] if len(sys.argv) > 2 else "benches/results/emotion-variants.svg"
# The shipped model: variant and the note of its run (1:1 trained 10 epochs at the default lr).
SHIPPED = ("1:1", "10 epochs, lr 1e-4")
GOAL = 0.50

points = []  # (layers, tuned, dev, holdout, note)
run = ""
for line in open(LOG, encoding="utf-8"):
    if line.startswith("## "):
        run = line[3:].strip()
        continue
    m = re.match(r"\s*L(\d+)t(\d+): best epoch (\d+), holdout ([\d.]+), dev macro ([\d.]+)", line)
    if m:
        layers, tuned = int(m[1]), int(m[2])
        note = []
        if "--seed 7" in run:
            note.append("seed 7")
        if "--epochs 10" in run:
            # Run 7 trains 1:1 twice: lr 1e-4 first, then 2e-4.
            note.append("10 epochs, lr " + ("2e-4" if any(p[4].startswith("10 epochs") and p[0] == layers for p in points) else "1e-4"))
        if "again" in run:
            continue  # a repeat with identical numbers
        points.append((layers, tuned, float(m[5]), float(m[4]), ", ".join(note)))

W, H = 900, 420
left, right, top, bottom = 70, 370, 40, 60
y_lo, y_hi = 0.49, 0.535
x_of = lambda layers, tuned: left + (layers - 0.5) / 6.0 * (W - left - right) + (tuned - 1) * 6
y_of = lambda v: top + (y_hi - v) / (y_hi - y_lo) * (H - top - bottom)

out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{left}" y="22" font-size="14" font-weight="bold">Emotion model variants: GoEmotions dev macro-F1 against layers run to classify</text>']
for i in range(0, 10):
    v = y_lo + i * 0.005
    if v > y_hi + 1e-9:
        break
    y = y_of(v)
    out.append(f'<line x1="{left}" x2="{W - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
    out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{v:.3f}</text>')
for layers in range(1, 7):
    x = x_of(layers, 1)
    out.append(f'<text x="{x:.1f}" y="{H - bottom + 18}" text-anchor="middle">{layers}</text>')
out.append(f'<text x="{(left + W - right) / 2:.0f}" y="{H - 18}" text-anchor="middle">MiniLM layers a classification runs (cost grows with them)</text>')
gy = y_of(GOAL)
out.append(f'<line x1="{left}" x2="{W - right}" y1="{gy:.1f}" y2="{gy:.1f}" stroke="#c33" stroke-dasharray="5,4"/>')
out.append(f'<text x="{left + 6}" y="{gy - 5:.1f}" fill="#c33">goal 0.50</text>')
out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{H - bottom}" stroke="#333"/>')
out.append(f'<line x1="{left}" x2="{W - right}" y1="{H - bottom}" y2="{H - bottom}" stroke="#333"/>')
legend_y = top + 10
for layers, tuned, dev, holdout, note in sorted(points, key=lambda p: (p[0], p[1], p[4])):
    x, y = x_of(layers, tuned), y_of(dev)
    name = f"{layers}:{tuned}"
    shipped = (name, note) == SHIPPED
    colour = "#1a7f37" if shipped else ("#888" if note else "#1f5fbf")
    out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{7 if shipped else 5}" fill="{colour}"/>')
    label = f"{name} dev {dev:.3f} · held-out {holdout:.3f}" + (f" ({note})" if note else "") + (" — shipped" if shipped else "")
    out.append(f'<text x="{W - right + 6}" y="{legend_y}" fill="{colour}">{label}</text>')
    out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{W - right + 2}" y2="{legend_y - 4}" stroke="{colour}" stroke-opacity="0.25"/>')
    legend_y += 17
out.append(f'<text x="{left}" y="{H - 2}" font-size="10" fill="#555">LAYERS:TUNED — the top TUNED of LAYERS layers are fine-tuned copies; frozen features + MLP (6 layers): 0.375, off the chart.</text>')
out.append("</svg>")
open(SVG, "w", encoding="utf-8").write("\n".join(out) + "\n")
print(f"{len(points)} variants -> {SVG}")
