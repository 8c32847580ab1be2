#!/usr/bin/env python3
"""Dequantization throughput: ferrite vs gguf-py (the NumPy reference) on the same bytes.

    python benches/bench_dequant.py               # synthetic blocks of every type + real model
    python benches/bench_dequant.py --no-model    # synthetic only
    RAYON_NUM_THREADS=1 python benches/bench_dequant.py   # ferrite on one core

Throughput is output bytes (float32) per second: elements * 4 / seconds. Each timing is the
best of several calls (best-of filters out other processes on a shared machine). ferrite runs
on all cores rayon sees (RAYON_NUM_THREADS); gguf-py's NumPy code is single-threaded. Results
are checked bit-identical while timing, so a fast wrong answer cannot appear in the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

import ferrite
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from gguf import quants as gq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # test_dequant imports its sibling helpers
_spec = importlib.util.spec_from_file_location("test_dequant", HERE.parent / "tests" / "test_dequant.py")
_td = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_td)  # reuse the tests' valid-random-block generator


def best_of(n: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def row(name: str, n_elems: int, t_ferrite: float, t_ref: float) -> str:
    gb = n_elems * 4 / 1e9
    return (f"{name:<28} {n_elems / 1e6:>9.2f} {gb / t_ferrite:>12.2f} {gb / t_ref:>12.3f} "
            f"{t_ref / t_ferrite:>9.1f}x")


HEADER = f"{'tensor':<28} {'Melems':>9} {'ferrite GB/s':>12} {'gguf-py GB/s':>12} {'ratio':>10}"


def synthetic(n_rows: int, n_cols: int) -> None:
    print(f"\nSynthetic random valid blocks, {n_rows} x {n_cols} per type (output GB/s)")
    print(HEADER)
    for type_name in _td.BLOCK_TYPES:
        if not _td.gguf_py_has(type_name):
            print(f"{type_name:<28} (installed gguf-py has no reference)")
            continue
        raw = _td.random_blocks(type_name, n_rows, n_cols, seed=1)
        qtype = GGMLQuantizationType[type_name]
        t_f, got = best_of(5, lambda: ferrite.dequantize(raw, type_name, (n_rows, n_cols)))
        t_r, want = best_of(2, lambda: gq.dequantize(raw, qtype))
        assert np.array_equal(got.view(np.uint32), np.asarray(want, np.float32).view(np.uint32)), type_name
        # gguf-py returns F32 data as a zero-copy view of the input, ferrite copies it out.
        note = "  (gguf-py: zero-copy view)" if type_name == "F32" else ""
        print(row(type_name, n_rows * n_cols, t_f, t_r) + note)


def real_model(path: str) -> None:
    print(f"\nReal model {os.path.basename(path)}: every tensor, grouped by type (output GB/s)")
    print(HEADER)
    reader = GGUFReader(path)
    f = ferrite.GgufFile(path)
    by_type: dict[str, list[float]] = {}
    total = [0, 0.0, 0.0]
    for t in reader.tensors:
        n = int(t.n_elements)
        t_f, got = best_of(3, lambda: f.tensor(t.name))
        t_r, want = best_of(1, lambda: gq.dequantize(t.data, t.tensor_type))
        assert np.array_equal(got.ravel().view(np.uint32), np.asarray(want, np.float32).ravel().view(np.uint32)), t.name
        acc = by_type.setdefault(t.tensor_type.name, [0, 0.0, 0.0, 0])
        acc[0] += n
        acc[1] += t_f
        acc[2] += t_r
        acc[3] += 1
        total[0] += n
        total[1] += t_f
        total[2] += t_r
        if t.name in ("token_embd.weight", "output.weight"):
            print(row(t.name, n, t_f, t_r))
    for name, (n, t_f, t_r, count) in sorted(by_type.items()):
        print(row(f"all {name} ({count} tensors)", n, t_f, t_r))
    print(row("all 291 tensors", total[0], total[1], total[2]))

    print("\nFile open (header, metadata, tensor infos), best of 10")
    t_f, _ = best_of(10, lambda: ferrite.GgufFile(path))
    t_r, _ = best_of(10, lambda: GGUFReader(path))
    print(f"{'':<28} {'ferrite ms':>12} {'gguf-py ms':>12} {'ratio':>10}")
    print(f"{'GgufFile vs GGUFReader':<28} {t_f * 1e3:>12.2f} {t_r * 1e3:>12.2f} {t_r / t_f:>9.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-model", action="store_true", help="skip the real-model section")
    ap.add_argument("--rows", type=int, default=896)
    ap.add_argument("--cols", type=int, default=4864, help="multiple of 256 (and of 64 for NVFP4)")
    args = ap.parse_args()
    threads = os.environ.get("RAYON_NUM_THREADS", f"all ({os.cpu_count()})")
    print(f"ferrite {ferrite.__version__}, numpy {np.__version__}, ferrite threads: {threads}")
    synthetic(args.rows, args.cols)
    if not args.no_model:
        real_model(ferrite.fetch_test_model())


if __name__ == "__main__":
    main()
