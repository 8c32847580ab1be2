"""The CUDA matrix-vector product (decode's projections) against the CPU, op by op.

Every type the GPU decodes, 1..8 rows of activations, odd row counts and widths that are not a
multiple of a tile, through the backend's own launch code (``ferrite._ferrite._cuda_matvec``):
the tensor-core kernels on repacked tiles (Q5_0, Q8_0, Q4_K, Q6_K: the "tiled" path) and the
generic kernels on the file's blocks (every type, the "generic" path). The reference is the
CPU's exact path in float64: the CPU's dequantized weights (bit-identical to gguf-py, see
test_dequant.py) times x. The bound is on the normalized mean squared error per x row, as
llama.cpp's test-backend-ops bounds its ops: sum((y - ref)^2) / sum(ref^2) <= 1e-9. float32
summation over these widths gives about 1e-13; one wrong weight in a row gives about 1e-4.

The output buffer is poisoned and one row longer than the result, so an output the kernel
never writes and a write past the last row both fail. The repacked weights' row readers (the
prefill path and the embedding gather) must return the CPU decoder's values bit for bit.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import ferrite
from block_layouts import F16_SCALE_FIELDS, set_iq1m_scale

HAS_CUDA = ferrite.cuda_available()
cuda = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")

TYPES = {name: (type_id, block_elems, block_bytes) for name, type_id, block_elems, block_bytes in ferrite.ggml_types()}
TILED = ("Q5_0", "Q8_0", "Q4_K", "Q6_K")
# Types the GPU computes with: the CPU's decoders (F64, the integer types, Q8_1, Q8_K, Q1_0
# have none on either device).
MATRIX_TYPES = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS",
    "TQ1_0", "TQ2_0", "MXFP4", "NVFP4",
]
NMSE_BOUND = 1e-9
# Against x itself where the kernels round it (the int8 path's two parts from 3 rows: about 1e-9
# for Gaussian x, 2e-8 for a 256-column block dominated by one outlier; f16's rounding, the
# quantized GEMM's, about 1e-8).
ROUNDED_X_BOUND = 1e-6
POISON = 0x7FC0DEAD


def report(row: dict) -> None:
    path = os.environ.get("FERRITE_GPU_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def random_blocks(name: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random valid blocks: random bytes, f16 scales set to finite values of a realistic range
    (2^-10 .. 2^-4, both signs), float types to finite values."""
    _, block_elems, block_bytes = TYPES[name]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    scales = lambda: (rng.choice([-1.0, 1.0], n_blocks) * 2.0 ** rng.uniform(-10, -4, n_blocks)).astype(np.float16).view(np.uint16)
    if name in ("F32", "F16", "BF16"):
        v = rng.standard_normal(n_blocks).astype(np.float32)
        raw = {"F32": v.view(np.uint8), "F16": v.astype(np.float16).view(np.uint8),
               "BF16": (v.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)}[name].reshape(n_blocks, block_bytes).copy()
    elif name == "IQ1_M":
        set_iq1m_scale(raw, scales())
    elif name == "MXFP4":
        raw[:, 0] = rng.integers(118, 130, n_blocks)  # E8M0 scale 2^-10 .. 2^1: finite products
    for off in F16_SCALE_FIELDS.get(name, ()):
        raw[:, off : off + 2] = scales().view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def width_for(name: str, multiple: int) -> int:
    """A row width of `multiple` 32-column groups that is a whole number of blocks."""
    block_elems = TYPES[name][1]
    step = max(block_elems, 32)
    return -(-multiple * 32 // step) * step


def as_int8_two_parts(x: np.ndarray) -> np.ndarray:
    """x as the int8 path keeps it from 3 rows (matvec_mma.cu's quantize_job_s8), in float64:
    per row and 256 columns, q0 = rint(x * 127 / max|x|), then the remainder's q1 at a step 254
    times finer, both within +-127, all in float32 as the kernel computes them. Against float64
    with x so rounded the kernel's only error left is float32 summation."""
    x = np.asarray(x, np.float32)
    n, cols = x.shape
    r = np.pad(x, ((0, 0), (0, -cols % 256))).reshape(n, -1, 256)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        amax = np.abs(r).max(axis=2, keepdims=True)
        scale = amax / np.float32(127)
        inv = np.where(amax > 0, np.minimum(np.float32(127) / amax, np.float32(3.4028234e38)), np.float32(0))
        kept = np.zeros(r.shape, np.float64)
        for part in range(2):
            if part == 1:
                scale, inv = scale * np.float32(1 / 254), np.minimum(inv * np.float32(254), np.float32(3.4028234e38))
            q = np.clip(np.rint(r * inv), -127, 127)
            kept += q * scale.astype(np.float64)
            r = (r - q * scale.astype(np.float64)).astype(np.float32)  # fmaf: one rounding
    return kept.reshape(n, -1)[:, :cols]


def as_kernel_input(x: np.ndarray, name: str, path: str) -> np.ndarray:
    """x (float64) as the matrix-vector kernels multiply it: exactly (one or two rows, or two
    bf16 parts: within float32 summation of exact), or as_int8_two_parts on a tiled type's int8
    path from 3 rows."""
    if path == "tiled" and name in TILED and 3 <= x.shape[0] <= ferrite._ferrite._cuda_int8_max_rows(name):
        return as_int8_two_parts(x)
    return x.astype(np.float64)


def nmse(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Normalized squared error of each row."""
    return ((y.astype(np.float64) - ref) ** 2).sum(axis=-1) / np.maximum((ref**2).sum(axis=-1), 1e-300)


def check_matvec(name: str, n_rows: int, n_cols: int, n_xs, path: str, seed: int, with_bias: bool = False) -> float:
    rng = np.random.default_rng(seed)
    block_elems = TYPES[name][1]
    raw = random_blocks(name, n_rows * n_cols // block_elems, rng)
    w = ferrite.dequantize(raw, name, (n_rows, n_cols)).astype(np.float64)  # the CPU's weights
    worst = 0.0
    for n_x in n_xs:
        x = rng.standard_normal((n_x, n_cols)).astype(np.float32)
        bias = rng.standard_normal(n_rows).astype(np.float32) if with_bias else None
        out = ferrite._ferrite._cuda_matvec(raw, name, n_rows, n_cols, x, bias, path=path, poison_bits=POISON)
        assert out.shape == (n_x + 1, n_rows)
        label = f"{name} {n_rows}x{n_cols} n_x={n_x} path={path}"
        assert (out[n_x].view(np.uint32) == POISON).all(), f"{label}: wrote past the last row"
        y = out[:n_x]
        assert not (y.view(np.uint32) == POISON).any(), f"{label}: {int((y.view(np.uint32) == POISON).sum())} outputs never written"
        ref = as_kernel_input(x, name, path) @ w.T + (bias.astype(np.float64) if with_bias else 0.0)
        err = nmse(y, ref)
        assert np.isfinite(y).all(), f"{label}: non-finite outputs"
        assert (err <= NMSE_BOUND).all(), f"{label}: NMSE per row {err} > {NMSE_BOUND}; max|diff| {np.abs(y - ref).max():.3e}"
        exact = nmse(y, x.astype(np.float64) @ w.T + (bias.astype(np.float64) if with_bias else 0.0))
        assert (exact <= ROUNDED_X_BOUND).all(), f"{label}: NMSE against unrounded x {exact.max():.3e}"
        worst = max(worst, float(err.max()))
    return worst


# ---------------------------------------------------------------- everywhere (CI included)


def test_int8_rows_are_known_for_the_tiled_types_only():
    """The rows the tests model as two int8 parts (as_kernel_input) come from the tile table."""
    for name in TILED:
        assert 2 <= ferrite._ferrite._cuda_int8_max_rows(name) <= 8
    with pytest.raises(ValueError, match="no tensor-core tiles"):
        ferrite._ferrite._cuda_int8_max_rows("Q4_0")
    with pytest.raises(ValueError, match="unknown ggml type"):
        ferrite._ferrite._cuda_int8_max_rows("Q9_9")


def test_bad_arguments_are_value_errors():
    raw = random_blocks("Q8_0", 4, np.random.default_rng(0))
    x = np.zeros((1, 32), np.float32)
    with pytest.raises(ValueError, match="path must be"):
        ferrite._ferrite._cuda_matvec(raw, "Q8_0", 4, 32, x, path="fast")
    # The grouped hook checks its arguments before it touches a device.
    with pytest.raises(ValueError, match="2 matrices and 1 row counts"):
        ferrite._ferrite._cuda_matvecs([raw, raw], "Q8_0", [4], 32, x)
    with pytest.raises(ValueError, match="exclusive"):
        ferrite._ferrite._cuda_matvecs([raw], "Q8_0", [4], 32, x, norm_weight=np.ones(32, np.float32), swiglu_up=x)
    with pytest.raises(ValueError, match="swiglu_up has shape"):
        ferrite._ferrite._cuda_matvecs([raw], "Q8_0", [4], 32, x, swiglu_up=np.zeros((2, 32), np.float32))


@pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour on machines without CUDA")
def test_without_cuda_the_hook_raises_cuda_error():
    raw = random_blocks("Q8_0", 4, np.random.default_rng(0))
    with pytest.raises(ferrite.CudaError, match="CUDA is not available"):
        ferrite._ferrite._cuda_matvec(raw, "Q8_0", 4, 32, np.zeros((1, 32), np.float32), path="tiled")


# ---------------------------------------------------------------- with a GPU


@cuda
@needs_gpu
@pytest.mark.parametrize("name", MATRIX_TYPES)
def test_every_type_one_to_eight_rows(name):
    """37 rows (a partial tile), a width of 5 or 9 32-column groups (not whole tiles) or three
    super-blocks, every n_x from 1 to 8, on each path the type has."""
    n_cols = width_for(name, 5 if TYPES[name][1] <= 32 else 3 * TYPES[name][1] // 32)
    paths = ("tiled", "generic") if name in TILED else ("generic",)
    for path in paths:
        worst = check_matvec(name, 37, n_cols, range(1, 9), path, seed=TYPES[name][0] * 31 + len(path))
        report({"kind": "matvec_op", "type": name, "path": path, "shape": [37, n_cols], "worst_nmse": worst})


@cuda
@needs_gpu
@pytest.mark.parametrize("name", TILED)
@pytest.mark.parametrize(
    "n_rows, groups",
    [
        (300, 65),     # 2080 columns: a partial last tile, a column split per tile
        (40000, 4),    # many tile rows, one column tile: no split, 8-warp blocks
        (17000, 64),   # 2048 columns, two splits: x staged in two phases for 8 rows
        (129, 576),    # 18432 columns: many splits of several tiles each
    ],
)
def test_tiled_shapes_splits_and_bias(name, n_rows, groups):
    n_cols = width_for(name, groups)
    worst = check_matvec(name, n_rows, n_cols, (1, 2, 3, 5, 8), "tiled", seed=n_rows + groups, with_bias=True)
    report({"kind": "matvec_op", "type": name, "path": "tiled", "shape": [n_rows, n_cols], "worst_nmse": worst})


@cuda
@needs_gpu
@pytest.mark.parametrize("name", TILED)
def test_every_launch_shape_gives_the_same_products(name):
    """The kernels are correct for any launch shape, not only the ones the planner picks:
    warps along the columns that do not divide the tiles or outnumber a phase's tiles, tile
    rows per block that leave warps idle, column splits of uneven length."""
    n_rows, n_cols = 50, width_for(name, 36 if TYPES[name][1] == 32 else 80)  # 9 or 10 column tiles
    plans = [(1, 1, 1), (1, 3, 1), (2, 3, 2), (1, 8, 3), (8, 1, 4), (3, 2, 5), (4, 2, 64)]
    try:
        for plan in plans:
            ferrite._ferrite._cuda_matvec_force_plan(*plan)
            check_matvec(name, n_rows, n_cols, (1, 3, 8), "tiled", seed=sum(plan), with_bias=True)
    finally:
        ferrite._ferrite._cuda_matvec_force_plan()


@cuda
@needs_gpu
@pytest.mark.parametrize("name", TILED)
def test_repacked_rows_and_embedding_are_the_cpu_values_bitwise(name):
    rng = np.random.default_rng(7)
    n_rows, n_cols = 45, width_for(name, 13 if TYPES[name][1] == 32 else 16)
    raw = random_blocks(name, n_rows * n_cols // TYPES[name][1], rng)
    cpu = ferrite.dequantize(raw, name, (n_rows, n_cols))
    tokens = [0, 44, 17, 3, 17, n_rows]  # the last id is past the table: a NaN row, no read past it
    rows, emb = ferrite._ferrite._cuda_weight_rows(raw, name, n_rows, n_cols, 5, 31, tokens, path="tiled")
    np.testing.assert_array_equal(rows.view(np.uint32), cpu[5:36].view(np.uint32), err_msg=f"{name} dequant_rows")
    np.testing.assert_array_equal(emb[:-1].view(np.uint32), cpu[tokens[:-1]].view(np.uint32), err_msg=f"{name} embed_rows")
    assert np.isnan(emb[-1]).all()


@cuda
@needs_gpu
@pytest.mark.parametrize("name, path", [(t, "tiled") for t in TILED] + [("Q5_0", "generic"), ("Q4_K", "generic")])
@pytest.mark.parametrize("n_rows, groups", [(37, 5), (129, 576)])  # one block row; many column splits
def test_accumulating_adds_the_products_to_what_the_output_holds(name, path, n_rows, groups):
    """The residual connection's add, fused into the projection: out = start + W x, every row
    written once (the split-K reduction adds the start once, not once per split)."""
    check_accumulate(name, n_rows, groups, (1, 3, 8), path, np.random.default_rng(n_rows * 7 + groups))


def check_accumulate(name: str, n_rows: int, groups: int, n_xs, path: str, rng: np.random.Generator) -> None:
    """out = start + W x for a random `start` (the residual add), against float64, nothing
    written past the last row (see test_accumulating_adds_the_products_to_what_the_output_holds)."""
    n_cols = width_for(name, groups)
    raw = random_blocks(name, n_rows * n_cols // TYPES[name][1], rng)
    w = ferrite.dequantize(raw, name, (n_rows, n_cols)).astype(np.float64)
    for n_x in n_xs:
        x = rng.standard_normal((n_x, n_cols)).astype(np.float32)
        start = (rng.standard_normal((n_x, n_rows)) * 4).astype(np.float32)
        out = ferrite._ferrite._cuda_matvec(raw, name, n_rows, n_cols, x, path=path, poison_bits=POISON, accumulate_onto=start)
        label = f"{name} {n_rows}x{n_cols} n_x={n_x} path={path}"
        assert (out[n_x].view(np.uint32) == POISON).all(), f"{label}: wrote past the last row"
        ref = start.astype(np.float64) + as_kernel_input(x, name, path) @ w.T
        err = nmse(out[:n_x], ref)
        assert (err <= NMSE_BOUND).all(), f"{label}: NMSE per row {err}; max|diff| {np.abs(out[:n_x] - ref).max():.3e}"


@cuda
@needs_gpu
@pytest.mark.parametrize("name", TILED)
def test_a_value_that_is_not_finite_reaches_its_rows_outputs_only(name):
    """A NaN or an infinity in x makes every output of its row non-finite, as in the float64
    reference, and leaves the other rows' outputs as they are. (The int8 path of Q4_K quantizes
    x per 256 columns: a NaN must not vanish into a scale, nor an infinity into a clamp.)"""
    rng = np.random.default_rng(11)
    n_rows, n_cols = 40, width_for(name, 24)
    raw = random_blocks(name, n_rows * n_cols // TYPES[name][1], rng)
    w = ferrite.dequantize(raw, name, (n_rows, n_cols)).astype(np.float64)
    # (rows of x, rows given a non-finite value): two rows with one NaN is the int8 path's case
    # of a neighbour sharing the mma with the NaN's row.
    for n_x, bad in ((1, 1), (2, 1), (2, 2), (8, 2)):
        x = rng.standard_normal((n_x, n_cols)).astype(np.float32)
        x[0, n_cols // 3] = np.nan
        if bad > 1:
            x[1, n_cols - 5] = np.inf
        out = ferrite._ferrite._cuda_matvec(raw, name, n_rows, n_cols, x, path="tiled", poison_bits=POISON)[:n_x]
        with np.errstate(invalid="ignore"):
            ref = as_kernel_input(x, name, "tiled") @ w.T
        label = f"{name} n_x={n_x} non-finite rows={bad}"
        # The poison is a NaN too: an output never written must not pass as a non-finite result.
        assert not (out.view(np.uint32) == POISON).any(), f"{label}: outputs never written"
        assert (~np.isfinite(out[:bad])).all(), f"{label}: a row with a NaN or inf in x has finite outputs"
        assert (~np.isfinite(ref[:bad])).all()
        if n_x > bad:
            err = nmse(out[bad:], ref[bad:])
            assert np.isfinite(out[bad:]).all() and (err <= NMSE_BOUND).all(), f"{label}: other rows disturbed: {err}"


@cuda
@needs_gpu
@pytest.mark.parametrize("name", TILED)
def test_activations_with_outliers(name):
    """x as a model's projections see it: a heavy-tailed bulk and a few values hundreds to ten
    thousand times larger (the int8 path's scale per 256 columns follows the largest value;
    benches/precision_x_parts.py puts its error near 1e-13 for such x)."""
    rng = np.random.default_rng(12)
    n_rows, n_cols = 64, width_for(name, 64)
    raw = random_blocks(name, n_rows * n_cols // TYPES[name][1], rng)
    w = ferrite.dequantize(raw, name, (n_rows, n_cols)).astype(np.float64)
    for n_x in (1, 2, 5):
        x = rng.standard_normal((n_x, n_cols)) * np.exp(rng.standard_normal((n_x, n_cols)))
        for r in range(n_x):
            x[r, rng.choice(n_cols, 4, replace=False)] *= 10.0 ** rng.uniform(2, 4, 4)
        x = x.astype(np.float32)
        out = ferrite._ferrite._cuda_matvec(raw, name, n_rows, n_cols, x, path="tiled", poison_bits=POISON)[:n_x]
        err = nmse(out, as_kernel_input(x, name, "tiled") @ w.T)
        assert (err <= NMSE_BOUND).all(), f"{name} n_x={n_x}: NMSE per row {err}"
        exact = nmse(out, x.astype(np.float64) @ w.T)
        assert (exact <= ROUNDED_X_BOUND).all(), f"{name} n_x={n_x}: NMSE against unrounded x {exact}"


@cuda
@needs_gpu
@pytest.mark.parametrize("name", TILED)
def test_x_at_the_ends_of_the_int8_range(name):
    """x whose 32-column blocks are constant, each +-its 256-column maximum: every int8 code of x
    is +-127, so x's 32-column sums reach +-4064, the ends of what the int8 path holds (Q4_K keeps
    them as two int8 digits for its mins, Q5_0 subtracts 16 times them)."""
    rng = np.random.default_rng(4064)
    n_rows, n_cols = 48, width_for(name, 24)
    raw = random_blocks(name, n_rows * n_cols // TYPES[name][1], rng)
    w = ferrite.dequantize(raw, name, (n_rows, n_cols)).astype(np.float64)
    signs = rng.choice([-1.0, 1.0], (3, n_cols // 32))
    signs[0], signs[1] = 1.0, -1.0  # all +max and all -max, then mixed
    scale = 2.0 ** rng.uniform(-3, 3, (3, 1))
    x = (np.repeat(signs, 32, axis=1) * scale).astype(np.float32)
    for rows in ([0], [1], [2, 0], x.shape[0] * [2]):
        xr = x[rows]
        out = ferrite._ferrite._cuda_matvec(raw, name, n_rows, n_cols, xr, path="tiled", poison_bits=POISON)[: len(rows)]
        err = nmse(out, as_kernel_input(xr, name, "tiled") @ w.T)
        assert (err <= NMSE_BOUND).all(), f"{name} x rows {rows}: NMSE per row {err}"


@cuda
@needs_gpu
def test_tiled_and_generic_agree_on_the_real_shapes():
    """The real model's q projection shape, 896 x 896, Q5_0, 1..8 rows: both paths are within
    the bound of the reference, so within twice the bound of each other."""
    for path in ("tiled", "generic"):
        check_matvec("Q5_0", 896, 896, (1, 4, 8), path, seed=896)


@cuda
@needs_gpu
def test_bad_shapes_are_errors_not_faults():
    raw = random_blocks("Q4_K", 2, np.random.default_rng(1))
    # 9 rows and more take the quantized GEMM on the tiled path, up to 512; the generic kernels
    # take at most 8.
    with pytest.raises(ferrite.CudaError, match="513 rows of x"):
        ferrite._ferrite._cuda_matvec(raw, "Q4_K", 2, 256, np.zeros((513, 256), np.float32), path="tiled")
    with pytest.raises(ferrite.CudaError, match="9 rows of x"):
        ferrite._ferrite._cuda_matvec(raw, "Q4_K", 2, 256, np.zeros((9, 256), np.float32), path="generic")
    with pytest.raises(ValueError, match="columns"):
        ferrite._ferrite._cuda_matvec(raw, "Q4_K", 2, 256, np.zeros((1, 255), np.float32), path="tiled")
    with pytest.raises(ferrite.QuantError):
        ferrite._ferrite._cuda_matvec(raw[:-1], "Q4_K", 2, 256, np.zeros((1, 256), np.float32), path="tiled")
    with pytest.raises(ferrite.CudaError, match="no tiled kernels"):
        ferrite._ferrite._cuda_matvec(random_blocks("Q4_0", 2, np.random.default_rng(1)), "Q4_0", 2, 32, np.zeros((1, 32), np.float32), path="tiled")


@cuda
@needs_gpu
@pytest.mark.parametrize("name", TILED)
@pytest.mark.parametrize("groups", [28, 152])  # 896 and 4864 columns: the real model's widths
@pytest.mark.parametrize("x_as", ["x", "rms_norm", "swiglu"])
def test_one_launch_over_several_matrices_and_fused_inputs(name, groups, x_as):
    """q/k/v (or gate/up) in one launch, each matrix with its own rows, bias and output, and x
    normalized (RMSNorm before the projections) or gated (SwiGLU before ffn_down) while it is
    loaded, against the float64 reference of the separate ops: x' = x / rms(x) * w or silu(x) *
    up, then W x' + bias for each matrix."""
    check_several_matrices(name, groups, x_as, (1, 2, 3, 4, 8))


def fused_input(x: np.ndarray, x_as: str, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """For x taken as `x_as` ("x", "rms_norm" or "swiglu"): the keyword arguments that make the
    kernels stage it so (a random norm weight or up rows, drawn from `rng`) and the float64 values
    they should then multiply, x / rms(x) * w or silu(x) * up."""
    kw, x64 = {}, x.astype(np.float64)
    if x_as == "rms_norm":
        norm_w = rng.standard_normal(x.shape[1]).astype(np.float32)
        kw = dict(norm_weight=norm_w, norm_eps=1e-6)
        x64 = x64 / np.sqrt((x64**2).mean(axis=1, keepdims=True) + 1e-6) * norm_w
    elif x_as == "swiglu":
        up = rng.standard_normal(x.shape).astype(np.float32)
        kw = dict(swiglu_up=up)
        x64 = x64 / (1.0 + np.exp(-x64)) * up
    return kw, x64


def check_several_matrices(name: str, groups: int, x_as: str, n_xs, shapes=(37, 16, 129)) -> None:
    """Matrices of `shapes` rows and `groups` 32-column groups in one launch (by default odd, one
    tile, many tiles: each segment's block rows and split-K partials), x taken as `x_as` says,
    against float64 (see test_one_launch_over_several_matrices_and_fused_inputs)."""
    rng = np.random.default_rng(groups * 31 + len(x_as) + sum(shapes))
    n_cols = width_for(name, groups)
    raws = [random_blocks(name, r * n_cols // TYPES[name][1], rng) for r in shapes]
    ws = [ferrite.dequantize(raw, name, (r, n_cols)).astype(np.float64) for raw, r in zip(raws, shapes)]
    for n_x in n_xs:
        x = (rng.standard_normal((n_x, n_cols)) * 3).astype(np.float32)
        biases = [rng.standard_normal(r).astype(np.float32) if i != 1 else None for i, r in enumerate(shapes)]
        kw, x64 = fused_input(x, x_as, rng)
        outs = ferrite._ferrite._cuda_matvecs(raws, name, list(shapes), n_cols, x, biases=biases, poison_bits=POISON, **kw)
        assert len(outs) == len(shapes)
        for i, (out, w, b) in enumerate(zip(outs, ws, biases)):
            label = f"{name} matrix {i} ({shapes[i]}x{n_cols}) n_x={n_x} x as {x_as}"
            assert out.shape == (n_x + 1, shapes[i])
            assert (out[n_x].view(np.uint32) == POISON).all(), f"{label}: wrote past the last row"
            ref = as_kernel_input(x64, name, "tiled") @ w.T + (b.astype(np.float64) if b is not None else 0.0)
            err = nmse(out[:n_x], ref)
            assert (err <= NMSE_BOUND).all(), f"{label}: NMSE per row {err}; max|diff| {np.abs(out[:n_x] - ref).max():.3e}"


@cuda
@needs_gpu
@pytest.mark.parametrize("types", [("Q4_K", "Q4_K", "Q6_K"), ("Q6_K", "Q4_K", "Q6_K"), ("Q6_K", "Q4_K")])
@pytest.mark.parametrize("x_as", ["x", "rms_norm"])
def test_two_types_share_one_launch(types, x_as):
    """A 7B's Q4_K_M q/k/v (Q4_K q and k; a Q6_K v on half its layers) in one launch of the pair
    kernels (matvec_mma.cu's "Two types, one launch"), whatever order the types come in: against
    the float64 reference of each matrix, and bit for bit what each matrix's own launch gives
    under the same forced plan (each block runs its own type's code on the same tile rows,
    columns and splits, so the sums are added in the same order). 1, 2, 3 and 4 rows of x (the
    pair kernels' rows); 3,584 columns (14 tiles, as the 7B) and 512 (two)."""
    rng = np.random.default_rng(3584 + len(types) + len(x_as))
    for n_cols, shapes in [(3584, (3584, 512, 512)[: len(types)]), (512, (37, 16, 129)[: len(types)])]:
        raws = [random_blocks(t, r * n_cols // TYPES[t][1], rng) for t, r in zip(types, shapes)]
        ws = [ferrite.dequantize(raw, t, (r, n_cols)).astype(np.float64) for raw, t, r in zip(raws, types, shapes)]
        for n_x in (1, 2, 3, 4):
            x = (rng.standard_normal((n_x, n_cols)) * 3).astype(np.float32)
            biases = [rng.standard_normal(r).astype(np.float32) if i != 1 else None for i, r in enumerate(shapes)]
            kw, x64 = fused_input(x, x_as, rng)
            launches = ferrite._ferrite._cuda_counters()["pair_matvecs"]
            outs = ferrite._ferrite._cuda_matvecs(raws, list(types), list(shapes), n_cols, x, biases=biases, poison_bits=POISON, **kw)
            assert ferrite._ferrite._cuda_counters()["pair_matvecs"] == launches + 1, "the pair kernels did not run"
            for i, (out, w, b, t) in enumerate(zip(outs, ws, biases, types)):
                label = f"{types} matrix {i} ({t}, {shapes[i]}x{n_cols}) n_x={n_x} x as {x_as}"
                assert (out[n_x].view(np.uint32) == POISON).all(), f"{label}: wrote past the last row"
                ref = as_kernel_input(x64, t, "tiled") @ w.T + (b.astype(np.float64) if b is not None else 0.0)
                err = nmse(out[:n_x], ref)
                assert (err <= NMSE_BOUND).all(), f"{label}: NMSE per row {err}; max|diff| {np.abs(out[:n_x] - ref).max():.3e}"
            # The same plan forced on the pair launch and on each matrix alone: the same bits (the
            # stream kernel off, which takes no plan and which a GPU of few SMs would give a matrix
            # alone).
            for plan in ((1, 8, 1), (2, 4, 2), (4, 1, 3)):
                ferrite._ferrite._cuda_matvec_force_plan(*plan)
                stream = ferrite._ferrite._cuda_matvec_stream("off")
                try:
                    pair = ferrite._ferrite._cuda_matvecs(raws, list(types), list(shapes), n_cols, x, biases=biases, poison_bits=POISON, **kw)
                    for i, t in enumerate(types):
                        alone = ferrite._ferrite._cuda_matvecs([raws[i]], t, [shapes[i]], n_cols, x, biases=[biases[i]], poison_bits=POISON, **kw)[0]
                        assert np.array_equal(pair[i].view(np.uint32), alone.view(np.uint32)), f"{types} matrix {i} ({t}) n_x={n_x} plan {plan}: not the bits of its own launch"
                finally:
                    ferrite._ferrite._cuda_matvec_force_plan()
                    ferrite._ferrite._cuda_matvec_stream(stream)


@cuda
@needs_gpu
@pytest.mark.parametrize("name", TILED)
def test_stream_kernel_gives_the_products_of_every_share(name):
    """matvec_mma.cu's stream kernel (one or two rows of x; each warp an equal share of the launch's
    tiles; a tile row shared by several warps added by the last of them to finish), forced onto
    every one- and two-row launch: matrices so small that most warps idle and a
    row's tiles spread over many warps; one column tile (whole rows a warp); shares of several
    rows, some written whole by one warp, with a partial last tile row; the 7B's width (3,584
    columns) at a few rows and at gate/up's 18,944; matrices in one launch with the RMSNorm or
    SwiGLU folded in, among them shares that cross from one matrix into the next; the residual
    add on shared and on whole rows. x wider than one phase (4,096 columns): a 7B's ffn_down
    (18,944 columns, five phases, the last narrower) and 4,864 columns (two), where a row's pieces
    come from several phases and a block stages each phase its warps' shares touch, with SwiGLU
    folded in and the residual add. One and two rows of x (matvec_mma_stream_1 and _2), three
    and four (matvec_mma_stream_4, two int8 parts) and five and eight (matvec_mma_stream_8, two
    column groups of mma, x in dynamic shared memory) for the types whose int8 path goes that far."""
    before = ferrite._ferrite._cuda_matvec_stream("always")
    rows_before = ferrite._ferrite._cuda_matvec_stream_rows(8)
    launches = ferrite._ferrite._cuda_counters()["stream_matvecs"]
    int8_rows = ferrite._ferrite._cuda_int8_max_rows(name)
    n_xs = (1, 2, 3, 4, 5, 8) if int8_rows >= 8 else (1, 2, 3, 4) if int8_rows >= 4 else (1, 2)
    try:
        for n_rows, groups in [(37, 9), (300, 65), (40000, 4), (40007, 28), (2100, 112), (18944, 112), (300, 592), (3584, 592), (5, 152)]:
            check_matvec(name, n_rows, width_for(name, groups), n_xs, "tiled", seed=n_rows + 7 * groups, with_bias=True)
        for groups in (28, 112, 152):
            for x_as in ("x", "rms_norm", "swiglu"):
                check_several_matrices(name, groups, x_as, n_xs)
        for x_as in ("x", "rms_norm"):
            check_several_matrices(name, 28, x_as, n_xs, shapes=(18944, 37, 18945))
        # 512 columns: few enough jobs that the RMSNorm folds into staging at every row count.
        check_several_matrices(name, 16, "rms_norm", n_xs)
        rng = np.random.default_rng(5)
        for n_rows, groups in [(300, 112), (40007, 28), (300, 592), (2100, 152)]:
            check_accumulate(name, n_rows, groups, n_xs, "tiled", rng)
        # The products above came from the stream kernel, not from the planned kernels; from three
        # rows too (matvec_mma_stream_4 and _8) where the type's int8 path goes that far.
        assert ferrite._ferrite._cuda_counters()["stream_matvecs"] > launches
        for n_x in n_xs[2:]:
            launches = ferrite._ferrite._cuda_counters()["stream_matvecs"]
            check_matvec(name, 300, width_for(name, 65), (n_x,), "tiled", seed=n_x)
            assert ferrite._ferrite._cuda_counters()["stream_matvecs"] > launches, f"{n_x} rows did not take the stream kernel"
    finally:
        ferrite._ferrite._cuda_matvec_stream(before)
        ferrite._ferrite._cuda_matvec_stream_rows(rows_before)


def test_stream_mode_hook_rejects_unknown_modes_and_returns_the_mode_before():
    with pytest.raises(ValueError, match="stream mode"):
        ferrite._ferrite._cuda_matvec_stream("sometimes")
    before = ferrite._ferrite._cuda_matvec_stream("large")
    try:
        assert ferrite._ferrite._cuda_matvec_stream("always") == "large"
    finally:
        ferrite._ferrite._cuda_matvec_stream(before)


def test_stream_rows_hook_takes_one_two_four_or_eight_and_returns_the_rows_before():
    for bad in (0, 3, 5, 16):
        with pytest.raises(ValueError, match="stream rows"):
            ferrite._ferrite._cuda_matvec_stream_rows(bad)
    before = ferrite._ferrite._cuda_matvec_stream_rows(2)
    try:
        assert ferrite._ferrite._cuda_matvec_stream_rows(1) == 2
        assert ferrite._ferrite._cuda_matvec_stream_rows(4) == 1
        assert ferrite._ferrite._cuda_matvec_stream_rows(8) == 4
        assert ferrite._ferrite._cuda_matvec_stream_rows(2) == 8
    finally:
        ferrite._ferrite._cuda_matvec_stream_rows(before)


# ---------------------------------------------------------------- many rows: the quantized GEMM


def as_gemm_input(x: np.ndarray) -> np.ndarray:
    """x as the quantized GEMM reads it (matmul_mma.cu): rounded to f16 after the backend's
    power-of-two scale (2^-8, undone on the products), in float64."""
    return (x * np.float32(1 / 256)).astype(np.float16).astype(np.float64) * 256


@cuda
@needs_gpu
@pytest.mark.parametrize("name", TILED)
@pytest.mark.parametrize(
    "n_rows, groups",
    [
        (37, 9),       # a partial tile row in one block; one or two phases of x
        (300, 65),     # a partial last column tile, columns split across blocks
        (129, 576),    # 18432 columns: many splits of several phases each
        (2100, 28),    # 17 block rows, 3-4 splits on 132 SMs
        (40000, 9),    # 313 block rows: no split (the direct bias and accumulate epilogue)
    ],
)
def test_many_rows_take_the_quantized_gemm(name, n_rows, groups):
    """From 9 rows of x the tiled types multiply on the tensor-core GEMM of the quantized tiles,
    with x in f16. Against float64 with x rounded the same way, the only error left is float32
    summation (the same 1e-9 bound as the matrix-vector kernels); against x itself, f16's
    rounding (about 2^-12 relative per element: an NMSE near 1e-8). Rows of x that end inside a
    block of 32 (9, 33, 100) and with a bias and accumulating onto the output."""
    rng = np.random.default_rng(n_rows * 3 + groups)
    n_cols = width_for(name, groups)
    raw = random_blocks(name, n_rows * n_cols // TYPES[name][1], rng)
    w = ferrite.dequantize(raw, name, (n_rows, n_cols)).astype(np.float64)
    worst = 0.0
    for n_x, accumulate in ((9, False), (33, True), (100, False)):
        x = rng.standard_normal((n_x, n_cols)).astype(np.float32)
        bias = rng.standard_normal(n_rows).astype(np.float32)
        start = (rng.standard_normal((n_x, n_rows)) * 4).astype(np.float32) if accumulate else None
        out = ferrite._ferrite._cuda_matvec(raw, name, n_rows, n_cols, x, bias, path="tiled", poison_bits=POISON, accumulate_onto=start)
        label = f"{name} {n_rows}x{n_cols} n_x={n_x} accumulate={accumulate}"
        assert (out[n_x].view(np.uint32) == POISON).all(), f"{label}: wrote past the last row"
        y = out[:n_x]
        assert not (y.view(np.uint32) == POISON).any(), f"{label}: {int((y.view(np.uint32) == POISON).sum())} outputs never written"
        base = (start.astype(np.float64) if accumulate else 0.0) + bias.astype(np.float64)
        ref = base + as_gemm_input(x) @ w.T
        err = nmse(y, ref)
        assert (err <= NMSE_BOUND).all(), f"{label}: NMSE per row {err.max():.3e} > {NMSE_BOUND}; max|diff| {np.abs(y - ref).max():.3e}"
        exact = nmse(y, base + x.astype(np.float64) @ w.T)
        assert (exact <= 1e-6).all(), f"{label}: NMSE against unrounded x {exact.max():.3e}"
        worst = max(worst, float(err.max()))
    report({"kind": "gemm_op", "type": name, "shape": [n_rows, n_cols], "worst_nmse": worst})
