"""GPU tensors handed to torch and CuPy through DLPack without a copy, against the numpy results
of the same calls."""

import gc

import numpy as np
import pytest

import ferrite
from synthetic_model import write_tiny_model

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module", autouse=True)
def need_cuda():
    if not ferrite.cuda_available():
        pytest.skip("no CUDA device")


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("dlpack") / "tiny.gguf", arch="qwen2", biases=True, tied=False)


def test_device_tensor_goes_to_torch_and_cupy_without_a_copy(path):
    torch = pytest.importorskip("torch")
    f = ferrite.GgufFile(path)
    name = "blk.0.ffn_down.weight"
    t = f.device_tensor(name)
    assert t.shape == list(f.tensor(name).shape) and t.dtype == "float32" and t.device == "cuda:0"
    assert t.__dlpack_device__() == (2, 0)
    a = torch.from_dlpack(t)
    b = torch.from_dlpack(t)
    assert a.is_cuda and a.dtype == torch.float32 and tuple(a.shape) == tuple(t.shape)
    # Two imports of one tensor share its memory: neither is a copy.
    assert a.data_ptr() == b.data_ptr()
    np.testing.assert_array_equal(a.cpu().numpy(), f.tensor(name))
    np.testing.assert_array_equal(t.numpy(), f.tensor(name))
    cupy = pytest.importorskip("cupy")
    c = cupy.from_dlpack(t)
    assert c.data.ptr == a.data_ptr()
    # The memory lives as long as a consumer holds it.
    del t, b, c
    gc.collect()
    np.testing.assert_array_equal(a.cpu().numpy(), f.tensor(name))


def test_logits_stay_on_the_gpu(path):
    torch = pytest.importorskip("torch")
    m = ferrite.Model.load(path, device="cuda")
    ids = [5, 11, 17, 0, 13]
    on_gpu = m.forward(ids, on_device=True)
    host = m.forward(ids)
    assert isinstance(on_gpu, ferrite.DeviceTensor) and on_gpu.shape == list(host.shape)
    np.testing.assert_array_equal(torch.from_dlpack(on_gpu).cpu().numpy(), host)
    last = m.forward(ids, last_only=True, on_device=True)
    np.testing.assert_array_equal(last.numpy(), m.forward(ids, last_only=True))
    # One row of logits takes the float32 matrix-vector path, five the f16 GEMM: close, not equal.
    np.testing.assert_allclose(last.numpy(), host[-1:], atol=2e-2)
