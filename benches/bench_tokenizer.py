"""Encode throughput: ferrite.Tokenizer vs HF `tokenizers` built from the same GGUF.

    python benches/bench_tokenizer.py [--repeat 5] [--threads N]

Corpus: tests/data/tokenizer_corpus (cases + long document) repeated to ~2 MB; "single" encodes
the long document as one text, "batch" encodes many short texts with encode_batch. Both sides
produce identical ids (checked before timing). Prints MB/s and ferrite/HF ratios.
"""

import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import ferrite  # noqa: E402
from test_tokenizer import QWEN2_SPLIT, CONTROL, USER_DEFINED  # noqa: E402


def build_hf(path):
    import gguf
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    f = gguf.GGUFReader(path).fields
    tokens = list(f["tokenizer.ggml.tokens"].contents())
    types = list(f["tokenizer.ggml.token_type"].contents())
    merges = [tuple(m.split(" ", 1)) for m in f["tokenizer.ggml.merges"].contents()]
    hf = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, byte_fallback=False))
    hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == CONTROL])
    hf.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == USER_DEFINED])
    return hf


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--target-mb", type=float, default=2.0)
    args = ap.parse_args()

    path = ferrite.fetch_test_model()
    corpus = ROOT / "tests" / "data" / "tokenizer_corpus"
    cases = json.loads((corpus / "cases.json").read_text(encoding="utf-8"))
    doc = (corpus / "long_document.txt").read_text(encoding="utf-8")
    reps = max(1, int(args.target_mb * 1e6 / len(doc.encode())))
    single = doc * reps
    # Batch: paragraphs of the document plus the cases, ~the same bytes as `single`.
    paragraphs = [p for p in doc.split("\n\n") if p] + cases
    batch = paragraphs * max(1, int(args.target_mb * 1e6 / sum(len(p.encode()) for p in paragraphs)))
    single_mb = len(single.encode()) / 1e6
    batch_mb = sum(len(p.encode()) for p in batch) / 1e6

    t0 = time.perf_counter()
    tok = ferrite.Tokenizer.from_gguf(path)
    load_ferrite = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = build_hf(path)
    load_hf = time.perf_counter() - t0

    # Same ids first: a fast wrong tokenizer is worthless.
    assert tok.encode(single, add_special_tokens=False) == hf.encode(single, add_special_tokens=False).ids
    assert tok.encode_batch(batch[:2000], add_special_tokens=False) == [
        e.ids for e in hf.encode_batch(batch[:2000], add_special_tokens=False)]

    rows = []
    # Cold: a fresh tokenizer, so ferrite's per-word cache starts empty (HF's BPE cache too).
    cold_tok = ferrite.Tokenizer.from_gguf(path)
    cold_hf = build_hf(path)
    t = time.perf_counter(); cold_tok.encode(single, add_special_tokens=False); f_cold = time.perf_counter() - t
    t = time.perf_counter(); cold_hf.encode(single, add_special_tokens=False); h_cold = time.perf_counter() - t
    rows.append(("encode, one text, cold cache", single_mb, f_cold, h_cold))
    f = best_of(lambda: tok.encode(single, add_special_tokens=False), args.repeat)
    h = best_of(lambda: hf.encode(single, add_special_tokens=False), args.repeat)
    rows.append(("encode, one text", single_mb, f, h))
    f = best_of(lambda: [tok.encode(p, add_special_tokens=False) for p in batch], args.repeat)
    h = best_of(lambda: [hf.encode(p, add_special_tokens=False) for p in batch], args.repeat)
    rows.append((f"encode, loop over {len(batch)} texts", batch_mb, f, h))
    f = best_of(lambda: tok.encode_batch(batch, add_special_tokens=False), args.repeat)
    h = best_of(lambda: hf.encode_batch(batch, add_special_tokens=False), args.repeat)
    rows.append((f"encode_batch, {len(batch)} texts", batch_mb, f, h))
    ids = tok.encode(single, add_special_tokens=False)
    f = best_of(lambda: tok.decode(ids), args.repeat)
    h = best_of(lambda: hf.decode(ids, skip_special_tokens=False), args.repeat)
    rows.append((f"decode, {len(ids)} ids", single_mb, f, h))

    print(f"tokenizer: {path}  cores: {os.cpu_count()}  ferrite {ferrite.__version__}")
    print(f"load: ferrite {load_ferrite*1e3:.0f} ms, HF (from the same GGUF) {load_hf*1e3:.0f} ms")
    print(f"{'case':<40} {'MB':>6} {'ferrite MB/s':>13} {'HF MB/s':>9} {'ferrite/HF':>11}")
    for name, mb, f, h in rows:
        print(f"{name:<40} {mb:>6.2f} {mb/f:>13.1f} {mb/h:>9.1f} {h/f:>10.2f}x")


if __name__ == "__main__":
    main()
