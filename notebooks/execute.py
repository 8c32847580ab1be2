#!/usr/bin/env python3
"""Runs every notebook here top to bottom with nbclient and saves it with its outputs, so that
the repository page shows the tables and plots.

    python notebooks/execute.py            # from any working directory

The kernel starts in a temporary directory, as a reader's might start anywhere; the notebook finds
the checkout itself. Outputs stay small (figures at 60 dpi); execution timestamps are not kept.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path, cwd: str, save: bool) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    # Jupyter Server tells a kernel its notebook this way; the notebook finds the checkout by it.
    os.environ["JPY_SESSION_NAME"] = str(path)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": cwd}})
    client.execute()  # raises CellExecutionError naming the failing cell
    if save:
        nbformat.write(nb, path)
    return nb


def main() -> int:
    for path in sorted(HERE.glob("*.ipynb")):
        with tempfile.TemporaryDirectory() as cwd:
            execute(path, cwd, save=True)
        print(f"{path}: executed and saved ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
