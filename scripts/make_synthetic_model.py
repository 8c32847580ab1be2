"""Writes a GGUF with a Qwen2.5 model's architecture, tensor names, shapes and types (Q4_K_M mix)
filled with random valid blocks: for GPU-vs-CPU parity runs where the real file is not available,
and for speed benchmarks beside llama.cpp (the contents are random, the text is nonsense). Written
with gguf-py's GGUFWriter, tensor by tensor (memory stays well under the file size).

    python scripts/make_synthetic_model.py OUT.gguf [--shape 0.5b|7b] [--layers N]
                                           [--tokenizer-from TOK.gguf] [--seed N]
    python scripts/make_synthetic_model.py OUT.gguf --like REAL.gguf [--tokenizer-from TOK.gguf]
    python scripts/make_synthetic_model.py TOK.gguf --tokenizer-only --tokenizer-from REAL.gguf

--shape 0.5b (default) is the test model, Qwen2.5-0.5B (24 layers, 896 wide, ~0.5 GB); --shape 7b
is Qwen2.5-7B (28 layers, 3584 wide, ffn 18944, 28 query / 4 KV heads, ~4.7 GB, under a minute).
--layers N makes an N-layer model of that shape, for quick local checks (the "more bits" layers
below are then picked among N, as llama.cpp would).

The type mix is llama.cpp's Q4_K_M: Q4_K, with Q6_K for output and, on the "more bits" layers,
for attn_v and ffn_down; F32 norms and biases. K-quants need rows of a multiple of 256, where they
are not llama.cpp falls back to Q5_0 (for Q4_K) and Q8_0 (for Q6_K): so the 896-wide 0.5B gets
Q5_0 for token_embd and the 896-wide matrices, Q8_0 for output and the "more bits" attn_v.

With --like, names, shapes, types and the qwen2.* hyperparameters are copied from that file (only
the block contents are random).

--tokenizer-from copies every tokenizer.* key (vocabulary, merges, pre-tokenizer, special ids,
chat template) from a GGUF, so that llama.cpp and ferrite can tokenize; token_embd and output then
have one row per token, as llama.cpp requires. Without it no tokenizer is written (parity runs feed
ids) and the vocabulary is the shape's (151936, 152064). --tokenizer-only writes just those keys
and general.architecture (~6 MB, to carry to another machine instead of the real model; gguf-py
takes ~15 s to read its 300k strings):

    python scripts/make_synthetic_model.py /tmp/tok.gguf --tokenizer-only --tokenizer-from model.gguf
    python scripts/make_synthetic_model.py /tmp/qwen7b.gguf --shape 7b --tokenizer-from /tmp/tok.gguf

Scales are chosen so that every matrix has a weight spread near 0.02 (like a trained model), so
activations stay finite through all the layers.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

import numpy as np
import gguf

T = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
Layout = list[tuple[str, tuple[int, ...], T]]

SHAPES: dict[str, dict[str, Any]] = {
    "0.5b": dict(n_layers=24, hidden=896, ffn=4864, n_heads=14, n_kv=2, head_dim=64, vocab=151936,
                 ctx=32768, rope_base=1e6, eps=1e-6),
    "7b": dict(n_layers=28, hidden=3584, ffn=18944, n_heads=28, n_kv=4, head_dim=128, vocab=152064,
               ctx=32768, rope_base=1e6, eps=1e-6),
}
K_FALLBACK = {T.Q4_K: T.Q5_0, T.Q6_K: T.Q8_0}


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def default_layout(hp: dict[str, Any]) -> Layout:
    """(name, numpy shape, type), ordered as this script has always written them."""
    h, f, nh, nkv, hd, v = hp["hidden"], hp["ffn"], hp["n_heads"], hp["n_kv"], hp["head_dim"], hp["vocab"]

    def q(ty: T, row: int) -> T:
        return K_FALLBACK[ty] if row % gguf.QK_K else ty

    out = [("output.weight", (v, h), q(T.Q6_K, h)), ("output_norm.weight", (h,), T.F32),
           ("token_embd.weight", (v, h), q(T.Q4_K, h))]
    n = hp["n_layers"]
    for i in range(n):
        p = f"blk.{i}."
        more = T.Q6_K if use_more_bits(i, n) else T.Q4_K
        out += [
            (p + "attn_k.bias", (nkv * hd,), T.F32),
            (p + "attn_k.weight", (nkv * hd, h), q(T.Q4_K, h)),
            (p + "attn_norm.weight", (h,), T.F32),
            (p + "attn_output.weight", (h, nh * hd), q(T.Q4_K, nh * hd)),
            (p + "attn_q.bias", (nh * hd,), T.F32),
            (p + "attn_q.weight", (nh * hd, h), q(T.Q4_K, h)),
            (p + "attn_v.bias", (nkv * hd,), T.F32),
            (p + "attn_v.weight", (nkv * hd, h), q(more, h)),
            (p + "ffn_down.weight", (h, f), q(more, f)),
            (p + "ffn_gate.weight", (f, h), q(T.Q4_K, h)),
            (p + "ffn_norm.weight", (h,), T.F32),
            (p + "ffn_up.weight", (f, h), q(T.Q4_K, h)),
        ]
    return out


def layout_like(path: str) -> tuple[dict[str, Any], Layout]:
    r = gguf.GGUFReader(path)
    hp = dict(SHAPES["0.5b"])
    for key, name in (("block_count", "n_layers"), ("embedding_length", "hidden"), ("feed_forward_length", "ffn"),
                      ("attention.head_count", "n_heads"), ("attention.head_count_kv", "n_kv"), ("context_length", "ctx"),
                      ("rope.freq_base", "rope_base"), ("attention.layer_norm_rms_epsilon", "eps")):
        field = r.fields.get(f"qwen2.{key}")
        if field is not None:
            hp[name] = field.parts[field.data[0]][0].item()
    hp["head_dim"] = hp["hidden"] // hp["n_heads"]
    layout = [(t.name, tuple(int(d) for d in reversed(t.shape.tolist())), T(t.tensor_type))
              for t in r.tensors]
    hp["vocab"] = next(shape[0] for name, shape, _ in layout if name == "token_embd.weight")
    return hp, layout


def read_tokenizer(path: str) -> tuple[str, list[tuple[str, Any, V, V | None]]]:
    """The file's architecture and its tokenizer.* keys as (key, value, type, array item type).
    Strings stay bytes, so that they are copied exactly whatever their encoding."""
    r = gguf.GGUFReader(path)
    kvs: list[tuple[str, Any, V, V | None]] = []
    for key, field in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vt = V(field.types[0])
        sub = V(field.types[1]) if vt == V.ARRAY else None
        if vt == V.ARRAY and len(field.types) > 2:
            raise SystemExit(f"make_synthetic_model: {path}: {key} is an array of arrays, not copied")
        if sub == V.STRING:
            value: Any = [bytes(field.parts[i]) for i in field.data]
        elif vt == V.STRING:
            value = bytes(field.parts[-1])
        else:
            value = field.contents()
        kvs.append((key, value, vt, sub))
    if not any(key == "tokenizer.ggml.tokens" for key, *_ in kvs):
        raise SystemExit(f"make_synthetic_model: {path} has no tokenizer.ggml.tokens")
    arch = r.fields.get("general.architecture")
    return (arch.contents() if arch is not None else "qwen2"), kvs


def f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint8).reshape(-1, 2)


def min_std(n_s: int, n_q: int) -> float:
    """Standard deviation, in units of d, of the K-quant values d*s*q - dmin*m where s, m are
    uniform on 0..n_s-1, q on 0..n_q-1, dmin = d * mean(q) (mean 0) and d, dmin are jittered
    independently: each sub-block's offset d*mean(q)*(s - m) adds to the spread (~1.75x)."""
    j2 = 13 / 12  # E[j^2] of the jitter U(0.5, 1.5)
    ms, mq = (n_s - 1) / 2, (n_q - 1) / 2
    s2, q2 = (n_s - 1) * (2 * n_s - 1) / 6, (n_q - 1) * (2 * n_q - 1) / 6
    return math.sqrt(j2 * s2 * q2 - 2 * (ms * mq) ** 2 + j2 * mq * mq * s2)


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
    elif ty == T.Q4_K:  # d*sc*q - dmin*m, sc,m in 0..63, q in 0..15
        raw[:, 0:2] = f16_bytes(spread / min_std(64, 16) * jitter())
        raw[:, 2:4] = f16_bytes(spread / min_std(64, 16) * 7.5 * jitter())
    elif ty == T.Q6_K:  # d * sc * (q - 32), sc int8, q 0..63
        raw[:, 208:210] = f16_bytes(spread / (74 * 18.5) * jitter())
    elif ty == T.Q5_K:
        raw[:, 0:2] = f16_bytes(spread / min_std(64, 32) * jitter())
        raw[:, 2:4] = f16_bytes(spread / min_std(64, 32) * 15.5 * jitter())
    elif ty == T.Q3_K:
        raw[:, 108:110] = f16_bytes(spread / (18 * 2.3) * jitter())
    elif ty == T.Q2_K:
        raw[:, 80:82] = f16_bytes(spread / min_std(16, 4) * jitter())
        raw[:, 82:84] = f16_bytes(spread / min_std(16, 4) * 1.5 * jitter())
    else:
        raise SystemExit(f"make_synthetic_model: no generator for {ty.name}")
    return raw.reshape(-1)


def byte_shape(shape: tuple[int, ...], ty: T) -> tuple[int, ...]:
    """gguf-py takes quantized data in its byte shape: rows x bytes per row."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[ty]
    return (*shape[:-1], shape[-1] // block_elems * block_bytes)


def random_tensor(name: str, shape: tuple[int, ...], ty: T, rng: np.random.Generator) -> np.ndarray:
    if ty == T.F32:
        if name.endswith("norm.weight"):
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    spread = 0.5 if name == "token_embd.weight" else 0.02
    return random_blocks(ty, int(np.prod(shape)), rng, spread).reshape(byte_shape(shape, ty))


def write_tokenizer_only(out: str, arch: str, kvs: list[tuple[str, Any, V, V | None]]) -> None:
    w = gguf.GGUFWriter(out, arch)
    for key, value, vt, sub in kvs:
        w.add_key_value(key, value, vt, sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="model shape (default 0.5b)")
    ap.add_argument("--layers", type=int, help="this many layers instead of the shape's")
    ap.add_argument("--like", help="copy names/shapes/types/hyperparameters from this GGUF")
    ap.add_argument("--tokenizer-from", help="copy the tokenizer.* keys of this GGUF")
    ap.add_argument("--tokenizer-only", action="store_true", help="write only the tokenizer (needs --tokenizer-from)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.like and (args.shape or args.layers is not None):
        ap.error("--like takes the shape from that file: no --shape or --layers with it")
    if args.tokenizer_only and not args.tokenizer_from:
        ap.error("--tokenizer-only needs --tokenizer-from")
    if args.layers is not None and args.layers < 1:
        ap.error("--layers must be at least 1")
    t0 = time.time()
    arch, tok = read_tokenizer(args.tokenizer_from) if args.tokenizer_from else ("qwen2", [])
    if args.tokenizer_only:
        write_tokenizer_only(args.out, arch, tok)
        print(f"wrote {args.out}: {len(tok)} tokenizer keys, {os.path.getsize(args.out) / 1e6:.1f} MB "
              f"in {time.time() - t0:.1f}s", flush=True)
        return 0
    n_tokens = next((len(value) for key, value, *_ in tok if key == "tokenizer.ggml.tokens"), None)
    if args.like:
        hp, layout = layout_like(args.like)
        if n_tokens is not None and n_tokens != hp["vocab"]:
            raise SystemExit(f"make_synthetic_model: {args.like} has {hp['vocab']} token_embd rows, "
                             f"{args.tokenizer_from} {n_tokens} tokens (llama.cpp wants them equal)")
        label = f"like {os.path.basename(args.like)}"
    else:
        shape = args.shape or "0.5b"
        hp = dict(SHAPES[shape])
        if args.layers is not None:
            hp["n_layers"] = args.layers
        if n_tokens is not None:
            hp["vocab"] = n_tokens
        layout = default_layout(hp)
        label = f"qwen2.5-{shape}"

    w = gguf.GGUFWriter(args.out, "qwen2")
    w.add_name(f"ferrite synthetic {label} (random blocks)")
    w.add_block_count(hp["n_layers"])
    w.add_context_length(hp["ctx"])
    w.add_embedding_length(hp["hidden"])
    w.add_feed_forward_length(hp["ffn"])
    w.add_head_count(hp["n_heads"])
    w.add_head_count_kv(hp["n_kv"])
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_rope_freq_base(hp["rope_base"])
    for key, value, vt, sub in tok:
        w.add_key_value(key, value, vt, sub)
    # Infos first, then each tensor's data as it is made: one tensor in memory at a time.
    counts: dict[str, int] = {}
    for name, shape, ty in layout:
        if ty == T.F32:
            w.add_tensor_info(name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
        else:
            bshape = byte_shape(shape, ty)
            w.add_tensor_info(name, bshape, np.dtype(np.uint8), int(np.prod(bshape)), raw_dtype=ty)
        counts[ty.name] = counts.get(ty.name, 0) + 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(args.seed)
    for name, shape, ty in layout:
        w.write_tensor_data(random_tensor(name, shape, ty, rng))
    w.close()
    print(f"wrote {args.out}: {len(layout)} tensors {counts}, vocab {hp['vocab']}, {len(tok)} tokenizer keys, "
          f"{os.path.getsize(args.out) / 1e9:.2f} GB in {time.time() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
