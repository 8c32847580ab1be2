"""The CUDA driver API through ctypes, for the benches that time kernels of their own without
ferrite's Rust side (benches/bench_grid_barrier.py, benches/bench_cluster_handover.py,
benches/bench_attention_chain.py, benches/bench_ffn_chain.py, benches/bench_matvec_chain.py):
a device, a stream and two events, launches with their attributes (programmatic dependent launch,
thread block clusters), and a chain of launches recorded as a CUDA graph and timed by replays. The kernels come from
scripts/nvrtc_cubin.py's compile_source; PHASE_HELPERS is the device code the benches' phases
share, PRODUCER (launched through Producer) the projection the chain benches put before the
launch they time, ProbeChain what they read from a probe build's stamps, and weight_bytes / TILES /
S8_MAX_NT the random repacked tiles and module defines of the benches that build matvec_mma.cu.
"""

from __future__ import annotations

import ctypes as C
import random
import statistics
import struct
from typing import Callable

from nvrtc_cubin import BASE_OPTIONS, compile_source

# Device code for a bench's phases: a block sum, and the block's share of a phase's weights in
# registers (w4 float4 a thread at float4 offset `off4`, for at most MAX_W4, which the including
# source may define first), loaded before the phase waits and folded into its result.
PHASE_HELPERS = r"""
typedef unsigned int u32;
typedef unsigned long long u64;
#ifndef MAX_W4
#define MAX_W4 16
#endif
__device__ __forceinline__ float block_sum(float v, float* red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) s += red[w];
    __syncthreads();
    return s;
}
// The block's sum of `seed` and a vector of n floats another phase wrote (read through L2).
__device__ __forceinline__ float vector_sum(const float* xin, int n, float seed, float* red) {
    float s = seed;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += __ldcg(xin + i);
    return block_sum(s, red);
}
__device__ __forceinline__ void load_weights(const float4* __restrict__ w, u64 off4, int w4, float4 (&r)[MAX_W4]) {
    const u64 base = off4 + ((u64)blockIdx.x * blockDim.x + threadIdx.x) * w4;
#pragma unroll
    for (int i = 0; i < MAX_W4; i++)
        if (i < w4) asm volatile("ld.global.nc.L1::no_allocate.v4.f32 {%0,%1,%2,%3}, [%4];"
                                 : "=f"(r[i].x), "=f"(r[i].y), "=f"(r[i].z), "=f"(r[i].w) : "l"(w + base + i));
}
__device__ __forceinline__ float use_weights(int w4, const float4 (&r)[MAX_W4]) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < MAX_W4; i++)
        if (i < w4) s += r[i].x + r[i].y + r[i].z + r[i].w;
    return s;
}
"""

# A projection's stand-in before a timed launch (the chain benches): weights loaded before the
# wait, then extra work as time (spin_ns), a vector of n floats from L2, a block sum, and this
# block's share of n_out values written to `out`. Thread 0 stamps its block's end into probe.
PRODUCER = "#define MAX_W4 8\n" + PHASE_HELPERS + r"""
extern "C" __global__ void producer(const float* xin, float* out, int n, int n_out, const float4* __restrict__ w, u64 off4,
                                    int w4, u64* probe, u64 spin_ns) {
    __shared__ float red[32];
    float4 r[MAX_W4];
    load_weights(w, off4, w4, r);
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    // The rest of a real projection's work after its wait (staging x, the products), as time.
    u64 t0, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); while (now - t0 < spin_ns);
    const float s = vector_sum(xin, n, use_weights(w4, r) * 1e-30f, red);
    const int per = (n_out + gridDim.x - 1) / gridDim.x;
    for (int i = threadIdx.x; i < per; i += blockDim.x) {
        const int o = blockIdx.x * per + i;
        // Bounded values (attention scores, a residual): finite whatever the chain does.
        if (o < n_out) out[o] = __sinf(s * 1e-3f + (float)o);
    }
    __syncthreads();
    if (probe != nullptr && threadIdx.x == 0) {
        u64 t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        probe[blockIdx.x] = t;
    }
}
"""


class LaunchAttr(C.Structure):
    # c_ubyte, not c_char: a c_char array field reads back as a bytes copy, so writing into it
    # changed nothing and every attribute went out as zeros (before the thirty-eighth session,
    # bench_grid_barrier's dependent launches were plain ones).
    _fields_ = [("id", C.c_int), ("pad", C.c_ubyte * 4), ("value", C.c_ubyte * 64)]


class LaunchConfig(C.Structure):
    _fields_ = [
        ("gx", C.c_uint), ("gy", C.c_uint), ("gz", C.c_uint),
        ("bx", C.c_uint), ("by", C.c_uint), ("bz", C.c_uint),
        ("smem", C.c_uint), ("stream", C.c_void_p), ("attrs", C.POINTER(LaunchAttr)), ("n_attrs", C.c_uint),
    ]


CLUSTER_DIMENSION = 4  # CUlaunchAttributeID
PROGRAMMATIC_STREAM_SERIALIZATION = 6
FUNC_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14  # CUfunction_attribute
DEVICE_MULTIPROCESSOR_COUNT = 16  # CUdevice_attribute


def launch_attrs(pdl: bool, cluster: int) -> tuple[C.Array, int]:
    """The attributes of one launch: clusters of `cluster` blocks along x (0: none), dependent
    launch when `pdl`."""
    attrs = (LaunchAttr * 2)()
    n = 0
    if cluster:
        attrs[n].id = CLUSTER_DIMENSION
        C.memmove(attrs[n].value, (C.c_uint * 3)(cluster, 1, 1), 12)
        n += 1
    if pdl:
        attrs[n].id = PROGRAMMATIC_STREAM_SERIALIZATION
        C.memmove(attrs[n].value, (C.c_int * 1)(1), 4)
        n += 1
    return attrs, n


class Driver:
    """Device 0's primary context, a non-blocking stream and two events for timing."""

    def __init__(self) -> None:
        self.cu = C.CDLL("libcuda.so.1")
        self.check(self.cu.cuInit(0), "cuInit")
        dev = C.c_int()
        self.check(self.cu.cuDeviceGet(C.byref(dev), 0), "cuDeviceGet")
        self.ctx = C.c_void_p()
        self.check(self.cu.cuDevicePrimaryCtxRetain(C.byref(self.ctx), dev), "ctx")
        self.check(self.cu.cuCtxSetCurrent(self.ctx), "ctx")
        sms = C.c_int()
        self.check(self.cu.cuDeviceGetAttribute(C.byref(sms), DEVICE_MULTIPROCESSOR_COUNT, dev), "sms")
        self.sms = sms.value
        name = C.create_string_buffer(256)
        self.cu.cuDeviceGetName(name, 256, dev)
        self.name = name.value.decode()
        self.stream, self.ev0, self.ev1 = C.c_void_p(), C.c_void_p(), C.c_void_p()
        self.check(self.cu.cuStreamCreate(C.byref(self.stream), 1), "stream")  # non-blocking
        self.check(self.cu.cuEventCreate(C.byref(self.ev0), 0), "event")
        self.check(self.cu.cuEventCreate(C.byref(self.ev1), 0), "event")

    def clock_mhz(self) -> float:
        """The SM clock's rate the device reports (its maximum), MHz."""
        rate_khz = C.c_int()
        self.check(self.cu.cuDeviceGetAttribute(C.byref(rate_khz), 13, 0), "clock rate")  # CU_DEVICE_ATTRIBUTE_CLOCK_RATE
        return rate_khz.value / 1e3

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            msg = C.c_char_p()
            self.cu.cuGetErrorString(rc, C.byref(msg))
            raise RuntimeError(f"{what}: CUDA error {rc} {msg.value!r}")

    def alloc(self, nbytes: int) -> int:
        """A zeroed device buffer of `nbytes` bytes, by address."""
        p = C.c_uint64()
        self.check(self.cu.cuMemAlloc_v2(C.byref(p), C.c_size_t(nbytes)), "cuMemAlloc")
        self.check(self.cu.cuMemsetD8_v2(p, 0, C.c_size_t(nbytes)), "memset")
        return p.value

    def functions(self, cubin: bytes, names: list[str]) -> dict[str, C.c_void_p]:
        """The named kernels of a cubin."""
        mod = C.c_void_p()
        self.check(self.cu.cuModuleLoadData(C.byref(mod), cubin), "cuModuleLoadData")
        fns = {}
        for name in names:
            f = C.c_void_p()
            self.check(self.cu.cuModuleGetFunction(C.byref(f), mod, name.encode()), name)
            fns[name] = f
        return fns

    def launch(self, fn: C.c_void_p, grid: int | tuple[int, int, int], threads: int, params: list, pdl: bool = False,
               cluster: int = 0, smem: int = 0) -> None:
        """`fn` on a grid of `grid` blocks (a count along x, or x, y, z) of `threads` threads on
        the stream, with `smem` bytes of dynamic shared memory, its parameters ctypes values."""
        attrs, n_attrs = launch_attrs(pdl, cluster)
        gx, gy, gz = (grid, 1, 1) if isinstance(grid, int) else grid
        cfg = LaunchConfig(gx, gy, gz, threads, 1, 1, smem, self.stream, C.cast(attrs, C.POINTER(LaunchAttr)), n_attrs)
        ptrs = (C.c_void_p * len(params))(*[C.cast(C.pointer(p), C.c_void_p) for p in params])
        self.check(self.cu.cuLaunchKernelEx(C.byref(cfg), fn, ptrs, None), "launch")

    def copy_to(self, dst: int, data: bytes) -> None:
        """`data` into device memory at address `dst`."""
        self.check(self.cu.cuMemcpyHtoD_v2(C.c_uint64(dst), data, C.c_size_t(len(data))), "copy to device")

    def copy_from(self, src: int, nbytes: int) -> bytes:
        """`nbytes` bytes of device memory from address `src` (after the stream's work)."""
        self.check(self.cu.cuStreamSynchronize(self.stream), "sync")
        buf = C.create_string_buffer(nbytes)
        self.check(self.cu.cuMemcpyDtoH_v2(buf, C.c_uint64(src), C.c_size_t(nbytes)), "copy from device")
        return buf.raw

    def time_graph(self, build: Callable[[], None], reps: int, per: int) -> float:
        """What `build` queues on the stream, recorded as a graph: the median over `reps`
        replays (after three more) of microseconds a replay over `per`."""
        graph, exe = C.c_void_p(), C.c_void_p()
        self.check(self.cu.cuStreamBeginCapture_v2(self.stream, 0), "capture")  # global mode
        build()
        self.check(self.cu.cuStreamEndCapture(self.stream, C.byref(graph)), "end capture")
        self.check(self.cu.cuGraphInstantiateWithFlags(C.byref(exe), graph, C.c_ulonglong(0)), "instantiate")
        times = []
        for rep in range(reps + 3):
            self.check(self.cu.cuEventRecord(self.ev0, self.stream), "record")
            self.check(self.cu.cuGraphLaunch(exe, self.stream), "graph launch")
            self.check(self.cu.cuEventRecord(self.ev1, self.stream), "record")
            self.check(self.cu.cuEventSynchronize(self.ev1), "sync")
            ms = C.c_float()
            self.check(self.cu.cuEventElapsedTime(C.byref(ms), self.ev0, self.ev1), "elapsed")
            if rep >= 3:
                times.append(ms.value * 1000.0 / per)
        self.cu.cuGraphExecDestroy(exe)
        self.cu.cuGraphDestroy(graph)
        return statistics.median(times)


class Producer:
    """The chain benches' PRODUCER launches: `blocks` blocks of `threads` threads, each loading
    `kb` KB of weights (at most 8 float4 a thread) from a pool larger than L2, another part each
    launch, as a step's projections read DRAM; the blocks' end times of `pairs` launches."""

    @staticmethod
    def cubin() -> bytes:
        """PRODUCER compiled for sm_90 with the backend's NVRTC options (no GPU needed)."""
        return compile_source("producer.cu", PRODUCER.encode(), ["--gpu-architecture=sm_90", *BASE_OPTIONS])

    def __init__(self, cu: Driver, cubin: bytes, blocks: int, threads: int, kb: int, pairs: int) -> None:
        self.cu, self.blocks, self.threads = cu, blocks, threads
        self.fn = cu.functions(cubin, ["producer"])["producer"]
        pool_bytes = 256 << 20
        self.w = cu.alloc(pool_bytes)
        self.w4 = min(8, -(-kb * 1024 // (16 * threads)))
        self.stride = blocks * threads * self.w4
        self.wrap = (pool_bytes // 16) // self.stride * self.stride
        self.probe = cu.alloc(pairs * blocks * 8)
        self.pairs = pairs

    @property
    def kb_a_block(self) -> int:
        return self.w4 * 16 * self.threads // 1024

    def launch(self, i: int, xin: int, out: int, n: int, n_out: int, spin_ns: int, probe: bool) -> None:
        """Launch i of the chain (dependent launch on), its end stamped when `probe`."""
        self.cu.launch(self.fn, self.blocks, self.threads,
                       [C.c_uint64(xin), C.c_uint64(out), C.c_int(n), C.c_int(n_out), C.c_uint64(self.w),
                        C.c_ulonglong((i * self.stride) % self.wrap), C.c_int(self.w4),
                        C.c_uint64(self.probe + 8 * self.blocks * i if probe else 0), C.c_ulonglong(spin_ns)], pdl=True)

    def ends(self) -> list[int]:
        """Each launch's last block end (%globaltimer ns), from the last chain run with `probe`."""
        raw = struct.unpack(f"<{self.pairs * self.blocks}Q", self.cu.copy_from(self.probe, self.pairs * self.blocks * 8))
        return [max(raw[i * self.blocks:(i + 1) * self.blocks]) for i in range(self.pairs)]


class ProbeChain:
    """A probed chain's stamps (common.cuh's probe_stamp: 32 words a block, %globaltimer of point p
    at word p and clock64 at word 16 + p, zero where the block did not reach the point) of
    `len(ends)` launches of `grid` blocks each, read against the producer's launch ends
    (Producer.ends): for each point, in `order` (the points' order in time; default 0 ..
    n_points - 1), the last block reaching it relative to that launch's producer end (us, one value
    a launch), and each block's clock cycles from the nearest point before it in that order that
    the block reached. The first `warmup` launches are left out."""

    def __init__(self, stamps: tuple[int, ...], ends: list[int], grid: int, n_points: int, warmup: int = 2,
                 order: list[int] | None = None) -> None:
        order = list(range(n_points)) if order is None else order
        # The stamps of each launch kept (after the warm-up), a list of 32 words a block.
        self.launches = [[stamps[(i * grid + b) * 32:(i * grid + b) * 32 + 32] for b in range(grid)] for i in range(warmup, len(ends))]
        self.times: list[list[float]] = [[] for _ in order]
        self.cycles: list[list[int]] = [[] for _ in order]
        for blocks, end in zip(self.launches, ends[warmup:]):
            for i, p in enumerate(order):
                reached = [b[p] for b in blocks if b[p]]
                if reached:
                    self.times[i].append((max(reached) - end) / 1000.0)
            for b in blocks:
                before = None
                for i, p in enumerate(order):
                    if not b[16 + p]:
                        continue
                    if before is not None:
                        self.cycles[i].append(b[16 + p] - before)
                    before = b[16 + p]

    def point_cells(self) -> str:
        """The points' median times as table cells (NaN where no block reached a point)."""
        return " | ".join(f"{statistics.median(t) if t else float('nan'):+.2f}" for t in self.times)

    def cycle_cells(self) -> str:
        """The points after the first as table cells of median / most cycles from the point before."""
        return " | ".join(f"{statistics.median(c):.0f} / {max(c)}" if c else "-" for c in self.cycles[1:])


def weight_bytes(seed: int, n: int) -> bytes:
    """n random bytes below 0x3c, for repacked tiles: every f16 a tile holds is finite and below 1."""
    rng = random.Random(seed)
    return (bytes(rng.randrange(0x3c) for _ in range(min(n, 1 << 16))) * (-(-n // (1 << 16))))[:n]


# The tiled types as the chain benches build matvec_mma.cu for them: (tile columns, tile bytes) of
# src/backend/cuda/repack.rs's table, and the int8 rows (MMA_S8_MAX_NT) of kernels.rs's int8_max_rows.
TILES = {"q5_0": (128, 1408), "q8_0": (128, 2176), "q4_k": (256, 2304), "q6_k": (256, 3360)}
S8_MAX_NT = {"q5_0": 2, "q8_0": 4, "q4_k": 8, "q6_k": 4}
