"""Writes a GGUF with the real test model's architecture, tensor names, shapes and types
(Qwen2.5-0.5B, Q4_K_M mix) filled with random valid blocks, for GPU-vs-CPU parity runs where the
real file is not available. Written with gguf-py's GGUFWriter.

    python scripts/make_synthetic_model.py OUT.gguf [--like REAL.gguf] [--seed N]

With --like, names, shapes, types and the qwen2.* hyperparameters are copied from that file
(only the block contents are random). Without it, the Q4_K_M mix is reproduced: Q5_0 for
token_embd and the 896-wide matrices, Q8_0 for output, attn_v Q8_0 and ffn_down Q6_K on the
"more bits" layers (else Q5_0 / Q4_K), F32 norms and biases.

Scales are chosen so that every matrix has a weight spread near 0.02 (like a trained model), so
activations stay finite through 24 layers; the model writes no tokenizer (parity feeds ids).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import gguf

T = gguf.GGMLQuantizationType
HP = dict(n_layers=24, hidden=896, ffn=4864, n_heads=14, n_kv=2, head_dim=64, vocab=151936,
          ctx=32768, rope_base=1e6, eps=1e-6)


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def default_layout() -> list[tuple[str, tuple[int, ...], T]]:
    """(name, numpy shape, type) in the real file's order."""
    h, f, nh, nkv, hd, v = HP["hidden"], HP["ffn"], HP["n_heads"], HP["n_kv"], HP["head_dim"], HP["vocab"]
    out = [("output.weight", (v, h), T.Q8_0), ("output_norm.weight", (h,), T.F32), ("token_embd.weight", (v, h), T.Q5_0)]
    n = HP["n_layers"]
    for i in range(n):
        p = f"blk.{i}."
        more = use_more_bits(i, n)
        out += [
            (p + "attn_k.bias", (nkv * hd,), T.F32),
            (p + "attn_k.weight", (nkv * hd, h), T.Q5_0),
            (p + "attn_norm.weight", (h,), T.F32),
            (p + "attn_output.weight", (h, nh * hd), T.Q5_0),
            (p + "attn_q.bias", (nh * hd,), T.F32),
            (p + "attn_q.weight", (nh * hd, h), T.Q5_0),
            (p + "attn_v.bias", (nkv * hd,), T.F32),
            (p + "attn_v.weight", (nkv * hd, h), T.Q8_0 if more else T.Q5_0),
            (p + "ffn_down.weight", (h, f), T.Q6_K if more else T.Q4_K),
            (p + "ffn_gate.weight", (f, h), T.Q5_0),
            (p + "ffn_norm.weight", (h,), T.F32),
            (p + "ffn_up.weight", (f, h), T.Q5_0),
        ]
    return out


def layout_like(path: str) -> list[tuple[str, tuple[int, ...], T]]:
    r = gguf.GGUFReader(path)
    for key, name in (("block_count", "n_layers"), ("embedding_length", "hidden"), ("feed_forward_length", "ffn"),
                      ("attention.head_count", "n_heads"), ("attention.head_count_kv", "n_kv"), ("context_length", "ctx"),
                      ("rope.freq_base", "rope_base"), ("attention.layer_norm_rms_epsilon", "eps")):
        field = r.fields.get(f"qwen2.{key}")
        if field is not None:
            HP[name] = field.parts[field.data[0]][0].item()
    HP["head_dim"] = HP["hidden"] // HP["n_heads"]
    return [(t.name, tuple(int(d) for d in reversed(t.shape.tolist())), T(t.tensor_type)) for t in r.tensors]


def f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint8).reshape(-1, 2)


def random_blocks(ty: T, n_elems: int, rng: np.random.Generator, spread: float) -> np.ndarray:
    """Random blocks of `ty` whose dequantized values have a standard deviation near `spread`."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[ty]
    n = n_elems // block_elems
    raw = rng.integers(0, 256, size=(n, block_bytes), dtype=np.uint8)
    jitter = lambda: rng.uniform(0.5, 1.5, n)  # noqa: E731
    if ty == T.Q5_0:  # values (q - 16) * d, q uniform 0..31: std ~9.2 d
        raw[:, 0:2] = f16_bytes(spread / 9.2 * jitter())
    elif ty == T.Q8_0:  # q int8 uniform: std ~74 d
        raw[:, 0:2] = f16_bytes(spread / 74.0 * jitter())
    elif ty == T.Q4_0:
        raw[:, 0:2] = f16_bytes(spread / 4.6 * jitter())
    elif ty == T.Q4_K:  # d*sc*q - dmin*m, sc,m in 0..63, q in 0..15: keep the mean near 0
        raw[:, 0:2] = f16_bytes(spread / (32 * 4.6) * jitter())
        raw[:, 2:4] = f16_bytes(spread / (32 * 4.6) * 7.5 * jitter())
    elif ty == T.Q6_K:  # d * sc * (q - 32), sc int8, q 0..63
        raw[:, 208:210] = f16_bytes(spread / (74 * 18.5) * jitter())
    elif ty == T.Q5_K:
        raw[:, 0:2] = f16_bytes(spread / (32 * 9.2) * jitter())
        raw[:, 2:4] = f16_bytes(spread / (32 * 9.2) * 15.5 * jitter())
    elif ty == T.Q3_K:
        raw[:, 108:110] = f16_bytes(spread / (18 * 2.3) * jitter())
    elif ty == T.Q2_K:
        raw[:, 80:82] = f16_bytes(spread / (8 * 1.1) * jitter())
        raw[:, 82:84] = f16_bytes(spread / (8 * 1.1) * 1.5 * jitter())
    else:
        raise SystemExit(f"make_synthetic_model: no generator for {ty.name}")
    return raw.reshape(-1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--like", help="copy names/shapes/types/hyperparameters from this GGUF")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    layout = layout_like(args.like) if args.like else default_layout()
    rng = np.random.default_rng(args.seed)
    w = gguf.GGUFWriter(args.out, "qwen2")
    w.add_name("ferrite synthetic qwen2.5-0.5b (random blocks)")
    w.add_block_count(HP["n_layers"])
    w.add_context_length(HP["ctx"])
    w.add_embedding_length(HP["hidden"])
    w.add_feed_forward_length(HP["ffn"])
    w.add_head_count(HP["n_heads"])
    w.add_head_count_kv(HP["n_kv"])
    w.add_layer_norm_rms_eps(HP["eps"])
    w.add_rope_freq_base(HP["rope_base"])
    counts: dict[str, int] = {}
    for name, shape, ty in layout:
        n_elems = int(np.prod(shape))
        if ty == T.F32:
            if name.endswith("norm.weight"):
                a = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            else:
                a = (0.02 * rng.standard_normal(shape)).astype(np.float32)
            w.add_tensor(name, a)
        else:
            spread = 0.5 if name == "token_embd.weight" else 0.02
            raw = random_blocks(ty, n_elems, rng, spread)
            block_elems, block_bytes = gguf.GGML_QUANT_SIZES[ty]
            # gguf-py takes quantized data in its byte shape: rows x bytes per row.
            byte_shape = (*shape[:-1], shape[-1] // block_elems * block_bytes)
            w.add_tensor(name, raw.reshape(byte_shape), raw_dtype=ty)
        counts[ty.name] = counts.get(ty.name, 0) + 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out}: {len(layout)} tensors {counts} in {time.time() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
