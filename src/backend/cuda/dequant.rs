//! GPU dequantization of every ggml block type to float32 (kernels/dequant.cu), bit-identical to
//! `quant::dequantize` on the CPU.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::context::CudaContext;
use super::error::CudaError;
use super::nvrtc::KernelSource;
use crate::quant::{check_len, GgmlType, QuantError};

/// kernels/dequant.cu. `--fmad=false`: no multiply-add contraction, so each element is computed
/// with exactly the float operations of the CPU reference.
pub const DEQUANT: KernelSource = KernelSource {
    file: "dequant.cu",
    src: include_str!("../../../kernels/dequant.cu"),
    options: &["--fmad=false"],
};

/// The kernel that dequantizes `ty` (`dequant_<snake name>`, one per entry of
/// `FERRITE_BLOCK_TYPES`), or `None` when there is none. Exactly the types the CPU reference
/// dequantizes: a GPU result always has a CPU result to be checked against.
pub fn kernel_name(ty: GgmlType) -> Option<String> {
    crate::quant::can_dequantize(ty).then(|| format!("dequant_{}", ty.snake_name()))
}

const THREADS_PER_BLOCK: u32 = 256;
/// Enough blocks to fill any current GPU several times over; the kernels loop beyond that.
const MAX_GRID_BLOCKS: u64 = 1 << 16;

/// Dequantizes `n_elems` elements of `ty` from device memory `src` into `dst` (queued on the
/// context's stream). `src` must hold exactly the tensor's blocks.
pub fn dequantize_into(
    ctx: &CudaContext,
    ty: GgmlType,
    src: &CudaView<'_, u8>,
    n_elems: usize,
    dst: &mut CudaViewMut<'_, f32>,
) -> Result<(), CudaError> {
    check_len(ty, src.len(), n_elems)?;
    if dst.len() < n_elems {
        return Err(CudaError::Invalid(format!("dequantize {ty}: output holds {} elements, need {n_elems}", dst.len())));
    }
    let name = kernel_name(ty).ok_or(QuantError::Unsupported(ty))?;
    if n_elems == 0 {
        return Ok(());
    }
    let func = ctx.function(&DEQUANT, &name)?;
    let grid = (n_elems as u64).div_ceil(THREADS_PER_BLOCK as u64).min(MAX_GRID_BLOCKS) as u32;
    let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (THREADS_PER_BLOCK, 1, 1), shared_mem_bytes: 0 };
    let n = n_elems as u64;
    let stream = ctx.stream();
    let mut launch = stream.launch_builder(&func);
    launch.arg(src).arg(dst).arg(&n);
    // SAFETY: the kernel reads n_elems / block_elems whole blocks from `src` (length checked
    // above) and writes n_elems floats to `dst` (length checked above).
    ctx.check_launch(unsafe { launch.launch(cfg) }, &name)
}

/// Uploads `bytes` (whole blocks of `ty`), dequantizes on the GPU and returns the floats.
pub fn dequantize(ctx: &CudaContext, ty: GgmlType, bytes: &[u8], n_elems: usize) -> Result<Vec<f32>, CudaError> {
    dequantize_checked(ctx, ty, bytes, n_elems, None, 0)
}

/// As [`dequantize`], for tests: `poison_bits` fills the output with this 32-bit pattern first,
/// so an element the kernel does not write is visible; `src_offset_bytes` places the blocks that
/// many bytes into the device buffer (an odd offset proves the kernel makes no aligned loads).
pub fn dequantize_checked(
    ctx: &CudaContext,
    ty: GgmlType,
    bytes: &[u8],
    n_elems: usize,
    poison_bits: Option<u32>,
    src_offset_bytes: usize,
) -> Result<Vec<f32>, CudaError> {
    check_len(ty, bytes.len(), n_elems)?;
    kernel_name(ty).ok_or(QuantError::Unsupported(ty))?;
    let what = format!("{ty} tensor of {n_elems} elements");
    let mut src = ctx.alloc::<u8>(src_offset_bytes + bytes.len(), &format!("the blocks of a {what}"))?;
    if src_offset_bytes > 0 {
        // Garbage before the blocks: a kernel that reads before its start would show it.
        let pad: Vec<u8> = (0..src_offset_bytes).map(|i| 0xA5 ^ i as u8).collect();
        ctx.copy_to_device(&pad, &mut src.slice_mut(..src_offset_bytes), "padding")?;
    }
    ctx.upload_weights_into(bytes, &mut src.slice_mut(src_offset_bytes..), &format!("the blocks of a {what}"))?;
    let mut dst = ctx.alloc::<f32>(n_elems, &format!("the dequantized {what}"))?;
    if let Some(bits) = poison_bits {
        ctx.fill_u32_bits(&mut dst, bits)?;
    }
    dequantize_into(ctx, ty, &src.slice(src_offset_bytes..), n_elems, &mut dst.slice_mut(..))?;
    let mut out = ctx.download(&dst, &format!("dequantizing a {what}"))?;
    out.truncate(n_elems);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cpu_type_has_a_kernel_that_exists_in_the_source() {
        assert!(DEQUANT.src.contains("FERRITE_BLOCK_TYPES(DEQUANT_KERNEL)"), "dequant.cu instantiates one kernel per listed type");
        let listed: Vec<String> = super::super::kernels::block_types_in_header().into_iter().map(|(name, _, _)| name).collect();
        for ty in GgmlType::ALL {
            match kernel_name(ty) {
                Some(name) => assert!(listed.iter().any(|n| format!("dequant_{n}") == name), "{name} missing in FERRITE_BLOCK_TYPES"),
                None => assert!(!crate::quant::can_dequantize(ty), "{ty} dequantizes on the CPU but has no GPU kernel"),
            }
        }
    }
}
