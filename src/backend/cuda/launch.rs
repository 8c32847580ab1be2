//! Kernel arguments for [`CudaContext::launch_raw`](super::context::CudaContext::launch_raw):
//! every argument of ferrite's kernels is a scalar or a device address of at most 8 bytes, held
//! in a `u64` (little-endian, so a 4-byte argument reads its low half) whose address is passed.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr};

use super::context::CudaContext;
use super::error::CudaError;

/// Raises the dynamic shared memory a launch of `f` may ask for to `bytes` (past 48 KB a launch
/// fails unless the function allows it); called once when the function is loaded.
pub fn allow_dynamic_shared(f: &cudarc::driver::CudaFunction, name: &str, bytes: u32) -> Result<(), CudaError> {
    use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
        .map_err(|e| CudaError::Driver { op: format!("cuFuncSetAttribute({name}, {bytes} bytes of dynamic shared memory)"), msg: e.to_string() })
}

/// Asks that an SM running `f` give shared memory the largest part of its on-chip memory (the
/// carveout; L1 keeps the rest), so that as many blocks as its launch bounds plan fit at once
/// where each asks for much dynamic shared memory. A hint the driver may override.
pub fn prefer_shared_carveout(f: &cudarc::driver::CudaFunction, name: &str) -> Result<(), CudaError> {
    use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT;
    f.set_attribute(CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100)
        .map_err(|e| CudaError::Driver { op: format!("cuFuncSetAttribute({name}, shared memory carveout 100 %)"), msg: e.to_string() })
}

/// A value a kernel takes as one argument.
pub trait KernelArg {
    /// The argument's bytes, zero-extended to 8.
    fn word(&self, ctx: &CudaContext) -> u64;
}

macro_rules! scalar_args {
    ($($t:ty => $conv:expr),+ $(,)?) => {$(
        impl KernelArg for $t {
            #[inline]
            fn word(&self, _ctx: &CudaContext) -> u64 {
                let f: fn($t) -> u64 = $conv;
                f(*self)
            }
        }
    )+};
}
scalar_args!(u32 => |v| v as u64, i32 => |v| v as u32 as u64, u64 => |v| v, f32 => |v| v.to_bits() as u64);

impl<T> KernelArg for CudaSlice<T> {
    #[inline]
    fn word(&self, ctx: &CudaContext) -> u64 {
        super::backend::addr(self, ctx)
    }
}
impl<T> KernelArg for CudaView<'_, T> {
    #[inline]
    fn word(&self, ctx: &CudaContext) -> u64 {
        super::backend::addr(self, ctx)
    }
}
impl<T> KernelArg for CudaViewMut<'_, T> {
    #[inline]
    fn word(&self, ctx: &CudaContext) -> u64 {
        let (ptr, _guard) = self.device_ptr(ctx.stream());
        ptr
    }
}
impl<A: KernelArg + ?Sized> KernelArg for &A {
    #[inline]
    fn word(&self, ctx: &CudaContext) -> u64 {
        (**self).word(ctx)
    }
}
impl<A: KernelArg + ?Sized> KernelArg for &mut A {
    #[inline]
    fn word(&self, ctx: &CudaContext) -> u64 {
        (**self).word(ctx)
    }
}

/// Queues `func` with the listed arguments on the context's stream and checks the launch.
macro_rules! launch {
    ($ctx:expr, $func:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let ctx: &$crate::backend::cuda::context::CudaContext = &$ctx;
        let mut words = [$( $crate::backend::cuda::launch::KernelArg::word(&$arg, ctx) ),+];
        let mut params = words.each_mut().map(|w| w as *mut u64 as *mut std::ffi::c_void);
        // SAFETY: each call site passes the argument list of the named kernel in kernels/, with
        // buffer sizes checked against the element counts beforehand; every kernel waits for its
        // predecessor before touching device memory that other kernels use (see `launch_raw`).
        ctx.check_launch(unsafe { ctx.launch_raw($func, $cfg, &mut params) }, $name)
    }};
}
pub(crate) use launch;
