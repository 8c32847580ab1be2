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

    ``prompts``: a list of prompts, all of one kind (strings, message lists or token-id lists:
    they become one Arrow column), or a ``ray.data.Dataset`` with a ``prompt`` column (and
    optional ``seed``, ``max_tokens``, ``temperature`` columns), whose rows come back in the
    Dataset's order (Ray Data's ``preserve_order``, for this job) with their own columns. ``num_gpus`` per actor: ``None``
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
    if not isinstance(prompts, ray.data.Dataset) and len(prompts) == 0:
        return []
    if not ray.is_initialized():
        ray.init()
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0  # type: ignore[no-untyped-call]
    if progress is None:
        progress = sys.stderr.isatty()
    tqdm = _tqdm() if progress else None

    if isinstance(prompts, ray.data.Dataset):
        ds, total, from_list = prompts, None, False
    else:
        ds = ray.data.from_items([{ROW: i, "prompt": p} for i, p in enumerate(prompts)])
        total, from_list = len(prompts), True
    out = ds.map_batches(
        Generate,
        # An absolute path: the actors do not run in this directory.
        fn_constructor_kwargs=dict(model=os.path.abspath(model), device=device, threads=threads, max_batch=max_batch,
                                   **sampling),
        batch_size=batch_size,
        batch_format="numpy",
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        # A batch is long work: one queued behind another at the first actor up is one an idle
        # actor could be doing (2 actors, 2 batches of 16: no speedup with Ray's default queue).
        compute=ray.data.ActorPoolStrategy(size=num_actors, max_tasks_in_flight_per_actor=1),
    )
    placed: list[Optional[dict[str, Any]]] = [None] * (total or 0)
    streamed: list[dict[str, Any]] = []
    # A Dataset has no row numbers to carry: Ray keeps its order when asked (preserve_order).
    with _job_options(out.context, progress_bars=bool(progress) and tqdm is None, preserve_order=not from_list):
        bar = tqdm(total=total, unit=" rows", desc="ferrite.ray", file=sys.stderr) if tqdm is not None else None
        try:
            # Rows, not numpy batches: a batch whose `error` column is all null would give NaNs.
            for row in out.iter_rows():
                if from_list:
                    # Each row goes to the place its index names: rows arrive in Ray's order.
                    placed[row[ROW]] = {k: _plain(row[k]) for k in OUTPUT_COLUMNS}
                else:
                    streamed.append({k: _plain(v) for k, v in row.items()})
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    if not from_list:
        return streamed
    missing = [i for i, r in enumerate(placed) if r is None]
    if missing:
        raise RuntimeError(f"ferrite.ray.generate: no result for rows {missing[:10]}")
    return [r for r in placed if r is not None]


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value (rows are plain dicts)."""
    return value.item() if isinstance(value, np.generic) else value


def _tqdm() -> Any:
    try:
        return importlib.import_module("tqdm").tqdm  # optional; untyped
    except ImportError:
        return None


@contextlib.contextmanager
def _job_options(ctx: "ray.data.DataContext", progress_bars: bool, preserve_order: bool) -> Iterator[None]:
    """Ray Data's own progress bars on or off, and order kept when asked, for this job only: the
    context may be the process's or the caller's Dataset's."""
    before = ctx.enable_progress_bars, ctx.execution_options.preserve_order
    ctx.enable_progress_bars = progress_bars
    ctx.execution_options.preserve_order = preserve_order or before[1]
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.execution_options.preserve_order = before
