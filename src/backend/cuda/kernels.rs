//! The kernel sources of kernels/, embedded in the binary, and the NVRTC options of the variants
//! compiled once per weight type.
//!
//! Per-type kernels (embed.cu, matvec.cu) are compiled only for the types a model uses, with
//! `-DQTYPE=<name> -DQ_BLOCK_ELEMS=<block elements> -DQ_BLOCK_BYTES=<block bytes>`: one module per type keeps each
//! NVRTC run short, where one module with every type times every variant would compile for
//! minutes on first use.

use super::nvrtc::KernelSource;
use crate::backend::{KernelNeeds, KvDtype};
use crate::quant::GgmlType;

pub const EMBED: KernelSource = KernelSource { file: "embed.cu", src: include_str!("../../../kernels/embed.cu"), options: &[] };
pub const MATVEC: KernelSource = KernelSource { file: "matvec.cu", src: include_str!("../../../kernels/matvec.cu"), options: &[] };
/// The tensor-core matvec on repacked tiles (Q5_0, Q8_0, Q4_K, Q6_K): `matvec_mma_1/2/4/8`.
pub const MATVEC_MMA: KernelSource =
    KernelSource { file: "matvec_mma.cu", src: include_str!("../../../kernels/matvec_mma.cu"), options: &[] };
/// The tensor-core GEMM on repacked tiles for many rows of f16 x: `matmul_mma` (see matmul_mma.rs).
pub const MATMUL_MMA: KernelSource =
    KernelSource { file: "matmul_mma.cu", src: include_str!("../../../kernels/matmul_mma.cu"), options: &[] };
/// Repacked tiles read back as rows (embedding, prefill). `--fmad=false` as for dequant.cu: the
/// elements must be the CPU decoder's bits.
pub const REPACKED_ROWS: KernelSource = KernelSource {
    file: "repacked_rows.cu",
    src: include_str!("../../../kernels/repacked_rows.cu"),
    options: &["--fmad=false"],
};
pub const ATTENTION: KernelSource =
    KernelSource { file: "attention.cu", src: include_str!("../../../kernels/attention.cu"), options: &[] };
/// Causal attention of prompt chunks on the tensor cores (flash attention), compiled per head dim
/// like attention.cu (`prefill_attention_defines`).
pub const ATTENTION_PREFILL: KernelSource =
    KernelSource { file: "attention_prefill.cu", src: include_str!("../../../kernels/attention_prefill.cu"), options: &[] };
/// A weight's f16 copy times 1-16 rows of f16 x on the tensor cores (the decode step's small
/// GEMMs, in cuBLAS's place: matmul.rs, `gemm_rows`).
pub const GEMM_F16_ROWS: KernelSource =
    KernelSource { file: "gemm_f16_rows.cu", src: include_str!("../../../kernels/gemm_f16_rows.cu"), options: &[] };
pub const NORM: KernelSource = KernelSource { file: "norm.cu", src: include_str!("../../../kernels/norm.cu"), options: &[] };
pub const ROPE: KernelSource = KernelSource { file: "rope.cu", src: include_str!("../../../kernels/rope.cu"), options: &[] };
pub const SAMPLING: KernelSource =
    KernelSource { file: "sampling.cu", src: include_str!("../../../kernels/sampling.cu"), options: &[] };
pub const ELEMENTWISE: KernelSource =
    KernelSource { file: "elementwise.cu", src: include_str!("../../../kernels/elementwise.cu"), options: &[] };
pub const CONVERT: KernelSource = KernelSource { file: "convert.cu", src: include_str!("../../../kernels/convert.cu"), options: &[] };

/// Every module compiled without variant options: the kernel files every model runs, and
/// attention.cu's kv_append kernels (attention.cu is also compiled per head dim), so that a new
/// machine compiles them together (`CudaBackend::with_needs`).
pub const FIXED: [&KernelSource; 8] = [&NORM, &ROPE, &ELEMENTWISE, &CONVERT, &SAMPLING, &super::dequant::DEQUANT, &GEMM_F16_ROWS, &ATTENTION];

/// Every module a model with `needs` runs, each once: the fixed kernels, the per-type kernels of
/// each matrix type (`tiled(ty)`: the type takes the repacked tiles, see `matvec::path_for`;
/// types the GPU cannot compute with are left out: their load reports it), and attention for
/// the head width and KV cache type (with the prefill kernel when `flash_prefill`). Compiled at once when the
/// backend is made, so that a new machine waits for the longest compile instead of the sum of
/// the groups' (each group compiled as its first use came up: ~22 s for the test model on the
/// H200, 2026-12-04, sampling.cu alone ~9 s).
pub fn modules_for(needs: &KernelNeeds, tiled: impl Fn(GgmlType) -> bool, flash_prefill: bool) -> Vec<(&'static KernelSource, Vec<String>)> {
    let mut jobs: Vec<(&'static KernelSource, Vec<String>)> = FIXED.iter().map(|src| (*src, Vec::new())).collect();
    for ty in needs.matrix_types() {
        if tiled(ty) {
            if let Some(d) = tile_type_defines(ty) {
                jobs.extend([(&MATVEC_MMA, d.clone()), (&REPACKED_ROWS, d.clone()), (&MATMUL_MMA, d)]);
            }
        } else if let Some(d) = type_defines(ty) {
            jobs.extend([(&MATVEC, d.clone()), (&EMBED, d)]);
        }
    }
    // The pair kernels of the tiled types a group may mix (a 7B's Q4_K q/k with a Q6_K v).
    let tiled_types: Vec<GgmlType> = needs.matrix_types().filter(|t| tiled(*t)).collect();
    for (i, a) in tiled_types.iter().enumerate() {
        for b in &tiled_types[i + 1..] {
            jobs.extend(launch_pair(*a, *b).and_then(pair_defines).map(|d| (&MATVEC_MMA, d)));
        }
    }
    if let Some(d) = attention_defines(needs.head_dim, needs.kv_dtype) {
        jobs.push((&ATTENTION, d));
        if flash_prefill {
            jobs.extend(prefill_attention_defines(needs.head_dim, needs.kv_dtype).map(|d| (&ATTENTION_PREFILL, d)));
        }
    }
    jobs
}

/// Every module any model may run: [`modules_for`] a model of every type, for every head dim and
/// cache type, with each type's generic kernels and, where it has them, its tiled ones. What
/// every_kernel_compiles compiles; `prebuilt` holds a part of it.
pub fn every_module() -> Vec<(&'static KernelSource, Vec<String>)> {
    let every_type = GgmlType::ALL.iter().fold(KernelNeeds::default(), |n, t| n.with_matrix_type(*t));
    let mut sets = Vec::new();
    for hd in ATTENTION_HEAD_DIMS {
        for kv in KvDtype::ALL {
            let needs = every_type.with_head_dim(hd).with_kv_dtype(kv);
            sets.push(modules_for(&needs, |_| false, true));
            sets.push(modules_for(&needs, |ty| tile_type_defines(ty).is_some(), true));
        }
    }
    // The stream kernels, which a model compiles unless `matvec::StreamMode` is off.
    sets.push(GgmlType::ALL.iter().filter_map(|t| stream_defines(*t)).map(|d| (&MATVEC_MMA, d)).collect());
    sets.push(every_ffn_module());
    union_of_modules(sets)
}

/// The modules of several sets, each once, in the order first seen.
pub fn union_of_modules(sets: impl IntoIterator<Item = Vec<(&'static KernelSource, Vec<String>)>>) -> Vec<(&'static KernelSource, Vec<String>)> {
    let mut jobs: Vec<(&'static KernelSource, Vec<String>)> = Vec::new();
    for job in sets.into_iter().flatten() {
        if !jobs.iter().any(|(s, d)| s.file == job.0.file && *d == job.1) {
            jobs.push(job);
        }
    }
    jobs
}

/// The two tiled types, in the tile table's order, whose matrices may share one launch of
/// matvec_mma.cu's pair kernels (`matvec_mma_pair_<rows>`, "Two types, one launch"): tiles of the
/// same width, so that one plan and one staging of x serve both, and a mix the loader does not
/// widen to one type instead (Q5_0 with Q8_0 loads as Q8_0: `quant::widens_to_q8_0`). `None`
/// for any other two types.
pub fn launch_pair(a: GgmlType, b: GgmlType) -> Option<(GgmlType, GgmlType)> {
    let (fa, fb) = (super::repack::tile_format(a)?, super::repack::tile_format(b)?);
    if a == b || fa.tile_cols != fb.tile_cols || (crate::quant::widens_to_q8_0(a) && crate::quant::widens_to_q8_0(b)) {
        return None;
    }
    // Both on the int8 path at every row count of the pair kernels: a block's static shared memory
    // is both types' staging, which on the bf16 path (three bf16 parts of x) would pass 48 KB.
    let most_rows = super::matvec::PAIR_KERNEL_ROWS[super::matvec::PAIR_KERNEL_ROWS.len() - 1];
    if int8_max_rows(a)? < most_rows || int8_max_rows(b)? < most_rows {
        return None;
    }
    let rank = |t: GgmlType| super::repack::TILE_FORMATS.iter().position(|f| f.ty == t);
    Some(if rank(a) < rank(b) { (a, b) } else { (b, a) })
}

/// [`launch_pair`] of a group's types (in any order, repeats allowed) when it has exactly two.
pub fn group_pair(types: impl IntoIterator<Item = GgmlType>) -> Option<(GgmlType, GgmlType)> {
    let mut distinct: Vec<GgmlType> = Vec::new();
    for ty in types {
        if !distinct.contains(&ty) {
            distinct.push(ty);
        }
    }
    match distinct[..] {
        [a, b] => launch_pair(a, b),
        _ => None,
    }
}

/// The options that compile matvec_mma.cu's pair kernels alone for `pair` (from [`launch_pair`]):
/// the first type's as [`tile_type_defines`] gives them, the second as `QTYPE_B` with its own
/// int8 rows ([`int8_max_rows`]: the table's, or what FERRITE_CUDA_KERNEL_DEFINES gives every type).
pub fn pair_defines(pair: (GgmlType, GgmlType)) -> Option<Vec<String>> {
    let mut defines = tile_type_defines(pair.0)?;
    defines.push(format!("-DQTYPE_B={}", pair.1.snake_name()));
    defines.push(format!("-DMMA_S8_MAX_NT_B={}", int8_max_rows(pair.1)?));
    Some(defines)
}

/// The options that compile matvec_mma.cu's stream kernel alone for `ty` (`matvec::StreamMode`),
/// or `None` when `ty` has no tiles.
pub fn stream_defines(ty: GgmlType) -> Option<Vec<String>> {
    tile_type_defines(ty).map(|mut d| {
        d.push("-DMMA_STREAM=1".into());
        d
    })
}

/// The options that compile matvec_mma.cu's fused FFN kernels alone (`ffn_mma_1/2`, see ffn.rs) for
/// gate/up of `gate_up` and ffn_down of `down`, or `None` when either has no tiles.
pub fn ffn_defines(gate_up: GgmlType, down: GgmlType) -> Option<Vec<String>> {
    super::repack::tile_format(down)?;
    let mut defines = tile_type_defines(gate_up)?;
    defines.push("-DMMA_FFN=1".into());
    defines.push(format!("-DQTYPE_DOWN={}", down.snake_name()));
    Some(defines)
}

/// The fused FFN modules of every pair of tiled types (`ffn_defines`), for every_kernel_compiles.
pub fn every_ffn_module() -> Vec<(&'static KernelSource, Vec<String>)> {
    let tiled: Vec<GgmlType> = super::repack::TILE_FORMATS.iter().map(|f| f.ty).collect();
    tiled.iter().flat_map(|a| tiled.iter().filter_map(move |b| ffn_defines(*a, *b))).map(|d| (&MATVEC_MMA, d)).collect()
}

/// The options that compile attention.cu for `head_dim` and a cache of `kv_dtype`, or `None`
/// when it has no variant.
pub fn attention_defines(head_dim: usize, kv_dtype: KvDtype) -> Option<Vec<String>> {
    ATTENTION_HEAD_DIMS.contains(&head_dim).then(|| {
        let mut d = vec![format!("-DATTN_HEAD_DIM={head_dim}")];
        match kv_dtype {
            KvDtype::F32 => {}
            KvDtype::F16 => d.push("-DATTN_KV_F16=1".into()),
        }
        d
    })
}

/// The options that compile attention_prefill.cu for `head_dim`, or `None` for head dims it does
/// not take (multiples of 16 up to 128; the others keep attention.cu's kernel for prompts too).
pub fn prefill_attention_defines(head_dim: usize, kv_dtype: KvDtype) -> Option<Vec<String>> {
    if head_dim.is_multiple_of(16) && head_dim <= 128 {
        attention_defines(head_dim, kv_dtype)
    } else {
        None
    }
}

/// The options that compile a per-type kernel file for `ty` (its entry in the one type table of
/// src/quant/types.rs), or `None` when `ty` has no GPU decoder (then it has no CPU one either:
/// see `dequant::kernel_name`).
pub fn type_defines(ty: GgmlType) -> Option<Vec<String>> {
    crate::quant::can_dequantize(ty).then(|| {
        vec![format!("-DQTYPE={}", ty.snake_name()), format!("-DQ_BLOCK_ELEMS={}", ty.block_elems()), format!("-DQ_BLOCK_BYTES={}", ty.block_bytes())]
    })
}

/// The options that compile matvec_mma.cu and repacked_rows.cu for `ty`, or `None` when `ty` has
/// no repacked tile format (see `repack::TILE_FORMATS`): its name, and its int8 rows unless
/// `FERRITE_CUDA_KERNEL_DEFINES` sets them (its define, appended after these, then decides alone).
pub fn tile_type_defines(ty: GgmlType) -> Option<Vec<String>> {
    let rows = super::repack::tile_format(ty)?.int8_max_rows;
    let mut defines = vec![format!("-DQTYPE={}", ty.snake_name())];
    if env_int8_rows().is_none() {
        defines.push(format!("-DMMA_S8_MAX_NT={rows}"));
    }
    Some(defines)
}

/// Rows of x up to which matvec_mma.cu takes the int8 path for `ty` (`None`: no tiles): the
/// table's `int8_max_rows`, or what `-DMMA_S8_MAX_NT=N` of `FERRITE_CUDA_KERNEL_DEFINES` gives
/// every type (a comparison hook).
pub fn int8_max_rows(ty: GgmlType) -> Option<usize> {
    let table = super::repack::tile_format(ty)?.int8_max_rows;
    Some(env_int8_rows().unwrap_or(table))
}

/// [`int8_rows_override`] of the environment, read once a process (as the kernels are compiled
/// once a process).
fn env_int8_rows() -> Option<usize> {
    static OVERRIDE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *OVERRIDE.get_or_init(|| int8_rows_override(std::env::var("FERRITE_CUDA_KERNEL_DEFINES").ok().as_deref()))
}

/// The last `-DNAME` (`Some(None)`) or `-DNAME=VALUE` (`Some(Some(VALUE))`) among `defines`.
fn last_define<'a>(defines: Option<&'a str>, name: &str) -> Option<Option<&'a str>> {
    let def = defines?.split_whitespace().rfind(|d| matches!(d.strip_prefix("-D").and_then(|d| d.strip_prefix(name)), Some(rest) if rest.is_empty() || rest.starts_with('=')))?;
    Some(def.split_once('=').map(|(_, v)| v))
}

/// The rows of x a `FERRITE_CUDA_KERNEL_DEFINES` value's last `-DMMA_S8_MAX_NT` gives the int8
/// path, if it has one: the kernels have 1, 2, 4 and 8 rows (3 rows run the 4-row kernel), so
/// the most of those not above its value (`-DMMA_S8_MAX_NT` alone is 1, as in C; 0 below 1).
/// `nvrtc::env_defines` refuses a value that is not a decimal number, before any compile.
fn int8_rows_override(defines: Option<&str>) -> Option<usize> {
    let value: i64 = last_define(defines, "MMA_S8_MAX_NT")?.map_or(Some(1), |v| v.parse().ok())?;
    Some([8, 4, 2, 1].into_iter().find(|&r| r as i64 <= value).unwrap_or(0))
}

/// The `FERRITE_BLOCK_TYPES` list of kernels/quant_blocks.cuh as (snake name, elements per
/// block, bytes per block), for the tests that hold it to the Rust table.
#[cfg(test)]
pub(super) fn block_types_in_header() -> Vec<(String, usize, usize)> {
    let header = super::nvrtc::HEADERS.iter().find(|(n, _)| *n == "quant_blocks.cuh").expect("quant_blocks.cuh is a header").1;
    let start = header.find("#define FERRITE_BLOCK_TYPES(X)").expect("FERRITE_BLOCK_TYPES in quant_blocks.cuh");
    let mut out = Vec::new();
    for line in header[start..].lines().skip(1) {
        let entry = line.trim_start();
        let Some(args) = entry.strip_prefix("X(") else { break };
        let args = &args[..args.find(')').expect("X(...) closes")];
        let parts: Vec<&str> = args.split(',').map(str::trim).collect();
        assert_eq!(parts.len(), 3, "{line}");
        out.push((parts[0].to_string(), parts[1].parse().expect("elements"), parts[2].parse().expect("bytes")));
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    out
}

/// Rows of x up to which a projection runs as matrix-vector kernels (`matvec_1/2/4/8`) that read
/// the quantized weights directly; above it, weights are dequantized to float32 in chunks and
/// multiplied with cuBLAS. (A 16-row variant run in passes up to 64 rows was measured slower than
/// cuBLAS at 64 sequences on an H200: 848 against 1620 tokens/s.)
pub const MATVEC_MAX_ROWS: usize = 8;

/// The matvec kernel for `n_x` rows of x (the smallest variant that holds them).
pub fn matvec_kernel_name(n_x: usize) -> Option<&'static str> {
    match n_x {
        1 => Some("matvec_1"),
        2 => Some("matvec_2"),
        3..=4 => Some("matvec_4"),
        5..=8 => Some("matvec_8"),
        _ => None,
    }
}

/// Head dims attention.cu can be compiled for (`-DATTN_HEAD_DIM`; its per-lane arrays need a
/// compile-time size).
pub const ATTENTION_HEAD_DIMS: [usize; 7] = [16, 32, 64, 80, 96, 128, 256];

/// Weight rows per matvec thread block (MATVEC_WARPS in matvec.cu).
pub const MATVEC_ROWS_PER_BLOCK: u32 = 4;
/// Most warps per attention block (ATTN_MAX_WARPS in attention.cu).
pub const ATTENTION_MAX_WARPS: u32 = 16;
/// Most warps of the one-head decode kernel with a whole register file (`attention_heads_rope_1w8`,
/// ATTN_W8_WARPS in attention.cu).
pub const ATTENTION_W8_WARPS: u32 = 8;

/// Most query heads one attention block handles for `head_dim` (ATTN_GROUP in attention.cu; the
/// host may give a block fewer, see `attention_slice`).
pub fn attention_group(head_dim: usize) -> usize {
    if head_dim <= 128 {
        8
    } else {
        1024 / head_dim
    }
}

/// Dynamic shared memory of an attention block of `warps` warps, of the kernel for `group` heads
/// a block (`attention_group`, or 1 for the `_1` kernels): attention.cu's scratch, the chunk's
/// weights and slots while the warps run, their partial outputs after, whichever is larger.
pub fn attention_shared_bytes(warps: u32, head_dim: usize, group: usize) -> u32 {
    let floats = (group * head_dim).max(group * 32 + 32);
    (4 * warps as usize * floats) as u32
}
/// Query rows per prefill attention tile (PF_QROWS in attention_prefill.cu).
pub const PREFILL_TILE_ROWS: usize = 16;
/// Most query heads (warps) per prefill attention block (PF_MAX_WARPS in attention_prefill.cu).
pub const PREFILL_MAX_WARPS: usize = 8;
/// Threads per sampling block, one block per row (SAMPLE_THREADS in sampling.cu).
pub const SAMPLE_THREADS: u32 = 1024;
/// Threads per RMSNorm block (NORM_THREADS in norm.cu).
pub const NORM_THREADS: u32 = 256;
/// Most pairs a head rotates in `rope_store` (ROPE_MAX_PAIRS in rope.cu): head dims up to twice this.
pub const ROPE_MAX_PAIRS: usize = 256;

#[cfg(test)]
mod tests {
    /// The test model's kernels: the fixed ones, three per tiled type, attention for 64; a
    /// generic type's two; nothing for an unsupported head width; each module once.
    #[test]
    fn a_model_compiles_each_module_it_runs_once() {
        use super::super::repack::tile_format;
        let real = [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K];
        let needs = real.iter().fold(KernelNeeds::default(), |n, t| n.with_matrix_type(*t)).with_head_dim(64);
        assert_eq!(needs.matrix_types().collect::<Vec<_>>().len(), 4);
        let tiled = |ty: GgmlType| tile_format(ty).is_some();
        let jobs = modules_for(&needs, tiled, true);
        // Three modules a tiled type, the Q4_K/Q6_K pair kernels (Q5_0 with Q8_0 is widened instead),
        // attention and its prefill kernel.
        assert_eq!(jobs.len(), FIXED.len() + 4 * 3 + 1 + 2);
        let keys: std::collections::HashSet<String> = jobs.iter().map(|(s, d)| format!("{} {d:?}", s.file)).collect();
        assert_eq!(keys.len(), jobs.len(), "a module twice");
        let pair = pair_defines((GgmlType::Q4_K, GgmlType::Q6_K)).unwrap();
        assert!(jobs.iter().any(|(s, e)| s.file == MATVEC_MMA.file && *e == pair), "the Q4_K/Q6_K pair kernels");
        for ty in real {
            let d = tile_type_defines(ty).unwrap();
            for src in [&MATVEC_MMA, &REPACKED_ROWS, &MATMUL_MMA] {
                assert!(jobs.iter().any(|(s, e)| s.file == src.file && *e == d), "{} for {ty:?}", src.file);
            }
        }
        assert!(jobs.iter().any(|(s, e)| s.file == "attention.cu" && *e == attention_defines(64, KvDtype::F32).unwrap()));
        // An f16 cache: the attention modules of that type instead.
        let f16_jobs = modules_for(&needs.with_kv_dtype(KvDtype::F16), tiled, true);
        assert_eq!(f16_jobs.len(), jobs.len());
        for src in [&ATTENTION, &ATTENTION_PREFILL] {
            // (attention.cu without defines, the kv_append module, is among the fixed ones.)
            let d: Vec<_> = f16_jobs.iter().filter(|(s, d)| s.file == src.file && !d.is_empty()).map(|(_, d)| d.clone()).collect();
            assert_eq!(d, [vec!["-DATTN_HEAD_DIM=64".to_string(), "-DATTN_KV_F16=1".to_string()]], "{}", src.file);
        }
        assert_eq!(modules_for(&needs, tiled, false).len(), jobs.len() - 1, "no prefill kernel when it is off");
        // every_module (what is prebuilt and what every_kernel_compiles checks) holds them all.
        let every: std::collections::HashSet<String> = every_module().iter().map(|(s, d)| format!("{} {d:?}", s.file)).collect();
        assert!(keys.iter().chain(f16_jobs.iter().map(|(s, d)| format!("{} {d:?}", s.file)).collect::<Vec<_>>().iter()).all(|k| every.contains(k)));
        assert_eq!(every.len(), every_module().len(), "a module twice in every_module");
        // A generic type; a head width attention.cu has no variant for; nothing known.
        let other = KernelNeeds::default().with_matrix_type(GgmlType::Q4_0).with_head_dim(48);
        let jobs = modules_for(&other, tiled, true);
        assert_eq!(jobs.len(), FIXED.len() + 2);
        assert!(jobs.iter().any(|(s, e)| s.file == "matvec.cu" && *e == type_defines(GgmlType::Q4_0).unwrap()));
        assert_eq!(modules_for(&KernelNeeds::default(), tiled, true).len(), FIXED.len());
    }

    /// Which two tiled types the pair kernels mix, and their options.
    #[test]
    fn only_tiles_of_one_width_that_are_not_widened_share_a_launch() {
        use GgmlType::*;
        assert_eq!(launch_pair(Q4_K, Q6_K), Some((Q4_K, Q6_K)));
        assert_eq!(launch_pair(Q6_K, Q4_K), Some((Q4_K, Q6_K)), "in the tile table's order");
        assert_eq!(launch_pair(Q5_0, Q8_0), None, "loaded as Q8_0 instead");
        assert_eq!(launch_pair(Q4_K, Q5_0), None, "tiles of 256 and 128 columns");
        assert_eq!(launch_pair(Q4_K, Q4_K), None);
        assert_eq!(launch_pair(Q4_K, Q5_K), None, "Q5_K has no tiles");
        assert_eq!(group_pair([Q6_K, Q4_K, Q6_K]), Some((Q4_K, Q6_K)));
        assert_eq!(group_pair([Q4_K, Q4_K]), None, "one type");
        assert_eq!(group_pair([Q4_K, Q6_K, Q8_0]), None, "three types");
        let d = pair_defines((Q4_K, Q6_K)).unwrap();
        assert!(d.starts_with(&tile_type_defines(Q4_K).unwrap()) && d.contains(&"-DQTYPE_B=q6_k".to_string()), "{d:?}");
    }

    /// Each tiled type's int8 rows reach its kernels as MMA_S8_MAX_NT; a FERRITE_CUDA_KERNEL_DEFINES
    /// value overrides them only where it sets that define.
    #[test]
    fn int8_rows_go_to_the_kernels_as_a_define() {
        for f in super::super::repack::TILE_FORMATS {
            let d = tile_type_defines(f.ty).unwrap();
            assert!(d.contains(&format!("-DMMA_S8_MAX_NT={}", f.int8_max_rows)) || std::env::var("FERRITE_CUDA_KERNEL_DEFINES").is_ok(), "{d:?}");
        }
        assert_eq!(tile_type_defines(GgmlType::Q4_0), None);
        assert_eq!(int8_rows_override(None), None);
        assert_eq!(int8_rows_override(Some("-DMMA_STAGE_JOBS=2")), None);
        assert_eq!(int8_rows_override(Some("-DMMA_S8_MAX_NT=8 -DX=1")), Some(8));
        assert_eq!(int8_rows_override(Some("-DMMA_S8_MAX_NT=8 -DMMA_S8_MAX_NT=2")), Some(2));
        // The kernels' rows: 3 runs the 4-row kernel (on bf16 then), 7 the 8-row one.
        assert_eq!(int8_rows_override(Some("-DMMA_S8_MAX_NT=3")), Some(2));
        assert_eq!(int8_rows_override(Some("-DMMA_S8_MAX_NT=7")), Some(4));
        assert_eq!(int8_rows_override(Some("-DMMA_S8_MAX_NT=100")), Some(8));
        assert_eq!(int8_rows_override(Some("-DMMA_S8_MAX_NT")), Some(1));
        assert_eq!(int8_rows_override(Some("-DMMA_S8_MAX_NT=-1")), Some(0));
        assert_eq!(int8_rows_override(Some("-DMMA_S8_MAX_NT_X=4")), None);
    }

    use super::*;
    use crate::backend::cuda::context::nvrtc_library_present;
    use crate::backend::cuda::nvrtc::{compile_with_log, options_for};

    #[test]
    fn kernel_type_list_is_the_rust_table() {
        let header = block_types_in_header();
        let rust: Vec<(String, usize, usize)> = GgmlType::ALL
            .iter()
            .filter(|t| crate::quant::can_dequantize(**t))
            .map(|t| (t.snake_name().to_string(), t.block_elems(), t.block_bytes()))
            .collect();
        assert_eq!(header, rust, "FERRITE_BLOCK_TYPES in quant_blocks.cuh must list the types the CPU decodes, in id order");
    }

    #[test]
    fn launch_constants_match_the_sources() {
        assert!(MATVEC.src.contains(&format!("#define MATVEC_WARPS {MATVEC_ROWS_PER_BLOCK}")));
        assert!(MATVEC_MMA.src.contains(&format!("#define MMA_MAX_WARPS {}", super::super::matvec::MMA_MAX_WARPS)));
        // matvec::phase_tiles assumes this staging width, or a wider one (the int8 path's
        // s8_phase_cols, 4096 / NT unless -DMMA_S8_PHASE asks for more): its plans keep every warp
        // busy in either.
        assert!(MATVEC_MMA.src.contains("constexpr int PHASE = S8 ? s8_phase_cols(NT) : 4096 / NT;"));
        assert!(MATVEC_MMA.src.contains("#define MMA_S8_PHASE 0\n"));
        assert!(MATVEC_MMA.src.contains("return 4096 / nt > MMA_S8_PHASE ? 4096 / nt : MMA_S8_PHASE;"));
        for nt in [1, 2, 4, 8] {
            assert!(MATVEC_MMA.src.contains(&format!("MATVEC_MMA_KERNEL({nt})")), "matvec_mma_{nt}");
        }
        use super::super::matmul_mma::{MMQ_PHASE_COLS, MMQ_WARPS, MMQ_X_ROWS};
        assert!(MATMUL_MMA.src.contains(&format!("#define MMQ_WARPS {MMQ_WARPS}\n")));
        assert!(MATMUL_MMA.src.contains(&format!("#define MMQ_X_ROWS {MMQ_X_ROWS}\n")));
        assert!(MATMUL_MMA.src.contains(&format!("#define MMQ_PHASE {MMQ_PHASE_COLS}\n")));
        assert!(ATTENTION.src.contains(&format!("#define ATTN_MAX_WARPS {ATTENTION_MAX_WARPS}")));
        assert!(ATTENTION.src.contains("#define ATTN_GROUP (ATTN_HEAD_DIM <= 128 ? 8 : 1024 / ATTN_HEAD_DIM)"));
        // attention_shared_bytes sizes the `_1` kernels' scratch for one head.
        assert!(ATTENTION.src.contains(&format!("#define ATTN_W8_WARPS {ATTENTION_W8_WARPS}\n")));
        assert!(ATTENTION.src.contains(
            "ATTENTION_KERNEL(, ATTN_GROUP)\nATTENTION_ROPE_KERNEL(, ATTN_GROUP, ATTN_MAX_WARPS, false)\nATTENTION_KERNEL(_1, 1)\n\
             ATTENTION_ROPE_KERNEL(_1, 1, ATTN_MAX_WARPS, false)\nATTENTION_ROPE_KERNEL(_1w8, 1, ATTN_W8_WARPS, true)\n"
        ));
        for hd in ATTENTION_HEAD_DIMS {
            assert!((1..=8).contains(&attention_group(hd)) && attention_group(hd) * hd.max(128) <= 1024, "{hd}");
            // Within what a block may take once the function's limit is raised (227 KB on sm_90).
            assert!(attention_shared_bytes(ATTENTION_MAX_WARPS, hd, attention_group(hd)) <= 64 * 1024, "{hd}");
        }
        assert!(ATTENTION_PREFILL.src.contains(&format!("#define PF_QROWS {PREFILL_TILE_ROWS}")));
        assert!(ATTENTION_PREFILL.src.contains(&format!("#define PF_MAX_WARPS {PREFILL_MAX_WARPS}")));
        assert!(NORM.src.contains(&format!("#define NORM_THREADS {NORM_THREADS}")));
        assert!(ROPE.src.contains(&format!("#define ROPE_MAX_PAIRS {ROPE_MAX_PAIRS}")));
        assert!(SAMPLING.src.contains(&format!("#define SAMPLE_THREADS {SAMPLE_THREADS}")));
        super::super::sampling::assert_chunk_constants_match(SAMPLING.src);
        for n in 1..=MATVEC_MAX_ROWS {
            let name = matvec_kernel_name(n).unwrap();
            assert!(MATVEC.src.contains(&format!("MATVEC_KERNEL({})", &name["matvec_".len()..])), "{name}");
        }
        assert_eq!(matvec_kernel_name(MATVEC_MAX_ROWS + 1), None);
    }

    /// The tile geometry of each `Rp_<type>` struct in repacked.cuh is repack.rs's table.
    #[test]
    fn tile_formats_match_the_header() {
        let header = super::super::nvrtc::HEADERS.iter().find(|(n, _)| *n == "repacked.cuh").expect("repacked.cuh is a header").1;
        for f in super::super::repack::TILE_FORMATS {
            let start = header.find(&format!("struct Rp_{} {{", f.ty.snake_name())).unwrap_or_else(|| panic!("Rp_{} missing", f.ty.snake_name()));
            let body = &header[start..];
            let line = body.lines().find(|l| l.contains("TILE_COLS =")).expect("TILE_COLS");
            assert!(line.contains(&format!("TILE_COLS = {}, TILE_BYTES = {},", f.tile_cols, f.tile_bytes)), "{}: {line}", f.ty);
        }
    }

    /// Compiles every kernel file, and every per-type file for every type, for sm_80 (the oldest
    /// GPUs the tensor-core kernels take: an sm_90-only instruction must stay behind its guard)
    /// and sm_90, with no GPU (NVRTC runs on the CPU). Needs libnvrtc on the loader path; without
    /// it there is nothing to check and the test says so. FERRITE_PTXAS_LOG=1 prints ptxas's register,
    /// spill and shared-memory report of the matvec kernels.
    #[test]
    fn every_kernel_compiles_with_nvrtc() {
        if !nvrtc_library_present() {
            eprintln!("libnvrtc not found: kernel compilation not checked here");
            return;
        }
        let verbose = std::env::var("FERRITE_PTXAS_LOG").is_ok_and(|v| v == "1");
        let mut failures = Vec::new();
        for cc in [(8, 0), (9, 0)] {
            let mut compile_one = |src: &KernelSource, extra: &[String]| {
                let t = std::time::Instant::now();
                let mut opts = options_for(src, extra, cc).expect("NVRTC's version, FERRITE_CUDA_KERNEL_DEFINES and FERRITE_CUDA_FAST_COMPILE");
                let report = verbose && (src.file.starts_with("matvec") || src.file == "repacked_rows.cu");
                if report {
                    opts.push("--ptxas-options=-v".into());
                }
                match compile_with_log(src, &opts) {
                    Ok((cubin, log)) => {
                        eprintln!("{} {extra:?}: {} bytes in {:.2}s", src.file, cubin.len(), t.elapsed().as_secs_f64());
                        if report {
                            eprintln!("{log}");
                        }
                    }
                    Err(e) => failures.push(format!("{} {extra:?} (sm_{}{}): {e}", src.file, cc.0, cc.1)),
                }
            };
            for (src, defines) in every_module() {
                compile_one(src, &defines);
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }
}
