#!/usr/bin/env python3
"""Where a CUDA decode step's time goes: per-kernel GPU time (CUPTI, through PyTorch's profiler,
which records every kernel of the process, ferrite's included) and the wall time of a step with
and without CUDA graphs, split into the forward itself and the host-side logits handling.

    python benches/profile_cuda_decode.py MODEL.gguf [--steps 64] [--batch N]
    python benches/profile_cuda_decode.py MODEL.gguf --child timeline [--batch N] [--steps 32]

With --batch N > 1 the kernel table profiles N sequences through the Generator (the engine's
decode steps with the device sampler) instead of one sequence through Model.forward.

The kernel table sums each kernel's own GPU time, which only adds up to a step with CUDA graphs
and dependent launch off (a kernel that starts early and waits for the one before would count
its wait). `--child timeline` keeps both on, as a decode step runs, and charges each kernel the
time by which it moves the step's end past the kernels before it (its end minus the latest end
so far), and each gap in which no kernel runs to the kernel after it: the columns add up to the
step. Launches are told apart by kernel and grid (q/k/v, o, gate/up and down differ in grid).
It runs the Generator with T 0.8, top-k 40, top-p 0.95, min-p 0.05, as bench_generate's mode.

Needs torch (for the profiler) on the GPU machine; prints tables only.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np


def step_times(path: str, steps: int, batch: int) -> dict:
    import ferrite

    m = ferrite.Model.load(path, device="cuda", kv_cache_tokens=8192)
    seqs = [m.new_sequence(max_tokens=steps + 40) for _ in range(batch)]
    m.forward_batch([[100 + i, 200, 300, 400] for i in range(batch)], seqs=seqs)
    toks = [[500 + i] for i in range(batch)]
    for _ in range(3):
        m.forward_batch(toks, seqs=seqs)
    fwd, argmax = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = m.forward_batch(toks, seqs=seqs)
        t1 = time.perf_counter()
        toks = [[int(np.argmax(o[0]))] for o in out]
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        argmax.append(t2 - t1)
    return {"forward_ms": 1e3 * statistics.median(fwd), "argmax_ms": 1e3 * statistics.median(argmax)}


def device_us(evt) -> float:
    """GPU microseconds of a profiler average (the attribute's name changed in torch 2.4)."""
    return float(getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0.0))


def timeline(path: str, steps: int, batch: int) -> None:
    """Each kernel's share of a decode step as it runs (graphs and dependent launch as set)."""
    import json
    import tempfile

    import torch
    from torch.profiler import ProfilerActivity, profile

    import ferrite

    torch.cuda.init()
    m = ferrite.Model.load(path, device="cuda", max_batch=max(batch, 1))
    gen = ferrite.Generator(m, ferrite.Tokenizer.from_gguf(path))
    ps = [[100 + i, 200, 300, 400] * 32 for i in range(batch)]
    opts = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=1, ignore_eos=True)
    gen.generate(ps, max_tokens=steps + 2, **opts)  # graphs recorded, kernels loaded
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        gen.generate(ps, max_tokens=steps + 2, **opts)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        p.export_chrome_trace(f.name)
        with open(f.name) as trace:
            events = json.load(trace)["traceEvents"]
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: float(e["ts"]))
    # A step ends with the sampler's last kernel: keep whole decode steps, after the prompt's
    # step and the first decode step.
    ends = [i for i, e in enumerate(kernels) if e["name"].startswith("sample_rows")]
    if len(ends) < 4:
        # The host sampler (FERRITE_HOST_SAMPLING=1) launches no sample_rows to mark the steps.
        sys.exit(f"timeline: {len(ends)} sampler launches found, too few to mark steps; kernels: "
                 f"{sorted({e['name'][:40] for e in kernels})[:20]}")
    first, last = ends[1] + 1, ends[-1]
    n_steps = len(ends) - 2
    charged: dict[str, list[float]] = {}
    latest = float(kernels[first - 1]["ts"]) + float(kernels[first - 1]["dur"])
    start = latest
    for e in kernels[first : last + 1]:
        ts, dur = float(e["ts"]), float(e["dur"])
        grid = (e.get("args") or {}).get("grid")
        name = re.sub(r"\(.*", "", e["name"])[:48] + (f" {tuple(grid)}" if grid else "")
        c = charged.setdefault(name, [0.0, 0.0, 0])
        c[0] += max(0.0, ts - latest)  # idle before it
        c[1] += max(0.0, ts + dur - max(latest, ts))  # its own extension of the step
        c[2] += 1
        latest = max(latest, ts + dur)
    span = latest - start
    print(f"{batch} sequence(s), {n_steps} decode steps: {span / n_steps:.1f} us a step on the GPU's clock "
          f"({1e6 * batch * n_steps / span:,.0f} tok/s)")
    print("| kernel | launches a step | us a step (its own) | us a step (idle before it) | us a launch, both |")
    print("| --- | --- | --- | --- | --- |")
    for name, (idle, own, count) in sorted(charged.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        print(f"| {name} | {count / n_steps:.1f} | {own / n_steps:.1f} | {idle / n_steps:.1f} | {(own + idle) / count:.2f} |")
    idle = sum(c[0] for c in charged.values())
    print(f"idle (no kernel running) {idle / n_steps:.1f} us a step, {100 * idle / span:.1f} %")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--child", choices=["time", "kernels", "timeline"])
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()

    if args.child == "time":
        r = step_times(args.model, args.steps, args.batch)
        print(f"RESULT forward {r['forward_ms']:.3f} ms, host argmax {r['argmax_ms']:.3f} ms")
        return 0
    if args.child == "timeline":
        timeline(args.model, args.steps, args.batch)
        return 0
    if args.child == "kernels":
        import torch
        from torch.profiler import ProfilerActivity, profile

        import ferrite

        torch.cuda.init()
        if args.batch > 1:
            # A batch through the Generator: the engine's step, the device sampler, the
            # large-batch projections, 128-token prompts as in bench_generate.
            m = ferrite.Model.load(args.model, device="cuda", max_batch=args.batch)
            gen = ferrite.Generator(m, ferrite.Tokenizer.from_gguf(args.model))
            ps = [[100 + i, 200, 300, 400] * 32 for i in range(args.batch)]
            gen.generate(ps, max_tokens=8, ignore_eos=True)
            # The decode steps alone: the same run with one new token (prefill and first token)
            # is subtracted kernel by kernel, as llama-batched-bench's S_TG leaves the prompt out.
            per_kernel = []
            for n in (1, 1 + args.steps):
                with profile(activities=[ProfilerActivity.CUDA]) as p:
                    gen.generate(ps, max_tokens=n, temperature=0.8, seed=1, ignore_eos=True)
                per_kernel.append({e.key: (device_us(e), e.count) for e in p.key_averages()})
            first, both = per_kernel
            rows = sorted(((k, (us - first.get(k, (0.0, 0))[0]) / args.steps, (c - first.get(k, (0.0, 0))[1]) / args.steps)
                           for k, (us, c) in both.items()), key=lambda r: -r[1])
            total = sum(us for _, us, _ in rows)
            print(f"Generator, {args.batch} sequences: GPU time of one decode step (runs of {1 + args.steps} and 1 new tokens, "
                  f"difference / {args.steps}): {total:.1f} us")
            print("| kernel | us a step | launches a step | share |\n| --- | --- | --- | --- |")
            for k, us, c in rows:
                if us > 0.005 * total:
                    print(f"| {k[:60]} | {us:.1f} | {c:.1f} | {100 * us / total:.1f} % |")
        else:
            m = ferrite.Model.load(args.model, device="cuda", kv_cache_tokens=8192)
            s = m.new_sequence(max_tokens=args.steps + 40)
            m.forward([100, 200, 300, 400], seq=s)
            for _ in range(3):
                m.forward([500], seq=s)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(args.steps):
                    m.forward([500], seq=s)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
        return 0

    for graphs in ("1", "0"):
        for batch in sorted({1, 8, args.batch}):
            env = dict(os.environ, FERRITE_CUDA_GRAPHS=graphs)
            r = subprocess.run([sys.executable, __file__, args.model, "--child", "time", "--steps", str(args.steps),
                                "--batch", str(batch)], env=env, capture_output=True, text=True)
            line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT")), r.stderr[-500:])
            print(f"graphs={graphs} batch={batch}: {line}", flush=True)
    env = dict(os.environ, FERRITE_CUDA_GRAPHS="0")
    r = subprocess.run([sys.executable, __file__, args.model, "--child", "kernels", "--steps", "16", "--batch", str(args.batch)], env=env,
                       capture_output=True, text=True)
    print(r.stdout[-6000:] or r.stderr[-2000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
