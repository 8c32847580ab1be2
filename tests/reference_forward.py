"""An independent NumPy float64 forward pass of a Qwen2 / Llama GGUF model.

Weights come from gguf-py (``gguf.GGUFReader`` + ``gguf.quants.dequantize``); no ferrite code is
used, so agreement with ferrite checks ferrite's dequantization, matmuls, RoPE, attention and
cache handling against the math as written here:

    x = embed(tokens)
    for each layer:
        h = x + Wo · attn(rope(Wq·n + bq), rope(Wk·n + bk), Wv·n + bv),  n = rmsnorm(x) * g_attn
        x = h + W_down · (silu(W_gate·m) * W_up·m),                       m = rmsnorm(h) * g_ffn
    logits = W_out · (rmsnorm(x) * g_out)        (W_out = token_embd when output.weight is absent)

RoPE pairing follows the architecture's GGUF layout (the same choice llama.cpp makes):
qwen2 rotates the two halves of each head (NeoX), llama rotates adjacent pairs.

Usage::

    ref = ReferenceModel(path)
    logits = ref.forward([9707, 11, 1879])   # float64 [3, vocab]
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize


class ReferenceModel:
    def __init__(
        self,
        path,
        cache_weights: bool = True,
        rope_style: str | None = None,
        activation_quant: str | None = None,
        kv_dtype: str | None = None,
    ):
        """``activation_quant="Q8_0"`` rounds every matmul input through gguf-py's Q8_0
        quantizer first: the float64 model of what an 8-bit-activation matmul does, used to size
        the error that rounding alone causes. ``kv_dtype="float16"`` rounds every key (after
        RoPE) and value to NumPy's float16 before attention reads them: what a KV cache of that
        type stores."""
        self.activation_quant = activation_quant
        self.kv_dtype = kv_dtype
        # The largest |x| any projection has multiplied so far (tests of reduced precisions
        # check that their inputs really reach the range they claim to cover).
        self.largest_input = 0.0
        self.reader = GGUFReader(str(path))
        self.tensors = {t.name: t for t in self.reader.tensors}
        self._cache: dict[str, np.ndarray] = {}
        self.cache_weights = cache_weights
        f = self.reader.fields
        arch = f["general.architecture"].contents()
        self.arch = arch

        def get(key, default=None):
            return f[key].contents() if key in f else default

        self.n_layers = int(get(f"{arch}.block_count"))
        self.hidden = int(get(f"{arch}.embedding_length"))
        self.n_heads = int(get(f"{arch}.attention.head_count"))
        self.n_kv_heads = int(get(f"{arch}.attention.head_count_kv", self.n_heads))
        self.head_dim = int(get(f"{arch}.attention.key_length", self.hidden // self.n_heads))
        self.eps = float(get(f"{arch}.attention.layer_norm_rms_epsilon"))
        self.freq_base = float(get(f"{arch}.rope.freq_base", 10000.0))
        scaling = get(f"{arch}.rope.scaling.type", "none")
        self.rope_scale = float(get(f"{arch}.rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
        self.rope_style = rope_style or ("adjacent" if arch == "llama" else "neox")
        self.vocab = int(self.tensors["token_embd.weight"].shape[1])

    # -- weights -------------------------------------------------------------------------------
    def weight(self, name: str) -> np.ndarray:
        """Dequantized tensor in numpy order (``[n_rows, n_cols]`` for a matrix), float32."""
        if name in self._cache:
            return self._cache[name]
        t = self.tensors[name]
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])
        if self.cache_weights:
            self._cache[name] = w
        return w

    def has(self, name: str) -> bool:
        return name in self.tensors

    def embed_rows(self, tokens) -> np.ndarray:
        t = self.tensors["token_embd.weight"]
        rows = t.data[np.asarray(tokens)]  # raw block bytes of just these rows
        return np.asarray(dequantize(rows, t.tensor_type), dtype=np.float64).reshape(len(tokens), self.hidden)

    # -- math ----------------------------------------------------------------------------------
    def rms_norm(self, x: np.ndarray, name: str) -> np.ndarray:
        g = self.weight(name).astype(np.float64)
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * g

    def linear(self, x: np.ndarray, name: str, bias: str | None = None) -> np.ndarray:
        w = self.weight(name)
        self.largest_input = max(self.largest_input, float(np.abs(x).max(initial=0.0)))
        if self.activation_quant is not None:
            qt = GGMLQuantizationType[self.activation_quant]
            x = np.asarray(dequantize(quantize(x.astype(np.float32), qt), qt), dtype=np.float64)
        # Widen to float64 a slice of rows at a time: the LM head alone would be 1 GiB at once.
        step = max(1, (1 << 22) // w.shape[1])
        y = np.concatenate([x @ w[i : i + step].astype(np.float64).T for i in range(0, w.shape[0], step)], axis=1)
        if bias is not None and self.has(bias):
            y = y + self.weight(bias).astype(np.float64)
        return y

    def rope(self, x: np.ndarray, positions: np.ndarray, n_heads: int) -> np.ndarray:
        """x: [n, n_heads*head_dim] -> rotated copy."""
        hd = self.head_dim
        half = hd // 2
        inv_freq = self.freq_base ** (-2.0 * np.arange(half) / hd)
        ang = (positions[:, None] / self.rope_scale) * inv_freq[None, :]  # [n, half]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x = x.reshape(len(positions), n_heads, hd)
        if self.rope_style == "neox":
            a, b = x[..., :half], x[..., half:]
            out = np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
        elif self.rope_style == "adjacent":
            a, b = x[..., 0::2], x[..., 1::2]
            out = np.empty_like(x)
            out[..., 0::2] = a * cos - b * sin
            out[..., 1::2] = a * sin + b * cos
        else:
            raise ValueError(f"unknown rope style {self.rope_style!r}")
        return out.reshape(len(positions), n_heads * hd)

    def attention(self, q, k, v) -> np.ndarray:
        n, hd = q.shape[0], self.head_dim
        group = self.n_heads // self.n_kv_heads
        q = q.reshape(n, self.n_heads, hd).transpose(1, 0, 2)  # [h, n, hd]
        k = np.repeat(k.reshape(n, self.n_kv_heads, hd).transpose(1, 0, 2), group, axis=0)
        v = np.repeat(v.reshape(n, self.n_kv_heads, hd).transpose(1, 0, 2), group, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd)  # [h, n, n]
        scores = np.where(np.tril(np.ones((n, n), dtype=bool))[None], scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        return (scores @ v).transpose(1, 0, 2).reshape(n, self.n_heads * hd)

    def hidden_states(self, tokens) -> np.ndarray:
        """Final hidden state (before output norm) of a fresh sequence, float64 [n, hidden]."""
        tokens = [int(t) for t in tokens]
        positions = np.arange(len(tokens), dtype=np.float64)
        x = self.embed_rows(tokens)
        for i in range(self.n_layers):
            p = f"blk.{i}."
            n = self.rms_norm(x, p + "attn_norm.weight")
            q = self.rope(self.linear(n, p + "attn_q.weight", p + "attn_q.bias"), positions, self.n_heads)
            k = self.rope(self.linear(n, p + "attn_k.weight", p + "attn_k.bias"), positions, self.n_kv_heads)
            v = self.linear(n, p + "attn_v.weight", p + "attn_v.bias")
            if self.kv_dtype is not None:
                k = k.astype(self.kv_dtype).astype(np.float64)
                v = v.astype(self.kv_dtype).astype(np.float64)
            h = x + self.linear(self.attention(q, k, v), p + "attn_output.weight")
            m = self.rms_norm(h, p + "ffn_norm.weight")
            gate = self.linear(m, p + "ffn_gate.weight")
            up = self.linear(m, p + "ffn_up.weight")
            x = h + self.linear(gate / (1.0 + np.exp(-gate)) * up, p + "ffn_down.weight")
        return x

    def forward(self, tokens) -> np.ndarray:
        """Logits of a fresh sequence, float64 [len(tokens), vocab]."""
        x = self.rms_norm(self.hidden_states(tokens), "output_norm.weight")
        head = "output.weight" if self.has("output.weight") else "token_embd.weight"
        return self.linear(x, head)
