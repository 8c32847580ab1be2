"""The requests that test_engine.py (CPU) and test_cuda_engine.py (GPU) run through an engine that
queues each step before taking the previous step's draws (FERRITE_ENGINE_OVERLAP=1) and through
one that waits (=0): early ends whose next step was already queued (a stop token, a stop string,
taken from a free-running result), seeded draws, penalties, logprobs, and a cache small enough to
preempt."""

REQUESTS = [
    dict(max_tokens=40, temperature=0.0, logprobs=2),
    dict(max_tokens=30, temperature=0.9, seed=5, logprobs=0),
    dict(max_tokens=30, temperature=0.0),
    dict(max_tokens=30, temperature=0.0),
    dict(max_tokens=25, temperature=0.7, seed=9, frequency_penalty=1.5, repetition_penalty=1.2),
    dict(max_tokens=35, temperature=0.0),
]


def overlapped_and_waiting(make_engine, prompts, tokenizer, monkeypatch):
    """(with overlap, without) results of REQUESTS on `prompts`, each engine from `make_engine()`
    (made after the variable is set); asserts the tokens, texts and finish reasons agree."""

    def run_all(overlap, kws):
        monkeypatch.setenv("FERRITE_ENGINE_OVERLAP", overlap)
        engine = make_engine()
        reqs = [engine.submit(p, ignore_eos=True, **kw) for p, kw in zip(prompts, kws)]
        while engine.has_work():
            engine.step()
        assert engine.stats()["preemptions"] > 0
        return [r.result() for r in reqs]

    kws = [dict(kw) for kw in REQUESTS]
    free = run_all("0", kws)
    kws[2]["stop_token_ids"] = [free[2].token_ids[6]]
    kws[3]["stop"] = [tokenizer.decode(free[3].token_ids[8:10])]
    want = run_all("0", kws)
    assert len(want[2].token_ids) <= 7 and want[2].finish_reason == "stop"
    assert want[3].finish_reason == "stop"
    got = run_all("1", kws)
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        assert g.text == w.text
        assert g.finish_reason == w.finish_reason
    return got, want
