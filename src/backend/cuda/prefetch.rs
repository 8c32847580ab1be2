//! Weights asked of L2 ahead of their use in a decode step (`prefetch_window` in
//! kernels/common.cuh). A decode step of a few sequences reads every weight once, in an order
//! fixed by the model, while its kernels leave DRAM idle part of the time: attention's chain of
//! round trips, and matrix-vector kernels bound by their warps' latency. The model tells the
//! backend that order at load (`Backend::plan_weight_prefetch`); the device holds it as a table of
//! (address, bytes) ranges, and a kernel is given a window of it, as byte offsets into the ranges
//! laid end to end, to prefetch before it waits for its predecessor:
//!
//! - decode attention: the `attention_bytes` after its layer's attention (o, gate, up, down, the
//!   next layer's q/k/v, ...);
//! - a matrix-vector launch: what lies in the `ahead_bytes` after its own weights and was not asked
//!   for yet, so that a window of that many bytes slides ahead of the step's reads (each launch
//!   adds about what it consumes) and wraps to the first layer for the next step.
//!
//! Both sizes come from the environment (`PrefetchPlan::sizes_from_env`) and are 0, off: on the
//! H200 (2026-12-05, docs/BENCHMARKS.md, twenty-eighth session) the attention window of 24 MB made
//! the 0.5B shapes' one-sequence step 0.78 -> 2.0 ms, the sliding window of 16 MB with evict-first
//! weights 0.78 -> 1.06 (the synthetic 7B's gained under 1 %, 2.833 -> 2.810). On the H100
//! (thirty-seventh session) windows of a phase or a layer were slower too, by bulk prefetches
//! (4 MB ahead: 0.77 -> 0.95 ms) or a line at a time (`-DPREFETCH_LINES=1`: 0.79-0.81 ms), and
//! benches/bench_grid_barrier.py found a 6 MB phase no faster with its weights already in L2:
//! fetching them is bound on the SMs' side. Kept for other GPUs' A/B; a candidate for removal.

use cudarc::driver::CudaSlice;

use super::context::CudaContext;
use super::error::CudaError;

/// How many bytes of weights each layer's decode attention asks L2 for
/// (FERRITE_CUDA_PREFETCH_MB overrides, 0: none). Off: slower on the H200 (see above).
const ATTENTION_BYTES: u64 = 0;
/// How far past its own weights a matrix-vector launch of a decode step asks L2 for the step's
/// next ones (FERRITE_CUDA_PREFETCH_AHEAD_MB overrides, 0: none). Off: slower on the H200.
const AHEAD_BYTES: u64 = 0;

/// `default`, or the environment variable `name` in MiB.
fn bytes_from_mb_env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).map_or(default, |mb| mb.saturating_mul(1 << 20))
}

/// What a kernel takes as its window (the `pf_*` arguments of the kernels that prefetch):
/// `len_bytes` bytes from byte `offset_bytes` of range `first` of the table at `ranges`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowArgs {
    pub ranges: u64,
    pub n_ranges: u32,
    pub first: u32,
    pub offset_bytes: u64,
    pub len_bytes: u64,
}

/// A window as the order places it: (first range, byte offset in it, bytes).
type Window = (u32, u64, u64);

/// The step's weight buffers in read order, each cut to whole aligned 16-byte units (the bulk
/// prefetch's terms), and where each starts when they are laid end to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOrder {
    /// Each buffer's own address, to find it by.
    buffers: Vec<u64>,
    /// (address, bytes) of each buffer, in order; buffers too small for one unit have 0 bytes.
    ranges: Vec<(u64, u64)>,
    /// Where each range starts with the ranges laid end to end (bytes).
    start_bytes: Vec<u64>,
    total_bytes: u64,
}

impl ReadOrder {
    pub fn new(buffers: &[(u64, u64)]) -> Self {
        let mut ranges = Vec::with_capacity(buffers.len());
        let mut start_bytes = Vec::with_capacity(buffers.len());
        let mut total_bytes = 0;
        for &(address, bytes) in buffers {
            let start = address.next_multiple_of(16);
            let usable_bytes = bytes.saturating_sub(start - address) & !15;
            ranges.push((start, usable_bytes));
            start_bytes.push(total_bytes);
            total_bytes += usable_bytes;
        }
        ReadOrder { buffers: buffers.iter().map(|&(a, _)| a).collect(), ranges, start_bytes, total_bytes }
    }

    /// The table the kernels read: (address, bytes) pairs.
    pub fn table(&self) -> Vec<u64> {
        self.ranges.iter().flat_map(|&(a, b)| [a, b]).collect()
    }

    /// Where buffer `index` starts in the order (bytes).
    pub fn start_of(&self, index: usize) -> Option<u64> {
        self.start_bytes.get(index).copied()
    }

    /// The span of the order covered by the buffers at these addresses (from the first one's
    /// start to the last one's end), or `None` when one of them is not in the order.
    pub fn span_of(&self, addresses: &[u64]) -> Option<(u64, u64)> {
        let mut span: Option<(u64, u64)> = None;
        for &address in addresses {
            let i = self.buffers.iter().position(|&a| a == address)?;
            let (s, e) = (self.start_bytes[i], self.start_bytes[i] + self.ranges[i].1);
            span = Some(span.map_or((s, e), |(s0, e0)| (s0.min(s), e0.max(e))));
        }
        span
    }

    /// `len_bytes` bytes of the order from byte `start` on (both taken modulo the order's length,
    /// the length capped at it and both rounded down to 16 bytes), as (first range, offset in it,
    /// length); `None` when that is empty.
    pub fn window(&self, start: u64, len_bytes: u64) -> Option<Window> {
        if self.total_bytes == 0 {
            return None;
        }
        let start = (start % self.total_bytes) & !15;
        let len_bytes = len_bytes.min(self.total_bytes) & !15;
        if len_bytes == 0 {
            return None;
        }
        // The range holding byte `start` (one does: start < total_bytes).
        let first = (0..self.ranges.len()).find(|&i| self.start_bytes[i] <= start && start < self.start_bytes[i] + self.ranges[i].1)?;
        Some((u32::try_from(first).ok()?, start - self.start_bytes[first], len_bytes))
    }

    /// The window a launch reading the span `[s, e)` of the order asks for, `ahead_bytes` ahead:
    /// `[max(e, s + ahead), e + ahead)`, what lies in the `ahead_bytes` past its own weights and
    /// the launch before it (which ended at s) has not asked for. At most `ahead_bytes`, so that
    /// a matrix larger than L2 does not ask for itself again.
    pub fn ahead(&self, (s, e): (u64, u64), ahead_bytes: u64) -> Option<Window> {
        let ahead_bytes = ahead_bytes.min(self.total_bytes);
        let from = e.max(s + ahead_bytes);
        self.window(from, e + ahead_bytes - from)
    }
}

/// The device table of a [`ReadOrder`] and the windows the step's kernels are given.
pub struct PrefetchPlan {
    table: CudaSlice<u64>,
    n_ranges: u32,
    order: ReadOrder,
    /// Per layer, the index in the order of the first buffer read after its attention.
    after_attention: Vec<usize>,
    attention_bytes: u64,
    ahead_bytes: u64,
}

impl PrefetchPlan {
    /// (attention bytes, ahead bytes): FERRITE_CUDA_PREFETCH_MB and FERRITE_CUDA_PREFETCH_AHEAD_MB,
    /// or the defaults (off).
    pub fn sizes_from_env() -> (u64, u64) {
        (bytes_from_mb_env("FERRITE_CUDA_PREFETCH_MB", ATTENTION_BYTES), bytes_from_mb_env("FERRITE_CUDA_PREFETCH_AHEAD_MB", AHEAD_BYTES))
    }

    pub fn new(ctx: &CudaContext, order: ReadOrder, after_attention: Vec<usize>, attention_bytes: u64, ahead_bytes: u64) -> Result<Self, CudaError> {
        let n_ranges = u32::try_from(order.ranges.len()).map_err(|_| CudaError::Invalid(format!("{} weights to prefetch", order.ranges.len())))?;
        let table = ctx.upload(&order.table(), "the weights' prefetch table")?;
        Ok(PrefetchPlan { table, n_ranges, order, after_attention, attention_bytes, ahead_bytes })
    }

    fn args(&self, ctx: &CudaContext, window: Option<Window>) -> WindowArgs {
        match window {
            Some((first, offset_bytes, len_bytes)) => {
                WindowArgs { ranges: super::backend::addr(&self.table, ctx), n_ranges: self.n_ranges, first, offset_bytes, len_bytes }
            }
            None => WindowArgs::default(),
        }
    }

    /// The window of layer `layer`'s decode attention.
    pub fn attention(&self, ctx: &CudaContext, layer: usize) -> WindowArgs {
        let start = self.after_attention.get(layer).and_then(|&i| self.order.start_of(i));
        self.args(ctx, start.and_then(|s| self.order.window(s, self.attention_bytes)))
    }

    /// The window of a matrix-vector launch reading the buffers at `addresses`.
    pub fn ahead_of(&self, ctx: &CudaContext, addresses: &[u64]) -> WindowArgs {
        if self.ahead_bytes == 0 {
            return WindowArgs::default();
        }
        let window = self.order.span_of(addresses).and_then(|span| self.order.ahead(span, self.ahead_bytes));
        self.args(ctx, window)
    }
}

#[cfg(test)]
mod tests {
    use super::ReadOrder;

    #[test]
    fn buffers_are_cut_to_aligned_units_and_laid_end_to_end() {
        let order = ReadOrder::new(&[(0x1000, 100), (0x2008, 64), (0x3000, 8), (0x4000, 1 << 20)]);
        assert_eq!(order.table(), vec![0x1000, 96, 0x2010, 48, 0x3000, 0, 0x4000, 1 << 20]);
        assert_eq!((0..4).map(|i| order.start_of(i).unwrap()).collect::<Vec<_>>(), vec![0, 96, 144, 144]);
        assert_eq!(order.total_bytes, 144 + (1 << 20));
    }

    /// A window starts in the range holding its first byte (skipping empty ranges), wraps past
    /// the end, and is capped at the whole order.
    #[test]
    fn windows_start_in_their_range_and_wrap() {
        let order = ReadOrder::new(&[(0x1000, 96), (0x2000, 48), (0x3000, 0), (0x4000, 160)]);
        let total = 96 + 48 + 160;
        assert_eq!(order.window(0, 32), Some((0, 0, 32)));
        assert_eq!(order.window(100, 32), Some((1, 0, 32)));
        assert_eq!(order.window(150, 32), Some((3, 0, 32)));
        assert_eq!(order.window(170, 1000), Some((3, 16, total)));
        assert_eq!(order.window(total + 16, 32), Some((0, 16, 32)));
        assert_eq!(order.window(0, 8), None);
        assert_eq!(ReadOrder::new(&[]).window(0, 64), None);
    }

    /// A launch asks for what lies in the `ahead` bytes past its own weights that the launch
    /// before it did not: the windows of consecutive launches tile the order, `ahead` bytes
    /// ahead of each launch's end, wrapping, and none is longer than `ahead`.
    #[test]
    fn ahead_windows_slide_without_overlap() {
        let sizes = [96u64, 48, 160, 4096, 32, 64];
        let buffers: Vec<(u64, u64)> = sizes.iter().enumerate().map(|(i, &b)| (0x10000 * (i as u64 + 1), b)).collect();
        let order = ReadOrder::new(&buffers);
        let total = order.total_bytes;
        for ahead in [16u64, 64, 256, 1024, total, 10 * total] {
            let mut covered = vec![0u32; total as usize / 16];
            for (i, &(address, _)) in buffers.iter().enumerate() {
                let (s, e) = order.span_of(&[address]).unwrap();
                let Some((first, offset, len)) = order.ahead((s, e), ahead) else { continue };
                assert!(len <= ahead.min(total) && len % 16 == 0 && offset % 16 == 0, "launch {i} ahead {ahead}");
                let from = order.start_of(first as usize).unwrap() + offset;
                assert_eq!(from, e.max(s + ahead.min(total)) % total, "launch {i} ahead {ahead}");
                for u in 0..len / 16 {
                    covered[((from / 16 + u) % (total / 16)) as usize] += 1;
                }
            }
            // One pass over the order asks for every byte at most once.
            assert!(covered.iter().all(|&c| c <= 1), "ahead {ahead}: {covered:?}");
        }
    }

    /// A launch's span runs from its first buffer's start to its last one's end; a buffer not in
    /// the order gives none.
    #[test]
    fn spans_cover_the_launchs_buffers() {
        let order = ReadOrder::new(&[(0x1000, 96), (0x2000, 48), (0x4000, 160)]);
        assert_eq!(order.span_of(&[0x2000]), Some((96, 144)));
        assert_eq!(order.span_of(&[0x1000, 0x2000]), Some((0, 144)));
        assert_eq!(order.span_of(&[0x4000, 0x1000]), Some((0, 304)));
        assert_eq!(order.span_of(&[0x5000]), None);
        assert_eq!(order.span_of(&[]), None);
    }
}
