#!/usr/bin/env python3
"""Where a draw's time goes in the device sampler: kernels/sampling.cu compiled with
-DSAMPLE_PROBE=1, whose first block of each kernel stamps clock64() at the end of each phase
(after a __syncthreads, so the stamps cost a little themselves), launched through the driver API
on buffers made by torch, as benches/bench_cuda_sampler.py does (no dependent launch: each kernel
starts once the one before ended).

    python benches/probe_cuda_sampler.py [-DNAME=VALUE ...]

For greedy, T 0.8, the default filters (top-k 40, top-p 0.95, min-p 0.05), top-p 0.95 alone
and min-p 0.02 alone at T 1, on flat (N(0, 2)) and peaked logits, one and eight rows: each
phase's cycles since the one before, for sample_chunks and sample_rows, mean of 25 launches. The
last two also run as ferrite runs them, with the mass pass (sample_rows, sample_mass, sample_rows
again): their first sample_rows launch, sample_mass and the second launch are printed apart. Needs torch, libnvrtc.so.13
and libcuda.so.1 (the GPU machine has all three).
"""
import ctypes, re, sys, struct
from pathlib import Path
import numpy as np, torch
here = Path(__file__).resolve().parent
kernels = here.parent / "kernels"
sys.path.insert(0, str(here.parent / "scripts"))
from nvrtc_cubin import BASE_OPTIONS, compile_cubin
cuda = ctypes.CDLL("libcuda.so.1")
cubin = compile_cubin(kernels / "sampling.cu", ["--gpu-architecture=sm_90", *BASE_OPTIONS, "-DSAMPLE_PROBE=1", *sys.argv[1:]], headers_dir=kernels)
torch.cuda.init(); torch.zeros(1, device="cuda")
mod = ctypes.c_void_p(); assert cuda.cuModuleLoadData(ctypes.byref(mod), cubin) == 0
fn = ctypes.c_void_p(); assert cuda.cuModuleGetFunction(ctypes.byref(fn), mod, b"sample_rows") == 0
fc = ctypes.c_void_p(); assert cuda.cuModuleGetFunction(ctypes.byref(fc), mod, b"sample_chunks") == 0
fm = ctypes.c_void_p(); assert cuda.cuModuleGetFunction(ctypes.byref(fm), mod, b"sample_mass") == 0
gp = ctypes.c_uint64(); gsz = ctypes.c_size_t()
assert cuda.cuModuleGetGlobal_v2(ctypes.byref(gp), ctypes.byref(gsz), mod, b"g_probe") == 0
dev = ctypes.c_int(); cuda.cuCtxGetDevice(ctypes.byref(dev))
khz = ctypes.c_int(); cuda.cuDeviceGetAttribute(ctypes.byref(khz), 13, dev)
mhz = khz.value / 1e3
print(f"{torch.cuda.get_device_name()}, SM clock {mhz:.0f} MHz (attribute; boost may differ)")
OUT_WORDS, CHUNK_ELEMS, CHUNK_WORDS = 4 + 2 * 64, 8192, 16 + 2 * 64  # the chunk size of launches of many rows
N_PROBE = 3 * 40  # g_probe[3][40]
_src = (kernels / "sampling.cu").read_text()
MASS_WORDS = 4 * int(re.search(r"#define MASS_BINS_0 (\d+)", _src).group(1))
SAMPLE_THREADS = int(re.search(r"#define SAMPLE_THREADS (\d+)", _src).group(1))
CHUNK_THREADS = int(re.search(r"#define CHUNK_THREADS (\d+)", _src).group(1))
def f32(x): return struct.unpack("<I", struct.pack("<f", x))[0]
def params(rows, t, k=0, p=1.0, minp=0.0, logprobs=0xFFFFFFFF):
    ln = f32(float(np.float32(np.log(minp)))) if minp > 0 else f32(float("-inf"))
    one = [f32(t), k, f32(p), f32(minp), f32(1.0), f32(0.0), f32(0.0), 0, 0, logprobs, 12345, 678, ln, 0, 0, 0]
    a = np.array([one] * rows, dtype=np.uint32); a[:, 10] = np.arange(rows, dtype=np.uint32) * 7919 + 1
    return torch.from_numpy(a.view(np.int32)).cuda()
def probe(logits, prm, iters=30, mass=False):
    rows, vocab = logits.shape
    n_chunks = -(-vocab // CHUNK_ELEMS)
    out = torch.zeros(rows * OUT_WORDS, dtype=torch.int32, device="cuda")
    recs = torch.zeros(rows * n_chunks * CHUNK_WORDS, dtype=torch.int32, device="cuda")
    bins = torch.zeros(rows * n_chunks * MASS_WORDS if mass else 1, dtype=torch.int32, device="cuda")
    dummy = torch.zeros(16, dtype=torch.int32, device="cuda")
    acc = np.zeros((3, 40)); n = 0
    for it in range(iters):
        work = logits.clone()
        common = [ctypes.c_uint64(work.data_ptr()), ctypes.c_uint32(vocab), ctypes.c_uint64(prm.data_ptr()),
                  ctypes.c_uint64(dummy.data_ptr()), ctypes.c_uint64(dummy.data_ptr()), ctypes.c_uint64(dummy.data_ptr())]
        cv = common + [ctypes.c_uint64(recs.data_ptr()), ctypes.c_uint32(CHUNK_ELEMS)]
        # Without the mass pass (phase 0) rows the records do not settle are scanned by the same
        # block; with it, phase 1, sample_mass, phase 2.
        rv = common + [ctypes.c_uint64(recs.data_ptr()), ctypes.c_uint32(n_chunks), ctypes.c_uint64(out.data_ptr()), ctypes.c_uint64(bins.data_ptr() if mass else 0)]
        rv1, rv2 = rv + [ctypes.c_uint32(1 if mass else 0)], rv + [ctypes.c_uint32(2)]
        mv = [common[0], common[1], common[2], ctypes.c_uint64(out.data_ptr()), ctypes.c_uint64(bins.data_ptr()), ctypes.c_uint32(CHUNK_ELEMS)]
        pack = lambda vs: (ctypes.c_void_p * len(vs))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in vs])
        cargs, rargs, rargs2, margs = pack(cv), pack(rv1), pack(rv2), pack(mv)
        torch.cuda.synchronize()
        zero = (ctypes.c_uint64 * N_PROBE)()
        cuda.cuMemcpyHtoD_v2(gp, zero, 8 * N_PROBE)
        s = torch.cuda.current_stream().cuda_stream
        assert cuda.cuLaunchKernel(fc, n_chunks, rows, 1, CHUNK_THREADS, 1, 1, 0, ctypes.c_void_p(s), cargs, None) == 0
        assert cuda.cuLaunchKernel(fn, rows, 1, 1, SAMPLE_THREADS, 1, 1, 0, ctypes.c_void_p(s), rargs, None) == 0
        if mass:
            assert cuda.cuLaunchKernel(fm, n_chunks, rows, 1, CHUNK_THREADS, 1, 1, 0, ctypes.c_void_p(s), margs, None) == 0
            assert cuda.cuLaunchKernel(fn, rows, 1, 1, SAMPLE_THREADS, 1, 1, 0, ctypes.c_void_p(s), rargs2, None) == 0
        torch.cuda.synchronize()
        h = (ctypes.c_uint64 * N_PROBE)(); cuda.cuMemcpyDtoH_v2(h, gp, 8 * N_PROBE)
        a = np.array(h[:], dtype=np.float64).reshape(3, 40)
        if it >= 5:
            for k in range(3):
                base = np.full(40, a[k, 0])
                if k == 1 and a[1, 20] > 0:
                    base[20:] = a[1, 20]  # the second launch from its own entry
                    base[12:15] = a[1, 20]  # (its top-p levels stamp 12-14)
                acc[k] += np.where(a[k] > 0, a[k] - base, np.nan)
            n += 1
    return acc / n
vocab = 151936
g = torch.Generator(device="cuda").manual_seed(0)
flat = torch.randn(8, vocab, device="cuda", generator=g) * 2.0
peaked = flat.clone(); peaked[:, :50] += 12.0
names0 = ["entry", "wait+penalties", "load pass", "reductions", "z", "gumbel", "kth_key", "lists+record"]
names1 = ["entry", "wait", "record reductions", "z", "lists filled", "sort_prefix", "mass_terms", "filters (thread 0)", "gumbel draw", "write",
          "chunks declined", "scan: best", "4b level 0", "4b level 1", "4b level 2", "(none)", "scan: gumbel"]
# The mass pass: sample_mass's stamps, and the second sample_rows launch's (index, name) in order.
names2 = ["entry", "wait, deferred", "bins zeroed", "tokens binned", "bins written"]
phase2 = [(20, "entry"), (21, "wait"), (22, "records"), (23, "lse"), (12, "top-p level 0 (bins)"), (13, "level 1"), (14, "level 2"),
          (24, "gumbel (bins + one bin)"), (25, "alternatives")]
def line(label, a, k, order):
    cells, prev = [], 0.0
    for i, nm in order:
        v = a[k, i]
        if np.isnan(v): continue
        cells.append(f"{nm} +{v - prev:.0f}")
        prev = v
    print(label + ", ".join(cells) + f"  | total {prev:.0f} cyc = {prev / mhz:.2f} us")
configs = {"top-k40 p.95 minp.05": dict(t=0.8, k=40, p=0.95, minp=0.05), "greedy": dict(t=0.0), "T0.8": dict(t=0.8), "T1 top-p0.95": dict(t=1.0, p=0.95),
           "T1 min-p0.02": dict(t=1.0, minp=0.02)}
for cname, c in configs.items():
    deferrable = c["t"] > 0 and c.get("k", 0) == 0 and (c.get("p", 1.0) < 1.0 or c.get("minp", 0.0) > 0)
    for lname, L in (("flat", flat), ("peaked", peaked)):
        for rows in (1, 8):
            for mass in ((False, True) if deferrable else (False,)):
                a = probe(L[:rows].contiguous(), params(rows, **c), mass=mass)
                how = "with the mass pass" if mass else "one block scanning" if deferrable else ""
                print(f"\n{cname}, {lname}, {rows} row(s){', ' + how if how else ''}: cycles since block 0's entry (us at {mhz:.0f} MHz)")
                line("  sample_chunks: ", a, 0, list(enumerate(names0)))
                line("  sample_rows:   ", a, 1, list(enumerate(names1))[:12] if mass else list(enumerate(names1)))
                if mass:
                    line("  sample_mass:   ", a, 2, list(enumerate(names2)))
                    line("  sample_rows 2: ", a, 1, phase2)
