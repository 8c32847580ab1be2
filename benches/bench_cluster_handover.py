"""What folding one decode phase into the one before it saves, through a thread block cluster:
two chained launches (attention, then the o projection) against one launch whose blocks form a
cluster and hand over through distributed shared memory.

At one sequence, a layer's attention is 14 blocks (one a query head of the 0.5B model) and its o
projection a launch of its own that waits for all of them. Folded, the 14 blocks of a token would
form one cluster: each leaves its head's output in shared memory, `barrier.cluster` orders those
writes, and each block then reads all 14 outputs from its peers (`mapa` + `ld.shared::cluster`)
and computes its share of o's rows. No launch boundary and no round trip through L2 between the
two. This bench isolates that hand-over, as bench_grid_barrier.py isolates a launch boundary:

- `two launches`: phase A (C blocks a token; each reads the token's vector of n floats from L2,
  reduces it, writes its slice of n / C floats) then phase B (--blocks-b blocks a token, as the
  o projection's launch has; the same kernel: each reads the whole vector phase A wrote, reduces
  it, writes its slice), chained with programmatic dependent launch, each launch loading its
  weights before its wait (phase B's bytes a token the same as the cluster's);
- `cluster`: one kernel doing A, the cluster barrier, B from the peers' shared memory, a second
  barrier (a block's shared memory must outlive its peers' reads), launched with cluster
  dimensions (C, 1, 1) and the same dependent-launch attribute, loading both phases' weights
  before its wait.

A grid is T clusters of C blocks (T tokens). Prints microseconds a pair of phases, chained P
times in a CUDA graph (median of --reps replays). Needs only the CUDA driver and NVRTC (as
scripts/nvrtc_cubin.py finds them); no ferrite code.

    python benches/bench_cluster_handover.py [--clusters 14,7,4] [--tokens 1,4,8]
        [--weight-kb-a 8] [--weight-kb-b 39] [--pairs 48] [--direct]

On an H100 (docs/BENCHMARKS.md, thirty-eighth session) the cluster launch lost at one token: 4.05
us a pair against 3.49 for two launches with no weights, 5.03 against 4.05 with o's weights; it
won only with small clusters at eight tokens (clusters of 4: 4.55 against 6.38).
"""

from __future__ import annotations

import argparse
import ctypes as C
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from cuda_driver import FUNC_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, PHASE_HELPERS, Driver  # noqa: E402
from nvrtc_cubin import BASE_OPTIONS, compile_source  # noqa: E402

SOURCE = "#define MAX_W4 8\n" + PHASE_HELPERS + r"""
__device__ __forceinline__ void wait_previous() {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}
// One phase launched alone, C blocks a token (blockIdx.x / C the token, blockIdx.x % C the
// block's rank): the token's whole vector in (from L2), a block reduction, this block's slice
// of n / C floats out. Phase A and phase B are both this kernel.
extern "C" __global__ void phase(const float* xin, float* xout, int n, int C, const float4* __restrict__ w, u64 off4, int w4) {
    __shared__ float red[32];
    float4 r[MAX_W4];
    load_weights(w, off4, w4, r);
    wait_previous();
    const int t = blockIdx.x / C, rank = blockIdx.x % C, per = n / C;
    const float s = vector_sum(xin + (u64)t * n, n, use_weights(w4, r) * 1e-30f, red);
    for (int i = threadIdx.x; i < per; i += blockDim.x) xout[(u64)t * n + rank * per + i] = s * 1e-3f + (float)i;
}
__device__ __forceinline__ void cluster_barrier() {
    asm volatile("barrier.cluster.arrive.release;\n\tbarrier.cluster.wait.acquire;" ::: "memory");
}
__device__ __forceinline__ float ld_peer(const float* p, u32 rank) {
    const u32 local = (u32)__cvta_generic_to_shared(p);
    u32 remote;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}
// The cluster size a block sees (a check of the launch's cluster dimensions).
extern "C" __global__ void cluster_size(u32* out) {
    u32 nc;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(nc));
    if (threadIdx.x == 0) out[blockIdx.x] = nc;
}
// Both phases in one launch of clusters of C blocks: A's slice stays in shared memory, B reads
// every peer's. Launched with cluster dimensions (C, 1, 1), so a cluster is one token's blocks
// and a block's rank in it is blockIdx.x % C.
extern "C" __global__ void fused_ab(const float* xin, float* xout, int n, int C, const float4* __restrict__ w, u64 off_a4,
                                    u64 off_b4, int w4a, int w4b) {
    __shared__ float red[32];
    __shared__ float slice[1024];
    float4 ra[MAX_W4], rb[MAX_W4];
    load_weights(w, off_a4, w4a, ra);
    load_weights(w, off_b4, w4b, rb);
    wait_previous();
    const int t = blockIdx.x / C, per = n / C;
    const float s = vector_sum(xin + (u64)t * n, n, use_weights(w4a, ra) * 1e-30f, red);
    for (int i = threadIdx.x; i < per; i += blockDim.x) slice[i] = s * 1e-3f + (float)i;
    cluster_barrier();
    float s2 = use_weights(w4b, rb) * 1e-30f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s2 += ld_peer(slice + i % per, (u32)(i / per));
    s2 = block_sum(s2, red);
    const int rank = blockIdx.x % C;
    for (int i = threadIdx.x; i < per; i += blockDim.x) xout[(u64)t * n + rank * per + i] = s2 * 1e-3f + (float)i;
    cluster_barrier();  // peers may still be reading this block's slice
}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", default="14,7,4", help="blocks a token (a cluster's size)")
    ap.add_argument("--tokens", default="1,4,8", help="tokens (clusters) a launch")
    ap.add_argument("--n", type=int, default=896, help="floats of a token's vector")
    ap.add_argument("--threads", type=int, default=512)
    ap.add_argument("--weight-kb-a", type=int, default=8, help="phase A's weights a block (KB)")
    ap.add_argument("--weight-kb-b", type=int, default=39, help="phase B's weights a cluster block (KB; o's 64 rows of Q5_0: 39)")
    ap.add_argument("--blocks-b", type=int, default=56, help="phase B's blocks a token when launched alone (o's: 56 of 16 rows)")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--direct", action="store_true", help="one fused launch outside a graph, synchronized (a check)")
    args = ap.parse_args()
    cubin = compile_source("cluster_handover.cu", SOURCE.encode(), ["--gpu-architecture=sm_90", *BASE_OPTIONS])
    if args.compile_only:
        print(f"compiled: {len(cubin)} bytes of cubin")
        return
    cu = Driver()
    fns = cu.functions(cubin, ["phase", "fused_ab", "cluster_size"])
    for k in ("fused_ab", "cluster_size"):
        cu.check(cu.cu.cuFuncSetAttribute(fns[k], FUNC_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1), "non-portable clusters")

    n, max_tokens = args.n, max(int(t) for t in args.tokens.split(","))
    bufs = [cu.alloc(max_tokens * n * 4) for _ in range(3)]
    w_total = 256 << 20  # more than L2: weights rotate through DRAM as a decode step's do
    w = cu.alloc(w_total)

    if args.direct:
        # The cluster size blocks see for each launch size, then one fused launch outside a
        # graph, with and without the dependent-launch attribute.
        for c in (2, 4, 8, 14, 16):
            try:
                cu.launch(fns["cluster_size"], 2 * c, args.threads, [C.c_uint64(bufs[2])], cluster=c)
                cu.check(cu.cu.cuStreamSynchronize(cu.stream), "sync")
                seen = (C.c_uint * (2 * c))()
                cu.check(cu.cu.cuMemcpyDtoH_v2(seen, C.c_uint64(bufs[2]), C.c_size_t(8 * c)), "copy")
                print(f"clusters of {c}: blocks see {sorted(set(seen))}")
            except RuntimeError as e:
                print(f"clusters of {c}: {e}")
        for pdl in (False, True):
            cu.launch(fns["fused_ab"], 14, args.threads, [C.c_uint64(bufs[0]), C.c_uint64(bufs[1]), C.c_int(n), C.c_int(14), C.c_uint64(w),
                                                          C.c_ulonglong(0), C.c_ulonglong(1 << 20), C.c_int(1), C.c_int(1)], pdl=pdl, cluster=14)
            cu.check(cu.cu.cuStreamSynchronize(cu.stream), f"direct fused launch, pdl={pdl}")
            print(f"direct fused launch (clusters of 14, pdl={pdl}): ok")
        return

    print(f"# {cu.name}; {args.pairs} pairs of phases a graph, {args.threads} threads a block, vectors of {n} "
          f"floats, weights a block: A {args.weight_kb_a} KB, B {args.weight_kb_b} KB (rotating through 256 MB)")
    print("| blocks a token (cluster) | tokens | two launches (us a pair) | cluster, one launch | saved (us a pair) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for c in [int(x) for x in args.clusters.split(",")]:
        for t in [int(x) for x in args.tokens.split(",")]:
            grid = c * t
            cb = args.blocks_b
            # Phase B's weights a token are the same bytes either way: C blocks of --weight-kb-b in
            # the cluster, spread over --blocks-b blocks when B is a launch of its own.
            w4a = min(8, -(-args.weight_kb_a * 1024 // (16 * args.threads)))
            w4b = min(8, -(-args.weight_kb_b * 1024 // (16 * args.threads)))
            w4b_alone = min(8, -(-args.weight_kb_b * c * 1024 // (16 * args.threads * cb)))
            stride_a, stride_b = grid * args.threads * w4a, max(grid * w4b, t * cb * w4b_alone) * args.threads
            wrap = (w_total // 16) // max(stride_a + stride_b, 1) * max(stride_a + stride_b, 1)

            def offsets(p):
                base = (p * (stride_a + stride_b)) % wrap
                return C.c_ulonglong(base), C.c_ulonglong(base + stride_a)

            def two():
                for p in range(args.pairs):
                    oa, ob = offsets(p)
                    x, mid = C.c_uint64(bufs[p % 2]), C.c_uint64(bufs[2])
                    cu.launch(fns["phase"], grid, args.threads, [x, mid, C.c_int(n), C.c_int(c), C.c_uint64(w), oa, C.c_int(w4a)], pdl=True)
                    cu.launch(fns["phase"], t * cb, args.threads,
                              [mid, C.c_uint64(bufs[(p + 1) % 2]), C.c_int(n), C.c_int(cb), C.c_uint64(w), ob, C.c_int(w4b_alone)], pdl=True)

            def fused():
                for p in range(args.pairs):
                    oa, ob = offsets(p)
                    cu.launch(fns["fused_ab"], grid, args.threads, [C.c_uint64(bufs[p % 2]), C.c_uint64(bufs[(p + 1) % 2]), C.c_int(n), C.c_int(c),
                                                                    C.c_uint64(w), oa, ob, C.c_int(w4a), C.c_int(w4b)], pdl=True, cluster=c)

            t_two = cu.time_graph(two, args.reps, args.pairs)
            try:
                t_fused = cu.time_graph(fused, args.reps, args.pairs)
                fused_s, saved = f"{t_fused:.2f}", f"{t_two - t_fused:.2f}"
            except RuntimeError as e:
                fused_s, saved = f"(refused: {e})", "-"
            print(f"| {c} | {t} | {t_two:.2f} | {fused_s} | {saved} |", flush=True)


if __name__ == "__main__":
    main()
