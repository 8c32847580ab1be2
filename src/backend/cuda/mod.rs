//! CUDA backend: device selection and streams (`context`), errors (`error`), run-time kernel
//! compilation with a disk cache (`nvrtc`) of the sources in kernels/ (`kernels`), modules
//! compiled ahead of time for the common GPU (`prebuilt`), the CUDA
//! libraries read into memory ahead of use on a cold machine (`readahead`), device memory and
//! weight upload (`memory`), the dequantization kernels (`dequant`), and on top of them the
//! model's ops (`backend`: [`CudaBackend`] implements `crate::backend::Backend`; its projections
//! are in `matmul`).
//!
//! Nothing here links against CUDA: cudarc loads libcuda/libnvrtc/libcublas at run time, and
//! every entry point checks they exist first, so ferrite builds, imports and runs its CPU paths
//! on machines without a GPU.
//!
//! Typical use by an op:
//! ```ignore
//! let ctx = CudaContext::get("cuda:0")?;
//! let w = ctx.upload_weights(file.tensor_bytes(&info), &info.name)?;  // blocks as-is
//! let f = ctx.function(&MY_KERNELS, "my_kernel")?;                    // NVRTC, cached
//! launch!(ctx, &f, "my_kernel", cfg, &w, &mut out, &n)?;             // launch.rs; the kernel
//!                                                                     // starts with dependent_wait()
//! let host = ctx.download(&out, "my output")?;                        // syncs; reports faults
//! ```

pub mod backend;
pub mod context;
pub mod dequant;
pub mod device_tensor;
pub mod kernels;
pub mod launch;
pub mod error;
pub mod ffn;
mod matmul;
pub use matmul::{test_gemm_f16, test_gemm_f16_norm, NORM_SOURCE_GEMMS, NORM_SOURCE_LAUNCHES, STACKED_GEMMS, SWIGLU_GEMMS};
pub mod matmul_mma;
pub mod matvec;
pub mod sampling;
pub mod memory;
pub mod nvrtc;
pub mod prebuilt;
pub mod prefetch;
mod readahead;
pub mod repack;

pub use backend::{addr as backend_addr, CudaBackend};
pub use device_tensor::DeviceTensor;
pub use sampling::{DeviceSampler, SAMPLE_MASS_LAUNCHES};
pub use context::{cuda_available, device_count, parse_device, CudaContext};
pub use error::CudaError;
pub use nvrtc::KernelSource;
