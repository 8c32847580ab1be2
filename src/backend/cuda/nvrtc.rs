//! Run-time compilation of the kernels in kernels/ for the GPU at hand, with an on-disk cache.
//!
//! The .cu sources are embedded in the binary, so an installed wheel needs no source tree and no
//! nvcc. NVRTC compiles straight to a CUBIN for the running GPU's architecture (`sm_XX`); the
//! CUBIN is cached under `<cache>/kernels/<hash>.cubin`, the hash covering the source, every
//! header, the options, the architecture, the driver and the NVRTC version, so a change to any of
//! them compiles afresh. The cache is only an accelerator: any failure to read or write it falls
//! back to compiling.
//!
//! NVRTC is given our headers by name and no system include path, so kernels include nothing
//! but kernels/*.cuh (no <cuda_fp16.h>: half/bf16 conversions are done by bit manipulation).

use std::borrow::Cow;
use std::ffi::{c_char, c_int, CString};
use std::path::PathBuf;

use cudarc::nvrtc::sys;

use super::context::nvrtc_library_present;
use super::error::CudaError;

/// One kernels/*.cu file, embedded, with the NVRTC options it needs beyond the defaults.
#[derive(Debug)]
pub struct KernelSource {
    /// File name under kernels/, e.g. "dequant.cu"; also the module's key and the name in errors.
    pub file: &'static str,
    pub src: &'static str,
    /// Extra NVRTC options, e.g. `&["--fmad=false"]` where results must match the CPU bit for bit.
    pub options: &'static [&'static str],
}

/// Every header a kernel may `#include "name"`. Add new kernels/*.cuh here.
pub const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../../kernels/common.cuh")),
    ("iq_tables.cuh", include_str!("../../../kernels/iq_tables.cuh")),
    ("quant_blocks.cuh", include_str!("../../../kernels/quant_blocks.cuh")),
    ("repacked.cuh", include_str!("../../../kernels/repacked.cuh")),
];

/// Options every kernel is compiled with (the architecture is added per GPU).
// IEEE float semantics (no flush-to-zero, exact division), as the CPU computes.
pub(super) const BASE_OPTIONS: &[&str] = &["--std=c++17", "--ftz=false", "--prec-div=true", "--prec-sqrt=true", "-default-device"];

/// `extra`: per-variant options, e.g. the `-DQTYPE=...` defines of a kernel compiled once per
/// weight type. Then the defines of `FERRITE_CUDA_KERNEL_DEFINES` (see [`env_defines`]).
pub fn options_for(source: &KernelSource, extra: &[String], cc: (u32, u32)) -> Result<Vec<String>, CudaError> {
    let fast_env = std::env::var("FERRITE_CUDA_FAST_COMPILE").ok();
    let defines_env = std::env::var("FERRITE_CUDA_KERNEL_DEFINES").ok();
    options_with(source, extra, cc, nvrtc_version()?, fast_env.as_deref(), defines_env.as_deref())
}

/// [`options_for`] for NVRTC `nvrtc` and the given values of the two environment variables.
pub fn options_with(
    source: &KernelSource,
    extra: &[String],
    cc: (u32, u32),
    nvrtc: (i32, i32),
    fast_env: Option<&str>,
    defines_env: Option<&str>,
) -> Result<Vec<String>, CudaError> {
    let mut opts: Vec<String> = vec![format!("--gpu-architecture=sm_{}{}", cc.0, cc.1)];
    opts.extend(BASE_OPTIONS.iter().map(|s| s.to_string()));
    let fast = fast_compile_override(fast_env, source.file)?;
    // NVRTC before 12.8 does not know --Ofast-compile: such a module compiles at full optimization.
    let knows_fast = nvrtc >= (12, 8);
    for opt in source.options {
        if !opt.starts_with(FAST_COMPILE) {
            opts.push(opt.to_string());
        } else if fast.is_none() && knows_fast {
            opts.push(opt.to_string());
        }
    }
    if let Some(level) = fast.filter(|l| *l != "0" && knows_fast) {
        opts.push(format!("{FAST_COMPILE}{level}"));
    }
    opts.extend(extra.iter().cloned());
    opts.extend(env_defines(defines_env)?);
    Ok(opts)
}

/// NVRTC's option trading a kernel's speed for its compile time (`min`, `mid`, `max`), which a
/// module's [`KernelSource::options`] may hold.
const FAST_COMPILE: &str = "--Ofast-compile=";

/// `FERRITE_CUDA_FAST_COMPILE=LEVEL` (`0`, `min`, `mid` or `max`): every module at that NVRTC
/// `--Ofast-compile` level (`0`: none) in place of its own; `FILE=LEVEL,...` (`sampling.cu=mid`):
/// those modules only. A hook to measure what a level costs a kernel and saves a first load.
/// Part of the cache key, like every option. The level for module `file`, if the value sets one.
pub fn fast_compile_override<'v>(value: Option<&'v str>, file: &str) -> Result<Option<&'v str>, CudaError> {
    let Some(value) = value else { return Ok(None) };
    let level = |l: &'v str| match l {
        "0" | "min" | "mid" | "max" => Ok(l),
        _ => Err(CudaError::Invalid(format!("FERRITE_CUDA_FAST_COMPILE: {value:?}: {l:?} is not 0, min, mid or max"))),
    };
    if !value.contains('=') {
        return level(value).map(Some);
    }
    let mut found = None;
    for item in value.split(',') {
        let Some((name, l)) = item.split_once('=') else {
            return Err(CudaError::Invalid(format!("FERRITE_CUDA_FAST_COMPILE: {value:?}: {item:?} is not FILE=LEVEL")));
        };
        let l = level(l)?;
        if name == file {
            found = Some(l);
        }
    }
    Ok(found)
}

/// `FERRITE_CUDA_KERNEL_DEFINES="-DNAME=VALUE ..."`: a benchmarking hook that compiles every
/// kernel with these defines too (a tuning knob such as `-DMMA_MIN_BLOCKS=3`), so that one build
/// can time several variants of a kernel in one lease of the GPU. They are part of the cache
/// key. Only `-DNAME` and `-DNAME=VALUE` (letters, digits, `_`, and `.`/`-` in the value) are
/// accepted: anything else is an error, not an option passed to NVRTC. Read at each compile, but
/// a process keeps the modules it has loaded (`CudaContext::module`): set it before the first
/// model loads, one variant a process.
pub fn env_defines(value: Option<&str>) -> Result<Vec<String>, CudaError> {
    let Some(value) = value else { return Ok(Vec::new()) };
    let word = |s: &str, extra: &[char]| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c));
    value
        .split_whitespace()
        .map(|tok| {
            let def = tok.strip_prefix("-D").unwrap_or("");
            let (name, val) = def.split_once('=').unwrap_or((def, "1"));
            // The host reads MMA_S8_MAX_NT too (`kernels::int8_max_rows`): a decimal number only,
            // so that both read the same value.
            if name == "MMA_S8_MAX_NT" && val.parse::<i64>().is_err() {
                Err(CudaError::Invalid(format!("FERRITE_CUDA_KERNEL_DEFINES: {tok:?}: MMA_S8_MAX_NT takes a decimal number")))
            } else if word(name, &[]) && !name.starts_with(|c: char| c.is_ascii_digit()) && word(val, &['.', '-']) {
                Ok(tok.to_string())
            } else {
                Err(CudaError::Invalid(format!("FERRITE_CUDA_KERNEL_DEFINES: {tok:?} is not a define (-DNAME or -DNAME=VALUE)")))
            }
        })
        .collect()
}

/// 128-bit FNV-1a (two 64-bit lanes with different offsets), stable across Rust versions unlike
/// std's hasher, so cache file names stay valid between builds.
struct Fnv2(u64, u64);

impl Fnv2 {
    fn new() -> Self {
        Fnv2(0xcbf2_9ce4_8422_2325, 0x6c62_272e_07bb_0142)
    }
    fn bytes(&mut self, b: &[u8]) {
        // Length first, so ("ab","c") and ("a","bc") differ.
        for &x in (b.len() as u64).to_le_bytes().iter().chain(b) {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
            self.1 = (self.1 ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(5);
        }
    }
    fn hex(&self) -> String {
        format!("{:016x}{:016x}", self.0, self.1)
    }
}

fn checksum(b: &[u8]) -> u64 {
    let mut h = Fnv2::new();
    h.bytes(b);
    h.0
}

/// NVRTC's version (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    if !nvrtc_library_present() {
        return Err(missing_nvrtc());
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: writes two ints.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| CudaError::Nvrtc { kernel: "-".into(), msg: format!("nvrtcVersion: {e:?}") })?;
    Ok((major, minor))
}

fn missing_nvrtc() -> CudaError {
    CudaError::MissingLibrary { lib: "NVRTC (libnvrtc)", candidates: cudarc::get_lib_name_candidates("nvrtc").join(", ") }
}

/// The cache directory: `$FERRITE_CACHE/kernels`, else `$XDG_CACHE_HOME/ferrite/kernels`, else
/// `~/.cache/ferrite/kernels` (the same root as the Python side's model cache).
pub fn cache_dir() -> Option<PathBuf> {
    let root = if let Some(p) = std::env::var_os("FERRITE_CACHE").filter(|p| !p.is_empty()) {
        PathBuf::from(p)
    } else if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        PathBuf::from(p).join("ferrite")
    } else {
        PathBuf::from(std::env::var_os("HOME")?).join(".cache").join("ferrite")
    };
    Some(root.join("kernels"))
}

pub(super) fn cache_key(source: &KernelSource, opts: &[String], driver_version: i32, nvrtc: (i32, i32)) -> String {
    let mut h = Fnv2::new();
    h.bytes(source.file.as_bytes());
    h.bytes(source.src.as_bytes());
    for (name, text) in HEADERS {
        h.bytes(name.as_bytes());
        h.bytes(text.as_bytes());
    }
    for o in opts {
        h.bytes(o.as_bytes());
    }
    h.bytes(&driver_version.to_le_bytes());
    h.bytes(&nvrtc.0.to_le_bytes());
    h.bytes(&nvrtc.1.to_le_bytes());
    h.hex()
}

const MAGIC: &[u8; 8] = b"FERCUBIN";

/// A cached CUBIN, if present and intact (magic, length and checksum all match).
fn read_cache(path: &PathBuf) -> Option<Vec<u8>> {
    let data = std::fs::read(path).ok()?;
    let body_len = data.len().checked_sub(24)?;
    if &data[..8] != MAGIC || u64::from_le_bytes(data[8..16].try_into().ok()?) as usize != body_len {
        return None;
    }
    let body = &data[16..16 + body_len];
    let sum = u64::from_le_bytes(data[16 + body_len..].try_into().ok()?);
    (sum == checksum(body)).then(|| body.to_vec())
}

/// Writes atomically (temp file + rename) so a concurrent reader never sees half a file.
fn write_cache(path: &PathBuf, cubin: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let mut data = Vec::with_capacity(cubin.len() + 24);
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(&(cubin.len() as u64).to_le_bytes());
    data.extend_from_slice(cubin);
    data.extend_from_slice(&checksum(cubin).to_le_bytes());
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, &data).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Whether the CUBIN of `source` with `extra` is in the disk cache (intact) or prebuilt.
pub fn is_cached(source: &KernelSource, extra: &[String], cc: (u32, u32), driver_version: i32) -> bool {
    let Ok(nvrtc) = nvrtc_version() else { return false };
    let Ok(opts) = options_for(source, extra, cc) else { return false };
    stored(source, &opts, cc, driver_version, nvrtc).is_some()
}

/// Where the disk cache keeps the CUBIN of `source` compiled with `opts`, if there is a cache.
fn cache_path(source: &KernelSource, opts: &[String], driver_version: i32, nvrtc: (i32, i32)) -> Option<PathBuf> {
    cache_dir().map(|d| d.join(format!("{}-{}.cubin", source.file.trim_end_matches(".cu"), cache_key(source, opts, driver_version, nvrtc))))
}

/// The CUBIN of `source` with `opts` that needs no compile: the disk cache's (intact), else the
/// prebuilt one (`prebuilt`: what this NVRTC would compile). The disk cache first, so that a
/// module compiled afresh after the driver refused the prebuilt one (`CudaContext::module`) is
/// the one found next time.
fn stored(source: &KernelSource, opts: &[String], cc: (u32, u32), driver_version: i32, nvrtc: (i32, i32)) -> Option<Cow<'static, [u8]>> {
    if let Some(cubin) = cache_path(source, opts, driver_version, nvrtc).as_ref().and_then(read_cache) {
        return Some(Cow::Owned(cubin));
    }
    super::prebuilt::find(source, opts, cc, nvrtc).map(Cow::Borrowed)
}

/// Compiles `source` with `opts` and puts the CUBIN in the disk cache (replacing an entry).
fn compile_into_cache(source: &KernelSource, opts: &[String], driver_version: i32, nvrtc: (i32, i32)) -> Result<Vec<u8>, CudaError> {
    let cubin = compile(source, opts)?;
    if let Some(path) = cache_path(source, opts, driver_version, nvrtc) {
        write_cache(&path, &cubin);
    }
    Ok(cubin)
}

/// The CUBIN of `source` (with the variant options `extra`) for compute capability `cc`: from the
/// disk cache, else prebuilt, else compiled (and then cached).
pub fn compiled(source: &KernelSource, extra: &[String], cc: (u32, u32), driver_version: i32) -> Result<Vec<u8>, CudaError> {
    let nvrtc = nvrtc_version()?;
    let opts = options_for(source, extra, cc)?;
    match stored(source, &opts, cc, driver_version, nvrtc) {
        Some(cubin) => Ok(cubin.into_owned()),
        None => compile_into_cache(source, &opts, driver_version, nvrtc),
    }
}

/// Compiles ignoring the cache, and replaces the cache entry.
pub fn compile_fresh(source: &KernelSource, extra: &[String], cc: (u32, u32), driver_version: i32) -> Result<Vec<u8>, CudaError> {
    let nvrtc = nvrtc_version()?;
    let opts = options_for(source, extra, cc)?;
    compile_into_cache(source, &opts, driver_version, nvrtc)
}

/// Owns an nvrtcProgram and destroys it on every exit path.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed only here.
        unsafe {
            let _ = sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

fn cstring(what: &str, s: &str) -> Result<CString, CudaError> {
    CString::new(s).map_err(|_| CudaError::Invalid(format!("{what} contains a NUL byte")))
}

/// Compiles `source` with `opts` (as [`options_for`] builds them) to a CUBIN, without the cache.
pub fn compile(source: &KernelSource, opts: &[String]) -> Result<Vec<u8>, CudaError> {
    compile_with_log(source, opts).map(|(cubin, _)| cubin)
}

/// Modules NVRTC has compiled in this process (`ferrite.cuda_device_info()["kernels_compiled"]`:
/// 0 after a load whose modules all came from the disk cache or the prebuilt file).
static COMPILED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn modules_compiled() -> usize {
    COMPILED.load(std::sync::atomic::Ordering::Relaxed)
}

/// As [`compile`], also returning NVRTC's log (with `--ptxas-options=-v` among `opts`, the
/// registers, spills and shared memory of every kernel).
pub fn compile_with_log(source: &KernelSource, opts: &[String]) -> Result<(Vec<u8>, String), CudaError> {
    if !nvrtc_library_present() {
        return Err(missing_nvrtc());
    }
    let nv_err = |call: &str, e: cudarc::nvrtc::result::NvrtcError| CudaError::Nvrtc { kernel: source.file.to_string(), msg: format!("{call}: {e:?}") };
    let src = cstring(source.file, source.src)?;
    let name = cstring(source.file, source.file)?;
    let header_texts = HEADERS.iter().map(|(n, t)| cstring(n, t)).collect::<Result<Vec<_>, _>>()?;
    let header_names = HEADERS.iter().map(|(n, _)| cstring(n, n)).collect::<Result<Vec<_>, _>>()?;
    let text_ptrs: Vec<*const c_char> = header_texts.iter().map(|s| s.as_ptr()).collect();
    let name_ptrs: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();
    let opt_strings = opts.iter().map(|o| cstring("NVRTC option", o)).collect::<Result<Vec<_>, _>>()?;
    let opt_ptrs: Vec<*const c_char> = opt_strings.iter().map(|s| s.as_ptr()).collect();

    let mut raw = std::ptr::null_mut();
    // SAFETY: all pointers point into CStrings that outlive the program (dropped at return,
    // after `prog`, which is declared later and so dropped first).
    unsafe {
        sys::nvrtcCreateProgram(&mut raw, src.as_ptr(), name.as_ptr(), HEADERS.len() as c_int, text_ptrs.as_ptr(), name_ptrs.as_ptr())
            .result()
            .map_err(|e| nv_err("nvrtcCreateProgram", e))?;
    }
    let prog = Program(raw);
    // SAFETY: `prog` is a valid program; the option strings live until return.
    let compiled = unsafe { sys::nvrtcCompileProgram(prog.0, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) }.result();
    if compiled.is_err() {
        return Err(CudaError::Compile {
            kernel: source.file.to_string(),
            arch: opts[0].trim_start_matches("--gpu-architecture=").to_string(),
            options: opts.to_vec(),
            log: program_log(&prog),
        });
    }
    let mut size = 0usize;
    // SAFETY: valid compiled program; the buffer has the size NVRTC reported.
    unsafe {
        sys::nvrtcGetCUBINSize(prog.0, &mut size).result().map_err(|e| nv_err("nvrtcGetCUBINSize", e))?;
        if size == 0 {
            return Err(CudaError::Nvrtc { kernel: source.file.to_string(), msg: "NVRTC produced an empty CUBIN".into() });
        }
        let mut cubin = vec![0u8; size];
        sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr() as *mut c_char).result().map_err(|e| nv_err("nvrtcGetCUBIN", e))?;
        COMPILED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((cubin, program_log(&prog)))
    }
}

fn program_log(prog: &Program) -> String {
    let mut size = 0usize;
    // SAFETY: valid program; the buffer has the size NVRTC reported.
    unsafe {
        if sys::nvrtcGetProgramLogSize(prog.0, &mut size).result().is_err() || size == 0 {
            return "(no log)".into();
        }
        let mut log = vec![0u8; size];
        if sys::nvrtcGetProgramLog(prog.0, log.as_mut_ptr() as *mut c_char).result().is_err() {
            return "(log unavailable)".into();
        }
        String::from_utf8_lossy(&log).trim_end_matches('\0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_files_round_trip_and_reject_damage() {
        let dir = std::env::temp_dir().join(format!("ferrite-nvrtc-test-{}", std::process::id()));
        let path = dir.join("x.cubin");
        let body: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        write_cache(&path, &body);
        assert_eq!(read_cache(&path).as_deref(), Some(&body[..]));
        let mut data = std::fs::read(&path).unwrap();
        data[100] ^= 1;
        std::fs::write(&path, &data).unwrap();
        assert_eq!(read_cache(&path), None, "a flipped byte must not pass the checksum");
        std::fs::write(&path, &data[..50]).unwrap();
        assert_eq!(read_cache(&path), None, "a truncated file must be rejected");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cache_key_covers_options_and_source() {
        let a = KernelSource { file: "a.cu", src: "x", options: &[] };
        let b = KernelSource { file: "a.cu", src: "y", options: &[] };
        let o1 = vec!["--gpu-architecture=sm_90".to_string()];
        let o2 = vec!["--gpu-architecture=sm_80".to_string()];
        assert_ne!(cache_key(&a, &o1, 13000, (13, 0)), cache_key(&b, &o1, 13000, (13, 0)));
        assert_ne!(cache_key(&a, &o1, 13000, (13, 0)), cache_key(&a, &o2, 13000, (13, 0)));
        assert_ne!(cache_key(&a, &o1, 13000, (13, 0)), cache_key(&a, &o1, 12080, (13, 0)));
        assert_eq!(cache_key(&a, &o1, 13000, (13, 0)), cache_key(&a, &o1, 13000, (13, 0)));
    }

    #[test]
    fn kernel_defines_from_the_environment_are_defines_or_an_error() {
        assert_eq!(env_defines(None).unwrap(), Vec::<String>::new());
        assert_eq!(env_defines(Some(" -DMMA_MIN_BLOCKS=3  -DFOO ")).unwrap(), vec!["-DMMA_MIN_BLOCKS=3", "-DFOO"]);
        assert_eq!(env_defines(Some("-DX=-1.5")).unwrap(), vec!["-DX=-1.5"]);
        assert_eq!(env_defines(Some("-DMMA_S8_MAX_NT=8 -DMMA_S8_MAX_NT")).unwrap(), vec!["-DMMA_S8_MAX_NT=8", "-DMMA_S8_MAX_NT"]);
        for bad in ["--use_fast_math", "-D", "-D=3", "-D3X", "-DX=$(id)", "-DX=a b", "-I/tmp", "MMA=3", "-DMMA_S8_MAX_NT=0x8", "-DMMA_S8_MAX_NT=8u"] {
            let err = env_defines(Some(bad)).map(|v| v.join(" ")).unwrap_err().to_string();
            assert!(err.contains("FERRITE_CUDA_KERNEL_DEFINES"), "{bad}: {err}");
        }
    }

    #[test]
    fn fast_compile_levels_from_the_environment_are_levels_or_an_error() {
        assert_eq!(fast_compile_override(None, "a.cu").unwrap(), None);
        for level in ["0", "min", "mid", "max"] {
            assert_eq!(fast_compile_override(Some(level), "a.cu").unwrap(), Some(level));
        }
        let per_file = Some("sampling.cu=mid,attention.cu=0");
        assert_eq!(fast_compile_override(per_file, "sampling.cu").unwrap(), Some("mid"));
        assert_eq!(fast_compile_override(per_file, "attention.cu").unwrap(), Some("0"));
        assert_eq!(fast_compile_override(per_file, "norm.cu").unwrap(), None);
        for bad in ["", "fast", "MID", "1", "-Xptxas=-O0", "sampling.cu=fast", "sampling.cu=mid,x"] {
            let err = fast_compile_override(Some(bad), "sampling.cu").unwrap_err().to_string();
            assert!(err.contains("FERRITE_CUDA_FAST_COMPILE"), "{bad}: {err}");
        }
    }
}
