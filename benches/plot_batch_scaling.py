"""Chart of aggregate decode tokens/s against the number of sequences, ferrite beside llama.cpp,
from the raw outputs of one GPU run (matplotlib; not a dependency of ferrite).

    python benches/plot_batch_scaling.py BENCH_GENERATE.txt LLAMACPP.txt OUT.png [--title T] [--mode M]

BENCH_GENERATE.txt: the output of benches/bench_generate.py (its one JSON line per batch size);
LLAMACPP.txt: llama-batched-bench's table (S_TG column). The chart is log-log; the ratio to
llama.cpp is written beside each ferrite point.
"""

from __future__ import annotations

import argparse
import json
import re
import sys


def ferrite_rows(path: str, mode: str) -> dict[int, float]:
    rows = {}
    for line in open(path):
        line = line.strip()
        if line.startswith("{") and '"batch"' in line:
            r = json.loads(line)
            if r.get(mode) is not None:
                rows[int(r["batch"])] = float(r[mode])
    return rows


def llamacpp_rows(path: str) -> dict[int, float]:
    rows = {}
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and re.fullmatch(r"\d+", cells[2] or ""):
            rows[int(cells[2])] = float(cells[7])  # B, then S_TG t/s
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bench_generate")
    ap.add_argument("llamacpp")
    ap.add_argument("out")
    ap.add_argument("--mode", default="t0.8+filters", help="the Generator column to plot ('t0.8+filters decode': decode only)")
    ap.add_argument("--title", default="Aggregate decode tokens/s, one H200")
    args = ap.parse_args()
    ours, theirs = ferrite_rows(args.bench_generate, args.mode), llamacpp_rows(args.llamacpp)
    if not ours or not theirs:
        print(f"no rows: ferrite {ours}, llama.cpp {theirs}", file=sys.stderr)
        return 1
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    xs = sorted(ours)
    counted = "decode only" if args.mode.endswith(" decode") else "prefill included"
    ax.plot(xs, [ours[b] for b in xs], "o-", label=f"ferrite Generator ({args.mode.removesuffix(' decode')}, {counted})")
    ls = sorted(theirs)
    ax.plot(ls, [theirs[b] for b in ls], "s--", label="llama.cpp batched-bench S_TG (decode only, no sampling)")
    for b in xs:
        if b in theirs:
            ax.annotate(f"{ours[b] / theirs[b]:.2f}x", (b, ours[b]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequences decoding together")
    ax.set_ylabel("tokens/s (all sequences)")
    ax.set_title(args.title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}: ferrite {ours}, llama.cpp {theirs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
