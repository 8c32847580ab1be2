"""GPU dequantization and the CUDA entry points.

On machines without CUDA (CI) this checks that CUDA is reported absent and that asking for it
raises ferrite.CudaError with a clear message. With a GPU (`@pytest.mark.cuda`), every ggml type
is dequantized from random valid blocks on the GPU and compared bit for bit with the CPU path,
with the output buffer poisoned first (two different NaN patterns) so an element the kernel
never writes cannot pass, and with the blocks at odd byte offsets so aligned loads would fault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ferrite
from block_layouts import F16_SCALE_FIELDS, set_iq1m_scale

HAS_CUDA = ferrite.cuda_available()
cuda = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")

TYPES = {name: (type_id, block_elems, block_bytes) for name, type_id, block_elems, block_bytes in ferrite.ggml_types()}

# Byte offsets of f16 scale fields within each block (ggml layouts); they are overwritten with
# finite values so that the products are finite (NaN payloads differ between CPU and GPU
# arithmetic, and real files hold finite scales).
F16_FIELDS = {**F16_SCALE_FIELDS, "Q8_1": (0, 2)}
F32_FIELDS = {"Q8_K": [0]}
# Types whose blocks are valid for any bytes.
ANY_BYTES = {"F32", "F16", "BF16", "MXFP4", "NVFP4", "IQ1_M"}

POISONS = (0xFFC0FFEE, 0x7F800001)  # a quiet and a signalling NaN


def finite_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite halves over many magnitudes, subnormals included, both signs."""
    v = rng.standard_normal(n) * 10.0 ** rng.uniform(-7, 1, n)
    return v.astype(np.float16).view(np.uint16)


def random_blocks(name: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """`n_blocks` random valid blocks of type `name` as uint8."""
    _, _, block_bytes = TYPES[name]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    if name == "F64":
        vals = rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-300, 300, n_blocks)
        raw = vals.view(np.uint8).reshape(n_blocks, 8).copy()
        raw[: max(1, n_blocks // 7)] = rng.integers(0, 256, size=(max(1, n_blocks // 7), 8), dtype=np.uint8)
    elif name == "IQ1_M":
        # The f16 scale is spread over the top nibbles of the four u16 scale words.
        set_iq1m_scale(raw, finite_f16(rng, n_blocks))
    elif name in F16_FIELDS:
        for off in F16_FIELDS[name]:
            raw[:, off : off + 2] = finite_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    elif name in F32_FIELDS:
        for off in F32_FIELDS[name]:
            d = (rng.standard_normal(n_blocks) * 1e-3).astype(np.float32)
            raw[:, off : off + 4] = d.view(np.uint8).reshape(n_blocks, 4)
    return raw.reshape(-1)


def knows_layout(name: str) -> bool:
    return name in F16_FIELDS or name in F32_FIELDS or name in ANY_BYTES


def cpu_dequant(raw: np.ndarray, name: str, n_elems: int):
    """CPU result, or the exception class it raised for an unsupported type."""
    try:
        return ferrite.dequantize(raw, name, (n_elems,), device="cpu")
    except ferrite.UnsupportedTypeError:
        return ferrite.UnsupportedTypeError


def assert_bits_equal(cpu: np.ndarray, gpu: np.ndarray, label: str) -> None:
    c = np.ascontiguousarray(cpu).reshape(-1).view(np.uint32)
    g = np.ascontiguousarray(gpu).reshape(-1).view(np.uint32)
    assert c.shape == g.shape, f"{label}: {c.shape} vs {g.shape}"
    bad = np.flatnonzero(c != g)
    if bad.size:
        i = bad[0]
        raise AssertionError(
            f"{label}: {bad.size} of {c.size} elements differ; first at {i}: "
            f"cpu {cpu.reshape(-1)[i]!r} ({c[i]:#010x}) gpu {gpu.reshape(-1)[i]!r} ({g[i]:#010x})"
        )


def report(row: dict) -> None:
    """Appends a result row for scripts/gpu_check.sh's table."""
    path = os.environ.get("FERRITE_GPU_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------- everywhere (CI included)


def test_availability_queries_never_raise():
    available = ferrite.cuda_available()
    count = ferrite.cuda_device_count()
    assert isinstance(available, bool)
    assert isinstance(count, int) and count >= 0
    assert available == (count > 0)


def test_bad_device_names_are_rejected():
    raw = random_blocks("Q8_0", 1, np.random.default_rng(0))
    with pytest.raises(ferrite.CudaError, match="invalid device 'cuda:x'|invalid device \"cuda:x\""):
        ferrite.dequantize(raw, "Q8_0", (32,), device="cuda:x")
    with pytest.raises(ValueError, match="unknown device"):
        ferrite.dequantize(raw, "Q8_0", (32,), device="tpu")


@pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour on machines without CUDA")
def test_without_cuda_every_entry_point_raises_cuda_error(tmp_path):
    assert ferrite.cuda_available() is False
    assert ferrite.cuda_device_count() == 0
    raw = random_blocks("Q8_0", 4, np.random.default_rng(1))
    with pytest.raises(ferrite.CudaError, match="CUDA is not available") as e:
        ferrite.dequantize(raw, "Q8_0", (4, 32), device="cuda")
    assert "dequantize" in str(e.value)
    with pytest.raises(ferrite.CudaError, match="CUDA is not available"):
        ferrite.cuda_device_info("cuda:0")
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("w", raw.reshape(4, 34), raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # byte shape
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = ferrite.GgufFile(str(path))
    np.testing.assert_array_equal(f.tensor("w").shape, (4, 32))
    with pytest.raises(ferrite.CudaError, match="CUDA is not available") as e:
        f.tensor("w", device="cuda")
    assert "w" in str(e.value)


# ---------------------------------------------------------------- with a GPU

ROW_COUNTS = (1, 3, 17, 301)


@cuda
@needs_gpu
@pytest.mark.parametrize("name", sorted(TYPES, key=lambda n: TYPES[n][0]))
def test_gpu_matches_cpu_bit_for_bit(name):
    type_id, block_elems, block_bytes = TYPES[name]
    rng = np.random.default_rng(1000 + type_id)
    checked = 0
    for rows in ROW_COUNTS:
        blocks_per_row = 1 if block_elems > 1 else 33  # odd row length for element types
        n_blocks = rows * blocks_per_row
        n_elems = n_blocks * block_elems
        raw = random_blocks(name, n_blocks, rng)
        cpu = cpu_dequant(raw, name, n_elems)
        if cpu is ferrite.UnsupportedTypeError:
            with pytest.raises(ferrite.UnsupportedTypeError, match=name):
                ferrite.dequantize(raw, name, (n_elems,), device="cuda")
            report({"type": name, "identical": None, "elements": 0, "note": "UnsupportedTypeError on CPU and GPU"})
            return
        assert knows_layout(name), f"test does not know where the scales of {name} are: add it to F16_FIELDS"
        for poison, offset in zip(POISONS, (1, 3)):
            gpu = ferrite._ferrite._cuda_dequantize_poisoned(raw, name, n_elems, poison, offset)
            assert_bits_equal(cpu, gpu, f"{name} rows={rows} poison={poison:#x} offset={offset}")
        gpu = ferrite.dequantize(raw, name, (rows, n_elems // rows), device="cuda")
        assert gpu.shape == (rows, n_elems // rows) and gpu.dtype == np.float32
        assert_bits_equal(cpu, gpu, f"{name} rows={rows} via ferrite.dequantize")
        checked += n_elems
    report({"type": name, "identical": True, "elements": checked})


@cuda
@needs_gpu
def test_gpu_matches_gguf_py_reference_bitwise():
    """An independent reference: gguf-py's numpy dequantization, which performs the same IEEE
    operations in the same order, so it too must agree bit for bit."""
    gguf = pytest.importorskip("gguf")
    from gguf import quants

    rng = np.random.default_rng(7)
    compared = []
    for name, (type_id, block_elems, _) in TYPES.items():
        if block_elems == 1 or not knows_layout(name):
            continue
        raw = random_blocks(name, 8, rng)
        if cpu_dequant(raw, name, 8 * block_elems) is ferrite.UnsupportedTypeError:
            continue
        try:
            ref = np.asarray(quants.dequantize(raw, gguf.GGMLQuantizationType(type_id)), dtype=np.float32)
        except (NotImplementedError, ValueError):
            continue
        gpu = ferrite.dequantize(raw, name, (8 * block_elems,), device="cuda")
        assert_bits_equal(ref.reshape(-1), gpu, f"{name} vs gguf-py")
        compared.append(name)
    assert len(compared) >= 20, f"only {compared} compared with gguf-py"


@cuda
@needs_gpu
def test_gpu_errors_are_clear():
    raw = random_blocks("Q4_K", 2, np.random.default_rng(3))
    with pytest.raises(ferrite.QuantError, match="Q4_K"):
        ferrite.dequantize(raw[:-1], "Q4_K", (512,), device="cuda")
    with pytest.raises(ferrite.QuantError):
        ferrite.dequantize(raw, "Q4_K", (500,), device="cuda")
    n = ferrite.cuda_device_count()
    with pytest.raises(ferrite.CudaError, match=f"no CUDA device {n}"):
        ferrite.dequantize(raw, "Q4_K", (512,), device=f"cuda:{n}")


@cuda
@needs_gpu
def test_out_of_memory_names_the_sizes():
    total = ferrite.cuda_device_info()["total_memory_bytes"]
    with pytest.raises(ferrite.CudaError, match=rf"out of memory on device 0 allocating {2 * total} bytes .* of {total} bytes free"):
        ferrite._ferrite._cuda_try_alloc(2 * total)
    ferrite._ferrite._cuda_try_alloc(1 << 20)  # the context is still usable afterwards


@cuda
@needs_gpu
def test_kernel_fault_is_reported_at_sync():
    # In a child: a fault leaves the CUDA context unusable for the rest of the process.
    code = (
        "import ferrite\n"
        "try:\n"
        "    ferrite._ferrite._cuda_fault_selftest()\n"
        "except ferrite.CudaError as e:\n"
        "    print('RAISED', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "RAISED CUDA kernel fault detected at synchronize after kernel write_through" in r.stdout, r.stdout
    assert "ILLEGAL_ADDRESS" in r.stdout, r.stdout


@cuda
@needs_gpu
def test_device_info():
    info = ferrite.cuda_device_info()
    major, minor = info["compute_capability"]
    assert info["arch"] == f"sm_{major}{minor}"
    assert 0 < info["free_memory_bytes"] <= info["total_memory_bytes"]
    assert info["driver_version"] >= 11000


@cuda
@needs_gpu
def test_staged_upload_delivers_every_byte():
    # 40 MiB: three staging chunks, the last partial. The call verifies the bytes it uploaded.
    staged, pageable = ferrite._ferrite._cuda_upload_bandwidth(40 << 20)
    assert staged > 0 and pageable > 0


@cuda
@needs_gpu
def test_kernel_cache_is_used_and_survives_corruption(tmp_path):
    code = (
        "import numpy as np, ferrite, sys\n"
        "raw = np.frombuffer(bytes(range(256)) * 2, np.uint8)[:34 * 8].copy()\n"
        "raw[0::34] = 0; raw[1::34] = 0x3c\n"  # d = 1.0
        "out = ferrite.dequantize(raw, 'Q8_0', (256,), device='cuda')\n"
        "ref = ferrite.dequantize(raw, 'Q8_0', (256,))\n"
        "assert (out.view(np.uint32) == ref.view(np.uint32)).all()\n"
    )
    # The disk cache itself: not the modules compiled ahead of time, which would serve an sm_90
    # GPU with NVRTC 13.0 without writing it.
    env = dict(os.environ, FERRITE_CACHE=str(tmp_path), FERRITE_CUDA_PREBUILT="0")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    cubins = list((tmp_path / "kernels").glob("dequant-*.cubin"))
    assert len(cubins) == 1, list(tmp_path.rglob("*"))
    cubins[0].write_bytes(b"FERCUBIN" + b"\x00" * 100)  # damaged: must be recompiled, not loaded
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert cubins[0].stat().st_size > 1000


def _write_gguf(path: Path, tensors: dict[str, tuple[str, np.ndarray, tuple[int, ...]]]) -> None:
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (ty, raw, shape) in tensors.items():
        _, block_elems, block_bytes = TYPES[ty]
        if block_elems == 1:
            # Plain float types: gguf-py wants them as their numpy dtype.
            dtype = {"F32": np.float32, "F16": np.float16}[ty]
            w.add_tensor(name, raw.view(dtype).reshape(shape))
        else:
            # Quantized data goes in its byte shape: rows x bytes per row.
            w.add_tensor(name, raw.reshape(shape[0], shape[1] // block_elems * block_bytes),
                         raw_dtype=gguf.GGMLQuantizationType[ty])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@cuda
@needs_gpu
def test_gguf_tensor_on_gpu(tmp_path):
    rng = np.random.default_rng(11)
    tensors = {}
    for i, ty in enumerate(["Q4_K", "Q6_K", "Q5_0", "Q8_0", "F32", "F16", "IQ4_XS", "Q3_K"]):
        _, block_elems, _ = TYPES[ty]
        cols = block_elems * 2 if block_elems > 1 else 96
        rows = 3 + 2 * i
        tensors[f"t{i}.{ty}"] = (ty, random_blocks(ty, rows * cols // block_elems, rng), (rows, cols))
    path = tmp_path / "mixed.gguf"
    _write_gguf(path, tensors)
    f = ferrite.GgufFile(str(path))
    for name in tensors:
        cpu = f.tensor(name)
        gpu = f.tensor(name, device="cuda")
        assert gpu.shape == cpu.shape
        assert_bits_equal(cpu, gpu, name)


@cuda
@needs_gpu
@pytest.mark.model
@pytest.mark.slow
def test_every_tensor_of_the_real_model_matches():
    f = ferrite.GgufFile(ferrite.fetch_test_model())
    per_type: dict[str, int] = {}
    for name, info in f.tensors.items():
        cpu = f.tensor(name)
        gpu = f.tensor(name, device="cuda")
        assert_bits_equal(cpu, gpu, name)
        per_type[info.ggml_type] = per_type.get(info.ggml_type, 0) + cpu.size
    for ty, n in per_type.items():
        report({"type": ty, "identical": True, "elements": n, "note": "real model"})
    assert len(f.tensors) == 291
