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
//! - a matrix-vector launch: as many bytes as it reads itself, `ahead_bytes` further on in the
//!   order, so that a window of that many bytes slides ahead of the step's reads (each launch
//!   adds what it consumes) and wraps to the first layer for the next step.

use cudarc::driver::CudaSlice;

use super::context::CudaContext;
use super::error::CudaError;

/// What a kernel takes as its window (the `pf_*` arguments of the kernels that prefetch):
/// `len_bytes` bytes from byte `offset` of range `first` of the table at `ranges`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowArgs {
    pub ranges: u64,
    pub n_ranges: u32,
    pub first: u32,
    pub offset: u64,
    pub len_bytes: u64,
}

/// The step's weight buffers in read order, each cut to whole aligned 16-byte units (the bulk
/// prefetch's terms), and where each starts when they are laid end to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOrder {
    /// Each buffer's own address, to find it by.
    buffers: Vec<u64>,
    /// (address, bytes) of each buffer, in order; buffers too small for one unit have 0 bytes.
    ranges: Vec<(u64, u64)>,
    starts: Vec<u64>,
    total_bytes: u64,
}

impl ReadOrder {
    pub fn new(buffers: &[(u64, u64)]) -> Self {
        let mut ranges = Vec::with_capacity(buffers.len());
        let mut starts = Vec::with_capacity(buffers.len());
        let mut total_bytes = 0;
        for &(address, bytes) in buffers {
            let start = address.next_multiple_of(16);
            let usable_bytes = bytes.saturating_sub(start - address) & !15;
            ranges.push((start, usable_bytes));
            starts.push(total_bytes);
            total_bytes += usable_bytes;
        }
        ReadOrder { buffers: buffers.iter().map(|&(a, _)| a).collect(), ranges, starts, total_bytes }
    }

    /// The table the kernels read: (address, bytes) pairs.
    pub fn table(&self) -> Vec<u64> {
        self.ranges.iter().flat_map(|&(a, b)| [a, b]).collect()
    }

    /// Where buffer `index` starts in the order.
    pub fn start_of(&self, index: usize) -> Option<u64> {
        self.starts.get(index).copied()
    }

    /// The span of the order covered by the buffers at these addresses (from the first one's
    /// start to the last one's end), or `None` when one of them is not in the order.
    pub fn span_of(&self, addresses: &[u64]) -> Option<(u64, u64)> {
        let mut span: Option<(u64, u64)> = None;
        for &address in addresses {
            let i = self.buffers.iter().position(|&a| a == address)?;
            let (s, e) = (self.starts[i], self.starts[i] + self.ranges[i].1);
            span = Some(span.map_or((s, e), |(s0, e0)| (s0.min(s), e0.max(e))));
        }
        span
    }

    /// `len_bytes` bytes of the order from byte `start` on (both taken modulo the order's length,
    /// the length capped at it and both rounded down to 16 bytes), as (first range, offset in it,
    /// length); `None` when that is empty.
    pub fn window(&self, start: u64, len_bytes: u64) -> Option<(u32, u64, u64)> {
        if self.total_bytes == 0 {
            return None;
        }
        let start = (start % self.total_bytes) & !15;
        let len_bytes = len_bytes.min(self.total_bytes) & !15;
        if len_bytes == 0 {
            return None;
        }
        // The range holding byte `start` (one does: start < total_bytes).
        let first = (0..self.ranges.len()).find(|&i| self.starts[i] <= start && start < self.starts[i] + self.ranges[i].1)?;
        Some((u32::try_from(first).ok()?, start - self.starts[first], len_bytes))
    }
}

/// The device table of a [`ReadOrder`] and the windows the step's kernels are given.
pub struct PrefetchPlan {
    table: CudaSlice<u64>,
    order: ReadOrder,
    /// Per layer, the index in the order of the first buffer read after its attention.
    after_attention: Vec<usize>,
    attention_bytes: u64,
    ahead_bytes: u64,
}

impl PrefetchPlan {
    pub fn new(ctx: &CudaContext, order: ReadOrder, after_attention: Vec<usize>, attention_bytes: u64, ahead_bytes: u64) -> Result<Self, CudaError> {
        let table = ctx.upload(&order.table(), "the weights' prefetch table")?;
        Ok(PrefetchPlan { table, order, after_attention, attention_bytes, ahead_bytes })
    }

    fn args(&self, ctx: &CudaContext, window: Option<(u32, u64, u64)>) -> WindowArgs {
        match window {
            Some((first, offset, len_bytes)) => WindowArgs {
                ranges: super::backend::addr(&self.table, ctx),
                n_ranges: self.order.ranges.len() as u32,
                first,
                offset,
                len_bytes,
            },
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
        let window = self.order.span_of(addresses).and_then(|(s, e)| self.order.window(s + self.ahead_bytes, e - s));
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
