"""Microbenchmark of the quantized GEMM (kernels/matmul_mma.cu: a repacked quantized matrix times
9-512 rows of f16 activations on the tensor cores), kernel by kernel.

    python benches/bench_cuda_gemm.py [--rows 16,64,128] [--types Q4_K,Q6_K,Q5_0,Q8_0]

For the matrix shapes of a 7B model (3584x3584 q/o, 512x3584 k/v, 18944x3584 gate/up, 3584x18944
down) and of the real test model's largest (4864x896 gate/up, 151936x896 LM head), on random
valid blocks: microseconds per launch, the quantized matrix's bytes per second, and the tensor
cores' TFLOP/s. Each figure is a CUDA graph of 20 launches rotating over copies of the matrix
that together exceed 160 MB (so every launch reads its weights from DRAM), replayed and timed
with CUDA events, median of 5 replays.

The peer of this kernel is cuBLAS's f16 GEMM on an f16 copy of each weight, which the backend
takes where the copy fits. Where torch is installed, the same shapes through `torch.matmul` on
f16 (cuBLAS, float32 sums), timed the same way, print beside it with the ratio; the two are also
compared where it matters, a whole decode step (`benches/bench_decode_step.py`, beside the same
command with `FERRITE_CUDA_MMQ_MAX_ROWS=0`, cuBLAS only, and `=512`, this kernel only).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

import ferrite

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_cuda_matvec import random_matrix  # noqa: E402

SHAPES = [
    ("7b gate/up", 18944, 3584), ("7b down", 3584, 18944), ("7b q/o", 3584, 3584), ("7b k/v", 512, 3584),
    ("0.5b gate/up", 4864, 896), ("0.5b LM head", 151936, 896),
]
ROTATE_BYTES = 160_000_000


def cublas_f16_seconds(n_rows: int, n_cols: int, rows: list[int]) -> dict[int, float] | None:
    """Seconds per `x @ W^T` with W an f16 (n_rows, n_cols) matrix (rotating over copies that
    exceed ROTATE_BYTES) and x f16 (n_x, n_cols), through torch (cuBLAS): median of 5 repeats of
    20 launches, timed with CUDA events. None without torch or CUDA in torch."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    copies = max(2, -(-ROTATE_BYTES // (2 * n_rows * n_cols)))
    ws = [torch.randn(n_rows, n_cols, dtype=torch.float16, device="cuda") * 0.02 for _ in range(copies)]
    out = {}
    for n_x in rows:
        x = torch.randn(n_x, n_cols, dtype=torch.float16, device="cuda")
        for i in range(copies):  # warm-up (cuBLAS picks its kernel)
            torch.matmul(x, ws[i].t())
        times = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(20):
                torch.matmul(x, ws[i % copies].t())
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / 20)
        out[n_x] = statistics.median(times)
    del ws
    torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="16,64,128")
    ap.add_argument("--types", default="Q4_K,Q6_K,Q5_0,Q8_0")
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    print(f"{ferrite.cuda_device_info()['name']}, ferrite {ferrite.__version__}\n")
    print("| matrix | type | rows of x | us | GB/s (quantized) | TFLOP/s | cuBLAS f16 on a copy (us) | cuBLAS / this |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, n_rows, n_cols in SHAPES:
        peer = cublas_f16_seconds(n_rows, n_cols, rows)
        for name in args.types.split(","):
            if n_cols % (256 if name.endswith("_K") else 32):
                continue  # a width that is not a whole number of the type's blocks
            raw = random_matrix(name, n_rows, n_cols, np.random.default_rng(0))
            copies = max(2, -(-ROTATE_BYTES // raw.nbytes))
            r = ferrite._ferrite._cuda_matvec_time(raw, name, n_rows, n_cols, rows, "tiled", copies, 20, 5)
            for n_x in rows:
                s = statistics.median(r["seconds"][n_x])
                theirs = f"{peer[n_x] * 1e6:.1f} | {peer[n_x] / s:.2f}x" if peer else "- | -"
                print(f"| {label} {n_rows}x{n_cols} | {name} | {n_x} | {s * 1e6:.1f} | {raw.nbytes / s / 1e9:,.0f} | {2 * n_rows * n_cols * n_x / s / 1e12:.1f} | {theirs} |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
