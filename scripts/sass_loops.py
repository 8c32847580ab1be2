#!/usr/bin/env python3
"""Instruction counts of a kernel's inner loops, without a GPU: compiles a file of kernels/ with
NVRTC as the backend does (same options, sm_90 by default), disassembles it with cuobjdump, and
prints every loop (a backward branch and the code it jumps over) that holds tensor-core
instructions, per kernel, with its instruction count and the most frequent opcodes.

    python scripts/sass_loops.py kernels/matvec_mma.cu -DQTYPE=q4_k [--arch sm_90] [--kernel matvec_mma_1]

The one-row matrix-vector kernels are bound by how fast their warps issue instructions (each
waits on its own dependencies, about 3.5 warps a scheduler; more loads in flight did not help:
docs/BENCHMARKS.md, twentieth session), so the instructions a tile is the figure to watch between
GPU runs; only a GPU says what they cost. Needs NVRTC (through scripts/nvrtc_cubin.py) and
cuobjdump, which the GPU machine has and a machine without CUDA gets from pip (nothing here
downloads them):

    pip install nvidia-cuda-nvrtc nvidia-cuda-cuobjdump     # or point FERRITE_NVRTC / CUOBJDUMP at them
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from nvrtc_cubin import BASE_OPTIONS, compile_cubin, site_file


def find_cuobjdump() -> str:
    path = os.environ.get("CUOBJDUMP") or shutil.which("cuobjdump") or site_file("bin/cuobjdump")
    if not path:
        raise SystemExit("no cuobjdump: set CUOBJDUMP, or pip install nvidia-cuda-cuobjdump")
    return path


def disassemble(cubin: bytes) -> str:
    """cuobjdump -sass of a cubin (nvdisasm, which it runs, is looked for beside it first)."""
    cuobjdump = find_cuobjdump()
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(cuobjdump).parent), os.environ.get("PATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        return subprocess.run([cuobjdump, "-sass", str(path)], check=True, capture_output=True, text=True, env=env).stdout


def kernels(sass: str) -> dict[str, list[tuple[int, str]]]:
    """Each kernel's instructions in `sass`, as (address, text without the encoding)."""
    out = {}
    for fn in re.split(r"\n\s*Function : ", sass)[1:]:
        name = fn.split("\n", 1)[0].strip()
        out[name] = [(int(a, 16), t.strip()) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", fn)]
    return out


def loops(sass: str, only: str | None) -> list[str]:
    """One line per loop with a tensor-core instruction, innermost first within each kernel."""
    lines = []
    for name, code in kernels(sass).items():
        if only and name != only:
            continue
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
    found = loops(disassemble(cubin), args.kernel)
    print("\n".join(found) if found else "no loop with a tensor-core instruction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
