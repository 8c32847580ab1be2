"""Batch generation on a Ray cluster: one model per actor, one actor per GPU (or CPU share), Ray
Data handing each actor batches of rows. Needs the ``ray`` extra (``pip install
'ferrite-llm[ray]'``: Ray Data); ``import ferrite`` never imports this package.

``Generate`` is the callable class for ``Dataset.map_batches``; ``generate`` runs a list of
prompts through a pool of them and returns the results in input order.

>>> import ray, ferrite.ray
>>> ds = ray.data.read_parquet("prompts.parquet")          # a "prompt" column, maybe "seed"
>>> ds = ds.map_batches(ferrite.ray.Generate, batch_size=256, num_gpus=1,
...                     fn_constructor_kwargs={"model": "model.gguf", "max_tokens": 256, "temperature": 0.7},
...                     compute=ray.data.ActorPoolStrategy(size=4))
>>> ds.write_parquet("out/")                                 # + text, finish_reason, token counts, error
"""

try:
    import ray.data  # noqa: F401  (checked here so the message names the extra)
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("ferrite.ray needs Ray Data: pip install 'ferrite-llm[ray]'") from e

from ferrite.ray._actor import Generate
from ferrite.ray._job import generate

__all__ = ["Generate", "generate"]
