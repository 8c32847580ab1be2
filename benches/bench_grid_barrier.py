"""What a phase boundary costs: a chain of kernels (CUDA graph, with and without programmatic
dependent launch) against one persistent kernel whose phases meet at a grid-wide barrier.

A decode step of one sequence is a chain of ~126 small launches, each of which reads what the
one before wrote (x, q/k/v, the attention output) and ends before the next may read it. This
bench isolates that hand-over. Every phase does what a matrix-vector phase must at least do:
load its share of weights (before the wait / before the barrier, as the decode kernels do),
read the whole vector the phase before wrote (n floats, from L2), reduce it across the block,
and write its share of the next vector. Weights rotate over more bytes than L2 holds.

    python benches/bench_grid_barrier.py [--phases 120] [--grids 14,56,132,264]
        [--weight-kb 0,550,6000]

Prints microseconds a phase for each grid and weight size: `chain` (one launch a phase, PDL off),
`chain+pdl` (the decode path's way: griddepcontrol.wait, then launch_dependents), the same with
each launch asking L2 for the weights of the next phase (or the one after) before its wait
(`cp.async.bulk.prefetch.L2` of 4 KB, or `prefetch.global.L2` a 128-byte line, spread over the
grid's threads), the same chain with weights that L2 holds (two phases' alternating), `persistent`
(one launch, an atomic-counter grid barrier between phases; every block of the grid resident at
once, which the bench checks by occupancy). Needs only the CUDA driver and NVRTC (found as
scripts/nvrtc_cubin.py finds it); no ferrite code.

On an H100 (docs/BENCHMARKS.md, thirty-eighth session) a phase is handed over in 1.7-2.0 us with
dependent launch and 2.5-2.9 us without; the persistent kernel's grid barrier costs 1.35-1.9
times the dependent chain; a 6 MB phase takes 4.35 us, 4.24 with its weights already in L2.
(The thirty-seventh session's figures had dependent launch off in every column: the launch
attributes never reached the driver, see scripts/cuda_driver.py's LaunchAttr.)
"""

from __future__ import annotations

import argparse
import ctypes as C
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from cuda_driver import PHASE_HELPERS, Driver  # noqa: E402
from nvrtc_cubin import BASE_OPTIONS, compile_source  # noqa: E402

SOURCE = PHASE_HELPERS + r"""
// One phase of the chain: weights before the wait, then x, a block reduction, this block's share.
extern "C" __global__ void phase_kernel(const float* __restrict__ xin, float* __restrict__ xout, int n,
                                        const float4* __restrict__ w, unsigned long long phase_off4, int w4_per_thread,
                                        int pdl, unsigned long long next_off4, int line_prefetch) {
    __shared__ float red[32];
    float4 r[MAX_W4];
    load_weights(w, phase_off4, w4_per_thread, r);
    // next_off4 != ~0: ask L2 for the next phase's weights (this grid's share of them, 4 KB a
    // bulk prefetch, as the decode kernels' prefetch window does, or with line_prefetch one
    // prefetch.global.L2 a 128-byte line).
    const unsigned long long bytes = (unsigned long long)gridDim.x * blockDim.x * w4_per_thread * 16;
    const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long n_threads = (unsigned long long)gridDim.x * blockDim.x;
    if (next_off4 != ~0ull && w4_per_thread > 0 && line_prefetch) {
        const char* at = (const char*)(w + next_off4);
        for (unsigned long long o = tid * 128; o < bytes; o += n_threads * 128)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(at + o));
    } else if (next_off4 != ~0ull && w4_per_thread > 0) {
        if (tid * 4096 < bytes) {
            const unsigned long long at = (unsigned long long)(w + next_off4) + tid * 4096;
            const unsigned len = (unsigned)min(4096ull, bytes - tid * 4096);
            asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(at), "r"(len));
        }
    }
    if (pdl) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    }
    float s = use_weights(w4_per_thread, r) * 1e-30f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xin[i];
    s = block_sum(s, red);
    const int per = (n + gridDim.x - 1) / gridDim.x;
    for (int i = threadIdx.x; i < per; i += blockDim.x) {
        const int k = blockIdx.x * per + i;
        if (k < n) xout[k] = s * 1e-3f + (float)k;
    }
}
__device__ __forceinline__ void grid_barrier(u32* counter, u32 target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
        u32 seen;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
        } while (seen < target);
    }
    __syncthreads();
}
// Every phase in one launch: phase p reads bufs[p % 2], writes bufs[(p + 1) % 2], then waits
// for the whole grid. The next phase's weights are loaded before the barrier.
extern "C" __global__ void persistent_kernel(float* bufs, int n, int phases, u32* counter,
                                             const float4* __restrict__ w, unsigned long long phase_stride4,
                                             unsigned long long wrap4, int w4_per_thread) {
    __shared__ float red[32];
    float4 r[MAX_W4];
    load_weights(w, 0, w4_per_thread, r);
    for (int p = 0; p < phases; p++) {
        const float* xin = bufs + (p & 1) * n;
        float* xout = bufs + ((p + 1) & 1) * n;
        const float s = vector_sum(xin, n, use_weights(w4_per_thread, r) * 1e-30f, red);
        const int per = (n + gridDim.x - 1) / gridDim.x;
        for (int i = threadIdx.x; i < per; i += blockDim.x) {
            const int k = blockIdx.x * per + i;
            if (k < n) __stcg(xout + k, s * 1e-3f + (float)k);
        }
        if (p + 1 < phases) load_weights(w, ((unsigned long long)(p + 1) * phase_stride4) % wrap4, w4_per_thread, r);
        grid_barrier(counter, (u32)(p + 1) * gridDim.x);
    }
}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phases", type=int, default=120)
    ap.add_argument("--grids", default="14,56,132,264")
    ap.add_argument("--weight-kb", default="0,550,6000", help="weight bytes a phase (KB), all blocks together")
    ap.add_argument("--n", type=int, default=896, help="floats of the vector handed between phases")
    ap.add_argument("--threads", type=int, default=256)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--compile-only", action="store_true")
    args = ap.parse_args()
    cubin = compile_source("grid_barrier.cu", SOURCE.encode(), ["--gpu-architecture=sm_90", *BASE_OPTIONS])
    if args.compile_only:
        print(f"compiled: {len(cubin)} bytes of cubin")
        return
    cu = Driver()
    fns = cu.functions(cubin, ["phase_kernel", "persistent_kernel"])
    f_phase, f_pers = fns["phase_kernel"], fns["persistent_kernel"]
    blocks_per_sm = C.c_int()
    cu.check(cu.cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(C.byref(blocks_per_sm), f_pers, args.threads, C.c_size_t(0)), "occ")

    n = args.n
    bufs = cu.alloc(2 * n * 4)
    counter = cu.alloc(4)
    w_total = 256 << 20  # more than L2 (50 MB on an H100, 60 on an H200)
    w = cu.alloc(w_total)
    print(f"# {cu.name}, {cu.sms} SMs; {args.phases} phases, {args.threads} threads a block, "
          f"vector of {n} floats; persistent kernel fits {blocks_per_sm.value} blocks an SM")
    print("| grid | weights a phase | chain (us a phase) | chain+pdl | +pdl, bulk prefetch of the next phase's weights | "
          "bulk, the phase after next's | line prefetches, next phase | lines, the phase after next | +pdl, weights in L2 | persistent | persistent / chain+pdl |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    def time_graph(build) -> float:
        return cu.time_graph(build, args.reps, args.phases)

    for grid in [int(g) for g in args.grids.split(",")]:
        for kb in [int(k) for k in args.weight_kb.split(",")]:
            threads_all = grid * args.threads
            w4 = min(16, (kb * 1024 + 16 * threads_all - 1) // (16 * threads_all)) if kb else 0
            phase_stride4 = threads_all * w4
            wrap4 = max(w_total // 16 // max(phase_stride4, 1), 1) * max(phase_stride4, 1)

            def launch(fn, params, pdl, g=grid):
                cu.launch(fn, g, args.threads, params, pdl=pdl)

            def chain(pdl, prefetch=0, line=0, wrap=wrap4):
                def build():
                    for p in range(args.phases):
                        xin = C.c_uint64(bufs + (p & 1) * n * 4)
                        xout = C.c_uint64(bufs + ((p + 1) & 1) * n * 4)
                        off = C.c_ulonglong((p * phase_stride4) % wrap)
                        # prefetch = k: this phase asks for phase p + k's weights.
                        nxt = C.c_ulonglong(((p + prefetch) * phase_stride4) % wrap4 if prefetch else (1 << 64) - 1)
                        launch(f_phase, [xin, xout, C.c_int(n), C.c_uint64(w), off, C.c_int(w4), C.c_int(1 if pdl else 0), nxt, C.c_int(line)], pdl)
                return build

            def persistent():
                cu.check(cu.cu.cuMemsetD32Async(C.c_uint64(counter), 0, C.c_size_t(1), cu.stream), "memset")
                launch(f_pers, [C.c_uint64(bufs), C.c_int(n), C.c_int(args.phases), C.c_uint64(counter), C.c_uint64(w),
                                C.c_ulonglong(phase_stride4), C.c_ulonglong(wrap4), C.c_int(w4)], False)

            t_chain = time_graph(chain(False))
            t_pdl = time_graph(chain(True))
            t_pf1 = time_graph(chain(True, 1)) if w4 else float("nan")
            t_pf2 = time_graph(chain(True, 2)) if w4 else float("nan")
            t_line1 = time_graph(chain(True, 1, 1)) if w4 else float("nan")
            t_line2 = time_graph(chain(True, 2, 1)) if w4 else float("nan")
            # Two phases' weights alternating: after the first replay they are in L2.
            t_l2 = time_graph(chain(True, wrap=2 * phase_stride4)) if w4 else float("nan")
            if grid <= blocks_per_sm.value * cu.sms:
                t_pers = time_graph(persistent)
                pers = f"{t_pers:.2f}"
                ratio = f"{t_pers / t_pdl:.2f}"
            else:
                pers, ratio = "(not resident)", "-"
            real_kb = phase_stride4 * 16 // 1024
            print(f"| {grid} | {real_kb} KB | {t_chain:.2f} | {t_pdl:.2f} | {t_pf1:.2f} | {t_pf2:.2f} | {t_line1:.2f} | {t_line2:.2f} | {t_l2:.2f} | {pers} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
