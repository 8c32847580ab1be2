"""GgufFile against gguf-py's reader, and every kind of malformed file against a clear error."""

from __future__ import annotations

import gc
import struct

import gguf
import numpy as np
import pytest

import ferrite
from gguf_builder import ARRAY, BOOL, F32, F32V, F64, I8, I16, I32, I64, Q8_0, STRING, U8, U16, U32, U64, GgufImage

RNG = np.random.default_rng(1234)


def write(tmp_path, img: bytes, name="m.gguf"):
    p = tmp_path / name
    p.write_bytes(img)
    return p


def every_value_kind() -> GgufImage:
    f32_data = RNG.standard_normal(12).astype(np.float32)
    q8 = bytearray(RNG.integers(0, 256, 34 * 3, dtype=np.uint8).tobytes())
    for b in range(3):  # finite f16 scales
        q8[b * 34 : b * 34 + 2] = np.float16(RNG.uniform(0.01, 1)).tobytes()
    return (
        GgufImage()
        .kv_str("general.architecture", "llama")
        .kv("u8", U8, 200)
        .kv("i8", I8, -100)
        .kv("u16", U16, 60000)
        .kv("i16", I16, -30000)
        .kv("u32", U32, 4_000_000_000)
        .kv("i32", I32, -2_000_000_000)
        .kv("f32", F32V, 1.5)
        .kv("bool", BOOL, True)
        .kv("u64", U64, 2**63 + 5)
        .kv("i64", I64, -(2**62))
        .kv("f64", F64, 0.1)
        .kv_str("unicode", "héllo, 世界 🌍")
        .kv("strings", ARRAY, (STRING, ["a", "", "ß", "<|im_end|>"]))
        .kv("ints", ARRAY, (I32, [1, -2, 3]))
        .kv("empty", ARRAY, (U8, []))
        .kv("nested", ARRAY, (ARRAY, [(U8, [1, 2]), (STRING, ["x"])]))
        .tensor("matrix", [4, 3], F32, f32_data.tobytes())
        .tensor("q8", [32, 3], Q8_0, bytes(q8))
    )


def test_metadata_and_tensors_match_gguf_py(tmp_path):
    path = write(tmp_path, every_value_kind().build())
    f = ferrite.GgufFile(path)
    ref = gguf.GGUFReader(path)
    assert f.version == 3 and f.alignment == 32
    md = f.metadata
    assert list(md)[0] == "general.architecture"
    for name, field in ref.fields.items():
        if name.startswith("GGUF."):
            continue
        if name == "nested":
            continue  # gguf-py's contents() flattens nested arrays; checked below
        expected = field.contents()
        got = md[name]
        if isinstance(expected, float):
            assert got == pytest.approx(expected, rel=1e-7), name
        else:
            assert got == expected, name
    assert md["nested"] == [[1, 2], ["x"]]
    assert md["u64"] == 2**63 + 5 and md["f32"] == 1.5 and md["bool"] is True
    # The mapping is built once and is read-only.
    assert f.metadata is md
    with pytest.raises(TypeError):
        md["u8"] = 1
    assert list(f.tensors) == ["matrix", "q8"]
    for t in ref.tensors:
        info = f.tensors[t.name]
        assert info.shape == list(reversed([int(d) for d in t.shape]))
        assert info.ggml_type == t.tensor_type.name
        assert info.n_bytes == t.n_bytes
        assert info.file_offset == t.data_offset
        np.testing.assert_array_equal(f.raw(t.name), np.asarray(t.data).view(np.uint8).ravel())
    np.testing.assert_array_equal(f.tensor("matrix"), np.asarray(ref.tensors[0].data).reshape(3, 4))


def test_raw_is_a_read_only_view_that_outlives_the_file(tmp_path):
    path = write(tmp_path, every_value_kind().build())
    with ferrite.GgufFile(path) as f:
        raw = f.raw("matrix")
        expected = f.tensor("matrix").copy()
        assert repr(f).startswith("<GgufFile") and "tensors=2" in repr(f)
    assert "closed" in repr(f)
    with pytest.raises(ValueError, match="closed"):
        f.tensor("matrix")
    del f
    gc.collect()
    assert not raw.flags.writeable and not raw.flags.owndata
    np.testing.assert_array_equal(raw.view(np.float32).reshape(3, 4), expected)
    with pytest.raises(ValueError):
        raw[0] = 1


def test_missing_names_raise_key_errors(tmp_path):
    f = ferrite.GgufFile(write(tmp_path, every_value_kind().build()))
    with pytest.raises(ferrite.KeyNotFoundError, match="nope"):
        f.tensor("nope")
    with pytest.raises(KeyError):
        f.raw("nope")
    assert "matrix" in f and "nope" not in f and len(f) == 2


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        ferrite.GgufFile(tmp_path / "absent.gguf")


def test_a_directory_or_a_special_file_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match=f"^{tmp_path}: is a directory, not a GGUF file$"):
        ferrite.GgufFile(tmp_path)
    with pytest.raises(OSError, match="^/dev/null: is not a regular file"):
        ferrite.GgufFile("/dev/null")


@pytest.mark.parametrize("magic", [b"\x7fELF", b"# fe", b'P"\\\n', b"GGML"])
def test_bad_magic_is_shown_as_a_bytes_literal_and_names_the_file(tmp_path, magic):
    path = write(tmp_path, magic + valid_image()[4:])
    with pytest.raises(ferrite.GgufError) as err:
        ferrite.GgufFile(path)
    # Python's own rendering of the bytes, in double quotes.
    literal = "b" + '"' + repr(magic)[2:-1].replace('"', '\\"') + '"'
    if "'" in repr(magic)[2:-1]:
        pytest.fail("choose magics without a single quote")
    assert str(err.value).startswith(f'{path}: not a GGUF file: it starts with {literal}, not b"GGUF"'), str(err.value)


def test_version_2_is_read(tmp_path):
    img = every_value_kind()
    img.version = 2
    f = ferrite.GgufFile(write(tmp_path, img.build()))
    assert f.version == 2 and f.metadata["u8"] == 200


def test_custom_alignment(tmp_path):
    img = GgufImage(alignment=64).kv("general.alignment", U32, 64)
    img.tensor("a", [3], F32, np.arange(3, dtype=np.float32).tobytes()).tensor("b", [2], F32, np.ones(2, np.float32).tobytes())
    f = ferrite.GgufFile(write(tmp_path, img.build()))
    assert f.alignment == 64 and f.data_offset % 64 == 0 and f.tensors["b"].offset == 64
    np.testing.assert_array_equal(f.tensor("b"), [1, 1])


# ---- malformed files: each must raise a GgufError that names the problem ----

def valid_image() -> bytes:
    return every_value_kind().build()


def malformed_cases():
    good = valid_image()
    yield "bad magic", b"GGML" + good[4:], 'it starts with b"GGML", not b"GGUF"'
    yield "empty file", b"", "truncated at byte 0"
    yield "version 1", good[:4] + struct.pack("<I", 1) + good[8:], "version 1"
    yield "version 4", good[:4] + struct.pack("<I", 4) + good[8:], "version 4"
    yield "big-endian", good[:4] + struct.pack(">I", 3) + good[8:], "big-endian"
    yield "absurd tensor count", every_value_kind().build(n_tensors=2**60), "tensor info count"
    yield "absurd metadata count", every_value_kind().build(n_kv=2**62), "metadata entry count"
    yield "string length past the end", GgufImage().kv_raw("k", struct.pack("<IQ", STRING, 2**40) + b"abc").build(), "value of \"k\""
    yield "key length past the end", GgufImage().kv_raw(b"", b"").build()[:24] + struct.pack("<Q", 10**12) + b"\0" * 32, "key of metadata entry 0"
    yield "absurd array count", GgufImage().kv_raw("arr", struct.pack("<IIQ", ARRAY, U32, 2**61)).build(), "array \"arr\" element count"
    yield "absurd string array count", GgufImage().kv_raw("arr", struct.pack("<IIQ", ARRAY, STRING, 2**59)).build(), "array \"arr\""
    nested = struct.pack("<I", ARRAY)
    for _ in range(20):
        nested += struct.pack("<IQ", ARRAY, 1)
    yield "arrays nested too deep", GgufImage().kv_raw("deep", nested).build(), "nested deeper"
    yield "unknown value type", GgufImage().kv_raw("k", struct.pack("<I", 99) + b"\0" * 8).build(), "unknown value type id 99"
    yield "bad bool", GgufImage().kv_raw("flag", struct.pack("<IB", BOOL, 7)).build(), "bool byte is 7"
    yield "invalid utf-8 key", GgufImage().kv(b"bad\xff\xfekey", U8, 1).build(), "not valid UTF-8"
    yield "invalid utf-8 value", GgufImage().kv("name", STRING, b"\xc3\x28").build(), "value of \"name\" is not valid UTF-8"
    yield "duplicate key", GgufImage().kv("k", U8, 1).kv("k", U8, 2).build(), "duplicate metadata key \"k\""
    yield "alignment not a power of two", GgufImage().kv("general.alignment", U32, 24).build(), "power of two"
    yield "alignment zero", GgufImage().kv("general.alignment", U32, 0).build(), "power of two"
    f32 = np.zeros(4, np.float32).tobytes()
    yield "duplicate tensor", GgufImage().tensor("t", [4], F32, f32).tensor("t", [4], F32, f32).build(), "duplicate tensor name \"t\""
    yield "unknown tensor type", GgufImage().tensor("t", [4], 31, f32).build(), "unknown ggml type id 31"
    yield "too many dims", GgufImage().tensor("t", [1, 1, 1, 1, 4], F32, f32).build(), "5 dimensions"
    yield "zero dims", GgufImage().tensor("t", [], F32, f32).build(), "0 dimensions"
    yield "zero-length dim", GgufImage().tensor("t", [4, 0], F32, f32).build(), "out of range"
    yield "dims overflow", GgufImage().tensor("t", [2**32, 2**32, 4], F32, f32).build(), "overflow"
    yield "bytes overflow", GgufImage().tensor("t", [2**31, 2**31], F32, f32).build(), "overflow"
    yield "partial block", GgufImage().tensor("t", [40], Q8_0, b"\0" * 34).build(), "not a multiple of the 32-element blocks"
    yield "tensor data past the end", GgufImage().tensor("t", [1024], F32, f32).build(), "past the end of the file"
    yield "offset past the end", GgufImage().tensor("t", [4], F32, f32, offset=2**40).build(), "past the end of the file"
    yield "offset overflow", GgufImage().tensor("t", [4], F32, f32, offset=2**64 - 32).build(), "past the end of the file"
    yield "misaligned offset", GgufImage().tensor("t", [4], F32, f32 * 2, offset=4).build(), "not a multiple of the alignment 32"
    yield "tensor name past the end", GgufImage().tensor("t", [4], F32, f32).build()[:24] + struct.pack("<Q", 2**50) + b"\0" * 32, "name of tensor 0"


CASES = list(malformed_cases())


@pytest.mark.parametrize("name,img,message", CASES, ids=[c[0] for c in CASES])
def test_malformed_file_raises_clear_error(tmp_path, name, img, message):
    path = write(tmp_path, img)
    with pytest.raises(ferrite.GgufError) as err:
        ferrite.GgufFile(path)
    assert message in str(err.value), f"{name}: {err.value}"
    assert str(err.value).startswith(f"{path}: "), "the error names the file"
    assert isinstance(err.value, ferrite.FerriteError) and isinstance(err.value, ValueError)


def test_every_truncation_raises(tmp_path):
    good = valid_image()
    ferrite.GgufFile(write(tmp_path, good))  # the whole file is valid
    path = tmp_path / "cut.gguf"
    for n in range(len(good)):
        path.write_bytes(good[:n])
        with pytest.raises(ferrite.GgufError) as err:
            ferrite.GgufFile(path)
        msg = str(err.value)
        assert "truncated" in msg or "past the end" in msg or "impossible" in msg, (n, msg)


def test_random_corruption_never_crashes(tmp_path):
    """Flip random bytes of a valid file: each result is either a parsed file or a GgufError."""
    good = bytearray(valid_image())
    path = tmp_path / "fuzz.gguf"
    rng = np.random.default_rng(7)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(3000):
        img = bytearray(good)
        for _ in range(rng.integers(1, 6)):
            pos = rng.integers(0, len(img))
            img[pos] = rng.integers(0, 256)
        path.write_bytes(bytes(img))
        try:
            f = ferrite.GgufFile(path)
            for name in f.tensors:
                f.raw(name)
            f.metadata
            outcomes["ok"] += 1
        except ferrite.GgufError:
            outcomes["error"] += 1
    assert outcomes["error"] > 0 and outcomes["ok"] > 0, outcomes
