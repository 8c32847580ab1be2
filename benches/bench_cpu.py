"""CPU forward-pass speed of ferrite.Model on the real test model: prefill and decode tokens/s.

    python benches/bench_cpu.py [--prompt-tokens 128] [--decode-tokens 32] [--llama-cpp FILE.json]

Prints one table. The llama.cpp column is filled from a JSON file of the same keys
(``{"prefill_tok_s": .., "decode_tok_s": .., "batch4_decode_tok_s": ..}``), e.g. written by the
llama-cpp-python benchmark; without one it reads "-". Build ferrite with
``maturin develop --release`` first: a debug build is several times slower.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import ferrite


def best_of(n, fn):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--llama-cpp", help="JSON file with llama.cpp numbers for the same runs")
    args = ap.parse_args()

    m = ferrite.Model.load(ferrite.fetch_test_model(), device="cpu", kv_cache_tokens=8192)
    rng = np.random.default_rng(0)
    # Ordinary (non-special) token ids: speed does not depend on which.
    prompt = [int(t) for t in rng.integers(100, 150000, size=args.prompt_tokens)]
    n_dec = args.decode_tokens

    def prefill():
        m.forward(prompt, last_only=True)

    def decode(n_seqs):
        def run():
            seqs = [m.new_sequence(len(prompt) + n_dec + 1) for _ in range(n_seqs)]
            try:
                m.forward_batch([prompt[:16]] * n_seqs, seqs=seqs)
                t0 = time.perf_counter()
                for i in range(n_dec):
                    m.forward_batch([[prompt[16 + i]]] * n_seqs, seqs=seqs)
                run.elapsed = time.perf_counter() - t0
            finally:
                for s in seqs:
                    m.free_sequence(s)

        best = float("inf")
        for _ in range(args.repeats):
            run()
            best = min(best, run.elapsed)
        return n_seqs * n_dec / best

    prefill()  # warm up pages of the memory map
    rows = [
        (f"prefill ({args.prompt_tokens} tokens)", "prefill_tok_s", args.prompt_tokens / best_of(args.repeats, prefill)),
        ("decode (1 sequence)", "decode_tok_s", decode(1)),
        ("decode (batch of 4)", "batch4_decode_tok_s", decode(4)),
    ]
    peer = {}
    if args.llama_cpp:
        with open(args.llama_cpp) as f:
            peer = json.load(f)

    print(f"ferrite CPU, {os.cpu_count()} cores, {ferrite.fetch_test_model().split('/')[-1]}")
    print(f"{'run':<28} {'ferrite tok/s':>14} {'llama.cpp tok/s':>16} {'ratio':>8}")
    for label, key, ours in rows:
        theirs = peer.get(key)
        t = f"{theirs:.1f}" if theirs else "-"
        r = f"{ours / theirs:.2f}x" if theirs else "-"
        print(f"{label:<28} {ours:>14.1f} {t:>16} {r:>8}")


if __name__ == "__main__":
    main()
