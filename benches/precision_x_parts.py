"""How precisely must x be kept in a decode matrix-vector product? (CPU only, no GPU.)

    python benches/precision_x_parts.py [MODEL.gguf]

Real weights of the test model (dequantized, float64) times a heavy-tailed activation vector (a
Gaussian bulk scaled by a log-normal, four outliers 200x larger, as hidden states and SwiGLU
outputs have), with x replaced by: three or two bf16 parts (matvec_mma.cu's exact split and its
two-part variant), one int8 part per 32 values with a float scale (llama.cpp's q8_1), two or three
such int8 parts (each quantizing the previous remainder), and f16 (the cuBLAS path of larger
batches). Prints the normalized squared error sum((W x_hat - W x)^2) / sum((W x)^2) of each,
the measure tests/test_cuda_matvec.py bounds by 1e-9.
"""

import sys

import numpy as np

import ferrite

path = sys.argv[1] if len(sys.argv) > 1 else ferrite.fetch_test_model()
g = ferrite.GgufFile(path)
rng = np.random.default_rng(0)


def bf16(v: np.ndarray) -> np.ndarray:
    """v rounded to bf16 (nearest even), as float64."""
    b = v.astype(np.float32).view(np.uint32)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return b.view(np.float32).astype(np.float64)


def bf16_parts(x: np.ndarray, k: int) -> np.ndarray:
    """The sum of k bf16 parts of x, each the rounded remainder of the ones before."""
    out, r = np.zeros_like(x), x.copy()
    for _ in range(k):
        p = bf16(r)
        out += p
        r = r - p
    return out


def int8_parts(x: np.ndarray, k: int, blk: int = 32) -> np.ndarray:
    """The sum of k int8 parts of x per blk values, each with a float32 scale (amax / 127)."""
    xb = x.reshape(-1, blk)
    out, r = np.zeros_like(xb), xb.copy()
    for _ in range(k):
        s = np.abs(r).max(axis=1, keepdims=True) / 127.0
        s[s == 0] = 1.0
        s = s.astype(np.float32).astype(np.float64)
        q = np.clip(np.rint(r / s), -127, 127)
        out += q * s
        r = r - q * s
    return out.reshape(x.shape)


def nmse(y: np.ndarray, ref: np.ndarray) -> float:
    return float(((y - ref) ** 2).sum() / (ref**2).sum())


print("NMSE of W @ x_hat against W @ x (float64), per representation of x")
for name in ["blk.3.ffn_down.weight", "blk.3.ffn_gate.weight", "blk.3.attn_q.weight"]:
    W = np.asarray(g.tensor(name), dtype=np.float64)
    W = W.reshape(-1, W.shape[-1])
    n = W.shape[1]
    # activations: Gaussian bulk with a few large outliers (as in the hidden states and SwiGLU outputs)
    x = (rng.standard_normal(n) * np.exp(rng.standard_normal(n))).astype(np.float32).astype(np.float64)
    x[rng.choice(n, 4, replace=False)] *= 200.0
    ref = W @ x
    row = [f"{name} {W.shape}"]
    for label, xh in [("bf16x3", bf16_parts(x, 3)), ("bf16x2", bf16_parts(x, 2)), ("int8x1 (q8_1)", int8_parts(x, 1)),
                      ("int8x2", int8_parts(x, 2)), ("int8x3", int8_parts(x, 3)), ("f16", x.astype(np.float16).astype(np.float64))]:
        row.append(f"{label} {nmse(W @ xh, ref):.1e}")
    print(" | ".join(row))


# The same on the model's own activations: every projection input of the float64 reference forward
# (tests/reference_forward.py) over a short prompt, each row of x against its real weights. Three
# int8 parts per 256 values is matvec_mma.cu's int8 path at one or two rows (Q4_K; widths that are
# multiples of 256); two, its path from three rows (tests/test_cuda_matvec.py's as_int8_two_parts).
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "tests"))
from reference_forward import ReferenceModel  # noqa: E402

ref_model = ReferenceModel(path)
captured: list[tuple[str, np.ndarray, np.ndarray]] = []
plain_linear = ReferenceModel.linear


def recording_linear(self, x, name, bias=None):
    if name.startswith("blk."):
        captured.append((name, np.asarray(x, dtype=np.float64), self.weight(name).astype(np.float64)))
    return plain_linear(self, x, name, bias)


ReferenceModel.linear = recording_linear
tokens = ferrite.Tokenizer.from_gguf(path).encode("def quicksort(xs):\n    # sort a list of numbers in place\n")
ref_model.hidden_states(tokens)
print(f"\nThe reference forward's own projection inputs ({len(tokens)} tokens, every layer): worst NMSE per projection")
worst: dict[str, dict[str, float]] = {}
for name, x, W in captured:
    kind = name.split(".", 2)[2]
    ref = x @ W.T
    reps = [("int8x3/32", int8_parts(x, 3)), ("bf16x3", bf16_parts(x, 3)), ("f16", x.astype(np.float16).astype(np.float64))]
    if x.shape[1] % 256 == 0:  # the K-quants' widths (896 is not, 4864 is)
        reps.insert(0, ("int8x3/256", int8_parts(x, 3, 256)))
    for label, xh in reps:
        err = ((xh @ W.T - ref) ** 2).sum(axis=1) / (ref**2).sum(axis=1)
        worst.setdefault(kind, {})[label] = max(worst.get(kind, {}).get(label, 0.0), float(err.max()))
for kind, row in worst.items():
    print(f"{kind:22s} " + " | ".join(f"{label} {v:.1e}" for label, v in row.items()))
