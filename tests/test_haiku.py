"""Acceptance: the real model writes a haiku about GPU computing that includes the current
minute in words, through its chat template, sampled (temperature 0.7, seed from the clock, at
most 100 new tokens) and streamed. Artifacts go to .test-results/haiku/<run-id>/."""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
from pathlib import Path

import pytest

import ferrite
from haiku_prompt import PROMPT_VERSION, messages, minute_word, nonce, word_count

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.model


def load_model(path: str, device: str):
    if device == "cpu":
        return ferrite.Model.load(path, device="cpu")
    # Skip only when there is no GPU; any other failure is a failure.
    if hasattr(ferrite, "cuda_available"):
        if not ferrite.cuda_available():
            pytest.skip("no CUDA GPU (ferrite.cuda_available() is False)")
        return ferrite.Model.load(path, device=device)
    try:
        return ferrite.Model.load(path, device=device)
    except ferrite.CudaError as e:
        pytest.skip(f"no usable CUDA device: {e}")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_haiku(device):
    path = ferrite.fetch_test_model()
    model = load_model(path, device)
    tokenizer = ferrite.Tokenizer.from_gguf(path)
    generator = ferrite.Generator(model, tokenizer)

    now = dt.datetime.now()
    word = minute_word(now.minute)
    nonce_text = nonce()
    seed = time.time_ns() % (2**63)
    chat = messages(word, nonce_text)

    started = time.perf_counter()
    transcript = []
    stream = generator.stream(chat, max_tokens=100, temperature=0.7, seed=seed)
    for piece in stream:
        transcript.append({"t_s": round(time.perf_counter() - started, 4), "text": piece})
    result = stream.result
    output = "".join(p["text"] for p in transcript)
    occurrences = word_count(output, word)

    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{device}-{nonce_text}"
    out_dir = ROOT / ".test-results" / "haiku" / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    t = result.timings
    verification = {
        "run_id": run_id,
        "device": model.device,
        "model": path,
        "prompt_version": PROMPT_VERSION,
        "messages": chat,
        "minute": now.minute,
        "word": word,
        "nonce": nonce_text,
        "seed": result.seed,
        "temperature": 0.7,
        "max_tokens": 100,
        "output": output,
        "word_occurrences": occurrences,
        "finish_reason": result.finish_reason,
        "prompt_tokens": len(result.prompt_token_ids),
        "generated_tokens": len(result.token_ids),
        "token_ids": result.token_ids,
        "timings": t.as_dict(),
        "platform": platform.platform(),
        "ferrite_version": ferrite.__version__,
    }
    (out_dir / "verification.json").write_text(json.dumps(verification, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "transcript.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in transcript))
    verdict = "PASS" if occurrences == 1 and result.token_ids and output.strip() else "FAIL"
    (out_dir / "report.md").write_text(
        f"# Haiku acceptance run {run_id}: {verdict}\n\n"
        f"- device: {model.device}; seed {result.seed}; temperature 0.7; max 100 new tokens\n"
        f"- minute {now.minute} -> word \"{word}\", found {occurrences} time(s)\n"
        f"- {len(result.prompt_token_ids)} prompt tokens, {len(result.token_ids)} generated, "
        f"finish reason {result.finish_reason}\n"
        f"- prefill {t.prefill_tok_s:.1f} tok/s, decode {t.decode_tok_s:.1f} tok/s\n\n"
        f"## Prompt\n\n{chat[-1]['content']}\n\n## Output\n\n```\n{output}\n```\n"
    )
    print(f"\n--- haiku ({device}, word \"{word}\", seed {result.seed}) ---\n{output}\n--- {out_dir} ---")

    assert len(result.token_ids) > 0, "no tokens were generated"
    assert output.strip(), "the model generated no text"
    assert result.prompt_token_ids[-3:] == tokenizer.encode("<|im_start|>assistant\n"), "chat template not applied"
    assert occurrences == 1, f'"{word}" appears {occurrences} times in:\n{output}'
