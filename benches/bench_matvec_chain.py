"""Where a one-sequence decode step's small projections spend their time: matvec_mma.cu's planned
one-row kernel (`matvec_mma_1`) on the 0.5B model's o projection (896 x 896, Q5_0, added to the
residual) and q/k/v (896 + 128 + 128 rows of 896, Q5_0, biases, the RMSNorm folded into staging),
timed in a chain as the decode step runs them.

In the decode step's timeline these launches take about 4.3-4.5 us each, where
benches/bench_grid_barrier.py's phase of 56 blocks and 672 KB of weights, handed over by dependent
launch, takes about 1.9 us. The bench chains P pairs of [producer, projection] in a CUDA graph:
the producer stands in for the launch before (attention for o, the fused FFN for q/k/v: 56 blocks
loading --producer-kb KB of weights each before their wait, then reading a vector from L2,
reducing it and writing the vector the projection reads). Each pair reads another copy of the
projection's weights (--copies of them), as a step's layers do. It prints, per shape and variant
(a set of defines, and a plan):

- us a pair, and the producer's chain alone: their difference is the projection's cost in the chain;
- with -DMMA_PROBE=1 (thread 0 of each block stamps %globaltimer and clock64 at thirteen points, see
  matvec_mma.cu), the medians over the chain of the last block reaching each point relative to the
  producer's last block's end, and each block's clock cycles from the point before;
- whether the last pair's output has the same bits in every variant (a variant that changes only
  how the work is scheduled must not change them; another plan may: a column split adds in
  another order).

Needs only the CUDA driver and NVRTC (scripts/nvrtc_cubin.py); no ferrite code.

    python benches/bench_matvec_chain.py [--shapes o,qkv] [--variants=",-DMMA_EARLY_NORM_W=0"]
        [--plans "1,7,1;1,4,2"] [--pairs 48] [--reps 30] [--producer-kb 10] [--producer-spin-ns 1000]
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
N_COLS = 896
TILE_ROWS = 16
PRODUCER_BLOCKS, PRODUCER_THREADS = 56, 256
# Each shape: its matrices' rows (one launch's segments), whether its output adds to the residual
# (o) or it stages x through the RMSNorm with biases (q/k/v), and its plan in the decode step
# (matvec.rs's Plan::new for one row on 132 SMs: 7 warps along the columns, no split).
SHAPES = {
    "o": {"rows": [896], "accumulate": True, "plan": (1, 7, 1)},
    "qkv": {"rows": [896, 128, 128], "accumulate": False, "plan": (1, 7, 1)},
}
# The probe's points (matvec_mma.cu, MMA_PROBE) in the order a block reaches them, and each one's
# number: 12, 10 and 11 are stamped inside staging (q/k/v only: the squares of x summed by warp and
# the 1 / rms of the RMSNorm; then warp 0's first 256 columns' largest |x|).
POINTS = [(0, "entry"), (1, "pre-wait done"), (2, "released"), (3, "before staging"), (12, "squares summed"),
          (10, "1/rms known"), (11, "amax known"), (4, "x staged"), (5, "products"), (6, "warps added"), (7, "written"), (8, "last split known"),
          (9, "splits added")]


def parse_plans(text: str) -> list[tuple[int, int, int] | None]:
    """'1,7,1;1,4,2' as plans; an empty entry is the shape's own."""
    plans: list[tuple[int, int, int] | None] = []
    for entry in text.split(";"):
        if not entry.strip():
            plans.append(None)
            continue
        try:
            wm, wk, splits = (int(v) for v in entry.split(","))
        except ValueError:
            raise SystemExit(f"--plans: {entry!r} is not warps_m,warps_k,splits") from None
        if wm < 1 or wk < 1 or wm * wk > 8 or splits < 1:
            raise SystemExit(f"--plans: {entry!r} is not warps_m,warps_k,splits with warps_m * warps_k <= 8")
        plans.append((wm, wk, splits))
    return plans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="o,qkv", help="of " + ", ".join(SHAPES))
    ap.add_argument("--type", default="q5_0", help="the matrices' type (the real model's o and q/k/v: q5_0)")
    ap.add_argument("--variants", default="", help="comma-separated define sets (space-separated defines; empty: the default build)")
    ap.add_argument("--plans", default="", help="semicolon-separated warps_m,warps_k,splits (empty: the shape's own)")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--copies", type=int, default=24, help="copies of the weights, one a pair in turn (24: a layer's each)")
    ap.add_argument("--producer-spin-ns", default="1000", help="extra work a producer does after its wait, as time (ns)")
    ap.add_argument("--producer-kb", type=int, default=10, help="weights a producer block loads before its wait (KB)")
    ap.add_argument("--compile-only", action="store_true")
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    for s in shapes:
        if s not in SHAPES:
            raise SystemExit(f"--shapes: {s!r} is not one of {', '.join(SHAPES)}")
    if args.type not in TILES:
        raise SystemExit(f"--type: {args.type!r} is not one of {', '.join(TILES)}")
    variants = [v.split() for v in args.variants.split(",")]
    plans = parse_plans(args.plans)
    ty = args.type
    tile_cols, tile_bytes = TILES[ty]
    src = ROOT / "kernels" / "matvec_mma.cu"

    def options(v: list[str], probe: bool) -> list[str]:
        return ["--gpu-architecture=sm_90", *BASE_OPTIONS, f"-DQTYPE={ty}", f"-DMMA_S8_MAX_NT={S8_MAX_NT[ty]}"] + v + (
            ["-DMMA_PROBE=1"] if probe else [])

    cubins = {(tuple(v), probe): compile_cubin(src, options(v, probe)) for v in variants for probe in (False, True)}
    producer_cubin = Producer.cubin()
    if args.compile_only:
        print(f"compiled {len(cubins)} builds of matvec_mma.cu and the producer")
        return

    cu = Driver()
    producer = Producer(cu, producer_cubin, PRODUCER_BLOCKS, PRODUCER_THREADS, args.producer_kb, args.pairs)
    rng = random.Random(1)
    k_tiles = N_COLS // tile_cols
    xin = cu.alloc(4096 * 4)
    cu.copy_to(xin, struct.pack("<4096f", *(rng.uniform(-1, 1) for _ in range(4096))))
    x = cu.alloc(N_COLS * 4)  # what the producer writes: attention's output (o) or the residual (q/k/v)
    norm_w = cu.alloc(N_COLS * 4)
    cu.copy_to(norm_w, struct.pack(f"<{N_COLS}f", *(rng.uniform(0.5, 1.5) for _ in range(N_COLS))))
    max_rows = max(sum(SHAPES[s]["rows"]) for s in shapes)
    partials = cu.alloc(16 * max_rows * 4)
    counters = cu.alloc(4 * max_rows)
    probe_buf = cu.alloc(args.pairs * max_rows * 32 * 8)

    for shape_name in shapes:
        shape = SHAPES[shape_name]
        rows = shape["rows"]
        m_tiles = [r // TILE_ROWS for r in rows]
        mats = [m * k_tiles * tile_bytes for m in m_tiles]
        copies = []
        for c in range(args.copies):
            bufs = []
            for i, nbytes in enumerate(mats):
                b = cu.alloc(nbytes)
                cu.copy_to(b, weight_bytes(len(mats) * c + i, nbytes))
                bufs.append(b)
            copies.append(bufs)
        biases = []
        outs = []
        y_init = []  # each output's values before a variant's chain (o adds to them)
        for r in rows:
            bias = cu.alloc(r * 4)
            cu.copy_to(bias, struct.pack(f"<{r}f", *(rng.uniform(-0.5, 0.5) for _ in range(r))))
            biases.append(bias if not shape["accumulate"] else 0)
            outs.append(cu.alloc(r * 4))
            y_init.append(struct.pack(f"<{r}f", *(rng.uniform(-1, 1) for _ in range(r))))
        mb = sum(mats) / 1e6
        for plan in plans:
            wm, wk, splits = plan or shape["plan"]
            per = -(-k_tiles // splits)
            splits = -(-k_tiles // per)
            block_rows = sum(-(-m // wm) for m in m_tiles)
            grid = block_rows * splits
            threads = 32 * wm * wk
            for spin in (int(s) for s in args.producer_spin_ns.split(",")):
                print(f"\n## {cu.name}, SM clock {cu.clock_mhz():.0f} MHz (max): matvec_mma_1, {shape_name} ({'+'.join(map(str, rows))} x "
                      f"{N_COLS} {ty}, {mb:.2f} MB, {args.copies} copies), plan ({wm}, {wk}, {splits}): {block_rows} x {splits} blocks "
                      f"of {threads} threads; producer {PRODUCER_BLOCKS} blocks x {producer.kb_a_block} KB, +{spin} ns; "
                      f"{args.pairs} pairs a graph, median of {args.reps} replays\n")
                print("| variant | us a pair | producer alone (us) | projection's share (us) | " + " | ".join(n for _, n in POINTS) + " |")
                print("| --- " * (4 + len(POINTS)) + "|")
                cyc = []
                y_first = None
                for v in variants:
                    fns = {probe: cu.functions(cubins[(tuple(v), probe)], ["matvec_mma_1"])["matvec_mma_1"] for probe in (False, True)}

                    def params(i: int, probe_at: int | None) -> list:
                        t = copies[i % len(copies)] + [0] * (3 - len(rows))
                        b = biases + [0] * (3 - len(rows))
                        y = outs + [0] * (3 - len(rows))
                        m = m_tiles + [0] * (3 - len(rows))
                        n = rows + [0] * (3 - len(rows))
                        p = [*(C.c_uint64(a) for a in t), *(C.c_uint64(a) for a in b), *(C.c_uint64(a) for a in y),
                             *(C.c_uint(a) for a in m), *(C.c_uint(a) for a in n), C.c_uint(k_tiles), C.c_uint(N_COLS),
                             C.c_uint64(x), C.c_uint64(0), C.c_uint64(0 if shape["accumulate"] else norm_w), C.c_float(1e-6),
                             C.c_uint(1), C.c_uint64(partials), C.c_uint64(counters), C.c_uint(per), C.c_uint(wm),
                             C.c_uint(1 if shape["accumulate"] else 0), C.c_uint64(0), C.c_uint(0), C.c_uint(0),
                             C.c_uint64(0), C.c_uint64(0), C.c_uint(0)]
                        if probe_at is not None:
                            p.append(C.c_uint64(probe_at))
                        return p

                    def chain(probe: bool, with_mv: bool = True) -> None:
                        for i in range(args.pairs):
                            producer.launch(i, xin, x, N_COLS, N_COLS, spin, probe)
                            if with_mv:
                                at = probe_buf + 8 * 32 * grid * i if probe else None
                                cu.launch(fns[probe], (block_rows, splits, 1), threads, params(i, at), pdl=True)

                    for y, init in zip(outs, y_init):
                        cu.copy_to(y, init)
                    t_pair = cu.time_graph(lambda: chain(False), args.reps, args.pairs)
                    y_out = b"".join(cu.copy_from(y, r * 4) for y, r in zip(outs, rows))
                    t_prod = cu.time_graph(lambda: chain(False, False), args.reps, args.pairs)
                    cu.copy_to(probe_buf, bytes(args.pairs * grid * 32 * 8))
                    cu.time_graph(lambda: chain(True), 1, args.pairs)
                    stamps = struct.unpack(f"<{args.pairs * grid * 32}Q", cu.copy_from(probe_buf, args.pairs * grid * 32 * 8))
                    probed = ProbeChain(stamps, producer.ends(), grid, len(POINTS), order=[p for p, _ in POINTS])
                    name = " ".join(v) or "default"
                    if y_first is None:
                        y_first = y_out
                    elif y_out != y_first:
                        a = struct.unpack(f"<{len(y_out) // 4}f", y_out)
                        b0 = struct.unpack(f"<{len(y_first) // 4}f", y_first)
                        name += f" (output differs from the first variant's: max |diff| {max(abs(p - q) for p, q in zip(a, b0)):.3g})"
                    print(f"| {name} | {t_pair:.2f} | {t_prod:.2f} | {t_pair - t_prod:.2f} | {probed.point_cells()} |", flush=True)
                    cyc.append(f"| {name} | {probed.cycle_cells()} |")
                print("\nClock cycles from the point before, median / most over blocks and launches:\n")
                print("| variant | " + " | ".join(n for _, n in POINTS[1:]) + " |")
                print("| --- " * len(POINTS) + "|")
                print("\n".join(cyc))
    print("\nPoint columns: us from the producer's last block end to the last block reaching the point "
          "(median over the chain; globaltimer, so steps of its resolution). An accumulating shape (o) adds to the residual on "
          "every replay, from the same start in every variant, so outputs are compared across variants only.")


if __name__ == "__main__":
    main()
