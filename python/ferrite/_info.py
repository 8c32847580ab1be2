"""``python -m ferrite info MODEL.gguf``: a readable summary of a GGUF file.

>>> from ferrite._info import summarize
>>> print(summarize(ferrite.GgufFile(path)))
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

from ferrite import _cli

# llama.cpp's `llama_ftype` (general.file_type): what the file was quantized as, named the way
# llama-quantize names it. Ids 4-6 and 33-35 are retired formats.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}
# Set on top of the id when the type was guessed from the tensors (llama.cpp LLAMA_FTYPE_GUESSED).
FILE_TYPE_GUESSED = 1024


def file_type_name(value: Any) -> str:
    """``general.file_type`` as llama.cpp names it: ``15`` -> ``"Q4_K_M"``."""
    if not isinstance(value, int) or isinstance(value, bool):
        return f"{value!r} (not a file type id)"
    guessed = value >= FILE_TYPE_GUESSED and bool(value & FILE_TYPE_GUESSED)
    base = value & ~FILE_TYPE_GUESSED if guessed else value
    name = FILE_TYPES.get(base, f"unknown id {base}")
    return name + (" (guessed)" if guessed else "")

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


def summarize(f: Any) -> str:
    """The summary of an open ``GgufFile``."""
    import numpy as np

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
        lines.append(f"file type     {file_type_name(md['general.file_type'])}")

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


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("info", parents=parents, help="summarize a GGUF file",
                       description="Summarize a GGUF file: metadata, tensor types, tokenizer.",
                       usage="%(prog)s (MODEL.gguf | --test-model)")
    p.add_argument("model", nargs="?", metavar="MODEL.gguf", help="path to a .gguf file")
    _cli.add_model_arguments(p)
    p.set_defaults(check=_check, run=main, subparser=p)
    return p


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    _cli.check_model_choice(parser, args)


def main(args: argparse.Namespace) -> int:
    from ferrite._ferrite import GgufFile

    path = _cli.resolve_model(args.model, args.test_model)
    with GgufFile(path) as f:
        print(summarize(f))
    return 0
