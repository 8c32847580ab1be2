//! `CudaError`: everything that can go wrong between ferrite and the CUDA driver, NVRTC or cuBLAS.
//! Each variant says which library or call failed and with what sizes, so a Python user sees the
//! problem without a debugger.

use cudarc::driver::DriverError;
use thiserror::Error;

use crate::quant::QuantError;

#[derive(Debug, Error)]
pub enum CudaError {
    /// libcuda could not be loaded: no NVIDIA driver on this machine.
    #[error("CUDA is not available: the NVIDIA driver library (libcuda.so.1) was not found{hint}")]
    NoDriver { hint: String },
    /// The driver loaded but `cuInit` failed (no device, container without GPU access, ...).
    #[error("CUDA is not available: cuInit failed with {0}")]
    InitFailed(String),
    /// A library other than the driver is missing (NVRTC, cuBLAS).
    #[error("CUDA library {lib} was not found (searched the loader path for {candidates}); install the CUDA toolkit runtime libraries or add their directory to LD_LIBRARY_PATH")]
    MissingLibrary { lib: &'static str, candidates: String },
    #[error("invalid device {0:?}: expected \"cuda\" or \"cuda:N\" (N = device ordinal)")]
    BadDevice(String),
    #[error("no CUDA device {ordinal}: this machine has {count} CUDA device(s)")]
    NoSuchDevice { ordinal: usize, count: usize },
    #[error("CUDA out of memory on device {ordinal} allocating {requested_bytes} bytes for {what} ({free_bytes} of {total_bytes} bytes free)")]
    OutOfMemory { ordinal: usize, what: String, requested_bytes: usize, free_bytes: usize, total_bytes: usize },
    /// A driver call failed. `op` names the call and what it was for.
    #[error("CUDA driver call failed: {op}: {msg}")]
    Driver { op: String, msg: String },
    /// A kernel faulted; detected at the next synchronization, so `op` names the sync point and
    /// the kernels queued before it. The context is unusable afterwards (CUDA makes such errors
    /// sticky); restart the process.
    #[error("CUDA kernel fault detected at {op}: {msg} (the CUDA context is now unusable; restart the process)")]
    KernelFault { op: String, msg: String },
    #[error("NVRTC failed to compile kernels/{kernel} for {arch} with options {options:?}:\n{log}")]
    Compile { kernel: String, arch: String, options: Vec<String>, log: String },
    #[error("NVRTC call failed while building kernels/{kernel}: {msg}")]
    Nvrtc { kernel: String, msg: String },
    #[error("kernel {function:?} not found in kernels/{kernel}")]
    NoSuchKernel { kernel: String, function: String },
    /// The block data itself is wrong or the type has no GPU kernel.
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("{0}")]
    Invalid(String),
}

/// The driver's name and description of an error code, e.g. "CUDA_ERROR_ILLEGAL_ADDRESS (an
/// illegal memory access was encountered)".
pub fn describe(e: &DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name} ({})", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// Errors that mean a kernel faulted: they surface at the next sync and poison the context.
fn is_fault(e: &DriverError) -> bool {
    use cudarc::driver::sys::CUresult::*;
    matches!(
        e.0,
        CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_LAUNCH_FAILED
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_ASSERT
            | CUDA_ERROR_LAUNCH_TIMEOUT
            | CUDA_ERROR_ECC_UNCORRECTABLE
    )
}

/// Extension for `Result<T, DriverError>`: attach what the call was doing.
pub trait DriverResultExt<T> {
    /// `op` names the call and its purpose, e.g. "memcpy 4096 bytes host->device for blk.0.attn_q".
    fn ctx(self, op: impl FnOnce() -> String) -> Result<T, CudaError>;
}

impl<T> DriverResultExt<T> for Result<T, DriverError> {
    fn ctx(self, op: impl FnOnce() -> String) -> Result<T, CudaError> {
        self.map_err(|e| {
            let msg = describe(&e);
            if is_fault(&e) {
                CudaError::KernelFault { op: op(), msg }
            } else {
                CudaError::Driver { op: op(), msg }
            }
        })
    }
}

/// Whether a driver error is an out-of-memory condition (so callers can report sizes).
pub fn is_oom(e: &DriverError) -> bool {
    e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
}
