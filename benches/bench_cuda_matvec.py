"""Microbenchmark of the CUDA matrix-vector kernels (decode's projections), kernel by kernel.

    python benches/bench_cuda_matvec.py [--json OUT.json] [--types Q5_0,Q8_0,Q4_K,Q6_K]
                                        [--shapes real,7b] [--rows 1,2,4,8]
    python benches/bench_cuda_matvec.py --sweep-plans [--types ...] [--shapes ...] [--rows ...]
    ncu --clock-control none --kernel-name regex:matvec_mma --launch-skip 2 --launch-count 1 \
        python benches/bench_cuda_matvec.py --launches Q4_K:18944x3584:1

--sweep-plans times every plan of PLANS (forced through `_cuda_matvec_force_plan`) beside the
heuristic's, for the tiled kernels only, and prints the six best per row count: how
src/backend/cuda/matvec.rs's Plan was tuned. --launches runs a few launches of one matrix and
exits, for a profiler.

For each weight type, each matrix shape of the real test model (Qwen2.5 0.5B: 896x896 q/o,
128x896 k/v, 4864x896 gate/up and the 9728 rows of both in one launch, 896x4864 down, 151936x896
LM head) and of a 7B model
(3584x3584, 512x3584, 18944x3584, 3584x18944, 152064x3584), and 1, 2, 4 and 8 activation rows,
it times the generic kernels on the file's blocks ("old", matvec.cu) and the tensor-core kernels
on repacked tiles ("new", matvec_mma.cu), on random valid blocks (not zeros). Each measurement
is a CUDA graph of many launches, rotating over copies of the matrix that together exceed 256
MiB (four times the H200's 60 MB L2), so every launch reads its weights from DRAM; the graph is
replayed and timed with CUDA events, median of 5. Widths that are not a whole number of blocks
(896 for the 256-element K-quants) are skipped.

GB/s is the matrix's bytes in the file's format (what a launch must read) per second, beside the
device-to-device copy bandwidth measured in the same run (a copy of N bytes moves 2N: it reads
and writes each byte). The figures include the time between graph nodes, as a decode step sees.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np

import ferrite

# "gate+up": decode launches gate and up as one grid over both matrices' rows (Plan::for_group).
REAL = [("q/o 896x896", 896, 896), ("k/v 128x896", 128, 896), ("gate/up 4864x896", 4864, 896),
        ("gate+up 9728x896", 9728, 896), ("down 896x4864", 896, 4864), ("lm_head 151936x896", 151936, 896)]
SEVEN_B = [("q/o 3584x3584", 3584, 3584), ("k/v 512x3584", 512, 3584), ("gate/up 18944x3584", 18944, 3584),
           ("down 3584x18944", 3584, 18944), ("lm_head 152064x3584", 152064, 3584)]
TYPES = {name: (block_elems, block_bytes) for name, _, block_elems, block_bytes in ferrite.ggml_types()}
# f16 scale fields per block (see tests/block_layouts.py).
SCALES = {"Q5_0": (0,), "Q8_0": (0,), "Q4_K": (0, 2), "Q6_K": (208,)}
ROTATE_BYTES = 256 << 20
TARGET_SECONDS = 0.01  # device time per graph replay, at 2 TB/s


def random_matrix(name: str, n_rows: int, n_cols: int, rng: np.random.Generator) -> np.ndarray:
    block_elems, block_bytes = TYPES[name]
    n_blocks = n_rows * n_cols // block_elems
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in SCALES[name]:
        d = (rng.choice([-1.0, 1.0], n_blocks) * 2.0 ** rng.uniform(-10, -4, n_blocks)).astype(np.float16)
        raw[:, off : off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


# (warps_m, warps_k, splits) the plan sweep forces.
PLANS = [(4, 1, 1), (4, 1, 2), (4, 1, 4), (4, 1, 8), (2, 1, 1), (2, 1, 2), (2, 1, 4), (2, 1, 8), (8, 1, 1), (1, 1, 1),
         (1, 1, 2), (1, 2, 1), (2, 2, 1), (4, 2, 4), (1, 4, 1), (1, 8, 1), (8, 1, 2), (8, 1, 4), (1, 3, 1), (2, 4, 1),
         (4, 2, 1), (1, 8, 2), (1, 8, 3), (1, 8, 4)]


def sweep_plans(chosen: list, types: list[str], rows: list[int], copy_gbs: float) -> None:
    """Each forced plan of PLANS beside the heuristic's, on every chosen shape and type."""
    rng = np.random.default_rng(0)
    force = ferrite._ferrite._cuda_matvec_force_plan
    for _, label, n_rows, n_cols in chosen:
        for name in types:
            if n_cols % TYPES[name][0]:
                continue
            raw = random_matrix(name, n_rows, n_cols, rng)
            copies = max(1, math.ceil(ROTATE_BYTES / raw.nbytes))
            iters = int(min(2000, max(8, TARGET_SECONDS / 2 * 2e12 / raw.nbytes)))
            timed = []
            try:
                for plan in [None, *PLANS]:
                    if plan:
                        force(*plan)
                    else:
                        force()
                    r = ferrite._ferrite._cuda_matvec_time(raw, name, n_rows, n_cols, rows, "tiled", copies, iters)
                    share = {n: raw.nbytes / statistics.median(r["seconds"][n]) / 1e9 / copy_gbs for n in rows}
                    timed.append((plan, share, r["plans"]))
            finally:
                force()
            for n in rows:
                best = sorted(timed[1:], key=lambda o: -o[1][n])[:6]
                print(f"{label} {name} n_x={n}: heuristic {timed[0][1][n]:.0%} {tuple(timed[0][2][n])}; best: "
                      + ", ".join(f"{o[1][n]:.0%} {tuple(o[2][n])[:4]}" for o in best))
            sys.stdout.flush()


def launches(spec: str) -> None:
    """A few launches of one matrix (TYPE:ROWSxCOLS:N_X), for a profiler."""
    name, shape, n_x = spec.split(":")
    n_rows, n_cols = (int(v) for v in shape.split("x"))
    raw = random_matrix(name, n_rows, n_cols, np.random.default_rng(0))
    r = ferrite._ferrite._cuda_matvec_time(raw, name, n_rows, n_cols, [int(n_x)], "tiled", 1, 4)
    print(name, n_rows, n_cols, n_x, r["seconds"][int(n_x)], r["plans"][int(n_x)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the measurements here")
    ap.add_argument("--types", default="Q5_0,Q8_0,Q4_K,Q6_K")
    ap.add_argument("--shapes", default="real,7b")
    ap.add_argument("--rows", default="1,2,4,8")
    ap.add_argument("--sweep-plans", action="store_true", help="time every plan of PLANS beside the heuristic's")
    ap.add_argument("--tiled-only", action="store_true", help="skip the generic kernels (the old column)")
    ap.add_argument("--launches", metavar="TYPE:ROWSxCOLS:N_X", help="a few launches of one matrix, for ncu")
    args = ap.parse_args()
    if not ferrite.cuda_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    if args.launches:
        launches(args.launches)
        return 0
    info = ferrite.cuda_device_info()
    rows = [int(r) for r in args.rows.split(",")]
    shapes = {"real": REAL, "7b": SEVEN_B}
    chosen = [(group, *s) for group in args.shapes.split(",") for s in shapes[group]]

    copy_bytes = 1 << 30
    copy_s = statistics.median(ferrite._ferrite._cuda_copy_time(copy_bytes, 10))
    copy_gbs = 2 * copy_bytes / copy_s / 1e9
    print(f"{info['name']} ({info['arch']}), ferrite {ferrite.__version__}")
    print(f"device-to-device copy of 1 GiB: {copy_gbs:,.0f} GB/s (read + write), median of 10\n")
    if args.sweep_plans:
        sweep_plans(chosen, args.types.split(","), rows, copy_gbs)
        return 0

    results = []
    rng = np.random.default_rng(0)
    header = f"{'matrix':<22} {'type':<5} {'n_x':>3} {'old GB/s':>9} {'new GB/s':>9} {'new/copy':>8} {'new/old':>8} {'new us':>8}  plan (warps_m, warps_k, block rows, splits, tiles/split)"
    print(header)
    print("-" * len(header))
    t0 = time.time()
    for group, label, n_rows, n_cols in chosen:
        for name in args.types.split(","):
            block_elems, _ = TYPES[name]
            if n_cols % block_elems:
                print(f"{label:<22} {name:<5}   -  (a {n_cols}-wide row is not a whole number of {block_elems}-element blocks)")
                continue
            raw = random_matrix(name, n_rows, n_cols, rng)
            file_bytes = raw.nbytes
            copies = max(1, math.ceil(ROTATE_BYTES / file_bytes))
            iters = int(min(4000, max(8, TARGET_SECONDS * 2e12 / file_bytes)))
            timed = {}
            for path in ("tiled",) if args.tiled_only else ("generic", "tiled"):
                r = ferrite._ferrite._cuda_matvec_time(raw, name, n_rows, n_cols, rows, path, copies, iters)
                timed[path] = r
            for n_x in rows:
                old = statistics.median(timed["generic"]["seconds"][n_x]) if "generic" in timed else math.nan
                new = statistics.median(timed["tiled"]["seconds"][n_x])
                old_gbs, new_gbs = file_bytes / old / 1e9, file_bytes / new / 1e9
                plan = timed["tiled"]["plans"][n_x]
                print(f"{label:<22} {name:<5} {n_x:>3} {old_gbs:>9,.0f} {new_gbs:>9,.0f} {new_gbs / copy_gbs:>8.0%} "
                      f"{old / new:>7.1f}x {new * 1e6:>8.1f}  {tuple(plan) if plan else '-'}")
                results.append({"group": group, "matrix": label, "n_rows": n_rows, "n_cols": n_cols, "type": name, "n_x": n_x,
                                "file_bytes": file_bytes, "copies": copies, "iters": iters,
                                "old_seconds": timed["generic"]["seconds"][n_x] if "generic" in timed else None, "new_seconds": timed["tiled"]["seconds"][n_x],
                                "old_gbs": old_gbs, "new_gbs": new_gbs, "copy_gbs": copy_gbs, "plan": plan})
            sys.stdout.flush()
    print(f"\n({time.time() - t0:.0f} s)")

    # The acceptance line of issue 9: the share of the copy bandwidth on the big matrices.
    for group in sorted({r["group"] for r in results}):
        big = [r for r in results if r["group"] == group and r["file_bytes"] >= 32 << 20]
        if big:
            worst = min(big, key=lambda r: r["new_gbs"])
            print(f"{group}: matrices of 32 MB and more, new kernels: {min(r['new_gbs'] for r in big) / copy_gbs:.0%} .. "
                  f"{max(r['new_gbs'] for r in big) / copy_gbs:.0%} of the copy bandwidth (lowest: {worst['matrix']} {worst['type']} n_x={worst['n_x']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": info["name"], "copy_gbs": copy_gbs, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
