//! The backend layer's error enum: what a device op or the device itself reports.

use thiserror::Error;

use super::cuda::CudaError;
use crate::quant::QuantError;

#[derive(Debug, Error)]
pub enum BackendError {
    /// A tensor type the device cannot compute with, or block data that does not fit its type.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// The CUDA driver, NVRTC or cuBLAS failed (or is missing), out of memory, a kernel fault.
    #[error(transparent)]
    Cuda(CudaError),
    #[error("token id {id} is out of range for a vocabulary of {vocab_size}")]
    BadTokenId { id: u32, vocab_size: usize },
    #[error("tensor {tensor:?}: {problem}")]
    BadTensor { tensor: String, problem: String },
    #[error("unknown device {0:?} (expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\")")]
    UnknownDevice(String),
    /// Shapes, sizes or indices an op was given that do not fit (a bug of the caller's).
    #[error("backend: {0}")]
    Invalid(String),
}

impl From<CudaError> for BackendError {
    fn from(e: CudaError) -> BackendError {
        match e {
            // A type without a kernel is the same error on every device.
            CudaError::Quant(q) => BackendError::Quant(q),
            other => BackendError::Cuda(other),
        }
    }
}
