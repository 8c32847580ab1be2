//! CUDA functions for Python: availability queries (which never raise) and the GPU dequantize
//! dispatch used by `GgufFile.tensor(..., device="cuda")` and `ferrite.dequantize(...)`.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};

use crate::backend::cuda::matvec::{force_plan, path_for, set_stream_mode, set_stream_rows, stream_mode, stream_rows, time_device_copy, MatvecOp, MatvecPath, StreamMode, PAIR_MATVECS, STREAM_KERNEL_ROWS, STREAM_MATVECS};
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
    m.add_function(wrap_pyfunction!(_cuda_matvec, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_matvecs, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_weight_rows, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_matvec_time, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_copy_time, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_matvec_force_plan, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_matvec_stream, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_matvec_stream_rows, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_int8_max_rows, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_row_op, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_gemm_f16, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_gemm_f16_norm, m)?)?;
    m.add_function(wrap_pyfunction!(_cuda_counters, m)?)?;
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
    let nvrtc = cuda::nvrtc::nvrtc_version().ok();
    d.set_item("nvrtc_version", nvrtc)?;
    d.set_item("kernel_cache_dir", cuda::nvrtc::cache_dir())?;
    d.set_item("prebuilt_kernels", nvrtc.is_some_and(|v| cuda::prebuilt::applies(ctx.compute_capability(), v)))?;
    d.set_item("kernels_compiled", cuda::nvrtc::modules_compiled())?;
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

fn matvec_path(device: &str, ty: GgmlType, path: &str) -> PyResult<MatvecPath> {
    match path {
        "auto" => Ok(path_for(&*CudaContext::get(device)?, ty)),
        "tiled" => Ok(MatvecPath::Tiled),
        "generic" => Ok(MatvecPath::Generic),
        _ => Err(pyo3::exceptions::PyValueError::new_err(format!("path must be 'auto', 'tiled' or 'generic', not {path:?}"))),
    }
}

/// Test hook: one matrix-vector product on the GPU with the backend's own launch code.
/// `raw` holds `n_rows` rows of `n_cols` elements of `ggml_type` (the file's blocks); `x` is
/// float32 `(n_x, n_cols)` with 1 <= n_x <= 8, or up to 512 on the tiled path (the quantized GEMM
/// of matmul_mma.cu, x rounded to f16 after the backend's 2^-8 scale); `path` picks the
/// tensor-core kernels on repacked tiles ("tiled"), the generic kernels on the blocks ("generic")
/// or what a model would use ("auto"). The output buffer holds `n_x + 1` rows, all first filled with `poison_bits`;
/// it is returned whole, shape `(n_x + 1, n_rows)`. With `accumulate_onto` (float32
/// `(n_x, n_rows)`) the first `n_x` rows start as those values and the kernel adds the products
/// to them (the residual connection's fused add).
#[pyfunction]
#[pyo3(signature = (raw, ggml_type, n_rows, n_cols, x, bias = None, path = "auto", poison_bits = 0x7FC0_DEAD, device = "cuda", accumulate_onto = None))]
#[allow(clippy::too_many_arguments)]
fn _cuda_matvec<'py>(
    py: Python<'py>,
    raw: &Bound<'py, PyAny>,
    ggml_type: &Bound<'py, PyAny>,
    n_rows: usize,
    n_cols: usize,
    x: PyReadonlyArray2<'py, f32>,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    path: &str,
    poison_bits: u32,
    device: &str,
    accumulate_onto: Option<PyReadonlyArray2<'py, f32>>,
) -> PyResult<Bound<'py, numpy::PyArray2<f32>>> {
    let ty = super::gguf::parse_ggml_type(ggml_type)?;
    let path = matvec_path(device, ty, path)?;
    let n_x = x.shape()[0];
    if x.shape()[1] != n_cols {
        return Err(pyo3::exceptions::PyValueError::new_err(format!("x has {} columns, the matrix {n_cols}", x.shape()[1])));
    }
    let xs = x.as_slice().map_err(|_| pyo3::exceptions::PyValueError::new_err("x must be C-contiguous"))?.to_vec();
    let bias = match &bias {
        Some(b) => Some(b.as_slice().map_err(|_| pyo3::exceptions::PyValueError::new_err("bias must be contiguous"))?.to_vec()),
        None => None,
    };
    let start = match &accumulate_onto {
        Some(a) if a.shape() != [n_x, n_rows] => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!("accumulate_onto has shape {:?}, expected ({n_x}, {n_rows})", a.shape())));
        }
        Some(a) => Some(a.as_slice().map_err(|_| pyo3::exceptions::PyValueError::new_err("accumulate_onto must be C-contiguous"))?.to_vec()),
        None => None,
    };
    let out = super::gguf::with_raw_bytes(raw, |bytes| {
        Ok(py.detach(|| MatvecOp::new(device, ty, bytes, n_rows, n_cols, path, 1)?.run(&xs, n_x, bias.as_deref(), poison_bits, start.as_deref()))?)
    })?;
    PyArray1::from_vec(py, out).reshape([n_x + 1, n_rows])
}

/// Test hook: several matrices of one type and width multiplying the same `x` in one launch of
/// the tiled kernels, as a model's q/k/v and gate/up run (`raws[i]` holds `n_rows[i]` rows of
/// `n_cols`); `ggml_type` is every matrix's type, or a list of one type a matrix (two types that
/// share a launch of the pair kernels, as a 7B's Q4_K q and k with a Q6_K v). `x` is taken as it is, as `rms_norm(x) * norm_weight` (eps `norm_eps`) or as
/// `silu(x) * swiglu_up`. Returns one `(n_x + 1, n_rows[i])` array a matrix, poisoned first as
/// `_cuda_matvec` does.
#[pyfunction]
#[pyo3(signature = (raws, ggml_type, n_rows, n_cols, x, biases = None, norm_weight = None, norm_eps = 1e-6, swiglu_up = None, poison_bits = 0x7FC0_DEAD, device = "cuda"))]
#[allow(clippy::too_many_arguments)]
fn _cuda_matvecs<'py>(
    py: Python<'py>,
    raws: Vec<Bound<'py, PyAny>>,
    ggml_type: &Bound<'py, PyAny>,
    n_rows: Vec<usize>,
    n_cols: usize,
    x: PyReadonlyArray2<'py, f32>,
    biases: Option<Vec<Option<PyReadonlyArray1<'py, f32>>>>,
    norm_weight: Option<PyReadonlyArray1<'py, f32>>,
    norm_eps: f32,
    swiglu_up: Option<PyReadonlyArray2<'py, f32>>,
    poison_bits: u32,
    device: &str,
) -> PyResult<Vec<Bound<'py, numpy::PyArray2<f32>>>> {
    use crate::backend::cuda::matvec::TestInput;
    let value_err = |m: String| pyo3::exceptions::PyValueError::new_err(m);
    let types: Vec<crate::quant::GgmlType> = match ggml_type.extract::<Vec<Bound<'py, PyAny>>>() {
        Ok(list) if !ggml_type.is_instance_of::<pyo3::types::PyString>() => list.iter().map(super::gguf::parse_ggml_type).collect::<PyResult<_>>()?,
        _ => vec![super::gguf::parse_ggml_type(ggml_type)?; raws.len()],
    };
    if types.len() != raws.len() {
        return Err(value_err(format!("{} matrices and {} types", raws.len(), types.len())));
    }
    if raws.len() != n_rows.len() || raws.is_empty() {
        return Err(value_err(format!("{} matrices and {} row counts", raws.len(), n_rows.len())));
    }
    let n_x = x.shape()[0];
    if x.shape()[1] != n_cols {
        return Err(value_err(format!("x has {} columns, the matrices {n_cols}", x.shape()[1])));
    }
    let contiguous = |what: &str| value_err(format!("{what} must be C-contiguous"));
    let xs = x.as_slice().map_err(|_| contiguous("x"))?.to_vec();
    let biases: Vec<Option<Vec<f32>>> = match biases {
        None => vec![None; raws.len()],
        Some(b) => b.iter().map(|b| b.as_ref().map(|b| b.as_slice().map(<[f32]>::to_vec).map_err(|_| contiguous("a bias"))).transpose()).collect::<PyResult<_>>()?,
    };
    let norm = norm_weight.as_ref().map(|w| w.as_slice().map(<[f32]>::to_vec).map_err(|_| contiguous("norm_weight"))).transpose()?;
    let up = match &swiglu_up {
        Some(u) if u.shape() != x.shape() => return Err(value_err(format!("swiglu_up has shape {:?}, x {:?}", u.shape(), x.shape()))),
        Some(u) => Some(u.as_slice().map_err(|_| contiguous("swiglu_up"))?.to_vec()),
        None => None,
    };
    let input = match (&norm, &up) {
        (Some(_), Some(_)) => return Err(value_err("norm_weight and swiglu_up are exclusive".into())),
        (Some(w), None) => TestInput::Normed { weight: w, eps: norm_eps },
        (None, Some(u)) => TestInput::Swiglu { up: u },
        (None, None) => TestInput::X,
    };
    let mut all_bytes = Vec::with_capacity(raws.len());
    for raw in &raws {
        all_bytes.push(super::gguf::with_raw_bytes(raw, |b| Ok(b.to_vec()))?);
    }
    let outs = py.detach(|| -> Result<Vec<Vec<f32>>, crate::backend::cuda::CudaError> {
        let ops = all_bytes
            .iter()
            .zip(&n_rows)
            .zip(&types)
            .map(|((bytes, &rows), &ty)| MatvecOp::new(device, ty, bytes, rows, n_cols, MatvecPath::Tiled, 1))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&MatvecOp> = ops.iter().collect();
        let bias_refs: Vec<Option<&[f32]>> = biases.iter().map(|b| b.as_deref()).collect();
        MatvecOp::run_group(&refs, &xs, n_x, &bias_refs, poison_bits, input)
    })?;
    outs.into_iter().zip(&n_rows).map(|(o, &rows)| PyArray1::from_vec(py, o).reshape([n_x + 1, rows])).collect()
}

/// Test hook: rows `row0 .. row0 + n` of a matrix read back as float32 by the device (the
/// prefill path's dequantization of the layout `path` stores), and the embedding gather of
/// `tokens`. Returns `(rows (n, n_cols), embeddings (len(tokens), n_cols))`.
#[pyfunction]
#[pyo3(signature = (raw, ggml_type, n_rows, n_cols, row0, n, tokens, path = "auto", device = "cuda"))]
#[allow(clippy::too_many_arguments)]
fn _cuda_weight_rows<'py>(
    py: Python<'py>,
    raw: &Bound<'py, PyAny>,
    ggml_type: &Bound<'py, PyAny>,
    n_rows: usize,
    n_cols: usize,
    row0: usize,
    n: usize,
    tokens: Vec<u32>,
    path: &str,
    device: &str,
) -> PyResult<(Bound<'py, numpy::PyArray2<f32>>, Bound<'py, numpy::PyArray2<f32>>)> {
    let ty = super::gguf::parse_ggml_type(ggml_type)?;
    let path = matvec_path(device, ty, path)?;
    if row0.checked_add(n).is_none_or(|end| end > n_rows) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!("rows {row0}..+{n} of {n_rows}")));
    }
    let (rows, emb) = super::gguf::with_raw_bytes(raw, |bytes| {
        Ok(py.detach(|| MatvecOp::new(device, ty, bytes, n_rows, n_cols, path, 1)?.read_rows(row0, n, &tokens))?)
    })?;
    let n_tokens = tokens.len();
    Ok((PyArray1::from_vec(py, rows).reshape([n, n_cols])?, PyArray1::from_vec(py, emb).reshape([n_tokens, n_cols])?))
}

/// Test hook: counts of this process's CUDA path decisions, as a dict: ``stacked_gemms``
/// (projections of one x run as one GEMM on a stacked copy), ``swiglu_gemms`` (stacked gate/up
/// GEMMs of 1-16 rows that wrote SwiGLU's output), ``norm_source_gemms`` (stacked GEMMs that
/// read x's norm source instead of a normalized x), ``norm_source_launches`` (those sources made
/// by a launch of their own, where no GEMM wrote x: the first layer's), ``stream_matvecs``
/// (launches on the stream kernel), ``ffn_launches`` (FFN blocks of one or two rows as one launch, ffn.rs)
/// and ``sample_mass_launches`` (sampler launches that left rows to the mass pass, sampling.cu's
/// sample_mass); graph replays not counted.
#[pyfunction]
fn _cuda_counters(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("stacked_gemms", cuda::STACKED_GEMMS.load(std::sync::atomic::Ordering::Relaxed))?;
    d.set_item("swiglu_gemms", cuda::SWIGLU_GEMMS.load(std::sync::atomic::Ordering::Relaxed))?;
    d.set_item("norm_source_gemms", cuda::NORM_SOURCE_GEMMS.load(std::sync::atomic::Ordering::Relaxed))?;
    d.set_item("norm_source_launches", cuda::NORM_SOURCE_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed))?;
    d.set_item("stream_matvecs", STREAM_MATVECS.load(std::sync::atomic::Ordering::Relaxed))?;
    d.set_item("pair_matvecs", PAIR_MATVECS.load(std::sync::atomic::Ordering::Relaxed))?;
    d.set_item("ffn_launches", cuda::ffn::FFN_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed))?;
    d.set_item("sample_mass_launches", cuda::SAMPLE_MASS_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed))?;
    Ok(d)
}

/// Test hook: one row kernel of the batch path alone, `op` "rms_norm" (rows `a` of shape
/// (n_rows, width), weight `b` of shape (width,), epsilon `eps`) or "swiglu" (gate `a`, up `b`,
/// both (n_rows, width)); "swiglu_stacked" is "swiglu" with the f16 form reading gate and up as
/// the halves of one buffer's rows, as it reads a stacked gate/up GEMM's output. Returns `(float32 rows, f16 bits as uint16, scale)`: the kernel's
/// float32 output and the f16 form the cuBLAS path takes, `f16(value * scale)`.
#[pyfunction]
#[pyo3(signature = (op, a, b, eps = 1e-6, device = "cuda"))]
fn _cuda_row_op<'py>(
    py: Python<'py>,
    op: &str,
    a: PyReadonlyArray2<'py, f32>,
    b: &Bound<'py, PyAny>,
    eps: f32,
    device: &str,
) -> PyResult<(Bound<'py, numpy::PyArray2<f32>>, Bound<'py, numpy::PyArray2<u16>>, f32)> {
    use crate::backend::cuda::backend::{test_row_op, RowOp};
    let value_err = |m: String| pyo3::exceptions::PyValueError::new_err(m);
    let op = match op {
        "rms_norm" => RowOp::RmsNorm { eps },
        "swiglu" => RowOp::Swiglu,
        "swiglu_stacked" => RowOp::SwigluStacked,
        other => return Err(value_err(format!("op {other:?}: expected \"rms_norm\", \"swiglu\" or \"swiglu_stacked\""))),
    };
    let (n_rows, width) = (a.shape()[0], a.shape()[1]);
    let a = a.as_slice().map_err(|_| value_err("a must be C-contiguous".into()))?.to_vec();
    let b: Vec<f32> = b.extract::<PyReadonlyArray1<'py, f32>>().map(|b| b.as_slice().map(<[f32]>::to_vec)).or_else(|_| {
        b.extract::<PyReadonlyArray2<'py, f32>>().map(|b| b.as_slice().map(<[f32]>::to_vec))
    }).map_err(|_| value_err("b must be a float32 array".into()))?.map_err(|_| value_err("b must be C-contiguous".into()))?;
    let b_len = if matches!(op, RowOp::RmsNorm { .. }) { width } else { a.len() };
    if a.is_empty() || b.len() != b_len {
        return Err(value_err(format!("{op:?} on a of shape ({n_rows}, {width}): b has {} values, need {b_len} (and a must not be empty)", b.len())));
    }
    let (rows, bits, scale) = py.detach(|| test_row_op(device, op, &a, &b, n_rows, width))?;
    Ok((PyArray1::from_vec(py, rows).reshape([n_rows, width])?, PyArray1::from_vec(py, bits).reshape([n_rows, width])?, scale))
}

/// Test hook: the f16 GEMM of the decode path, `alpha * w @ x.T` as float32 of shape
/// `(n, m)` (plus `accumulate_onto`, float32 `(n, m)`, when given: the residual add), for f16
/// bits `w` (uint16 `(m, k)`) and `x` (uint16 `(n, k)`), on gemm_f16_rows.cu (`path="rows"`) or
/// cuBLAS (`path="cublas"`).
#[pyfunction]
#[pyo3(signature = (w, x, alpha = 1.0, accumulate_onto = None, path = "rows", device = "cuda"))]
fn _cuda_gemm_f16<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, u16>,
    x: PyReadonlyArray2<'py, u16>,
    alpha: f32,
    accumulate_onto: Option<PyReadonlyArray2<'py, f32>>,
    path: &str,
    device: &str,
) -> PyResult<Bound<'py, numpy::PyArray2<f32>>> {
    let value_err = |m: String| pyo3::exceptions::PyValueError::new_err(m);
    let rows_kernel = match path {
        "rows" => true,
        "cublas" => false,
        other => return Err(value_err(format!("path {other:?}: expected \"rows\" or \"cublas\""))),
    };
    let ((m, k), (n, kx)) = ((w.shape()[0], w.shape()[1]), (x.shape()[0], x.shape()[1]));
    if k != kx {
        return Err(value_err(format!("w has {k} columns, x {kx}")));
    }
    let start = match &accumulate_onto {
        Some(a) if a.shape() != [n, m] => return Err(value_err(format!("accumulate_onto has shape {:?}, expected ({n}, {m})", a.shape()))),
        Some(a) => Some(a.as_slice().map_err(|_| value_err("accumulate_onto must be C-contiguous".into()))?.to_vec()),
        None => None,
    };
    let w = w.as_slice().map_err(|_| value_err("w must be C-contiguous".into()))?.to_vec();
    let x = x.as_slice().map_err(|_| value_err("x must be C-contiguous".into()))?.to_vec();
    let out = py.detach(|| crate::backend::cuda::test_gemm_f16(device, &w, m, k, &x, n, start.as_deref(), alpha, rows_kernel))?;
    PyArray1::from_vec(py, out).reshape([n, m])
}

/// Test hook: the RMSNorm moved around gemm_f16_rows.cu. ``x_new = start + alpha * w @ x.T``
/// (transposed: n x m) on the kernel, which also writes x_new as f16 (times 1/16) and its sums
/// of squares; then ``alpha_next * w_next @ source.T`` times each row's 1 / rms(x_new) (``eps``),
/// the kernel reading those sums. Returns ``(x_new, source bits, output)``.
#[pyfunction]
#[pyo3(signature = (w, x, start, alpha, w_next, alpha_next, eps, device = "cuda"))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn _cuda_gemm_f16_norm<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, u16>,
    x: PyReadonlyArray2<'py, u16>,
    start: PyReadonlyArray2<'py, f32>,
    alpha: f32,
    w_next: PyReadonlyArray2<'py, u16>,
    alpha_next: f32,
    eps: f32,
    device: &str,
) -> PyResult<(Bound<'py, numpy::PyArray2<f32>>, Bound<'py, numpy::PyArray2<u16>>, Bound<'py, numpy::PyArray2<f32>>)> {
    let value_err = |m: String| pyo3::exceptions::PyValueError::new_err(m);
    let ((m, k), n, m_next) = ((w.shape()[0], w.shape()[1]), x.shape()[0], w_next.shape()[0]);
    if x.shape()[1] != k || start.shape() != [n, m] || w_next.shape()[1] != m {
        return Err(value_err(format!("shapes w {:?}, x {:?}, start {:?}, w_next {:?} do not chain", w.shape(), x.shape(), start.shape(), w_next.shape())));
    }
    let contiguous = |what: &str| value_err(format!("{what} must be C-contiguous"));
    let (w, x) = (w.as_slice().map_err(|_| contiguous("w"))?.to_vec(), x.as_slice().map_err(|_| contiguous("x"))?.to_vec());
    let start = start.as_slice().map_err(|_| contiguous("start"))?.to_vec();
    let w_next = w_next.as_slice().map_err(|_| contiguous("w_next"))?.to_vec();
    let (acc, src, out) = py.detach(|| crate::backend::cuda::test_gemm_f16_norm(device, &w, (m, k), &x, n, &start, alpha, &w_next, m_next, alpha_next, eps))?;
    Ok((PyArray1::from_vec(py, acc).reshape([n, m])?, PyArray1::from_vec(py, src).reshape([n, m])?, PyArray1::from_vec(py, out).reshape([n, m_next])?))
}

/// Benchmark hook: seconds per launch of the matrix-vector kernel of `path` for each count of x
/// rows in `n_xs`, over `copies` copies of the matrix (rotated so that launches read DRAM, not
/// L2), `iters` launches recorded as one CUDA graph and timed with events, `repeats` times.
/// Returns a dict: ``seconds`` ({n_x: [seconds per launch of each repeat]}), ``device_bytes``
/// (bytes of one copy on the device), ``plans`` ({n_x: (warps_m, warps_k, block_rows, splits,
/// k_tiles_per_split)} on the tiled path, else None).
#[pyfunction]
#[pyo3(signature = (raw, ggml_type, n_rows, n_cols, n_xs, path, copies, iters, repeats = 5, device = "cuda"))]
#[allow(clippy::too_many_arguments)]
fn _cuda_matvec_time<'py>(
    py: Python<'py>,
    raw: &Bound<'py, PyAny>,
    ggml_type: &Bound<'py, PyAny>,
    n_rows: usize,
    n_cols: usize,
    n_xs: Vec<usize>,
    path: &str,
    copies: usize,
    iters: usize,
    repeats: usize,
    device: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let ty = super::gguf::parse_ggml_type(ggml_type)?;
    let path = matvec_path(device, ty, path)?;
    if copies == 0 || iters == 0 || repeats == 0 || iters > 1_000_000 {
        return Err(pyo3::exceptions::PyValueError::new_err("copies, iters and repeats must be positive (iters at most 1e6)"));
    }
    let (seconds, device_bytes, plans) = super::gguf::with_raw_bytes(raw, |bytes| {
        Ok(py.detach(|| -> Result<_, CudaError> {
            let op = MatvecOp::new(device, ty, bytes, n_rows, n_cols, path, copies)?;
            let plans: Vec<_> =
                n_xs.iter().map(|&n_x| (n_x, op.plan(n_x).map(|p| (p.warps_m, p.warps_k, p.block_rows, p.splits, p.k_tiles_per_split)))).collect();
            let seconds = n_xs.iter().map(|&n_x| Ok((n_x, op.time(n_x, iters, repeats)?))).collect::<Result<Vec<_>, CudaError>>()?;
            Ok((seconds, op.bytes_per_copy(), plans))
        })?)
    })?;
    let d = PyDict::new(py);
    let by_rows = PyDict::new(py);
    for (n_x, s) in seconds {
        by_rows.set_item(n_x, s)?;
    }
    d.set_item("seconds", by_rows)?;
    d.set_item("device_bytes", device_bytes)?;
    let by_rows = PyDict::new(py);
    for (n_x, p) in plans {
        by_rows.set_item(n_x, p)?;
    }
    d.set_item("plans", by_rows)?;
    Ok(d)
}

/// Benchmark hook: seconds per device-to-device copy of `n_bytes`, `repeats` times (events).
#[pyfunction]
#[pyo3(signature = (n_bytes = 1 << 30, repeats = 10, device = "cuda"))]
fn _cuda_copy_time(py: Python<'_>, n_bytes: usize, repeats: usize, device: &str) -> PyResult<Vec<f64>> {
    if n_bytes == 0 || n_bytes > 16 << 30 || repeats == 0 {
        return Err(pyo3::exceptions::PyValueError::new_err("n_bytes must be 1 byte .. 16 GiB, repeats positive"));
    }
    Ok(py.detach(|| time_device_copy(device, n_bytes, repeats))?)
}

/// Test and benchmark hook: which launches of one or two rows take matvec_mma.cu's stream kernel ("off",
/// "large": matrices of many tiles; "one-phase": those of them whose x fits one phase, the default;
/// "always": every one), as
/// `FERRITE_CUDA_MATVEC_STREAM` sets it for a model; returns the mode before (so that a test
/// can put it back). Matrices made after the call get the kernel.
#[pyfunction]
fn _cuda_matvec_stream(mode: &str) -> PyResult<&'static str> {
    let mode = StreamMode::from_name(mode).ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("stream mode {mode:?}: one of off, large, one-phase, always")))?;
    let before = stream_mode();
    set_stream_mode(mode);
    Ok(before.name())
}

/// Test and benchmark hook: the most rows of x (1, 2, 4 or 8) for which launches take the stream kernel
/// where the stream mode says so, as `FERRITE_CUDA_MATVEC_STREAM_ROWS` sets it; returns the rows
/// before (so that a test can put them back).
#[pyfunction]
fn _cuda_matvec_stream_rows(rows: usize) -> PyResult<usize> {
    if !STREAM_KERNEL_ROWS.contains(&rows) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!("stream rows {rows}: one of {STREAM_KERNEL_ROWS:?}")));
    }
    let before = stream_rows();
    set_stream_rows(rows);
    Ok(before)
}

/// Test hook: the rows of x up to which the tensor-core matrix-vector kernels of tiled type
/// `ty` keep x in int8 parts (the tile table's, or FERRITE_CUDA_KERNEL_DEFINES's
/// `-DMMA_S8_MAX_NT=N`); from 3 rows that is two parts, which tests/test_cuda_matvec.py models.
/// Needs no GPU.
#[pyfunction]
fn _cuda_int8_max_rows(ty: &str) -> PyResult<usize> {
    let t = GgmlType::from_name(ty).ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("unknown ggml type {ty:?}")))?;
    cuda::kernels::int8_max_rows(t).ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("{ty} has no tensor-core tiles")))
}

/// Benchmark hook: every tiled matvec planned after this call uses `warps_m` x `warps_k` warps
/// per block and at most `splits` column splits (no arguments: back to the heuristic). For
/// tuning only; set it before creating the matrix (the split-K scratch is sized then).
#[pyfunction]
#[pyo3(signature = (warps_m = None, warps_k = None, splits = None))]
fn _cuda_matvec_force_plan(warps_m: Option<u32>, warps_k: Option<u32>, splits: Option<u32>) -> PyResult<()> {
    match (warps_m, warps_k, splits) {
        (Some(m), Some(k), Some(s)) if m >= 1 && k >= 1 && m * k <= 8 && s >= 1 => force_plan(Some((m, k, s))),
        (None, None, None) => force_plan(None),
        _ => return Err(pyo3::exceptions::PyValueError::new_err("give warps_m, warps_k (product 1..=8) and splits (>= 1), or nothing")),
    }
    Ok(())
}
