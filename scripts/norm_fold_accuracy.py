"""Where the RMSNorm's factors may sit on the f16 path of 5-16 rows, measured without a GPU.

    python scripts/norm_fold_accuracy.py MODEL.gguf [--prompts code,chat] [--x-scales 1/256,1/16]

The decode step of 5-16 sequences multiplies f16 copies of the weights by f16 activations
(times 1/256, matmul.rs's X_F16_SCALE), with float32 sums. Today q/k/v and gate/up read
f16(rms_norm(x) * g / 256), which `rms_norm_f16` writes in a launch of its own (49 a step, about
a tenth of an 8-sequence step on an H100, docs/BENCHMARKS.md, thirty-third session). A design
without that launch (the closing note of that session) moves the norm's factors:

- g, the norm weight, into the stacked f16 copy of q/k/v (gate/up) when it is made:
  f16((W * g) * s_w), s_w the power of two that brings its largest |value| near 16,384
  (matmul.rs's W_F16_TARGET_MAX);
- 1/rms into the GEMM's epilogue, from sums of squares that the producer of x (the o and
  ffn_down GEMMs, which add into x) writes beside x itself as f16(x / 256).

The bits change: the f16 rounding moves from x * r * g to x, and from W to W * g. x is not
normalized, so the scale it is rounded at matters: small values of early layers' x fall into
f16's subnormals at 1/256 (`--x-scales` lists the scales to try for the folded inputs; o's and
ffn_down's inputs keep 1/256). This script emulates both placements in NumPy float64 (every
projection on its f16 copy with f16 inputs, as the GPU's path of 5-16 rows; sums exact) and
prints each one's max |logit - float64 reference| and top-1 agreement, beside the issue's bound
of 0.05. Needs gguf-py.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from prompts import PROMPTS, token_ids  # noqa: E402
from reference_forward import ReferenceModel  # noqa: E402

X_F16_SCALE = 1.0 / 256.0
W_F16_TARGET_MAX = 16384.0


def f16_copy(w: np.ndarray) -> np.ndarray:
    """w as its f16 copy holds it (scaled by a power of two, rounded, scaled back), float64."""
    big = float(np.abs(w).max(initial=0.0))
    scale = 1.0 if not (np.isfinite(big) and big > 0) else 2.0 ** np.clip(np.floor(np.log2(W_F16_TARGET_MAX / big)), -60, 60)
    return (w * scale).astype(np.float16).astype(np.float64) / scale


def f16_input(x: np.ndarray, scale: float = X_F16_SCALE) -> np.ndarray:
    """x as the f16 GEMMs read it: f16(x * scale) (1/256 today), scaled back."""
    return (np.asarray(x, np.float32) * np.float32(scale)).astype(np.float16).astype(np.float64) / scale


# The matrices that multiply one normalized x and share one stacked f16 copy (matmul.rs's stacks).
STACKS = (("attn_q", "attn_k", "attn_v"), ("ffn_gate", "ffn_up"))


def stack_of(name: str) -> tuple[tuple[str, ...], int] | None:
    """The stack `name` (blk.N.KIND.weight) belongs to, as its members' names, and its index."""
    block, _, rest = name.rpartition(".weight")[0].rpartition(".")
    for kinds in STACKS:
        if rest in kinds:
            return tuple(f"{block}.{k}.weight" for k in kinds), kinds.index(rest)
    return None


class F16Path(ReferenceModel):
    """The reference's math with every projection on f16 copies and f16 inputs (the layer loop
    is the reference's own). `fold` places the norm's factors as the launch-free design does:
    g in the stacked weights, 1/rms after the sum."""

    def __init__(self, path, fold: bool, x_scale: float = X_F16_SCALE, unit: str = "none"):
        super().__init__(path)
        self.fold = fold
        self.x_scale = x_scale
        # Where the folded copies take rms_norm(x) without g (f16 at scale 1, no 1/rms after)
        # instead of x: "none", "first" (layer 0's q/k/v: no GEMM wrote that x, as in the GPU's
        # decode of 5-16 rows) or "all" (the GPU's prompts, on cuBLAS).
        self.unit = unit
        self._f16: dict[tuple, np.ndarray] = {}
        self._normed: tuple | None = None  # (x, 1/rms, g) of the last rms_norm

    def f16_weights(self, names: tuple[str, ...], g: np.ndarray | None) -> np.ndarray:
        key = (names, g is not None)
        if key not in self._f16:
            w = np.concatenate([self.weight(n).astype(np.float64) for n in names], axis=0)
            self._f16[key] = f16_copy(w * g[None, :] if g is not None else w)
        return self._f16[key]

    def rms_norm(self, x: np.ndarray, name: str) -> np.ndarray:
        g = self.weight(name).astype(np.float32)
        # As rms_norm_f16: 1/rms in float64 rounded to float once, then (x * r) * g in float32.
        r = (1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps)).astype(np.float32)
        self._normed = (x, r, g)
        return (np.asarray(x, np.float32) * r) * g

    def linear(self, x, name, bias=None):
        stack = stack_of(name)
        if stack is None:  # o and ffn_down: unnormalized inputs, a copy of their own
            y = f16_input(x) @ self.f16_weights((name,), None).T
        else:
            names, member = stack
            first = sum(self.weight(n).shape[0] for n in names[:member])
            rows = slice(first, first + self.weight(name).shape[0])
            unit = self.unit == "all" or (self.unit == "first" and name.startswith("blk.0.attn_"))
            if self.fold and unit:
                x_raw, r, g = self._normed
                y = f16_input(np.asarray(x_raw, np.float32) * r, 1.0) @ self.f16_weights(names, g.astype(np.float64))[rows].T
            elif self.fold:
                x_raw, r, g = self._normed
                y = (f16_input(x_raw, self.x_scale) @ self.f16_weights(names, g.astype(np.float64))[rows].T) * r.astype(np.float64)
            else:
                y = f16_input(x) @ self.f16_weights(names, None)[rows].T
        if bias is not None and self.has(bias):
            y = y + self.weight(bias).astype(np.float64)
        return y

    def forward(self, tokens) -> np.ndarray:
        # The LM head takes float32 x with its own norm on the GPU (the matrix-vector kernels
        # at 5-8 rows for a small model): exact here.
        x = ReferenceModel.rms_norm(self, self.hidden_states(tokens), "output_norm.weight")
        head = "output.weight" if self.has("output.weight") else "token_embd.weight"
        return ReferenceModel.linear(self, x, head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--prompts", default="code,chat", help="names from tests/prompts.py")
    ap.add_argument("--x-scales", default="1/256,1/16", help="scales of the folded path's x before f16 (empty: none)")
    ap.add_argument("--as-landed", action="store_true", help="also the two placements the GPU path uses")
    args = ap.parse_args()
    ref = ReferenceModel(args.model)
    paths = {"f16, norm apart (today)": F16Path(args.model, fold=False)}
    for text in filter(None, args.x_scales.split(",")):
        num, _, den = text.partition("/")
        paths[f"f16, norm folded, x * {text}"] = F16Path(args.model, fold=True, x_scale=float(num) / float(den or 1))
    if args.as_landed:
        # What the GPU does with FERRITE_CUDA_NORM_FOLD on (matmul.rs, NormSource).
        paths["as landed: 5-16 rows (x * 1/16 in every layer)"] = F16Path(args.model, fold=True, x_scale=1 / 16)
        paths["as landed: prompts (normalized without g, at 1)"] = F16Path(args.model, fold=True, unit="all")
    print("| prompt | path | max abs diff vs float64 | top-1 agreement |")
    print("| --- | --- | --- | --- |")
    for name in args.prompts.split(","):
        ids = token_ids(args.model, PROMPTS[name])
        want = ref.forward(ids)
        for label, model in paths.items():
            got = model.forward(ids)
            diff = float(np.abs(got - want).max())
            top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
            print(f"| {name} ({len(ids)} tok) | {label} | {diff:.3e} | {100 * top1:.1f} % |", flush=True)


if __name__ == "__main__":
    main()
