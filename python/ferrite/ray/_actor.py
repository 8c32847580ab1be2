"""``Generate``: the callable class that ``Dataset.map_batches`` runs in each actor.

One actor loads the model once and keeps it; each batch it is handed goes to the engine whole
(every row submitted, then the engine stepped until all are done), so the rows of a batch are
generated together by continuous batching.

>>> ds.map_batches(ferrite.ray.Generate, fn_constructor_kwargs={"model": "model.gguf"},
...                batch_size=256, num_gpus=1, compute=ray.data.ActorPoolStrategy(size=4))
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any, Literal, Optional, Union

import numpy as np
import ray

import ferrite

log = logging.getLogger("ferrite.ray")

# What a batch may carry besides `prompt`: per-row values that override the job's.
ROW_OPTIONS = ("seed", "max_tokens", "temperature")
OUTPUT_COLUMNS = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "error")
# The keyword arguments of Engine.submit (a typo among them fails the actor, not every row).
SAMPLING_OPTIONS = frozenset({
    "max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "seed", "stop", "stop_token_ids", "logprobs", "ignore_eos", "tools",
})
# Bad input for one row, raised by Engine.submit (ferrite.errors' input errors are ValueErrors) or
# by reading the row's values. A CudaError or any other failure still fails the batch.
ROW_ERRORS = (ValueError, TypeError, OverflowError, KeyError)

# A Ray Data batch: "numpy" format (a dict of arrays, the default) or "pandas" (a DataFrame).
Batch = Union[dict[str, Any], Any]


class Generate:
    """Generates text for the ``prompt`` column of each batch; a callable class for
    ``Dataset.map_batches``, built once per actor.

    ``prompt`` holds a string (raw text), a list of chat messages ``{"role", "content"}`` or a
    list of token ids. Optional columns ``seed``, ``max_tokens`` and ``temperature`` override the
    job's values for their row (a null keeps the job's). Added columns: ``text``,
    ``finish_reason``, ``prompt_tokens``, ``completion_tokens`` and ``error``: ``None``, or for
    a row whose input the engine refused (a prompt past the context, a malformed message, a bad
    value) the message, with ``text == ""``, ``finish_reason == "error"`` and zero counts; the
    other rows go on. With ``device_columns=True`` also ``device`` (where the model runs) and
    ``gpu_ids`` (what Ray assigned, ``"0"``, ``"0,1"`` or ``""``).

    ``device="auto"`` takes the GPU Ray assigned to the actor (``num_gpus=1``), else the CPU:
    a GPU Ray did not assign belongs to another actor. On the CPU, ``threads=None`` computes with
    as many threads as Ray assigned CPUs (``num_cpus``). ``kv_cache_dtype="float16"`` halves the
    KV cache's memory (``Model.load``'s option). Outside Ray, ``"auto"`` is
    ``Model.load``'s. ``sampling``: ``Engine.submit``'s keyword arguments, the same for every
    row; with ``seed=None`` and no ``seed`` column each row draws from the clock, so give seeds
    when a retried task must reproduce its rows.

    >>> ds = ray.data.from_items([{"prompt": "def fib(n):", "seed": 1}])
    >>> ds = ds.map_batches(ferrite.ray.Generate, batch_size=64, num_gpus=1,
    ...                     fn_constructor_kwargs={"model": "model.gguf", "max_tokens": 64},
    ...                     compute=ray.data.ActorPoolStrategy(size=2))
    >>> ds.take(1)[0]["text"]
    """

    def __init__(
        self,
        model: Union[str, "os.PathLike[str]"],
        *,
        device: str = "auto",
        threads: Optional[int] = None,
        max_batch: int = 64,
        kv_cache_tokens: Optional[int] = None,
        kv_cache_dtype: Literal["float32", "float16"] = "float32",
        device_columns: bool = False,
        **sampling: Any,
    ) -> None:
        unknown = sorted(set(sampling) - SAMPLING_OPTIONS)
        if unknown:
            raise TypeError(f"Generate got unknown sampling options {unknown}; known: {sorted(SAMPLING_OPTIONS)}")
        self.gpu_ids: list[str] = _ray_gpu_ids()
        in_ray = ray.is_initialized()
        load_device = _resolve_device(device, self.gpu_ids) if in_ray else device
        if threads is None and in_ray and load_device == "cpu":
            threads = _ray_cpus()
        gen = ferrite.Generator.from_gguf(model, device=load_device, threads=threads, max_batch=max_batch,
                                          kv_cache_tokens=kv_cache_tokens, kv_cache_dtype=kv_cache_dtype)
        self.engine: ferrite.Engine = gen.engine
        self.device: str = self.engine.model.device
        self.sampling: dict[str, Any] = sampling
        # Engine.submit checks every argument: one probe, cancelled at once (no step runs), makes
        # a bad job-wide value fail the actor here rather than every row one by one.
        self.engine.submit([0], **sampling).cancel()
        self.device_columns = device_columns
        log.info("ferrite.ray: %s loaded on %s (device=%r, Ray GPU ids %s, threads %s)",
                 os.fspath(model), self.device, device, self.gpu_ids or "none", threads or "default")
        if len(self.gpu_ids) > 1:
            log.warning("ferrite.ray: Ray assigned GPUs %s; the model runs on one (%s): one model per actor, "
                        "no tensor parallelism", self.gpu_ids, self.device)

    def __call__(self, batch: Batch) -> Batch:
        columns = _columns(batch, ("prompt",) + ROW_OPTIONS)
        if "prompt" not in columns:
            raise KeyError("the batch has no 'prompt' column")
        prompts = columns.pop("prompt")
        overrides = columns
        # Submit every row first: the engine then batches them, and one bad row costs only itself.
        submitted: list[Union[ferrite.Request, str]] = []
        for i, prompt in enumerate(prompts):
            try:
                options = dict(self.sampling)
                for name, values in overrides.items():
                    value = _row_value(name, values[i])
                    if value is not None:
                        options[name] = value
                submitted.append(self.engine.submit(_prompt(prompt), **options))
            except ROW_ERRORS as e:
                submitted.append(f"{type(e).__name__}: {e}")
        while self.engine.has_work():
            self.engine.step()

        out: dict[str, list[Any]] = {name: [] for name in OUTPUT_COLUMNS}
        for req in submitted:
            for name, value in zip(OUTPUT_COLUMNS, _row_output(req)):
                out[name].append(value)
        if self.device_columns:
            out["device"] = [self.device] * len(prompts)
            out["gpu_ids"] = [",".join(self.gpu_ids)] * len(prompts)
        return _with_columns(batch, out)


def _row_output(req: Union[ferrite.Request, str]) -> tuple[str, str, int, int, Optional[str]]:
    """``OUTPUT_COLUMNS`` of one row: its result, or empty values beside the error."""
    if isinstance(req, str):
        return "", "error", 0, 0, req
    result = req.result()
    if result.error is not None:  # the request failed alone inside a step
        return "", "error", 0, 0, result.error
    return result.text, result.finish_reason, len(result.prompt_token_ids), len(result.token_ids), None


def _ray_gpu_ids() -> list[str]:
    """The GPU ids Ray assigned to this worker; none outside Ray."""
    if not ray.is_initialized():
        return []
    return [str(i) for i in ray.get_gpu_ids()]


def _ray_cpus() -> int:
    """The CPUs Ray assigned to this worker (at least one thread)."""
    assigned = ray.get_runtime_context().get_assigned_resources()  # type: ignore[no-untyped-call]
    return max(1, int(assigned.get("CPU", 1)))


def _resolve_device(device: str, gpu_ids: list[str]) -> str:
    """``"auto"`` inside Ray: the first GPU Ray assigned, as this process numbers it, else the
    CPU. Other device strings are the caller's choice."""
    if device != "auto":
        return device
    if not gpu_ids:
        return "cpu"
    if not ferrite.cuda_available():
        log.warning("ferrite.ray: Ray assigned GPU %s but CUDA is not usable here; running on the CPU",
                    ",".join(gpu_ids))
        return "cpu"
    return f"cuda:{_visible_ordinal(gpu_ids[0])}"


def _visible_ordinal(gpu_id: str) -> int:
    """CUDA's ordinal for a Ray GPU id. Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs, so the
    first is ``cuda:0`` in the process; without it (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES)
    the id is the ordinal."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return int(gpu_id)
    ids = [v.strip() for v in visible.split(",")]
    return ids.index(gpu_id) if gpu_id in ids else 0


def _columns(batch: Batch, names: tuple[str, ...]) -> dict[str, list[Any]]:
    """The columns ``names`` that the batch has, as lists, from either batch format."""
    if isinstance(batch, Mapping):
        return {name: list(batch[name]) for name in names if name in batch}
    if hasattr(batch, "columns") and hasattr(batch, "to_dict"):  # a pandas DataFrame
        return {name: batch[name].tolist() for name in names if name in batch.columns}
    raise TypeError(f"ferrite.ray.Generate takes batch_format 'numpy' or 'pandas', got {type(batch).__name__}")


def _with_columns(batch: Batch, out: dict[str, list[Any]]) -> Batch:
    """The batch with the output columns added, in the batch's own format."""
    if isinstance(batch, Mapping):
        result = dict(batch)
        for name, values in out.items():
            # Object arrays keep None (a null in Arrow) beside strings.
            dtype = np.int64 if name.endswith("_tokens") else object
            result[name] = np.array(values, dtype=dtype)
        return result
    frame = batch.copy()
    for name, values in out.items():
        frame[name] = values
    return frame


def _plain(value: Any) -> Any:
    """Arrow's and numpy's shapes of a cell as plain Python: a list column arrives as a numpy
    (object) array, a struct as a dict that has every field of the column, None where a row
    lacks it; such None fields are dropped so a message keeps only its own keys."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype == object else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _prompt(value: Any) -> Any:
    prompt = _plain(value)
    if prompt is None or (isinstance(prompt, float) and math.isnan(prompt)):
        raise ValueError("the row has no prompt")
    return prompt


def _row_value(name: str, value: Any) -> Any:
    """A per-row option, or None for a null (None, or NaN where pandas or numpy made a nullable
    integer column float). Seeds and token counts must be whole numbers."""
    value = _plain(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if name in ("seed", "max_tokens") and isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    return value
