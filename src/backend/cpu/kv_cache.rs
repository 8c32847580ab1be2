//! The CPU backend's KV cache: K and V of every layer, `[layer][slot][n_kv_heads * head_dim]`,
//! slots grouped in blocks (see [`KvLayout`]), stored as float32 or as f16 ([`KvDtype`]).

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::backend::{BackendError, KvDtype, KvLayout};

pub struct CpuKvCache {
    pub(super) layout: KvLayout,
    pub(super) k: KvStore,
    pub(super) v: KvStore,
}

impl CpuKvCache {
    pub(super) fn new(layout: &KvLayout) -> Result<CpuKvCache, BackendError> {
        let n = layout.elements()?;
        Ok(CpuKvCache { layout: *layout, k: KvStore::zeroed(n, layout.dtype)?, v: KvStore::zeroed(n, layout.dtype)? })
    }
}

/// K or V of every layer, in the cache's element type.
pub(super) enum KvStore {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

fn zeroed_vec<T: Clone>(n: usize, zero: T, dtype: KvDtype) -> Result<Vec<T>, BackendError> {
    // Zeroed allocation: the OS hands out pages lazily, so a large pool costs only what is used.
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|e| BackendError::Invalid(format!("KV cache of {n} {} elements: {e}", dtype.name())))?;
    v.resize(n, zero);
    Ok(v)
}

impl KvStore {
    fn zeroed(n: usize, dtype: KvDtype) -> Result<KvStore, BackendError> {
        Ok(match dtype {
            KvDtype::F32 => KvStore::F32(zeroed_vec(n, 0.0, dtype)?),
            KvDtype::F16 => KvStore::F16(zeroed_vec(n, f16::ZERO, dtype)?),
        })
    }

    /// Stores `src` from element `at` on, rounded to the cache's type (f16: to nearest even).
    pub(super) fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            KvStore::F32(d) => d[at..at + src.len()].copy_from_slice(src),
            KvStore::F16(d) => d[at..at + src.len()].convert_from_f32_slice(src),
        }
    }

    /// Elements `range` (a layer), for reading rows.
    pub(super) fn rows(&self, range: std::ops::Range<usize>) -> KvRows<'_> {
        match self {
            KvStore::F32(d) => KvRows::F32(&d[range]),
            KvStore::F16(d) => KvRows::F16(&d[range]),
        }
    }
}

/// One layer's K or V as attention reads it.
#[derive(Clone, Copy)]
pub(super) enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl KvRows<'_> {
    /// Elements `[at, at + dst.len())` into `dst` as float32 (exactly).
    pub(super) fn widen(&self, at: usize, dst: &mut [f32]) {
        match *self {
            KvRows::F32(d) => dst.copy_from_slice(&d[at..at + dst.len()]),
            KvRows::F16(d) => d[at..at + dst.len()].convert_to_f32_slice(dst),
        }
    }
}
