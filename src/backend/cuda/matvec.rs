//! Matrix times a few activation rows (decode): the launch of the two kernel families, the
//! tensor-core kernels of matvec_mma.cu on repacked tiles (Q5_0, Q8_0, Q4_K, Q6_K: see
//! `repack`) and the generic per-type kernels of matvec.cu on the file's blocks (every other
//! type), plus [`MatvecOp`], one matrix on the device outside any model, for the per-op tests and
//! the microbenchmark (benches/bench_cuda_matvec.py) to run exactly the code the backend runs.
//!
//! Work split of the tiled kernels ([`Plan`]): one warp per 16-row tile row and column range;
//! when the matrix has too few tile rows to give every SM work, the columns are split over
//! `blockIdx.y` (split-K) and the last block of each block row adds the partial sums in a fixed
//! order. The partial sums and the per-block-row counters live in a scratch shared by every
//! weight of a type ([`SplitScratch`]), sized at load (never during a forward, which may be
//! recorded as a CUDA graph holding its address).

use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{sys, CudaFunction, CudaSlice, CudaView, LaunchConfig};

use super::backend::launch;
use super::context::CudaContext;
use super::error::CudaError;
use super::kernels::{self, MATVEC_MAX_ROWS, MATVEC_ROWS_PER_BLOCK};
use super::prefetch::WindowArgs;
use super::repack::{self, TileGrid, TILE_ROWS};
use crate::quant::{self, GgmlType, QuantError};

/// Most warps (tile rows) per block of matvec_mma.cu (`MMA_MAX_WARPS`).
pub const MMA_MAX_WARPS: u32 = 8;
/// Most column splits of one matrix.
const MAX_SPLITS: usize = 64;

/// Which kernels project with weights of a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatvecPath {
    /// Repacked tiles and matvec_mma.cu (types with a tile format, GPUs with bf16 mma: sm_80+).
    Tiled,
    /// The file's blocks and matvec.cu.
    Generic,
}

/// `FERRITE_CUDA_MATVEC=generic` keeps every weight in its file blocks on the generic kernels
/// (to compare whole-model speed and accuracy against the tiled path).
fn generic_forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("FERRITE_CUDA_MATVEC").is_ok_and(|v| v.eq_ignore_ascii_case("generic")))
}

/// The path weights of `ty` take on `ctx`'s GPU.
pub fn path_for(ctx: &CudaContext, ty: GgmlType) -> MatvecPath {
    let mma = ctx.compute_capability().0 >= 8;
    if mma && !generic_forced() && repack::tile_format(ty).is_some() {
        MatvecPath::Tiled
    } else {
        MatvecPath::Generic
    }
}

/// The launch shape of one tiled matrix for the kernel of `nt` x rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Tile rows per block.
    pub warps_m: u32,
    /// Warps that share the columns of one tile row inside a block (added in shared memory).
    pub warps_k: u32,
    /// Blocks along the rows: `ceil(m_tiles / warps_m)`, summed over the matrices of a group
    /// ([`Plan::for_group`]).
    pub block_rows: u32,
    /// Column splits across blocks (`gridDim.y`); 1 = none.
    pub splits: u32,
    pub k_tiles_per_split: u32,
}

/// Warps the plans aim for per SM: loads in flight to cover DRAM latency.
const WARPS_PER_SM: usize = 32;
/// Warps of matvec_mma.cu an SM holds at once: its launch bounds (8 warps, 2 blocks an SM) cap
/// its registers so that 16 fit.
const RESIDENT_WARPS_PER_SM: usize = 16;

/// FERRITE_CUDA_MATVEC_WAVE=0: the one- and two-row plans of smaller matrices as before the
/// 21st session (blocks of one tile row, whatever the waves), to compare on one build.
fn one_wave_rule() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERRITE_CUDA_MATVEC_WAVE").map_or(true, |v| v != "0"))
}
/// Tile rows from which a matrix counts as large for the kernels of 4 and 8 rows (2048 rows):
/// its tile rows alone give the GPU enough warps, so columns are split only across blocks, and
/// only a little.
const LARGE_M_TILES: usize = 128;
/// Most column splits of a large matrix.
const LARGE_MAX_SPLITS: usize = 8;

/// Columns of x a split spans from which a large matrix's blocks take 8 tile rows instead of 4:
/// each block stages its split's columns of x (for ffn_down, SwiGLU of gate and up) once for all
/// its tile rows, and a wide split's staging (a 7B's ffn_down: 2,368 columns, four rows of x at
/// four sequences) costs more than the warps of twice the blocks bring. H100, 2026-12-06, 8 tile
/// rows for every large split matrix: the synthetic 7B's decode steps 2.603 -> 2.56 ms at one
/// sequence, 3.48 -> 3.21 at four; the 0.5B shapes' at four 0.931 -> 0.940 (their gate/up, 224
/// columns a split), so narrower splits keep 4 (docs/BENCHMARKS.md, forty-first session).
const WIDE_SPLIT_COLS: usize = 512;

/// Columns of x matvec_mma.cu's kernels stage for all their rows at once: the planned kernel's
/// PHASE is this over its rows (at least), the stream kernel's STREAM_PHASE this.
const STAGE_COLS: usize = 4096;

/// Column tiles of x the kernel for `nt` rows stages at once (PHASE / TILE_COLS in
/// matvec_mma.cu): more warps along the columns than this would idle.
pub fn phase_tiles(format: &repack::TileFormat, nt: usize) -> usize {
    (STAGE_COLS / nt.max(1) / format.tile_cols).max(1)
}

/// A forced (warps_m, warps_k, splits) for every plan made after it, 0 = none: a benchmark hook
/// ([`force_plan`]) to measure other shapes of the same launch.
static FORCED_PLAN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Benchmarks only: makes every later [`Plan`] use these warps per block and (at most) these
/// column splits; `None` restores the heuristic.
pub fn force_plan(forced: Option<(u32, u32, u32)>) {
    let v = forced.map_or(0, |(wm, wk, s)| ((wm as u64 & 0xff) << 40) | ((wk as u64 & 0xff) << 32) | s as u64);
    FORCED_PLAN.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// ((rows, cols, nt), (warps_m, warps_k, splits)): one entry of `FERRITE_CUDA_MATVEC_PLANS`.
type EnvPlan = ((usize, usize, usize), (usize, usize, usize));

/// The entries of a `FERRITE_CUDA_MATVEC_PLANS` value (see [`env_plan`]); malformed ones are left out.
fn parse_plans(text: &str) -> Vec<EnvPlan> {
    let num = |v: &str| v.trim().parse::<usize>().ok();
    text.split(';')
        .filter_map(|entry| {
            let (shape, plan) = entry.split_once('=')?;
            let (dims, nt) = shape.split_once('@')?;
            let (rows, cols) = dims.split_once('x')?;
            let p: Vec<usize> = plan.split(',').map(num).collect::<Option<_>>()?;
            if p.len() != 3 {
                return None;
            }
            Some(((num(rows)?, num(cols)?, num(nt)?), (p[0], p[1], p[2])))
        })
        .collect()
}

/// `FERRITE_CUDA_MATVEC_PLANS`: plans for given launches, to measure others inside a decode step
/// (an experiment's hook, like [`force_plan`] for the benchmarks): `ROWSxCOLS@NT=WM,WK,SPLITS`
/// entries separated by `;`, where ROWS is the launch's rows (a group's summed, padded to 16) and
/// NT the kernel's rows of x (1, 2, 4 or 8). Warps are clamped as a forced plan's are.
fn env_plan(grid: &TileGrid, nt: usize) -> Option<(usize, usize, usize)> {
    static PLANS: std::sync::OnceLock<Vec<EnvPlan>> = std::sync::OnceLock::new();
    let plans = PLANS.get_or_init(|| {
        let Ok(text) = std::env::var("FERRITE_CUDA_MATVEC_PLANS") else { return Vec::new() };
        // An experiment's setting: a mistyped entry would leave that launch on its default plan
        // unnoticed, so say so.
        for entry in text.split(';').filter(|e| !e.trim().is_empty() && parse_plans(e).is_empty()) {
            eprintln!("ferrite: FERRITE_CUDA_MATVEC_PLANS: {entry:?} is not ROWSxCOLS@NT=WM,WK,SPLITS; ignored");
        }
        parse_plans(&text)
    });
    let max_warps = MMA_MAX_WARPS as usize;
    let phase = phase_tiles(&grid.format, nt);
    plans.iter().find(|(key, _)| *key == (grid.n_rows, grid.n_cols, nt)).map(|&(_, (wm, wk, s))| {
        let wm = wm.clamp(1, max_warps);
        let wk = wk.clamp(1, (max_warps / wm).min(phase));
        (wm, wk, s.max(1))
    })
}

impl Plan {
    /// For a matrix of `grid`'s shape, the kernel of `nt` rows of x, on a GPU with `sms` SMs.
    /// Chosen from a sweep of every shape on an H200 (2026-12-02; benches/bench_cuda_matvec.py
    /// measures the result):
    ///
    /// * large matrices (1 or 2 rows of x: enough tiles for two per warp at `WARPS_PER_SM`;
    ///   4 or 8 rows: 2048 rows or more): one warp per tile row and column range, 4 tile rows a
    ///   block (8 when the columns are not split or a split spans [`WIDE_SPLIT_COLS`] or more),
    ///   columns split across blocks until there are
    ///   about two tiles per warp or `WARPS_PER_SM` warps per SM, at most 8 ways;
    /// * smaller ones, 1 or 2 rows of x (latency-bound): blocks of 8 warps, as many of them
    ///   along a tile row's columns as it has tiles and the rest on more tile rows a block, so
    ///   that the blocks fit one wave; then columns split across blocks (about one tile a warp,
    ///   at most four splits, none when there are as many tile rows as SMs) while they
    ///   still fit (`FERRITE_CUDA_MATVEC_WAVE=0`: the rule before, one tile row a block);
    /// * the same for 3 or 4 rows where x fits one phase (`one_phase_rows` below);
    /// * smaller ones, 4 or 8 rows (more math per tile): two warps a tile row, one tile each,
    ///   columns split across blocks, as many tile rows a block as still leave a block for
    ///   every other SM.
    pub fn new(grid: &TileGrid, sms: usize, nt: usize) -> Plan {
        let (m, k, sms) = (grid.m_tiles.max(1), grid.k_tiles.max(1), sms.max(1));
        let max_warps = MMA_MAX_WARPS as usize;
        let phase = phase_tiles(&grid.format, nt);
        let forced = FORCED_PLAN.load(std::sync::atomic::Ordering::Relaxed);
        // Three or four rows of a matrix whose x fits one phase (the 0.5B's 896 columns) and of
        // fewer tiles than the large rule's one- and two-row bound: planned as one and two rows
        // are, one wave of blocks without a column split, instead of the splits below, whose
        // round trips and the RMSNorm's pass of its own (a split block stages part of x) cost more
        // than the warps they add. H100, 2026-12-06, syn05's four-sequence step 0.938 -> 0.824 ms
        // with gate/up (9728x896) at (4, 2, 1) instead of (4, 1, 4), q/k/v (1152x896) at (1, 8, 1)
        // instead of (4, 2, 4) and o at (1, 8, 1) instead of (2, 2, 4); a 7B's q/k/v and o (3584
        // columns, several phases) lost 24 % on such plans and keep theirs (docs/BENCHMARKS.md,
        // forty-second session).
        let one_phase_rows = one_wave_rule() && (3..=4).contains(&nt) && k <= phase && m * k < 2 * WARPS_PER_SM * sms;
        let (wm, wk, splits) = if let Some(plan) = env_plan(grid, nt) {
            plan
        } else if forced != 0 {
            let wm = ((forced >> 40) as usize).clamp(1, max_warps);
            let wk = ((forced >> 32) as usize & 0xff).clamp(1, max_warps / wm);
            (wm, wk, (forced & 0xffff_ffff) as usize)
        } else if (nt <= 2 && m * k >= 2 * WARPS_PER_SM * sms) || (nt > 2 && m >= LARGE_M_TILES && !one_phase_rows) {
            let k_ways = (m * k).div_ceil(2).min(WARPS_PER_SM * sms).div_ceil(m).clamp(1, k.min(LARGE_MAX_SPLITS));
            let split_cols = k.div_ceil(k_ways) * grid.format.tile_cols;
            (if k_ways == 1 || split_cols >= WIDE_SPLIT_COLS { 8 } else { 4 }, 1, k_ways)
        } else if (nt <= 2 || one_phase_rows) && one_wave_rule() {
            // Latency-bound: every block stages all of x (and its norm) before its first mma, so
            // a block row wants all 8 warps to share that, and a second wave of blocks would pay
            // for it again. Eight warps a block, as many along the columns as the matrix has
            // tiles, trading warps along the columns for tile rows a block until the blocks fit
            // one wave; then columns split across blocks, ceil(k / warps_k) ways (about one tile
            // a warp) and at most four, while the blocks still fit (none once the tile rows alone
            // give every SM a block: each split costs a round trip through L2). H200 sweep, one
            // and two rows, 0.5B shapes (benches/bench_cuda_matvec.py --sweep-plans,
            // docs/BENCHMARKS.md, 21st session): gate and up as one launch (9728x896 Q5_0) at one / two rows took 21 % /
            // 15-19 % of the copy bandwidth in 608 blocks of 3 or 4 warps, 24 % / 22 % in 152 of
            // 8; down (896x4864) 9-17 % with two splits, 10-19 % with three or four.
            let wave_blocks = |warps: usize| sms * (RESIDENT_WARPS_PER_SM / warps).max(1);
            let (mut wm, mut wk) = (1, k.min(max_warps).min(phase));
            while wk > 1 && m.div_ceil(wm) > wave_blocks(wm * wk) && wm * 2 <= max_warps {
                wm *= 2;
                wk = wk.div_ceil(2);
            }
            let mut splits = if m >= sms { 1 } else { k.div_ceil(wk).min(4) };
            while splits > 1 && m.div_ceil(wm) * splits > wave_blocks(wm * wk) {
                splits -= 1;
            }
            // A block of one tile row whose warps are fewer than x's 256-column staging jobs (nt
            // per 256 columns) takes warps up to the jobs (at most 8), the spare ones only
            // staging: each warp stages fewer jobs, and where they then fit the warps, the
            // RMSNorm folds into staging instead of a pass of its own (matvec_mma.cu's
            // FUSES_NORM). H100, 2026-12-06, the 0.5B's q/k/v and o (7 tiles) on 8 warps instead
            // of 7: syn05's two-sequence step 0.830 -> 0.778 ms, its four-sequence one (with the
            // one-phase plans above) 0.836 -> 0.825; one sequence (4 jobs) keeps 7.
            let jobs = nt * (k * grid.format.tile_cols).div_ceil(256);
            if wm == 1 && splits == 1 && wk < jobs {
                wk = jobs.min(max_warps).min(phase);
            }
            (wm, wk, splits)
        } else if nt <= 2 {
            // One tile per warp while the whole matrix is a fraction of a full GPU's warps (the
            // loads all go out at once); two when it is more (the second's loads overlap the
            // first's math).
            let per_warp = if m * k > WARPS_PER_SM * sms / 2 { 2 } else { 1 };
            let k_ways = (m * k).div_ceil(per_warp).min(WARPS_PER_SM * sms).div_ceil(m).clamp(1, k);
            let wk = k_ways.min(max_warps).min(phase);
            // No column split once the tile rows alone give every SM a block: the split's round
            // trip through L2 then costs more than the warps it adds (H200 sweep of the int8
            // path, 3584x3584 Q5_0 / Q8_0: 17 -> 26 % and 29 -> 42 % of copy bandwidth at one row,
            // 14 -> 19 % and 24 -> 33 % at two; docs/BENCHMARKS.md, tenth session). Measured on
            // 132 SMs only: a GPU with fewer drops the split on smaller matrices too.
            (1, wk, if m >= sms { 1 } else { k_ways.div_ceil(wk).min(2) })
        } else {
            let wk = 2.min(phase).min(k);
            let splits = k.div_ceil(wk);
            let wm = [4usize, 2, 1].into_iter().find(|w| 2 * m.div_ceil(*w) * splits >= sms).unwrap_or(1);
            (wm, wk, splits)
        };
        let mut per = k.div_ceil(splits.clamp(1, k.min(MAX_SPLITS)));
        // The int8 path stages x in 256-column jobs from each split's first column: with tiles
        // of 128 columns, an odd split would start its jobs off the 256-column grid (from 3 rows,
        // two int8 parts, the rounding then follows other blocks' largest values than
        // tests/test_cuda_matvec.py's model of it; the same precision either way).
        if nt > 2 && grid.format.tile_cols < 256 && kernels::int8_max_rows(grid.format.ty).is_some_and(|r| nt <= r) {
            per = per.next_multiple_of(2).min(k.next_multiple_of(2));
        }
        let splits = k.div_ceil(per);
        Plan { warps_m: wm as u32, warps_k: wk as u32, block_rows: m.div_ceil(wm) as u32, splits: splits as u32, k_tiles_per_split: per as u32 }
    }

    /// Floats of partial sums the plan needs (0 without a split).
    pub fn partial_floats(&self, grid: &TileGrid) -> usize {
        if self.splits > 1 {
            self.splits as usize * MATVEC_MAX_ROWS * grid.m_tiles * TILE_ROWS
        } else {
            0
        }
    }

    /// The plans of the four kernels (1, 2, 4 and 8 rows).
    pub fn all(grid: &TileGrid, sms: usize) -> [Plan; 4] {
        [1, 2, 4, 8].map(|nt| Plan::new(grid, sms, nt))
    }

    /// The plan of one launch over several matrices of the same format and width (`grids`, at
    /// most [`MAX_SEGMENTS`]): planned as one matrix of all their tile rows, each matrix then
    /// taking whole block rows of its own. Returns the plan and that combined grid (which sizes
    /// the partial sums).
    pub fn for_group(grids: &[TileGrid], sms: usize, nt: usize) -> (Plan, TileGrid) {
        let all = combined(grids);
        let mut plan = Plan::new(&all, sms, nt);
        plan.block_rows = grids.iter().map(|g| g.m_tiles.div_ceil(plan.warps_m as usize) as u32).sum();
        (plan, all)
    }
}

/// The tile rows of `grids` (one launch's matrices, of one format and width) as one grid.
fn combined(grids: &[TileGrid]) -> TileGrid {
    let mut all = grids[0];
    all.m_tiles = grids.iter().map(|g| g.m_tiles).sum();
    all.n_rows = all.m_tiles * TILE_ROWS;
    all
}

/// Which launches of one, two, four or eight rows of x (up to [`stream_rows`]) take matvec_mma.cu's stream
/// kernel (`matvec_mma_stream_1`, `_2`, `_4` and `_8`, their module compiled with `-DMMA_STREAM=1`: every
/// warp an equal share of the launch's tiles, x staged a phase at a time; see the kernel's
/// notes). `OnePhase` by default: H200, 2026-12-05, the synthetic 7B's one-sequence step 2.835 ->
/// 2.560 ms with it (its gate/up launch and LM head), the 0.5B shapes' 0.781 -> 0.772 (the LM
/// head; docs/BENCHMARKS.md, twenty-eighth session). `Large` (x of several phases too: a 7B's
/// ffn_down) cost time: H100, 2026-12-05, the synthetic 7B's one-sequence step 2.823 / 2.799 ->
/// 2.944 / 2.956 ms, two rounds (twenty-ninth session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    Off,
    /// Matrices of at least `STREAM_MIN_TILES_PER_WARP` tiles a warp of the stream grid (the
    /// LM heads, a 7B's gate/up and down).
    Large,
    /// As `Large`, x one phase wide only (not a 7B's ffn_down): the twenty-eighth session's
    /// choice, the default.
    OnePhase,
    /// Every launch up to [`stream_rows`] rows of x (for the per-op tests).
    Always,
}

/// The mode (`StreamMode as u8`), or `u8::MAX` before the first read.
static STREAM_MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// The stream mode: as last set by [`set_stream_mode`], else `FERRITE_CUDA_MATVEC_STREAM`
/// (`0`, `off`, `false` or `no`, any case; `large`; `always`; unset or anything else:
/// [`StreamMode::OnePhase`]). Kernels are compiled for it when a weight type's kernels are (at
/// load), so set it before.
pub fn stream_mode() -> StreamMode {
    use std::sync::atomic::Ordering::Relaxed;
    if STREAM_MODE.load(Relaxed) == u8::MAX {
        let from_env = StreamMode::from_env(std::env::var("FERRITE_CUDA_MATVEC_STREAM").ok().as_deref());
        // A hook's setting made meanwhile stays.
        let _ = STREAM_MODE.compare_exchange(u8::MAX, from_env as u8, Relaxed, Relaxed);
    }
    let mode = STREAM_MODE.load(Relaxed);
    StreamMode::ALL.into_iter().find(|m| *m as u8 == mode).unwrap_or(StreamMode::OnePhase)
}

impl StreamMode {
    pub const ALL: [StreamMode; 4] = [StreamMode::Off, StreamMode::Large, StreamMode::OnePhase, StreamMode::Always];

    /// The mode's name as `FERRITE_CUDA_MATVEC_STREAM` and the test hook spell it.
    pub fn name(self) -> &'static str {
        match self {
            StreamMode::Off => "off",
            StreamMode::Large => "large",
            StreamMode::OnePhase => "one-phase",
            StreamMode::Always => "always",
        }
    }

    /// The mode of that name.
    pub fn from_name(name: &str) -> Option<StreamMode> {
        StreamMode::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The mode `FERRITE_CUDA_MATVEC_STREAM`'s value asks for (see [`stream_mode`]).
    fn from_env(value: Option<&str>) -> StreamMode {
        let Some(value) = value.map(|v| v.trim().to_ascii_lowercase()) else { return StreamMode::OnePhase };
        match value.as_str() {
            "0" | "off" | "false" | "no" => StreamMode::Off,
            name => StreamMode::from_name(name).unwrap_or(StreamMode::OnePhase),
        }
    }
}

/// Sets the stream mode for kernels compiled and launches made after it (the per-op tests' hook).
pub fn set_stream_mode(mode: StreamMode) {
    STREAM_MODE.store(mode as u8, std::sync::atomic::Ordering::Relaxed);
}

/// Tiles a warp of the stream grid gets on average from which [`StreamMode::Large`] takes the
/// stream kernel: with fewer, most tile rows would be shared by several warps (a round trip
/// through L2 each), where the planned kernels' one wave of blocks does as well.
const STREAM_MIN_TILES_PER_WARP: usize = 4;

/// Blocks of the stream kernel: as many as the GPU holds at once (its launch bounds: 8 warps, two
/// blocks an SM).
pub fn stream_blocks(sms: usize) -> usize {
    sms.max(1) * (RESIDENT_WARPS_PER_SM / MMA_MAX_WARPS as usize)
}

/// Launches of the stream kernel by this process (directly, not counting graph replays), for
/// tests to see that it ran (`_cuda_counters`).
pub static STREAM_MATVECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Phases (the columns of x a block stages at once) of a one-row launch over `all`.
fn stream_phases(all: &TileGrid) -> usize {
    all.k_tiles.div_ceil(phase_tiles(&all.format, 1)).max(1)
}

/// The stream kernels' rows of x (`matvec_mma_stream_1`, `_2`, `_4` and `_8`; from three rows x
/// is in two int8 parts, so only for types whose int8 path goes that far:
/// `kernels::int8_max_rows`; `_8` is compiled only for those, Q4_K).
pub const STREAM_KERNEL_ROWS: [usize; 4] = [1, 2, 4, 8];
/// Most rows of x the stream kernel takes (what its scratch is sized for).
pub const STREAM_MAX_ROWS: usize = 8;

/// Dynamic shared memory of a stream kernel launch of `nt` rows of x: eight rows' staged x (two
/// int8 parts of STREAM_PHASE + 32 bytes a row, 66 KB) is past static shared memory's 48 KiB;
/// fewer rows keep theirs static.
pub fn stream_dynamic_shared_bytes(nt: usize) -> u32 {
    // The kernel's XSTRIDE_B: 32 bytes past a phase, so that rows fall 32 bytes apart in banks.
    if nt > 4 { (2 * nt * (STAGE_COLS + 32)) as u32 } else { 0 }
}

/// Rows of x up to which launches take the stream kernel where [`StreamMode`] says so:
/// `FERRITE_CUDA_MATVEC_STREAM_ROWS` (1, 2, 4 or 8; unset or anything else: 4). H100, 2026-12-05, two rounds: the
/// synthetic 7B's two-sequence step 3.662 -> 3.256 / 3.265 ms with two (`matvec_mma_stream_2` on
/// its gate/up launch and LM head), one sequence and the 0.5B shapes unchanged (docs/BENCHMARKS.md,
/// twenty-ninth session); with four (`matvec_mma_stream_4`) its three- and four-sequence steps
/// 4.051 -> 3.591 / 3.588 and 4.118 / 4.139 -> 3.636 / 3.647 ms, the 0.5B's within 0.4 %
/// (thirty-first session). Eight (`matvec_mma_stream_8`, five to eight rows of Q4_K: a 7B's gate/up
/// at eight sequences, whose planned launch runs 2.24 waves of blocks) was written in the
/// fifty-sixth session without a GPU and is off until measured. A setting made by
/// [`set_stream_rows`] comes first.
pub fn stream_rows() -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    if STREAM_ROWS.load(Relaxed) == 0 {
        let from_env = std::env::var("FERRITE_CUDA_MATVEC_STREAM_ROWS").ok().and_then(|v| v.trim().parse().ok()).filter(|r| STREAM_KERNEL_ROWS.contains(r)).unwrap_or(STREAM_DEFAULT_ROWS);
        // A hook's setting made meanwhile stays.
        let _ = STREAM_ROWS.compare_exchange(0, from_env, Relaxed, Relaxed);
    }
    STREAM_ROWS.load(Relaxed)
}

/// [`stream_rows`] when neither the environment nor a hook sets it.
const STREAM_DEFAULT_ROWS: usize = 4;

/// The rows (1, 2, 4 or 8), or 0 before the first read.
static STREAM_ROWS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sets [`stream_rows`] (1, 2, 4 or 8) for launches made after it (the per-op tests' hook).
pub fn set_stream_rows(rows: usize) {
    STREAM_ROWS.store(rows.clamp(1, STREAM_MAX_ROWS), std::sync::atomic::Ordering::Relaxed);
}

/// Floats of the stream kernel's row pieces over `all` (for its most rows of x): two slots a
/// warp, and with x of several phases one a slice (a tile row's tiles in one phase), each of a
/// tile row's 16 sums per row of x.
pub fn stream_partial_floats(sms: usize, all: &TileGrid) -> usize {
    let phases = stream_phases(all);
    let slices = if phases > 1 { phases * all.m_tiles } else { 0 };
    (2 * stream_blocks(sms) * MMA_MAX_WARPS as usize + slices) * STREAM_MAX_ROWS * TILE_ROWS
}

/// Whether a launch of up to [`STREAM_MAX_ROWS`] rows of x over `all` (the launch's tile rows as one grid, see
/// [`Plan::for_group`]) takes the stream kernel in `mode`. The kernel counts tiles (up to a whole
/// phase past the last: `m_tiles x max(k_tiles, phase tiles)` each time) and slots in 32 bits,
/// so larger launches keep the planned kernels.
pub fn takes_stream(mode: StreamMode, all: &TileGrid, sms: usize) -> bool {
    let tiles = all.m_tiles * all.k_tiles;
    let counted = all.m_tiles * (all.k_tiles.max(phase_tiles(&all.format, 1)) + phase_tiles(&all.format, 1));
    if tiles == 0 || counted >= 1 << 30 || stream_partial_floats(sms, all) >= 1 << 30 {
        return false;
    }
    let large = tiles >= STREAM_MIN_TILES_PER_WARP * stream_blocks(sms) * MMA_MAX_WARPS as usize;
    match mode {
        StreamMode::Off => false,
        StreamMode::Large => large,
        StreamMode::OnePhase => large && stream_phases(all) == 1,
        StreamMode::Always => true,
    }
}

/// Whether a launch over `all` (the launch's tile rows as one grid) on the kernel of `nt` rows takes
/// the stream kernel: [`stream_rows`] and the mode allow it, and `nt` rows of its type are on the
/// int8 path, the stream kernel's only one (from 3 rows, where the planned kernels take it too).
fn stream_launch(nt: usize, all: &TileGrid, sms: usize) -> bool {
    let int8_rows = kernels::int8_max_rows(all.format.ty).unwrap_or(0);
    nt <= stream_rows() && nt <= int8_rows.max(2) && takes_stream(stream_mode(), all, sms)
}

/// Most matrices one launch of the tiled kernels multiplies (q, k and v).
pub const MAX_SEGMENTS: usize = 3;

/// Partial sums and block-row counters of split-K launches, shared by all weights of a type
/// (launches on the one stream never overlap). Counters are zero between launches: the last
/// block of each block row resets its own.
#[derive(Default)]
pub struct SplitScratch {
    partials: Option<CudaSlice<f32>>,
    counters: Option<CudaSlice<u32>>,
}

impl SplitScratch {
    /// Grows the buffers to hold what the plans of all four kernels need for `grid`. Call at
    /// load only (see the module docs).
    pub fn reserve(&mut self, ctx: &CudaContext, sms: usize, grid: &TileGrid) -> Result<(), CudaError> {
        self.reserve_group(ctx, sms, std::slice::from_ref(grid))
    }

    /// As [`reserve`](Self::reserve), for launches that multiply `grids` together.
    pub fn reserve_group(&mut self, ctx: &CudaContext, sms: usize, grids: &[TileGrid]) -> Result<(), CudaError> {
        let plans = [1, 2, 4, 8].map(|nt| Plan::for_group(grids, sms, nt));
        let floats = plans.iter().map(|(p, all)| p.partial_floats(all)).max().unwrap_or(0);
        // The launch's tile rows as one grid (the same for every plan).
        let all = plans[0].1;
        let plans = plans.map(|(p, _)| p);
        let rows = plans.iter().filter(|p| p.splits > 1).map(|p| p.block_rows as usize).max().unwrap_or(0);
        // The stream kernel's row pieces and a counter a tile row, where it may run.
        let (floats, rows) = if stream_mode() != StreamMode::Off && takes_stream(StreamMode::Always, &all, sms) {
            (floats.max(stream_partial_floats(sms, &all)), rows.max(all.m_tiles))
        } else {
            (floats, rows)
        };
        self.grow(ctx, floats, rows)
    }

    /// As [`reserve`](Self::reserve), for the quantized GEMM's plans of `grid` (matmul_mma.rs).
    pub fn reserve_gemm(&mut self, ctx: &CudaContext, sms: usize, grid: &TileGrid) -> Result<(), CudaError> {
        let (floats, counters) = super::matmul_mma::MmqPlan::scratch_bound(grid, sms);
        self.grow(ctx, floats, counters)
    }

    /// Grows the buffers to at least `floats` partial sums and `counters` counters.
    fn grow(&mut self, ctx: &CudaContext, floats: usize, counters: usize) -> Result<(), CudaError> {
        if floats > 0 && self.partials.as_ref().is_none_or(|p| p.len() < floats) {
            self.partials = None;
            self.partials = Some(ctx.alloc::<f32>(floats, "split-K partial sums of the quantized kernels")?);
        }
        if counters > 0 && self.counters.as_ref().is_none_or(|c| c.len() < counters) {
            self.counters = None;
            self.counters = Some(ctx.alloc_zeros::<u32>(counters, "split-K counters of the quantized kernels")?);
        }
        Ok(())
    }

    /// Device addresses of (partials, counters) holding at least `floats` and `counters` of
    /// them: (0, 0) when both are 0; an error if the scratch was not reserved for them.
    pub fn pointers_for(&self, ctx: &CudaContext, floats: usize, counters: usize) -> Result<(u64, u64), CudaError> {
        if floats == 0 && counters == 0 {
            return Ok((0, 0));
        }
        match (&self.partials, &self.counters) {
            (Some(p), Some(c)) if p.len() >= floats && c.len() >= counters => Ok((super::backend::addr(p, ctx), super::backend::addr(c, ctx))),
            _ => Err(CudaError::Invalid(format!("split-K scratch of {floats} floats and {counters} counters was not reserved"))),
        }
    }

    /// Device addresses of (partials, counters) for a launch of `plan`: (0, 0) without a split;
    /// an error if `reserve` was not called for it.
    fn pointers(&self, ctx: &CudaContext, plan: &Plan, grid: &TileGrid) -> Result<(u64, u64), CudaError> {
        if plan.splits <= 1 {
            return Ok((0, 0));
        }
        self.pointers_for(ctx, plan.partial_floats(grid), plan.block_rows as usize)
            .map_err(|e| CudaError::Invalid(format!("a {}x{} matrix: {e}", grid.n_rows, grid.n_cols)))
    }
}

/// Kernels of a type on the tiled path beyond the matvec variants.
pub struct TiledKernels {
    /// `dequant_rows` of repacked_rows.cu (the cuBLAS path of prefill).
    pub dequant_rows: CudaFunction,
    /// `matmul_mma` of matmul_mma.cu (many rows of x: `matmul_mma.rs`).
    pub matmul: CudaFunction,
    /// `(rows of x, matvec_mma_stream_<rows>)` for one, two and four rows (see [`StreamMode`]),
    /// compiled when the mode was on; empty otherwise.
    pub stream: Vec<(usize, CudaFunction)>,
    pub scratch: Mutex<SplitScratch>,
    pub sms: usize,
}

/// The kernels of one weight type: `(rows of x it holds, kernel)` for 1, 2, 4 and 8 rows, the
/// embedding gather, and for tiled types the row reader and split-K scratch.
pub struct MatvecKernels {
    pub matvec: Vec<(usize, CudaFunction)>,
    pub embed: CudaFunction,
    pub tiled: Option<TiledKernels>,
}

impl MatvecKernels {
    /// Compiles (or loads from the disk cache) the kernels of `ty` for `path`.
    pub fn compile(ctx: &CudaContext, ty: GgmlType, path: MatvecPath) -> Result<MatvecKernels, CudaError> {
        let variants = |src: &super::nvrtc::KernelSource, defines: &[String], prefix: &str| -> Result<Vec<(usize, CudaFunction)>, CudaError> {
            [1usize, 2, 4, 8].iter().map(|&cap| Ok((cap, ctx.function_with(src, defines, &format!("{prefix}{cap}"))?))).collect()
        };
        match path {
            MatvecPath::Tiled => {
                let defines = kernels::tile_type_defines(ty).ok_or(QuantError::Unsupported(ty))?;
                // On a new machine the three modules compile at once (the GEMM's beside the
                // longer matvec's: no wait of its own).
                let mut modules = vec![(&kernels::MATVEC_MMA, defines.clone()), (&kernels::REPACKED_ROWS, defines.clone()), (&kernels::MATMUL_MMA, defines.clone())];
                let stream_defines = (stream_mode() != StreamMode::Off).then(|| kernels::stream_defines(ty)).flatten();
                if let Some(d) = &stream_defines {
                    modules.push((&kernels::MATVEC_MMA, d.clone()));
                }
                ctx.precompile(&modules)?;
                Ok(MatvecKernels {
                    matvec: variants(&kernels::MATVEC_MMA, &defines, "matvec_mma_")?,
                    embed: ctx.function_with(&kernels::REPACKED_ROWS, &defines, "embed_rows")?,
                    tiled: Some(TiledKernels {
                        dequant_rows: ctx.function_with(&kernels::REPACKED_ROWS, &defines, "dequant_rows")?,
                        matmul: ctx.function_with(&kernels::MATMUL_MMA, &defines, "matmul_mma")?,
                        stream: match &stream_defines {
                            Some(d) => stream_kernels(ctx, ty, d)?,
                            None => Vec::new(),
                        },
                        scratch: Mutex::new(SplitScratch::default()),
                        sms: ctx.sms(),
                    }),
                })
            }
            MatvecPath::Generic => {
                let defines = kernels::type_defines(ty).ok_or(QuantError::Unsupported(ty))?;
                Ok(MatvecKernels {
                    matvec: variants(&kernels::MATVEC, &defines, "matvec_")?,
                    embed: ctx.function_with(&kernels::EMBED, &defines, "embed_rows")?,
                    tiled: None,
                })
            }
        }
    }

    /// The variant for `n_x` rows of x (the smallest that holds them), with the rows it holds.
    pub fn matvec_for(&self, n_x: usize) -> Option<(usize, &CudaFunction)> {
        self.matvec.iter().find(|(cap, _)| n_x <= *cap).map(|(cap, f)| (*cap, f))
    }
}

/// The stream kernels of `ty` from its stream module (compiled with `defines`): every row count of
/// [`STREAM_KERNEL_ROWS`] its module holds (eight only where the type's int8 path reaches eight
/// rows), each allowed the dynamic shared memory its launches ask for.
fn stream_kernels(ctx: &CudaContext, ty: GgmlType, defines: &[String]) -> Result<Vec<(usize, CudaFunction)>, CudaError> {
    let int8_rows = kernels::int8_max_rows(ty).unwrap_or(0);
    STREAM_KERNEL_ROWS
        .iter()
        .filter(|&&nt| nt <= 4 || nt <= int8_rows)
        .map(|&nt| {
            let name = format!("matvec_mma_stream_{nt}");
            let f = ctx.function_with(&kernels::MATVEC_MMA, defines, &name)?;
            let bytes = stream_dynamic_shared_bytes(nt);
            if bytes > 0 {
                // Two blocks an SM (stream_blocks) take about 150 KB of shared memory.
                super::launch::allow_dynamic_shared(&f, &name, bytes)?;
                super::launch::prefer_shared_carveout(&f, &name)?;
            }
            Ok((nt, f))
        })
        .collect()
}

/// Rows of x the pair kernels take (`matvec_mma_pair_1`, `_2`, `_4`; 3 rows run the 4-row one):
/// the decode steps whose q/k/v run on the matrix-vector kernels (from 5 rows the f16 GEMMs).
pub const PAIR_KERNEL_ROWS: [usize; 3] = [1, 2, 4];

/// Launches of the pair kernels by this process (directly, not counting graph replays), for tests
/// to see that they ran (`_cuda_counters`).
pub static PAIR_MATVECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Rows of x up to which a group of two tiled types takes the pair kernels (above it, a launch a
/// type): FERRITE_CUDA_MATVEC_PAIRS (0: never, to compare on one build), by default all of
/// [`PAIR_KERNEL_ROWS`]. Read when a backend is made.
pub fn pair_max_rows() -> usize {
    std::env::var("FERRITE_CUDA_MATVEC_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(PAIR_KERNEL_ROWS[2])
}

/// matvec_mma.cu's pair kernels for the two tiled types of `kernels::launch_pair`: one launch over
/// matrices of both (a 7B's Q4_K q and k with its Q6_K v), each block running its matrix's type.
pub struct PairKernels {
    pub types: (GgmlType, GgmlType),
    pub matvec: Vec<(usize, CudaFunction)>,
    /// Split-K scratch of the pair launches (their plans are the group's, not either type's).
    pub scratch: Mutex<SplitScratch>,
    pub sms: usize,
}

impl PairKernels {
    /// Compiles (or loads from the disk cache, or the prebuilt set) the pair kernels of `pair`.
    pub fn compile(ctx: &CudaContext, pair: (GgmlType, GgmlType)) -> Result<PairKernels, CudaError> {
        let defines = kernels::launch_pair(pair.0, pair.1)
            .filter(|p| *p == pair)
            .and_then(kernels::pair_defines)
            .ok_or_else(|| CudaError::Invalid(format!("{} and {} have no pair kernels", pair.0, pair.1)))?;
        let matvec = PAIR_KERNEL_ROWS
            .iter()
            .map(|&nt| Ok((nt, ctx.function_with(&kernels::MATVEC_MMA, &defines, &format!("matvec_mma_pair_{nt}"))?)))
            .collect::<Result<_, CudaError>>()?;
        Ok(PairKernels { types: pair, matvec, scratch: Mutex::new(SplitScratch::default()), sms: ctx.sms() })
    }

    /// The kernel for `n_x` rows of x (the smallest that holds them), with the rows it holds.
    pub fn matvec_for(&self, n_x: usize) -> Option<(usize, &CudaFunction)> {
        self.matvec.iter().find(|(cap, _)| n_x <= *cap).map(|(cap, f)| (*cap, f))
    }

    /// Grows the split-K scratch to hold a launch of `parts` (types and grids, in any order), with
    /// the first type's matrices first as [`launch_matvec_pair`] orders them. Call at load only (see
    /// the module docs).
    pub fn reserve(&self, ctx: &CudaContext, parts: &[(GgmlType, TileGrid)]) -> Result<(), CudaError> {
        let (a, b) = self.types;
        let ordered: Vec<TileGrid> = [a, b].iter().flat_map(|t| parts.iter().filter(move |p| p.0 == *t).map(|p| p.1)).collect();
        if ordered.len() != parts.len() {
            return Err(CudaError::Invalid(format!("a launch of the {a}/{b} pair kernels with matrices of another type")));
        }
        self.scratch.lock().map_err(|_| CudaError::Invalid("split-K scratch lock poisoned".into()))?.reserve_group(ctx, self.sms, &ordered)
    }

    /// Whether one launch of these kernels takes `parts` (types and grids) at `n_x` rows: both
    /// types present and no other, tiles of one width, at most [`MAX_SEGMENTS`] matrices, at most
    /// `max_rows` rows ([`pair_max_rows`]) and a kernel for them, and their tile rows together not
    /// a launch for the stream kernel (which has no pair variant: such a group keeps a launch a type).
    pub fn takes(&self, parts: &[(GgmlType, TileGrid)], n_x: usize, max_rows: usize) -> bool {
        let (a, b) = self.types;
        let both = parts.iter().any(|p| p.0 == a) && parts.iter().any(|p| p.0 == b);
        let only = parts.iter().all(|p| p.0 == a || p.0 == b);
        let width = parts.windows(2).all(|w| w[0].1.k_tiles == w[1].1.k_tiles);
        let Some((nt, _)) = self.matvec_for(n_x) else { return false };
        if !(both && only && width && parts.len() <= MAX_SEGMENTS && n_x <= max_rows) {
            return false;
        }
        let grids: Vec<TileGrid> = parts.iter().map(|p| p.1).collect();
        !stream_launch(nt, &combined(&grids), self.sms)
    }
}

/// One matrix as a device holds it: the file's blocks, or repacked tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Blocks,
    Tiles(TileGrid),
}

/// The bytes to upload for a matrix on `path`: the file's blocks unchanged, or repacked tiles.
pub fn device_bytes(ty: GgmlType, bytes: &[u8], n_rows: usize, n_cols: usize, path: MatvecPath) -> Result<(Layout, Option<Vec<u8>>), QuantError> {
    match (path, repack::tile_format(ty)) {
        (MatvecPath::Tiled, Some(f)) => Ok((Layout::Tiles(TileGrid::new(f, n_rows, n_cols)), Some(repack::repack(f, bytes, n_rows, n_cols)?))),
        _ => Ok((Layout::Blocks, None)),
    }
}

/// What one projection launch reads and writes. Sizes are checked by [`check`](Self::check)
/// before any launch.
pub struct MatvecArgs<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    pub n_rows: usize,
    pub n_cols: usize,
    pub layout: Layout,
    pub weights: CudaView<'a, u8>,
    pub x: &'a CudaSlice<f32>,
    pub n_x: usize,
    /// Device address of `n_rows` floats, or 0.
    pub bias: u64,
    pub out: &'a mut CudaSlice<f32>,
    /// Add the products to what `out` holds (the residual connection) instead of overwriting.
    pub accumulate: bool,
}

/// What the kernel multiplies: `x` itself, or a function of it computed while staging it (tiled
/// kernels only; see matvec_mma.cu's "What x is").
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input {
    X,
    /// `rms_norm(x) * weight`: the device address of `n_cols` floats of norm weight, and eps.
    Normed { weight: u64, eps: f32 },
    /// `silu(x) * up`: the device address of `up`, shaped as x.
    Swiglu { up: u64 },
}

impl MatvecArgs<'_> {
    fn check(&self) -> Result<(), CudaError> {
        let bad = |what: String| Err(CudaError::Invalid(format!("{}: {what}", self.name)));
        if self.n_x == 0 || self.n_x > MATVEC_MAX_ROWS {
            return bad(format!("{} rows of x (the matrix-vector kernels take 1..={MATVEC_MAX_ROWS})", self.n_x));
        }
        if !self.n_cols.is_multiple_of(32) || self.n_cols == 0 {
            return bad(format!("{} columns: the matrix-vector kernels need a multiple of 32", self.n_cols));
        }
        if u32::try_from(self.n_rows).is_err() || u32::try_from(self.n_cols).is_err() {
            return bad(format!("{} x {} exceeds the kernels' 32-bit sizes", self.n_rows, self.n_cols));
        }
        let want_bytes = match self.layout {
            Layout::Blocks => quant::row_bytes(self.ty, self.n_cols)?.checked_mul(self.n_rows),
            Layout::Tiles(g) => {
                if (g.n_rows, g.n_cols, g.format.ty) != (self.n_rows, self.n_cols, self.ty) {
                    return bad(format!("tile grid {g:?} is not of this {} x {} {}", self.n_rows, self.n_cols, self.ty));
                }
                Some(g.bytes())
            }
        };
        if want_bytes != Some(self.weights.len()) {
            return bad(format!("weight buffer of {} bytes, expected {want_bytes:?}", self.weights.len()));
        }
        if self.x.len() < self.n_x * self.n_cols {
            return bad(format!("x holds {} floats, {} rows of {} need {}", self.x.len(), self.n_x, self.n_cols, self.n_x * self.n_cols));
        }
        if self.out.len() < self.n_x * self.n_rows {
            return bad(format!("out holds {} floats, {} rows of {} need {}", self.out.len(), self.n_x, self.n_rows, self.n_x * self.n_rows));
        }
        Ok(())
    }
}

/// Queues `out[t][r] = Σ_c W[r][c] x[t][c] (+ bias[r])` (or `+=` with `args.accumulate`) for
/// `t < n_x` with `kernels` (which must be of `args.layout`'s path).
/// `ahead`: the window of the step's weights the tiled kernel asks L2 for before it waits
/// (`prefetch::PrefetchPlan::ahead_of`; the default: none).
pub fn launch_matvec(ctx: &CudaContext, kernels: &MatvecKernels, args: MatvecArgs<'_>, ahead: WindowArgs) -> Result<(), CudaError> {
    launch_matvecs(ctx, kernels, vec![args], Input::X, ahead)
}

/// [`launch_matvec`] for up to [`MAX_SEGMENTS`] matrices of one type and width multiplying the
/// same `x` (same `n_x`, same `accumulate`), in one launch on the tiled path, and `x` taken as
/// `input` says. The generic kernels take one matrix of plain `x`.
pub fn launch_matvecs(ctx: &CudaContext, kernels: &MatvecKernels, parts: Vec<MatvecArgs<'_>>, input: Input, ahead: WindowArgs) -> Result<(), CudaError> {
    let Some(first) = shared_of(&parts, |a, first| a.ty == first.ty)? else { return Ok(()) };
    let (nt, f) = kernels.matvec_for(first.n_x).ok_or_else(|| CudaError::Invalid(format!("{}: no kernel for {} rows", first.name, first.n_x)))?;
    match (first.layout, &kernels.tiled) {
        (Layout::Tiles(_), Some(tiled)) => {
            let stream = tiled.stream.iter().find(|(rows, _)| *rows == nt).map(|(_, f)| f);
            let scratch = tiled.scratch.lock().map_err(|_| CudaError::Invalid("split-K scratch lock poisoned".into()))?;
            launch_tiled(ctx, Tiled { planned: f, nt, stream, scratch: &scratch, sms: tiled.sms, first_b: None }, &first, parts, input, ahead)
        }
        (Layout::Blocks, None) => {
            if parts.len() != 1 {
                return Err(CudaError::Invalid(format!("{}: the generic kernels take one matrix a launch", first.name)));
            }
            let Some(args) = parts.into_iter().next() else { return Ok(()) };
            if input != Input::X {
                return Err(CudaError::Invalid(format!("{}: the generic kernels take x as it is", args.name)));
            }
            let n_rows = args.n_rows as u32;
            let row_bytes = quant::row_bytes(args.ty, args.n_cols)? as u64;
            let cfg = LaunchConfig {
                grid_dim: (n_rows.div_ceil(MATVEC_ROWS_PER_BLOCK), 1, 1),
                block_dim: (32, MATVEC_ROWS_PER_BLOCK, 1),
                shared_mem_bytes: 0,
            };
            let (n_cols, n_x, accumulate) = (first.n_cols as u32, first.n_x as u32, first.accumulate as u32);
            launch!(ctx, f, "matvec", cfg, &args.weights, &row_bytes, &n_cols, &n_rows, args.x, &n_x, &args.bias, args.out, &accumulate)
        }
        _ => Err(CudaError::Invalid(format!("{}: kernels of the other layout", first.name))),
    }
}

/// [`launch_matvecs`] for matrices of the two types of `pair` (its [`PairKernels::takes`] holds):
/// one launch of the pair kernels, the first type's matrices first.
pub fn launch_matvec_pair(ctx: &CudaContext, pair: &PairKernels, parts: Vec<MatvecArgs<'_>>, input: Input, ahead: WindowArgs) -> Result<(), CudaError> {
    let (a, b) = pair.types;
    let Some(first) = shared_of(&parts, |x, _| x.ty == a || x.ty == b)? else { return Ok(()) };
    let (nt, f) = pair.matvec_for(first.n_x).ok_or_else(|| CudaError::Invalid(format!("{}: no pair kernel for {} rows", first.name, first.n_x)))?;
    let (mut ordered, rest): (Vec<_>, Vec<_>) = parts.into_iter().partition(|p| p.ty == a);
    let first_b = ordered.len() as u32;
    ordered.extend(rest);
    let scratch = pair.scratch.lock().map_err(|_| CudaError::Invalid("split-K scratch lock poisoned".into()))?;
    launch_tiled(ctx, Tiled { planned: f, nt, stream: None, scratch: &scratch, sms: pair.sms, first_b: Some(first_b) }, &first, ordered, input, ahead)?;
    PAIR_MATVECS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// What the parts of one launch share, after checking each (`same_type(part, first)`: whether a
/// part's type may join the first's launch), or `None` for no parts.
fn shared_of<'a>(parts: &[MatvecArgs<'a>], same_type: impl Fn(&MatvecArgs<'a>, &MatvecArgs<'a>) -> bool) -> Result<Option<Shared<'a>>, CudaError> {
    let Some(head) = parts.first() else { return Ok(None) };
    for a in parts {
        a.check()?;
        if !same_type(a, head) || (a.n_cols, a.n_x, a.accumulate) != (head.n_cols, head.n_x, head.accumulate) || !std::ptr::eq(a.x, head.x) {
            return Err(CudaError::Invalid(format!("{} and {}: one launch needs one type, width, input and write mode", head.name, a.name)));
        }
    }
    Ok(Some(Shared { name: head.name, n_cols: head.n_cols, n_x: head.n_x, accumulate: head.accumulate, layout: head.layout, x: head.x }))
}

/// The kernels and scratch of one tiled launch: the planned kernel for `nt` rows, the stream kernel
/// if the launch may take it, and for a pair launch the first segment of the second type.
struct Tiled<'k> {
    planned: &'k CudaFunction,
    nt: usize,
    stream: Option<&'k CudaFunction>,
    scratch: &'k SplitScratch,
    sms: usize,
    first_b: Option<u32>,
}

/// Queues one launch of matvec_mma.cu's tiled kernels over `parts` (checked by [`shared_of`]).
fn launch_tiled(ctx: &CudaContext, k: Tiled<'_>, first: &Shared<'_>, parts: Vec<MatvecArgs<'_>>, input: Input, ahead: WindowArgs) -> Result<(), CudaError> {
    let n = parts.len();
    if n > MAX_SEGMENTS {
        return Err(CudaError::Invalid(format!("{n} matrices in one launch (at most {MAX_SEGMENTS})")));
    }
    let (n_cols, n_x, accumulate) = (first.n_cols as u32, first.n_x as u32, first.accumulate as u32);
    let mut grids = Vec::with_capacity(n);
    let (mut tiles, mut bias, mut y, mut m_tiles, mut n_rows) = ([0u64; MAX_SEGMENTS], [0u64; MAX_SEGMENTS], [0u64; MAX_SEGMENTS], [0u32; MAX_SEGMENTS], [0u32; MAX_SEGMENTS]);
    for (s, a) in parts.into_iter().enumerate() {
        let Layout::Tiles(grid) = a.layout else {
            return Err(CudaError::Invalid(format!("{}: tiles and blocks in one launch", a.name)));
        };
        if grids.first().is_some_and(|g: &TileGrid| g.k_tiles != grid.k_tiles) {
            return Err(CudaError::Invalid(format!("{}: tile grids of different widths in one launch", a.name)));
        }
        grids.push(grid);
        tiles[s] = super::backend::addr(&a.weights, ctx);
        bias[s] = a.bias;
        y[s] = super::backend::addr(&*a.out, ctx);
        (m_tiles[s], n_rows[s]) = (grid.m_tiles as u32, a.n_rows as u32);
    }
    let (plan, all) = Plan::for_group(&grids, k.sms, k.nt);
    let stream = k.stream.filter(|_| stream_launch(k.nt, &all, k.sms));
    if stream.is_some() {
        STREAM_MATVECS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let (f, cfg, (partials, counters)) = match stream {
        // The stream kernel takes the same arguments; its grid is its plan.
        Some(sf) => (
            sf,
            LaunchConfig { grid_dim: (stream_blocks(k.sms) as u32, 1, 1), block_dim: (32 * MMA_MAX_WARPS, 1, 1), shared_mem_bytes: stream_dynamic_shared_bytes(k.nt) },
            k.scratch.pointers_for(ctx, stream_partial_floats(k.sms, &all), all.m_tiles).map_err(|e| CudaError::Invalid(format!("{}: {e}", first.name)))?,
        ),
        None => {
            let block = 32 * plan.warps_m * plan.warps_k;
            (k.planned, LaunchConfig { grid_dim: (plan.block_rows, plan.splits, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }, k.scratch.pointers(ctx, &plan, &all)?)
        }
    };
    let (k_tiles, per, wm) = (all.k_tiles as u32, plan.k_tiles_per_split, plan.warps_m);
    let (x2, norm_w, eps) = match input {
        Input::X => (0u64, 0u64, 0f32),
        Input::Normed { weight, eps } => (0, weight, eps),
        Input::Swiglu { up } => (up, 0, 0.0),
    };
    // Every kernel of matvec_mma.cu takes this list (MATVEC_MMA_PARAMS); only the pair kernels read first_b.
    let (name, first_b) = match k.first_b {
        Some(b) => ("matvec_mma_pair", b),
        None => ("matvec_mma", 0),
    };
    launch!(
        ctx, f, name, cfg,
        &tiles[0], &tiles[1], &tiles[2], &bias[0], &bias[1], &bias[2], &y[0], &y[1], &y[2],
        &m_tiles[0], &m_tiles[1], &m_tiles[2], &n_rows[0], &n_rows[1], &n_rows[2],
        &k_tiles, &n_cols, first.x, &x2, &norm_w, &eps, &n_x, &partials, &counters, &per, &wm, &accumulate,
        &ahead.ranges, &ahead.n_ranges, &ahead.first, &ahead.offset_bytes, &ahead.len_bytes, &first_b
    )
}

/// What the matrices of one launch have in common.
struct Shared<'a> {
    name: &'a str,
    n_cols: usize,
    n_x: usize,
    accumulate: bool,
    layout: Layout,
    x: &'a CudaSlice<f32>,
}

/// Queues the float32 values of rows `row0 .. row0 + n_rows_out` of a repacked matrix into `out`
/// (bit-identical to the CPU decoders).
pub fn dequant_tile_rows(
    ctx: &CudaContext,
    kernels: &MatvecKernels,
    grid: &TileGrid,
    tiles: &CudaView<'_, u8>,
    row0: usize,
    n_rows_out: usize,
    out: &mut cudarc::driver::CudaViewMut<'_, f32>,
) -> Result<(), CudaError> {
    let tiled = kernels.tiled.as_ref().ok_or_else(|| CudaError::Invalid("dequant_tile_rows: kernels of the block layout".into()))?;
    if tiles.len() != grid.bytes() || row0 + n_rows_out > grid.n_rows || out.len() < n_rows_out * grid.n_cols {
        return Err(CudaError::Invalid(format!(
            "dequant_tile_rows: rows {row0}..{} of {:?} into {} floats from {} bytes",
            row0 + n_rows_out,
            grid,
            out.len(),
            tiles.len()
        )));
    }
    let n = (n_rows_out * grid.n_cols) as u64;
    if n == 0 {
        return Ok(());
    }
    let (k_tiles, row0, rows, cols) = (grid.k_tiles as u32, row0 as u32, n_rows_out as u32, grid.n_cols as u32);
    launch!(ctx, &tiled.dequant_rows, "dequant_rows", super::backend::grid_stride(n), tiles, &k_tiles, &row0, &rows, &cols, out)
}

/// What [`MatvecOp::run_group`] multiplies, as host values (see [`Input`]).
#[derive(Debug, Clone, Copy)]
pub enum TestInput<'a> {
    X,
    Normed { weight: &'a [f32], eps: f32 },
    Swiglu { up: &'a [f32] },
}

/// One matrix on a device outside any model, run with exactly the backend's launch code: for
/// the per-op tests (through `ferrite._ferrite._cuda_matvec*`) and the microbenchmark.
pub struct MatvecOp {
    ctx: Arc<CudaContext>,
    ty: GgmlType,
    n_rows: usize,
    n_cols: usize,
    layout: Layout,
    kernels: MatvecKernels,
    /// `copies` copies of the weights, back to back (the benchmark rotates over them so that
    /// each launch reads from DRAM, not L2).
    weights: CudaSlice<u8>,
    bytes_per_copy: usize,
}

impl MatvecOp {
    /// Uploads `bytes` (`n_rows` rows of `n_cols` elements of `ty`) for `path`, `copies` times.
    pub fn new(device: &str, ty: GgmlType, bytes: &[u8], n_rows: usize, n_cols: usize, path: MatvecPath, copies: usize) -> Result<MatvecOp, CudaError> {
        quant::check_len(ty, bytes.len(), n_rows.saturating_mul(n_cols))?;
        if n_rows == 0 || copies == 0 {
            return Err(CudaError::Invalid(format!("a matrix of {n_rows} rows in {copies} copies")));
        }
        let ctx = CudaContext::get(device)?;
        if path == MatvecPath::Tiled && (repack::tile_format(ty).is_none() || ctx.compute_capability().0 < 8) {
            return Err(CudaError::Invalid(format!("{ty} has no tiled kernels on {}", ctx.arch())));
        }
        let kernels = MatvecKernels::compile(&ctx, ty, path)?;
        let (layout, repacked) = device_bytes(ty, bytes, n_rows, n_cols, path)?;
        let host = repacked.as_deref().unwrap_or(bytes);
        let total = host.len().checked_mul(copies).ok_or_else(|| CudaError::Invalid("weight copies overflow".into()))?;
        let mut weights = ctx.alloc::<u8>(total, &format!("{copies} copies of a {n_rows} x {n_cols} {ty} matrix"))?;
        ctx.upload_weights_into(host, &mut weights.slice_mut(..host.len()), "a test matrix")?;
        for c in 1..copies {
            let (first, mut rest) = weights.split_at_mut(host.len());
            ctx.stream()
                .memcpy_dtod(&first, &mut rest.slice_mut((c - 1) * host.len()..c * host.len()))
                .map_err(|e| CudaError::Driver { op: "copying test weights".into(), msg: super::error::describe(&e) })?;
        }
        if let (Layout::Tiles(grid), Some(tiled)) = (layout, &kernels.tiled) {
            let mut scratch = tiled.scratch.lock().map_err(|_| CudaError::Invalid("lock poisoned".into()))?;
            scratch.reserve(&ctx, tiled.sms, &grid)?;
            scratch.reserve_gemm(&ctx, tiled.sms, &grid)?;
        }
        Ok(MatvecOp { ctx, ty, n_rows, n_cols, layout, kernels, weights, bytes_per_copy: host.len() })
    }

    pub fn bytes_per_copy(&self) -> usize {
        self.bytes_per_copy
    }

    /// The launch plan of the tiled path for `n_x` rows (`None` on the generic path).
    pub fn plan(&self, n_x: usize) -> Option<Plan> {
        let (nt, _) = self.kernels.matvec_for(n_x)?;
        match (self.layout, &self.kernels.tiled) {
            (Layout::Tiles(g), Some(t)) => Some(Plan::new(&g, t.sms, nt)),
            _ => None,
        }
    }

    fn launch_on(&self, copy: usize, x: &CudaSlice<f32>, n_x: usize, bias: u64, out: &mut CudaSlice<f32>, accumulate: bool) -> Result<(), CudaError> {
        let weights = self.weights.slice(copy * self.bytes_per_copy..(copy + 1) * self.bytes_per_copy);
        let (ty, n_rows, n_cols, layout) = (self.ty, self.n_rows, self.n_cols, self.layout);
        let args = MatvecArgs { name: "test matrix", ty, n_rows, n_cols, layout, weights, x, n_x, bias, out, accumulate };
        launch_matvec(&self.ctx, &self.kernels, args, WindowArgs::default())
    }

    /// `y = W x (+ bias)` for the `n_x` rows of `x` (row-major, `n_x * n_cols`). The output
    /// buffer holds `n_x + 1` rows, all first filled with the bit pattern `poison_bits`; all of
    /// it is returned, so a test sees both unwritten outputs and writes past the `n_x` rows.
    /// With `accumulate_onto` (`n_x * n_rows` floats) the first `n_x` rows start as those values
    /// and the kernel adds to them, as the residual connection does.
    pub fn run(&self, x: &[f32], n_x: usize, bias: Option<&[f32]>, poison_bits: u32, accumulate_onto: Option<&[f32]>) -> Result<Vec<f32>, CudaError> {
        if x.len() != n_x * self.n_cols {
            return Err(CudaError::Invalid(format!("x has {} floats, {n_x} rows of {} need {}", x.len(), self.n_cols, n_x * self.n_cols)));
        }
        if bias.is_some_and(|b| b.len() != self.n_rows) {
            return Err(CudaError::Invalid(format!("bias must have {} floats", self.n_rows)));
        }
        let bd = bias.map(|b| self.ctx.upload(b, "test bias")).transpose()?;
        let bias_ptr = bd.as_ref().map_or(0, |b| super::backend::addr(b, &self.ctx));
        let mut out = self.ctx.alloc::<f32>((n_x + 1) * self.n_rows, "test output")?;
        self.ctx.fill_u32_bits(&mut out, poison_bits)?;
        if let Some(start) = accumulate_onto {
            if start.len() != n_x * self.n_rows {
                return Err(CudaError::Invalid(format!("accumulate_onto has {} floats, {n_x} rows of {} need {}", start.len(), self.n_rows, n_x * self.n_rows)));
            }
            self.ctx.copy_to_device(start, &mut out, "the values to accumulate onto")?;
        }
        if n_x > MATVEC_MAX_ROWS {
            let xh = self.upload_f16(x)?;
            self.launch_gemm(0, &xh, n_x, bias_ptr, &mut out, accumulate_onto.is_some())?;
        } else {
            let xd = self.ctx.upload(x, "test activations")?;
            self.launch_on(0, &xd, n_x, bias_ptr, &mut out, accumulate_onto.is_some())?;
        }
        self.ctx.download(&out, "the test matrix-vector product")
    }

    /// x as the quantized GEMM reads it: f16 bits of x times the backend's `X_F16_SCALE`, as the
    /// f16 producers write them.
    fn upload_f16(&self, x: &[f32]) -> Result<CudaSlice<u16>, CudaError> {
        let bits: Vec<u16> = x.iter().map(|&v| f16_scaled_bits(v, super::matmul::X_F16_SCALE)).collect();
        self.ctx.upload(&bits, "test activations as f16")
    }

    /// More than `MATVEC_MAX_ROWS` rows on the tiled path: the quantized GEMM (matmul_mma.rs) of
    /// weight copy `copy` with `x_f16` from [`upload_f16`](Self::upload_f16).
    fn launch_gemm(&self, copy: usize, x_f16: &CudaSlice<u16>, n_x: usize, bias: u64, out: &mut CudaSlice<f32>, accumulate: bool) -> Result<(), CudaError> {
        let (Layout::Tiles(grid), Some(tiled)) = (self.layout, &self.kernels.tiled) else {
            return Err(CudaError::Invalid(format!("{n_x} rows of x: more than {MATVEC_MAX_ROWS} need the tiled path")));
        };
        let weights = self.weights.slice(copy * self.bytes_per_copy..(copy + 1) * self.bytes_per_copy);
        let args = super::matmul_mma::MmqArgs {
            name: "test matrix",
            grid,
            tiles: super::backend::addr(&weights, &self.ctx),
            x_f16: super::backend::addr(x_f16, &self.ctx),
            n_x,
            bias,
            out: super::backend::addr(&*out, &self.ctx),
            out_scale: 1.0 / super::matmul::X_F16_SCALE,
            accumulate,
        };
        super::matmul_mma::launch_matmul_mma(&self.ctx, tiled, &args)
    }

    /// Several matrices of one type and width (`ops`, all on the tiled path), or of the two types of
    /// a `kernels::launch_pair` (the pair kernels), multiplying the same `x` in one launch, as the
    /// backend runs q/k/v and gate/up, with `x` taken as `input` says. Each output as
    /// [`run`](Self::run) returns it: `n_x + 1` rows, poisoned first.
    pub fn run_group(ops: &[&MatvecOp], x: &[f32], n_x: usize, biases: &[Option<&[f32]>], poison_bits: u32, input: TestInput<'_>) -> Result<Vec<Vec<f32>>, CudaError> {
        let Some(first) = ops.first() else { return Ok(Vec::new()) };
        let ctx = &first.ctx;
        if biases.len() != ops.len() || x.len() != n_x * first.n_cols {
            return Err(CudaError::Invalid(format!("{} matrices, {} biases, x of {} floats for {n_x} rows of {}", ops.len(), biases.len(), x.len(), first.n_cols)));
        }
        let grids: Vec<TileGrid> = ops.iter().filter_map(|op| if let Layout::Tiles(g) = op.layout { Some(g) } else { None }).collect();
        let tiled = first.kernels.tiled.as_ref().filter(|_| grids.len() == ops.len()).ok_or_else(|| CudaError::Invalid("run_group: every matrix must be on the tiled path".into()))?;
        // Matrices of two types: the pair kernels, as the backend's prepare_group makes them.
        let pair = if ops.iter().all(|op| op.ty == first.ty) {
            tiled.scratch.lock().map_err(|_| CudaError::Invalid("lock poisoned".into()))?.reserve_group(ctx, tiled.sms, &grids)?;
            None
        } else {
            let types: Vec<GgmlType> = ops.iter().map(|op| op.ty).collect();
            let pair = kernels::group_pair(types.iter().copied()).ok_or_else(|| CudaError::Invalid(format!("run_group: {types:?} cannot share a launch")))?;
            let pair = PairKernels::compile(ctx, pair)?;
            pair.reserve(ctx, &types.into_iter().zip(grids.iter().copied()).collect::<Vec<_>>())?;
            Some(pair)
        };
        let xd = ctx.upload(x, "test activations")?;
        let extra = match input {
            TestInput::X => None,
            TestInput::Normed { weight, .. } if weight.len() == first.n_cols => Some(ctx.upload(weight, "test norm weight")?),
            TestInput::Swiglu { up } if up.len() == x.len() => Some(ctx.upload(up, "test up rows")?),
            _ => return Err(CudaError::Invalid("run_group: the norm weight must have n_cols floats, up as many as x".into())),
        };
        let extra_ptr = extra.as_ref().map_or(0, |e| super::backend::addr(e, ctx));
        let input = match input {
            TestInput::X => Input::X,
            TestInput::Normed { eps, .. } => Input::Normed { weight: extra_ptr, eps },
            TestInput::Swiglu { .. } => Input::Swiglu { up: extra_ptr },
        };
        let mut bias_bufs = Vec::with_capacity(ops.len());
        for (op, b) in ops.iter().zip(biases) {
            match b {
                Some(b) if b.len() != op.n_rows => return Err(CudaError::Invalid(format!("bias of {} floats for {} rows", b.len(), op.n_rows))),
                Some(b) => bias_bufs.push(Some(ctx.upload(b, "test bias")?)),
                None => bias_bufs.push(None),
            }
        }
        let mut outs = Vec::with_capacity(ops.len());
        for op in ops {
            let mut out = ctx.alloc::<f32>((n_x + 1) * op.n_rows, "test output")?;
            ctx.fill_u32_bits(&mut out, poison_bits)?;
            outs.push(out);
        }
        let parts = ops
            .iter()
            .zip(&bias_bufs)
            .zip(outs.iter_mut())
            .map(|((op, b), out)| MatvecArgs {
                name: "test matrix",
                ty: op.ty,
                n_rows: op.n_rows,
                n_cols: op.n_cols,
                layout: op.layout,
                weights: op.weights.slice(..op.bytes_per_copy),
                x: &xd,
                n_x,
                bias: b.as_ref().map_or(0, |b| super::backend::addr(b, ctx)),
                out,
                accumulate: false,
            })
            .collect();
        match &pair {
            None => launch_matvecs(ctx, &first.kernels, parts, input, WindowArgs::default())?,
            Some(pair) => launch_matvec_pair(ctx, pair, parts, input, WindowArgs::default())?,
        }
        outs.iter().map(|o| ctx.download(o, "the grouped test products")).collect()
    }

    /// Rows `row0 .. row0 + n` dequantized on the device through the layout's row reader (the
    /// prefill path), and the embedding gather of `tokens` (ids past the table give NaN rows).
    pub fn read_rows(&self, row0: usize, n: usize, tokens: &[u32]) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
        let w = self.weights.slice(..self.bytes_per_copy);
        let mut rows = self.ctx.alloc::<f32>((n * self.n_cols).max(1), "test rows")?;
        self.ctx.fill_u32_bits(&mut rows, 0x7FC0_DEAD)?;
        match self.layout {
            Layout::Tiles(grid) => dequant_tile_rows(&self.ctx, &self.kernels, &grid, &w, row0, n, &mut rows.slice_mut(..))?,
            Layout::Blocks => {
                let rb = quant::row_bytes(self.ty, self.n_cols)?;
                super::dequant::dequantize_into(&self.ctx, self.ty, &w.slice(row0 * rb..(row0 + n) * rb), n * self.n_cols, &mut rows.slice_mut(..))?
            }
        }
        let ids = self.ctx.upload(tokens, "test token ids")?;
        let mut emb = self.ctx.alloc::<f32>((tokens.len() * self.n_cols).max(1), "test embeddings")?;
        self.ctx.fill_u32_bits(&mut emb, 0x7FC0_DEAD)?;
        if !tokens.is_empty() {
            let n_elems = (tokens.len() * self.n_cols) as u64;
            let row_bytes = quant::row_bytes(self.ty, self.n_cols)? as u64;
            let (n_table, n_tok, width) = (self.n_rows as u32, tokens.len() as u32, self.n_cols as u32);
            let ids_ptr = super::backend::addr(&ids, &self.ctx);
            launch!(self.ctx, &self.kernels.embed, "embed_rows", super::backend::grid_stride(n_elems), &w, &row_bytes, &n_table, &ids_ptr, &n_tok, &width, &mut emb)?;
        }
        let mut rows = self.ctx.download(&rows, "test rows")?;
        rows.truncate(n * self.n_cols);
        let mut emb = self.ctx.download(&emb, "test embeddings")?;
        emb.truncate(tokens.len() * self.n_cols);
        Ok((rows, emb))
    }

    /// Device time per launch for `n_x` rows of random activations (more than `MATVEC_MAX_ROWS`:
    /// the quantized GEMM): `iters` launches rotating
    /// over the weight copies, recorded once as a CUDA graph (as a decode step runs) and timed
    /// with events over `repeats` replays; returns the seconds per launch of each replay.
    pub fn time(&self, n_x: usize, iters: usize, repeats: usize) -> Result<Vec<f64>, CudaError> {
        let copies = self.weights.len() / self.bytes_per_copy;
        let x: Vec<f32> = (0..n_x * self.n_cols).map(|i| ((i * 2654435761usize) % 2001) as f32 / 1000.0 - 1.0).collect();
        let xd = self.ctx.upload(&x, "benchmark activations")?;
        let xh = if n_x > MATVEC_MAX_ROWS { Some(self.upload_f16(&x)?) } else { None };
        let mut out = self.ctx.alloc::<f32>(n_x * self.n_rows, "benchmark output")?;
        let launch = |copy: usize, out: &mut CudaSlice<f32>| match &xh {
            Some(xh) => self.launch_gemm(copy, xh, n_x, 0, out, false),
            None => self.launch_on(copy, &xd, n_x, 0, out, false),
        };
        let drv = |op: &str, e: cudarc::driver::DriverError| CudaError::Driver { op: op.to_string(), msg: super::error::describe(&e) };
        // Warm up (compiles nothing: the kernels are loaded; faults surface here).
        launch(0, &mut out)?;
        self.ctx.sync("benchmark warm-up")?;
        let stream = self.ctx.stream().clone();
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(|e| drv("starting a benchmark capture", e))?;
        let mut queued = Ok(());
        for i in 0..iters {
            queued = launch(i % copies, &mut out);
            if queued.is_err() {
                break;
            }
        }
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        queued?;
        let graph = graph.map_err(|e| drv("recording the benchmark", e))?.ok_or_else(|| CudaError::Invalid("benchmark captured nothing".into()))?;
        graph.launch().map_err(|e| drv("launching the benchmark graph", e))?;
        self.ctx.sync("benchmark graph warm-up")?;
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut out_times = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let start = stream.record_event(flags).map_err(|e| drv("recording an event", e))?;
            graph.launch().map_err(|e| drv("launching the benchmark graph", e))?;
            let end = stream.record_event(flags).map_err(|e| drv("recording an event", e))?;
            let ms = start.elapsed_ms(&end).map_err(|e| drv("reading event times", e))?;
            out_times.push(ms as f64 / 1e3 / iters as f64);
        }
        self.ctx.sync("the benchmark")?;
        Ok(out_times)
    }
}

/// Device-to-device copy of `n_bytes` on `device`, timed with events: seconds per copy for each
/// of `repeats` copies after a warm-up. The microbenchmark's yardstick (a copy reads and writes
/// every byte, so its bandwidth is `2 * n_bytes / seconds`).
pub fn time_device_copy(device: &str, n_bytes: usize, repeats: usize) -> Result<Vec<f64>, CudaError> {
    let ctx = CudaContext::get(device)?;
    let src = ctx.alloc_zeros::<u8>(n_bytes, "copy benchmark source")?;
    let mut dst = ctx.alloc::<u8>(n_bytes, "copy benchmark destination")?;
    let stream = ctx.stream().clone();
    let drv = |op: &str, e: cudarc::driver::DriverError| CudaError::Driver { op: op.to_string(), msg: super::error::describe(&e) };
    stream.memcpy_dtod(&src, &mut dst).map_err(|e| drv("a device copy", e))?;
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = stream.record_event(flags).map_err(|e| drv("recording an event", e))?;
        stream.memcpy_dtod(&src, &mut dst).map_err(|e| drv("a device copy", e))?;
        let end = stream.record_event(flags).map_err(|e| drv("recording an event", e))?;
        times.push(start.elapsed_ms(&end).map_err(|e| drv("reading event times", e))? as f64 / 1e3);
    }
    ctx.sync("the copy benchmark")?;
    Ok(times)
}

/// f16 bits of `v * scale`, finite values beyond f16's range clamped to it: the bits
/// `f16_scaled_bits` of common.cuh gives (round to nearest even).
fn f16_scaled_bits(v: f32, scale: f32) -> u16 {
    let s = v * scale;
    let max = half::f16::MAX.to_f32();
    let s = if s.is_finite() { s.clamp(-max, max) } else { s };
    half::f16::from_f32(s).to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::repack::tile_format;

    fn grid(ty: GgmlType, n_rows: usize, n_cols: usize) -> TileGrid {
        TileGrid::new(tile_format(ty).unwrap(), n_rows, n_cols)
    }

    /// Large split matrices take 8 tile rows a block where a split spans 512 columns or more (a
    /// 7B's ffn_down, its q/k/v and o at four rows) and 4 where less (the 0.5B's gate and up at
    /// four rows: 224 columns a split), as measured (WIDE_SPLIT_COLS).
    #[test]
    fn wide_splits_take_eight_tile_rows_a_block() {
        let h100 = 132;
        for nt in [1, 2, 4] {
            let p = Plan::new(&grid(GgmlType::Q6_K, 3584, 18944), h100, nt);
            assert_eq!((p.warps_m, p.splits), (8, 8), "7B down at {nt} rows: {p:?}");
        }
        let p = Plan::new(&grid(GgmlType::Q4_K, 3584, 3584), h100, 4);
        assert_eq!((p.warps_m, p.splits, p.k_tiles_per_split), (8, 7, 2), "7B o at 4 rows: {p:?}");
    }

    #[test]
    fn plan_settings_parse_and_skip_malformed_entries() {
        let plans = parse_plans("9728x896@4=4,2,1; 1152x896@2=1,8,1;896x896@4=1,8;bad;3584x3584@x=1,1,1;");
        assert_eq!(plans, vec![((9728, 896, 4), (4, 2, 1)), ((1152, 896, 2), (1, 8, 1))]);
        assert!(parse_plans("").is_empty());
    }

    /// The 0.5B's projections (896 columns: x fits one phase at four rows) plan three and four
    /// rows as one and two (one wave, no column split), and one-tile-row blocks take a warp for
    /// each staging job up to 8: the plans measured (docs/BENCHMARKS.md, forty-second session);
    /// a 7B's 3584 columns keep theirs.
    #[test]
    fn one_phase_matrices_plan_four_rows_as_one_wave() {
        let h100 = 132;
        let plan = |ty, rows, cols, nt| {
            let p = Plan::new(&grid(ty, rows, cols), h100, nt);
            (p.warps_m, p.warps_k, p.splits)
        };
        assert_eq!(plan(GgmlType::Q5_0, 9728, 896, 4), (4, 2, 1), "gate/up");
        assert_eq!(plan(GgmlType::Q5_0, 1152, 896, 4), (1, 8, 1), "q/k/v: 16 staging jobs");
        assert_eq!(plan(GgmlType::Q5_0, 896, 896, 4), (1, 8, 1), "o");
        assert_eq!(plan(GgmlType::Q5_0, 1152, 896, 2), (1, 8, 1), "q/k/v at two rows: 8 staging jobs");
        assert_eq!(plan(GgmlType::Q5_0, 896, 896, 2), (1, 8, 1), "o at two rows");
        assert_eq!(plan(GgmlType::Q5_0, 1152, 896, 1), (1, 7, 1), "q/k/v at one row: 4 jobs");
        assert_eq!(plan(GgmlType::Q4_K, 896, 4864, 1), (1, 8, 3), "down at one row, as measured best");
        // A 7B's one-row o and two-row o already have 8 warps; its q/k/v two tile rows a block.
        assert_eq!(plan(GgmlType::Q4_K, 3584, 3584, 1), (1, 8, 1));
        assert_eq!(plan(GgmlType::Q4_K, 3584, 3584, 2), (1, 8, 1));
        assert_eq!(plan(GgmlType::Q4_K, 4608, 3584, 1), (2, 4, 1));
        // Unchanged: ffn_down (x of several phases at four rows), a 7B's q/k/v and o.
        assert_eq!(plan(GgmlType::Q4_K, 896, 4864, 4), (4, 2, 10));
        assert_eq!(plan(GgmlType::Q4_K, 4608, 3584, 4), (8, 1, 7));
        assert_eq!(plan(GgmlType::Q4_K, 3584, 3584, 4), (8, 1, 7));
    }

    #[test]
    fn plans_fill_an_h200_and_never_make_empty_splits() {
        let sms = 132;
        for (ty, n_rows, n_cols) in [
            (GgmlType::Q5_0, 896, 896),
            (GgmlType::Q5_0, 128, 896),
            (GgmlType::Q5_0, 4864, 896),
            (GgmlType::Q4_K, 896, 4864),
            (GgmlType::Q8_0, 151936, 896),
            (GgmlType::Q4_K, 3584, 3584),
            (GgmlType::Q4_K, 512, 3584),
            (GgmlType::Q6_K, 3584, 18944),
            (GgmlType::Q8_0, 152064, 3584),
            (GgmlType::Q5_0, 1, 32),
        ] {
            let g = grid(ty, n_rows, n_cols);
            for nt in [1, 2, 4, 8] {
                let p = Plan::new(&g, sms, nt);
                assert!(p.warps_m >= 1 && p.warps_k >= 1 && p.warps_m * p.warps_k <= MMA_MAX_WARPS, "{p:?}");
                assert!(p.warps_k as usize <= phase_tiles(&g.format, nt), "{p:?}");
                assert_eq!(p.block_rows as usize, g.m_tiles.div_ceil(p.warps_m as usize));
                assert!(p.splits >= 1 && p.splits as usize <= g.k_tiles && p.splits as usize <= MAX_SPLITS, "{p:?}");
                // Every split has columns, and together they cover the matrix.
                assert!(((p.splits - 1) * p.k_tiles_per_split) < g.k_tiles as u32, "{ty} {n_rows}x{n_cols}: {p:?}");
                assert!((p.splits * p.k_tiles_per_split) as usize >= g.k_tiles, "{p:?}");
                // Matrices with enough work give every SM a warp at least.
                let warps = (p.block_rows * p.splits * p.warps_m * p.warps_k) as usize;
                if g.m_tiles * g.k_tiles >= 4 * sms {
                    assert!(warps >= sms, "{ty} {n_rows}x{n_cols} nt={nt}: {warps} warps ({p:?})");
                }
            }
        }
        // The 896-wide outputs of the real model spread their columns over several warps.
        let p = Plan::new(&grid(GgmlType::Q5_0, 896, 896), sms, 1);
        assert!(p.warps_k * p.splits > 1, "{p:?}");
        // A matrix of as many tile rows as SMs takes no column split at one or two rows (the
        // plan the tenth session's sweep measured best for 3584x3584 Q5_0 and Q8_0), and the
        // real model's down projection (56 tile rows) still does.
        for ty in [GgmlType::Q5_0, GgmlType::Q8_0] {
            for nt in [1, 2] {
                let p = Plan::new(&grid(ty, 3584, 3584), sms, nt);
                assert_eq!((p.warps_m, p.warps_k, p.splits), (1, 8, 1), "{ty} nt={nt}: {p:?}");
            }
        }
        assert!(Plan::new(&grid(GgmlType::Q5_0, 896, 4864), sms, 1).splits > 1);
        // Gate and up of the real model as one launch (608 tile rows) fit one wave of blocks of
        // 8 warps at one and two rows: 4 tile rows a block, 2 warps each (the 21st session's
        // sweep, against 608 blocks of 3 or 4 warps).
        for nt in [1, 2] {
            let p = Plan::new(&grid(GgmlType::Q5_0, 9728, 896), sms, nt);
            assert_eq!((p.warps_m, p.warps_k, p.splits), (4, 2, 1), "nt={nt}: {p:?}");
            assert!(p.block_rows as usize <= sms * RESIDENT_WARPS_PER_SM / 8, "{p:?}");
        }
    }

    /// matvec_mma.cu's stream kernel, its order of tiles and shares transcribed (`StreamOrder`;
    /// the test below holds the source to these lines).
    struct StreamOrder {
        m_all: u32,
        k_tiles: u32,
        n_phases: u32,
        phase_units: u32,
        phase_tiles: u32,
        units: u32,
        warps: u32,
        q: u32,
        rem: u32,
    }

    impl StreamOrder {
        fn new(m_all: u32, k_tiles: u32, phase_tiles: u32, grid_warps: u32) -> Self {
            let units = m_all * k_tiles;
            let warps = grid_warps.min(units).max(1);
            let n_phases = k_tiles.div_ceil(phase_tiles);
            StreamOrder { m_all, k_tiles, n_phases, phase_units: m_all * phase_tiles, phase_tiles, units, warps, q: units / warps, rem: units % warps }
        }
        fn width(&self, ph: u32) -> u32 {
            self.phase_tiles.min(self.k_tiles - ph * self.phase_tiles)
        }
        fn first(&self, w: u32) -> u32 {
            w * self.q + w.min(self.rem)
        }
        fn owner(&self, u: u32) -> u32 {
            if u < self.rem * (self.q + 1) { u / (self.q + 1) } else { self.rem + (u - self.rem * (self.q + 1)) / self.q }
        }
        /// (phase, tile row, column tile) of tile u.
        fn locate(&self, u: u32) -> (u32, u32, u32) {
            let ph = u / self.phase_units;
            let local = u - ph * self.phase_units;
            let w = self.width(ph);
            (ph, local / w, ph * self.phase_tiles + local % w)
        }
        fn slice_of(&self, u: u32) -> u32 {
            let (ph, r, _) = self.locate(u);
            ph * self.m_all + r
        }
        fn slice_begin(&self, ph: u32, r: u32) -> u32 {
            ph * self.phase_units + r * self.width(ph)
        }
        fn slot(&self, s: u32, w: u32) -> u32 {
            if s == self.slice_of(self.first(w)) {
                2 * w
            } else if s == self.slice_of(self.first(w + 1) - 1) {
                2 * w + 1
            } else {
                2 * self.warps + s
            }
        }
    }

    /// Fails naming the first of `lines` that kernels/matvec_mma.cu no longer holds verbatim: the
    /// tests that model a kernel's arithmetic on the host check that it is still the kernel's.
    fn assert_matvec_mma_has(lines: &[&str]) {
        let src = crate::backend::cuda::kernels::MATVEC_MMA.src;
        for line in lines {
            assert!(src.contains(line), "matvec_mma.cu no longer has: {line}");
        }
    }

    /// Every tile falls to exactly one warp, in the kernel's order (phase, tile row, column
    /// tile), no warp's share is empty, and every row's pieces are what its last warp adds: each
    /// warp walking its share writes a piece per slice it touches (or the row itself, when it
    /// holds the whole row), in a slot no other piece takes, within the partial sums the host
    /// allocates; the pieces' tiles add up to the row's, so exactly one of them completes the
    /// count; and the adding warp's reads, phase by phase and warp by warp, are exactly the slots
    /// the row's pieces went to. Shapes from a few tiles on the whole grid to more tiles than
    /// warps, x of one phase and of several (a 7B's ffn_down, 74 or 148 column tiles), on the
    /// H200's 264 blocks of 8 warps.
    #[test]
    fn stream_shares_cover_every_tile_once_and_pieces_meet_their_reader() {
        assert_matvec_mma_has(&[
            "__device__ u32 first(u32 w) const { return w * q + min(w, rem); }",
            "__device__ u32 owner(u32 u) const { return u < rem * (q + 1) ? u / (q + 1) : rem + (u - rem * (q + 1)) / q; }",
            "__device__ u32 width(u32 ph) const { return min(STREAM_PHASE_TILES, k_tiles - ph * STREAM_PHASE_TILES); }",
            "ph = u / phase_units;",
            "const u32 local = u - ph * phase_units, w = width(ph);",
            "kt = ph * STREAM_PHASE_TILES + local % w;",
            "__device__ u32 slice_begin(u32 ph, u32 r) const { return ph * phase_units + r * width(ph); }",
            "return s == slice_of(first(w)) ? 2 * w : s == slice_of(first(w + 1) - 1) ? 2 * w + 1 : 2 * warps + s;",
            "ord.warps = max(min(gridDim.x * warps_here, ord.units), 1u);",
            "const u32 slot = ord.slot(ph * m_all + r, w);",
            "stream_finish_slice<NT>(acc[0][0], acc[0][1], acc[0][2], acc[0][3], y, bias, n_rows, row0, r, p, piece_tiles,",
            "stream_finish_slice_8(acc[0][0], acc[0][1], acc[0][2], acc[0][3], acc[1][0], acc[1][1], acc[1][2], acc[1][3], y,",
            "const u32 u_stop = min(u_end, (p + 1) * m_all * STREAM_PHASE_TILES);",
            "const bool more = i + 1 < n_here || !ends_here, slice_end = kt + 1 == p_end_tile;",
            "if (lane == 0) last = atomicAdd(&counters[r], piece_tiles) + piece_tiles == ord.k_tiles;",
            "const u32 v_slot = ord.slot(s, vw);",
            "constexpr int STREAM_PHASE = 4096;",
        ]);
        let sms = 132;
        let grid_warps = (stream_blocks(sms) * MMA_MAX_WARPS as usize) as u32;
        let q4_k = |m_tiles: usize, k_tiles: usize| TileGrid { m_tiles, k_tiles, n_rows: m_tiles * TILE_ROWS, ..grid(GgmlType::Q4_K, 16, 256) };
        let shapes = [(1u32, 1u32), (3, 3), (3, 17), (19, 7), (132, 14), (1184, 14), (2368, 14), (9504, 14), (700, 32), (5000, 1), (3, 19), (37, 33), (224, 74), (224, 148), (2, 74), (1, 40)];
        for (m_tiles, k_tiles) in shapes {
            let ord = StreamOrder::new(m_tiles, k_tiles, 16, grid_warps);
            let label = format!("{m_tiles}x{k_tiles}");
            let slot_bound = (stream_partial_floats(sms, &q4_k(m_tiles as usize, k_tiles as usize)) / (STREAM_MAX_ROWS * TILE_ROWS)) as u32;
            assert_eq!(ord.first(0), 0);
            assert_eq!(ord.first(ord.warps), ord.units, "{label}");
            // Each warp's walk: the tiles of each slice it touches, and where they go.
            let mut seen = vec![false; ord.units as usize];
            let mut slots: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
            let mut tiles_of_row = vec![0u32; m_tiles as usize];
            let mut whole_rows = 0;
            for w in 0..ord.warps {
                let (begin, end) = (ord.first(w), ord.first(w + 1));
                assert!(begin < end, "{label}: warp {w} has no tile");
                let mut piece = 0;
                for u in begin..end {
                    let (ph, r, kt) = ord.locate(u);
                    assert!(kt < k_tiles && r < m_tiles && kt / 16 == ph, "{label}: tile {u}");
                    assert!(!std::mem::replace(&mut seen[(r * k_tiles + kt) as usize], true), "{label}: tile {r},{kt} twice");
                    assert_eq!(ord.owner(u), w, "{label}: tile {u}");
                    piece += 1;
                    let slice_end = kt + 1 == ph * 16 + ord.width(ph);
                    if slice_end || u + 1 == end {
                        tiles_of_row[r as usize] += piece;
                        if piece == k_tiles {
                            whole_rows += 1; // written directly
                        } else {
                            let slot = ord.slot(ph * m_tiles + r, w);
                            assert!(slot < slot_bound, "{label}: slot {slot} past {slot_bound}");
                            assert!(slots.insert(slot, r).is_none(), "{label}: slot {slot} twice");
                        }
                        piece = 0;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s), "{label}: a tile no warp took");
            assert!(tiles_of_row.iter().all(|&t| t == k_tiles), "{label}: {tiles_of_row:?}");
            // The adding warp's reads: each slot of the row's pieces once, and nothing else.
            let mut read = 0usize;
            for r in 0..m_tiles {
                let mut pieces = 0;
                for ph in 0..ord.n_phases {
                    let begin = ord.slice_begin(ph, r);
                    let s = ph * m_tiles + r;
                    for v in ord.owner(begin)..=ord.owner(begin + ord.width(ph) - 1) {
                        let slot = ord.slot(s, v);
                        if ord.n_phases > 1 || ord.owner(begin) != ord.owner(begin + k_tiles - 1) {
                            assert_eq!(slots.get(&slot), Some(&r), "{label}: row {r} reads slot {slot}");
                            pieces += 1;
                        }
                    }
                }
                read += pieces;
            }
            assert_eq!(read, slots.len(), "{label}: pieces written and read");
            assert!(ord.n_phases == 1 || whole_rows == 0, "{label}: a whole row with x of several phases");
        }
    }

    #[test]
    fn stream_mode_is_one_phase_unless_the_environment_says_otherwise() {
        for (value, mode) in [(None, StreamMode::OnePhase), (Some("off"), StreamMode::Off), (Some("0"), StreamMode::Off), (Some("OFF"), StreamMode::Off), (Some("false"), StreamMode::Off), (Some("always"), StreamMode::Always), (Some("large"), StreamMode::Large), (Some("One-Phase"), StreamMode::OnePhase), (Some("1"), StreamMode::OnePhase)] {
            assert_eq!(StreamMode::from_env(value), mode, "{value:?}");
        }
    }

    /// `Large` takes the stream kernel for the matrices of many tiles (the 7B's gate/up launch
    /// and ffn_down, both LM heads), not for the 0.5B's layers; `OnePhase` only where x fits one
    /// phase; `Always` everywhere.
    #[test]
    fn stream_mode_takes_large_matrices() {
        let sms = 132;
        let gate_up = |ty, rows, cols| combined(&[grid(ty, rows, cols), grid(ty, rows, cols)]);
        assert!(takes_stream(StreamMode::Large, &gate_up(GgmlType::Q4_K, 18944, 3584), sms));
        assert!(takes_stream(StreamMode::Large, &grid(GgmlType::Q6_K, 152064, 3584), sms));
        assert!(takes_stream(StreamMode::Large, &grid(GgmlType::Q8_0, 151936, 896), sms));
        assert!(!takes_stream(StreamMode::Large, &gate_up(GgmlType::Q5_0, 4864, 896), sms));
        assert!(!takes_stream(StreamMode::Large, &grid(GgmlType::Q4_K, 3584, 3584), sms));
        // A 7B's ffn_down: x of five phases, which OnePhase (the twenty-eighth session's) leaves.
        assert!(takes_stream(StreamMode::Large, &grid(GgmlType::Q4_K, 3584, 18944), sms));
        assert!(takes_stream(StreamMode::Large, &grid(GgmlType::Q6_K, 3584, 18944), sms));
        assert!(!takes_stream(StreamMode::OnePhase, &grid(GgmlType::Q4_K, 3584, 18944), sms));
        assert!(takes_stream(StreamMode::OnePhase, &gate_up(GgmlType::Q4_K, 18944, 3584), sms));
        assert!(!takes_stream(StreamMode::Large, &grid(GgmlType::Q4_K, 896, 4864), sms));
        assert!(takes_stream(StreamMode::Always, &grid(GgmlType::Q5_0, 896, 896), sms));
        assert!(takes_stream(StreamMode::Always, &grid(GgmlType::Q8_0, 16, 4096), sms));
        assert!(takes_stream(StreamMode::Always, &grid(GgmlType::Q4_K, 896, 4864), sms));
        assert!(!takes_stream(StreamMode::Off, &grid(GgmlType::Q8_0, 151936, 896), sms));
        // Two slots a warp, and with several phases one a slice.
        let warps = stream_blocks(sms) * MMA_MAX_WARPS as usize;
        assert_eq!(stream_partial_floats(sms, &grid(GgmlType::Q8_0, 151936, 896)), 2 * warps * STREAM_MAX_ROWS * TILE_ROWS);
        assert_eq!(stream_partial_floats(sms, &grid(GgmlType::Q4_K, 3584, 18944)), (2 * warps + 5 * 224) * STREAM_MAX_ROWS * TILE_ROWS);
    }

    /// The dynamic shared memory a stream launch asks for is the kernel's staged x where the kernel
    /// keeps it there (eight rows: two int8 parts of STREAM_PHASE + 32 bytes a row), none below;
    /// two blocks an SM ([`stream_blocks`]) fit an H100's or H200's 227 KiB with the kernel's static
    /// arrays (11 KiB at eight rows, sm_90); and the eight-row kernel exists only where the host
    /// asks for it (a type whose int8 path reaches eight rows).
    #[test]
    fn stream_dynamic_shared_memory_is_eight_rows_of_staged_x() {
        assert_matvec_mma_has(&[
            "constexpr int STREAM_PHASE = 4096;",
            "constexpr int PHASE = STREAM_PHASE, XSTRIDE_B = PHASE + 32, SUMS = PHASE / 32;",
            "constexpr int PARTS = NT <= 2 ? 3 : 2;",
            "__shared__ __align__(16) u8 xs_static[NT <= 4 ? PARTS * NT * XSTRIDE_B : 16];",
            "u8* const xs_bytes = NT <= 4 ? xs_static : xs_dynamic;",
            "#if MMA_S8_MAX_NT >= 8\nMATVEC_MMA_STREAM_KERNEL(8)\n#endif",
        ]);
        for nt in [1, 2, 4] {
            assert_eq!(stream_dynamic_shared_bytes(nt), 0, "{nt} rows");
        }
        assert_eq!(stream_dynamic_shared_bytes(8), 2 * 8 * (4096 + 32));
        assert!(2 * (stream_dynamic_shared_bytes(8) as usize + 12 * 1024) <= 227 * 1024);
        assert_eq!(stream_blocks(132), 2 * 132);
        assert_eq!(STREAM_KERNEL_ROWS.last(), Some(&STREAM_MAX_ROWS));
    }
}
