#!/usr/bin/env python3
"""Which cuBLASLt algorithms the decode step's f16 GEMMs could take, each timed: whether choosing
among cuBLASLt's heuristic results (instead of the first, which cublasGemmEx takes) would
shorten the 22 us a layer that the 0.5B's projections take at 8 sequences for 7.7 us of bytes
(docs/BENCHMARKS.md, eighteenth session).

    python benches/bench_cublaslt_algos.py [--rows 1,8,16] [--shapes real,7b] [--algos 16]

For each projection shape of the real model and of a 7B (the stacked q/k/v and gate/up copies
included), each count of x rows and beta 0 and 1 (a projection added into the residual), the
GEMM ferrite runs (A: the weight's f16 copy, W^T in cuBLAS's column-major view; B: x as f16;
C: float32, alpha 1, float32 sums) is described to cuBLASLt, which returns up to --algos
candidates; each is timed as a CUDA graph of launches rotating over copies of A that together
exceed the H200's L2 (so that every launch reads DRAM, as a decode step does), median of 5
replays. Prints, per case, cublasGemmEx's time (as ferrite called it), the first candidate's,
the best candidate's and its tile / split-K / stages ids. Needs torch and libcublasLt.so.13 (the
GPU machine has both). H200, 2026-12-04: the best candidate was within 0-11 % of cublasGemmEx
everywhere, and every small GEMM took ~4.3 us (docs/BENCHMARKS.md, nineteenth session).
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import os
import statistics

import torch

REAL = [("q/k/v stacked 1152x896", 1152, 896), ("o 896x896", 896, 896), ("gate/up stacked 9728x896", 9728, 896),
        ("down 896x4864", 896, 4864), ("lm_head 151936x896", 151936, 896)]
SEVEN_B = [("q/k/v stacked 4608x3584", 4608, 3584), ("o 3584x3584", 3584, 3584), ("gate 18944x3584", 18944, 3584),
           ("down 3584x18944", 3584, 18944), ("lm_head 152064x3584", 152064, 3584)]
ROTATE_BYTES = 256 << 20
WORKSPACE_BYTES = 32 << 20
# cublasLt.h / library_types.h values (cudarc's bindings of CUDA 13 list the same).
CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16F = 68, 0, 2
DESC_TRANSA, DESC_TRANSB = 3, 4
PREF_MAX_WORKSPACE_BYTES = 1
ALGO_TILE_ID, ALGO_SPLITK_NUM, ALGO_STAGES_ID = 1, 2, 6


class Algo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64 * 8)]


class Heuristic(ctypes.Structure):
    _fields_ = [("algo", Algo), ("workspaceSize", ctypes.c_size_t), ("state", ctypes.c_int), ("wavesCount", ctypes.c_float),
                ("reserved", ctypes.c_int * 4)]


def load_library(soname: str) -> ctypes.CDLL:
    """The CUDA library `soname` (libcublas.so.13, libcublasLt.so.13): the loader's path first,
    then the toolkit's and torch's wheel copies."""
    for path in [soname, *glob.glob(f"/usr/local/cuda*/lib64/{soname}"),
                 *glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu13", "lib", soname))]:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    raise SystemExit(f"{soname} not found")


class GemmEx:
    """cublasGemmEx as ferrite calls it (src/backend/cuda/matmul.rs): the reference column."""

    def __init__(self) -> None:
        self.lib = load_library("libcublas.so.13")
        self.handle = ctypes.c_void_p()
        check(self.lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device="cuda")
        check(self.lib.cublasSetWorkspace_v2(self.handle, ctypes.c_void_p(self.workspace.data_ptr()), ctypes.c_size_t(WORKSPACE_BYTES)),
              "cublasSetWorkspace")

    def matmul(self, problem, algo, a_ptr: int, b_ptr: int, c_ptr: int, beta: float) -> None:
        m, n, k = problem
        check(self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)), "cublasSetStream")
        alpha_v, beta_v = ctypes.c_float(1.0), ctypes.c_float(beta)
        check(self.lib.cublasGemmEx(self.handle, 1, 0, m, n, k, ctypes.byref(alpha_v), ctypes.c_void_p(a_ptr), CUDA_R_16F, k,
                                    ctypes.c_void_p(b_ptr), CUDA_R_16F, k, ctypes.byref(beta_v), ctypes.c_void_p(c_ptr), CUDA_R_32F, m,
                                    CUBLAS_COMPUTE_32F, -1), "cublasGemmEx")


def check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what}: cublasStatus {status}")


class Lt:
    def __init__(self) -> None:
        torch.zeros(1, device="cuda") @ torch.zeros(1, device="cuda")  # torch loads its cuBLAS first
        self.lib = load_library("libcublasLt.so.13")
        self.handle = ctypes.c_void_p()
        check(self.lib.cublasLtCreate(ctypes.byref(self.handle)), "cublasLtCreate")
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device="cuda")

    def layout(self, dtype: int, rows: int, cols: int, ld: int) -> ctypes.c_void_p:
        d = ctypes.c_void_p()
        check(self.lib.cublasLtMatrixLayoutCreate(ctypes.byref(d), dtype, ctypes.c_uint64(rows), ctypes.c_uint64(cols), ctypes.c_int64(ld)),
              "cublasLtMatrixLayoutCreate")
        return d

    def problem(self, m: int, n: int, k: int):
        """OUT^T (m x n, ld m, float32) = A^T (A: k x m f16, ld k) B (k x n f16, ld k)."""
        desc = ctypes.c_void_p()
        check(self.lib.cublasLtMatmulDescCreate(ctypes.byref(desc), CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate")
        for attr, op in ((DESC_TRANSA, 1), (DESC_TRANSB, 0)):
            v = ctypes.c_int32(op)
            check(self.lib.cublasLtMatmulDescSetAttribute(desc, attr, ctypes.byref(v), ctypes.c_size_t(4)), "cublasLtMatmulDescSetAttribute")
        a, b, c = self.layout(CUDA_R_16F, k, m, k), self.layout(CUDA_R_16F, k, n, k), self.layout(CUDA_R_32F, m, n, m)
        return desc, a, b, c

    def candidates(self, problem, count: int) -> list[Heuristic]:
        desc, a, b, c = problem
        pref = ctypes.c_void_p()
        check(self.lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "cublasLtMatmulPreferenceCreate")
        ws = ctypes.c_uint64(WORKSPACE_BYTES)
        check(self.lib.cublasLtMatmulPreferenceSetAttribute(pref, PREF_MAX_WORKSPACE_BYTES, ctypes.byref(ws), ctypes.c_size_t(8)), "preference")
        results = (Heuristic * count)()
        returned = ctypes.c_int(0)
        check(self.lib.cublasLtMatmulAlgoGetHeuristic(self.handle, desc, a, b, c, c, pref, count, results, ctypes.byref(returned)),
              "cublasLtMatmulAlgoGetHeuristic")
        self.lib.cublasLtMatmulPreferenceDestroy(pref)
        return [results[i] for i in range(returned.value) if results[i].state == 0]

    def config(self, algo: Algo, attr: int) -> int:
        v, written = ctypes.c_int32(0), ctypes.c_size_t(0)
        self.lib.cublasLtMatmulAlgoConfigGetAttribute(ctypes.byref(algo), attr, ctypes.byref(v), ctypes.c_size_t(4), ctypes.byref(written))
        return v.value

    def matmul(self, problem, algo: Algo, a_ptr: int, b_ptr: int, c_ptr: int, beta: float) -> None:
        desc, a, b, c = problem
        alpha_v, beta_v = ctypes.c_float(1.0), ctypes.c_float(beta)
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        check(self.lib.cublasLtMatmul(self.handle, desc, ctypes.byref(alpha_v), ctypes.c_void_p(a_ptr), a, ctypes.c_void_p(b_ptr), b,
                                      ctypes.byref(beta_v), ctypes.c_void_p(c_ptr), c, ctypes.c_void_p(c_ptr), c, ctypes.byref(algo),
                                      ctypes.c_void_p(self.workspace.data_ptr()), ctypes.c_size_t(WORKSPACE_BYTES), stream), "cublasLtMatmul")


def time_candidate(lt, problem, algo: Algo, weights: list[torch.Tensor], x: torch.Tensor, out: torch.Tensor, beta: float) -> float:
    """Seconds per GEMM: a CUDA graph of launches over the rotated weight copies, median of 5 replays."""
    launches = max(len(weights), 32)
    for w in weights[:2]:  # warm-up outside the capture (loads the kernel)
        lt.matmul(problem, algo, w.data_ptr(), x.data_ptr(), out.data_ptr(), beta)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(launches):
            lt.matmul(problem, algo, weights[i % len(weights)].data_ptr(), x.data_ptr(), out.data_ptr(), beta)
    times = []
    for _ in range(6):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / launches)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,8,16")
    ap.add_argument("--shapes", default="real,7b")
    ap.add_argument("--algos", type=int, default=16)
    args = ap.parse_args()
    lt = Lt()
    gemm_ex = GemmEx()
    shapes = (REAL if "real" in args.shapes else []) + (SEVEN_B if "7b" in args.shapes else [])
    print(f"{torch.cuda.get_device_name()}: cuBLASLt candidates for the decode GEMMs (f16 in, float32 out and sums)")
    print("| matrix | rows | beta | candidates | cublasGemmEx (us) | first (us) | best (us) | best / GemmEx | best: index, tile, split-K, stages |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, m, k in shapes:
        copies = max(1, -(-ROTATE_BYTES // (m * k * 2)))
        weights = [torch.randn(m, k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies)]
        for n in [int(r) for r in args.rows.split(",")]:
            x = torch.randn(n, k, device="cuda", dtype=torch.float16)
            out = torch.zeros(n, m, device="cuda", dtype=torch.float32)
            problem = lt.problem(m, n, k)
            for beta in (0.0, 1.0):
                found = lt.candidates(problem, args.algos)
                timed = []
                for i, h in enumerate(found):
                    try:
                        timed.append((time_candidate(lt, problem, h.algo, weights, x, out, beta), i, h))
                    except RuntimeError as e:
                        print(f"  {label} n={n} candidate {i}: {e}")
                if not timed:
                    continue
                ex = time_candidate(gemm_ex, (m, n, k), None, weights, x, out, beta)
                first = next(t for t in timed if t[1] == 0)[0] if any(t[1] == 0 for t in timed) else float("nan")
                best_t, best_i, best_h = min(timed, key=lambda t: t[0])
                ids = (lt.config(best_h.algo, ALGO_TILE_ID), lt.config(best_h.algo, ALGO_SPLITK_NUM), lt.config(best_h.algo, ALGO_STAGES_ID))
                print(f"| {label} | {n} | {beta:g} | {len(found)} | {ex * 1e6:.2f} | {first * 1e6:.2f} | {best_t * 1e6:.2f} | {best_t / ex:.2f} | {best_i}, {ids} |",
                      flush=True)
        del weights
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
