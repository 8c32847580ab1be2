"""The engine on the GPU: paged attention through block tables, prefix reuse, preemption and the
device sampler, each against the same requests on the CPU engine or alone on the GPU.

The model is tiny and random with the real vocabulary (as in test_engine.py); on the GPU the
rows of a step go through different kernels depending on how many rows there are, so results
are compared within rounding (greedy tokens exactly, log-probabilities to 1e-4) rather than bit
for bit. The GPU models use ``exact_matmul=True`` (float32 for batches of more than 4 rows): the
default's f16 GEMM would move a large batch's logits by more than that bound, which is a precision
question (test_cuda_model.py), not the engine's.
"""

import os

import numpy as np
import pytest

import ferrite
from engine_overlap import REQUESTS, overlapped_and_waiting
from synthetic_model import write_tiny_model

pytestmark = [pytest.mark.cuda, pytest.mark.model]

CONTEXT = 2048
GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module", autouse=True)
def need_cuda():
    if not ferrite.cuda_available():
        pytest.skip("no CUDA device")


@pytest.fixture(scope="module")
def tokenizer():
    # FERRITE_TOKENIZER_GGUF: a file with the real model's tokenizer metadata only (the GPU check
    # carries one instead of uploading the whole model).
    return ferrite.Tokenizer.from_gguf(os.environ.get("FERRITE_TOKENIZER_GGUF") or ferrite.fetch_test_model())


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("cuda_engine") / "tiny.gguf"
    return write_tiny_model(
        path, arch="qwen2", biases=True, vocab=tokenizer.vocab_size, context=CONTEXT, seed=3, spread=0.3, tied=False
    )


def conv(i):
    return [{"role": "user", "content": f"Tell me about thing number {i}, please."}]


def test_gpu_engine_matches_the_cpu_engine_and_itself_alone(tiny_path, tokenizer):
    gpu = ferrite.Generator(ferrite.Model.load(tiny_path, device="cuda", exact_matmul=True), tokenizer)
    cpu = ferrite.Generator(ferrite.Model.load(tiny_path, device="cpu", exact_matmul=True), tokenizer)
    ps = [conv(i) for i in range(12)]
    batch = gpu.generate(ps, max_tokens=24, logprobs=2, **GREEDY)
    for p, r in zip(ps, batch):
        alone = gpu.generate(p, max_tokens=24, logprobs=2, **GREEDY)
        assert r.token_ids == alone.token_ids
        assert np.allclose(r.logprobs, alone.logprobs, atol=1e-4)
        ref = cpu.generate(p, max_tokens=24, logprobs=2, **GREEDY)
        assert r.token_ids == ref.token_ids
        assert np.allclose(r.logprobs, ref.logprobs, atol=1e-3)


def test_gpu_prefix_reuse_and_preemption(tiny_path, tokenizer):
    system = {"role": "system", "content": "Answer briefly and precisely. " * 10}
    ps = [[system, {"role": "user", "content": f"Item {i}?"}] for i in range(10)]
    small = ferrite.Generator(ferrite.Model.load(tiny_path, device="cuda", kv_cache_tokens=512, exact_matmul=True), tokenizer)
    plain = ferrite.Generator(ferrite.Model.load(tiny_path, device="cuda", prefix_caching=False, exact_matmul=True), tokenizer)
    got = small.generate(ps, max_tokens=120, logprobs=0, **GREEDY)
    stats = small.engine.stats()
    assert stats["preemptions"] > 0 and stats["cached_prompt_tokens"] > 0
    for p, r in zip(ps, got):
        ref = plain.generate(p, max_tokens=120, logprobs=0, **GREEDY)
        assert r.token_ids == ref.token_ids
        assert np.allclose(r.logprobs, ref.logprobs, atol=1e-4)


def test_gpu_sampled_requests_reproduce_alone_and_in_a_batch(tiny_path, tokenizer):
    gen = ferrite.Generator(ferrite.Model.load(tiny_path, device="cuda", exact_matmul=True), tokenizer)
    ps = [conv(i) for i in range(8)]
    kw = dict(max_tokens=32, temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, seed=7, ignore_eos=True)
    batch = gen.generate(ps, **kw)
    for p, r in zip(ps, batch):
        assert gen.generate(p, **kw).token_ids == r.token_ids
    assert len({tuple(r.token_ids) for r in batch}) > 1


def test_gpu_steps_queued_ahead_of_their_draws_equal_the_engine_that_waits(tiny_path, tokenizer, monkeypatch):
    # The GPU engine queues each step before taking the previous step's draws, feeding the drawn
    # tokens on the device (FERRITE_ENGINE_OVERLAP=0 waits instead): the same results
    # (engine_overlap.py), early ends and preemption included.
    def make():
        model = ferrite.Model.load(tiny_path, device="cuda", kv_cache_tokens=160, max_step_tokens=64, exact_matmul=True)
        return ferrite.Engine(model, tokenizer)

    got, want = overlapped_and_waiting(make, [conv(i) for i in range(len(REQUESTS))], tokenizer, monkeypatch)
    for g, w in zip(got, want):
        assert np.allclose(g.logprobs or [], w.logprobs or [], atol=1e-4)


def test_gpu_queued_draws_of_more_rows_than_one_logits_chunk(tiny_path, tokenizer, monkeypatch):
    # 300 sequences drawing in one step take two chunks of logits (256 rows at most each), both
    # drawn into one set before the step's draws come back.
    prompts = [[100 + i, 200 + i % 7, 300] for i in range(300)]

    def run_all(overlap):
        monkeypatch.setenv("FERRITE_ENGINE_OVERLAP", overlap)
        gen = ferrite.Generator(ferrite.Model.load(tiny_path, device="cuda", max_batch=300, exact_matmul=True), tokenizer)
        return gen.generate(prompts, max_tokens=4, temperature=0.8, seed=11, logprobs=0, ignore_eos=True)

    want, got = run_all("0"), run_all("1")
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        assert np.allclose(g.logprobs, w.logprobs, atol=1e-4)


def test_gpu_a_first_step_that_draws_nothing(tiny_path, tokenizer, monkeypatch):
    # A prompt longer than a step's tokens: the engine's first queued step computes part of it and
    # draws nothing; generation goes on as without overlap.
    def run(overlap):
        monkeypatch.setenv("FERRITE_ENGINE_OVERLAP", overlap)
        gen = ferrite.Generator(ferrite.Model.load(tiny_path, device="cuda", max_step_tokens=16, exact_matmul=True), tokenizer)
        return gen.generate(conv(3), max_tokens=8, logprobs=0, **GREEDY)

    want, got = run("0"), run("1")
    assert len(want.prompt_token_ids) > 16 and len(want.token_ids) == 8
    assert got.token_ids == want.token_ids
    assert np.allclose(got.logprobs, want.logprobs, atol=1e-4)
