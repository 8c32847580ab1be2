"""Registers, stack and local memory of each kernel in a file of kernels/, compiled for sm_90 with
the backend's options and the given defines (no GPU needed: NVRTC and cuobjdump, as
scripts/sass_same.py uses them). Stack bytes above the default build's are spills a change added.

    python3 scripts/kernel_registers.py kernels/matvec_mma.cu -DQTYPE=q4_k -DMMA_S8_MAX_NT=8 [-DMMA_STREAM=1]

NVRTC and cuobjdump are found as scripts/sass_loops.py says.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from nvrtc_cubin import BASE_OPTIONS, compile_cubin
from sass_loops import find_cuobjdump


def resource_usage(src: Path, defines: list[str]) -> list[tuple[str, int, int, int]]:
    """(kernel, registers, stack bytes, local bytes) of each kernel of `src`."""
    cubin = compile_cubin(src, ["--gpu-architecture=sm_90", *BASE_OPTIONS, *defines])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernels.cubin"
        path.write_bytes(cubin)
        dump = subprocess.run([find_cuobjdump(), "--dump-resource-usage", str(path)], capture_output=True, text=True, check=True).stdout
    rows, name = [], None
    for line in dump.splitlines():
        if m := re.search(r"Function (\S+):", line):
            name = m.group(1)
        elif name and "REG:" in line:
            field = lambda key: int(re.search(rf"{key}:(\d+)", line).group(1))  # noqa: E731
            rows.append((name, field("REG"), field("STACK"), field("LOCAL")))
            name = None
    return rows


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for name, regs, stack, local in resource_usage(Path(sys.argv[1]), sys.argv[2:]):
        print(f"{name:40s} REG {regs:>4} STACK {stack:>4} LOCAL {local:>4}")


if __name__ == "__main__":
    main()
