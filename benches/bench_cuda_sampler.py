#!/usr/bin/env python3
"""The device sampler alone (kernels/sampling.cu), without ferrite's Rust side: the kernel file is
compiled with NVRTC and launched through the CUDA driver API (ctypes), on buffers made by torch,
so a change to the kernel can be timed on the GPU machine without rebuilding the wheel.

    python benches/bench_cuda_sampler.py [kernels/sampling.cu] [-DNAME=VALUE ...] [--configs=NAME,NAME]
        [--chunk-elems=8192,5120]

For each sampling configuration, 64 rows (and 1 and 8) of 151,936 logits: flat (N(0, 2)), peaked (the
same plus 12 on 50 tokens, as a trained model's few strong candidates) and tied (40 equal
leaders, so that filters cut inside ties); microseconds per call, mean of 20 launches, with the
chunk pass (sample_chunks + sample_rows, and for rows without top-k but with top-p or min-p the
mass pass, sample_mass and a second sample_rows: what ferrite runs; at 8 rows also
sample_chunks alone, and without the mass pass, where the rows the records do not settle are
scanned by one block each) and with rows scanned by one block each (the fallback path); and in
how many rows the chunk path and the scan drew the same token (they must agree: the chunk pass
is used only where it settles the draw exactly, and the mass pass adds the scan's sums).
--chunk-elems: the chunk sizes to time the chunk pass with (values a block; ferrite takes 5,120
for launches whose rows would leave most SMs idle, 8,192 otherwise: sampling.rs,
small_batch_chunk_elems), each a row of the table.
Needs torch, libnvrtc.so.13 and libcuda.so.1 (the GPU machine has all three).
"""
import ctypes, os, sys, struct
from pathlib import Path
import numpy as np, torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from nvrtc_cubin import BASE_OPTIONS, compile_cubin  # noqa: E402

src_path = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else os.path.join(os.path.dirname(__file__), "..", "kernels", "sampling.cu")
only = [a.split("=", 1)[1].split(",") for a in sys.argv[1:] if a.startswith("--configs=")]
chunk_sizes = [int(v) for a in sys.argv[1:] if a.startswith("--chunk-elems=") for v in a.split("=", 1)[1].split(",")] or [8192]
extra = [a for a in sys.argv[1:] if a.startswith("-") and not a.startswith(("--configs=", "--chunk-elems="))]
cuda = ctypes.CDLL("libcuda.so.1")
# Headers beside the kernel file (a variant file may come with variant headers).
cubin = compile_cubin(Path(src_path), ["--gpu-architecture=sm_90", *BASE_OPTIONS, "-lineinfo", *extra], headers_dir=Path(src_path).parent)
torch.cuda.init(); torch.zeros(1, device="cuda")
mod = ctypes.c_void_p(); assert cuda.cuModuleLoadData(ctypes.byref(mod), cubin) == 0
fn = ctypes.c_void_p(); assert cuda.cuModuleGetFunction(ctypes.byref(fn), mod, b"sample_rows") == 0
fc = ctypes.c_void_p(); assert cuda.cuModuleGetFunction(ctypes.byref(fc), mod, b"sample_chunks") == 0
fm = ctypes.c_void_p(); assert cuda.cuModuleGetFunction(ctypes.byref(fm), mod, b"sample_mass") == 0
regs = ctypes.c_int(); cuda.cuFuncGetAttribute(ctypes.byref(regs), 4, fn)  # NUM_REGS
lmem = ctypes.c_int(); cuda.cuFuncGetAttribute(ctypes.byref(lmem), 3, fn)  # LOCAL_SIZE_BYTES
print(f"sample_rows: {regs.value} registers, {lmem.value} bytes of local memory a thread")

# Block sizes as the kernel file defines them (a variant file may change them).
import re
_src = open(src_path).read()
SAMPLE_THREADS = int(re.search(r"#define SAMPLE_THREADS (\d+)", _src).group(1))
CHUNK_THREADS = int(re.search(r"#define CHUNK_THREADS (\d+)", _src).group(1))
print(f"sample_rows: {SAMPLE_THREADS} threads a block; sample_chunks: {CHUNK_THREADS}")
# Sizes of sampling.cu (OUT_WORDS, CHUNK_WORDS) and its RowParams layout (16 words).
OUT_WORDS, CHUNK_WORDS = 4 + 2 * 64, 16 + 2 * 64
MASS_WORDS = 4 * int(re.search(r"#define MASS_BINS_0 (\d+)", _src).group(1))


def f32(x): return struct.unpack("<I", struct.pack("<f", x))[0]
def params(rows, t, k=0, p=1.0, minp=0.0, logprobs=0xFFFFFFFF):
    ln = f32(float(np.float32(np.log(minp)))) if minp > 0 else f32(float("-inf"))
    one = [f32(t), k, f32(p), f32(minp), f32(1.0), f32(0.0), f32(0.0), 0, 0, logprobs, 12345 + 0, 678, ln, 0, 0, 0]
    a = np.array([one] * rows, dtype=np.uint32)
    a[:, 10] = np.arange(rows, dtype=np.uint32) * 7919 + 1
    return torch.from_numpy(a.view(np.int32)).cuda()

def run(logits, prm, iters=20, chunked=True, rows_kernel=True, mass=False, chunk_elems=8192):
    rows, vocab = logits.shape
    n_chunks = -(-vocab // chunk_elems)
    out = torch.zeros(rows * OUT_WORDS, dtype=torch.int32, device="cuda")
    recs = torch.zeros(rows * n_chunks * CHUNK_WORDS, dtype=torch.int32, device="cuda")
    bins = torch.zeros(rows * n_chunks * MASS_WORDS if mass and chunked else 1, dtype=torch.int32, device="cuda")
    dummy = torch.zeros(16, dtype=torch.int32, device="cuda")
    work = logits.clone()
    common = [ctypes.c_uint64(work.data_ptr()), ctypes.c_uint32(vocab), ctypes.c_uint64(prm.data_ptr()),
              ctypes.c_uint64(dummy.data_ptr()), ctypes.c_uint64(dummy.data_ptr()), ctypes.c_uint64(dummy.data_ptr())]
    cv = common + [ctypes.c_uint64(recs.data_ptr()), ctypes.c_uint32(chunk_elems)]
    mass = mass and chunked
    rv = common + [ctypes.c_uint64(recs.data_ptr() if chunked else 0), ctypes.c_uint32(n_chunks if chunked else 0), ctypes.c_uint64(out.data_ptr()),
                   ctypes.c_uint64(bins.data_ptr() if mass else 0)]
    rv1, rv2 = rv + [ctypes.c_uint32(1 if mass else 0)], rv + [ctypes.c_uint32(2)]
    mv = [common[0], common[1], common[2], ctypes.c_uint64(out.data_ptr()), ctypes.c_uint64(bins.data_ptr()), ctypes.c_uint32(chunk_elems)]
    cargs = (ctypes.c_void_p * len(cv))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in cv])
    rargs = (ctypes.c_void_p * len(rv1))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in rv1])
    rargs2 = (ctypes.c_void_p * len(rv2))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in rv2])
    margs = (ctypes.c_void_p * len(mv))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in mv])
    stream = torch.cuda.current_stream().cuda_stream
    def launch():
        if chunked:
            assert cuda.cuLaunchKernel(fc, n_chunks, rows, 1, CHUNK_THREADS, 1, 1, 0, ctypes.c_void_p(stream), cargs, None) == 0
        if rows_kernel:
            assert cuda.cuLaunchKernel(fn, rows, 1, 1, SAMPLE_THREADS, 1, 1, 0, ctypes.c_void_p(stream), rargs, None) == 0
        if rows_kernel and mass:
            assert cuda.cuLaunchKernel(fm, n_chunks, rows, 1, CHUNK_THREADS, 1, 1, 0, ctypes.c_void_p(stream), margs, None) == 0
            assert cuda.cuLaunchKernel(fn, rows, 1, 1, SAMPLE_THREADS, 1, 1, 0, ctypes.c_void_p(stream), rargs2, None) == 0
    launch(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters): launch()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / iters * 1e3, out.view(rows, -1)[:, 0].cpu()

vocab = 151936
g = torch.Generator(device="cuda").manual_seed(0)
flat = torch.randn(64, vocab, device="cuda", generator=g) * 2.0
peaked = flat.clone(); peaked[:, :50] += 12.0   # a few strong candidates, like a trained model's
tied = torch.full_like(flat, -2.0); tied[:, 1000:1040] = 6.0   # 40 exactly equal leaders: filters cut inside ties
configs = {"greedy": dict(t=0.0), "T0.8": dict(t=0.8), "T0.8 lp0": dict(t=0.8, logprobs=0), "T0.8 lp5": dict(t=0.8, logprobs=5),
           "top-k40 p.95 minp.05": dict(t=0.8, k=40, p=0.95, minp=0.05), "top-p0.9": dict(t=0.7, p=0.9), "top-p0.3": dict(t=1.0, p=0.3), "top-k40": dict(t=0.8, k=40),
           "T1 top-p0.95": dict(t=1.0, p=0.95), "T1 min-p0.02": dict(t=1.0, minp=0.02), "T1 top-p0.95 lp5": dict(t=1.0, p=0.95, logprobs=5)}
def may_defer(c):
    """ferrite's rule (sampling.rs may_defer): rows the mass pass may take."""
    return c.get("t", 0) > 0 and c.get("k", 0) == 0 and (c.get("p", 1.0) < 1.0 or c.get("minp", 0.0) > 0)
print("| config | logits | chunk | 1 row (us) | 8 rows (us) | 8 rows, sample_chunks alone (us) | 8 rows, no mass pass (us) | 64 rows (us) | 64 rows, rows scanned (us) | same tokens |")
for name, c in configs.items():
    if only and name not in only[0]:
        continue
    for lname, L in (("flat", flat), ("peaked", peaked), ("tied", tied)):
        m = may_defer(c)
        t64r, tokr = run(L, params(64, **c), chunked=False)
        for ce in chunk_sizes:
            t1, _ = run(L[:1].contiguous(), params(1, **c), mass=m, chunk_elems=ce)
            t8, _ = run(L[:8].contiguous(), params(8, **c), mass=m, chunk_elems=ce)
            t8c, _ = run(L[:8].contiguous(), params(8, **c), rows_kernel=False, chunk_elems=ce)
            t8n, _ = run(L[:8].contiguous(), params(8, **c), chunk_elems=ce)
            t64, tok = run(L, params(64, **c), mass=m, chunk_elems=ce)
            print(f"| {name} | {lname} | {ce} | {t1:.1f} | {t8:.1f} | {t8c:.1f} | {t8n:.1f} | {t64:.1f} | {t64r:.1f} | {int((tok == tokr).sum())}/64 |", flush=True)
