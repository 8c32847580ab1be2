"""What the README promises, run as written, and the typed surface kept true:

* the README's Python blocks run on a CPU-only machine (CUDA hidden);
* `mypy --strict` accepts the README's Python and the notebook's code;
* `mypy.stubtest` finds the hand-written stub `ferrite/_ferrite.pyi` true to the extension.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def readme_python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def notebook_code(path: Path) -> str:
    """The code cells as one module; IPython magics (`%...`, `!...`) are not Python."""
    nb = nbformat.read(path, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    lines = [line for cell in cells for line in cell.splitlines() + [""] if not line.lstrip().startswith(("%", "!"))]
    return "\n".join(lines) + "\n"


def cpu_only_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ""  # as on a machine without a GPU
    return env


def test_readme_has_python_blocks():
    blocks = readme_python_blocks()
    assert blocks and all("import ferrite" in b for b in blocks)


@pytest.mark.model
def test_readme_python_runs_on_cpu(tmp_path):
    """Each block as a script, in a fresh interpreter with CUDA hidden. Uses Model.load(device=
    "auto") as the README does (needs "auto" from the engine work on main)."""
    for i, block in enumerate(readme_python_blocks()):
        script = tmp_path / f"readme_block_{i}.py"
        script.write_text(block)
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900,
                             cwd=tmp_path, env=cpu_only_env())
        assert out.returncode == 0, f"README block {i} failed:\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr
        if "gen.stream(" in block:
            assert "qwen2" in out.stdout and "Paris" in out.stdout, out.stdout


def run_mypy(*args: str, cwd: Path, mypypath: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if mypypath:
        env["MYPYPATH"] = mypypath
    return subprocess.run([sys.executable, "-m", "mypy", *args], capture_output=True, text=True, timeout=900,
                          cwd=cwd, env=env)


def test_readme_and_notebook_code_pass_mypy_strict(tmp_path):
    (tmp_path / "readme_example.py").write_text("\n\n".join(readme_python_blocks()))
    files = ["readme_example.py"]
    for nb in NOTEBOOKS:
        name = f"notebook_{nb.stem}.py"
        (tmp_path / name).write_text(notebook_code(nb))
        files.append(name)
    # The notebook imports its reference from tests/; those helpers are not what is checked here.
    out = run_mypy("--strict", "--follow-imports=silent", "--cache-dir", str(tmp_path / ".mypy_cache"), *files,
                   cwd=tmp_path, mypypath=str(ROOT / "tests"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_stub_matches_the_extension(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mypy.stubtest", "ferrite._ferrite", "--mypy-config-file", os.devnull],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
