"""Where a one-sequence decode step's attention launch spends its time: kernels/attention.cu's
`attention_heads_rope_1` / `_1w8` (one query head a block, RoPE and the KV write inside, float32 or f16 cache, the
0.5B model's 14 heads over 2 KV heads of 64 dims), timed in a chain as the decode step runs it.

A decode step's attention follows the layer's q/k/v projection, launched with programmatic
dependent launch: its blocks start while the projection runs, do what needs no q/k/v (the RoPE
angles; the first K/V rows' loads (ATTN_PRELOAD, on by default; the prefetch with -DATTN_PRELOAD=0)), wait for it, then attend.
The bench chains P pairs of [producer, attention] in a CUDA graph: the producer stands in for q/k/v
(72 blocks loading --producer-kb KB of weights each before their wait, then reading a vector
from L2, reducing it and writing the q/k/v row the attention reads). It prints, per variant
(a set of defines) and context length:

- us a pair, and the producer's chain alone: their difference is the attention launch's cost in
  the chain;
- with -DATTN_PROBE=1 (thread 0 of each block stamps %globaltimer at eight points, see
  attention.cu), the medians over the chain of: the producer's last block end to the attention's
  release from its wait, and each phase after it (q loaded, RoPE, the chunks of keys, the warps'
  partial results, the merge), and when the blocks started and finished their pre-wait work
  relative to the producer's end.

Needs only the CUDA driver and NVRTC (scripts/nvrtc_cubin.py); no ferrite code.

    python benches/bench_attention_chain.py [--ctx 160,512] [--variants ",-DATTN_PRELOAD=0"]
        [--pairs 48] [--reps 30] [--producer-kb 10] [--kernel auto|16]
"""

from __future__ import annotations

import argparse
import ctypes as C
import os
import random
import statistics
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from cuda_driver import Driver, ProbeChain, Producer  # noqa: E402
from nvrtc_cubin import BASE_OPTIONS, compile_cubin  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
HEAD_DIM, N_HEADS, N_KV_HEADS, BLOCK_TOKENS = 64, 14, 2, 16
Q_WIDTH, KV_WIDTH = N_HEADS * HEAD_DIM, N_KV_HEADS * HEAD_DIM
QKV_WIDTH = Q_WIDTH + 2 * KV_WIDTH
PRODUCER_BLOCKS, PRODUCER_THREADS = 72, 256

POINTS = ["entry", "angles done", "pre-wait done", "released", "q loaded", "rope done", "chunks done", "partials written", "merged"]
# Points inside those phases, stamped by thread 0 only (its own loads, warp 0's first chunk):
# (name, point, the point it is measured from).
INNER = [("thread 0's q arrived", 12, 3), ("its new k, v arrived", 13, 12), ("first chunk's start", 9, 5),
         ("scores, softmax", 10, 9), ("values", 11, 10), ("to all warps done", 6, 11)]


def f16_bits(v: float) -> int:
    return struct.unpack("<H", struct.pack("<e", v))[0]


def warps_for(ctx: int) -> int:
    """The backend's rule (attention_shape): one warp a 32 keys, a power of two, 4..16."""
    w = 1
    while w < -(-ctx // 32):
        w *= 2
    return min(max(w, 4), 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ctx", default="160,512", help="keys a sequence (its position + 1)")
    ap.add_argument("--variants", default=",-DATTN_PRELOAD=0", help="comma-separated define sets (space-separated defines; empty: the default build)")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--producer-spin-ns", default="0,1500", help="extra work a producer does after its wait, as time (ns; q/k/v's "
                    "own 4.5 us a launch at one sequence is about the producer's 2.4 with 1,500 more)")
    ap.add_argument("--producer-kb", type=int, default=10, help="weights a producer block loads before its wait (KB; q/k/v's 0.7 MB over 72 blocks: 10)")
    ap.add_argument("--kv", default="f32,f16", help="cache element types (f32: the default cache, f16: kv_cache_dtype='float16')")
    ap.add_argument("--kernel", choices=["auto", "16"], default="auto", help="auto: the kernel the backend takes for the context "
                    "(attention_heads_rope_1w8 for up to 8 warps, else attention_heads_rope_1); 16: attention_heads_rope_1 always")
    ap.add_argument("--compile-only", action="store_true")
    args = ap.parse_args()
    variants = [v.split() for v in args.variants.split(",")]
    kvs = args.kv.split(",")
    base = ["--gpu-architecture=sm_90", *BASE_OPTIONS, f"-DATTN_HEAD_DIM={HEAD_DIM}"]
    src = os.path.join(ROOT, "kernels", "attention.cu")
    from pathlib import Path

    cubins = {(kv, tuple(v), probe): compile_cubin(Path(src), base + [f"-DATTN_KV_F16={int(kv == 'f16')}"] + v + (["-DATTN_PROBE=1"] if probe else []))
              for kv in kvs for v in variants for probe in (False, True)}
    producer_cubin = Producer.cubin()
    if args.compile_only:
        print(f"compiled {len(cubins)} attention builds and the producer")
        return

    cu = Driver()
    producer = Producer(cu, producer_cubin, PRODUCER_BLOCKS, PRODUCER_THREADS, args.producer_kb, args.pairs)
    rng = random.Random(1)
    max_ctx = max(int(c) for c in args.ctx.split(","))
    n_blocks = -(-max_ctx // BLOCK_TOKENS) + 1
    capacity = n_blocks * BLOCK_TOKENS
    table = list(range(n_blocks))
    rng.shuffle(table)  # a sequence's blocks are scattered in the pool
    caches = {}
    for kv in kvs:
        k_cache, v_cache = cu.alloc(capacity * KV_WIDTH * 4), cu.alloc(capacity * KV_WIDTH * 4)
        for buf in (k_cache, v_cache):
            vals = [rng.uniform(-1, 1) for _ in range(capacity * KV_WIDTH)]
            cu.copy_to(buf, struct.pack(f"<{len(vals)}H", *map(f16_bits, vals)) if kv == "f16" else struct.pack(f"<{len(vals)}f", *vals))
        caches[kv] = (k_cache, v_cache)
    x, qkv, out = cu.alloc(4096 * 4), cu.alloc(QKV_WIDTH * 4), cu.alloc(Q_WIDTH * 4)
    cu.copy_to(x, struct.pack("<4096f", *(rng.uniform(-1, 1) for _ in range(4096))))
    cu.copy_to(qkv, struct.pack(f"<{QKV_WIDTH}f", *(rng.uniform(-1, 1) for _ in range(QKV_WIDTH))))
    bias = cu.alloc(QKV_WIDTH * 4)
    cu.copy_to(bias, struct.pack(f"<{QKV_WIDTH}f", *(rng.uniform(-0.1, 0.1) for _ in range(QKV_WIDTH))))
    tables, offsets, positions, slots = cu.alloc(4 * n_blocks), cu.alloc(4), cu.alloc(4), cu.alloc(4)
    cu.copy_to(tables, struct.pack(f"<{n_blocks}I", *table))
    cu.copy_to(offsets, struct.pack("<I", 0))
    grid = (1, N_KV_HEADS, N_HEADS // N_KV_HEADS)
    n_attn_blocks = grid[0] * grid[1] * grid[2]
    probe_attn = cu.alloc(args.pairs * n_attn_blocks * 32 * 8)

    print(f"# {cu.name}, SM clock {cu.clock_mhz():.0f} MHz (max); grid {grid}, "
          f"{BLOCK_TOKENS}-token blocks; producer {PRODUCER_BLOCKS} blocks x {producer.kb_a_block} KB of weights; "
          f"{args.pairs} pairs a graph, median of {args.reps} replays")
    for kv, ctx, spin in [(kv, int(c), int(sp)) for kv in kvs for c in args.ctx.split(",") for sp in args.producer_spin_ns.split(",")]:
        k_cache, v_cache = caches[kv]
        warps = warps_for(ctx)
        pos = ctx - 1
        cu.copy_to(positions, struct.pack("<I", pos))
        cu.copy_to(slots, struct.pack("<I", table[pos // BLOCK_TOKENS] * BLOCK_TOKENS + pos % BLOCK_TOKENS))
        smem = 4 * warps * max(HEAD_DIM, 32 + 32)
        kernel = "attention_heads_rope_1w8" if args.kernel == "auto" and warps <= 8 else "attention_heads_rope_1"
        print(f"\n## {kv} cache, {ctx} keys, {warps} warps a block ({kernel}), producer +{spin} ns\n")
        print("| variant | us a pair | producer alone (us) | attention's share (us) | " + " | ".join(POINTS) + " |")
        print("| --- " * (4 + len(POINTS)) + "|")
        cyc, cyc_inner = [], []
        for v in variants:
            fns = {probe: cu.functions(cubins[(kv, tuple(v), probe)], [kernel])[kernel] for probe in (False, True)}

            def params(probe_at: int | None) -> list:
                p = [C.c_uint64(qkv), C.c_uint64(k_cache), C.c_uint64(v_cache), C.c_uint64(positions), C.c_uint64(offsets),
                     C.c_uint64(tables), C.c_uint(BLOCK_TOKENS), C.c_uint(N_HEADS), C.c_uint(N_KV_HEADS), C.c_uint(1),
                     C.c_float(HEAD_DIM ** -0.5), C.c_uint64(out), C.c_uint64(0), C.c_float(1.0),
                     C.c_uint64(qkv + 4 * Q_WIDTH), C.c_uint64(qkv + 4 * (Q_WIDTH + KV_WIDTH)), C.c_uint64(slots), C.c_uint(capacity),
                     C.c_float(1e6), C.c_float(1.0), C.c_uint(1), C.c_uint(1), C.c_uint64(0), C.c_uint64(0),
                     C.c_uint(QKV_WIDTH), C.c_uint(QKV_WIDTH), C.c_uint64(bias), C.c_uint64(bias + 4 * Q_WIDTH),
                     C.c_uint64(bias + 4 * (Q_WIDTH + KV_WIDTH)), C.c_uint64(0), C.c_uint(0), C.c_uint(0), C.c_ulonglong(0), C.c_ulonglong(0)]
                if probe_at is not None:
                    p.append(C.c_uint64(probe_at))
                return p

            def chain(probe: bool, with_attention: bool = True) -> None:
                for i in range(args.pairs):
                    producer.launch(i, x, qkv, 896, QKV_WIDTH, spin, probe)
                    if with_attention:
                        cu.launch(fns[probe], grid, 32 * warps, params(probe_attn + 8 * 32 * n_attn_blocks * i if probe else None),
                                  pdl=True, smem=smem)

            t_pair = cu.time_graph(lambda: chain(False), args.reps, args.pairs)
            t_prod = cu.time_graph(lambda: chain(False, False), args.reps, args.pairs)
            cu.time_graph(lambda: chain(True), 1, args.pairs)
            stamps = struct.unpack(f"<{args.pairs * n_attn_blocks * 32}Q", cu.copy_from(probe_attn, args.pairs * n_attn_blocks * 32 * 8))
            # Each point as the last block reaches it, relative to the producer's last block's end
            # (negative: before it); and each block's clock cycles from the point before.
            probed = ProbeChain(stamps, producer.ends(), n_attn_blocks, len(POINTS))
            inner = {name: [b[16 + p] - b[16 + before] for blocks in probed.launches for b in blocks] for name, p, before in INNER}
            name = " ".join(v) or "default"
            print(f"| {name} | {t_pair:.2f} | {t_prod:.2f} | {t_pair - t_prod:.2f} | {probed.point_cells()} |", flush=True)
            cyc.append(f"| {name} | {probed.cycle_cells()} |")
            cyc_inner.append(f"| {name} | " + " | ".join(f"{statistics.median(inner[n]):.0f}" for n, _, _ in INNER) + " |")
        print("\nClock cycles from the point before, median / most over blocks and launches:\n")
        print("| variant | " + " | ".join(POINTS[1:]) + " |")
        print("| --- " * len(POINTS) + "|")
        print("\n".join(cyc))
        print("\nInside them, thread 0, median cycles: its q from `released`, its new k and v after that, warp 0's first "
              "chunk from `rope done` to its start, its scores and values, then to `chunks done`:\n")
        print("| variant | " + " | ".join(n for n, _, _ in INNER) + " |")
        print("| --- " * (len(INNER) + 1) + "|")
        print("\n".join(cyc_inner))
    print("\nPoint columns: us from the producer's last block end to the last attention block reaching the point "
          "(median over the chain; globaltimer, so steps of its resolution).")


if __name__ == "__main__":
    main()
