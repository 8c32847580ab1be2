"""``python -m ferrite info MODEL.gguf``: a readable summary of a GGUF file.

>>> from ferrite._info import summarize
>>> print(summarize(ferrite.GgufFile(path)))
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from ferrite._ferrite import GgufFile

# Hyperparameters worth a line each, as `{arch}.<suffix>`.
_HYPER = [
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
    "rope.dimension_count",
    "rope.scaling.type",
    "rope.scaling.factor",
]


def _human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def summarize(f: GgufFile) -> str:
    md = f.metadata
    arch = md.get("general.architecture", "?")
    lines = [
        f"file          {f.path}",
        f"name          {md.get('general.name', '?')}",
        f"architecture  {arch}",
        f"GGUF          version {f.version}, alignment {f.alignment}, {_mb(f.size_bytes)}",
    ]
    n_params = sum(t.n_elements for t in f.tensors.values())
    lines.append(f"parameters    {_human_count(n_params)} ({n_params:,}) in {len(f.tensors)} tensors")
    if "general.file_type" in md:
        lines.append(f"file type     {md['general.file_type']}")

    lines.append("")
    lines.append("hyperparameters")
    for suffix in _HYPER:
        key = f"{arch}.{suffix}"
        if key in md:
            value = md[key]
            # GGUF stores these as float32: print the float32's shortest repr (1e-06, not 9.99e-07).
            shown = np.float32(value) if isinstance(value, float) else value
            lines.append(f"  {suffix:<34} {str(shown)}")

    lines.append("")
    lines.append(f"{'tensor type':<12}{'tensors':>8}{'elements':>16}{'bytes':>16}{'bits/weight':>13}")
    by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for t in f.tensors.values():
        row = by_type[t.ggml_type]
        row[0] += 1
        row[1] += t.n_elements
        row[2] += t.n_bytes
    for name, (count, elems, nbytes) in sorted(by_type.items(), key=lambda kv: -kv[1][2]):
        lines.append(f"{name:<12}{count:>8}{elems:>16,}{nbytes:>16,}{8 * nbytes / elems:>13.2f}")

    lines.append("")
    tok_model = md.get("tokenizer.ggml.model")
    if tok_model is None:
        lines.append("tokenizer     none in this file")
    else:
        vocab = len(md.get("tokenizer.ggml.tokens", []))
        merges = len(md.get("tokenizer.ggml.merges", []))
        lines.append(
            f"tokenizer     {tok_model} (pre-tokenizer {md.get('tokenizer.ggml.pre', 'unspecified')}), "
            f"{vocab:,} tokens, {merges:,} merges"
        )
        ids = []
        tokens = md.get("tokenizer.ggml.tokens", [])
        for role in ("bos", "eos", "padding"):
            key = f"tokenizer.ggml.{role}_token_id"
            if key in md:
                tid = md[key]
                text = tokens[tid] if 0 <= tid < len(tokens) else "<out of range>"
                ids.append(f"{role} {tid} {text!r}")
        if ids:
            lines.append(f"special ids   {', '.join(ids)}")
    template = md.get("tokenizer.chat_template")
    lines.append(f"chat template {'present (' + str(len(template)) + ' chars)' if template else 'absent'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferrite info", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="path to a .gguf file")
    args = parser.parse_args(argv)
    with GgufFile(args.model) as f:
        print(summarize(f))
    return 0
