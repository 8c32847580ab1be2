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
attributes never reached the driver, see LaunchAttr.)
"""

from __future__ import annotations

import argparse
import ctypes as C
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from nvrtc_cubin import BASE_OPTIONS, compile_source  # noqa: E402

SOURCE = r"""
typedef unsigned int u32;
__device__ __forceinline__ float block_sum(float v, float* red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) s += red[w];
    __syncthreads();
    return s;
}
#define MAX_W4 16
// This block's share of phase p's weights: w4_per_thread float4 a thread, in registers.
__device__ __forceinline__ void load_weights(const float4* __restrict__ w, unsigned long long phase_off4,
                                             int w4_per_thread, float4 (&r)[MAX_W4]) {
    const unsigned long long base = phase_off4 + ((unsigned long long)blockIdx.x * blockDim.x + threadIdx.x) * w4_per_thread;
#pragma unroll
    for (int i = 0; i < MAX_W4; i++)
        if (i < w4_per_thread) asm volatile("ld.global.nc.L1::no_allocate.v4.f32 {%0,%1,%2,%3}, [%4];"
                                            : "=f"(r[i].x), "=f"(r[i].y), "=f"(r[i].z), "=f"(r[i].w) : "l"(w + base + i));
}
__device__ __forceinline__ float use_weights(int w4_per_thread, const float4 (&r)[MAX_W4]) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < MAX_W4; i++)
        if (i < w4_per_thread) s += r[i].x + r[i].y + r[i].z + r[i].w;
    return s;
}
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
        float s = use_weights(w4_per_thread, r) * 1e-30f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) s += __ldcg(xin + i);
        s = block_sum(s, red);
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


class LaunchAttr(C.Structure):
    # c_ubyte, not c_char: a c_char array field reads back as a bytes copy, so writing into it
    # changed nothing and every attribute went out as zeros (before 2026-12-06's thirty-eighth
    # session, this file's dependent launches were plain ones).
    _fields_ = [("id", C.c_int), ("pad", C.c_ubyte * 4), ("value", C.c_ubyte * 64)]


class LaunchConfig(C.Structure):
    _fields_ = [
        ("gx", C.c_uint), ("gy", C.c_uint), ("gz", C.c_uint),
        ("bx", C.c_uint), ("by", C.c_uint), ("bz", C.c_uint),
        ("smem", C.c_uint), ("stream", C.c_void_p), ("attrs", C.POINTER(LaunchAttr)), ("n_attrs", C.c_uint),
    ]


PROGRAMMATIC_STREAM_SERIALIZATION = 6


class Cuda:
    def __init__(self) -> None:
        self.cu = C.CDLL("libcuda.so.1")
        self.check(self.cu.cuInit(0), "cuInit")
        dev = C.c_int()
        self.check(self.cu.cuDeviceGet(C.byref(dev), 0), "cuDeviceGet")
        self.ctx = C.c_void_p()
        self.check(self.cu.cuDevicePrimaryCtxRetain(C.byref(self.ctx), dev), "ctx")
        self.check(self.cu.cuCtxSetCurrent(self.ctx), "ctx")
        sms = C.c_int()
        self.check(self.cu.cuDeviceGetAttribute(C.byref(sms), 16, dev), "sms")  # MULTIPROCESSOR_COUNT
        self.sms = sms.value
        name = C.create_string_buffer(256)
        self.cu.cuDeviceGetName(name, 256, dev)
        self.name = name.value.decode()

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            msg = C.c_char_p()
            self.cu.cuGetErrorString(rc, C.byref(msg))
            raise RuntimeError(f"{what}: CUDA error {rc} {msg.value!r}")

    def alloc(self, nbytes: int) -> int:
        p = C.c_uint64()
        self.check(self.cu.cuMemAlloc_v2(C.byref(p), C.c_size_t(nbytes)), "cuMemAlloc")
        self.check(self.cu.cuMemsetD8_v2(p, 0, C.c_size_t(nbytes)), "memset")
        return p.value


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
    cu = Cuda()
    mod = C.c_void_p()
    cu.check(cu.cu.cuModuleLoadData(C.byref(mod), cubin), "cuModuleLoadData")
    f_phase, f_pers = C.c_void_p(), C.c_void_p()
    cu.check(cu.cu.cuModuleGetFunction(C.byref(f_phase), mod, b"phase_kernel"), "fn")
    cu.check(cu.cu.cuModuleGetFunction(C.byref(f_pers), mod, b"persistent_kernel"), "fn")
    blocks_per_sm = C.c_int()
    cu.check(cu.cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(C.byref(blocks_per_sm), f_pers, args.threads, C.c_size_t(0)), "occ")
    stream = C.c_void_p()
    cu.check(cu.cu.cuStreamCreate(C.byref(stream), 1), "stream")  # non-blocking
    ev0, ev1 = C.c_void_p(), C.c_void_p()
    cu.check(cu.cu.cuEventCreate(C.byref(ev0), 0), "ev")
    cu.check(cu.cu.cuEventCreate(C.byref(ev1), 0), "ev")

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
        graph, exe = C.c_void_p(), C.c_void_p()
        cu.check(cu.cu.cuStreamBeginCapture_v2(stream, 0), "capture")  # global mode
        build()
        cu.check(cu.cu.cuStreamEndCapture(stream, C.byref(graph)), "end capture")
        cu.check(cu.cu.cuGraphInstantiateWithFlags(C.byref(exe), graph, C.c_ulonglong(0)), "instantiate")
        times = []
        for rep in range(args.reps + 3):
            cu.check(cu.cu.cuEventRecord(ev0, stream), "rec")
            cu.check(cu.cu.cuGraphLaunch(exe, stream), "graph launch")
            cu.check(cu.cu.cuEventRecord(ev1, stream), "rec")
            cu.check(cu.cu.cuEventSynchronize(ev1), "sync")
            ms = C.c_float()
            cu.check(cu.cu.cuEventElapsedTime(C.byref(ms), ev0, ev1), "elapsed")
            if rep >= 3:
                times.append(ms.value * 1000.0 / args.phases)
        cu.cu.cuGraphExecDestroy(exe)
        cu.cu.cuGraphDestroy(graph)
        return statistics.median(times)

    for grid in [int(g) for g in args.grids.split(",")]:
        for kb in [int(k) for k in args.weight_kb.split(",")]:
            threads_all = grid * args.threads
            w4 = min(16, (kb * 1024 + 16 * threads_all - 1) // (16 * threads_all)) if kb else 0
            phase_stride4 = threads_all * w4
            wrap4 = max(w_total // 16 // max(phase_stride4, 1), 1) * max(phase_stride4, 1)

            def launch(fn, params, pdl, g=grid):
                attr = LaunchAttr()
                attr.id = PROGRAMMATIC_STREAM_SERIALIZATION
                C.memmove(attr.value, (C.c_int * 1)(1), 4)
                cfg = LaunchConfig(g, 1, 1, args.threads, 1, 1, 0, stream, C.pointer(attr) if pdl else None, 1 if pdl else 0)
                ptrs = (C.c_void_p * len(params))(*[C.cast(C.pointer(p), C.c_void_p) for p in params])
                cu.check(cu.cu.cuLaunchKernelEx(C.byref(cfg), fn, ptrs, None), "launch")

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
                cu.check(cu.cu.cuMemsetD32Async(C.c_uint64(counter), 0, C.c_size_t(1), stream), "memset")
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
