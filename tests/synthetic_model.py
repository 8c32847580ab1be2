"""Tiny random Qwen2 / Llama GGUF files written with gguf-py's GGUFWriter, for model tests that
must not depend on the real model (architecture variants, missing tensors, context limits)."""

from __future__ import annotations

import gguf
import numpy as np

HIDDEN, FFN, N_HEADS, N_KV_HEADS, N_LAYERS, VOCAB, CONTEXT = 64, 96, 4, 2, 2, 80, 48


def write_tiny_model(
    path,
    arch: str = "llama",
    matrix_type: str = "Q8_0",
    tied: bool = True,
    biases: bool = False,
    drop: str | None = None,
    seed: int = 0,
) -> str:
    """Writes a 2-layer random model to ``path``; ``drop`` leaves one tensor out."""
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // N_HEADS
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(N_LAYERS)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    qtype = gguf.GGMLQuantizationType[matrix_type]

    def add(name, shape, scale=0.1, matrix=True):
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        if name.endswith("norm.weight"):
            a = 1.0 + 0.5 * a
        if name == drop:
            return
        if matrix and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, a)

    add("token_embd.weight", (VOCAB, HIDDEN), 1.0)
    add("output_norm.weight", (HIDDEN,), matrix=False)
    if not tied:
        add("output.weight", (VOCAB, HIDDEN))
    for i in range(N_LAYERS):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (HIDDEN,), matrix=False)
        add(p + "attn_q.weight", (N_HEADS * head_dim, HIDDEN))
        add(p + "attn_k.weight", (N_KV_HEADS * head_dim, HIDDEN))
        add(p + "attn_v.weight", (N_KV_HEADS * head_dim, HIDDEN))
        if biases:
            add(p + "attn_q.bias", (N_HEADS * head_dim,), matrix=False)
            add(p + "attn_k.bias", (N_KV_HEADS * head_dim,), matrix=False)
            add(p + "attn_v.bias", (N_KV_HEADS * head_dim,), matrix=False)
        add(p + "attn_output.weight", (HIDDEN, N_HEADS * head_dim))
        add(p + "ffn_norm.weight", (HIDDEN,), matrix=False)
        add(p + "ffn_gate.weight", (FFN, HIDDEN))
        add(p + "ffn_up.weight", (FFN, HIDDEN))
        add(p + "ffn_down.weight", (HIDDEN, FFN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)
