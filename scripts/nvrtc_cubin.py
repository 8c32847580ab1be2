"""NVRTC for the development scripts: compiles a file of kernels/ into a cubin with the backend's
options (src/backend/cuda/nvrtc.rs), through ctypes, without ferrite's Rust side. Used by
scripts/sass_loops.py (instruction counts, no GPU needed) and benches/bench_cuda_sampler.py (a
kernel file timed on the GPU without rebuilding the wheel).
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# As src/backend/cuda/nvrtc.rs's BASE_OPTIONS.
BASE_OPTIONS = ["--std=c++17", "--ftz=false", "--prec-div=true", "--prec-sqrt=true", "-default-device"]


def site_file(pattern: str) -> str | None:
    """A file of a pip-installed NVIDIA package (nvidia/cu13/...) on sys.path, if any."""
    for base in sys.path:
        hits = sorted(glob.glob(os.path.join(base, "nvidia", "cu1*", pattern)))
        if hits:
            return hits[-1]
    return None


def find_nvrtc() -> str:
    path = os.environ.get("FERRITE_NVRTC") or site_file("lib/libnvrtc.so.*")
    if path:
        return path
    for name in ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"):
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            continue
    raise SystemExit("no NVRTC: set FERRITE_NVRTC to libnvrtc.so, or pip install nvidia-cuda-nvrtc")


def compile_cubin(src: Path, options: list[str], headers_dir: Path | None = None) -> bytes:
    """The cubin of `src` compiled with `options` (the architecture, BASE_OPTIONS, defines), its
    `#include`s served from the headers of `headers_dir` (default kernels/); exits with NVRTC's
    log when it does not compile."""
    return compile_source(src.name, src.read_bytes(), options, headers_dir)


def compile_source(name: str, text: bytes, options: list[str], headers_dir: Path | None = None) -> bytes:
    """compile_cubin for source `text` that is in no file (`name` names it in NVRTC's log)."""
    nvrtc = ctypes.CDLL(find_nvrtc())
    headers = {p.name: p.read_bytes() for p in (headers_dir or ROOT / "kernels").glob("*.cuh")}
    names = list(headers)
    prog = ctypes.c_void_p()
    status = nvrtc.nvrtcCreateProgram(
        ctypes.byref(prog), text, name.encode(), len(names),
        (ctypes.c_char_p * len(names))(*[headers[n] for n in names]), (ctypes.c_char_p * len(names))(*[n.encode() for n in names]))
    if status != 0:
        raise SystemExit(f"nvrtcCreateProgram failed ({status})")
    opts = [o.encode() for o in options]
    status = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    if status != 0:
        raise SystemExit(f"{name} does not compile:\n{log.value.decode(errors='replace')}")
    nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetCUBIN(prog, cubin)
    return cubin.raw
