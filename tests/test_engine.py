"""The engine's semantics on CPU: continuous batching, the paged KV cache with preemption,
prefix reuse, cancellation, threads, limits checked up front.

The reference for every result is the same request run alone in a fresh engine (and for prefix
reuse, an engine with the prefix cache off). The model is a tiny random one with the real
vocabulary, so that the real tokenizer's ids and chat template run through it in milliseconds a
token: what is tested here is the engine's bookkeeping, which a wrong block table, a token fed
twice, a mixed-up sequence or a reused block with the wrong content would change.
"""

import pickle
import threading

import pytest

import ferrite
from engine_overlap import REQUESTS, overlapped_and_waiting
from synthetic_model import write_tiny_model

pytestmark = pytest.mark.model  # the real tokenizer comes from the real model file

CONTEXT = 2048


@pytest.fixture(scope="module")
def tokenizer():
    return ferrite.Tokenizer.from_gguf(ferrite.fetch_test_model())


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("engine") / "tiny.gguf"
    # Spread-out untied weights, so that greedy continuations depend on the whole history.
    return write_tiny_model(
        path, arch="qwen2", biases=True, vocab=tokenizer.vocab_size, context=CONTEXT, seed=3, spread=0.3, tied=False
    )


def load(path, **kw):
    kw.setdefault("device", "cpu")
    return ferrite.Model.load(path, **kw)


def prompts(tokenizer, n):
    topics = ["the sea", "GPUs", "a cat", "rust", "tea", "maps", "bees", "snow", "clocks", "jazz", "salt", "owls",
              "rain", "kites", "moss", "chess"]
    return [[{"role": "user", "content": f"Write about {topics[i % len(topics)]}, take {i}."}] for i in range(n)]


def alone(path, tokenizer, prompt, **kw):
    """The request in an engine of its own."""
    engine = ferrite.Engine(load(path), tokenizer)
    return engine.submit(prompt, **kw)


def run(req):
    for _ in req:
        pass
    return req.result()


GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("kv_cache_dtype", ["float32", "float16"])
def test_the_engine_reports_its_models_cache(tiny_path, tokenizer, kv_cache_dtype):
    model = load(tiny_path, kv_cache_tokens=96, max_batch=5, kv_cache_dtype=kv_cache_dtype)
    engine = ferrite.Engine(model, tokenizer)
    assert (engine.kv_cache_dtype, engine.kv_cache_tokens, engine.max_batch) == (kv_cache_dtype, model.kv_cache_tokens, 5)
    assert model.kv_cache_tokens >= 96


def test_requests_joining_and_leaving_mid_flight_equal_each_alone(tiny_path, tokenizer):
    engine = ferrite.Engine(load(tiny_path), tokenizer)
    ps = prompts(tokenizer, 6)
    reqs = []
    for i, p in enumerate(ps):
        # Each joins two steps after the one before and asks for a different length.
        reqs.append(engine.submit(p, max_tokens=4 + 3 * i, **GREEDY))
        engine.step()
        engine.step()
    while engine.has_work():
        engine.step()
    for i, (p, r) in enumerate(zip(ps, reqs)):
        got = r.result()
        want = run(alone(tiny_path, tokenizer, p, max_tokens=4 + 3 * i, **GREEDY))
        assert got.token_ids == want.token_ids, i
        assert got.text == want.text
        assert len(got.token_ids) == 4 + 3 * i and got.finish_reason == "length"
    assert engine.stats()["kv_blocks_used"] == 0


def test_a_2048_token_cache_serves_16_prompts_of_512_new_tokens(tiny_path, tokenizer):
    # 16 x (prompt + 512) positions cannot all be held at once in 2,048: nothing is reserved up
    # front, sequences are preempted and recomputed when the pool runs dry, and every result
    # equals its run alone.
    model = load(tiny_path, kv_cache_tokens=2048)
    gen = ferrite.Generator(model, tokenizer)
    ps = prompts(tokenizer, 16)
    batch = gen.generate(ps, max_tokens=512, **GREEDY)
    stats = gen.engine.stats()
    assert stats["preemptions"] > 0
    assert stats["kv_blocks_used"] == 0
    solo = ferrite.Generator(load(tiny_path, kv_cache_tokens=2048), tokenizer)
    for p, r in zip(ps, batch):
        assert len(r.token_ids) == 512
        assert r.token_ids == solo.generate(p, max_tokens=512, **GREEDY).token_ids


def test_preemption_under_a_tiny_cache_completes_everything(tiny_path, tokenizer):
    model = load(tiny_path, kv_cache_tokens=160, max_step_tokens=64)
    gen = ferrite.Generator(model, tokenizer)
    ps = [tokenizer.encode(f"count {i}: 1 2 3") for i in range(8)]
    results = gen.generate(ps, max_tokens=100, **GREEDY)
    assert gen.engine.stats()["preemptions"] > 0
    ref = ferrite.Generator(load(tiny_path), tokenizer)
    for p, r in zip(ps, results):
        assert r.token_ids == ref.generate(p, max_tokens=100, **GREEDY).token_ids


def test_prefix_reuse_gives_the_same_tokens_and_logprobs_as_no_reuse(tiny_path, tokenizer):
    system = {"role": "system", "content": "You are a careful assistant. " * 12}
    convs = [[system, {"role": "user", "content": f"Question {i}?"}] for i in range(3)]
    kw = dict(max_tokens=12, logprobs=3, **GREEDY)
    cached = ferrite.Generator(load(tiny_path), tokenizer)
    plain = ferrite.Generator(load(tiny_path, prefix_caching=False), tokenizer)
    first = cached.generate(convs[0], **kw)
    assert first.timings.cached_prompt_tokens == 0
    for conv in convs[1:]:
        r = cached.generate(conv, **kw)
        ref = plain.generate(conv, **kw)
        # What the earlier prompts share with this one is reused in whole blocks of 16 tokens.
        shared = 0
        while first.prompt_token_ids[shared] == r.prompt_token_ids[shared]:
            shared += 1
        assert shared > 64
        assert r.timings.cached_prompt_tokens == shared // 16 * 16
        assert ref.timings.cached_prompt_tokens == 0
        assert r.token_ids == ref.token_ids
        assert r.logprobs == pytest.approx(ref.logprobs, abs=1e-5)
        assert [[t for t, _ in top] for top in r.top_logprobs] == [[t for t, _ in top] for top in ref.top_logprobs]
    assert cached.engine.stats()["cached_prompt_tokens"] > 0


def test_cancel_frees_the_room_at_once(tiny_path, tokenizer):
    engine = ferrite.Engine(load(tiny_path), tokenizer)
    long = engine.submit(prompts(tokenizer, 1)[0], max_tokens=1000, **GREEDY)
    other = engine.submit("hello", max_tokens=6, **GREEDY)
    for _ in range(5):
        long.next()
    used = engine.stats()["kv_blocks_used"]
    assert used > 0
    long.cancel()
    assert engine.stats()["kv_blocks_used"] < used
    outs = list(long)
    assert outs and outs[-1].finish_reason == "cancelled"
    assert long.result().finish_reason == "cancelled"
    assert run(other).finish_reason == "length"
    # An abandoned stream frees its room too.
    stream = ferrite.Generator(engine.model, tokenizer).stream("tell me", max_tokens=500, **GREEDY)
    next(stream)
    assert engine.stats()["kv_blocks_used"] > 0
    del stream
    assert engine.stats()["kv_blocks_used"] == 0


def test_threads_submit_and_wait_together(tiny_path, tokenizer):
    gen = ferrite.Generator(load(tiny_path), tokenizer)
    ps = prompts(tokenizer, 8)
    got = [None] * len(ps)

    def work(i):
        got[i] = gen.generate(ps[i], max_tokens=20, **GREEDY)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(ps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    ref = ferrite.Generator(load(tiny_path), tokenizer)
    for p, r in zip(ps, got):
        assert r is not None
        assert r.token_ids == ref.generate(p, max_tokens=20, **GREEDY).token_ids
    assert gen.engine.stats()["steps"] < 8 * 20, "the threads' requests shared steps"


def test_a_seeded_request_draws_the_same_tokens_alone_and_in_any_batch(tiny_path, tokenizer):
    gen = ferrite.Generator(load(tiny_path), tokenizer)
    ps = prompts(tokenizer, 5)
    kw = dict(max_tokens=24, temperature=1.1, top_k=0, top_p=1.0, min_p=0.0, seed=99, ignore_eos=True)
    batch = gen.generate(ps, **kw)
    for p, r in zip(ps, batch):
        assert r.token_ids == gen.generate(p, **kw).token_ids
        assert r.seed == 99
    other = gen.generate(ps[0], **{**kw, "seed": 100})
    assert other.token_ids != batch[0].token_ids


def test_limits_are_checked_up_front(tiny_path, tokenizer):
    model = load(tiny_path, max_batch=4)
    engine = ferrite.Engine(model, tokenizer)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.submit("hi", max_tokens=-5)
    with pytest.raises(ValueError, match="top_k"):
        engine.submit("hi", top_k=-1)
    with pytest.raises(ValueError, match="logprobs"):
        engine.submit("hi", logprobs=21)
    with pytest.raises(ValueError, match="max_batch"):
        ferrite.Generator(model, tokenizer, max_batch=5)
    too_long = [1] * CONTEXT
    with pytest.raises(ferrite.ContextLengthError, match="context length"):
        engine.submit(too_long)
    gen = ferrite.Generator(model, tokenizer, max_batch=2)
    # One bad prompt in a batch fails the call before any work starts, naming it.
    with pytest.raises(ferrite.ContextLengthError, match="prompt 1"):
        gen.generate(["fine", too_long])
    assert engine.stats()["steps"] == 0
    small = load(tiny_path, kv_cache_tokens=64)
    with pytest.raises(ferrite.ContextLengthError, match="KV cache"):
        ferrite.Engine(small, tokenizer).submit("hello", max_tokens=100)


def test_results_pickle_and_compare_equal(tiny_path, tokenizer):
    gen = ferrite.Generator(load(tiny_path), tokenizer)
    r = gen.generate("hello", max_tokens=5, logprobs=2, **GREEDY)
    back = pickle.loads(pickle.dumps(r))
    assert back == r
    assert back.timings == r.timings and pickle.loads(pickle.dumps(r.timings)) == r.timings
    assert back.top_logprobs == r.top_logprobs
    assert back != gen.generate("hello", max_tokens=4, logprobs=2, **GREEDY)


def test_per_result_timings_are_their_own(tiny_path, tokenizer):
    gen = ferrite.Generator(load(tiny_path, max_step_tokens=64), tokenizer)
    short, long = gen.generate([[1, 2, 3], list(range(10, 310))], max_tokens=8, **GREEDY)
    assert short.timings.prompt_tokens == 3 and long.timings.prompt_tokens == 300
    assert short.timings.decode_tokens == 7 and long.timings.decode_tokens == 7
    # The long prompt takes five 64-token steps before its first token; the short one does not wait.
    assert short.timings.time_to_first_token_s < long.timings.time_to_first_token_s
    for r in (short, long):
        t = r.timings
        assert t.total_s >= t.time_to_first_token_s >= t.queue_s >= 0
        assert t.as_dict()["decode_tok_s"] == t.decode_tok_s


def test_steps_queued_ahead_of_their_draws_give_the_same_results(tiny_path, tokenizer, monkeypatch):
    # On a GPU the engine queues each step before it takes the previous step's draws (the next
    # step is fed the drawn tokens on the device); FERRITE_ENGINE_OVERLAP=1 does the same on the
    # CPU. Every result must equal the engine that waits (engine_overlap.py).
    def make():
        return ferrite.Engine(load(tiny_path, kv_cache_tokens=160, max_step_tokens=64), tokenizer)

    got, want = overlapped_and_waiting(make, prompts(tokenizer, len(REQUESTS)), tokenizer, monkeypatch)
    for g, w in zip(got, want):
        # Batches differ (a dropped step, a later readmission), and a row's sums with them.
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)
        tops = [[[t for t, _ in top] for top in r.top_logprobs or []] for r in (g, w)]
        assert tops[0] == tops[1]
