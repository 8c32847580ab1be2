//! `GgufFile`, `TensorInfo` and `dequantize` for Python.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use super::errors::raise;
use crate::gguf::{GgufFile, MetaValue, TensorInfo};
use crate::quant::{self, GgmlType};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGgufFile>()?;
    m.add_class::<PyTensorInfo>()?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(ggml_types, m)?)?;
    Ok(())
}

/// `err` with the file's path in front of its message, same exception class, so that an error
/// about what a file holds names the file (errors from `GgufFile::open` already do).
pub fn naming_file(py: Python<'_>, path: Option<&std::path::Path>, err: PyErr) -> PyErr {
    let Some(path) = path else { return err };
    let message = err.value(py).to_string();
    let prefix = format!("{}: ", path.display());
    if message.starts_with(&prefix) {
        return err;
    }
    let named = PyErr::from_type(err.get_type(py), format!("{prefix}{message}"));
    named.set_cause(py, err.cause(py));
    named
}

/// A GGUF file, memory-mapped. Metadata and tensor infos are parsed at open; tensor data is read
/// from the map on demand.
#[pyclass(name = "GgufFile", module = "ferrite", frozen)]
pub struct PyGgufFile {
    file: Mutex<Option<Arc<GgufFile>>>,
    metadata: OnceLock<Py<PyAny>>,
    tensors: OnceLock<Py<PyDict>>,
}

impl PyGgufFile {
    pub fn from_file(file: Arc<GgufFile>) -> Self {
        PyGgufFile { file: Mutex::new(Some(file)), metadata: OnceLock::new(), tensors: OnceLock::new() }
    }

    /// The open file, or an error once `close()` was called.
    pub fn file(&self) -> PyResult<Arc<GgufFile>> {
        self.file
            .lock()
            .expect("lock poisoned")
            .clone()
            .ok_or_else(|| pyo3::exceptions::PyValueError::new_err("I/O operation on closed GgufFile"))
    }
}

/// Keeps the map alive for as long as a numpy view of it exists.
#[pyclass(frozen)]
struct MapOwner {
    _file: Arc<GgufFile>,
}

#[pymethods]
impl PyGgufFile {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let file = py.detach(|| GgufFile::open(&path))?;
        Ok(PyGgufFile::from_file(Arc::new(file)))
    }

    #[getter]
    fn path(&self) -> PyResult<Option<PathBuf>> {
        Ok(self.file()?.path().map(|p| p.to_path_buf()))
    }

    /// GGUF format version (2 or 3).
    #[getter]
    fn version(&self) -> PyResult<u32> {
        Ok(self.file()?.version())
    }

    /// Alignment of tensor data in bytes (`general.alignment`, default 32).
    #[getter]
    fn alignment(&self) -> PyResult<u64> {
        Ok(self.file()?.alignment())
    }

    /// File offset of the tensor data section, in bytes.
    #[getter]
    fn data_offset(&self) -> PyResult<u64> {
        Ok(self.file()?.data_offset())
    }

    /// File size in bytes.
    #[getter]
    fn size_bytes(&self) -> PyResult<u64> {
        Ok(self.file()?.file_len())
    }

    /// All metadata as a read-only mapping of Python values, in file order. Built once.
    #[getter]
    fn metadata(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(m) = self.metadata.get() {
            return Ok(m.clone_ref(py));
        }
        let file = self.file()?;
        let dict = PyDict::new(py);
        for (key, value) in file.metadata() {
            dict.set_item(key, meta_to_py(py, value)?)?;
        }
        let proxy = py.import("types")?.getattr("MappingProxyType")?.call1((dict,))?.unbind();
        Ok(self.metadata.get_or_init(|| proxy).clone_ref(py))
    }

    /// Tensor infos by name, in file order.
    #[getter]
    fn tensors(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        if let Some(t) = self.tensors.get() {
            return Ok(t.clone_ref(py));
        }
        let file = self.file()?;
        let dict = PyDict::new(py);
        for info in file.tensors() {
            let file_offset = file.data_offset() + info.offset_bytes;
            dict.set_item(&info.name, PyTensorInfo::new(info, file_offset))?;
        }
        Ok(self.tensors.get_or_init(|| dict.unbind()).clone_ref(py))
    }

    /// The tensor `name` dequantized to float32, in numpy order (GGUF dims reversed).
    ///
    /// >>> f.tensor("blk.0.attn_q.weight").shape
    /// (896, 896)
    #[pyo3(signature = (name, device = "cpu"))]
    fn tensor<'py>(&self, py: Python<'py>, name: &str, device: &str) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let file = self.file()?;
        let info = file.tensor_info(name)?.clone();
        dequantize_on(py, device, info.ggml_type, file.tensor_bytes(&info), &info.shape(), &info.name)
    }

    /// Tensor ``name`` dequantized on a GPU and left there, as a ``DeviceTensor`` that torch and
    /// CuPy take without a copy (``torch.from_dlpack(t)``); ``t.numpy()`` copies it back.
    ///
    /// >>> w = torch.from_dlpack(f.device_tensor("blk.0.ffn_down.weight"))
    #[pyo3(signature = (name, device = "cuda"))]
    fn device_tensor(&self, py: Python<'_>, name: &str, device: &str) -> PyResult<super::dlpack::PyDeviceTensor> {
        let file = self.file()?;
        let info = file.tensor_info(name)?.clone();
        let ctx = crate::backend::cuda::CudaContext::get(device)?;
        let n: usize = info.shape().iter().product();
        let bytes = file.tensor_bytes(&info);
        let t = py.detach(|| crate::backend::cuda::DeviceTensor::dequantize(ctx, info.ggml_type, bytes, n))?;
        super::dlpack::PyDeviceTensor::new(t, info.shape())
    }

    /// The raw block bytes of tensor `name` as a read-only uint8 numpy view of the map (no copy).
    /// The view keeps the file mapped while it lives, even after `close()`.
    fn raw<'py>(slf: &Bound<'py, Self>, name: &str) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let py = slf.py();
        let file = slf.get().file()?;
        let info = file.tensor_info(name)?;
        let bytes = file.tensor_bytes(info);
        let view = ArrayView1::from(bytes);
        let owner = Bound::new(py, MapOwner { _file: file.clone() })?;
        // SAFETY: `owner` holds an Arc of the file, so the mapped bytes outlive the array; the
        // array is marked read-only below, so numpy never writes through it.
        let array = unsafe { PyArray1::borrow_from_array(&view, owner.into_any()) };
        array.readwrite().make_nonwriteable();
        Ok(array)
    }

    fn __contains__(&self, name: &str) -> PyResult<bool> {
        Ok(self.file()?.tensor_info(name).is_ok())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.file()?.tensors().len())
    }

    /// Releases this object's hold on the map. Arrays from `raw()` stay valid.
    fn close(&self) {
        self.file.lock().expect("lock poisoned").take();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, _exc_type: Py<PyAny>, _exc: Py<PyAny>, _tb: Py<PyAny>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        let Ok(file) = self.file() else { return "<GgufFile (closed)>".to_string() };
        let arch = file.get_str("general.architecture").ok().flatten().unwrap_or("?");
        let name = file.get_str("general.name").ok().flatten();
        let path = file.path().map(|p| p.display().to_string()).unwrap_or_else(|| "<memory>".into());
        format!(
            "<GgufFile {path:?}{} v{} arch={arch} tensors={} metadata={} size={:.1} MB>",
            name.map(|n| format!(" ({n})")).unwrap_or_default(),
            file.version(),
            file.tensors().len(),
            file.metadata().len(),
            file.file_len() as f64 / 1e6
        )
    }
}

/// Where a tensor's blocks are and what they hold.
#[pyclass(name = "TensorInfo", module = "ferrite", frozen, get_all)]
pub struct PyTensorInfo {
    /// GGUF tensor name, e.g. ``"blk.0.attn_q.weight"``.
    name: String,
    /// ggml type name, e.g. ``"Q4_K"``.
    ggml_type: String,
    /// ggml type id as stored in the file.
    type_id: u32,
    /// numpy order (GGUF dims reversed).
    shape: Vec<usize>,
    /// GGUF order (row length first).
    dims: Vec<u64>,
    /// Offset of the data from the start of the data section, in bytes.
    offset: u64,
    /// Offset of the data from the start of the file, in bytes.
    file_offset: u64,
    n_bytes: u64,
    n_elements: u64,
}

impl PyTensorInfo {
    fn new(info: &TensorInfo, file_offset: u64) -> Self {
        PyTensorInfo {
            name: info.name.clone(),
            ggml_type: info.ggml_type.name().to_string(),
            type_id: info.ggml_type.id(),
            shape: info.shape(),
            dims: info.dims.clone(),
            offset: info.offset_bytes,
            file_offset,
            n_bytes: info.n_bytes,
            n_elements: info.n_elems,
        }
    }
}

#[pymethods]
impl PyTensorInfo {
    fn __repr__(&self) -> String {
        format!(
            "TensorInfo(name={:?}, ggml_type={:?}, shape={:?}, n_bytes={}, offset={})",
            self.name, self.ggml_type, self.shape, self.n_bytes, self.offset
        )
    }
}

fn meta_to_py(py: Python<'_>, value: &MetaValue) -> PyResult<Py<PyAny>> {
    Ok(match value {
        MetaValue::U8(v) => v.into_pyobject(py)?.into_any().unbind(),
        MetaValue::I8(v) => v.into_pyobject(py)?.into_any().unbind(),
        MetaValue::U16(v) => v.into_pyobject(py)?.into_any().unbind(),
        MetaValue::I16(v) => v.into_pyobject(py)?.into_any().unbind(),
        MetaValue::U32(v) => v.into_pyobject(py)?.into_any().unbind(),
        MetaValue::I32(v) => v.into_pyobject(py)?.into_any().unbind(),
        MetaValue::U64(v) => v.into_pyobject(py)?.into_any().unbind(),
        MetaValue::I64(v) => v.into_pyobject(py)?.into_any().unbind(),
        MetaValue::F32(v) => (*v as f64).into_pyobject(py)?.into_any().unbind(),
        MetaValue::F64(v) => v.into_pyobject(py)?.into_any().unbind(),
        MetaValue::Bool(v) => pyo3::types::PyBool::new(py, *v).to_owned().into_any().unbind(),
        MetaValue::String(s) => s.into_pyobject(py)?.into_any().unbind(),
        MetaValue::Array(_, items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(meta_to_py(py, item)?)?;
            }
            list.into_any().unbind()
        }
    })
}

/// Parses a ggml type given as an id or a name.
pub fn parse_ggml_type(ty: &Bound<'_, PyAny>) -> PyResult<GgmlType> {
    if let Ok(id) = ty.extract::<u32>() {
        return GgmlType::from_id(id).ok_or_else(|| raise("UnsupportedTypeError", format!("unknown ggml type id {id}")));
    }
    let name: String = ty.extract()?;
    GgmlType::from_name(&name).ok_or_else(|| raise("UnsupportedTypeError", format!("unknown ggml type {name:?}")))
}

/// Dequantizes on `device` ("cpu", "cuda" or "cuda:N") into a new float32 array of `shape`.
/// Sizes are checked before anything is allocated; `what` (the tensor name or the call) prefixes
/// error messages.
pub fn dequantize_on<'py>(
    py: Python<'py>,
    device: &str,
    ty: GgmlType,
    bytes: &[u8],
    shape: &[usize],
    what: &str,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let named = |err: PyErr| -> PyErr {
        Python::attach(|py| {
            let msg = format!("{what}: {}", err.value(py));
            let cls = err.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "QuantError".into());
            raise(&cls, msg)
        })
    };
    let n_elems: usize = shape.iter().product();
    if device.starts_with("cuda") {
        let values = super::cuda::dequantize_on_gpu(py, device, ty, bytes, n_elems).map_err(|e| named(e.into()))?;
        return PyArray1::from_vec(py, values).reshape(shape);
    }
    if device != "cpu" {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "unknown device {device:?} (expected \"cpu\", \"cuda\" or \"cuda:N\")"
        )));
    }
    if !quant::can_dequantize(ty) {
        return Err(named(quant::QuantError::Unsupported(ty).into()));
    }
    quant::check_len(ty, bytes.len(), n_elems).map_err(|e| named(e.into()))?;
    // numpy's allocator gives large arrays transparent huge pages: the first touch of a 500 MB
    // tensor then costs a few hundred page faults instead of 130 thousand.
    // SAFETY: every element is written by `dequantize` below before the array is returned.
    let array = unsafe { PyArrayDyn::<f32>::new(py, numpy::ndarray::IxDyn(shape), false) };
    // SAFETY: the array was just created here, so no other reference to its data exists.
    let out = unsafe { array.as_slice_mut() }
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("new array not contiguous: {e}")))?;
    py.detach(|| quant::dequantize(ty, bytes, out)).map_err(|e| named(e.into()))?;
    Ok(array)
}

/// Calls `f` with the bytes of `raw` (`bytes` or a C-contiguous uint8 numpy array).
pub fn with_raw_bytes<T>(raw: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> PyResult<T>) -> PyResult<T> {
    if let Ok(b) = raw.cast::<PyBytes>() {
        return f(b.as_bytes());
    }
    let array: PyReadonlyArrayDyn<'_, u8> =
        raw.extract().map_err(|_| pyo3::exceptions::PyTypeError::new_err("raw must be bytes or a uint8 numpy array"))?;
    let bytes = array.as_slice().map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!("raw must be C-contiguous (got strides {:?})", array.strides()))
    })?;
    f(bytes)
}

/// Dequantizes raw block bytes (a uint8 array such as `GgufFile.raw()`, or `bytes`) of type
/// `ggml_type` (id or name) into a float32 array of `shape` (numpy order), on `device`.
///
/// >>> ferrite.dequantize(f.raw("output.weight"), "Q8_0", (151936, 896))
#[pyfunction]
#[pyo3(signature = (raw, ggml_type, shape, device = "cpu"))]
fn dequantize<'py>(
    py: Python<'py>,
    raw: &Bound<'py, PyAny>,
    ggml_type: &Bound<'py, PyAny>,
    shape: Vec<usize>,
    device: &str,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let ty = parse_ggml_type(ggml_type)?;
    // Overflow check only: dequantize_on multiplies the dims once this has passed.
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("shape {shape:?} overflows")))?;
    let what = format!("dequantize({ty}, shape={shape:?})");
    with_raw_bytes(raw, |bytes| dequantize_on(py, device, ty, bytes, &shape, &what))
}

/// Every ggml type as `(name, id, block_elements, block_bytes)`.
#[pyfunction]
fn ggml_types() -> Vec<(&'static str, u32, usize, usize)> {
    GgmlType::ALL.iter().map(|t| (t.name(), t.id(), t.block_elems(), t.block_bytes())).collect()
}
