"""The cost of one decode step of a large batch through the Generator, prefill excluded.

    python benches/bench_decode_step.py MODEL.gguf [--batches 64,128] [--device cuda] [--prompt-tokens 128]

For each batch size: the same prompts (128 tokens each, or --prompt-tokens: a step then attends
to about that many keys a sequence) generated with 32 and with 160 new tokens
(temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, end of text ignored); the difference of the
two wall times over the 128 extra steps is the time of a decode step alone, sampling included,
without the prompt's prefill that bench_generate's figures also hold. Compare with llama.cpp's
batched-bench S_TG, which also counts decode steps only (and samples nothing).

Each length is timed --repeats times (default 2) and the fastest run kept, after a warm-up run
with the same sampling settings: a one-time cost (a graph recorded for the sampling path, a
weight copy made) that lands in one 32-token run would otherwise be subtracted from the 160-token
run and make the step look faster than it is (the nineteenth session saw a slower variant look
faster that way).
"""

from __future__ import annotations

import argparse
import time

import ferrite


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batches", default="64,128")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each length; the fastest is kept")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    n_prompt = args.prompt_tokens
    batches = [int(b) for b in args.batches.split(",")]
    # Every sequence of the largest batch at once (128-token prompt + 160 new, blocks of 16), at
    # least the default cache: with fewer slots the engine preempts and re-prefills, and the
    # step no longer measures decode (256 sequences need 74k tokens).
    per_seq = -(-(n_prompt + 160 + 1) // 16) * 16
    m = ferrite.Model.load(args.model, device=args.device, max_batch=max(batches),
                           kv_cache_tokens=max(32768, max(batches) * per_seq))
    gen = ferrite.Generator(m, ferrite.Tokenizer.from_gguf(args.model))
    sampling = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=1, ignore_eos=True)
    print(f"device {m.device}")
    print("| sequences | 32 new tokens (ms) | 160 new tokens (ms) | one decode step (ms) | decode tok/s |")
    print("| --- | --- | --- | --- | --- |")
    for b in batches:
        prompts = [([100 + i, 200, 300, 400] * (n_prompt // 4 + 1))[:n_prompt] for i in range(b)]
        gen.generate(prompts, max_tokens=32, **sampling)  # warm-up: kernels, weight copies, graphs
        wall = {}
        for n in (32, 160):
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                gen.generate(prompts, max_tokens=n, **sampling)
                runs.append(time.perf_counter() - t0)
            wall[n] = min(runs)
        step = (wall[160] - wall[32]) / 128
        print(f"| {b} | {wall[32] * 1e3:.1f} | {wall[160] * 1e3:.1f} | {step * 1e3:.3f} | {b / step:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
