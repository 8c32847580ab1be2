//! The fused FFN's pending sums (kernels/common.cuh's `x_acc`). At one or two rows the fused FFN
//! (ffn.rs) leaves its output out of the residual x: each of its slices adds its partial sums, in
//! fixed point, into a buffer of one int64 a value of x, so the launch ends without its slices
//! meeting (split-K's counter and the last block's pass took 2.3 of its 10.4 us: the kernel
//! boundary after it is now their only meeting). Whatever touches x next takes the sums in:
//!
//! - the next layer's q/k/v read x plus the sums as they stage it (`matvec::launch_tiled`, where
//!   the kernel folds the norm into staging; elsewhere it folds the sums into x first);
//! - its o projection adds them to x with its own output and zeroes them (the same);
//! - `gather_rows` adds them to the rows the LM head reads;
//! - anything else settles them first ([`PendingSums::settle`]: the `fold_xacc` launch);
//! - `embed_rows` zeroes the buffer at the start of every forward pass.
//!
//! The invariant the fused FFN relies on: the buffer is zero whenever no vector's sums are
//! pending ([`PendingSums::of`] is `None`).
//!
//! Off by default (`FERRITE_CUDA_FFN_SUMS=pending` turns it on): measured slower. On an H100
//! (docs/BENCHMARKS.md, fiftieth session) the fused FFN took 7.79 us a launch instead of 9.34,
//! but the q/k/v launch after it 5.36 instead of 4.67 and the o projection 5.23 instead of 4.36
//! (their instances that take the sums spill registers in their prologue, and o's fold is a
//! dependent load, convert and store before its products land): the 0.5B shapes' decode step took
//! 0.636 / 0.637 ms at one sequence against 0.634 / 0.627, 0.673 / 0.656 at two against 0.644 /
//! 0.643. The FFN's side is the gain to keep; the consumers' side is what would have to shrink.

use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::{CudaFunction, CudaSlice};

use super::backend::{addr, grid_stride, launch};
use super::context::CudaContext;
use super::error::{CudaError, DriverResultExt};

/// The most slices (clusters of 256 intermediate columns) whose sums the buffer takes: common.cuh's
/// XACC_MAX_SLICES, which keeps a poisoned total apart from every finite one.
pub const MAX_SLICES: usize = 31;

/// `fold_xacc` launches by this process (not counting graph replays), for tests to see which
/// consumers took the sums in place (`_cuda_counters`).
pub static FOLDS: AtomicU64 = AtomicU64::new(0);

/// Whether fused FFN launches leave their sums pending: FERRITE_CUDA_FFN_SUMS (`meet`, the
/// default: the slices meet in the launch; or `pending`). Read when a backend is made.
pub fn enabled() -> Result<bool, CudaError> {
    match std::env::var("FERRITE_CUDA_FFN_SUMS").as_deref() {
        Err(_) | Ok("") | Ok("meet") => Ok(false),
        Ok("pending") => Ok(true),
        Ok(other) => Err(CudaError::Invalid(format!("FERRITE_CUDA_FFN_SUMS={other:?}: expected \"pending\" or \"meet\""))),
    }
}

/// The vector whose sums wait in the buffer: its device address and how many of its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub x: u64,
    pub values: usize,
}

/// The buffer and whose sums it holds.
pub struct PendingSums {
    sums: CudaSlice<i64>,
    of: Option<Owner>,
    fold: CudaFunction,
}

/// What a launch that may meet the pending sums takes: the buffer's address, whose they are, and
/// the launch that folds them into their vector where the kernel cannot read them.
#[derive(Clone, Copy)]
pub struct SumsArg<'a> {
    pub sums: u64,
    pub of: Owner,
    pub fold: &'a CudaFunction,
}

impl SumsArg<'_> {
    /// Queues `x += sums; sums = 0` over the owner's values.
    pub fn fold_now(&self, ctx: &CudaContext) -> Result<(), CudaError> {
        let n = self.of.values as u64;
        launch!(ctx, self.fold, "fold_xacc", grid_stride(n), &self.of.x, &self.sums, &n)?;
        FOLDS.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl PendingSums {
    /// A zeroed buffer for `values` sums (the fused FFN's rows times the model's width).
    pub fn new(ctx: &CudaContext, values: usize, fold: CudaFunction) -> Result<PendingSums, CudaError> {
        Ok(PendingSums { sums: ctx.alloc_zeros::<i64>(values, "the fused FFN's pending sums")?, of: None, fold })
    }

    /// Values the buffer holds.
    pub fn capacity(&self) -> usize {
        self.sums.len()
    }

    /// The buffer's device address.
    pub fn address(&self, ctx: &CudaContext) -> u64 {
        addr(&self.sums, ctx)
    }

    /// Whose sums are pending, if any.
    pub fn of(&self) -> Option<Owner> {
        self.of
    }

    /// The sums of vector `x`, if they are the pending ones, for a launch that reads x.
    pub fn arg_for(&self, ctx: &CudaContext, x: u64) -> Option<SumsArg<'_>> {
        self.arg(ctx).filter(|a| a.of.x == x)
    }

    /// The pending sums, whoever's they are.
    pub fn arg(&self, ctx: &CudaContext) -> Option<SumsArg<'_>> {
        self.of.map(|of| SumsArg { sums: self.address(ctx), of, fold: &self.fold })
    }

    /// A fused FFN launch on `owner` is about to add into the buffer: the sums are now its.
    /// The buffer must be zero (no sums pending): the caller settles them first.
    pub fn set(&mut self, owner: Owner) -> Result<(), CudaError> {
        if self.of.is_some() {
            return Err(CudaError::Invalid(format!("pending sums of {:?} while {owner:?}'s begin", self.of)));
        }
        if owner.values > self.capacity() {
            return Err(CudaError::Invalid(format!("{} pending sums in a buffer of {}", owner.values, self.capacity())));
        }
        self.of = Some(owner);
        Ok(())
    }

    /// A launch has folded the sums into their vector and zeroed them (the o projection's, or
    /// [`SumsArg::fold_now`]), or a launch that zeroes the buffer ran (embed_rows).
    pub fn cleared(&mut self) {
        self.of = None;
    }

    /// Folds the pending sums into their vector if that is `x`: before anything reads or writes x
    /// that does not take them.
    pub fn settle(&mut self, ctx: &CudaContext, x: u64) -> Result<(), CudaError> {
        if let Some(arg) = self.arg_for(ctx, x) {
            arg.fold_now(ctx)?;
            self.of = None;
        }
        Ok(())
    }

    /// Zeroes the buffer without folding (its vector may be gone: a buffer is being allocated).
    pub fn discard(&mut self, ctx: &CudaContext) -> Result<(), CudaError> {
        if self.of.take().is_some() {
            ctx.stream().memset_zeros(&mut self.sums).ctx(|| "zeroing the fused FFN's pending sums".into())?;
        }
        Ok(())
    }
}
