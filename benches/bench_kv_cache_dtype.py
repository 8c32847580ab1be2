#!/usr/bin/env python3
"""Decode with a float32 against an f16 KV cache, side by side in one process: one sequence, a
random prompt of --context tokens, then --tokens single-token forwards (no sampling), each
cache type loaded --rounds times in alternation.

    python benches/bench_kv_cache_dtype.py [--model M] [--device cpu] [--context 1500] [--tokens 48] [--rounds 3]

Prints ms a token per run and the f16 / float32 ratio of the medians. docs/BENCHMARKS.md (the
twenty-third session) has its figures on the CPU.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import numpy as np

import ferrite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--context", type=int, default=1500)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    path = args.model or ferrite.fetch_test_model()
    ids = [int(t) for t in np.random.default_rng(0).integers(100, 5000, size=args.context + args.tokens)]
    cache = -(-(args.context + args.tokens + 1) // 16) * 16
    ms: dict[str, list[float]] = {"float32": [], "float16": []}
    print("| run | KV cache | ms a token |")
    print("| --- | --- | --- |")
    for r in range(args.rounds):
        for kv in ms:
            m = ferrite.Model.load(path, device=args.device, kv_cache_tokens=cache, kv_cache_dtype=kv)
            s = m.new_sequence(max_tokens=args.context + args.tokens)
            m.forward(ids[: args.context], seq=s, last_only=True)
            t = time.perf_counter()
            for tok in ids[args.context :]:
                m.forward([tok], seq=s, last_only=True)
            ms[kv].append((time.perf_counter() - t) / args.tokens * 1e3)
            print(f"| {r + 1} | {kv} | {ms[kv][-1]:.1f} |", flush=True)
            # The model and its threads gone before the next one is timed (a sequence handle
            # keeps its model alive).
            m.free_sequence(s)
            del s, m
            gc.collect()
    ratio = statistics.median(ms["float16"]) / statistics.median(ms["float32"])
    print(f"\n{args.device}, {args.context} positions of context: f16 / float32 = {ratio:.2f}x the time a token")


if __name__ == "__main__":
    main()
