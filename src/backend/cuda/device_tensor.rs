//! A float32 tensor that stays in device memory, for handing to other GPU libraries (DLPack)
//! without a copy.

use std::sync::Arc;

use cudarc::driver::CudaSlice;

use super::backend::addr;
use super::context::CudaContext;
use super::dequant::dequantize_into;
use super::error::CudaError;
use crate::quant::GgmlType;

/// Float32 elements in device memory, with the context that owns them (kept alive with them).
pub struct DeviceTensor {
    ctx: Arc<CudaContext>,
    data: CudaSlice<f32>,
    len: usize,
}

impl DeviceTensor {
    /// Uploads `bytes` (whole blocks of `ty`) and dequantizes them on the GPU into a new buffer.
    pub fn dequantize(ctx: Arc<CudaContext>, ty: GgmlType, bytes: &[u8], n_elems: usize) -> Result<DeviceTensor, CudaError> {
        let what = format!("{ty} tensor of {n_elems} elements");
        let src = ctx.upload(bytes, &format!("the blocks of a {what}"))?;
        let mut data = ctx.alloc::<f32>(n_elems.max(1), &format!("the dequantized {what}"))?;
        dequantize_into(&ctx, ty, &src.slice(..), n_elems, &mut data.slice_mut(..))?;
        // The consumer may read on any stream: the data is complete before anyone sees it.
        ctx.sync(&format!("dequantizing a {what}"))?;
        Ok(DeviceTensor { ctx, data, len: n_elems })
    }

    /// A new buffer of `len` floats (contents unspecified until written).
    pub fn alloc(ctx: Arc<CudaContext>, len: usize, what: &str) -> Result<DeviceTensor, CudaError> {
        let data = ctx.alloc::<f32>(len.max(1), what)?;
        Ok(DeviceTensor { ctx, data, len })
    }

    /// Copies `n` floats from the start of `src` to element `at` of this buffer, then waits, so a
    /// consumer on any stream sees them.
    pub fn copy_from(&mut self, src: &CudaSlice<f32>, n: usize, at: usize) -> Result<(), CudaError> {
        if at + n > self.len || n > src.len() {
            return Err(CudaError::Invalid(format!("copying {n} floats to {at} of a buffer of {}", self.len)));
        }
        let view = src.slice(..n);
        let mut dst = self.data.slice_mut(at..at + n);
        self.ctx
            .stream()
            .memcpy_dtod(&view, &mut dst)
            .map_err(|e| CudaError::Driver { op: format!("copying {n} floats device->device"), msg: super::error::describe(&e) })?;
        self.ctx.sync("copying rows device->device")
    }

    /// Copies `host` floats to a new device buffer.
    pub fn from_host(ctx: Arc<CudaContext>, host: &[f32], what: &str) -> Result<DeviceTensor, CudaError> {
        let data = ctx.upload(host, what)?;
        ctx.sync(what)?;
        Ok(DeviceTensor { ctx, data, len: host.len() })
    }

    /// The device address of the first element.
    pub fn device_ptr(&self) -> u64 {
        addr(&self.data, &self.ctx)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// A host copy.
    pub fn to_host(&self) -> Result<Vec<f32>, CudaError> {
        let mut v = self.ctx.download(&self.data, "a device tensor")?;
        v.truncate(self.len);
        Ok(v)
    }
}
