#!/usr/bin/env python3
"""How often the device sampler's chunk records settle a draw, on the real model's own logits.

    python scripts/sampler_coverage.py [--model PATH] [--temperature 0.8] [--top-p 0.95]
        [--top-k 0] [--steps 60]

The CUDA sampler (kernels/sampling.cu) cuts each row of logits into chunks of 8,192 tokens and
lists each chunk's 64 best; a draw whose filters end inside the listed tokens (every token above
tau, the largest of the chunks' 64th-best keys, is listed) is settled from those lists, and any
other falls back to one block scanning the whole row several times. This replays that rule in
NumPy float64 on next-token distributions the model itself produces (CPU backend; chat prompts,
continued by draws with the Generator's default filters) and prints how often a top-p cut
(without top-k, as an OpenAI client sends it) reaches below tau, with the nucleus sizes and how
many 16-token tiles hold each nucleus (what a sampler fed by per-tile maxima would gather).
"""

from __future__ import annotations

import argparse

import numpy as np

import ferrite

PROMPTS = [
    "Write a haiku about the sea.",
    "Tell me a story about a dragon who learns to code.",
    "What are three uses of salt?",
    "Explain how a compiler works to a child.",
    "Write a poem about autumn leaves and jazz.",
    "List some ideas for a birthday party.",
]
CHUNK_ELEMS, CHUNK_LIST, TILE_ROWS = 8192, 64, 16
# Longer lists, for comparison: what the same draws would need.
LONGER_LISTS = (128, 256)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--top-k", type=int, default=0, help="0: off (what settles is then the top-p cut alone)")
    ap.add_argument("--steps", type=int, default=60, help="draws per prompt")
    args = ap.parse_args()
    path = args.model or ferrite.fetch_test_model()
    model = ferrite.Model.load(path, device="cpu")
    tok = ferrite.Tokenizer.from_gguf(path)
    rng = np.random.default_rng(0)
    nucleus, listed, tiles, settled = [], [], [], []
    settled_longer = {n: [] for n in LONGER_LISTS}
    for prompt in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        if isinstance(ids, str):
            ids = tok.encode(ids)
        seq = model.new_sequence(len(ids) + args.steps + 1)
        logits = model.forward(ids, seq=seq, last_only=True)
        for _ in range(args.steps):
            s = np.asarray(logits, dtype=np.float64).reshape(-1) / args.temperature
            order = np.argsort(-s, kind="stable")
            mass = np.exp(s[order] - s[order[0]])
            keep = len(s) if args.top_k <= 0 else min(args.top_k, len(s))
            cum = np.cumsum(mass[:keep])
            n = int(np.searchsorted(cum, args.top_p * cum[-1]) + 1)
            # tau: the largest of the chunks' 64th-best keys; every key above it is listed.
            def listed_above(per_chunk: int) -> int:
                tau = max(np.partition(s[c : c + CHUNK_ELEMS], -per_chunk)[-per_chunk] for c in range(0, len(s), CHUNK_ELEMS))
                return int((s > tau).sum())

            n_listed = listed_above(CHUNK_LIST)
            cut = s[order[n - 1]]
            tile_max = s[: len(s) // TILE_ROWS * TILE_ROWS].reshape(-1, TILE_ROWS).max(axis=1)
            nucleus.append(n)
            listed.append(n_listed)
            tiles.append(int((tile_max >= cut).sum()))
            settled.append(n <= n_listed)
            for per_chunk in LONGER_LISTS:
                settled_longer[per_chunk].append(n <= listed_above(per_chunk))
            # Continue with the Generator's default filters (top-k 40), as a chat would.
            best = order[:40]
            p = np.exp(s[best] - s[best[0]])
            logits = model.forward([int(rng.choice(best, p=p / p.sum()))], seq=seq, last_only=True)
        model.free_sequence(seq)
    a = np.array(nucleus)
    print(f"{len(a)} draws, T {args.temperature}, top-p {args.top_p}, top-k {args.top_k or 'off'} ({path})")
    longer = " | ".join(f"settled by lists of {n}" for n in LONGER_LISTS)
    print(f"| nucleus tokens, median / p90 / max | listed above tau, median / min | settled by the chunk lists (64) | {longer} | 16-token tiles holding the nucleus, median / p90 / max |")
    print("| --- " * (4 + len(LONGER_LISTS)) + "|")
    cells = " | ".join(f"{sum(v)} / {len(v)}" for v in settled_longer.values())
    print(f"| {int(np.median(a))} / {int(np.percentile(a, 90))} / {a.max()} | {int(np.median(listed))} / {min(listed)} | "
          f"{sum(settled)} / {len(settled)} | {cells} | {int(np.median(tiles))} / {int(np.percentile(tiles, 90))} / {max(tiles)} |")


if __name__ == "__main__":
    main()
