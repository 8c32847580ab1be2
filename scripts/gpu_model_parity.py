"""GPU-vs-CPU model parity: loads one GGUF with ``ferrite.Model.load(path, device="cuda")`` and
``device="cpu"`` and compares, over several prompts:

- logits at every position: max |gpu - cpu|, and that relative to max |cpu|;
- top-1 agreement over all positions;
- greedy continuations of 32 tokens, each model feeding its own choices (first divergence, and
  the CPU's top-1/top-2 logit gap there, to tell near-ties from real errors);
- tokens/s of the greedy decode on each device (informative only).

    python scripts/gpu_model_parity.py MODEL.gguf [--label NAME] [--report FILE.jsonl]

Prints one line per prompt and appends a JSON row per prompt to --report for gpu_check.sh's
table. Exits 0 when it ran (the numbers speak), 2 when the CUDA model cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import ferrite

GREEDY_TOKENS = 32


def prompts(vocab: int, real: bool) -> list[list[int]]:
    rng = np.random.default_rng(1234)
    out = [[9707], [9707, 11, 1879, 0, 358, 1079, 264, 3460]]
    if real:
        try:
            tok = ferrite.Tokenizer.from_gguf(ARGS.model)
            out.append(list(tok.encode("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n")))
            out.append(list(tok.encode("The capital of France is")))
        except Exception as e:  # noqa: BLE001 - the tokenizer API may differ; ids suffice
            print(f"(tokenizer unavailable for text prompts: {e})", flush=True)
    out.append(rng.integers(0, min(vocab, 150000), 33).tolist())
    out.append(rng.integers(0, min(vocab, 150000), 130).tolist())
    return out


def greedy(model, prompt: list[int], n: int) -> tuple[list[int], list[np.ndarray], float]:
    seq = model.new_sequence(max_tokens=len(prompt) + n + 1)
    try:
        logits = model.forward(prompt, last_only=True, seq=seq)[0]
        toks, rows = [], []
        t0 = time.perf_counter()
        for _ in range(n):
            rows.append(logits)
            t = int(np.argmax(logits))
            toks.append(t)
            logits = model.forward([t], last_only=True, seq=seq)[0]
        dt = time.perf_counter() - t0
    finally:
        model.free_sequence(seq)
    return toks, rows, n / dt


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--label", default="model")
    ap.add_argument("--report")
    ap.add_argument("--real", action="store_true", help="the real model: also try text prompts")
    ap.add_argument("--greedy-prompts", type=int, default=2, help="greedy continuations for the first N prompts")
    ARGS = ap.parse_args()

    def report(row: dict) -> None:
        if ARGS.report:
            with open(ARGS.report, "a") as f:
                f.write(json.dumps(row) + "\n")

    t0 = time.perf_counter()
    # The CPU's float32 path (dequantized weights x float32 activations), which the CPU tests
    # prove against a float64 reference: the GPU computes the same function.
    cpu = ferrite.Model.load(ARGS.model, device="cpu", exact_matmul=True)
    t_cpu = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        gpu = ferrite.Model.load(ARGS.model, device="cuda")
        t_gpu = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        msg = f"{type(e).__name__}: {e}"
        print(f"[{ARGS.label}] CUDA model could not be loaded: {msg}", flush=True)
        report({"kind": "parity", "label": ARGS.label, "error": msg[:300]})
        return 2
    print(f"[{ARGS.label}] load: cpu {t_cpu:.1f}s, cuda {t_gpu:.1f}s", flush=True)
    vocab = cpu.config["vocab_size"]
    for i, p in enumerate(prompts(vocab, ARGS.real)):
        lc = cpu.forward(p)
        lg = gpu.forward(p)
        assert lc.shape == lg.shape == (len(p), vocab), (lc.shape, lg.shape)
        finite = bool(np.isfinite(lg).all())
        diff = float(np.abs(lg.astype(np.float64) - lc).max())
        scale = float(np.abs(lc).max())
        top1 = float((lg.argmax(-1) == lc.argmax(-1)).mean())
        row = {"kind": "parity", "label": ARGS.label, "prompt": i, "tokens": len(p), "max_abs_diff": diff,
               "rel_diff": diff / max(scale, 1e-30), "top1_agree": top1, "finite": finite}
        line = f"[{ARGS.label}] prompt {i} ({len(p)} tok): max|diff| {diff:.3e} (rel {row['rel_diff']:.2e}), top-1 {top1 * 100:.1f}%"
        if i < ARGS.greedy_prompts:
            tc, rows_c, tps_c = greedy(cpu, p, GREEDY_TOKENS)
            tg, _, tps_g = greedy(gpu, p, GREEDY_TOKENS)
            same = next((k for k in range(GREEDY_TOKENS) if tc[k] != tg[k]), GREEDY_TOKENS)
            gap = None
            if same < GREEDY_TOKENS:
                srt = np.sort(rows_c[same])
                gap = float(srt[-1] - srt[-2])
            row.update({"greedy_same": same, "greedy_n": GREEDY_TOKENS, "cpu_gap_at_divergence": gap,
                        "decode_tok_s_cpu": tps_c, "decode_tok_s_gpu": tps_g})
            line += (f", greedy {same}/{GREEDY_TOKENS} same"
                     + (f" (cpu top-2 gap there {gap:.3g})" if gap is not None else "")
                     + f", decode tok/s cpu {tps_c:.1f} gpu {tps_g:.1f}")
        report(row)
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
