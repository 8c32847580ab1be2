"""Logits of the real model on each GPU matmul precision against the NumPy float64 forward pass.

    python scripts/gpu_accuracy.py MODEL.gguf [--json OUT]

For each test prompt (tests/prompts.py), the float64 reference (tests/reference_forward.py,
weights from gguf-py) beside:
- cuda exact:  ``Model.load(device="cuda", exact_matmul=True)``: projections of more than 8 rows
  in float32 on the CUDA cores;
- cuda default: those projections on f16 copies of the weights with f16 activations (float32
  sums) on the tensor cores (FERRITE_CUDA_GEMM picks another: f32, tf32);
- cuda decode: the default model fed one token at a time (the matrix-vector kernels, float32);
- cuda batch16: the default model, 16 sequences decoding together (more than 8 rows: f16);
- cpu default: the CPU's 8-bit-activation kernels (what llama.cpp also does on the CPU);
- with --kv-f16, the default model with ``kv_cache_dtype="float16"``, a prompt at once and one token at a time: "cuda f16kv" against the reference,
  and "f16kv vs rounding" against the reference that rounds K and V to f16 the same way
  (what the f16 cache must match; the gap between the two is the rounding's own cost).
Prints max |logit - reference| and top-1 agreement per prompt and path. Needs a GPU, gguf-py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import ferrite  # noqa: E402
from prompts import PROMPTS, token_ids  # noqa: E402
from reference_forward import ReferenceModel  # noqa: E402


def compare(ours: np.ndarray, ref: np.ndarray) -> dict:
    diff = np.abs(ours.astype(np.float64) - ref)
    return {"max_abs": float(diff.max()), "top1": float((ours.argmax(-1) == ref.argmax(-1)).mean())}


def decode_alone(m, ids: list[int]) -> np.ndarray:
    s = m.new_sequence(max_tokens=len(ids) + 1)
    rows = [m.forward([t], seq=s) for t in ids]
    m.free_sequence(s)
    return np.concatenate(rows)


def decode_batch16(m, ids: list[int]) -> np.ndarray:
    """16 sequences share each step; sequence 0 holds the prompt, the others filler."""
    seqs = [m.new_sequence(max_tokens=len(ids) + 1) for _ in range(16)]
    out = []
    for i, t in enumerate(ids):
        rows = m.forward_batch([[t]] + [[(t + 7 * j) % 5000] for j in range(1, 16)], seqs=seqs)
        out.append(rows[0])
    for s in seqs:
        m.free_sequence(s)
    return np.concatenate(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--json")
    ap.add_argument("--kv-f16", action="store_true", help="also the f16 KV cache (see above)")
    args = ap.parse_args()
    ref_model = ReferenceModel(args.model)
    if args.kv_f16:
        f16kv = ferrite.Model.load(args.model, device="cuda", kv_cache_dtype="float16")
        ref16_model = ReferenceModel(args.model, kv_dtype="float16")
    exact = ferrite.Model.load(args.model, device="cuda", exact_matmul=True)
    fast = ferrite.Model.load(args.model, device="cuda")
    cpu = ferrite.Model.load(args.model, device="cpu")
    rows = []
    for name, text in PROMPTS.items():
        ids = token_ids(args.model, text)
        ref = ref_model.forward(ids)
        paths = {
            "cuda exact": exact.forward(ids),
            "cuda default": fast.forward(ids),
            "cuda decode": decode_alone(fast, ids),
            "cuda batch16": decode_batch16(fast, ids),
            "cpu default": cpu.forward(ids),
        }
        if args.kv_f16:
            ref16 = ref16_model.forward(ids)
            prefill16, decode16 = f16kv.forward(ids), decode_alone(f16kv, ids)
            paths.update({"cuda f16kv": prefill16, "cuda f16kv decode": decode16})
            for path, logits in (("f16kv vs rounding", prefill16), ("f16kv decode vs rounding", decode16)):
                rows.append({"prompt": name, "tokens": len(ids), "path": path, **compare(logits, ref16)})
        for path, logits in paths.items():
            row = {"prompt": name, "tokens": len(ids), "path": path, **compare(logits, ref)}
            rows.append(row)
            print(f"{name:8s} ({len(ids):2d} tok)  {path:13s} max|diff| {row['max_abs']:.2e}  top-1 {100 * row['top1']:.1f}%", flush=True)
    print()
    print("| path | max abs diff vs float64 (worst prompt) | top-1 agreement |")
    print("| --- | --- | --- |")
    for path in dict.fromkeys(r["path"] for r in rows):
        sel = [r for r in rows if r["path"] == path]
        print(f"| {path} | {max(r['max_abs'] for r in sel):.2e} | {100 * min(r['top1'] for r in sel):.1f} % |")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
