#!/usr/bin/env python3
"""The CPU backend's two matmul paths on the real model: the default fused one (quantized weights
times activations quantized to 8 bits per block, integer dot products) against
``exact_matmul=True`` (weight rows dequantized to float32 on the fly), for a 64-token prefill and
16 decode steps.

    python benches/bench_cpu_matmul_paths.py
"""

from __future__ import annotations

import time

import numpy as np

import ferrite


def main() -> None:
    path = ferrite.fetch_test_model(verbose=False)
    ids = [int(t) for t in np.random.default_rng(0).integers(100, 150000, 64)]
    print(f"{'matmul path':<14} {'prefill tok/s':>14} {'decode tok/s':>13}")
    for exact in (False, True):
        m = ferrite.Model.load(path, kv_cache_tokens=256, exact_matmul=exact)
        m.forward(ids[:8], last_only=True)  # warm-up
        t0 = time.perf_counter()
        m.forward(ids, last_only=True)
        prefill = len(ids) / (time.perf_counter() - t0)
        s = m.new_sequence(128)
        m.forward(ids[:8], seq=s)
        t0 = time.perf_counter()
        for t in ids[:16]:
            m.forward([t], seq=s)
        decode = 16 / (time.perf_counter() - t0)
        print(f"{'exact f32' if exact else 'fused int8':<14} {prefill:>14.1f} {decode:>13.2f}")


if __name__ == "__main__":
    main()
