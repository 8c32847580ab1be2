"""Where the seconds of a first `Model.load` go: importing ferrite, the first CUDA call, and the
load itself with the kernel cache as it is (empty: NVRTC compiles every module the model runs
that the prebuilt kernels do not hold; the last column says how many it compiled, and whether the
prebuilt kernels serve this GPU and NVRTC).

    python benches/bench_first_load.py MODEL.gguf --cache DIR [--label TEXT] [--evict]

One process, one load, so each phase is what a user's first run sees. Run it first thing on a
fresh machine (the CUDA, cuBLAS and NVRTC libraries are then read from disk), again with another
empty --cache (libraries in the page cache, kernels compiled again), and once more with the same
--cache (kernels cached): the three rows of docs/BENCHMARKS.md's first-load table.

--evict first drops the CUDA libraries' files (libcuda, libnvrtc*, libcublas*) from the page
cache (posix_fadvise DONTNEED, no root needed), which stands in for a fresh machine's cold disk
on a machine that has run CUDA before; with FERRITE_CUDA_READAHEAD=0 / cublas / nvrtc / 1 it
measures what reading the libraries ahead (src/backend/cuda/readahead.rs) buys, and with
FERRITE_CUDA_PREBUILT=0 what the prebuilt kernels do.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

LIBRARY_DIRS = ["/usr/local/cuda*/targets/*/lib", "/usr/local/cuda*/lib64", "/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu"]
LIBRARY_NAMES = ["libcuda.so*", "libnvrtc*.so*", "libcublas*.so*"]


def evict_libraries() -> list[str]:
    """Drops the CUDA libraries' pages from the page cache (the system's, LD_LIBRARY_PATH's and
    pip's nvidia/cu*/lib on sys.path); the real files it dropped. Pages another process has
    mapped stay."""
    patterns = LIBRARY_DIRS + os.environ.get("LD_LIBRARY_PATH", "").split(":") + [os.path.join(p, "nvidia", "cu1*", "lib") for p in sys.path if p]
    dirs = [d for pattern in patterns if pattern for d in glob.glob(pattern)]
    files = sorted({os.path.realpath(f) for d in dirs for name in LIBRARY_NAMES for f in glob.glob(os.path.join(d, name))})
    dropped = []
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError as e:
            print(f"# not evicted: {f}: {e}")
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            dropped.append(f)
        finally:
            os.close(fd)
    return dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--cache", required=True, help="FERRITE_CACHE for this run (an empty folder: nothing compiled yet)")
    ap.add_argument("--label", default="")
    ap.add_argument("--evict", action="store_true", help="drop the CUDA libraries from the page cache first")
    args = ap.parse_args()
    if args.evict:
        for f in evict_libraries():
            print(f"# evicted: {f}")
    os.environ["FERRITE_CACHE"] = args.cache
    cached = os.path.isdir(os.path.join(args.cache, "kernels")) and bool(os.listdir(os.path.join(args.cache, "kernels")))
    prebuilt_off = os.environ.get("FERRITE_CUDA_PREBUILT") == "0"

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
    readahead = os.environ.get("FERRITE_CUDA_READAHEAD", "1")
    info = ferrite.cuda_device_info()
    label = args.label or ("kernel cache not empty" if cached else "empty kernel cache")
    print(
        f"| {label}{', evicted' if args.evict else ''}, readahead {readahead}{', prebuilt off' if prebuilt_off else ''} | {t_import:.2f} | {t_cuda:.2f} | "
        f"{t_load:.2f} | {t_import + t_cuda + t_load:.2f} | {t_forward * 1e3:.0f} | {info['kernels_compiled']} ({'prebuilt serve' if info['prebuilt_kernels'] else 'no prebuilt'}) |",
        flush=True,
    )


if __name__ == "__main__":
    print("| run | import ferrite (s) | first CUDA call (s) | Model.load (s) | total (s) | first forward, 3 tokens (ms) | modules compiled |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    main()
