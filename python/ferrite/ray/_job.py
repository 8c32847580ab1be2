"""``generate``: a list of prompts (or a Dataset) through a pool of ``Generate`` actors, the
results back in input order.

>>> results = ferrite.ray.generate(["def fib(n):", "def gcd(a, b):"], "model.gguf", num_actors=4,
...                                max_tokens=64, temperature=0)
>>> results[0]["text"]
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Optional, Union

import numpy as np
import ray
import ray.data

from ferrite.ray._actor import OUTPUT_COLUMNS, Generate

# The input position of each row: map_batches may hand back batches in any order.
ROW = "_ferrite_row"


def generate(
    prompts: Union[Sequence[Any], "ray.data.Dataset"],
    model: Union[str, "os.PathLike[str]"],
    *,
    num_actors: int = 1,
    num_gpus: Optional[float] = None,
    num_cpus: float = 1,
    batch_size: int = 64,
    device: str = "auto",
    threads: Optional[int] = None,
    max_batch: int = 64,
    progress: Optional[bool] = None,
    **sampling: Any,
) -> list[dict[str, Any]]:
    """Generates for every prompt on ``num_actors`` actors, each with its own copy of ``model``
    (a path every node can read), and returns one dict per prompt, in input order: ``text``,
    ``finish_reason``, ``prompt_tokens``, ``completion_tokens``, ``error`` (``None`` unless the
    row's input was refused; see ``Generate``).

    ``prompts``: a list of prompts (strings, message lists or token-id lists), or a
    ``ray.data.Dataset`` with a ``prompt`` column (and optional ``seed``, ``max_tokens``,
    ``temperature`` columns), whose own columns come back too. ``num_gpus`` per actor: ``None``
    takes one GPU each when the cluster has GPUs, else none. ``num_cpus`` per actor (a CPU actor
    computes with that many threads unless ``threads`` says otherwise). ``batch_size``: rows one
    actor gets at a time, generated together. ``sampling``: ``Engine.submit``'s keyword
    arguments. Calls ``ray.init()`` when Ray is not initialized. ``progress``: a bar of finished
    rows on stderr (tqdm when installed, else Ray Data's own); ``None`` shows one only when stderr
    is a terminal.

    >>> ray.init(address="auto")
    >>> rows = ferrite.ray.generate(prompts, "/models/qwen2.5-7b-q4_k_m.gguf", num_actors=8, seed=0)
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of prompts or a ray.data.Dataset, not one string")
    if not ray.is_initialized():
        ray.init()
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0  # type: ignore[no-untyped-call]
    if progress is None:
        progress = sys.stderr.isatty()
    tqdm = _tqdm() if progress else None

    with _ray_progress_bars(bool(progress) and tqdm is None):
        if isinstance(prompts, ray.data.Dataset):
            n = prompts.count()
            ds = prompts.zip(ray.data.range(n).rename_columns({"id": ROW}))
            keep_input = True
        else:
            n = len(prompts)
            ds = ray.data.from_items([{ROW: i, "prompt": p} for i, p in enumerate(prompts)])
            keep_input = False
        out = ds.map_batches(
            Generate,
            fn_constructor_kwargs=dict(model=os.fspath(model), device=device, threads=threads, max_batch=max_batch,
                                       **sampling),
            batch_size=batch_size,
            batch_format="numpy",
            num_gpus=num_gpus,
            num_cpus=num_cpus,
            compute=ray.data.ActorPoolStrategy(size=num_actors),
        )
        results: list[Optional[dict[str, Any]]] = [None] * n
        bar = tqdm(total=n, unit="row", desc="ferrite.ray", file=sys.stderr) if tqdm is not None else None
        try:
            # Each row goes to the place its index names: the order batches arrive in is Ray's.
            for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
                names = list(batch) if keep_input else list(OUTPUT_COLUMNS)
                for j, i in enumerate(batch[ROW].tolist()):
                    results[i] = {k: _plain(batch[k][j]) for k in names if k != ROW}
                if bar is not None:
                    bar.update(len(batch[ROW]))
        finally:
            if bar is not None:
                bar.close()
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"ferrite.ray.generate: no result for rows {missing[:10]}")
    return [r for r in results if r is not None]


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value (rows are plain dicts)."""
    return value.item() if isinstance(value, np.generic) else value


def _tqdm() -> Any:
    try:
        return importlib.import_module("tqdm").tqdm  # optional; untyped
    except ImportError:
        return None


@contextlib.contextmanager
def _ray_progress_bars(enabled: bool) -> Iterator[None]:
    """Ray Data's own progress bars on or off for this job (they are per-process settings)."""
    ctx = ray.data.DataContext.get_current()
    before = ctx.enable_progress_bars
    ctx.enable_progress_bars = enabled
    try:
        yield
    finally:
        ctx.enable_progress_bars = before
