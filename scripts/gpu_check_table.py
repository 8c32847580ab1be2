"""Prints gpu_check.sh's summary table from its JSON-lines report and pytest's JUnit files.

    python scripts/gpu_check_table.py REPORT.jsonl [JUNIT.xml ...]
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main() -> int:
    rows = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line.strip()]
    print("\n==================== GPU check summary ====================")
    print(f"{'step':<20} {'result':<8} {'seconds':>8}")
    for r in rows:
        if r.get("kind") == "step":
            print(f"{r['step']:<20} {'ok' if r['rc'] == 0 else 'FAILED':<8} {r['seconds']:>8}")
    for path in sys.argv[2:]:
        if not Path(path).exists():
            continue
        s = ET.parse(path).getroot()
        s = s if s.tag == "testsuite" else s.find("testsuite")
        print(f"{Path(path).stem:<20} tests {s.get('tests')}, failures {s.get('failures')}, errors {s.get('errors')}, skipped {s.get('skipped')}")

    deq = [r for r in rows if "identical" in r]
    if deq:
        print(f"\n{'dequant type':<12} {'GPU == CPU bitwise':<20} {'elements checked':>16}  source")
        for r in deq:
            ident = {True: "yes", False: "NO", None: "unsupported"}[r["identical"]]
            print(f"{r['type']:<12} {ident:<20} {r['elements']:>16,}  {r.get('note', 'random blocks')}")
    for r in rows:
        if r.get("kind") == "upload":
            print(f"\nupload {r['mib']} MiB host->device: pinned staging {r['staged_gbps']:.2f} GB/s, pageable {r['pageable_gbps']:.2f} GB/s")
    par = [r for r in rows if r.get("kind") == "parity"]
    if par:
        print(f"\n{'model':<10} {'prompt':>6} {'tokens':>6} {'max|diff|':>10} {'rel':>9} {'top-1':>7} {'greedy same':>11} {'tok/s cpu':>9} {'tok/s gpu':>9}")
        for r in par:
            if "error" in r:
                print(f"{r['label']:<10} CUDA model not loadable: {r['error']}")
                continue
            greedy = f"{r['greedy_same']:>5}/{r['greedy_n']:<5}" if "greedy_same" in r else f"{'-':>11}"
            speeds = f"{r['decode_tok_s_cpu']:>9.1f} {r['decode_tok_s_gpu']:>9.1f}" if "decode_tok_s_gpu" in r else ""
            print(f"{r['label']:<10} {r['prompt']:>6} {r['tokens']:>6} {r['max_abs_diff']:>10.3e} {r['rel_diff']:>9.2e} "
                  f"{r['top1_agree'] * 100:>6.1f}% {greedy} {speeds}")
    types = [r for r in rows if r.get("kind") == "model_type"]
    if types:
        print(f"\n{'model of one type':<18} {'prefill vs cpu':>14} {'vs float64':>11} {'decode':>9} {'batch 1..10 (max)':>18}")
        for r in types:
            batch = max(v for k, v in r.items() if k.startswith("batch"))
            ref = r.get("prefill_rel_vs_reference")
            print(f"{r['type']:<18} {r['prefill_rel_vs_cpu']:>14.2e} {ref if ref is None else format(ref, '.2e'):>11} "
                  f"{r['decode_rel_vs_prefill']:>9.2e} {batch:>18.2e}")
    for r in rows:
        if r.get("kind") == "real_logits":
            print(f"real model '{r['prompt']}' ({r['tokens']} tok): GPU vs CPU max|diff| {r['max_abs_diff']:.3e} "
                  f"(relative {r['rel_vs_cpu']:.2e}), top-1 agreement {r['top1'] * 100:.1f}%")
        if r.get("kind") == "real_greedy":
            print(f"real model greedy: {r['same']}/{r['of']} tokens identical on GPU and CPU")
    out_dir = Path(sys.argv[1]).parent
    for bench in sorted(out_dir.glob("bench_*.json")):
        b = json.loads(bench.read_text())
        if not isinstance(b, dict) or "ferrite" not in b:
            continue  # bench_generate's JSON: its table is in its own log
        fr, hf = b["ferrite"], b.get("transformers") or {}
        print(f"\n{bench.stem} ({b['gpu']}): ferrite vs transformers ({hf.get('mode', 'not measured')})")
        for label, key in (("load s", "load_s"), ("prefill tok/s", "prefill_tok_s"),
                           ("decode b1 tok/s", "decode_b1_tok_s"), ("decode b64 tok/s", "decode_b64_tok_s")):
            a, c = fr.get(key), hf.get(key)
            ratio = "" if not a or not c else f"{(c / a) if key == 'load_s' else (a / c):.1f}x"
            fa = f"{a:.2f}" if isinstance(a, (int, float)) else "-"
            fc = f"{c:.2f}" if isinstance(c, (int, float)) else "-"
            print(f"  {label:<18} {fa:>10} {fc:>10} {ratio:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
