#!/usr/bin/env python3
"""Instruction counts of a kernel's inner loops, without a GPU: compiles a file of kernels/ with
NVRTC as the backend does (same options, sm_90 by default), disassembles it with cuobjdump, and
prints every loop (a backward branch and the code it jumps over) that holds tensor-core
instructions, per kernel, with its instruction count and the most frequent opcodes.

    python scripts/sass_loops.py kernels/matvec_mma.cu -DQTYPE=q4_k [--arch sm_90] [--kernel matvec_mma_1]

The one-row matrix-vector kernels are bound by how fast their warps issue instructions (each
waits on its own dependencies, about 3.5 warps a scheduler; more loads in flight did not help:
docs/BENCHMARKS.md, twentieth session), so the instructions a tile is the figure to watch between
GPU runs; only a GPU says what they cost. Needs NVRTC and cuobjdump, which the GPU machine has and a machine
without CUDA gets from pip (nothing here downloads them):

    pip install nvidia-cuda-nvrtc nvidia-cuda-cuobjdump     # or point FERRITE_NVRTC / CUOBJDUMP at them
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
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


def find_cuobjdump() -> str:
    path = os.environ.get("CUOBJDUMP") or shutil.which("cuobjdump") or site_file("bin/cuobjdump")
    if not path:
        raise SystemExit("no cuobjdump: set CUOBJDUMP, or pip install nvidia-cuda-cuobjdump")
    return path


def compile_cubin(src: Path, options: list[str]) -> bytes:
    nvrtc = ctypes.CDLL(find_nvrtc())
    headers = {p.name: p.read_bytes() for p in (ROOT / "kernels").glob("*.cuh")}
    names = list(headers)
    prog = ctypes.c_void_p()
    status = nvrtc.nvrtcCreateProgram(
        ctypes.byref(prog), src.read_bytes(), src.name.encode(), len(names),
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
        raise SystemExit(f"{src.name} does not compile:\n{log.value.decode(errors='replace')}")
    nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetCUBIN(prog, cubin)
    return cubin.raw


def loops(sass: str, only: str | None) -> list[str]:
    """One line per loop with a tensor-core instruction, innermost first within each kernel."""
    lines = []
    for fn in re.split(r"\n\s*Function : ", sass)[1:]:
        name = fn.split("\n", 1)[0].strip()
        if only and name != only:
            continue
        code = [(int(a, 16), t.strip()) for a, t in re.findall(r"/\*([0-9a-f]{4,6})\*/\s+([^;]*);", fn)]
        found = []
        for i, (addr, text) in enumerate(code):
            m = re.search(r"\bBRA (?:\S+, )?0x([0-9a-f]+)", text)
            if not m or int(m.group(1), 16) >= addr:
                continue
            start = int(m.group(1), 16)
            body = [t for a, t in code if start <= a <= addr]
            mma = sum("MMA" in t for t in body)
            if not mma:
                continue
            ops: dict[str, int] = {}
            for t in body:
                op = (t.split()[1] if t.startswith("@") else t.split()[0]).split(".")[0]
                ops[op] = ops.get(op, 0) + 1
            top = ", ".join(f"{op} {n}" for op, n in sorted(ops.items(), key=lambda kv: -kv[1])[:8])
            found.append((len(body), f"{name}: loop {start:#06x}..{addr:#06x}: {len(body)} instructions, {mma} mma ({top})"))
        lines += [text for _, text in sorted(found)]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a file of kernels/, e.g. kernels/matvec_mma.cu")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--kernel", help="only this kernel (e.g. matvec_mma_1)")
    # The -DNAME=VALUE options (e.g. -DQTYPE=q4_k) are whatever argparse does not know.
    args, defines = ap.parse_known_args()
    bad = [d for d in defines if not d.startswith("-D") or len(d) < 3]
    if bad:
        raise SystemExit(f"not a define: {bad[0]}")
    cubin = compile_cubin(args.source, [f"--gpu-architecture={args.arch}", *BASE_OPTIONS, *defines])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([find_cuobjdump(), "-sass", str(path)], check=True, capture_output=True, text=True).stdout
    found = loops(sass, args.kernel)
    print("\n".join(found) if found else "no loop with a tensor-core instruction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
