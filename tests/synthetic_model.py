"""Tiny random Qwen2 / Llama GGUF files written with gguf-py's GGUFWriter, for model tests that
must not depend on the real model (architecture variants, missing tensors, context limits)."""

from __future__ import annotations

import gguf
import numpy as np

from block_layouts import F16_SCALE_FIELDS, set_iq1m_scale

HIDDEN, FFN, N_HEADS, N_KV_HEADS, N_LAYERS, VOCAB, CONTEXT = 64, 96, 4, 2, 2, 80, 48


def write_tiny_model(
    path,
    arch: str = "llama",
    matrix_type: str = "Q8_0",
    tied: bool = True,
    biases: bool = False,
    drop: str | None = None,
    seed: int = 0,
    vocab: int = VOCAB,
    context: int = CONTEXT,
    spread: float = 0.1,
) -> str:
    """Writes a 2-layer random model to ``path``; ``drop`` leaves one tensor out. ``vocab`` and
    ``context`` can be raised, e.g. to run the real tokenizer's ids through a fast model."""
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // N_HEADS
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(N_LAYERS)
    w.add_context_length(context)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    qtype = gguf.GGMLQuantizationType[matrix_type]

    def add(name, shape, scale=spread, matrix=True):
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        if name.endswith("norm.weight"):
            a = 1.0 + 0.5 * a
        if name == drop:
            return
        if matrix and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, a)

    add("token_embd.weight", (vocab, HIDDEN), 1.0)
    add("output_norm.weight", (HIDDEN,), matrix=False)
    if not tied:
        add("output.weight", (vocab, HIDDEN))
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


# ---- random-block models of any ggml type (for backend-vs-reference checks of every format) ----

FLOAT_TYPES = {"F32": np.float32, "F16": np.float16}
# Types whose scale is not an f16 field, with a fixed scale byte that gives small values.
MXFP4_SCALE_BYTE = 121  # E8M0: 2^(121-128) per doubled E2M1 step
NVFP4_SCALE_BYTE = 0x08  # unsigned E4M3: 8 * 2^-10


def _type_geometry(type_name: str) -> tuple[int, int]:
    import ferrite

    for name, _id, block_elems, block_bytes in ferrite.ggml_types():
        if name == type_name:
            return block_elems, block_bytes
    raise KeyError(type_name)


def random_matrix(type_name: str, n_rows: int, n_cols: int, rng: np.random.Generator, spread: float = 0.05):
    """A random ``[n_rows, n_cols]`` matrix of ggml type ``type_name`` whose values have a standard
    deviation near ``spread``: float32 or float16 values for F32/F16, else uint8 block bytes of
    shape ``[n_rows, bytes per row]`` (gguf-py's byte shape)."""
    import ferrite

    if type_name in FLOAT_TYPES:
        return (rng.standard_normal((n_rows, n_cols)) * spread).astype(FLOAT_TYPES[type_name])
    block_elems, block_bytes = _type_geometry(type_name)
    n_blocks = n_rows * n_cols // block_elems
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    jitter = rng.uniform(0.5, 1.5, n_blocks)
    if type_name == "MXFP4":
        raw[:, 0] = MXFP4_SCALE_BYTE
    elif type_name == "NVFP4":
        raw[:, 0:4] = NVFP4_SCALE_BYTE
    elif type_name == "BF16":
        vals = (rng.standard_normal(n_blocks) * spread).astype(np.float32).view(np.uint32)
        raw = (vals >> 16).astype(np.uint16).view(np.uint8).reshape(n_blocks, 2)
    else:
        # Unit scales first, to measure the spread they give, then rescale to the target.
        def set_scales(values: np.ndarray) -> None:
            f16 = values.astype(np.float16).view(np.uint16)
            if type_name == "IQ1_M":
                set_iq1m_scale(raw, f16)
            else:
                for off in F16_SCALE_FIELDS[type_name]:
                    raw[:, off : off + 2] = f16.view(np.uint8).reshape(n_blocks, 2)

        set_scales(np.ones(n_blocks))
        unit = ferrite.dequantize(raw.reshape(-1), type_name, (n_blocks * block_elems,))
        set_scales(jitter * spread / max(float(unit.std()), 1e-30))
    row_bytes = n_cols // block_elems * block_bytes
    return raw.reshape(n_rows, row_bytes)


def write_block_model(
    path,
    matrix_type: str,
    arch: str = "qwen2",
    hidden: int = 256,
    ffn: int = 512,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    n_layers: int = 2,
    vocab: int = 260,
    context: int = 160,
    seed: int = 0,
    norm_gain: float = 1.0,
    layer_types: dict[str, str] | None = None,
    norm_spread: float = 0.1,
) -> str:
    """A small model whose every matrix (embedding and LM head too) is random blocks of
    ``matrix_type``; norms and q/k/v biases (qwen2) are F32. ``hidden`` must be a multiple of
    the type's block size (256 for K- and I-quants). ``norm_gain`` multiplies the layers' norm
    weights (large gains give the large activations some trained models have), whose values are
    ``1 + norm_spread * N(0, 1)`` before it (a spread near 1 gives weights of both signs and
    mixed magnitudes, as some trained norms have). ``layer_types``
    gives some layer matrices (by name within the layer, e.g. ``{"attn_v.weight": "Q8_0"}``)
    another type, as real files mix them."""
    layer_types = layer_types or {}
    import gguf

    rng = np.random.default_rng(seed)
    head_dim = hidden // n_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(context)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6 if arch == "qwen2" else 10000.0)

    def matrix(name, n_rows, n_cols, spread=0.05):
        ty = layer_types.get(name.split(".", 2)[-1], matrix_type) if name.startswith("blk.") else matrix_type
        data = random_matrix(ty, n_rows, n_cols, rng, spread)
        if ty in FLOAT_TYPES:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[ty])

    def vector(name, n, norm=False, gain=1.0):
        v = rng.standard_normal(n) * (norm_spread if norm else 0.05)
        w.add_tensor(name, ((1.0 + v) * gain if norm else v).astype(np.float32))

    matrix("token_embd.weight", vocab, hidden, spread=0.5)
    vector("output_norm.weight", hidden, norm=True)
    matrix("output.weight", vocab, hidden)
    for i in range(n_layers):
        p = f"blk.{i}."
        vector(p + "attn_norm.weight", hidden, norm=True, gain=norm_gain)
        matrix(p + "attn_q.weight", n_heads * head_dim, hidden)
        matrix(p + "attn_k.weight", n_kv_heads * head_dim, hidden)
        matrix(p + "attn_v.weight", n_kv_heads * head_dim, hidden)
        if arch == "qwen2":
            vector(p + "attn_q.bias", n_heads * head_dim)
            vector(p + "attn_k.bias", n_kv_heads * head_dim)
            vector(p + "attn_v.bias", n_kv_heads * head_dim)
        matrix(p + "attn_output.weight", hidden, n_heads * head_dim)
        vector(p + "ffn_norm.weight", hidden, norm=True, gain=norm_gain)
        matrix(p + "ffn_gate.weight", ffn, hidden)
        matrix(p + "ffn_up.weight", ffn, hidden)
        matrix(p + "ffn_down.weight", hidden, ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)
