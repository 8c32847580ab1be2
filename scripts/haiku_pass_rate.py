#!/usr/bin/env python3
"""Pass rate of the haiku acceptance check over all 60 minute words and several seeds.

    python scripts/haiku_pass_rate.py --seeds 3 [--variant 2] [--device cpu] [--batch 20]

Each (minute word, seed) is one attempt exactly as tests/test_haiku.py makes one (same prompt
with a fresh nonce, chat template, temperature 0.7, at most 100 new tokens, same check: the word
exactly once), except that attempts are decoded in batches (a prompt gets the same tokens in a
batch as alone with the same seed). The summary gives the pass rate of one attempt, p, and what it
implies for the test, which makes up to three independent attempts: it fails with probability
(1 - p)^3. Writes every output to .test-results/haiku_pass_rate/<time>-v<variant>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import ferrite  # noqa: E402
from haiku_prompt import PROMPT_VERSION, SYSTEM_PROMPTS, messages, minute_word, nonce, word_count  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per minute word (default 3)")
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--variant", type=int, default=PROMPT_VERSION, choices=sorted(SYSTEM_PROMPTS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=20, help="prompts decoded together (default 20)")
    ap.add_argument("--minutes", default="0-59", help="minute range, e.g. 0-59 or 5-9")
    ap.add_argument("--max-tokens", type=int, default=100,
                    help="new tokens at most (default 100, the test's; a haiku ends on EOS well before)")
    args = ap.parse_args()

    lo, hi = (int(x) for x in args.minutes.split("-"))
    path = ferrite.fetch_test_model()
    gen = ferrite.Generator(ferrite.Model.load(path, device=args.device), ferrite.Tokenizer.from_gguf(path))
    out_dir = ROOT / ".test-results" / "haiku_pass_rate"
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-v{args.variant}.json"

    runs = []
    started = time.perf_counter()
    for s in range(args.seeds):
        seed = args.first_seed + s
        minutes = list(range(lo, hi + 1))
        for i in range(0, len(minutes), args.batch):
            chunk = minutes[i : i + args.batch]
            convs = [messages(minute_word(m), nonce(), args.variant) for m in chunk]
            results = gen.generate(convs, max_tokens=args.max_tokens, temperature=0.7, seed=seed)
            for m, conv, r in zip(chunk, convs, results):
                word = minute_word(m)
                n = word_count(r.text, word)
                runs.append({
                    "minute": m, "word": word, "seed": seed, "occurrences": n,
                    "pass": n == 1 and bool(r.token_ids) and bool(r.text.strip()),
                    "at_least_once": n >= 1,
                    "finish_reason": r.finish_reason, "tokens": len(r.token_ids),
                    "prompt": conv[-1]["content"], "output": r.text,
                })
            done = len(runs)
            passed = sum(r["pass"] for r in runs)
            print(f"[{time.perf_counter() - started:7.0f} s] {done} runs, pass {passed}/{done} = {passed / done:.1%}",
                  file=sys.stderr, flush=True)
            out_file.write_text(json.dumps({"variant": args.variant, "system_prompt": SYSTEM_PROMPTS[args.variant],
                                            "device": args.device, "max_tokens": args.max_tokens,
                                            "first_seed": args.first_seed, "runs": runs},
                                           indent=1, ensure_ascii=False))

    n = len(runs)
    passed = sum(r["pass"] for r in runs)
    once_or_more = sum(r["at_least_once"] for r in runs)
    print(f"\nvariant {args.variant} on {args.device}: {n} runs ({hi - lo + 1} minute words x {args.seeds} seeds)")
    print(f"  pass (word exactly once): {passed}/{n} = {passed / n:.1%}")
    print(f"  word at least once:        {once_or_more}/{n} = {once_or_more / n:.1%}")
    p = passed / n
    # 95 % Wilson interval of the one-attempt pass rate, and the test's failure rate it implies.
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    lo_p, hi_p = centre - half, centre + half
    print(f"  one attempt, 95 % interval: {lo_p:.1%} .. {hi_p:.1%}")
    print(f"  test failure rate with 3 attempts, (1 - p)^3: {(1 - p) ** 3:.2e} "
          f"(interval {(1 - hi_p) ** 3:.1e} .. {(1 - lo_p) ** 3:.1e})")
    by_end = {}
    for r in runs:
        by_end[r["finish_reason"]] = by_end.get(r["finish_reason"], 0) + 1
    print(f"  finish reasons: {by_end}; longest output {max(r['tokens'] for r in runs)} tokens")
    failing = sorted({r["word"] for r in runs if not r["pass"]})
    print(f"  words that failed at least once: {', '.join(failing) or 'none'}")
    print(f"  outputs: {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
