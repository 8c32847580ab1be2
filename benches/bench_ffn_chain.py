"""Where a one-sequence decode step's fused FFN launch spends its time: matvec_mma.cu's `ffn_mma_1`
(the 0.5B model's shapes: 896 columns, 4,864 intermediate, Q5_0 gate/up, Q4_K or Q6_K ffn_down),
timed in a chain as the decode step runs it.

The FFN follows the layer's o projection, launched with programmatic dependent launch: its blocks
load their first gate/up tiles before they wait for it, then stage the normalized residual,
multiply, exchange h in their cluster, multiply ffn_down, and meet as split-K does. The bench
chains P pairs of [producer, ffn] in a CUDA graph: the producer stands in for o (56 blocks loading
--producer-kb KB of weights each before their wait, then reading a vector from L2, reducing it and
writing the residual the FFN reads). Each pair reads another copy of the FFN's weights (--copies of
them, more than L2 holds), as a step's layers do. It prints, per variant (a set of defines):

- us a pair, and the producer's chain alone: their difference is the FFN launch's cost in the chain;
- with -DFFN_PROBE=1 (thread 0 of each block stamps %globaltimer and clock64 at twelve points, see
  matvec_mma.cu), the medians over the chain of the last block reaching each point relative to the
  producer's last block's end, and each block's clock cycles from the point before;
- whether the last pair's residual has the same bits in every variant (a variant that changes only
  how the work is scheduled must not change them).

Needs only the CUDA driver and NVRTC (scripts/nvrtc_cubin.py); no ferrite code.

    python benches/bench_ffn_chain.py [--variants=",-DFFN_GU_EARLY=4"] [--down q4_k,q6_k]
        [--pairs 48] [--reps 30] [--producer-kb 10] [--producer-spin-ns 1000]
"""

from __future__ import annotations

import argparse
import ctypes as C
import os
import random
import struct
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from cuda_driver import S8_MAX_NT, TILES, Driver, ProbeChain, Producer, weight_bytes  # noqa: E402
from nvrtc_cubin import BASE_OPTIONS, compile_cubin  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
N_COLS, N_INTER = 896, 4864
RANKS, SLICE, THREADS = 8, 256, 256
PRODUCER_BLOCKS, PRODUCER_THREADS = 56, 256

POINTS = ["entry", "pre-wait done", "released", "x staged", "gate/up products", "h pushed", "peers' h in",
          "h staged", "down products", "cluster done", "last block known", "x written"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="", help="comma-separated define sets (space-separated defines; empty: the default build)")
    ap.add_argument("--down", default="q4_k,q6_k", help="ffn_down's types")
    ap.add_argument("--gate-up", default="q5_0")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--copies", type=int, default=24, help="copies of the FFN's weights, one a pair in turn (24: a layer's each)")
    ap.add_argument("--producer-spin-ns", default="1000", help="extra work a producer does after its wait, as time (ns)")
    ap.add_argument("--producer-kb", type=int, default=10, help="weights a producer block loads before its wait (KB; o's 0.55 MB over 56 blocks: 10)")
    ap.add_argument("--compile-only", action="store_true")
    args = ap.parse_args()
    variants = [v.split() for v in args.variants.split(",")]
    downs = args.down.split(",")
    gu_type = args.gate_up
    src = ROOT / "kernels" / "matvec_mma.cu"

    def defines(down: str, v: list[str], probe: bool) -> list[str]:
        return (["--gpu-architecture=sm_90", *BASE_OPTIONS, f"-DQTYPE={gu_type}", f"-DMMA_S8_MAX_NT={S8_MAX_NT[gu_type]}", "-DMMA_FFN=1",
                 f"-DQTYPE_DOWN={down}"] + v + (["-DFFN_PROBE=1"] if probe else []))

    cubins = {(d, tuple(v), probe): compile_cubin(src, defines(d, v, probe)) for d in downs for v in variants for probe in (False, True)}
    producer_cubin = Producer.cubin()
    if args.compile_only:
        print(f"compiled {len(cubins)} FFN builds and the producer")
        return

    cu = Driver()
    producer = Producer(cu, producer_cubin, PRODUCER_BLOCKS, PRODUCER_THREADS, args.producer_kb, args.pairs)
    rng = random.Random(1)
    gu_cols, gu_tile = TILES[gu_type]
    gu_bytes = (N_INTER // 16) * (N_COLS // gu_cols) * gu_tile
    x, xin = cu.alloc(2 * N_COLS * 4), cu.alloc(4096 * 4)
    cu.copy_to(xin, struct.pack("<4096f", *(rng.uniform(-1, 1) for _ in range(4096))))
    norm_w = cu.alloc(N_COLS * 4)
    cu.copy_to(norm_w, struct.pack(f"<{N_COLS}f", *(rng.uniform(0.5, 1.5) for _ in range(N_COLS))))
    n_slices = N_INTER // SLICE
    grid = n_slices * RANKS
    partials = cu.alloc(n_slices * 2 * N_COLS * 4)
    counters = cu.alloc(RANKS * 4)
    probe_ffn = cu.alloc(args.pairs * grid * 32 * 8)

    for down in downs:
        d_cols, d_tile = TILES[down]
        down_bytes = (N_COLS // 16) * (N_INTER // d_cols) * d_tile
        copies = []
        for c in range(args.copies):
            g, u, dn = cu.alloc(gu_bytes), cu.alloc(gu_bytes), cu.alloc(down_bytes)
            cu.copy_to(g, weight_bytes(3 * c, gu_bytes))
            cu.copy_to(u, weight_bytes(3 * c + 1, gu_bytes))
            cu.copy_to(dn, weight_bytes(3 * c + 2, down_bytes))
            copies.append((g, u, dn))
        mb = (2 * gu_bytes + down_bytes) / 1e6
        for spin in (int(s) for s in args.producer_spin_ns.split(",")):
            print(f"\n## {cu.name}, SM clock {cu.clock_mhz():.0f} MHz (max): ffn_mma_1, {gu_type} gate/up, {down} ffn_down "
                  f"({mb:.2f} MB a layer, {args.copies} copies), {grid} blocks; producer {PRODUCER_BLOCKS} blocks x "
                  f"{producer.kb_a_block} KB, +{spin} ns; {args.pairs} pairs a graph, median of {args.reps} replays\n")
            print("| variant | us a pair | producer alone (us) | FFN's share (us) | " + " | ".join(POINTS) + " |")
            print("| --- " * (4 + len(POINTS)) + "|")
            cyc = []
            x_first = None
            for v in variants:
                fns = {probe: cu.functions(cubins[(down, tuple(v), probe)], ["ffn_mma_1"])["ffn_mma_1"] for probe in (False, True)}

                def ffn_params(i: int, probe_at: int | None) -> list:
                    g, u, dn = copies[i % len(copies)]
                    p = [C.c_uint64(g), C.c_uint64(u), C.c_uint64(dn), C.c_uint(N_COLS), C.c_uint(N_INTER), C.c_uint64(x),
                         C.c_uint64(norm_w), C.c_float(1e-6), C.c_uint64(partials), C.c_uint64(counters)]
                    if probe_at is not None:
                        p.append(C.c_uint64(probe_at))
                    return p

                def chain(probe: bool, with_ffn: bool = True) -> None:
                    for i in range(args.pairs):
                        producer.launch(i, xin, x, N_COLS, N_COLS, spin, probe)
                        if with_ffn:
                            cu.launch(fns[probe], grid, THREADS, ffn_params(i, probe_ffn + 8 * 32 * grid * i if probe else None), pdl=True)

                t_pair = cu.time_graph(lambda: chain(False), args.reps, args.pairs)
                x_out = cu.copy_from(x, N_COLS * 4)  # the last pair's residual: the same bits in every variant
                t_prod = cu.time_graph(lambda: chain(False, False), args.reps, args.pairs)
                cu.copy_to(probe_ffn, bytes(args.pairs * grid * 32 * 8))
                cu.time_graph(lambda: chain(True), 1, args.pairs)
                stamps = struct.unpack(f"<{args.pairs * grid * 32}Q", cu.copy_from(probe_ffn, args.pairs * grid * 32 * 8))
                # Each point as the last block reaching it does, relative to the producer's last
                # block's end (negative: before it); each block's cycles from the point before.
                probed = ProbeChain(stamps, producer.ends(), grid, len(POINTS))
                name = " ".join(v) or "default"
                x_first = x_first or x_out
                if x_out != x_first:
                    diff = max(abs(a - b) for a, b in zip(struct.unpack(f"<{N_COLS}f", x_out), struct.unpack(f"<{N_COLS}f", x_first)))
                    name += f" (x differs from the first variant's: max |diff| {diff:.3g})"
                print(f"| {name} | {t_pair:.2f} | {t_prod:.2f} | {t_pair - t_prod:.2f} | {probed.point_cells()} |", flush=True)
                cyc.append(f"| {name} | {probed.cycle_cells()} |")
            print("\nClock cycles from the point before, median / most over blocks and launches:\n")
            print("| variant | " + " | ".join(POINTS[1:]) + " |")
            print("| --- " * len(POINTS) + "|")
            print("\n".join(cyc))
    print("\nPoint columns: us from the producer's last block end to the last FFN block reaching the point "
          "(median over the chain; globaltimer, so steps of its resolution).")


if __name__ == "__main__":
    main()
