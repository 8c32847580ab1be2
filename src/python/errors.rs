//! One mapping from each layer's error enum to the exception classes of `ferrite.errors`
//! (defined in Python so they can inherit from both `FerriteError` and a builtin).

use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::backend::cuda::CudaError;
use crate::backend::BackendError;
use crate::engine::EngineError;
use crate::gguf::GgufError;
use crate::model::ModelError;
use crate::quant::QuantError;
use crate::sampling::SamplingError;
use crate::tokenizer::TokenizerError;

/// An instance of `ferrite.errors.<class_name>` carrying `message`.
pub fn raise(class_name: &str, message: String) -> PyErr {
    Python::attach(|py| {
        let class = py
            .import("ferrite.errors")
            .and_then(|m| m.getattr(class_name))
            .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
        match class {
            Ok(class) => PyErr::from_type(class, message),
            Err(import_failure) => import_failure,
        }
    })
}

impl From<GgufError> for PyErr {
    fn from(e: GgufError) -> PyErr {
        match &e {
            GgufError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                pyo3::exceptions::PyFileNotFoundError::new_err(e.to_string())
            }
            GgufError::Io { .. } => pyo3::exceptions::PyOSError::new_err(e.to_string()),
            GgufError::NoSuchTensor(_) | GgufError::NoSuchKey(_) => raise("KeyNotFoundError", e.to_string()),
            _ => raise("GgufError", e.to_string()),
        }
    }
}

impl From<QuantError> for PyErr {
    fn from(e: QuantError) -> PyErr {
        match e {
            QuantError::Unsupported(_) => raise("UnsupportedTypeError", e.to_string()),
            _ => raise("QuantError", e.to_string()),
        }
    }
}

impl From<TokenizerError> for PyErr {
    fn from(e: TokenizerError) -> PyErr {
        match e {
            // A malformed file is the file's problem, reported like any other GGUF error.
            TokenizerError::Gguf(g) => g.into(),
            TokenizerError::InvalidId { .. } => raise("InvalidTokenError", e.to_string()),
            other => raise("TokenizerError", other.to_string()),
        }
    }
}

impl From<ModelError> for PyErr {
    fn from(e: ModelError) -> PyErr {
        match e {
            ModelError::ContextLength { .. } => raise("ContextLengthError", e.to_string()),
            ModelError::BadTokenId { .. } => raise("InvalidTokenError", e.to_string()),
            ModelError::Backend(b) => b.into(),
            ModelError::Quant(q) => q.into(),
            _ => raise("ModelError", e.to_string()),
        }
    }
}

impl From<SamplingError> for PyErr {
    fn from(e: SamplingError) -> PyErr {
        match e {
            SamplingError::BadParam { .. } => raise("SamplingParameterError", e.to_string()),
            SamplingError::BadTokenId { .. } => raise("InvalidTokenError", e.to_string()),
            _ => raise("ModelError", e.to_string()),
        }
    }
}

impl From<EngineError> for PyErr {
    fn from(e: EngineError) -> PyErr {
        match e {
            EngineError::Model(e) => e.into(),
            EngineError::Sampling(e) => e.into(),
            EngineError::Tokenizer(e) => e.into(),
            EngineError::PromptTooLong { .. }
            | EngineError::TooLongForCache { .. }
            | EngineError::KvCacheFull { .. }
            | EngineError::SequenceFull { .. } => raise("ContextLengthError", e.to_string()),
            EngineError::NoSuchSequence(_) => raise("ModelError", e.to_string()),
            EngineError::TooManyLogprobs(_) => raise("SamplingParameterError", e.to_string()),
            EngineError::EmptyPrompt | EngineError::EmptyStopString | EngineError::BadLimits => {
                pyo3::exceptions::PyValueError::new_err(e.to_string())
            }
        }
    }
}

impl From<BackendError> for PyErr {
    fn from(e: BackendError) -> PyErr {
        match e {
            BackendError::Cuda(c) => c.into(),
            BackendError::Quant(q) => q.into(),
            BackendError::BadTokenId { .. } => raise("InvalidTokenError", e.to_string()),
            _ => raise("ModelError", e.to_string()),
        }
    }
}

impl From<CudaError> for PyErr {
    fn from(e: CudaError) -> PyErr {
        match e {
            CudaError::Quant(q) => q.into(),
            CudaError::OutOfMemory { .. } => raise("CudaOutOfMemoryError", e.to_string()),
            other => raise("CudaError", other.to_string()),
        }
    }
}
