//! Which device runs a model, and building its backend.
//!
//! The model is generic over its backend; [`with_backend`] makes the backend a [`Device`] names
//! and hands it to a [`WithBackend`] (the model's loader), so that nothing above this module
//! names a backend type.

use super::cpu::CpuBackend;
use super::cuda::{self, CudaBackend};
use super::{Backend, BackendError, KvDtype};
use crate::quant::GgmlType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The CUDA device of this ordinal.
    Cuda(usize),
}

impl Device {
    /// `"cpu"`, `"cuda"` (device 0), `"cuda:N"`, or `"auto"`: the first CUDA device when one is
    /// usable, else the CPU.
    pub fn parse(name: &str) -> Result<Device, BackendError> {
        match name {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(if cuda::cuda_available() { Device::Cuda(0) } else { Device::Cpu }),
            n if n.starts_with("cuda") => Ok(Device::Cuda(cuda::parse_device(n)?)),
            other => Err(BackendError::UnknownDevice(other.to_string())),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".to_string(),
            Device::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

/// Options a backend takes when it is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendOptions {
    /// CPU: multiply dequantized weight rows by float32 activations instead of quantizing the
    /// activations to 8 bits. CUDA: multiplies of more than 4 rows in float32 on the CUDA cores
    /// instead of f16 on the tensor cores.
    pub exact_matmul: bool,
    /// CPU: threads for every op; `None`: the physical cores (or `RAYON_NUM_THREADS`).
    pub threads: Option<usize>,
    /// What the model will compute, for a backend that compiles its kernels (CUDA) to compile
    /// them all at once.
    pub needs: KernelNeeds,
}

/// What a model computes with, read from its file before any weight uploads: the types of its
/// matrices and its attention head width. A backend that compiles kernels on first use compiles
/// every one these need at once (in parallel) instead of one group as each first comes up: on a
/// new machine the compiles are the wait before the first token. The default (nothing known)
/// leaves every kernel to its first use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelNeeds {
    /// Bit `id` for each GGUF type id of a matrix (ids below 64; a larger one is left to its
    /// first use).
    matrix_type_bits: u64,
    /// The attention head width; 0: unknown.
    pub head_dim: usize,
    /// The KV cache's element type (attention is compiled per type).
    pub kv_dtype: KvDtype,
}

impl KernelNeeds {
    pub fn with_matrix_type(mut self, ty: GgmlType) -> KernelNeeds {
        if ty.id() < 64 {
            self.matrix_type_bits |= 1u64 << ty.id();
        }
        self
    }

    pub fn with_head_dim(self, head_dim: usize) -> KernelNeeds {
        KernelNeeds { head_dim, ..self }
    }

    pub fn with_kv_dtype(self, kv_dtype: KvDtype) -> KernelNeeds {
        KernelNeeds { kv_dtype, ..self }
    }

    /// The matrix types, in `GgmlType::ALL`'s order.
    pub fn matrix_types(&self) -> impl Iterator<Item = GgmlType> + '_ {
        GgmlType::ALL.into_iter().filter(|t| t.id() < 64 && self.matrix_type_bits & (1u64 << t.id()) != 0)
    }
}

/// Something to do with a backend of any type (the model's loader).
pub trait WithBackend {
    type Output;
    fn run<B: Backend>(self, backend: B) -> Self::Output;
}

/// Makes the backend of `device` and runs `w` with it.
pub fn with_backend<W: WithBackend>(device: Device, options: BackendOptions, w: W) -> Result<W::Output, BackendError> {
    Ok(match device {
        Device::Cpu => {
            let backend = match options.threads {
                Some(n) => CpuBackend::with_all_threads(n)?,
                None => CpuBackend::new(),
            };
            w.run(backend.with_exact_matmul(options.exact_matmul))
        }
        Device::Cuda(n) => w.run(CudaBackend::with_needs(&Device::Cuda(n).name(), options.exact_matmul, &options.needs)?),
    })
}
