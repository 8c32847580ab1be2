//! CUDA functions for Python: availability queries (which never raise) and the GPU dequantize
//! dispatch used by `GgufFile.tensor(..., device="cuda")` and `ferrite.dequantize(...)`.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::backend::cuda::{self, dequant, CudaContext, CudaError};
use crate::quant::GgmlType;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_device_count, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_device_info, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_dequantize_poisoned, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_upload_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_try_alloc, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_fault_selftest, m)?)?;
    Ok(())
}

/// True when an NVIDIA driver is installed and at least one CUDA device is visible.
/// Never raises: on a machine without CUDA it returns False.
///
/// >>> ferrite.cuda_available()
/// False
#[pyfunction]
fn cuda_available() -> bool {
    cuda::cuda_available()
}

/// Number of visible CUDA devices; 0 when there is no driver. Never raises.
///
/// >>> ferrite.cuda_device_count()
/// 0
#[pyfunction]
fn cuda_device_count() -> usize {
    cuda::device_count().unwrap_or(0)
}

/// Facts about a CUDA device as a dict: ``name``, ``device``, ``compute_capability`` (tuple),
/// ``arch`` (``"sm_90"``), ``total_memory_bytes``, ``free_memory_bytes``, ``driver_version``
/// (13000 = 13.0), ``nvrtc_version`` (tuple), ``kernel_cache_dir``.
/// Raises CudaError when there is no such device.
///
/// >>> ferrite.cuda_device_info("cuda:0")["arch"]
/// 'sm_90'
#[pyfunction]
#[pyo3(signature = (device = "cuda"))]
fn cuda_device_info<'py>(py: Python<'py>, device: &str) -> PyResult<Bound<'py, PyDict>> {
    let ctx = py.detach(|| CudaContext::get(device))?;
    let (free, total) = ctx.mem_info()?;
    let d = PyDict::new(py);
    d.set_item("name", ctx.gpu_name())?;
    d.set_item("device", ctx.device_name())?;
    d.set_item("compute_capability", ctx.compute_capability())?;
    d.set_item("arch", ctx.arch())?;
    d.set_item("total_memory_bytes", total)?;
    d.set_item("free_memory_bytes", free)?;
    d.set_item("driver_version", ctx.driver_version())?;
    d.set_item("nvrtc_version", cuda::nvrtc::nvrtc_version().ok())?;
    d.set_item("kernel_cache_dir", cuda::nvrtc::cache_dir())?;
    Ok(d)
}

/// Dequantizes `bytes` on `device` without the GIL. Used by `dequantize_on`.
pub fn dequantize_on_gpu(py: Python<'_>, device: &str, ty: GgmlType, bytes: &[u8], n_elems: usize) -> Result<Vec<f32>, CudaError> {
    py.detach(|| {
        let ctx = CudaContext::get(device)?;
        dequant::dequantize(&ctx, ty, bytes, n_elems)
    })
}

/// Test hook: GPU dequantization with the output buffer first filled with the 32-bit pattern
/// `poison_bits`, so that an element the kernel never writes shows up, and the blocks placed
/// `src_offset_bytes` into the device buffer (odd offsets catch aligned loads). Returns a flat
/// float32 array.
#[pyfunction]
#[pyo3(signature = (raw, ggml_type, n_elems, poison_bits, src_offset_bytes = 0, device = "cuda"))]
fn _cuda_dequantize_poisoned<'py>(
    py: Python<'py>,
    raw: &Bound<'py, PyAny>,
    ggml_type: &Bound<'py, PyAny>,
    n_elems: usize,
    poison_bits: u32,
    src_offset_bytes: usize,
    device: &str,
) -> PyResult<Bound<'py, numpy::PyArray1<f32>>> {
    let ty = super::gguf::parse_ggml_type(ggml_type)?;
    let values = super::gguf::with_raw_bytes(raw, |bytes| {
        Ok(py.detach(|| {
            let ctx = CudaContext::get(device)?;
            dequant::dequantize_checked(&ctx, ty, bytes, n_elems, Some(poison_bits), src_offset_bytes)
        })?)
    })?;
    Ok(numpy::PyArray1::from_vec(py, values))
}

/// Measures host->device copy bandwidth for `n_bytes` on `device`: returns
/// ``(staged_gb_per_s, pageable_gb_per_s)`` for the pinned-staging weight upload path and a
/// plain pageable copy (best of 3 after a warm-up; the staged copy is verified).
#[pyfunction]
#[pyo3(signature = (n_bytes = 256 << 20, device = "cuda"))]
fn _cuda_upload_bandwidth(py: Python<'_>, n_bytes: usize, device: &str) -> PyResult<(f64, f64)> {
    if n_bytes > 4 << 30 {
        return Err(pyo3::exceptions::PyValueError::new_err("upload benchmark is limited to 4 GiB"));
    }
    Ok(py.detach(|| CudaContext::get(device)?.measure_upload_gbps(n_bytes))?)
}

/// Test hook: allocates `n_bytes` of device memory and frees it. Raises CudaError (naming the
/// sizes) when the device cannot hold it.
#[pyfunction]
#[pyo3(signature = (n_bytes, device = "cuda"))]
fn _cuda_try_alloc(py: Python<'_>, n_bytes: usize, device: &str) -> PyResult<()> {
    py.detach(|| {
        let ctx = CudaContext::get(device)?;
        let buf = ctx.alloc::<u8>(n_bytes, "an allocation test")?;
        drop(buf);
        ctx.sync("an allocation test")
    })?;
    Ok(())
}

/// Test hook: launches a kernel that writes through a null pointer, then synchronizes. Raises
/// CudaError (a kernel fault). The CUDA context is unusable afterwards: call it in a child
/// process.
#[pyfunction]
#[pyo3(signature = (device = "cuda"))]
fn _cuda_fault_selftest(py: Python<'_>, device: &str) -> PyResult<()> {
    py.detach(|| cuda::context::fault_selftest(device))?;
    Ok(())
}
