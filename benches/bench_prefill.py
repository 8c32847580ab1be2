#!/usr/bin/env python3
"""Prompt processing on the GPU: ferrite's two attention kernels for prompts beside llama.cpp,
same GPU, same file, same run.

    python benches/bench_prefill.py MODEL.gguf [--lengths 512,4096] [--llama-bench PATH]

For each prompt length: tokens/s of one ``Model.forward(ids, last_only=True)`` over a fresh
prompt (median of 3 after a warm-up), with the tensor-core prompt attention
(attention_prefill.cu, the default) and with ``FERRITE_CUDA_FLASH_PREFILL=0`` (attention.cu's
kernel, one block per query row); with ``--llama-bench``, llama.cpp's ``llama-bench -p LENGTHS
-n 0 -r 3`` on the same file (flash attention auto, its default). Prints one table with the
ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np

import ferrite


def prompt_ids(vocab: int, n: int, seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(100, min(vocab, 150000), n)]


def ferrite_tok_s(path: str, lengths: list[int], flash: bool) -> dict[int, float]:
    # Read when the model's KV cache (and its attention kernels) are made.
    os.environ["FERRITE_CUDA_FLASH_PREFILL"] = "1" if flash else "0"
    m = ferrite.Model.load(path, device="cuda", kv_cache_tokens=max(lengths) + 256)
    vocab = m.config["vocab_size"]
    out = {}
    for n in lengths:
        ids = prompt_ids(vocab, n, seed=n)
        m.forward(ids, last_only=True)  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            m.forward(ids, last_only=True)
            times.append(time.perf_counter() - t0)
        out[n] = n / statistics.median(times)
    del m
    return out


def llama_tok_s(binary: str, path: str, lengths: list[int]) -> dict[int, float]:
    cmd = [binary, "-m", path, "-ngl", "99", "-p", ",".join(map(str, lengths)), "-n", "0", "-r", "3", "-o", "json"]
    runs = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {int(r["n_prompt"]): float(r["avg_ts"]) for r in runs if r.get("n_gen", 0) == 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--lengths", default="512,4096")
    ap.add_argument("--llama-bench", help="path of llama.cpp's llama-bench binary")
    args = ap.parse_args()
    lengths = sorted({int(v) for v in args.lengths.split(",")})

    info = ferrite.cuda_device_info()
    print(f"GPU: {info['name']}, model {args.model}", flush=True)
    flash = ferrite_tok_s(args.model, lengths, flash=True)
    print("ferrite, tensor-core prompt attention:", json.dumps(flash), flush=True)
    old = ferrite_tok_s(args.model, lengths, flash=False)
    print("ferrite, FERRITE_CUDA_FLASH_PREFILL=0:", json.dumps(old), flush=True)
    llama = llama_tok_s(args.llama_bench, args.model, lengths) if args.llama_bench else {}
    if llama:
        print("llama.cpp:", json.dumps(llama), flush=True)

    print("\n| prompt tokens | ferrite (tok/s) | ferrite, attention.cu (tok/s) | llama.cpp (tok/s) | ferrite / llama.cpp |")
    print("| --- | --- | --- | --- | --- |")
    for n in lengths:
        ll = llama.get(n)
        ratio = f"{flash[n] / ll:.2f}x" if ll else "-"
        print(f"| {n} | {flash[n]:,.0f} | {old[n]:,.0f} | {f'{ll:,.0f}' if ll else '-'} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
