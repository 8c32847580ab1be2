"""The decode path's f16 GEMM of 1-16 rows (gemm_f16_rows.cu) against NumPy and cuBLAS.

``ferrite._ferrite._cuda_gemm_f16`` runs ``alpha * w @ x.T`` (plus a start, the residual add) on
f16 bits as the cuBLAS path poses it, on ferrite's kernel (``path="rows"``) or on cuBLAS. The
reference is the float64 product of the same f16 values: both must land within float32
summation's error of it, which any misplaced column, row or x row would exceed by orders of
magnitude. The shapes are the real model's and a 7B's decode projections (stacked q/k/v,
gate/up, the long-k ffn_down), ragged row counts (the last 16-row tile part empty), every count
of x rows the two kernel variants take (1-8, 9-16), and the shortest k (one 32-column chunk).
"""

from __future__ import annotations

import numpy as np
import pytest

import ferrite

HAS_CUDA = ferrite.cuda_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]

# (weight rows m, columns k, x rows n)
SHAPES = [
    (1152, 896, 8),  # 0.5B q/k/v stacked, 8 sequences
    (9728, 896, 8),  # 0.5B gate/up stacked
    (896, 4864, 8),  # 0.5B ffn_down: the long k, dealt to 16 warps
    (896, 896, 5),
    (896, 896, 16),
    (4608, 3584, 12),  # 7B q/k/v stacked
    (37, 64, 1),  # ragged: one partial tile
    (100, 32, 9),  # one chunk of k, ragged, the 16-row variant
    (16, 2048, 7),
]
# float32 sums of the exact f16 products: well inside this share of sum(|w x|); a misplaced
# operand moves the result by the order of the sum itself.
BOUND = 2.0**-14


def f16(rng, shape, scale):
    return (rng.standard_normal(shape) * scale).astype(np.float16)


def check(got, want, magnitude, what):
    err = np.abs(got.astype(np.float64) - want)
    worst = float((err / (magnitude + 1e-30)).max())
    assert np.isfinite(got).all(), what
    assert worst <= BOUND, (what, worst)
    return worst


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_rows_kernel_matches_the_float64_product_and_cublas(m, k, n):
    rng = np.random.default_rng(m * 7 + k * 3 + n)
    # The weights' f16 copies are scaled into range (~1e3), x holds activations times a scale:
    # values of both signs and mixed magnitudes, as the model's are.
    w, x = f16(rng, (m, k), 300.0), f16(rng, (n, k), 4.0)
    alpha = 1.0 / 1024.0
    want = alpha * (w.astype(np.float64) @ x.astype(np.float64).T).T
    magnitude = alpha * (np.abs(w.astype(np.float64)) @ np.abs(x.astype(np.float64)).T).T
    got_rows = ferrite._ferrite._cuda_gemm_f16(w.view(np.uint16), x.view(np.uint16), alpha=alpha, path="rows")
    got_blas = ferrite._ferrite._cuda_gemm_f16(w.view(np.uint16), x.view(np.uint16), alpha=alpha, path="cublas")
    assert got_rows.shape == (n, m)
    check(got_rows, want, magnitude, "rows")
    check(got_blas, want, magnitude, "cublas")


@pytest.mark.parametrize("m,k,n", [(896, 4864, 8), (37, 64, 13)])
def test_rows_kernel_adds_onto_the_residual_stream(m, k, n):
    """accumulate_onto: out = start + alpha * w x, as cuBLAS's beta = 1 gives, every value
    written exactly once (a start of large values shows a dropped or doubled add)."""
    rng = np.random.default_rng(k + n)
    w, x = f16(rng, (m, k), 1.0), f16(rng, (n, k), 1.0)
    start = (rng.standard_normal((n, m)) * 50.0).astype(np.float32)
    alpha = 0.375
    product = alpha * (w.astype(np.float64) @ x.astype(np.float64).T).T
    magnitude = alpha * (np.abs(w.astype(np.float64)) @ np.abs(x.astype(np.float64)).T).T + np.abs(start) * 2.0**-10
    got = ferrite._ferrite._cuda_gemm_f16(w.view(np.uint16), x.view(np.uint16), alpha=alpha, accumulate_onto=start, path="rows")
    check(got, start.astype(np.float64) + product, magnitude, "accumulate")
    blas = ferrite._ferrite._cuda_gemm_f16(w.view(np.uint16), x.view(np.uint16), alpha=alpha, accumulate_onto=start, path="cublas")
    check(blas, start.astype(np.float64) + product, magnitude, "cublas accumulate")


@pytest.mark.parametrize("m,k,n", [(64, 48, 4), (64, 64, 17)])
def test_rows_kernel_refuses_shapes_it_does_not_take(m, k, n):
    """k not a multiple of 32, or more than 16 rows of x: the model's path falls back to cuBLAS
    for these; the hook, asked for the kernel, says why instead."""
    rng = np.random.default_rng(0)
    w, x = f16(rng, (m, k), 1.0), f16(rng, (n, k), 1.0)
    with pytest.raises(ferrite.FerriteError, match="gemm_f16_rows does not take"):
        ferrite._ferrite._cuda_gemm_f16(w.view(np.uint16), x.view(np.uint16), path="rows")
    got = ferrite._ferrite._cuda_gemm_f16(w.view(np.uint16), x.view(np.uint16), path="cublas")
    want = (w.astype(np.float64) @ x.astype(np.float64).T).T
    check(got, want, (np.abs(w.astype(np.float64)) @ np.abs(x.astype(np.float64)).T).T, "cublas fallback shape")



@pytest.mark.parametrize("m,k,n,m_next", [(896, 4864, 8, 1152), (896, 896, 5, 9728), (896, 512, 16, 512), (256, 512, 13, 512), (96, 64, 16, 64), (1024, 256, 11, 256)])
def test_rows_kernel_moves_the_norm_to_the_producer_and_the_consumer(m, k, n, m_next):
    """The norm around the kernel (matmul.rs, NormSource): a producer that adds onto the residual
    rows also writes them as f16 times 1/16 (the bits NumPy's rounding gives) and their sums of
    squares; a consumer multiplies its sums by each row's 1 / sqrt(mean(x^2) + eps) from those
    sums, as a norm launch before it would (float64 reference from the producer's x). Rows of
    x of very different sizes (a row's scale is what 1 / rms undoes), 56 sums a row at 5, 16
    and 8 rows (the consumer's copy of them in shared memory, two a lane), 64 (read from global
    memory), and rows of several warps each."""
    rng = np.random.default_rng(m + k + n)
    w, x = f16(rng, (m, k), 1.0), f16(rng, (n, k), 1.0)
    start = (rng.standard_normal((n, m)) * np.geomspace(0.01, 300.0, n)[:, None]).astype(np.float32)
    w_next = f16(rng, (m_next, m), 300.0)
    alpha, alpha_next, eps = 0.25, 1.0 / 4096.0, 1e-6
    x_new, src, out = ferrite._ferrite._cuda_gemm_f16_norm(w.view(np.uint16), x.view(np.uint16), start, alpha, w_next.view(np.uint16), alpha_next, eps)
    product = alpha * (w.astype(np.float64) @ x.astype(np.float64).T).T
    magnitude = alpha * (np.abs(w.astype(np.float64)) @ np.abs(x.astype(np.float64)).T).T + np.abs(start) * 2.0**-10
    check(x_new, start.astype(np.float64) + product, magnitude, "producer")
    assert np.array_equal(src, (x_new / np.float32(16.0)).astype(np.float16).view(np.uint16)), "source bits"
    inv = 1.0 / np.sqrt(np.mean(x_new.astype(np.float64) ** 2, axis=1) + eps)
    h = src.view(np.float16).astype(np.float64)
    want = alpha_next * (w_next.astype(np.float64) @ h.T).T * inv[:, None]
    scale = alpha_next * (np.abs(w_next.astype(np.float64)) @ np.abs(h).T).T * inv[:, None]
    check(out, want, scale, "consumer")
