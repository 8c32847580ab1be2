"""The batch path's row kernels on the GPU, op by op, against NumPy.

RMSNorm (`rms_norm`, `rms_norm_f16`) and SwiGLU (`swiglu`, `swiglu_f16`) run alone through
``ferrite._ferrite._cuda_row_op``, in both forms the backend launches: float32 rows, and the f16
bits (value times a scale) that the cuBLAS projections read. The shapes cover the real model's
and a 7B's widths, rows of the vector path (widths a multiple of 4) up to and past what a thread
keeps in registers (4,096), and widths that take the element-by-element path.

References: RMSNorm as the CPU defines it (squares summed in float64, the scale rounded to
float32 once, then two float32 products), which the kernel must match to 2 ulps (the order of
the float64 additions may move the scale by one); SwiGLU in float64, which float32 with CUDA's
expf must match to a few ulps; the f16 form bit for bit against the float32 form rounded.
"""

from __future__ import annotations

import numpy as np
import pytest

import ferrite

HAS_CUDA = ferrite.cuda_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]

# (rows, width): 0.5B hidden, 7B hidden, past the registers' 4,096, not a multiple of 4.
SHAPES = [(1, 32), (3, 896), (64, 3584), (2, 4100), (5, 4097), (2, 18944), (7, 6)]


def f16_bits(values: np.ndarray, scale: float) -> np.ndarray:
    """The bits the kernels write: f16(value * scale), finite overflows clamped to +-65504."""
    v = values.astype(np.float32) * np.float32(scale)
    finite = np.isfinite(v)
    v = np.where(finite, np.clip(v, -65504.0, 65504.0), v).astype(np.float32)
    return v.astype(np.float16).view(np.uint16)


@pytest.mark.parametrize("rows,width", SHAPES)
def test_rms_norm_kernels_match_the_cpu_definition(rows, width):
    rng = np.random.default_rng(rows * 100_003 + width)
    # Hidden states reach the thousands in Qwen2; a few rows of small values too.
    x = (rng.standard_normal((rows, width)) * rng.choice([1e-3, 1.0, 3e3], size=(rows, 1))).astype(np.float32)
    w = rng.uniform(-2.0, 2.0, width).astype(np.float32)
    eps = 1e-6
    got, bits, scale = ferrite._ferrite._cuda_row_op("rms_norm", x, w, eps=eps)

    x64 = x.astype(np.float64)
    inv = (1.0 / np.sqrt((x64 * x64).sum(axis=1) / width + np.float64(np.float32(eps)))).astype(np.float32)
    want = (x * inv[:, None]) * w
    np.testing.assert_array_max_ulp(got, want, maxulp=2)
    np.testing.assert_array_equal(bits, f16_bits(got, scale))


@pytest.mark.parametrize("rows,width", SHAPES + [(64, 4864), (3, 4099)])
def test_swiglu_kernels_match_float64(rows, width):
    rng = np.random.default_rng(rows * 7919 + width)
    gate = (rng.standard_normal((rows, width)) * 4.0).astype(np.float32)
    up = rng.standard_normal((rows, width)).astype(np.float32)
    got, bits, scale = ferrite._ferrite._cuda_row_op("swiglu", gate, up)

    g = gate.astype(np.float64)
    want = g / (1.0 + np.exp(-g)) * up.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-37)
    np.testing.assert_array_equal(bits, f16_bits(got, scale))


@pytest.mark.parametrize("rows,width", [(1, 4864), (8, 4864), (5, 4099), (3, 130)])
def test_swiglu_f16_reads_a_stacked_gate_up_output_as_separate_rows(rows, width):
    # The cuBLAS path's MLP feeds swiglu_f16 the stacked gate/up GEMM's output rows [gate | up]
    # (stride twice the width) instead of splitting them first: the same bits as separate rows.
    rng = np.random.default_rng(rows * 31 + width)
    gate = (rng.standard_normal((rows, width)) * 4.0).astype(np.float32)
    up = rng.standard_normal((rows, width)).astype(np.float32)
    got, bits, scale = ferrite._ferrite._cuda_row_op("swiglu_stacked", gate, up)
    _, separate_bits, _ = ferrite._ferrite._cuda_row_op("swiglu", gate, up)
    np.testing.assert_array_equal(bits, separate_bits)
    np.testing.assert_array_equal(bits, f16_bits(got, scale))


def test_row_op_rejects_bad_shapes():
    x = np.ones((2, 8), np.float32)
    with pytest.raises(ValueError, match="op"):
        ferrite._ferrite._cuda_row_op("gelu", x, x)
    with pytest.raises(ValueError, match="need 8"):
        ferrite._ferrite._cuda_row_op("rms_norm", x, np.ones(7, np.float32))
    with pytest.raises(ValueError, match="need 16"):
        ferrite._ferrite._cuda_row_op("swiglu", x, np.ones((2, 7), np.float32))
