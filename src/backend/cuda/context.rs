//! Device selection and the per-device context: one CUDA context, one compute stream, the
//! compiled kernel modules and the pinned staging buffers, shared by everything that runs on
//! that device in this process.
//!
//! cudarc loads libcuda at run time and panics when it is missing, so every entry point here
//! first checks that the library can be loaded and returns `CudaError` instead.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{self as drv, sys, CudaFunction, CudaModule, CudaStream};

use super::error::{describe, CudaError, DriverResultExt};
use super::memory::Staging;
use super::nvrtc::{self, KernelSource};

/// Runs `f`, turning a panic inside cudarc's dynamic loader (a symbol missing from an old
/// driver, say) into an error instead of unwinding into Python.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(CudaError::Driver { op: what.to_string(), msg: format!("CUDA library failure: {msg}") })
        }
    }
}

/// Whether libcuda can be loaded at all. Never panics.
pub fn driver_library_present() -> bool {
    // SAFETY: only tries to dlopen the library by name.
    catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false)
}

/// Whether libnvrtc can be loaded. Never panics.
pub fn nvrtc_library_present() -> bool {
    // SAFETY: as above.
    catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
}

/// Whether libcublas can be loaded. Never panics.
pub fn cublas_library_present() -> bool {
    // SAFETY: as above.
    catch_unwind(|| unsafe { cudarc::cublas::sys::is_culib_present() }).unwrap_or(false)
}

/// Loads the driver and runs `cuInit` once; the result (success or the error) is remembered.
fn init_driver() -> Result<(), CudaError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    let r = INIT.get_or_init(|| {
        if !driver_library_present() {
            return Err(String::new());
        }
        guarded("cuInit", || drv::result::init().map_err(|e| CudaError::InitFailed(describe(&e))))
            .map_err(|e| e.to_string())
    });
    match r {
        Ok(()) => Ok(()),
        Err(msg) if msg.is_empty() => Err(CudaError::NoDriver {
            hint: " on the loader path; is this a machine with an NVIDIA GPU and its driver?".to_string(),
        }),
        Err(msg) => Err(CudaError::InitFailed(msg.clone())),
    }
}

/// Number of CUDA devices; an error when there is no driver.
pub fn device_count() -> Result<usize, CudaError> {
    init_driver()?;
    guarded("cuDeviceGetCount", || {
        drv::result::device::get_count().map(|n| n.max(0) as usize).ctx(|| "cuDeviceGetCount".into())
    })
}

/// True when a driver is present and at least one device is visible. Never panics or raises.
pub fn cuda_available() -> bool {
    matches!(device_count(), Ok(n) if n > 0)
}

/// The device ordinal named by `device`: "cuda" is 0, "cuda:N" is N.
pub fn parse_device(device: &str) -> Result<usize, CudaError> {
    let d = device.trim();
    if d == "cuda" {
        return Ok(0);
    }
    d.strip_prefix("cuda:")
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| CudaError::BadDevice(device.to_string()))
}

/// Driver version as CUDA encodes it (13000 = 13.0).
fn driver_version() -> Result<i32, CudaError> {
    let mut v = 0i32;
    // SAFETY: writes one int.
    unsafe { sys::cuDriverGetVersion(&mut v) }.result().ctx(|| "cuDriverGetVersion".into())?;
    Ok(v)
}

/// One device: its CUDA context, the stream all of ferrite's work on it is queued on, and the
/// kernel modules compiled for it. Obtain with [`CudaContext::get`]; shared per device.
///
/// Ordering: everything ferrite does on a device runs on [`CudaContext::stream`], so device
/// buffers need no events between uses (cudarc's event tracking is turned off for speed).
pub struct CudaContext {
    raw: Arc<drv::CudaContext>,
    stream: Arc<CudaStream>,
    ordinal: usize,
    name: String,
    compute_capability: (u32, u32),
    driver_version: i32,
    total_mem_bytes: usize,
    /// Streaming multiprocessors (launch shapes are sized by them).
    sms: usize,
    /// Loaded modules by file name and variant options.
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    pub(super) staging: Mutex<Option<Staging>>,
    /// Pinned buffers of the small uploads a step makes (see `upload_small`).
    pub(super) small_staging: Mutex<super::memory::SmallStaging>,
    /// FERRITE_CUDA_SYNC=1: synchronize after every launch so a fault names its kernel.
    sync_each_launch: bool,
    /// Kernels launched through [`CudaContext::launch_raw`] may start while the previous kernel
    /// finishes (programmatic dependent launch; sm_90+ and a driver of CUDA 12.3 or later, which
    /// records such launches into graphs; off with FERRITE_CUDA_PDL=0).
    dependent_launch: bool,
}

impl std::fmt::Debug for CudaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaContext(cuda:{} {} sm_{}{})", self.ordinal, self.name, self.compute_capability.0, self.compute_capability.1)
    }
}

impl CudaContext {
    /// The shared context for `device` ("cuda" or "cuda:N"), created on first use.
    pub fn get(device: &str) -> Result<Arc<CudaContext>, CudaError> {
        static CONTEXTS: OnceLock<Mutex<HashMap<usize, Arc<CudaContext>>>> = OnceLock::new();
        let ordinal = parse_device(device)?;
        let map = CONTEXTS.get_or_init(|| Mutex::new(HashMap::new()));
        let mut map = map.lock().map_err(|_| CudaError::Invalid("CUDA context registry lock poisoned".into()))?;
        if let Some(ctx) = map.get(&ordinal) {
            return Ok(ctx.clone());
        }
        let ctx = Arc::new(guarded("creating CUDA context", || CudaContext::create(ordinal))?);
        map.insert(ordinal, ctx.clone());
        Ok(ctx)
    }

    fn create(ordinal: usize) -> Result<CudaContext, CudaError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(CudaError::NoSuchDevice { ordinal, count });
        }
        let raw = drv::CudaContext::new(ordinal).ctx(|| format!("creating the context of device {ordinal}"))?;
        // SAFETY: ferrite queues all work for a device on one stream (see the type's docs), so
        // the per-buffer events cudarc would record add launch overhead and protect nothing.
        unsafe { raw.disable_event_tracking() };
        let stream = raw.new_stream().ctx(|| format!("creating a stream on device {ordinal}"))?;
        let (major, minor) = raw.compute_capability().ctx(|| "querying compute capability".into())?;
        // cuBLAS's (and NVRTC's) files stream in from disk while the kernels load.
        super::readahead::start((major as u32, minor as u32));
        let name = raw.name().ctx(|| "querying device name".into())?;
        let total_mem_bytes = raw.total_mem().ctx(|| "querying device memory".into())?;
        let sms = raw.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).ctx(|| "querying the number of SMs".into())?;
        let driver = driver_version()?;
        Ok(CudaContext {
            raw,
            stream,
            ordinal,
            name,
            compute_capability: (major as u32, minor as u32),
            driver_version: driver,
            total_mem_bytes,
            sms: sms.max(1) as usize,
            modules: Mutex::new(HashMap::new()),
            staging: Mutex::new(None),
            small_staging: Mutex::new(Default::default()),
            sync_each_launch: std::env::var("FERRITE_CUDA_SYNC").is_ok_and(|v| v == "1"),
            dependent_launch: major >= 9 && driver >= 12030 && std::env::var("FERRITE_CUDA_PDL").map_or(true, |v| v != "0"),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// "cuda:N".
    pub fn device_name(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }

    /// The GPU's marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn gpu_name(&self) -> &str {
        &self.name
    }

    /// (major, minor), e.g. (9, 0) for an H100.
    pub fn compute_capability(&self) -> (u32, u32) {
        self.compute_capability
    }

    /// NVRTC's name for this GPU's architecture, e.g. "sm_90".
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.compute_capability.0, self.compute_capability.1)
    }

    /// CUDA driver version (13000 = 13.0).
    pub fn driver_version(&self) -> i32 {
        self.driver_version
    }

    pub fn total_mem_bytes(&self) -> usize {
        self.total_mem_bytes
    }

    /// Streaming multiprocessors of the device.
    pub fn sms(&self) -> usize {
        self.sms
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        self.raw.mem_get_info().ctx(|| "cuMemGetInfo".into())
    }

    /// The stream every ferrite operation on this device is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// cudarc's context, for cuBLAS handles and anything not wrapped here.
    pub fn raw(&self) -> &Arc<drv::CudaContext> {
        &self.raw
    }

    /// A new event (default flags), `what` naming it in the error.
    pub fn new_event(&self, what: &str) -> Result<drv::CudaEvent, CudaError> {
        self.raw.new_event(None).ctx(|| format!("creating {what}"))
    }

    /// Waits for all queued work. A kernel fault queued earlier surfaces here as
    /// `CudaError::KernelFault` naming `what`.
    pub fn sync(&self, what: &str) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(|e| CudaError::KernelFault { op: format!("synchronize after {what}"), msg: describe(&e) })
    }

    /// FERRITE_CUDA_SYNC=1 is set: every launch is followed by a synchronization.
    pub fn syncs_each_launch(&self) -> bool {
        self.sync_each_launch
    }

    /// Call after each kernel launch with the launch's result: maps launch errors, and with
    /// FERRITE_CUDA_SYNC=1 synchronizes so that a fault is reported against this kernel.
    pub fn check_launch<T>(&self, launched: Result<T, drv::DriverError>, kernel: &str) -> Result<(), CudaError> {
        launched.ctx(|| format!("launching kernel {kernel}"))?;
        if self.sync_each_launch {
            self.sync(&format!("kernel {kernel}"))?;
        }
        Ok(())
    }

    /// Queues `f` on the stream with the kernel arguments `params` (one pointer to each
    /// argument's value, in order), as `cuLaunchKernelEx`. On sm_90+ the launch allows
    /// programmatic dependent launch: the kernel's blocks may start before the previous kernel
    /// has finished, so its launch latency and its loads of weights overlap that kernel's tail.
    /// Every kernel in kernels/ therefore calls `dependent_wait()` (common.cuh) before it reads
    /// or writes anything an earlier kernel may touch; the wait returns once that kernel has
    /// finished and its writes are visible.
    ///
    /// # Safety
    /// `params` must match the kernel's parameter list, and the kernel must wait as described.
    pub unsafe fn launch_raw(&self, f: &CudaFunction, cfg: drv::LaunchConfig, params: &mut [*mut std::ffi::c_void]) -> Result<(), drv::DriverError> {
        self.raw.bind_to_thread()?;
        let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: self.dependent_launch as u32,
        };
        sys::cuLaunchKernelEx(&config, f.cu_function(), params.as_mut_ptr(), std::ptr::null_mut()).result()
    }

    /// The kernel `function` from `source`, compiling (or loading from the disk cache) the
    /// source for this GPU the first time.
    pub fn function(&self, source: &KernelSource, function: &str) -> Result<CudaFunction, CudaError> {
        self.function_with(source, &[], function)
    }

    /// As [`CudaContext::function`], from the variant of `source` compiled with the extra NVRTC
    /// options `extra` (e.g. `-DQTYPE=q4_k` for a kernel built once per weight type).
    pub fn function_with(&self, source: &KernelSource, extra: &[String], function: &str) -> Result<CudaFunction, CudaError> {
        let module = self.module(source, extra)?;
        module.load_function(function).map_err(|e| match e.0 {
            sys::CUresult::CUDA_ERROR_NOT_FOUND => {
                CudaError::NoSuchKernel { kernel: source.file.to_string(), function: function.to_string() }
            }
            _ => CudaError::Driver { op: format!("cuModuleGetFunction {function} in kernels/{}", source.file), msg: describe(&e) },
        })
    }

    /// Makes sure every `(source, extra options)` module is compiled, compiling the ones missing
    /// from the disk cache at once on worker threads (NVRTC is thread-safe), with one line on
    /// stderr saying so: on a new machine this is the wait before the first token, and run one
    /// after another the compiles took ~10 s. As many workers as the machine has threads (each
    /// compile holds its own memory), the longest sources first, so that the wait is about the
    /// longest compile.
    pub fn precompile(&self, jobs: &[(&KernelSource, Vec<String>)]) -> Result<(), CudaError> {
        let (cc, driver) = (self.compute_capability, self.driver_version);
        let mut missing: Vec<&(&KernelSource, Vec<String>)> = jobs.iter().filter(|(src, extra)| !nvrtc::is_cached(src, extra, cc, driver)).collect();
        missing.sort_by(|a, b| b.0.src.len().cmp(&a.0.src.len()).then(a.0.file.cmp(b.0.file)).then(a.1.cmp(&b.1)));
        missing.dedup_by(|a, b| a.0.file == b.0.file && a.1 == b.1);
        if !missing.is_empty() {
            let started = std::time::Instant::now();
            eprintln!(
                "ferrite: compiling {} CUDA kernel modules for {} (first use on this machine; cached in {})",
                missing.len(),
                self.arch(),
                nvrtc::cache_dir().map_or("no cache directory".into(), |d| d.display().to_string())
            );
            let workers = std::thread::available_parallelism().map_or(4, |n| n.get()).min(missing.len());
            let next = std::sync::atomic::AtomicUsize::new(0);
            let results: Vec<Result<(), CudaError>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..workers)
                    .map(|_| {
                        scope.spawn(|| loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((src, extra)) = missing.get(i) else { return Ok(()) };
                            nvrtc::compiled(src, extra, cc, driver)?;
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(CudaError::Invalid("a kernel compile thread panicked".into()))))
                    .collect()
            });
            for r in results {
                r?;
            }
            eprintln!("ferrite: compiled in {:.1} s", started.elapsed().as_secs_f64());
        }
        for (src, extra) in jobs {
            self.module(src, extra)?;
        }
        Ok(())
    }

    /// The loaded module of `source` with `extra` options (compiled on first use, then cached in
    /// memory and on disk).
    pub fn module(&self, source: &KernelSource, extra: &[String]) -> Result<Arc<CudaModule>, CudaError> {
        let key = std::iter::once(source.file.to_string()).chain(extra.iter().cloned()).collect::<Vec<_>>().join(" ");
        let mut modules = self.modules.lock().map_err(|_| CudaError::Invalid("kernel module cache lock poisoned".into()))?;
        if let Some(m) = modules.get(&key) {
            return Ok(m.clone());
        }
        let image = nvrtc::compiled(source, extra, self.compute_capability, self.driver_version)?;
        let module = match self.raw.load_module(cudarc::nvrtc::Ptx::from_binary(image.clone())) {
            Ok(m) => m,
            Err(e) => {
                // A cache file that the driver rejects (truncated by a crash, another driver's):
                // compile afresh once before giving up.
                let fresh = nvrtc::compile_fresh(source, extra, self.compute_capability, self.driver_version)?;
                self.raw.load_module(cudarc::nvrtc::Ptx::from_binary(fresh)).map_err(|e2| CudaError::Driver {
                    op: format!("loading the compiled kernels/{} {extra:?} ({}; first try: {})", source.file, self.arch(), describe(&e)),
                    msg: describe(&e2),
                })?
            }
        };
        modules.insert(key, module.clone());
        Ok(module)
    }
}

/// Launches a kernel that writes through a null pointer and synchronizes, to show how a kernel
/// fault is reported. Leaves the context unusable (CUDA errors of this kind are sticky).
pub fn fault_selftest(device: &str) -> Result<(), CudaError> {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    const FAULT: KernelSource = KernelSource {
        file: "fault_selftest.cu",
        src: "extern \"C\" __global__ void write_through(float* p) { p[threadIdx.x] = 1.0f; }",
        options: &[],
    };
    let ctx = CudaContext::get(device)?;
    let f = ctx.function(&FAULT, "write_through")?;
    let null: u64 = 0;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(&null);
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: deliberately faults on the device; the host side stays sound (the error is
    // reported by the next synchronization).
    ctx.check_launch(unsafe { launch.launch(cfg) }, "write_through")?;
    ctx.sync("kernel write_through (fault self-test)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(parse_device("cuda").unwrap(), 0);
        assert_eq!(parse_device("cuda:3").unwrap(), 3);
        assert!(matches!(parse_device("cuda:"), Err(CudaError::BadDevice(_))));
        assert!(matches!(parse_device("gpu"), Err(CudaError::BadDevice(_))));
        assert!(matches!(parse_device("cuda:-1"), Err(CudaError::BadDevice(_))));
    }

    #[test]
    fn availability_never_panics() {
        // On a machine without a driver this must be a plain false; with one, a count.
        let available = cuda_available();
        assert_eq!(available, device_count().map(|n| n > 0).unwrap_or(false));
        if !driver_library_present() {
            assert!(!available);
            let err = CudaContext::get("cuda").unwrap_err();
            assert!(err.to_string().contains("CUDA is not available"), "{err}");
        }
    }
}
