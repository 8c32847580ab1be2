"""The model on the GPU (``Model.load(..., device="cuda")``) against independent references.

* Every tensor format through the whole forward pass: small random-block models whose matrices
  are all of one ggml type, on each device, against the NumPy float64 forward pass
  (tests/reference_forward.py, weights from gguf-py) where gguf-py reads the type, and on the GPU
  also against the CPU backend's float32 path (``exact_matmul=True``), which the CPU tests prove
  against the same reference. The GPU computes projections from the same dequantized values as
  the CPU (its block decoders are bit-identical), in float32, so only summation order separates
  them: bound 1e-4 of the largest |logit|, and top-1 equal wherever it is decisive.
* Both GPU projection paths: prefill (more than 4 rows: dequantize + cuBLAS) and decode
  (1..4 rows: the matrix-vector kernels on the quantized blocks), with the KV cache carried across
  forwards and ragged batches of sequences at different lengths.
* The real model: logits at every position of several prompts, and greedy continuations, GPU
  against CPU.

Without a GPU (CI) only the first test runs: asking for CUDA raises ``ferrite.CudaError``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import ferrite
from prompts import PROMPTS, token_ids
from reference_forward import ReferenceModel
from synthetic_model import CONTEXT, VOCAB, write_block_model, write_tiny_model

HAS_CUDA = ferrite.cuda_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")

# FERRITE_CUDA_MATVEC_MAX_ROWS (gpu_check's s8rows part sets it for a whole run) sends 5-8 rows to
# the matrix-vector kernels in every backend of the process: tests of what takes those rows
# otherwise cannot hold under it.
rows_not_forced = pytest.mark.skipif("FERRITE_CUDA_MATVEC_MAX_ROWS" in os.environ, reason="FERRITE_CUDA_MATVEC_MAX_ROWS forces the paths under test")

RELATIVE_BOUND = 1e-4
# The reduced-precision GPU paths for more than 4 rows (f16, the default, and TF32: 10-bit
# mantissas on the tensor cores), relative to the largest |logit|.
TF32_RELATIVE_BOUND = 1e-2
# The default path on the real model: at most this far from the float64 reference (llama.cpp's
# own CUDA logits are about 0.45 away from it).
REAL_DEFAULT_MAX_ABS = 0.05

# Every type the CPU dequantizes, so every type a model may hold.
MATRIX_TYPES = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS",
    "TQ1_0", "TQ2_0", "MXFP4", "NVFP4",
]


def report(row: dict) -> None:
    """Appends a result row for scripts/gpu_check.sh's table."""
    path = os.environ.get("FERRITE_GPU_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def relative(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


def decisive_top1(ours: np.ndarray, ref: np.ndarray) -> float:
    """Top-1 agreement at the positions where ref's top-1 beats its runner-up by more than twice
    the largest difference (where rounding cannot flip the argmax)."""
    diff = np.abs(ours.astype(np.float64) - ref).max()
    top2 = np.sort(ref, axis=-1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] > 2 * diff
    agree = ours.argmax(-1) == ref.argmax(-1)
    return float(agree[decisive].mean()) if decisive.any() else 1.0


def reference_logits(path: str, ids: list[int]) -> np.ndarray | None:
    """The NumPy float64 forward pass, or None where gguf-py cannot dequantize the type."""
    try:
        return ReferenceModel(path).forward(ids)
    except (NotImplementedError, KeyError, ValueError) as e:
        print(f"(gguf-py has no dequantization here: {type(e).__name__}: {e})")
        return None


# ---------------------------------------------------------------- everywhere (CI included)


@pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour on machines without CUDA")
def test_cuda_model_without_gpu_raises_cuda_error(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.gguf")
    with pytest.raises(ferrite.CudaError, match="CUDA is not available"):
        ferrite.Model.load(path, device="cuda")
    with pytest.raises(ferrite.CudaError, match="invalid device"):
        ferrite.Model.load(path, device="cuda:first")


@pytest.mark.parametrize("matrix_type", MATRIX_TYPES)
def test_cpu_exact_path_matches_reference_for_block_models(tmp_path, matrix_type):
    """The CPU float32 path is the GPU's reference below; here it is held to float64 itself
    (measured 6e-7..1.1e-6 of the largest |logit| on 2026-12-01, bound 1e-5)."""
    path = write_block_model(tmp_path / f"{matrix_type}.gguf", matrix_type)
    ids = list(np.random.default_rng(2).integers(0, 260, size=40))
    ours = ferrite.Model.load(path, exact_matmul=True).forward(ids)
    ref = reference_logits(path, ids)
    assert ref is not None, f"gguf-py cannot dequantize {matrix_type}: no independent reference"
    assert relative(ours, ref) <= 1e-5
    assert decisive_top1(ours, ref) == 1.0


# ---------------------------------------------------------------- with a GPU


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("matrix_type", MATRIX_TYPES)
def test_gpu_model_matches_references_for_every_type(tmp_path, matrix_type):
    path = write_block_model(tmp_path / f"{matrix_type}.gguf", matrix_type, seed=MATRIX_TYPES.index(matrix_type))
    rng = np.random.default_rng(3)
    ids = [int(t) for t in rng.integers(0, 260, size=40)]
    gpu = ferrite.Model.load(path, device="cuda", kv_cache_tokens=1024, exact_matmul=True)
    cpu = ferrite.Model.load(path, device="cpu", kv_cache_tokens=1024, exact_matmul=True)
    assert gpu.device == "cuda:0"

    # Prefill: 40 rows, the dequantize + cuBLAS path.
    g, c = gpu.forward(ids), cpu.forward(ids)
    assert g.shape == c.shape == (40, 260) and np.isfinite(g).all()
    row = {"kind": "model_type", "type": matrix_type, "prefill_rel_vs_cpu": relative(g, c)}
    assert row["prefill_rel_vs_cpu"] <= RELATIVE_BOUND, row
    assert decisive_top1(g, c) == 1.0
    ref = reference_logits(path, ids)
    if ref is not None:
        row["prefill_rel_vs_reference"] = relative(g, ref)
        assert row["prefill_rel_vs_reference"] <= RELATIVE_BOUND, row
        assert decisive_top1(g, ref) == 1.0

    # Decode: the first 30 tokens as a prefix, then one token per forward (matvec with one row),
    # each step's logits equal to the prefill's row at that position.
    seq = gpu.new_sequence(max_tokens=64)
    gpu.forward(ids[:30], seq=seq)
    steps = np.concatenate([gpu.forward([t], seq=seq) for t in ids[30:]])
    gpu.free_sequence(seq)
    row["decode_rel_vs_prefill"] = relative(steps, c[30:].astype(np.float64))
    assert row["decode_rel_vs_prefill"] <= RELATIVE_BOUND, row

    # Ragged decode batches of 1..10 sequences (matvec variants 1, 2, 4, 8, then cuBLAS).
    for n_seq in (1, 2, 3, 5, 8, 10):
        prefixes = [ids[: 3 + 2 * i] for i in range(n_seq)]
        seqs = [gpu.new_sequence(max_tokens=32) for _ in range(n_seq)]
        for s, p in zip(seqs, prefixes):
            gpu.forward(p[:-1], seq=s)
        got = gpu.forward_batch([[p[-1]] for p in prefixes], seqs=seqs)
        for s in seqs:
            gpu.free_sequence(s)
        want = np.concatenate([cpu.forward(p, last_only=True) for p in prefixes])
        rel = relative(np.concatenate(got), want.astype(np.float64))
        row[f"batch{n_seq}_rel_vs_cpu"] = rel
        assert rel <= RELATIVE_BOUND, (n_seq, row)
    # The default: more than 4 rows multiply in f16 on the tensor cores (10-bit mantissas,
    # float32 sums), so only a looser bound holds; the decode path above is the same either way.
    fast = ferrite.Model.load(path, device="cuda", kv_cache_tokens=1024).forward(ids)
    row["default_prefill_rel_vs_cpu"] = relative(fast, c.astype(np.float64))
    assert row["default_prefill_rel_vs_cpu"] <= TF32_RELATIVE_BOUND, row
    assert decisive_top1(fast, c) == 1.0
    report(row)
    print(row)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("layer_types", [
    {"attn_v.weight": "Q8_0", "ffn_up.weight": "Q8_0"},
    {"attn_k.weight": "Q4_0", "attn_v.weight": "Q8_0", "ffn_gate.weight": "Q4_0"},
])
def test_gpu_projections_of_mixed_types_match_the_references(tmp_path, layer_types):
    """q/k/v and gate/up of mixed types, as the real model's layers whose v is Q8_0 and q, k
    Q5_0. The GPU loads a group of Q5_0 and Q8_0 as Q8_0 to run it as one launch (the first
    case), which must give the file's values; a group with Q4_0 keeps each type, and its
    matrices take different kernels (the second). The CPU keeps every type; the float64
    reference reads the file through gguf-py."""
    path = write_block_model(tmp_path / "mixed.gguf", "Q5_0", seed=21, layer_types=layer_types)
    rng = np.random.default_rng(4)
    ids = [int(t) for t in rng.integers(0, 260, size=24)]
    gpu = ferrite.Model.load(path, device="cuda", kv_cache_tokens=512, exact_matmul=True)
    cpu = ferrite.Model.load(path, device="cpu", kv_cache_tokens=512, exact_matmul=True)
    c = cpu.forward(ids).astype(np.float64)
    ref = reference_logits(path, ids)
    assert ref is not None
    assert relative(c, ref) <= RELATIVE_BOUND
    assert relative(gpu.forward(ids), ref) <= RELATIVE_BOUND
    # Decode of one and of two sequences: the matrix-vector kernels, q/k/v as one launch.
    seq = gpu.new_sequence(max_tokens=64)
    gpu.forward(ids[:16], seq=seq)
    steps = np.concatenate([gpu.forward([t], seq=seq) for t in ids[16:]])
    assert relative(steps, ref[16:]) <= RELATIVE_BOUND
    seqs = [gpu.new_sequence(max_tokens=32) for _ in range(2)]
    for s_, n in zip(seqs, (9, 12)):
        gpu.forward(ids[: n - 1], seq=s_)
    got = np.concatenate(gpu.forward_batch([[ids[8]], [ids[11]]], seqs=seqs))
    want = np.stack([ref[8], ref[11]])
    assert relative(got, want) <= RELATIVE_BOUND


@pytest.mark.cuda
@needs_gpu
def test_gpu_q4_k_m_layers_take_one_launch_for_q_k_v(tmp_path, monkeypatch):
    """Q4_K_M's layers whose v (and ffn_down) is Q6_K and q, k Q4_K, as a 7B's half of them:
    decode steps of 1 to 4 sequences run q/k/v as one launch of the pair kernels, against the
    float64 reference, and as a launch a type with FERRITE_CUDA_MATVEC_PAIRS=0 (read when the
    model loads), within the same bound; the pair kernels ran only in the first."""
    path = write_block_model(tmp_path / "q4_k_m.gguf", "Q4_K", hidden=256, ffn=512, n_heads=4, n_kv_heads=2, context=256, seed=17,
                             layer_types={"attn_v.weight": "Q6_K", "ffn_down.weight": "Q6_K"})
    rng = np.random.default_rng(19)
    starts = [[int(t) for t in rng.integers(0, 260, size=5)] for _ in range(4)]
    steps = [[int(t) for t in rng.integers(0, 260, size=4)] for _ in range(3)]
    ref = ReferenceModel(path)
    launches = {}
    for rows in (None, "0"):
        before = ferrite._ferrite._cuda_counters()["pair_matvecs"]
        decode_steps_under(path, monkeypatch, "FERRITE_CUDA_MATVEC_PAIRS", rows, starts, steps, (1, 2, 3, 4), 256, 8, ref)
        launches[rows] = ferrite._ferrite._cuda_counters()["pair_matvecs"] - before
    assert launches[None] > 0 and launches["0"] == 0, launches


@pytest.mark.cuda
@needs_gpu
def test_gpu_llama_layout_and_tied_head(tmp_path):
    """Adjacent-pair RoPE (llama) and an LM head tied to the embedding, on the GPU."""
    path = write_tiny_model(tmp_path / "llama.gguf", arch="llama", matrix_type="Q8_0", tied=True)
    ids = list(np.random.default_rng(5).integers(0, 80, size=48))
    g = ferrite.Model.load(path, device="cuda", exact_matmul=True).forward(ids)
    ref = ReferenceModel(path).forward(ids)
    assert relative(g, ref) <= RELATIVE_BOUND
    assert decisive_top1(g, ref) == 1.0


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("matrix_type", ["Q5_0", "Q4_K", "IQ2_XXS"])
def test_gpu_prefill_with_and_without_resident_float32_weights(tmp_path, matrix_type, monkeypatch):
    """Large multiplies use a float32 copy of each weight kept on the device when there is room,
    else re-dequantize chunks into a scratch buffer (FERRITE_CUDA_F32_WEIGHTS=1 / =0 force each):
    the same logits both ways (tiled and block layouts), and both match the float64 reference."""
    path = write_block_model(tmp_path / f"{matrix_type}.gguf", matrix_type, seed=11)
    ids = [int(t) for t in np.random.default_rng(4).integers(0, 260, size=37)]
    got = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("FERRITE_CUDA_F32_WEIGHTS", flag)
        m = ferrite.Model.load(path, device="cuda", kv_cache_tokens=256, exact_matmul=True)
        got[flag] = (m.forward(ids), m.forward(ids[::-1]))
    for a, b in zip(got["0"], got["1"]):
        assert relative(a, b.astype(np.float64)) <= RELATIVE_BOUND
    ref = reference_logits(path, ids)
    if ref is not None:
        assert relative(got["1"][0], ref) <= RELATIVE_BOUND
        assert decisive_top1(got["1"][0], ref) == 1.0


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("resident", ["1", "0"])
@pytest.mark.parametrize("gemm", ["f32", "tf32", "f16"])
def test_gpu_gemm_precisions_match_the_float64_reference(tmp_path, gemm, resident, monkeypatch):
    """Each precision of the multiplies of more than 4 rows (FERRITE_CUDA_GEMM; f16 is the
    default), with the weights' copies kept on the device or re-dequantized per multiply
    (FERRITE_CUDA_F32_WEIGHTS), on a model whose layer norms have a gain of 30: the FFN's inner
    activations reach ~4e5, beyond f16's 65504, which the f16 path must scale into range. (f16
    without copies falls back to re-dequantized float32 rows in TF32: that case checks the
    fallback.)"""
    monkeypatch.setenv("FERRITE_CUDA_GEMM", gemm)
    monkeypatch.setenv("FERRITE_CUDA_F32_WEIGHTS", resident)
    path = write_block_model(tmp_path / "Q4_K.gguf", "Q4_K", seed=21, norm_gain=30.0)
    ids = [int(t) for t in np.random.default_rng(6).integers(0, 260, size=41)]
    ref = ReferenceModel(path)
    want = ref.forward(ids)
    got = ferrite.Model.load(path, device="cuda", kv_cache_tokens=256).forward(ids)
    bound = RELATIVE_BOUND if gemm == "f32" else TF32_RELATIVE_BOUND
    row = {"test": "gemm_precision", "gemm": gemm, "resident": resident, "rel": relative(got, want), "largest_input": ref.largest_input}
    report(row)
    assert ref.largest_input > 65504, row  # the model does reach beyond f16's range
    assert np.isfinite(got).all(), row
    assert row["rel"] <= bound, row
    assert decisive_top1(got, want) == 1.0, row


def prompt_and_twelve_sequence_steps(path, ids, stack_flag, monkeypatch):
    """With FERRITE_CUDA_STACK=stack_flag: the logits of `ids` as one prompt, then of 12
    sequences' first and sixth decode steps (after 5-token prompts; the later steps of the same
    shape replay a recorded graph, with stacked_out's address inside it), and how many stacked
    GEMMs the process launched meanwhile."""
    monkeypatch.setenv("FERRITE_CUDA_STACK", stack_flag)
    before = ferrite._ferrite._cuda_counters()["stacked_gemms"]
    m = ferrite.Model.load(path, device="cuda", kv_cache_tokens=1024)
    prompt = m.forward(ids)
    seqs = [m.new_sequence(max_tokens=64) for _ in range(12)]
    m.forward_batch([ids[i : i + 5] for i in range(12)], seqs=seqs)
    steps = [np.stack([o[-1] for o in m.forward_batch([[7 + i + s] for i in range(12)], seqs=seqs)]) for s in range(6)]
    return (prompt, steps[0], steps[-1]), ferrite._ferrite._cuda_counters()["stacked_gemms"] - before


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("matrix_type", ["Q4_K", "Q5_0", "IQ2_XXS"])
def test_gpu_stacked_projections_match_separate_ones(tmp_path, matrix_type, monkeypatch):
    """q/k/v (and gate/up, whose weights are small here) of more rows than the matrix-vector
    kernels take run as one f16 GEMM on a stacked copy, split into their outputs with the biases
    added (FERRITE_CUDA_STACK=0: a GEMM each, then add_biases3): the same products summed in
    another order, so the logits of a prompt and of 12-sequence decode steps (the first run
    directly, the last replayed from a recorded graph) agree closely both
    ways (the process's count of stacked GEMMs shows which path ran) and both match the float64
    reference."""
    path = write_block_model(tmp_path / f"{matrix_type}.gguf", matrix_type, seed=23)
    ids = [int(t) for t in np.random.default_rng(8).integers(0, 260, size=43)]
    # The same rounding both ways: with the norm folded into the stacked copies (a rounding of
    # W * g instead of W) the two paths differ by more than summation order.
    monkeypatch.setenv("FERRITE_CUDA_NORM_FOLD", "0")
    got = {}
    stacked = {}
    for flag in ("0", "1"):
        got[flag], stacked[flag] = prompt_and_twelve_sequence_steps(path, ids, flag, monkeypatch)
    # Each path ran: the prompt and the unrecorded steps stack q/k/v and gate/up in every layer.
    assert stacked["0"] == 0 and stacked["1"] >= 2 * 2, stacked
    for a, b in zip(got["0"], got["1"]):
        assert relative(b, a.astype(np.float64)) <= RELATIVE_BOUND
    ref = reference_logits(path, ids)
    if ref is not None:
        assert relative(got["1"][0], ref) <= TF32_RELATIVE_BOUND
        assert decisive_top1(got["1"][0], ref) == 1.0


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("matrix_type", ["Q4_K", "Q5_0"])
def test_gpu_stacked_outputs_read_in_place_give_the_bits_of_split_ones(tmp_path, matrix_type, monkeypatch):
    """SwiGLU reads the stacked gate/up GEMM's output rows in place, and decode attention reads
    the stacked q/k/v rows and adds their biases itself, instead of a launch that splits them
    first (FERRITE_CUDA_STACK=split keeps that launch): the same float operations on the same
    values, so a prompt's logits and 12-sequence decode steps (the first run directly, the last
    replayed from a recorded graph) are the same bits both ways."""
    path = write_block_model(tmp_path / f"{matrix_type}.gguf", matrix_type, seed=29)
    ids = [int(t) for t in np.random.default_rng(9).integers(0, 260, size=37)]
    got = {}
    for flag in ("split", "1"):
        got[flag], stacked = prompt_and_twelve_sequence_steps(path, ids, flag, monkeypatch)
        assert stacked >= 2 * 2, flag
    for a, b in zip(got["split"], got["1"]):
        np.testing.assert_array_equal(b, a)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize(
    "n_heads,n_kv_heads,hidden,n_tokens",
    [(16, 1, 256, 45), (8, 8, 256, 45), (16, 2, 256, 45), (12, 4, 192, 45), (12, 1, 192, 45), (8, 1, 1024, 45), (14, 2, 896, 600)],
)
@pytest.mark.parametrize("splits,flash", [("auto", "1"), ("5", "0")])
def test_gpu_attention_over_query_head_groups(tmp_path, monkeypatch, n_heads, n_kv_heads, hidden, n_tokens, splits, flash):
    """Attention handles the query heads that share a KV head together (up to 8 per block, 4 for
    128-wide heads) and spreads a row's keys over up to 16 warps: groups of 16 (two slices), 1,
    8 and 3 heads, 12 (a full slice and a partial one), 8 heads of 128 dims (two slices), and the test model's 14/2 heads over 600
    positions (warps looping over several chunks each; two flash-decoding splits from 512 keys).
    A prefill and then 12 tokens one at a time on the cached keys, against the float64 reference
    at every position. Also with FERRITE_CUDA_ATTN_SPLITS=5 and the prompt on attention.cu's
    kernel (FERRITE_CUDA_FLASH_PREFILL=0), so that both attention.cu kernels run split: the 45-token
    models' prompts (33 rows, up to 256 rows split; empty splits, the last row merging two) and
    every decode step (the 600-token model's merging five non-empty splits). Not covered here:
    several sequences decoding split in one step."""
    if splits != "auto":
        monkeypatch.setenv("FERRITE_CUDA_ATTN_SPLITS", splits)
    monkeypatch.setenv("FERRITE_CUDA_FLASH_PREFILL", flash)
    path = write_block_model(
        tmp_path / "m.gguf", "Q8_0", hidden=hidden, ffn=256, n_heads=n_heads, n_kv_heads=n_kv_heads, context=1024, seed=8
    )
    ids = [int(t) for t in np.random.default_rng(2).integers(0, 260, size=n_tokens)]
    m = ferrite.Model.load(path, device="cuda", kv_cache_tokens=1024, exact_matmul=True)
    s = m.new_sequence(max_tokens=n_tokens + 16)
    split = n_tokens - 12
    got = np.concatenate([m.forward(ids[:split], seq=s)] + [m.forward([t], seq=s) for t in ids[split:]])
    want = ReferenceModel(path).forward(ids)
    assert relative(got, want) <= RELATIVE_BOUND
    assert decisive_top1(got, want) == 1.0


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize(
    "n_heads,n_kv_heads,hidden",
    [(14, 2, 896), (8, 1, 1024), (12, 4, 192), (16, 1, 1024), (8, 8, 256), (12, 2, 1152), (4, 2, 1024)],
)
def test_gpu_prompt_chunks_attend_like_the_reference(tmp_path, monkeypatch, n_heads, n_kv_heads, hidden):
    """Prompts in chunks, the path of attention_prefill.cu (tiles of 16 query rows, keys in tiles
    through shared memory, two-part f16 on the tensor cores) and, with
    FERRITE_CUDA_FLASH_PREFILL=0, of attention.cu's kernel: head dims 64 (groups of 7 heads, of
    16: two blocks a KV head), 128 (8), 16 (3), 32 (1: a warp a block), 96 (6), and 256, which
    attention_prefill.cu does not take. One sequence in three chunks that start mid-tile (37, 163
    and 100 tokens: partial tiles, key tiles past the diagonal, a chunk whose first key tile holds
    no new key), then two sequences in one batch (a 70-token chunk beside a 1-token step),
    against the float64 reference at every position, with each kernel. Where the head dim has a
    prefill kernel the two kernels' logits must differ somewhere (their float operations do), so
    that a silent fall-back to attention.cu cannot pass as the new kernel; at 256 they are the
    same bits."""
    path = write_block_model(
        tmp_path / "m.gguf", "Q8_0", hidden=hidden, ffn=256, n_heads=n_heads, n_kv_heads=n_kv_heads, context=1024, seed=12
    )
    rng = np.random.default_rng(4)
    ids = [int(t) for t in rng.integers(0, 260, size=300)]
    other = [int(t) for t in rng.integers(0, 260, size=71)]
    more = [int(t) for t in rng.integers(0, 260, size=1)]
    ref = ReferenceModel(path)
    want, want_step, want_other = ref.forward(ids), ref.forward(ids + more)[-1:], ref.forward(other)
    got = {}
    for flash in ["1", "0"]:
        monkeypatch.setenv("FERRITE_CUDA_FLASH_PREFILL", flash)  # read when the model loads
        m = ferrite.Model.load(path, device="cuda", kv_cache_tokens=1024, exact_matmul=True)
        s = m.new_sequence(max_tokens=400)
        chunks = np.concatenate([m.forward(ids[a:b], seq=s) for a, b in [(0, 37), (37, 200), (200, 300)]])
        # Two sequences in one batch: ids goes on by one token while `other` arrives as a chunk.
        s2 = m.new_sequence(max_tokens=100)
        m.forward(other[:1], seq=s2)
        step, chunk = m.forward_batch([more, other[1:]], last_only=False, seqs=[s, s2])
        got[flash] = (chunks, step, chunk)
        assert relative(chunks, want) <= RELATIVE_BOUND, flash
        assert relative(step, want_step) <= RELATIVE_BOUND, flash
        assert relative(chunk, want_other[1:]) <= RELATIVE_BOUND, flash
        assert decisive_top1(chunk, want_other[1:]) == 1.0, flash
        del m
    same = np.array_equal(got["1"][0], got["0"][0]) and np.array_equal(got["1"][2], got["0"][2])
    head_dim = hidden // n_heads
    assert same == (head_dim > 128), f"head dim {head_dim}: the prefill kernel {'did not run' if same else 'ran'}"


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("splits", ["auto", "3"])
def test_gpu_several_sequences_decode_split(tmp_path, monkeypatch, splits):
    """Flash-decoding with several sequences a step: contexts of about 700, 300 and 40 keys
    decoding together for 6 steps (recorded as a graph at the first, replayed after), the rule's
    splits (2 here: the longest context over 512 keys) and 3 forced ones (empty ranges for the
    short contexts). Each sequence's logits at every step against the float64 reference, and
    different bits from the same steps unsplit (FERRITE_CUDA_ATTN_SPLITS=1), so the splits ran."""
    path = write_block_model(tmp_path / "m.gguf", "Q8_0", hidden=896, ffn=256, n_heads=14, n_kv_heads=2, context=1024, seed=3)
    rng = np.random.default_rng(11)
    prompts = [[int(t) for t in rng.integers(0, 260, size=n)] for n in (700, 300, 40)]
    steps = [[int(t) for t in rng.integers(0, 260, size=3)] for _ in range(6)]
    ref = ReferenceModel(path)
    got = {}
    for mode in ["1", splits]:
        if mode == "auto":
            monkeypatch.delenv("FERRITE_CUDA_ATTN_SPLITS", raising=False)
        else:
            monkeypatch.setenv("FERRITE_CUDA_ATTN_SPLITS", mode)  # read when the model loads
        m = ferrite.Model.load(path, device="cuda", kv_cache_tokens=2048, exact_matmul=True)
        seqs = [m.new_sequence(max_tokens=len(p) + 8) for p in prompts]
        for s, p in zip(seqs, prompts):
            m.forward(p, seq=s, last_only=True)
        got[mode] = [np.concatenate(m.forward_batch([[t] for t in step], seqs=seqs)) for step in steps]
        del m
    for i, p in enumerate(prompts):
        want = ref.forward(p + [step[i] for step in steps])[len(p):]
        for mode in got:
            ours = np.stack([g[i] for g in got[mode]])
            assert relative(ours, want) <= RELATIVE_BOUND, (mode, i)
    assert not all(np.array_equal(a, b) for a, b in zip(got["1"], got[splits])), "the split steps gave the unsplit bits"


def decode_steps_under(path, monkeypatch, var, value, starts, steps, seq_counts, kv_cache_tokens, max_tokens, ref=None):
    """With `var` set to `value` (unset when None) as the model loads: for each count n of
    `seq_counts`, n sequences prompted with `starts[:n]`, then decode steps `steps` (each a token
    a sequence); the last position's logits of every step, in order. With `ref` (the float64
    reference), each step is held to the f16 paths' bound of it and its decisive top-1."""
    if value is None:
        monkeypatch.delenv(var, raising=False)
    else:
        monkeypatch.setenv(var, value)
    m = ferrite.Model.load(path, device="cuda", kv_cache_tokens=kv_cache_tokens)
    outs = []
    for n_seqs in seq_counts:
        seqs = [m.new_sequence(max_tokens=max_tokens) for _ in range(n_seqs)]
        m.forward_batch(starts[:n_seqs], seqs=seqs)
        for s, step in enumerate(steps):
            batch = np.stack([o[-1] for o in m.forward_batch([[t] for t in step[:n_seqs]], seqs=seqs)])
            if ref is not None:
                want = np.stack([ref.forward(p + [st[i] for st in steps[: s + 1]])[-1] for i, p in enumerate(starts[:n_seqs])])
                assert relative(batch, want) <= TF32_RELATIVE_BOUND, (var, value, n_seqs, s, relative(batch, want))
                assert decisive_top1(batch, want) == 1.0, (var, value, n_seqs, s)
            outs.append(batch)
        for q in seqs:
            m.free_sequence(q)
    del m
    return outs


@pytest.mark.cuda
@needs_gpu
@rows_not_forced
@pytest.mark.parametrize("matrix_type", ["Q5_0", "Q4_K"])
def test_gpu_rows_gemm_in_a_model(tmp_path, monkeypatch, matrix_type):
    """gemm_f16_rows.cu, the f16 GEMM of 5-16 rows that decode steps take instead of cuBLAS, in
    a whole model: decode steps of 6 and of 13 sequences (the two kernel variants; the later
    steps replay recorded graphs) against the float64 reference within the f16 paths' bound, and
    the same through cuBLAS (FERRITE_CUDA_GEMM_ROWS=0): both within the bound, with different
    bits (so that each path ran)."""
    path = write_block_model(tmp_path / "m.gguf", matrix_type, hidden=256, ffn=512, n_heads=4, n_kv_heads=2, context=256, seed=9)
    rng = np.random.default_rng(11)
    starts = [[int(t) for t in rng.integers(0, 260, size=4)] for _ in range(13)]
    steps = [[int(t) for t in rng.integers(0, 260, size=13)] for _ in range(3)]
    ref = ReferenceModel(path)
    got = {flag: decode_steps_under(path, monkeypatch, "FERRITE_CUDA_GEMM_ROWS", flag, starts, steps, (6, 13), 1024, 16, ref) for flag in (None, "0")}
    for i, (a, b) in enumerate(zip(got[None], got["0"])):
        assert not np.array_equal(a, b), f"step {i} took the same path both times"


@pytest.mark.cuda
@needs_gpu
@rows_not_forced
@pytest.mark.parametrize("matrix_type", ["Q5_0", "Q4_K"])
def test_gpu_swiglu_inside_the_stacked_rows_gemm_gives_the_bits_of_its_own_launch(tmp_path, monkeypatch, matrix_type):
    """The stacked gate/up GEMM of 5-16 rows on gemm_f16_rows.cu writes silu(gate) * up as f16
    for ffn_down, as swiglu_f16 would from its float32 output: decode steps of 6 and 13
    sequences (the two kernel variants; the later steps replay recorded graphs) give the same
    bits as with SwiGLU's own launch (FERRITE_CUDA_SWIGLU_GEMM=0), the process's count shows
    that the fused kernel ran only when on, and the steps stay within the f16 paths' bound of
    the float64 reference."""
    # k of 896 and 1024 columns: 7 and 8 warps a block (the real model's 896 takes 7).
    hidden, n_heads = {"Q5_0": (896, 14), "Q4_K": (1024, 8)}[matrix_type]
    path = write_block_model(tmp_path / "m.gguf", matrix_type, hidden=hidden, ffn=512, n_heads=n_heads, n_kv_heads=2, context=256, seed=13)
    rng = np.random.default_rng(17)
    starts = [[int(t) for t in rng.integers(0, 260, size=4)] for _ in range(13)]
    steps = [[int(t) for t in rng.integers(0, 260, size=13)] for _ in range(3)]
    got, fused = {}, {}
    for flag in ("1", "0"):
        before = ferrite._ferrite._cuda_counters()["swiglu_gemms"]
        got[flag] = decode_steps_under(path, monkeypatch, "FERRITE_CUDA_SWIGLU_GEMM", flag, starts, steps, (6, 13), 1024, 16)
        fused[flag] = ferrite._ferrite._cuda_counters()["swiglu_gemms"] - before
    # Every layer's gate/up of the unrecorded 6- and 13-row steps (the prompts go to cuBLAS).
    assert fused["0"] == 0 and fused["1"] >= 2 * 2, fused
    for i, (a, b) in enumerate(zip(got["1"], got["0"])):
        assert np.array_equal(a, b), f"step {i}: {np.abs(a - b).max()}"
    ref = ReferenceModel(path)
    want = np.stack([ref.forward(p + [st[i] for st in steps])[-1] for i, p in enumerate(starts)])
    assert relative(got["1"][-1], want) <= TF32_RELATIVE_BOUND
    assert decisive_top1(got["1"][-1], want) == 1.0


@pytest.mark.cuda
@needs_gpu
@rows_not_forced
@pytest.mark.parametrize("hidden,n_heads", [(896, 14), (256, 4)])
def test_gpu_norm_folded_around_the_rows_gemms_matches_the_float64_reference(tmp_path, monkeypatch, hidden, n_heads):
    """In decode steps of 5-16 sequences the o and ffn_down GEMMs (gemm_f16_rows.cu), which add
    into x, also write x as f16 and its sums of squares, and the stacked q/k/v and gate/up GEMMs,
    whose copies hold the norm weight, take 1 / rms from those sums: no norm launch
    (FERRITE_CUDA_NORM_FOLD=0 keeps the launch). Decode steps of 6 and 13 sequences (the two
    kernel variants; the later steps replay recorded graphs) of a 3-layer model whose norm
    weights take both signs and mixed magnitudes (a norm weight applied twice, or not at all,
    moves every logit), both ways within the f16 paths' bound of the float64 reference, with
    different bits; the process's count shows the stacked GEMMs read the sources only when on.
    With FERRITE_CUDA_NORM_FOLD_ROWS=8 the 6-row steps keep their bits and the 13-row steps take
    a norm launch against the folded copies, also within the bound.
    Widths of 896 (56 sums a row: two a lane) and 256 (two warps a block: rows past the fourth
    take the kernel's second loop). (Norm gains of 30 are left out: there the folded placement
    is 2-7 times farther from float64 than the norm launch in NumPy's emulation, and one step of
    this seed's model is 3e-2 from it folded on the GPU and emulated alike, so the f16 bound
    would not tell a fault from rounding; docs/BENCHMARKS.md, thirty-fourth session.)"""
    path = write_block_model(tmp_path / "m.gguf", "Q5_0", hidden=hidden, ffn=512, n_heads=n_heads, n_kv_heads=2, n_layers=3, context=256, seed=31, norm_spread=1.0)
    rng = np.random.default_rng(37)
    starts = [[int(t) for t in rng.integers(0, 260, size=4)] for _ in range(13)]
    steps = [[int(t) for t in rng.integers(0, 260, size=13)] for _ in range(3)]
    ref = ReferenceModel(path)
    got, sourced, made = {}, {}, {}
    for flag in ("1", "0"):
        before = ferrite._ferrite._cuda_counters()
        got[flag] = decode_steps_under(path, monkeypatch, "FERRITE_CUDA_NORM_FOLD", flag, starts, steps, (6, 13), 1024, 16, ref)
        after = ferrite._ferrite._cuda_counters()
        sourced[flag] = after["norm_source_gemms"] - before["norm_source_gemms"]
        made[flag] = after["norm_source_launches"] - before["norm_source_launches"]
    # Every stacked GEMM of the counted 6- and 13-row steps (two a layer) read a source, and only
    # the first layer's was made by a launch of its own: the others came from the o and ffn_down
    # GEMMs that wrote x.
    assert sourced["0"] == 0 and made["0"] == 0, (sourced, made)
    assert made["1"] >= 2 and sourced["1"] == 2 * 3 * made["1"], (sourced, made)
    for i, (a, b) in enumerate(zip(got["1"], got["0"])):
        assert not np.array_equal(a, b), f"step {i} took the same path both times"
    # FERRITE_CUDA_NORM_FOLD_ROWS=8: the 6-row steps as before, bit for bit; the 13-row steps
    # normalize x in a launch of their own (against the same folded copies), a third path.
    monkeypatch.setenv("FERRITE_CUDA_NORM_FOLD_ROWS", "8")
    before = ferrite._ferrite._cuda_counters()
    capped = decode_steps_under(path, monkeypatch, "FERRITE_CUDA_NORM_FOLD", "1", starts, steps, (6, 13), 1024, 16, ref)
    after = ferrite._ferrite._cuda_counters()
    capped_sourced = after["norm_source_gemms"] - before["norm_source_gemms"]
    capped_made = after["norm_source_launches"] - before["norm_source_launches"]
    assert 1 <= capped_made < made["1"] and capped_sourced == 2 * 3 * capped_made, (capped_sourced, capped_made, sourced, made)
    n6 = len(steps)
    for i, (a, b, c) in enumerate(zip(capped, got["1"], got["0"])):
        if i < n6:
            assert np.array_equal(a, b), f"6-row step {i} changed under the cap"
        else:
            assert not np.array_equal(a, b) and not np.array_equal(a, c), f"13-row step {i - n6} took the fold's or the unfolded path"


@pytest.mark.cuda
@needs_gpu
@rows_not_forced
def test_gpu_huge_lm_head_on_the_matrix_vector_kernels_at_six_rows(tmp_path, monkeypatch):
    """A weight of 2^25 elements or more (a small model's LM head) may take the matrix-vector
    kernels beyond the rows the others do (FERRITE_CUDA_MATVEC_HUGE_ROWS): decode steps of 6
    sequences of a model whose Q8_0 LM head is 32768 x 1024, with the rule at 8 rows and off,
    both against the float64 reference, with different bits (so that each path ran)."""
    path = write_block_model(tmp_path / "huge.gguf", "Q8_0", hidden=1024, ffn=512, n_heads=8, n_kv_heads=2, n_layers=1, vocab=32768, context=64, seed=7)
    rng = np.random.default_rng(29)
    starts = [[int(t) for t in rng.integers(0, 32768, size=3)] for _ in range(6)]
    steps = [[int(t) for t in rng.integers(0, 32768, size=6)] for _ in range(2)]
    ref = ReferenceModel(path)
    got = {rows: decode_steps_under(path, monkeypatch, "FERRITE_CUDA_MATVEC_HUGE_ROWS", rows, starts, steps, (6,), 256, 8, ref) for rows in ("8", "4")}
    for i, (a, b) in enumerate(zip(got["8"], got["4"])):
        assert not np.array_equal(a, b), f"step {i} took the same path both times"


@pytest.mark.cuda
@needs_gpu
@rows_not_forced
@pytest.mark.parametrize("matrix_type", ["Q4_K", "Q6_K"])
def test_gpu_wide_weights_on_the_matrix_vector_kernels_at_six_rows(tmp_path, monkeypatch, matrix_type):
    """Weights of 2048 columns or more (a 7B's) may take the matrix-vector kernels beyond the
    rows the others do (FERRITE_CUDA_MATVEC_WIDE_ROWS): decode steps of 5 and 6 sequences of a
    model that wide, with the rule at 6 rows and off (4, cuBLAS's f16 from 5 rows), both
    against the float64 reference, with different bits (so that each path ran)."""
    path = write_block_model(tmp_path / "wide.gguf", matrix_type, hidden=2048, ffn=2048, n_heads=16, n_kv_heads=2, n_layers=1, context=64, seed=5)
    rng = np.random.default_rng(21)
    starts = [[int(t) for t in rng.integers(0, 260, size=3)] for _ in range(6)]
    steps = [[int(t) for t in rng.integers(0, 260, size=6)] for _ in range(2)]
    ref = ReferenceModel(path)
    got = {rows: decode_steps_under(path, monkeypatch, "FERRITE_CUDA_MATVEC_WIDE_ROWS", rows, starts, steps, (5, 6), 256, 8, ref) for rows in ("6", "4")}
    for i, (a, b) in enumerate(zip(got["6"], got["4"])):
        assert not np.array_equal(a, b), f"step {i} took the same path both times"


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("matrix_type", ["Q4_K", "Q5_0", "Q6_K", "Q8_0"])
def test_gpu_quantized_gemm_in_a_model(tmp_path, monkeypatch, matrix_type):
    """The quantized GEMM (matmul_mma.cu) in a whole model at the default (f16) precision: a
    40-token prompt and then a decode step of 12 sequences, every projection of more than 4 rows
    on it (FERRITE_CUDA_MMQ_MAX_ROWS=512, read when the model loads), against the float64
    reference within the f16 paths' bound, and the same through cuBLAS's f16 copies (=0): both
    within the bound, with different bits (so that each path ran)."""
    path = write_block_model(tmp_path / "m.gguf", matrix_type, hidden=256, ffn=512, n_heads=4, n_kv_heads=2, context=256, seed=5)
    rng = np.random.default_rng(7)
    prompt = [int(t) for t in rng.integers(0, 260, size=40)]
    starts = [[int(t) for t in rng.integers(0, 260, size=5)] for _ in range(12)]
    step = [int(t) for t in rng.integers(0, 260, size=12)]
    ref = ReferenceModel(path)
    want_prompt = ref.forward(prompt)
    want_step = np.stack([ref.forward(p + [t])[-1] for p, t in zip(starts, step)])
    got = {}
    for rows in ["512", "0"]:
        monkeypatch.setenv("FERRITE_CUDA_MMQ_MAX_ROWS", rows)
        m = ferrite.Model.load(path, device="cuda", kv_cache_tokens=1024)
        s = m.new_sequence(max_tokens=48)
        logits = m.forward(prompt, seq=s)
        seqs = [m.new_sequence(max_tokens=8) for _ in starts]
        for q, p in zip(seqs, starts):
            m.forward(p, seq=q, last_only=True)
        batch = np.concatenate(m.forward_batch([[t] for t in step], seqs=seqs))
        for what, ours, want in (("prompt", logits, want_prompt), ("step", batch, want_step)):
            assert relative(ours, want) <= TF32_RELATIVE_BOUND, (rows, what, relative(ours, want))
            assert decisive_top1(ours, want) == 1.0, (rows, what)
        got[rows] = (logits, batch)
        del m
    assert not np.array_equal(got["512"][0], got["0"][0]), "the prompt took the same path both times"
    assert not np.array_equal(got["512"][1], got["0"][1]), "the decode step took the same path both times"


@pytest.mark.cuda
@needs_gpu
def test_gpu_recorded_large_batch_steps_replay_correctly(tmp_path):
    """A decode step of more than 4 rows is recorded as a CUDA graph once its sizes recur (the
    third step) and replayed after: 12 sequences decoding 10 steps together, each step's logits
    equal to the same sequence decoded alone (1-row matvec), on new tokens and positions."""
    path = write_block_model(tmp_path / "Q8_0.gguf", "Q8_0", seed=5)
    m = ferrite.Model.load(path, device="cuda", kv_cache_tokens=1024, exact_matmul=True)
    rng = np.random.default_rng(9)
    prompts = [[int(t) for t in rng.integers(0, 260, size=3 + i)] for i in range(12)]
    steps = [[int(t) for t in rng.integers(0, 260, size=12)] for _ in range(10)]
    seqs = [m.new_sequence(max_tokens=32) for _ in prompts]
    for s, p in zip(seqs, prompts):
        m.forward(p, seq=s)
    together = [np.concatenate(m.forward_batch([[t] for t in step], seqs=seqs)) for step in steps]
    for i, p in enumerate(prompts):
        s = m.new_sequence(max_tokens=32)
        m.forward(p, seq=s)
        alone = np.concatenate([m.forward([step[i]], seq=s) for step in steps])
        got = np.stack([t[i] for t in together])
        assert relative(got, alone.astype(np.float64)) <= RELATIVE_BOUND, i


@pytest.mark.cuda
@needs_gpu
def test_gpu_model_errors_are_clear(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.gguf")
    n = ferrite.cuda_device_count()
    with pytest.raises(ferrite.CudaError, match=f"no CUDA device {n}"):
        ferrite.Model.load(path, device=f"cuda:{n}")
    m = ferrite.Model.load(path, device="cuda")
    with pytest.raises(ferrite.ContextLengthError, match="context length of 48"):
        m.forward([1] * 49)
    with pytest.raises(ferrite.InvalidTokenError, match="token id 80"):
        m.forward([1, 80])
    # The model is still usable after refused calls.
    assert np.isfinite(m.forward([1, 2, 3])).all()


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("kv_cache_dtype", ["float32", "float16"])
def test_gpu_prebuilt_kernels_compile_nothing_and_compute_what_nvrtc_compiles(tmp_path, kv_cache_dtype):
    """A model of the prebuilt types and head width (Q8_0 and Q4_K, heads of 64, as the test
    model's), with either KV cache type, loaded in a fresh process with an empty kernel cache:
    where the prebuilt kernels serve this GPU and NVRTC (sm_90, NVRTC 13.0), NVRTC compiles
    nothing and writes no cache file; elsewhere it compiles. With FERRITE_CUDA_PREBUILT=0 it
    compiles everywhere. The two processes' logits, a prompt and decode steps, are the same bits:
    the prebuilt modules are what NVRTC makes."""
    path = write_block_model(tmp_path / "m.gguf", "Q4_K", hidden=256, ffn=256, n_heads=4, n_kv_heads=2, context=256, seed=6)
    code = (
        "import json, sys, numpy as np, ferrite\n"
        "m = ferrite.Model.load(sys.argv[1], device='cuda', kv_cache_dtype=sys.argv[3])\n"
        "s = m.new_sequence(max_tokens=40)\n"
        "rows = [m.forward(list(range(3, 30)), seq=s)] + [m.forward([t], seq=s) for t in (5, 9, 11)]\n"
        "np.save(sys.argv[2], np.concatenate(rows))\n"
        "info = ferrite.cuda_device_info()\n"
        "print(json.dumps({k: info[k] for k in ('prebuilt_kernels', 'kernels_compiled')}))\n"
    )
    runs = {}
    for prebuilt in ("1", "0"):
        cache = tmp_path / f"cache{prebuilt}"
        env = dict(os.environ, FERRITE_CACHE=str(cache), FERRITE_CUDA_PREBUILT=prebuilt)
        # The default kernels: what the prebuilt set holds (the experiments' modules it does not).
        for opt_in in ("FERRITE_CUDA_KERNEL_DEFINES", "FERRITE_CUDA_FAST_COMPILE", "FERRITE_CUDA_MATVEC_STREAM"):
            env.pop(opt_in, None)
        out = subprocess.run([sys.executable, "-c", code, path, str(tmp_path / f"l{prebuilt}.npy"), kv_cache_dtype], env=env, check=True, capture_output=True, text=True)
        info = json.loads(out.stdout.strip().splitlines()[-1])
        cubins = list((cache / "kernels").glob("*.cubin")) if (cache / "kernels").exists() else []
        runs[prebuilt] = (info, len(cubins), np.load(tmp_path / f"l{prebuilt}.npy"))
    (on, on_files, on_logits), (off, off_files, off_logits) = runs["1"], runs["0"]
    print(on, on_files, off, off_files)
    assert not off["prebuilt_kernels"] and off["kernels_compiled"] > 0 and off_files == off["kernels_compiled"]
    if on["prebuilt_kernels"]:
        assert (on["kernels_compiled"], on_files) == (0, 0)
    else:
        assert on["kernels_compiled"] > 0
    assert np.array_equal(on_logits, off_logits)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("gate_type,down_type,hidden,ffn", [("Q5_0", "Q4_K", 896, 4864), ("Q5_0", "Q6_K", 896, 4864), ("Q8_0", "Q5_0", 1024, 768), ("Q4_K", "Q6_K", 1024, 768)])
def test_gpu_fused_ffn_block_matches_its_two_launches_and_the_reference(tmp_path, monkeypatch, gate_type, down_type, hidden, ffn):
    """At one and two rows the FFN block runs as one launch (src/backend/cuda/ffn.rs, matvec_mma.cu's
    ffn_mma_1 and ffn_mma_2: gate/up, SwiGLU and ffn_down, the intermediate values exchanged within
    clusters of blocks). With the test model's widths and ffn_down of both its types, and the widest
    shape the kernel takes (1024 columns: 64 ffn_down tile rows) with gate/up of 128-column tiles
    (Q8_0, whose ffn_down tiles load after the gate/up products) and 256-column ones (Q4_K), a
    prompt then five decode steps of one sequence, and two sequences decoding together for four:
    the launches ran (the counter; none with FERRITE_CUDA_FFN=off), the decode logits are those of
    the two launches up to float32 rounding (ffn_down's sums add up by slices of 256 columns instead
    of column splits), and both are within RELATIVE_BOUND of the float64 forward."""
    n_heads = hidden // 64
    path = write_block_model(tmp_path / "m.gguf", gate_type, hidden=hidden, ffn=ffn, n_heads=n_heads, n_kv_heads=2, n_layers=3, context=128, seed=31,
                             layer_types={"ffn_down.weight": down_type})
    rng = np.random.default_rng(3)
    prompts = [[int(t) for t in rng.integers(0, 260, size=n)] for n in (11, 7)]
    steps = [int(t) for t in rng.integers(0, 260, size=5)]
    pair_steps = [[int(t) for t in rng.integers(0, 260, size=2)] for _ in range(4)]
    got, launches = {}, {}
    for flag in ("fused", "off"):
        monkeypatch.setenv("FERRITE_CUDA_FFN", flag)  # read when the model loads
        before = ferrite._ferrite._cuda_counters()["ffn_launches"]
        # exact_matmul: the prompts too on float32 paths (by default they take the f16 GEMMs, whose
        # rounding the decode steps then attend over); a float32 cache likewise.
        m = ferrite.Model.load(path, device="cuda", exact_matmul=True, kv_cache_dtype="float32")
        s = m.new_sequence(max_tokens=40)
        m.forward(prompts[0], seq=s)
        one = np.concatenate([m.forward([t], seq=s) for t in steps])
        launches[flag] = ferrite._ferrite._cuda_counters()["ffn_launches"] - before
        seqs = [m.new_sequence(max_tokens=40) for _ in prompts]
        for q, p in zip(seqs, prompts):
            m.forward(p, seq=q)
        two = np.stack([np.concatenate(m.forward_batch([[t] for t in st], seqs=seqs)) for st in pair_steps])
        launches[flag, 2] = ferrite._ferrite._cuda_counters()["ffn_launches"] - before - launches[flag]
        got[flag] = (one, two)
        del m
    # Every layer of each step run directly (recorded graphs' replays are not counted).
    assert launches["off"] == launches["off", 2] == 0, launches
    assert launches["fused"] >= 3 and launches["fused"] % 3 == 0 and launches["fused", 2] >= 3 and launches["fused", 2] % 3 == 0, launches
    ref = ReferenceModel(path)
    want_one = np.stack([ref.forward(prompts[0] + steps[: i + 1])[-1] for i in range(len(steps))])
    want_two = np.stack([[ref.forward(p + [st[j] for st in pair_steps[: i + 1]])[-1] for j, p in enumerate(prompts)] for i in range(len(pair_steps))])
    for (fused, off), want in zip(zip(got["fused"], got["off"]), (want_one, want_two)):
        assert relative(fused, off) <= 1e-6, relative(fused, off)
        for ours in (fused, off):
            assert relative(ours, want) <= RELATIVE_BOUND, relative(ours, want)
            assert decisive_top1(ours.reshape(-1, ours.shape[-1]), want.reshape(-1, want.shape[-1])) == 1.0


# ---------------------------------------------------------------- the f16 KV cache


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("flash,rope_in_attention", [("1", "1"), ("0", "0")])
def test_gpu_f16_kv_cache_rounds_keys_and_values(tmp_path, monkeypatch, arch, flash, rope_in_attention):
    """``kv_cache_dtype="float16"`` on the GPU stores each key (after RoPE) and value rounded to
    f16, as the CPU's cache does: against the float64 reference that rounds them the same way
    (NumPy's float16), a prompt in one forward and then tokens one at a time, within 2 % of what
    the rounding itself moves the logits (weights of a wide spread make that about 1 % of their
    range; the CPU's cache is within 0.5 % of it, see test_model.py). A float32 cache would be a
    whole rounding away, so the test fails if the f16 kernels did not run. Both prompt kernels
    (attention_prefill.cu, and attention.cu's with FERRITE_CUDA_FLASH_PREFILL=0), and both
    decode paths (RoPE and the cache write inside the attention kernel, and rope_store before
    it with FERRITE_CUDA_ROPE_IN_ATTENTION=0)."""
    monkeypatch.setenv("FERRITE_CUDA_FLASH_PREFILL", flash)  # read when the model loads
    monkeypatch.setenv("FERRITE_CUDA_ROPE_IN_ATTENTION", rope_in_attention)  # read when the model loads
    path = write_tiny_model(tmp_path / "tiny.gguf", arch=arch, matrix_type="F32", tied=arch == "llama", biases=arch == "qwen2", spread=1.0)
    ids = [int(t) for t in np.random.default_rng(3).integers(0, VOCAB, size=CONTEXT)]
    m = ferrite.Model.load(path, device="cuda", exact_matmul=True, kv_cache_dtype="float16")
    assert m.kv_cache_dtype == "float16"
    ref16 = ReferenceModel(path, kv_dtype="float16").forward(ids)
    rounding = relative(ref16, ReferenceModel(path).forward(ids))
    assert rounding > 1e-3, "the synthetic model hides the f16 rounding: not a useful check"
    prefill = m.forward(ids)
    seq = m.new_sequence(max_tokens=len(ids))
    decode = np.concatenate([m.forward(ids[:3], seq=seq)] + [m.forward([t], seq=seq) for t in ids[3:]])
    m.free_sequence(seq)
    for what, got in (("prefill", prefill), ("decode", decode)):
        rel = relative(got, ref16)
        print(f"{arch} {what}: {rel:.2e} against the rounding reference; the rounding moves it {rounding:.2e}")
        assert rel <= 0.02 * rounding, what
        assert decisive_top1(got, ref16) == 1.0, what


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("kv_cache_dtype", ["float32", "float16"])
def test_gpu_decode_attention_with_rope_gives_the_bits_of_rope_store_then_attention(tmp_path, monkeypatch, kv_cache_dtype):
    """A decode step's attention kernel also rotates q and the new key and writes the new key and
    value into the cache (attention_heads_rope), reading this step's own key and value from
    shared memory as the cache will hold them: the same bits as rope_store followed by the
    attention kernel (FERRITE_CUDA_ROPE_IN_ATTENTION=0), for either cache type, over two
    sequences decoding together for 5 steps after their prompts (two rows: the projections take
    the matrix-vector kernels either way, so only the attention's path differs)."""
    path = write_tiny_model(tmp_path / "tiny.gguf", arch="qwen2", matrix_type="F32", tied=False, biases=True, spread=1.0)
    rng = np.random.default_rng(5)
    prompts = [[int(t) for t in rng.integers(0, VOCAB, size=n)] for n in (9, 20)]
    steps = [[int(t) for t in rng.integers(0, VOCAB, size=2)] for _ in range(5)]
    got = {}
    for inside in ["1", "0"]:
        monkeypatch.setenv("FERRITE_CUDA_ROPE_IN_ATTENTION", inside)  # read when the model loads
        m = ferrite.Model.load(path, device="cuda", exact_matmul=True, kv_cache_dtype=kv_cache_dtype)
        assert m.kv_cache_dtype == kv_cache_dtype
        seqs = [m.new_sequence(max_tokens=len(p) + 8) for p in prompts]
        for s, p in zip(seqs, prompts):
            m.forward(p, seq=s)
        got[inside] = [np.concatenate(m.forward_batch([[t] for t in step], seqs=seqs)) for step in steps]
        del m
    for a, b in zip(got["1"], got["0"]):
        assert np.array_equal(a, b)


def assert_decode_attention_kernels_agree(monkeypatch, path, prompts, steps, kv_cache_dtype):
    """The prompts, then the sequences decoding ``steps`` together: each step's logits with RoPE
    inside the attention kernel, on attention_heads_rope_1w8 (where it takes the launch) and on the
    16-warp kernel (FERRITE_CUDA_ATTN_W8=0), bit for bit those of rope_store followed by the plain
    attention kernel (FERRITE_CUDA_ROPE_IN_ATTENTION=0). Both variables are read when the model
    loads."""
    got = {}
    for inside, w8 in [("1", "1"), ("1", "0"), ("0", "1")]:
        monkeypatch.setenv("FERRITE_CUDA_ROPE_IN_ATTENTION", inside)
        monkeypatch.setenv("FERRITE_CUDA_ATTN_W8", w8)
        m = ferrite.Model.load(path, device="cuda", kv_cache_tokens=1024, exact_matmul=True, kv_cache_dtype=kv_cache_dtype)
        seqs = [m.new_sequence(max_tokens=len(p) + 8) for p in prompts]
        for s, p in zip(seqs, prompts):
            m.forward(p, seq=s, last_only=True)
        got[inside, w8] = [np.concatenate(m.forward_batch([[t] for t in step], seqs=seqs)) for step in steps]
        del m
    for kernel in [("1", "1"), ("1", "0")]:
        for i, (a, b) in enumerate(zip(got[kernel], got["0", "1"])):
            assert np.array_equal(a, b), f"{kernel} step {i}: max |diff| {np.abs(a - b).max():.3e}"


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("kv_cache_dtype", ["float32", "float16"])
@pytest.mark.parametrize("splits", ["1", "3"])
@pytest.mark.parametrize("hidden,n_heads", [(896, 14), (640, 8), (1024, 8)])
def test_gpu_decode_attention_of_preloaded_keys_gives_the_bits_of_rope_store_then_attention(tmp_path, monkeypatch, kv_cache_dtype, splits, hidden, n_heads):
    """The one-head decode attention kernel loads each warp's first 32 keys before it waits
    (kernels/attention.cu, ATTN_PRELOAD): their slots, key rows (the first 64 values of a wider
    row, the rest after the wait) and first value rows, the new token's slot included (replaced
    from shared memory after the wait). With heads of 64 dims (the test model's: two value dims a
    lane), 80 (three, the last partly empty) and 128 (a 7B's: half the key row preloaded), and
    contexts around the 32-key chunks (31, 32, 33: a warp whose first key is the new token; 70,
    200: several warps), unsplit and with 3 flash-decoding splits, five sequences
    decoding together for 4 steps: the same bits as rope_store followed by the plain attention
    kernel (FERRITE_CUDA_ROPE_IN_ATTENTION=0), which loads nothing early. The blocks have at most 8
    warps, so the step takes attention_heads_rope_1w8 (all of a chunk's values loaded before the
    wait); with FERRITE_CUDA_ATTN_W8=0 it takes the 16-warp kernel, and both give those bits."""
    monkeypatch.setenv("FERRITE_CUDA_ATTN_SPLITS", splits)  # read when the model loads
    path = write_block_model(tmp_path / "m.gguf", "Q8_0", hidden=hidden, ffn=256, n_heads=n_heads, n_kv_heads=2, context=512, seed=4)
    rng = np.random.default_rng(13)
    prompts = [[int(t) for t in rng.integers(0, 260, size=n)] for n in (31, 32, 33, 70, 200)]
    steps = [[int(t) for t in rng.integers(0, 260, size=len(prompts))] for _ in range(4)]
    assert_decode_attention_kernels_agree(monkeypatch, path, prompts, steps, kv_cache_dtype)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("splits", ["1", "3"])
def test_gpu_f16_kv_cache_several_sequences_and_long_contexts(tmp_path, monkeypatch, splits):
    """An f16 cache with the test model's head shape (14 query heads over 2 KV heads of 64):
    contexts of about 700, 300 and 40 keys from prompts on the prefill kernel, then decoding
    together for 4 steps, unsplit and with 3 flash-decoding splits (empty ranges for the short
    contexts). Each sequence's logits at every step against the float64 reference that rounds K
    and V to f16, within 30 % of what the rounding itself moves them: the CPU's f16 cache is 11-16
    % of it away here (keys and values whose float32 and float64 values round to neighbouring f16
    numbers), a float32 cache all of it."""
    monkeypatch.setenv("FERRITE_CUDA_ATTN_SPLITS", splits)  # read when the model loads
    path = write_block_model(tmp_path / "m.gguf", "Q8_0", hidden=896, ffn=256, n_heads=14, n_kv_heads=2, context=1024, seed=3)
    rng = np.random.default_rng(11)
    prompts = [[int(t) for t in rng.integers(0, 260, size=n)] for n in (700, 300, 40)]
    steps = [[int(t) for t in rng.integers(0, 260, size=3)] for _ in range(4)]
    m = ferrite.Model.load(path, device="cuda", kv_cache_tokens=2048, exact_matmul=True, kv_cache_dtype="float16")
    seqs = [m.new_sequence(max_tokens=len(p) + 8) for p in prompts]
    for s, p in zip(seqs, prompts):
        m.forward(p, seq=s, last_only=True)
    got = [np.concatenate(m.forward_batch([[t] for t in step], seqs=seqs)) for step in steps]
    ref, ref16 = ReferenceModel(path), ReferenceModel(path, kv_dtype="float16")
    for i, p in enumerate(prompts):
        ids = p + [step[i] for step in steps]
        want = ref16.forward(ids)[len(p):]
        rounding = relative(want, ref.forward(ids)[len(p):])
        ours = np.stack([g[i] for g in got])
        print(f"sequence {i}: {relative(ours, want):.2e} against the rounding reference; the rounding moves it {rounding:.2e}")
        assert relative(ours, want) <= 0.3 * rounding, i


# ---------------------------------------------------------------- the real model on the GPU


@pytest.fixture(scope="module")
def real_path():
    return ferrite.fetch_test_model()


@pytest.fixture(scope="module")
def real_models(real_path):
    gpu = ferrite.Model.load(real_path, device="cuda", kv_cache_tokens=4096, exact_matmul=True)
    cpu = ferrite.Model.load(real_path, device="cpu", kv_cache_tokens=4096, exact_matmul=True)
    return gpu, cpu


@pytest.mark.cuda
@pytest.mark.model
@needs_gpu
def test_real_model_gpu_default_path_is_close_to_the_float64_reference(real_path):
    """The default GPU model (f16 GEMM for more than 4 rows): prefill, one token at a time, and 16
    sequences decoding together, each within REAL_DEFAULT_MAX_ABS of the float64 forward pass."""
    m = ferrite.Model.load(real_path, device="cuda", kv_cache_tokens=4096)
    reference = ReferenceModel(real_path)
    for name, text in PROMPTS.items():
        ids = token_ids(real_path, text)
        ref = reference.forward(ids)
        seqs = [m.new_sequence(max_tokens=len(ids) + 1) for _ in range(16)]
        batch = np.concatenate([m.forward_batch([[t]] + [[(t + 7 * j) % 5000] for j in range(1, 16)], seqs=seqs)[0] for t in ids])
        for s in seqs:
            m.free_sequence(s)
        for path, got in (("prefill", m.forward(ids)), ("batch16", batch)):
            diff = float(np.abs(got.astype(np.float64) - ref).max())
            report({"kind": "real_default_vs_reference", "prompt": name, "path": path, "max_abs_diff": diff})
            print(f"\n{name} {path}: max |diff| vs float64 {diff:.3e}")
            assert diff <= REAL_DEFAULT_MAX_ABS, (name, path, diff)
            assert decisive_top1(got, ref) == 1.0


@pytest.mark.cuda
@pytest.mark.model
@needs_gpu
@pytest.mark.parametrize("name", list(PROMPTS))
def test_real_model_gpu_logits_match_cpu(real_models, real_path, name):
    gpu, cpu = real_models
    ids = token_ids(real_path, PROMPTS[name])
    g, c = gpu.forward(ids), cpu.forward(ids)
    rel = relative(g, c)
    top1 = float((g.argmax(-1) == c.argmax(-1)).mean())
    report({"kind": "real_logits", "prompt": name, "tokens": len(ids), "rel_vs_cpu": rel, "top1": top1,
            "max_abs_diff": float(np.abs(g.astype(np.float64) - c).max())})
    print(f"\n{name}: {len(ids)} tokens, relative max diff {rel:.2e}, top-1 agreement {top1:.3f}")
    assert np.isfinite(g).all()
    assert rel <= RELATIVE_BOUND
    assert decisive_top1(g, c) == 1.0


@pytest.mark.cuda
@pytest.mark.model
@needs_gpu
def test_real_model_gpu_greedy_continuation_matches_cpu(real_models, real_path):
    """32 greedy tokens, each device feeding back its own choices: identical, or diverging only
    where the CPU's top two logits are closer than the largest GPU-CPU difference seen."""
    gpu, cpu = real_models
    prompt = token_ids(real_path, PROMPTS["chat"])
    outs, rows = [], []
    for m in (gpu, cpu):
        s = m.new_sequence(max_tokens=len(prompt) + 40)
        logits = m.forward(prompt, last_only=True, seq=s)[0]
        toks, seen = [], []
        for _ in range(32):
            seen.append(logits)
            toks.append(int(np.argmax(logits)))
            logits = m.forward([toks[-1]], last_only=True, seq=s)[0]
        m.free_sequence(s)
        outs.append(toks)
        rows.append(np.array(seen))
    same = next((i for i in range(32) if outs[0][i] != outs[1][i]), 32)
    report({"kind": "real_greedy", "same": same, "of": 32})
    print(f"\ngreedy: {same}/32 identical; gpu {outs[0]}\ncpu {outs[1]}")
    if same < 32:
        diff = np.abs(rows[0][: same + 1] - rows[1][: same + 1]).max()
        top2 = np.sort(rows[1][same])[-2:]
        assert top2[1] - top2[0] <= 2 * diff, f"diverged at {same} with a decisive CPU choice"
