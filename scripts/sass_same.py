#!/usr/bin/env python3
"""Whether a change to kernels/ left a kernel's machine code alone, without a GPU: compiles a
kernel file as it is at a git revision (its headers too) and as it is in the working tree, with
the backend's NVRTC options and the same defines, disassembles both, and compares them kernel by
kernel.

    python scripts/sass_same.py REV kernels/attention.cu -DATTN_HEAD_DIM=64 [--arch sm_90]

Per kernel of the older build, one of:
- identical: the same instructions;
- registers renamed: the same instructions once registers are numbered in order of first use;
- same opcodes: the same multiset of opcodes (scheduling, operand order of commuted operations or
  address arithmetic moved; read the diff to be sure), with the count of differing lines;
- DIFFERENT: the opcode counts that differ.
Kernels only the newer build has are listed as new. Used to show that a change behind a define
(a new cache type, a gated kernel variant) kept the default kernels as they were. Needs NVRTC
and cuobjdump (see scripts/sass_loops.py).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from nvrtc_cubin import BASE_OPTIONS, compile_cubin
from sass_loops import disassemble, kernels

ROOT = Path(__file__).resolve().parent.parent


def kernels_at(rev: str, dest: Path) -> Path:
    """kernels/ as it is at `rev`, written under `dest`."""
    out = dest / "kernels"
    out.mkdir(parents=True)
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{rev}:kernels"], check=True, capture_output=True, text=True).stdout.split()
    for name in names:
        blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:kernels/{name}"], check=True, capture_output=True).stdout
        (out / name).write_bytes(blob)
    return out


def functions(cubin: bytes) -> dict[str, list[str]]:
    """Each kernel's instructions (addresses and encodings dropped)."""
    return {name: [text for _, text in code] for name, code in kernels(disassemble(cubin)).items()}


def renumbered(code: list[str]) -> list[str]:
    seen: dict[str, dict[str, str]] = {}

    def sub(m: re.Match[str]) -> str:
        kind = re.match(r"[A-Z]+", m.group(0)).group(0)  # type: ignore[union-attr]
        names = seen.setdefault(kind, {})
        return names.setdefault(m.group(0), f"{kind}{len(names)}")

    return [re.sub(r"\b(UR|R|UP|P)\d+\b", sub, line) for line in code]


def opcodes(code: list[str]) -> collections.Counter[str]:
    return collections.Counter((line.split()[1] if line.startswith("@") else line.split()[0]) for line in code)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", help="the git revision to compare with (e.g. HEAD~1, main)")
    ap.add_argument("file", help="a kernel file, e.g. kernels/attention.cu")
    ap.add_argument("--arch", default="sm_90")
    args, defines = ap.parse_known_args()
    if not all(d.startswith("-D") for d in defines):
        ap.error(f"only -DNAME=VALUE defines may follow: {defines}")
    name = Path(args.file).name
    options = [f"--gpu-architecture={args.arch}", *BASE_OPTIONS, *defines]
    with tempfile.TemporaryDirectory() as tmp:
        old_dir = kernels_at(args.rev, Path(tmp))
        old = functions(compile_cubin(old_dir / name, options, old_dir))
    new = functions(compile_cubin(ROOT / "kernels" / name, options, ROOT / "kernels"))
    changed = 0
    for fn, code in old.items():
        if fn not in new:
            print(f"{fn}: GONE")
            changed += 1
        elif new[fn] == code:
            print(f"{fn}: identical ({len(code)} instructions)")
        elif renumbered(new[fn]) == renumbered(code):
            print(f"{fn}: registers renamed ({len(code)} instructions)")
        elif opcodes(new[fn]) == opcodes(code):
            differ = sum(a != b for a, b in zip(renumbered(new[fn]), renumbered(code)))
            print(f"{fn}: same opcodes ({len(code)} instructions, {differ} lines differ)")
        else:
            a, b = opcodes(code), opcodes(new[fn])
            delta = {op: (a[op], b[op]) for op in sorted(set(a) | set(b)) if a[op] != b[op]}
            print(f"{fn}: DIFFERENT ({len(code)} -> {len(new[fn])} instructions; opcode counts {delta})")
            changed += 1
    for fn in new:
        if fn not in old:
            print(f"{fn}: new ({len(new[fn])} instructions)")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
