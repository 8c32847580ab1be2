#!/usr/bin/env python3
"""ferrite vs llama.cpp (through llama-cpp-python) on CPU, same GGUF, same token ids.

    pip install llama-cpp-python      # builds llama.cpp from source; a benchmark dependency only
    python benches/bench_llamacpp_cpu.py [--model PATH] [--prompt-tokens 128] [--new-tokens 64] [--runs 3]

Prefill: one forward over a ~128-token prompt in a fresh sequence/context, timed to the logits of
its last token. Decode: 64 greedy steps after that prompt, one token per forward, argmax in
NumPy for both (so both pay the same per-step Python cost). Threads: all cores for both
(llama.cpp n_threads = os.cpu_count(); ferrite's rayon pool). Reports the median of --runs after
one warm-up run, and ratios ferrite / llama.cpp (> 1 means ferrite is faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

import ferrite

TEXT = (
    "GPUs execute thousands of threads in parallel, grouped into warps that run in lockstep on "
    "streaming multiprocessors. Memory bandwidth, not arithmetic, bounds most inference kernels: "
    "a matrix-vector product reads every weight once per token, so quantized weights that are "
    "dequantized on the fly in registers trade cheap arithmetic for scarce bandwidth. Batching "
    "several sequences turns those products into matrix-matrix products and raises arithmetic "
    "intensity. The key-value cache stores the attention keys and values of past tokens so each "
    "new token only attends to them instead of recomputing the whole prefix. Write a short "
    "summary of these ideas for a newcomer, then explain how a CPU differs, in detail."
)


def prompt_ids(tokenizer, n: int) -> list[int]:
    ids = tokenizer.encode(TEXT)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def bench_ferrite(path: str, ids: list[int], new_tokens: int, runs: int):
    model = ferrite.Model.load(path, device="cpu")
    prefill, decode, out_tokens = [], [], None
    for run in range(runs + 1):
        seq = model.new_sequence(len(ids) + new_tokens + 1)
        t0 = time.perf_counter()
        logits = model.forward(ids, seq=seq, last_only=True)
        t1 = time.perf_counter()
        toks = []
        tok = int(np.argmax(logits[0]))
        t2 = time.perf_counter()
        for _ in range(new_tokens):
            toks.append(tok)
            tok = int(np.argmax(model.forward([tok], seq=seq, last_only=True)[0]))
        t3 = time.perf_counter()
        model.free_sequence(seq)
        if run > 0:  # run 0 warms caches and page-ins the weights
            prefill.append(len(ids) / (t1 - t0))
            decode.append(new_tokens / (t3 - t2))
        out_tokens = toks
    return statistics.median(prefill), statistics.median(decode), out_tokens


def llamacpp_last_logits(llm) -> np.ndarray:
    """The logits of the last token of the last eval. llama-cpp-python >= 0.3 no longer copies
    them into ``llm.scores`` unless ``logits_all=True`` (which would also compute the LM head for
    every prompt token and slow prefill), so read them from the context (a view, no copy)."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def bench_llamacpp(path: str, ids: list[int], new_tokens: int, runs: int):
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=max(512, len(ids) + new_tokens + 8), n_batch=512,
                n_threads=os.cpu_count(), n_threads_batch=os.cpu_count(), verbose=False)
    prefill, decode, out_tokens = [], [], None
    for run in range(runs + 1):
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        toks = []
        tok = int(np.argmax(llamacpp_last_logits(llm)))
        t2 = time.perf_counter()
        for _ in range(new_tokens):
            toks.append(tok)
            llm.eval([tok])
            tok = int(np.argmax(llamacpp_last_logits(llm)))
        t3 = time.perf_counter()
        if run > 0:
            prefill.append(len(ids) / (t1 - t0))
            decode.append(new_tokens / (t3 - t2))
        out_tokens = toks
    import llama_cpp

    return statistics.median(prefill), statistics.median(decode), out_tokens, llama_cpp.__version__


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF path (default: the test model)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    path = args.model or ferrite.fetch_test_model()
    tokenizer = ferrite.Tokenizer.from_gguf(path)
    ids = prompt_ids(tokenizer, args.prompt_tokens)

    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: pip install llama-cpp-python", file=sys.stderr)
        return 2

    print(f"model: {os.path.basename(path)}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"prompt {len(ids)} tokens, {args.new_tokens} new tokens, median of {args.runs} runs", flush=True)
    l_pre, l_dec, l_toks, l_ver = bench_llamacpp(path, ids, args.new_tokens, args.runs)
    f_pre, f_dec, f_toks = bench_ferrite(path, ids, args.new_tokens, args.runs)
    same = sum(a == b for a, b in zip(l_toks, f_toks))
    first_diff = next((i for i, (a, b) in enumerate(zip(l_toks, f_toks)) if a != b), None)

    rows = [("prefill tok/s", l_pre, f_pre), ("decode tok/s", l_dec, f_dec)]
    print(f"\n| metric | llama.cpp {l_ver} | ferrite {ferrite.__version__} | ferrite / llama.cpp |")
    print("|---|---:|---:|---:|")
    for name, l, f in rows:
        print(f"| {name} | {l:.1f} | {f:.1f} | {f / l:.2f}x |")
    print(f"\ngreedy tokens identical for {same}/{len(f_toks)} steps"
          + ("" if first_diff is None else f" (first difference at step {first_diff})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
