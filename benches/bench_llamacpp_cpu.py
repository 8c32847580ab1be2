#!/usr/bin/env python3
"""ferrite vs llama.cpp (through llama-cpp-python) on CPU, same GGUF, same token ids, same threads.

    pip install llama-cpp-python      # builds llama.cpp from source; a benchmark dependency only
    python benches/bench_llamacpp_cpu.py [--model PATH] [--prompt-tokens 128,512] [--threads 2,1]
                                         [--new-tokens 64] [--runs 5]

For each thread count a child process loads both engines (RAYON_NUM_THREADS and ferrite's
``threads`` set to it; llama.cpp's n_threads and n_threads_batch too) and alternates them run by
run, so a noisy neighbour on a shared machine slows both alike. Prefill: one forward over the
prompt in a fresh sequence, timed to the logits of its last token. Decode: --new-tokens greedy
steps after the first prompt, one token per forward, argmax in NumPy for both. One warm-up run,
then --runs timed ones: the table shows medians, the spread (min-max) and the ratio of medians
ferrite / llama.cpp (> 1 means ferrite is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

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


class Ferrite:
    name = "ferrite"

    def __init__(self, path: str, threads: int, ctx: int):
        import inspect

        import ferrite

        kw = {"device": "cpu", "kv_cache_tokens": ctx}
        if "threads" in inspect.signature(ferrite.Model.load).parameters:
            kw["threads"] = threads  # else RAYON_NUM_THREADS (set by the parent) sizes it
        self.model = ferrite.Model.load(path, **kw)
        self.version = ferrite.__version__

    def prefill(self, ids: list[int]) -> float:
        seq = self.model.new_sequence(len(ids) + 1)
        t0 = time.perf_counter()
        self.model.forward(ids, seq=seq, last_only=True)
        dt = time.perf_counter() - t0
        self.model.free_sequence(seq)
        return dt

    def decode(self, ids: list[int], n: int) -> tuple[float, list[int]]:
        seq = self.model.new_sequence(len(ids) + n + 1)
        tok = int(np.argmax(self.model.forward(ids, seq=seq, last_only=True)[0]))
        toks = []
        t0 = time.perf_counter()
        for _ in range(n):
            toks.append(tok)
            tok = int(np.argmax(self.model.forward([tok], seq=seq, last_only=True)[0]))
        dt = time.perf_counter() - t0
        self.model.free_sequence(seq)
        return dt, toks


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, path: str, threads: int, ctx: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=path, n_ctx=ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)
        self.version = llama_cpp.__version__

    def last_logits(self) -> np.ndarray:
        """The logits of the last token of the last eval. llama-cpp-python >= 0.3 no longer
        copies them into ``llm.scores`` unless ``logits_all=True`` (which would also compute the
        LM head for every prompt token and slow prefill), so read them from the context."""
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),))

    def reset(self):
        self.llm.reset()
        if hasattr(self.llm._ctx, "kv_cache_clear"):
            self.llm._ctx.kv_cache_clear()
        else:  # newer bindings: the memory API
            import llama_cpp

            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llm.ctx), True)

    def prefill(self, ids: list[int]) -> float:
        self.reset()
        t0 = time.perf_counter()
        self.llm.eval(ids)
        return time.perf_counter() - t0

    def decode(self, ids: list[int], n: int) -> tuple[float, list[int]]:
        self.reset()
        self.llm.eval(ids)
        tok = int(np.argmax(self.last_logits()))
        toks = []
        t0 = time.perf_counter()
        for _ in range(n):
            toks.append(tok)
            self.llm.eval([tok])
            tok = int(np.argmax(self.last_logits()))
        return time.perf_counter() - t0, toks


def child(args) -> None:
    """Runs in a process whose thread settings are fixed; prints one JSON line of results."""
    import ferrite

    path = args.model or ferrite.fetch_test_model(verbose=False)
    tok = ferrite.Tokenizer.from_gguf(path)
    lengths = [int(n) for n in args.prompt_tokens.split(",")]
    prompts = {n: prompt_ids(tok, n) for n in lengths}
    ctx = max(lengths) + args.new_tokens + 16
    engines = [LlamaCpp(path, args.child, ctx), Ferrite(path, args.child, ctx)]
    res = {e.name: {f"pp{n}": [] for n in lengths} | {"decode": []} for e in engines}
    toks = {}
    for run in range(args.runs + 1):
        # Alternate which engine goes first so neither always follows the other's cache state.
        for e in engines if run % 2 == 0 else engines[::-1]:
            for n in lengths:
                dt = e.prefill(prompts[n])
                if run:
                    res[e.name][f"pp{n}"].append(n / dt)
            dt, toks[e.name] = e.decode(prompts[lengths[0]], args.new_tokens)
            if run:
                res[e.name]["decode"].append(args.new_tokens / dt)
    a, b = toks["llama.cpp"], toks["ferrite"]
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    print(json.dumps({"threads": args.child, "res": res, "same_prefix": same, "n_new": len(a),
                      "versions": {e.name: e.version for e in engines}}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF path (default: the test model)")
    ap.add_argument("--prompt-tokens", default="128,512", help="comma-separated prompt lengths")
    ap.add_argument("--threads", default=f"{os.cpu_count()},1", help="comma-separated thread counts")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: pip install llama-cpp-python", file=sys.stderr)
        return 2

    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "")
        fl = next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), [])
        flags = f"{model}; " + " ".join(x for x in fl if x.startswith(("avx512", "avx_vnni", "amx")) or x in ("avx2", "fma"))
    except OSError:
        flags = platform.processor()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} CPUs; {flags}")
    print(f"prompts {args.prompt_tokens} tokens, {args.new_tokens} new tokens; median of {args.runs} runs "
          f"(spread min-max), engines alternated run by run\n", flush=True)
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, __file__, "--child", str(threads), "--prompt-tokens", args.prompt_tokens,
               "--new-tokens", str(args.new_tokens), "--runs", str(args.runs)] + (["--model", args.model] if args.model else [])
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        v = r["versions"]
        print(f"| threads | metric (tok/s) | llama.cpp {v['llama.cpp']} | ferrite {v['ferrite']} | ferrite / llama.cpp |")
        print("|---:|---|---:|---:|---:|")
        for metric in r["res"]["ferrite"]:
            l, f = r["res"]["llama.cpp"][metric], r["res"]["ferrite"][metric]
            lm, fm = statistics.median(l), statistics.median(f)
            print(f"| {threads} | {metric} | {lm:.1f} ({min(l):.1f}-{max(l):.1f}) | {fm:.1f} ({min(f):.1f}-{max(f):.1f}) | "
                  f"**{fm / lm:.2f}x** |")
        print(f"\ngreedy tokens identical for the first {r['same_prefix']} of {r['n_new']} steps\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
