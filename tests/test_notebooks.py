"""Every notebook under notebooks/ executes headless, top to bottom, without an error, from a
working directory outside the repository; the stored copy carries its outputs (plots included)."""

import base64
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# What the repository stores of a notebook's outputs: enough to read, not megabytes of images.
MAX_STORED_BYTES = 400_000


@pytest.mark.model
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_from_any_working_directory(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    # The kernel starts in an empty folder outside the checkout; like Jupyter Server, the
    # environment names the notebook (JPY_SESSION_NAME), which is how it finds the repository.
    monkeypatch.delenv("FERRITE_REPO", raising=False)
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_with_small_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("outputs") for c in code if "plt." in c.source or "print(" in c.source), \
        "run `python notebooks/execute.py` to store the outputs"
    images = [base64.b64decode(o["data"]["image/png"]) for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert images and all(img.startswith(b"\x89PNG") for img in images)
    assert path.stat().st_size <= MAX_STORED_BYTES, f"{path.name} is {path.stat().st_size:,} bytes"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)


def test_notebooks_found():
    assert NOTEBOOKS, "no notebooks found"
