//! Kernel modules compiled ahead of time, embedded in the binary, so that a first load on a new
//! machine need not run NVRTC.
//!
//! A first load on a fresh H200 machine spent 7.0 of its 9.0 s in NVRTC (docs/BENCHMARKS.md,
//! 2026-12-04). kernels/prebuilt/sm_90.cubins holds the modules of [`modules`] (what models of
//! the common GGUF types with 64- or 128-wide heads and either KV cache type run: every Qwen2.5
//! size) compiled for sm_90 by NVRTC 13.0 with the backend's options: the bytes that NVRTC 13.0
//! makes of them on any machine (its output depends on the source, the options and its version
//! only), so on a machine whose NVRTC is 13.0 (the lent H200s') a module found here is the one it
//! would compile, and is used as the disk cache's files are (`nvrtc::compiled`). Anywhere else
//! (another GPU, another NVRTC, another module, `FERRITE_CUDA_KERNEL_DEFINES`), nothing matches
//! and NVRTC compiles as before. A module the driver refuses is compiled afresh
//! (`CudaContext::module`). Every module of every type would be 11 MiB (2.7 MiB compressed) in
//! the binary and in git's history each time a kernel changes; this set (8.7 MB, the fused FFN
//! modules 3.6 of it; the wheel about 5.9 MB) is under that.
//!
//! Entries are keyed like the disk cache (`nvrtc::cache_key`, source and headers and options and
//! NVRTC's version, the driver's left out), so a kernel edited since the file was made is not
//! found. `prebuilt_kernels_are_current` (run everywhere) fails until the file is made again:
//! `scripts/prebuild_kernels.sh`, which needs NVRTC 13.0 (`pip download nvidia-cuda-nvrtc==13.0.88`).
//!
//! The file: `FERPRE01`, a little-endian u32 count, then per entry its 32-character key, a
//! little-endian u64 length and the CUBIN.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::nvrtc::{cache_key, KernelSource};
#[cfg(test)]
use {super::kernels, crate::backend::KernelNeeds, crate::backend::KvDtype, crate::quant::GgmlType};

/// The architecture and NVRTC version the modules were compiled for and by.
pub const ARCH: (u32, u32) = (9, 0);
pub const NVRTC: (i32, i32) = (13, 0);

const IMAGE: &[u8] = include_bytes!("../../../kernels/prebuilt/sm_90.cubins");
const MAGIC: &[u8; 8] = b"FERPRE01";
const KEY_BYTES: usize = 32;

/// The entries of an image by key, or `None` when it is malformed.
fn parse(image: &[u8]) -> Option<HashMap<&str, &[u8]>> {
    let rest = image.strip_prefix(MAGIC)?;
    let (count, mut rest) = rest.split_at_checked(4)?;
    let count = u32::from_le_bytes(count.try_into().ok()?);
    let mut entries = HashMap::new();
    for _ in 0..count {
        let (key, after) = rest.split_at_checked(KEY_BYTES)?;
        let (len, after) = after.split_at_checked(8)?;
        let len = usize::try_from(u64::from_le_bytes(len.try_into().ok()?)).ok()?;
        let (cubin, after) = after.split_at_checked(len)?;
        if entries.insert(std::str::from_utf8(key).ok()?, cubin).is_some() {
            return None;  // a key twice: not a file the generator writes
        }
        rest = after;
    }
    rest.is_empty().then_some(entries)
}

fn entries() -> &'static HashMap<&'static str, &'static [u8]> {
    static ENTRIES: OnceLock<HashMap<&'static str, &'static [u8]>> = OnceLock::new();
    ENTRIES.get_or_init(|| parse(IMAGE).unwrap_or_default())
}

// What the prebuilt file holds is decided when it is made (scripts/prebuild_kernels.sh, through
// the tests below); at run time a module is looked up by its key alone.

/// The weight types whose kernels are prebuilt: the tiled ones (Q5_0, Q8_0, Q4_K, Q6_K) and the
/// other types of the common GGUF files (F16, BF16 and F32 models; Q4_0, Q4_1, Q5_1, Q2_K, Q3_K
/// and Q5_K in the _0/_1 and K-quant mixes).
#[cfg(test)]
const TYPES: [GgmlType; 13] = [
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F32,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q5_K,
];
/// Head dims whose attention is prebuilt (Qwen2.5 0.5B: 64; 1.5B and up, and most Llamas: 128).
#[cfg(test)]
const HEAD_DIMS: [usize; 2] = [64, 128];

/// The prebuilt modules: what `kernels::modules_for` asks of a model of any of [`TYPES`] with
/// one of [`HEAD_DIMS`] and a float32 or f16 cache on sm_90 (flash prefill on), and the stream
/// kernels of its tiled types (a model loads them too unless `FERRITE_CUDA_MATVEC_STREAM` is
/// off: without them, a first load compiled one module a tiled type, the twenty-ninth session
/// found), and the fused FFN kernels of every two tiled types, each once.
#[cfg(test)]
pub fn modules() -> Vec<(&'static KernelSource, Vec<String>)> {
    let needs = TYPES.iter().fold(KernelNeeds::default(), |n, t| n.with_matrix_type(*t));
    let tiled = |ty| super::repack::tile_format(ty).is_some();
    let per_model = HEAD_DIMS.iter().flat_map(|&hd| [KvDtype::F32, KvDtype::F16].map(|kv| kernels::modules_for(&needs.with_head_dim(hd).with_kv_dtype(kv), tiled, true)));
    let stream = vec![TYPES.iter().filter(|t| tiled(**t)).filter_map(|t| kernels::stream_defines(*t)).map(|d| (&kernels::MATVEC_MMA, d)).collect::<Vec<_>>()];
    // The fused FFN kernels of every pair of tiled types (a model of at most 1024 columns loads one a
    // pair its layers hold: ffn.rs).
    kernels::union_of_modules(per_model.chain(stream).chain([kernels::every_ffn_module()]))
}

/// The key of `source` compiled with `opts` (as `nvrtc::options_for` makes them) by NVRTC `nvrtc`.
fn key(source: &KernelSource, opts: &[String], nvrtc: (i32, i32)) -> String {
    cache_key(source, opts, 0, nvrtc)
}

/// Whether the prebuilt modules serve a GPU of compute capability `cc` with NVRTC `nvrtc`: those
/// they were made for, unless `FERRITE_CUDA_PREBUILT=0` (read at each call; for tests and A/B).
pub fn applies(cc: (u32, u32), nvrtc: (i32, i32)) -> bool {
    (cc, nvrtc) == (ARCH, NVRTC) && !entries().is_empty() && std::env::var("FERRITE_CUDA_PREBUILT").map_or(true, |v| v != "0")
}

/// The prebuilt CUBIN of `source` with `opts` for compute capability `cc`, where it is what NVRTC
/// `nvrtc` would make.
pub fn find(source: &KernelSource, opts: &[String], cc: (u32, u32), nvrtc: (i32, i32)) -> Option<&'static [u8]> {
    if !applies(cc, nvrtc) {
        return None;
    }
    entries().get(key(source, opts, nvrtc).as_str()).copied()
}

/// The image of `entries` (key, CUBIN), in the format [`parse`] reads.
#[cfg(test)]
fn image_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (key, cubin) in entries {
        assert_eq!(key.len(), KEY_BYTES, "{key}");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(cubin.len() as u64).to_le_bytes());
        out.extend_from_slice(cubin);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::kernels::every_module;
    use crate::backend::cuda::nvrtc::{compile, nvrtc_version, options_with};

    /// Every prebuilt module's options for the prebuilt architecture, with no environment overrides.
    fn modules_with_options() -> Vec<(&'static KernelSource, Vec<String>, String)> {
        modules()
            .into_iter()
            .map(|(src, extra)| {
                let opts = options_with(src, &extra, ARCH, NVRTC, None, None).expect("no environment overrides");
                let key = key(src, &opts, NVRTC);
                (src, opts, key)
            })
            .collect()
    }

    #[test]
    fn images_round_trip_and_damage_is_refused() {
        let entries = vec![("a".repeat(32), vec![1u8, 2, 3]), ("b".repeat(32), Vec::new())];
        let image = image_of(&entries);
        let parsed = parse(&image).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[&*"a".repeat(32)], &[1u8, 2, 3][..]);
        assert!(parse(&image[..image.len() - 1]).is_none(), "truncated");
        let mut longer = image.clone();
        longer.push(0);
        assert!(parse(&longer).is_none(), "trailing bytes");
        assert!(parse(b"FERPRE00\0\0\0\0").is_none(), "another format");
        assert!(parse(&image_of(&[("a".repeat(32), vec![1]), ("a".repeat(32), vec![2])])).is_none(), "a key twice");
    }

    /// The prebuilt set: the real test model's modules (all four tiled types, head dim 64) and the
    /// 7B's (head dim 128), with either cache type, are in it, only modules every_kernel_compiles
    /// knows, each once.
    #[test]
    fn the_prebuilt_set_holds_the_test_models_modules() {
        let set: Vec<String> = modules().iter().map(|(s, d)| format!("{} {d:?}", s.file)).collect();
        let every: std::collections::HashSet<String> = every_module().iter().map(|(s, d)| format!("{} {d:?}", s.file)).collect();
        assert!(set.iter().all(|k| every.contains(k)), "a prebuilt module every_module does not know");
        assert_eq!(set.iter().collect::<std::collections::HashSet<_>>().len(), set.len(), "a module twice");
        let real = [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K].iter().fold(KernelNeeds::default(), |n, t| n.with_matrix_type(*t));
        for hd in [64, 128] {
            for kv in [KvDtype::F32, KvDtype::F16] {
                for (s, d) in kernels::modules_for(&real.with_head_dim(hd).with_kv_dtype(kv), |ty| super::super::repack::tile_format(ty).is_some(), true) {
                    assert!(set.contains(&format!("{} {d:?}", s.file)), "{} {d:?}", s.file);
                }
            }
        }
        // The stream kernels the test model's types load by default (matvec::StreamMode).
        for ty in [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            let d = kernels::stream_defines(ty).expect("a tiled type");
            assert!(set.contains(&format!("{} {d:?}", kernels::MATVEC_MMA.file)), "the stream kernel of {ty}");
        }
    }

    /// The embedded file holds exactly the modules of [`modules`] as the sources are now. When
    /// this fails, a kernel (or header, or option) changed: make the file again with
    /// scripts/prebuild_kernels.sh.
    #[test]
    fn prebuilt_kernels_are_current() {
        let entries = parse(IMAGE).expect("kernels/prebuilt/sm_90.cubins is malformed: run scripts/prebuild_kernels.sh");
        let mut stale = Vec::new();
        let mut wanted = std::collections::HashSet::new();
        for (src, opts, key) in modules_with_options() {
            if !entries.contains_key(key.as_str()) {
                stale.push(format!("{} {:?}", src.file, &opts[1 + super::super::nvrtc::BASE_OPTIONS.len()..]));
            }
            wanted.insert(key);
        }
        let extra = entries.keys().filter(|k| !wanted.contains(**k)).count();
        assert!(
            stale.is_empty() && extra == 0,
            "kernels/prebuilt/sm_90.cubins is out of date (run scripts/prebuild_kernels.sh): {} modules missing or changed ({}), {extra} no longer wanted",
            stale.len(),
            stale.join("; ")
        );
    }

    /// Where this machine's NVRTC is the prebuilt file's (13.0), a prebuilt module is the bytes it
    /// compiles now: a sample of them, one of each kernel file.
    #[test]
    fn prebuilt_kernels_are_what_nvrtc_compiles() {
        match nvrtc_version() {
            Ok(v) if v == NVRTC => {}
            other => {
                eprintln!("NVRTC here is {other:?}, not {NVRTC:?}: the prebuilt kernels cannot be compared here");
                return;
            }
        }
        // (They were made by 13.0.88: a failure under another 13.0 patch release may be that.)
        let mut seen = std::collections::HashSet::new();
        for (src, opts, key) in modules_with_options() {
            if !seen.insert(src.file) {
                continue;
            }
            let fresh = compile(src, &opts).unwrap();
            assert_eq!(entries().get(key.as_str()).copied(), Some(&fresh[..]), "{} {opts:?}", src.file);
        }
    }

    /// Makes kernels/prebuilt/sm_90.cubins (or FERRITE_PREBUILT_OUT): every module compiled by this
    /// machine's NVRTC, which must be 13.0. Run by scripts/prebuild_kernels.sh.
    #[test]
    #[ignore]
    fn write_prebuilt_kernels() {
        assert_eq!(nvrtc_version().expect("NVRTC on the loader path"), NVRTC, "the prebuilt kernels are NVRTC 13.0's");
        use rayon::prelude::*;
        // In the jobs' order, whichever thread compiles each.
        let entries: Vec<(String, Vec<u8>)> = modules_with_options()
            .par_iter()
            .map(|(src, opts, key)| {
                let cubin = compile(src, opts).unwrap_or_else(|e| panic!("{}: {e}", src.file));
                eprintln!("{} {:?}: {} bytes", src.file, &opts[1 + super::super::nvrtc::BASE_OPTIONS.len()..], cubin.len());
                (key.clone(), cubin)
            })
            .collect();
        let path = std::env::var_os("FERRITE_PREBUILT_OUT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/prebuilt/sm_90.cubins"));
        let image = image_of(&entries);
        std::fs::write(&path, &image).unwrap();
        eprintln!("{}: {} modules, {} bytes", path.display(), entries.len(), image.len());
    }
}
