"""Generation with the real test model on CPU, checked against independent references: the
argmax of ``Model.forward`` over the growing sequence, each prompt alone vs in a batch, plain
Python string operations for stop strings, the tokenizer's own encode/decode."""

import re

import numpy as np
import pytest

import ferrite

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def path():
    return ferrite.fetch_test_model()


@pytest.fixture(scope="module")
def model(path):
    return ferrite.Model.load(path, device="cpu")


@pytest.fixture(scope="module")
def tokenizer(path):
    return ferrite.Tokenizer.from_gguf(path)


@pytest.fixture(scope="module")
def gen(model, tokenizer):
    return ferrite.Generator(model, tokenizer)


GREEDY = dict(temperature=0.0)
COUNTING = "1, 2, 3, 4, 5,"


def test_greedy_equals_argmax_of_forward_over_the_growing_sequence(gen, model, tokenizer):
    prompt = "def fibonacci(n):\n    "
    n = 8
    r = gen.generate(prompt, max_tokens=n, **GREEDY)
    ids = tokenizer.encode(prompt)
    assert r.prompt_token_ids == ids
    expected = []
    for _ in range(n):
        # A fresh sequence each time: no KV cache reuse in the reference.
        logits = model.forward(ids + expected, last_only=True)
        expected.append(int(np.argmax(logits[0])))
        if expected[-1] in _eog(tokenizer):
            break
    assert r.token_ids == expected
    assert r.text == tokenizer.decode([t for t in expected if t not in _eog(tokenizer)], skip_special_tokens=True)


def _eog(tokenizer):
    ids = getattr(tokenizer, "eog_ids", None)
    return set(ids) if ids is not None else {tokenizer.eos_id}


def test_batch_gives_each_prompt_its_greedy_output_alone(gen):
    prompts = [COUNTING, "The capital of France is", [{"role": "user", "content": "Name a color."}]]
    batch = gen.generate(prompts, max_tokens=10, **GREEDY)
    assert isinstance(batch, list) and len(batch) == 3
    for p, r in zip(prompts, batch):
        alone = gen.generate(p, max_tokens=10, **GREEDY)
        assert r.prompt_token_ids == alone.prompt_token_ids
        assert r.token_ids == alone.token_ids, p
        assert r.text == alone.text
        assert r.finish_reason == alone.finish_reason


def test_batch_with_a_seed_equals_each_prompt_alone_with_that_seed(gen):
    prompts = ["Once upon a time", "In a galaxy far away"]
    batch = gen.generate(prompts, max_tokens=12, temperature=0.9, seed=4242)
    for p, r in zip(prompts, batch):
        assert gen.generate(p, max_tokens=12, temperature=0.9, seed=4242).token_ids == r.token_ids
        assert r.seed == 4242


def test_same_seed_same_tokens_and_other_seeds_differ(gen):
    kw = dict(max_tokens=16, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = gen.generate("Tell me a story:", seed=7, **kw)
    b = gen.generate("Tell me a story:", seed=7, **kw)
    assert a.token_ids == b.token_ids
    others = {tuple(gen.generate("Tell me a story:", seed=s, **kw).token_ids) for s in (8, 9, 10)}
    assert len(others | {tuple(a.token_ids)}) > 1


def test_stream_joins_to_the_generated_text(gen):
    for kw in (dict(**GREEDY), dict(temperature=0.8, seed=11)):
        prompt = [{"role": "user", "content": "Write one sentence about the sea, with an emoji."}]
        whole = gen.generate(prompt, max_tokens=40, **kw)
        stream = gen.stream(prompt, max_tokens=40, **kw)
        assert stream.result is None
        pieces = list(stream)
        assert "".join(pieces) == whole.text
        assert all(isinstance(p, str) and p for p in pieces)
        assert "\ufffd" not in "".join(pieces)
        assert stream.result.token_ids == whole.token_ids
        assert stream.result.finish_reason == whole.finish_reason


def test_max_tokens_is_respected_with_finish_reason_length(gen):
    for n in (1, 5):
        r = gen.generate(COUNTING, max_tokens=n, **GREEDY)
        assert len(r.token_ids) == n
        assert r.finish_reason == "length"
        t = r.timings
        assert t.prefill_tokens == len(r.prompt_token_ids)
        assert t.decode_tokens == n - 1
        assert t.prefill_s > 0 and t.prefill_tok_s > 0
    zero = gen.generate(COUNTING, max_tokens=0)
    assert zero.token_ids == [] and zero.text == "" and zero.finish_reason == "length"


def test_end_of_generation_token_ends_with_reason_eos(gen, tokenizer):
    r = gen.generate([{"role": "user", "content": "Reply with the single word: yes"}], max_tokens=32, **GREEDY)
    assert r.finish_reason == "eos"
    assert r.token_ids[-1] in _eog(tokenizer)
    assert "<|im_end|>" not in r.text and "<|endoftext|>" not in r.text
    assert "yes" in r.text.lower()


def _token_boundaries(tokenizer, ids):
    """Character offsets in the decoded text where each token's text ends."""
    ends, text = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        ends.append(len(text))
    return text, ends


def test_stop_string_split_across_tokens(gen, tokenizer):
    base = gen.generate(COUNTING, max_tokens=24, **GREEDY)
    text, ends = _token_boundaries(tokenizer, base.token_ids)
    assert text == base.text
    # A stop string that starts in one token and ends in a later one.
    i = next(i for i in range(2, len(ends) - 1) if ends[i] - ends[i - 1] >= 1 and ends[i + 1] - ends[i] >= 1)
    stop = text[ends[i] - 1 : ends[i] + 1]
    first = text.index(stop)
    r = gen.generate(COUNTING, max_tokens=24, stop=[stop], **GREEDY)
    assert r.finish_reason == "stop"
    assert r.text == text[:first]
    assert stop not in r.text
    # Tokens stop with the one that completed the stop string.
    assert r.token_ids == base.token_ids[: len(r.token_ids)]
    assert len(tokenizer.decode(r.token_ids, skip_special_tokens=True)) >= first + len(stop)
    assert len(tokenizer.decode(r.token_ids[:-1], skip_special_tokens=True)) < first + len(stop)
    # Streaming never lets out any part of the stop string.
    pieces = list(gen.stream(COUNTING, max_tokens=24, stop=stop, **GREEDY))
    assert "".join(pieces) == text[:first]


def test_stop_token_ids(gen):
    base = gen.generate(COUNTING, max_tokens=12, **GREEDY)
    stop_id = base.token_ids[3]
    cut = base.token_ids.index(stop_id)
    r = gen.generate(COUNTING, max_tokens=12, stop_token_ids=[stop_id], **GREEDY)
    assert r.finish_reason == "stop"
    assert r.token_ids == base.token_ids[: cut + 1]


def test_chat_prompt_is_the_rendered_template(gen, tokenizer):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    r = gen.generate(messages, max_tokens=1, **GREEDY)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert r.prompt_token_ids == tokenizer.encode(rendered)
    batch = gen.generate([messages, messages], max_tokens=1, **GREEDY)
    assert [b.prompt_token_ids for b in batch] == [r.prompt_token_ids] * 2


def test_token_id_prompts(gen, tokenizer):
    ids = tokenizer.encode(COUNTING)
    assert gen.generate(ids, max_tokens=4, **GREEDY).token_ids == gen.generate(COUNTING, max_tokens=4, **GREEDY).token_ids


def test_progress_bar_does_not_change_results(gen, capsys):
    prompts = [COUNTING, "Hello"]
    with_bar = gen.generate(prompts, max_tokens=4, progress=True, **GREEDY)
    without = gen.generate(prompts, max_tokens=4, **GREEDY)
    assert [r.token_ids for r in with_bar] == [r.token_ids for r in without]
    assert re.search(r"generate|seq", capsys.readouterr().err)


def test_abandoned_stream_frees_its_sequence(gen, model):
    # A model's KV cache is finite: abandoning many streams must not exhaust it.
    for _ in range(5):
        s = gen.stream(COUNTING, max_tokens=2000, **GREEDY)
        next(iter(s))
        s.close()
    assert gen.generate(COUNTING, max_tokens=3, **GREEDY).finish_reason == "length"


def test_bad_requests_raise_clear_errors(gen, model):
    with pytest.raises(ValueError, match="empty"):
        gen.generate([])
    with pytest.raises(TypeError, match="prompt"):
        gen.generate(3.5)
    with pytest.raises(ValueError, match="temperature"):
        gen.generate("x", temperature=-1)
    with pytest.raises(ValueError, match="stop"):
        gen.generate("x", stop=[""])
    with pytest.raises(ValueError, match="out of range"):
        gen.generate([1, 2, 10**7])
    with pytest.raises(TypeError, match="one prompt"):
        gen.stream(["a", "b"])
    too_long = [1] * model.config["context_length"]
    with pytest.raises(ferrite.ContextLengthError, match="context length"):
        gen.generate(too_long, max_tokens=1)


def _run_cli(*args, stdin=None):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "ferrite", *args], input=stdin, capture_output=True, text=True, timeout=600
    )


def test_cli_generate_streams_the_chat_completion(gen, path):
    want = gen.generate([{"role": "user", "content": "Say hi"}], max_tokens=16, **GREEDY).text
    out = _run_cli("generate", path, "Say hi", "--temperature", "0", "--max-tokens", "16", "--stats")
    assert out.returncode == 0, out.stderr
    assert out.stdout == want + "\n"
    assert re.search(r"decode \d+ tok at [\d.]+ tok/s", out.stderr)
    raw = gen.generate(COUNTING, max_tokens=6, **GREEDY).text
    out = _run_cli("generate", "--test-model", "--raw", COUNTING, "--temperature", "0", "--max-tokens", "6")
    assert out.returncode == 0, out.stderr
    assert out.stdout == raw + "\n"


def test_cli_chat_keeps_history(gen, path):
    first = [{"role": "user", "content": "My name is Ada."}]
    reply1 = gen.generate(first, max_tokens=24, **GREEDY).text
    second = first + [{"role": "assistant", "content": reply1}, {"role": "user", "content": "What is my name?"}]
    reply2 = gen.generate(second, max_tokens=24, **GREEDY).text
    out = _run_cli("chat", path, "--temperature", "0", "--max-tokens", "24",
                   stdin="My name is Ada.\nWhat is my name?\n/exit\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.replace("> ", "") == reply1 + "\n" + reply2 + "\n"


def test_cli_errors_are_messages_not_tracebacks(tmp_path):
    missing = tmp_path / "missing.gguf"
    out = _run_cli("generate", str(missing), "hi")
    assert out.returncode != 0
    assert "missing.gguf" in out.stderr and "Traceback" not in out.stderr


def log_softmax64(row, temperature=1.0):
    x = np.asarray(row, dtype=np.float64) / temperature
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_logprobs_equal_a_numpy_log_softmax_of_forward(gen, model, tokenizer, temperature):
    # logprobs are the log-softmax over the whole vocabulary of the logits after temperature
    # (temperature 1 for greedy), as vLLM reports them; the draws do not change them.
    prompt = "def fibonacci(n):\n    "
    r = gen.generate(prompt, max_tokens=6, temperature=temperature, seed=5, logprobs=4, ignore_eos=True)
    assert len(r.logprobs) == len(r.top_logprobs) == len(r.token_ids) == 6
    ids = tokenizer.encode(prompt)
    t = temperature or 1.0
    for i, tok in enumerate(r.token_ids):
        lsm = log_softmax64(model.forward(ids + r.token_ids[:i], last_only=True)[0], t)
        assert r.logprobs[i] == pytest.approx(lsm[tok], abs=1e-4)
        best = np.argsort(-lsm, kind="stable")[:4]
        assert [k for k, _ in r.top_logprobs[i]] == best.tolist()
        assert [v for _, v in r.top_logprobs[i]] == pytest.approx(lsm[best].tolist(), abs=1e-4)
        if temperature == 0.0:
            assert tok == best[0]


def test_stream_and_engine_requests_report_logprobs_per_piece(gen, model):
    engine = ferrite.Engine(model, gen.tokenizer)
    req = engine.submit("The capital of France is", max_tokens=5, temperature=0, logprobs=0, ignore_eos=True)
    outs = list(req)
    assert sum(len(o.token_ids) for o in outs) == 5
    assert all(len(o.logprobs) == len(o.token_ids) for o in outs)
    assert all(o.top_logprobs is None for o in outs)
    whole = req.result()
    assert [lp for o in outs for lp in o.logprobs] == whole.logprobs
    stream = gen.stream("The capital of France is", max_tokens=5, temperature=0, logprobs=0, ignore_eos=True)
    for _ in stream:
        assert stream.last_output.logprobs is not None
    assert stream.result.logprobs == pytest.approx(whole.logprobs, abs=1e-6)
