"""Where the seconds of a first `Model.load` go: importing ferrite, the first CUDA call, and the
load itself with the kernel cache as it is (empty: NVRTC compiles every module the model runs).

    python benches/bench_first_load.py MODEL.gguf --cache DIR [--label TEXT]

One process, one load, so each phase is what a user's first run sees. Run it first thing on a
fresh machine (the CUDA, cuBLAS and NVRTC libraries are then read from disk), again with another
empty --cache (libraries in the page cache, kernels compiled again), and once more with the same
--cache (kernels cached): the three rows of docs/BENCHMARKS.md's first-load table.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--cache", required=True, help="FERRITE_CACHE for this run (an empty folder: nothing compiled yet)")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    os.environ["FERRITE_CACHE"] = args.cache
    cached = os.path.isdir(os.path.join(args.cache, "kernels")) and bool(os.listdir(os.path.join(args.cache, "kernels")))

    t0 = time.perf_counter()
    import ferrite

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    has_cuda = ferrite.cuda_available()
    t_cuda = time.perf_counter() - t0
    if not has_cuda:
        raise SystemExit("no CUDA device")
    t0 = time.perf_counter()
    m = ferrite.Model.load(args.model, device="cuda")
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    m.forward([1, 2, 3])
    t_forward = time.perf_counter() - t0
    libs = sorted({line.split()[-1] for line in open("/proc/self/maps") if any(k in line for k in ("nvrtc", "cublas", "libcuda"))})
    for lib in libs:
        print(f"# loaded: {lib} ({os.path.getsize(lib) / 2**20:.0f} MiB)")
    print(
        f"| {args.label or ('kernels cached' if cached else 'empty kernel cache')} | {t_import:.2f} | {t_cuda:.2f} | "
        f"{t_load:.2f} | {t_import + t_cuda + t_load:.2f} | {t_forward * 1e3:.0f} |",
        flush=True,
    )


if __name__ == "__main__":
    print("| run | import ferrite (s) | first CUDA call (s) | Model.load (s) | total (s) | first forward, 3 tokens (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    main()
