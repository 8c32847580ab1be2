//! Device buffers: checked allocation (out-of-memory names the sizes), small uploads, downloads,
//! and the weight upload path that copies quantized blocks as-is from the mmap through pinned
//! staging buffers.
//!
//! Why staging: a copy from pageable memory (the mmap) makes the driver bounce through its own
//! pinned buffer synchronously. Two pinned buffers let the CPU fill one while the DMA engine
//! drains the other.

use std::time::Instant;

use rayon::prelude::*;

use cudarc::driver::{sys, CudaEvent, CudaSlice, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, PinnedHostSlice, ValidAsZeroBits};

use super::context::CudaContext;
use super::error::{is_oom, CudaError, DriverResultExt};

/// Bytes per staging buffer. Large enough that per-copy overhead vanishes, small enough that
/// the first copy starts early.
pub const STAGING_CHUNK_BYTES: usize = 16 << 20;
/// Piece of a chunk one thread copies into the staging buffer.
const COPY_PIECE_BYTES: usize = 1 << 20;

/// Two pinned host buffers used alternately.
pub struct Staging {
    buffers: [PinnedHostSlice<u8>; 2],
    /// Recorded after the copy out of the matching buffer; waited on before refilling it.
    done: [Option<CudaEvent>; 2],
}

/// Pinned buffers that a step's small uploads pass through, used in turn.
#[derive(Default)]
pub struct SmallStaging {
    slots: [Option<(PinnedHostSlice<u32>, Option<CudaEvent>)>; SMALL_SLOTS],
    next: usize,
}

/// Small uploads in flight at once: a step makes one (its batch; the sampler uploads its
/// parameters itself, sampling.rs), and the engine queues a step while the one before runs.
const SMALL_SLOTS: usize = 8;

impl CudaContext {
    /// Copies `host` into the start of `dst` through a pinned buffer and returns once the copy is
    /// queued. A copy from pageable memory may make the driver wait for the stream's queued work
    /// first, which would hold the host while the previous step runs instead of preparing the
    /// next one.
    pub fn upload_small(&self, host: &[u32], dst: &mut CudaSlice<u32>, what: &str) -> Result<(), CudaError> {
        if dst.len() < host.len() {
            return Err(CudaError::Invalid(format!("{what}: device buffer holds {} elements, host data {}", dst.len(), host.len())));
        }
        if host.is_empty() {
            return Ok(());
        }
        let mut ring = self.small_staging.lock().map_err(|_| CudaError::Invalid("staging buffer lock poisoned".into()))?;
        let slot = ring.next;
        ring.next = (slot + 1) % SMALL_SLOTS;
        let entry = &mut ring.slots[slot];
        if let Some((_, Some(done))) = entry.as_ref() {
            // The copy that last read this buffer, SMALL_SLOTS uploads ago.
            done.synchronize().ctx(|| format!("waiting for a staging buffer while uploading {what}"))?;
        }
        if entry.as_ref().is_none_or(|(buf, _)| buf.len() < host.len()) {
            *entry = None;
            let len = host.len().next_power_of_two().max(4096);
            // SAFETY: only the prefix written below is copied.
            let buf = unsafe { self.raw().alloc_pinned::<u32>(len) }.ctx(|| format!("allocating {} bytes of pinned host memory", len * 4))?;
            *entry = Some((buf, None));
        }
        let Some((buf, done)) = entry.as_mut() else { unreachable!("allocated above") };
        let ptr = buf.as_mut_ptr().ctx(|| "a staging buffer".into())?;
        // SAFETY: the buffer holds at least host.len() u32, and no copy reads it now (waited above).
        unsafe { std::ptr::copy_nonoverlapping(host.as_ptr(), ptr, host.len()) };
        let (dst_ptr, _guard) = dst.device_ptr_mut(self.stream());
        // SAFETY: `dst` holds at least host.len() u32 (checked above); the source stays untouched
        // until `done` has completed.
        unsafe { sys::cuMemcpyHtoDAsync_v2(dst_ptr, ptr as *const std::ffi::c_void, std::mem::size_of_val(host), self.stream().cu_stream()) }
            .result()
            .ctx(|| format!("copying {} bytes host->device for {what}", std::mem::size_of_val(host)))?;
        let ev = match done.take() {
            Some(ev) => ev,
            None => self.new_event("a staging event")?,
        };
        ev.record(self.stream()).ctx(|| "recording a staging event".into())?;
        *done = Some(ev);
        Ok(())
    }

    /// `len` uninitialized elements on this device. Out of memory reports `what` and the sizes.
    pub fn alloc<T: DeviceRepr>(&self, len: usize, what: &str) -> Result<CudaSlice<T>, CudaError> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| CudaError::Invalid(format!("{what}: {len} elements overflow a byte count")))?;
        // SAFETY: the caller writes before reading (every kernel here writes its whole output;
        // tests poison outputs to check that).
        match unsafe { self.stream().alloc::<T>(len.max(1)) } {
            Ok(s) => Ok(s),
            Err(e) if is_oom(&e) => Err(self.oom(what, bytes)),
            Err(e) => Err(e).ctx(|| format!("allocating {bytes} bytes for {what} on {}", self.device_name())),
        }
    }

    /// `len` zeroed elements.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize, what: &str) -> Result<CudaSlice<T>, CudaError> {
        let mut s = self.alloc::<T>(len, what)?;
        self.stream().memset_zeros(&mut s).ctx(|| format!("zeroing {what}"))?;
        Ok(s)
    }

    pub(super) fn oom(&self, what: &str, requested_bytes: usize) -> CudaError {
        let (free_bytes, total_bytes) = self.mem_info().unwrap_or((0, self.total_mem_bytes()));
        CudaError::OutOfMemory { ordinal: self.ordinal(), what: what.to_string(), requested_bytes, free_bytes, total_bytes }
    }

    /// Copies a small host slice to a new device buffer (pageable copy; use
    /// [`CudaContext::upload_weights`] for large data).
    pub fn upload<T: DeviceRepr>(&self, host: &[T], what: &str) -> Result<CudaSlice<T>, CudaError> {
        let mut dst = self.alloc::<T>(host.len(), what)?;
        if !host.is_empty() {
            self.stream().memcpy_htod(host, &mut dst).ctx(|| format!("copying {} bytes host->device for {what}", std::mem::size_of_val(host)))?;
        }
        Ok(dst)
    }

    /// Copies a host slice into an existing device buffer of at least that length.
    pub fn copy_to_device<T: DeviceRepr, D: DevicePtrMut<T>>(&self, host: &[T], dst: &mut D, what: &str) -> Result<(), CudaError> {
        if dst.len() < host.len() {
            return Err(CudaError::Invalid(format!("{what}: device buffer holds {} elements, host data {}", dst.len(), host.len())));
        }
        self.stream().memcpy_htod(host, dst).ctx(|| format!("copying {} bytes host->device for {what}", std::mem::size_of_val(host)))
    }

    /// Waits for queued work and copies `src` back. A kernel fault queued before surfaces here
    /// as `CudaError::KernelFault`.
    pub fn download<T: DeviceRepr + Default + Clone, S: DevicePtr<T>>(&self, src: &S, what: &str) -> Result<Vec<T>, CudaError> {
        self.sync(&format!("the work producing {what}"))?;
        let mut out = vec![T::default(); src.len()];
        self.stream().memcpy_dtoh(src, &mut out).ctx(|| format!("copying {what} device->host"))?;
        self.sync(&format!("copying {what} device->host"))?;
        Ok(out)
    }

    /// Fills `dst` with the 32-bit pattern `bits` (tests poison outputs with a NaN pattern so an
    /// element a kernel forgot to write cannot pass for a result).
    pub fn fill_u32_bits<D: DevicePtrMut<f32>>(&self, dst: &mut D, bits: u32) -> Result<(), CudaError> {
        let n = dst.len();
        let (ptr, _guard) = dst.device_ptr_mut(self.stream());
        // SAFETY: `ptr` addresses `n` f32 (4-byte) elements of a live buffer; queued on our stream.
        unsafe { sys::cuMemsetD32Async(ptr, bits, n, self.stream().cu_stream()) }.result().ctx(|| format!("cuMemsetD32Async of {n} elements"))
    }

    /// Uploads quantized blocks as-is (typically straight from the GGUF mmap) through the pinned
    /// staging buffers, in chunks whose host-side copies overlap the DMA of the previous chunk.
    /// Returns once the copy is queued; the data is ready for any later work on `stream()`.
    pub fn upload_weights(&self, bytes: &[u8], what: &str) -> Result<CudaSlice<u8>, CudaError> {
        let mut dst = self.alloc::<u8>(bytes.len(), what)?;
        self.upload_weights_into(bytes, &mut dst.slice_mut(..), what)?;
        Ok(dst)
    }

    /// As [`CudaContext::upload_weights`], into an existing buffer (e.g. one slice of a single
    /// allocation that holds every weight).
    pub fn upload_weights_into(&self, bytes: &[u8], dst: &mut CudaViewMut<'_, u8>, what: &str) -> Result<(), CudaError> {
        if dst.len() < bytes.len() {
            return Err(CudaError::Invalid(format!("{what}: device buffer of {} bytes is smaller than the {} bytes to upload", dst.len(), bytes.len())));
        }
        let mut staging = self.staging.lock().map_err(|_| CudaError::Invalid("staging buffer lock poisoned".into()))?;
        if staging.is_none() {
            let mk = || -> Result<PinnedHostSlice<u8>, CudaError> {
                // SAFETY: filled before each use, and only the filled prefix is copied.
                unsafe { self.raw().alloc_pinned::<u8>(STAGING_CHUNK_BYTES) }.ctx(|| format!("allocating {STAGING_CHUNK_BYTES} bytes of pinned host memory"))
            };
            *staging = Some(Staging { buffers: [mk()?, mk()?], done: [None, None] });
        }
        let Some(staging) = staging.as_mut() else { unreachable!("initialized above") };
        for (i, chunk) in bytes.chunks(STAGING_CHUNK_BYTES).enumerate() {
            let slot = i % 2;
            // Wait for the copy that last read this buffer (two chunks ago) before refilling it.
            if let Some(ev) = &staging.done[slot] {
                ev.synchronize().ctx(|| format!("waiting for a staging buffer while uploading {what}"))?;
            }
            let host = staging.buffers[slot].as_mut_slice().ctx(|| "staging buffer".into())?;
            // One core copies at ~8 GB/s, below PCIe rates: copy in parallel pieces.
            host[..chunk.len()]
                .par_chunks_mut(COPY_PIECE_BYTES)
                .zip(chunk.par_chunks(COPY_PIECE_BYTES))
                .for_each(|(d, s)| d.copy_from_slice(s));
            let start = i * STAGING_CHUNK_BYTES;
            let mut dst_chunk = dst.slice_mut(start..start + chunk.len());
            // The source lies in pinned memory, so the driver queues a true async DMA.
            self.stream()
                .memcpy_htod(&host[..chunk.len()], &mut dst_chunk)
                .ctx(|| format!("copying {} bytes host->device for {what}", chunk.len()))?;
            let ev = match staging.done[slot].take() {
                Some(ev) => ev,
                None => self.new_event("a staging event")?,
            };
            ev.record(self.stream()).ctx(|| "recording a staging event".into())?;
            staging.done[slot] = Some(ev);
        }
        Ok(())
    }

    /// Measures host->device bandwidth for `n_bytes` of data in pageable host memory, through
    /// [`CudaContext::upload_weights`] (pinned staging) and through a plain pageable copy.
    /// Returns (staged GB/s, pageable GB/s), each the best of 3 runs after a warm-up.
    pub fn measure_upload_gbps(&self, n_bytes: usize) -> Result<(f64, f64), CudaError> {
        let host: Vec<u8> = (0..n_bytes).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let mut dev = self.alloc::<u8>(n_bytes, "upload benchmark")?;
        let mut best = [f64::MAX; 2];
        for run in 0..4 {
            self.sync("upload benchmark")?;
            let t = Instant::now();
            self.upload_weights_into(&host, &mut dev.slice_mut(..), "upload benchmark")?;
            self.sync("upload benchmark (staged)")?;
            let staged = t.elapsed().as_secs_f64();
            let t = Instant::now();
            self.stream().memcpy_htod(&host, &mut dev).ctx(|| "pageable copy".into())?;
            self.sync("upload benchmark (pageable)")?;
            let pageable = t.elapsed().as_secs_f64();
            if run > 0 {
                best[0] = best[0].min(staged);
                best[1] = best[1].min(pageable);
            }
        }
        // Check the staged path delivered the bytes, not just fast.
        self.upload_weights_into(&host, &mut dev.slice_mut(..), "upload benchmark")?;
        let back = self.download(&dev, "upload benchmark")?;
        if back != host {
            return Err(CudaError::Invalid("staged upload returned different bytes".into()));
        }
        let gb = n_bytes as f64 / 1e9;
        Ok((gb / best[0], gb / best[1]))
    }
}
