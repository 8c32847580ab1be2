"""Dequantization of every ggml type against gguf-py's NumPy reference, bit for bit.

Random blocks: random bytes with the float scale fields overwritten by finite values of
realistic magnitude (a random f16 scale field could be inf/NaN, which is no valid tensor).
Every value ferrite produces must equal gguf-py's float32 bit pattern exactly; both sides do
the same IEEE operations in the same order, so there is no rounding slack to allow.
"""

from __future__ import annotations

import numpy as np
import pytest

import ferrite
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf import quants as gq

from block_layouts import F16_SCALE_FIELDS, set_iq1m_scale

Q = GGMLQuantizationType

# Types whose whole payload is valid for any bits, or that get special scale handling below.
SPECIAL = ("F32", "F16", "BF16", "IQ1_M", "MXFP4", "NVFP4")
BLOCK_TYPES = sorted(F16_SCALE_FIELDS) + list(SPECIAL)
UNSUPPORTED = ("Q8_1", "Q8_K", "Q1_0", "I8", "I16", "I32", "I64", "F64")


def random_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite f16 values of either sign, magnitudes 2^-14 .. 2 (normal range, like real scales)."""
    mag = np.exp2(rng.uniform(-14, 1, n))
    return (mag * rng.choice([-1.0, 1.0], n)).astype(np.float16)


def random_blocks(type_name: str, n_rows: int, n_cols: int, seed: int) -> np.ndarray:
    """`n_rows` rows of `n_cols` elements of `type_name` as uint8 of shape (n_rows, row_bytes)."""
    rng = np.random.default_rng(seed)
    qtype = Q[type_name]
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    n_blocks = n_rows * n_cols // block_elems
    if type_name == "F32":
        vals = rng.standard_normal(n_rows * n_cols).astype(np.float32)
        return vals.view(np.uint8).reshape(n_rows, -1)
    if type_name == "F16":
        return random_f16(rng, n_rows * n_cols).view(np.uint8).reshape(n_rows, -1)
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    if type_name == "BF16":
        bits = raw.view(np.uint16)
        # An all-ones exponent is inf/NaN: clear one exponent bit there to stay finite.
        bits[(bits & 0x7F80) == 0x7F80] &= np.uint16(0xBFFF)
    elif type_name == "MXFP4":
        raw[:, 0] = rng.integers(100, 150, n_blocks)  # E8M0 exponents 2^-27 .. 2^22
    elif type_name == "IQ1_M":
        # The f16 scale is spread over the top nibble of the 4 u16 scale words at bytes 48..56.
        set_iq1m_scale(raw, random_f16(rng, n_blocks).view(np.uint16))
    elif type_name == "NVFP4":
        pass  # every UE4M3 byte decodes to a finite scale
    else:
        for off in F16_SCALE_FIELDS[type_name]:
            raw[:, off:off + 2] = random_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(n_rows, -1)


def reference(raw: np.ndarray, type_name: str) -> np.ndarray:
    return np.asarray(gq.dequantize(raw, Q[type_name]), dtype=np.float32)


def assert_bit_identical(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == np.float32 and want.dtype == np.float32, what
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    g, w = np.ascontiguousarray(got).view(np.uint32), np.ascontiguousarray(want).view(np.uint32)
    if not np.array_equal(g, w):
        bad = np.flatnonzero(g.ravel() != w.ravel())
        i = bad[0]
        raise AssertionError(
            f"{what}: {bad.size} of {g.size} elements differ; first at flat index {i}: "
            f"ferrite {got.ravel()[i]!r} vs gguf-py {want.ravel()[i]!r}"
        )


def gguf_py_has(type_name: str) -> bool:
    return hasattr(Q, type_name) and (Q[type_name] in gq._type_traits or type_name in ("F32", "F16"))


@pytest.mark.parametrize("type_name", BLOCK_TYPES)
@pytest.mark.parametrize("n_rows", [1, 3, 7])
def test_random_blocks_bit_identical_to_gguf_py(type_name: str, n_rows: int) -> None:
    if not gguf_py_has(type_name):
        pytest.skip(f"installed gguf-py has no {type_name} reference (needs gguf>=0.19)")
    block_elems = GGML_QUANT_SIZES[Q[type_name]][0]
    for k, n_blocks_per_row in enumerate((1, 3, 896 // 32 if block_elems == 32 else 19)):
        n_cols = block_elems * n_blocks_per_row if block_elems > 1 else (1, 5, 896)[k]
        raw = random_blocks(type_name, n_rows, n_cols, seed=1000 * n_rows + k)
        want = reference(raw, type_name)
        got = ferrite.dequantize(raw, type_name, (n_rows, n_cols))
        assert_bit_identical(got, want, f"{type_name} {n_rows}x{n_cols}")
        # Same bytes as `bytes`, and flattened to one dimension.
        flat = ferrite.dequantize(raw.tobytes(), Q[type_name].value, (n_rows * n_cols,))
        assert_bit_identical(flat, want.ravel(), f"{type_name} flat {n_rows * n_cols}")
        assert np.any(got != 0), f"{type_name}: all zeros from random blocks"


@pytest.mark.parametrize("type_name", [t for t in BLOCK_TYPES if t not in ("F32", "F16", "BF16")])
def test_large_tensor_uses_parallel_path_and_stays_identical(type_name: str) -> None:
    """Big enough to be split into several parallel chunks, with a ragged last chunk."""
    if not gguf_py_has(type_name):
        pytest.skip(f"installed gguf-py has no {type_name} reference")
    block_elems = GGML_QUANT_SIZES[Q[type_name]][0]
    n_cols = block_elems * 7
    n_rows = (3 * 16384) // n_cols + 3
    raw = random_blocks(type_name, n_rows, n_cols, seed=7)
    assert_bit_identical(ferrite.dequantize(raw, type_name, (n_rows, n_cols)), reference(raw, type_name), type_name)


def test_block_geometry_matches_gguf_py() -> None:
    ours = {name: (elems, nbytes, tid) for name, tid, elems, nbytes in ferrite.ggml_types()}
    for qtype, (elems, nbytes) in GGML_QUANT_SIZES.items():
        assert qtype.name in ours, f"ferrite does not know {qtype.name}"
        if qtype.name == "Q8_1":
            # Known gguf-py defect: it lists 4 + 4 + 32 = 40 bytes (the old f32 d and s), but
            # ggml's block_q8_1 is { ggml_half d, s; int8 qs[32]; } with a static_assert of 36
            # bytes (ggml-common.h), and ggml defines the file layout. If gguf-py is fixed this
            # assertion fails and the exception should go.
            assert nbytes == 40 and ours["Q8_1"] == (32, 36, 9)
            continue
        assert ours[qtype.name] == (elems, nbytes, qtype.value), qtype.name
    # And nothing extra that gguf-py would not recognise.
    assert set(ours) <= {q.name for q in GGML_QUANT_SIZES}


def test_every_type_gguf_py_dequantizes_is_supported() -> None:
    dequantizable = {q.name for q in gq._type_traits} | {"F32", "F16"}
    assert dequantizable <= set(BLOCK_TYPES), dequantizable - set(BLOCK_TYPES)


@pytest.mark.parametrize("type_name", UNSUPPORTED)
def test_unsupported_types_raise_naming_the_type(type_name: str) -> None:
    elems, nbytes = GGML_QUANT_SIZES[Q[type_name]]
    raw = np.random.default_rng(0).integers(1, 256, size=4 * nbytes, dtype=np.uint8)
    with pytest.raises(ferrite.UnsupportedTypeError, match=type_name):
        ferrite.dequantize(raw, type_name, (4 * elems,))
    # Also a QuantError and a NotImplementedError, so either kind of handler catches it.
    with pytest.raises(ferrite.QuantError):
        ferrite.dequantize(raw, Q[type_name].value, (4 * elems,))
    with pytest.raises(NotImplementedError):
        ferrite.dequantize(raw, type_name, (4 * elems,))


def test_unknown_type_ids_and_names_raise() -> None:
    raw = np.ones(18, dtype=np.uint8)
    for bad in (4, 5, 31, 1000):
        with pytest.raises(ferrite.UnsupportedTypeError, match=str(bad)):
            ferrite.dequantize(raw, bad, (32,))
    with pytest.raises(ferrite.UnsupportedTypeError, match="Q9_9"):
        ferrite.dequantize(raw, "Q9_9", (32,))


def test_bad_sizes_raise_quant_error_naming_the_type() -> None:
    raw = random_blocks("Q4_K", 1, 256, seed=3)
    with pytest.raises(ferrite.QuantError, match="Q4_K.*300") as partial:
        ferrite.dequantize(np.zeros(144 * 2, np.uint8), "Q4_K", (300,))
    assert not isinstance(partial.value, ferrite.UnsupportedTypeError)
    with pytest.raises(ferrite.QuantError, match="Q4_K.*144.*143"):
        ferrite.dequantize(raw.ravel()[:143], "Q4_K", (256,))
    with pytest.raises(ferrite.QuantError, match="Q4_K"):
        ferrite.dequantize(np.concatenate([raw.ravel(), raw.ravel()]), "Q4_K", (256,))
    with pytest.raises(ferrite.QuantError, match="Q8_0.*34"):
        ferrite.dequantize(b"\x00" * 33, "Q8_0", (32,))


def test_unsupported_tensor_in_a_file_names_tensor_and_type(tmp_path) -> None:
    path = tmp_path / "int.gguf"
    w = GGUFWriter(str(path), "test")
    w.add_tensor("ids", np.arange(64, dtype=np.int32))
    w.add_tensor("scale", np.linspace(-1, 1, 32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = ferrite.GgufFile(path)
    assert f.tensors["ids"].ggml_type == "I32"
    with pytest.raises(ferrite.UnsupportedTypeError, match=r"ids.*I32|I32.*ids"):
        f.tensor("ids")
    np.testing.assert_array_equal(f.tensor("scale"), np.linspace(-1, 1, 32, dtype=np.float32))


@pytest.fixture(scope="module")
def model_path() -> str:
    return ferrite.fetch_test_model()


@pytest.mark.model
def test_every_tensor_of_the_real_model_matches_gguf_py(model_path: str) -> None:
    reader = GGUFReader(model_path)
    f = ferrite.GgufFile(model_path)
    assert len(reader.tensors) == len(f) == 291
    seen_types = set()
    for t in reader.tensors:
        got = f.tensor(t.name)
        shape = tuple(int(d) for d in reversed(t.shape))
        assert got.shape == shape, t.name
        data = np.asarray(t.data)
        # gguf-py's reference is slow on the two 136M-element matrices: feed it row chunks so
        # peak memory stays bounded; every row is still compared.
        rows = data.reshape(shape[0], -1) if data.ndim > 1 else data.reshape(1, -1)
        got2 = got.reshape(rows.shape[0], -1)
        step = 8192
        for r in range(0, rows.shape[0], step):
            want = np.asarray(gq.dequantize(rows[r:r + step], t.tensor_type), dtype=np.float32)
            assert_bit_identical(got2[r:r + step], want.reshape(got2[r:r + step].shape), f"{t.name} rows {r}..")
        seen_types.add(t.tensor_type.name)
    assert {"Q5_0", "Q8_0", "Q4_K", "Q6_K", "F32"} <= seen_types, seen_types
