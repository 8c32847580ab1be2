//! `ferrite.DeviceTensor`: a float32 tensor in GPU memory that torch, CuPy and JAX take without a
//! copy through the DLPack protocol (`__dlpack__`, `__dlpack_device__`), and that keeps its
//! memory alive for as long as any of them holds it.
//!
//! DLPack's C structs are declared here (dlpack.h, v1.0, the legacy and the versioned capsule);
//! the capsule's owner is a boxed `Exported` holding an `Arc` of the tensor.

use std::ffi::{c_void, CStr};
use std::sync::Arc;

use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;

use crate::backend::cuda::DeviceTensor;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDeviceTensor>()?;
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

const K_DL_CUDA: i32 = 2;
const K_DL_FLOAT: u8 = 2;

/// What a capsule owns: the tensor (kept alive) and the shape array DLTensor points into.
struct Exported {
    _tensor: Arc<DeviceTensor>,
    shape: Vec<i64>,
}

fn dl_tensor(t: &DeviceTensor, shape: &mut [i64]) -> DLTensor {
    DLTensor {
        data: t.device_ptr() as *mut c_void,
        device: DLDevice { device_type: K_DL_CUDA, device_id: t.ordinal() as i32 },
        ndim: shape.len() as i32,
        dtype: DLDataType { code: K_DL_FLOAT, bits: 32, lanes: 1 },
        shape: shape.as_mut_ptr(),
        // Null strides: compact row-major.
        strides: std::ptr::null_mut(),
        byte_offset: 0,
    }
}

unsafe extern "C" fn delete_legacy(m: *mut DLManagedTensor) {
    if m.is_null() {
        return;
    }
    // SAFETY: `m` and its manager_ctx were made by Box::into_raw in `capsule_legacy`, and a
    // consumer calls the deleter once.
    unsafe {
        let m = Box::from_raw(m);
        drop(Box::from_raw(m.manager_ctx as *mut Exported));
    }
}

unsafe extern "C" fn delete_versioned(m: *mut DLManagedTensorVersioned) {
    if m.is_null() {
        return;
    }
    // SAFETY: as in `delete_legacy`.
    unsafe {
        let m = Box::from_raw(m);
        drop(Box::from_raw(m.manager_ctx as *mut Exported));
    }
}

/// The capsule destructor: a capsule still named "dltensor" was never consumed, so its tensor is
/// ours to delete; a consumed one ("used_dltensor") is the consumer's.
unsafe extern "C" fn capsule_destructor_legacy(capsule: *mut pyo3::ffi::PyObject) {
    // SAFETY: called by Python with our capsule; the name check tells whether it was consumed.
    unsafe {
        let name = c"dltensor";
        if pyo3::ffi::PyCapsule_IsValid(capsule, name.as_ptr()) == 1 {
            let m = pyo3::ffi::PyCapsule_GetPointer(capsule, name.as_ptr()) as *mut DLManagedTensor;
            delete_legacy(m);
        }
    }
}

unsafe extern "C" fn capsule_destructor_versioned(capsule: *mut pyo3::ffi::PyObject) {
    // SAFETY: as above.
    unsafe {
        let name = c"dltensor_versioned";
        if pyo3::ffi::PyCapsule_IsValid(capsule, name.as_ptr()) == 1 {
            let m = pyo3::ffi::PyCapsule_GetPointer(capsule, name.as_ptr()) as *mut DLManagedTensorVersioned;
            delete_versioned(m);
        }
    }
}

fn new_capsule(py: Python<'_>, ptr: *mut c_void, name: &'static CStr, destructor: pyo3::ffi::PyCapsule_Destructor) -> PyResult<Py<PyAny>> {
    // SAFETY: `ptr` is a live heap object the destructor knows how to free; `name` is static.
    let raw = unsafe { pyo3::ffi::PyCapsule_New(ptr, name.as_ptr(), Some(destructor)) };
    if raw.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: PyCapsule_New returned a new reference.
    Ok(unsafe { Py::from_owned_ptr(py, raw) })
}

/// A float32 tensor in GPU memory. ``torch.from_dlpack(t)`` and ``cupy.from_dlpack(t)`` take it
/// without a copy (and keep its memory alive); ``t.numpy()`` copies it to the host.
///
/// >>> t = f.device_tensor("blk.0.ffn_down.weight")          # dequantized on cuda:0
/// >>> w = torch.from_dlpack(t)                               # no copy
/// >>> t.shape, t.device
/// ((896, 4864), 'cuda:0')
#[pyclass(name = "DeviceTensor", module = "ferrite", frozen)]
pub struct PyDeviceTensor {
    tensor: Arc<DeviceTensor>,
    shape: Vec<usize>,
}

impl PyDeviceTensor {
    pub fn new(tensor: DeviceTensor, shape: Vec<usize>) -> PyResult<PyDeviceTensor> {
        let n: usize = shape.iter().product();
        if n != tensor.len() {
            return Err(PyValueError::new_err(format!("shape {shape:?} does not hold {} elements", tensor.len())));
        }
        Ok(PyDeviceTensor { tensor: Arc::new(tensor), shape })
    }
}

#[pymethods]
impl PyDeviceTensor {
    #[getter]
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        "float32"
    }

    #[getter]
    fn device(&self) -> String {
        format!("cuda:{}", self.tensor.ordinal())
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.tensor.len() * 4
    }

    /// ``(kDLCUDA, device ordinal)``.
    fn __dlpack_device__(&self) -> (i32, i32) {
        (K_DL_CUDA, self.tensor.ordinal() as i32)
    }

    /// A DLPack capsule of the tensor (no copy). The data is complete before this returns, so
    /// any ``stream`` may read it. ``max_version >= (1, 0)`` gets a versioned capsule.
    #[pyo3(signature = (*, stream = None, max_version = None, dl_device = None, copy = None))]
    fn __dlpack__(
        &self,
        py: Python<'_>,
        stream: Option<Bound<'_, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        let _ = stream;
        if let Some((kind, id)) = dl_device {
            if (kind, id) != self.__dlpack_device__() {
                return Err(PyBufferError::new_err(format!(
                    "this tensor is on {}; export to device ({kind}, {id}) would need a copy",
                    self.device()
                )));
            }
        }
        if copy == Some(true) {
            return Err(PyBufferError::new_err("DeviceTensor exports without copying; copy=True is not supported"));
        }
        let mut exported = Box::new(Exported { _tensor: self.tensor.clone(), shape: self.shape.iter().map(|&d| d as i64).collect() });
        let tensor = dl_tensor(&self.tensor, &mut exported.shape);
        let ctx = Box::into_raw(exported) as *mut c_void;
        if max_version.is_some_and(|(major, _)| major >= 1) {
            let m = Box::new(DLManagedTensorVersioned {
                version: DLPackVersion { major: 1, minor: 0 },
                manager_ctx: ctx,
                deleter: Some(delete_versioned),
                flags: 0,
                dl_tensor: tensor,
            });
            new_capsule(py, Box::into_raw(m) as *mut c_void, c"dltensor_versioned", capsule_destructor_versioned)
        } else {
            let m = Box::new(DLManagedTensor { dl_tensor: tensor, manager_ctx: ctx, deleter: Some(delete_legacy) });
            new_capsule(py, Box::into_raw(m) as *mut c_void, c"dltensor", capsule_destructor_legacy)
        }
    }

    /// A host copy as a float32 numpy array.
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
        use numpy::PyArrayMethods;
        let t = self.tensor.clone();
        let host = py.detach(|| t.to_host())?;
        numpy::PyArray1::from_vec(py, host).reshape(self.shape.clone())
    }

    fn __repr__(&self) -> String {
        format!("DeviceTensor(shape={:?}, dtype=float32, device={:?})", self.shape, self.device())
    }
}
