"""Hostile arguments for every public function and method: no input may crash or hang Python.

Each group of calls runs in a subprocess (a crash -- abort, segfault, ``PanicException`` -- must
not take the test runner down with it), driven by hypothesis with a fixed budget and a fixed
seed (``derandomize``), so a CI run is repeatable. A call passes when it returns, or raises
ferrite's own exceptions or Python's standard ones (``ValueError``, ``TypeError``,
``OverflowError``, ``IndexError``, ``KeyError``, ``MemoryError``, ``OSError``, ...); it fails on a
crash, a hang past the time limit, or any other exception (``pyo3_runtime.PanicException``
derives from ``BaseException``, so it is caught here as "other").
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import ferrite

pytest.importorskip("hypothesis")
pytestmark = pytest.mark.model

HERE = os.path.dirname(os.path.abspath(__file__))

# The child: builds the objects, then runs hypothesis over one group's calls.
PRELUDE = textwrap.dedent(
    """
    import gc, json, math, os, sys, tempfile, traceback
    sys.path.insert(0, {here!r})
    import numpy as np
    from hypothesis import given, settings, strategies as st, HealthCheck
    import ferrite
    from synthetic_model import write_tiny_model

    ALLOWED = (ferrite.FerriteError, ValueError, TypeError, OverflowError, IndexError, KeyError,
               LookupError, MemoryError, OSError, NotImplementedError, RuntimeError, StopIteration,
               UnicodeError, AttributeError)
    bad = []

    def call(name, f, *a, **k):
        try:
            f(*a, **k)
        except ALLOWED:
            pass
        except BaseException as e:  # PanicException and anything else outside the standard set
            bad.append(f"{{name}}({{a!r:.200}}, {{k!r:.200}}): {{type(e).__module__}}.{{type(e).__name__}}: {{e}}")

    ints = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, 1, -1, 2**31, 2**32, 2**40, 2**62, 2**63, 2**64, -2**63]))
    floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-45, 1e308]))
    texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "\\x00", "<|im_start|>", "\\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")]))
    junk = st.one_of(st.none(), ints, floats, texts, st.binary(max_size=20), st.lists(ints, max_size=5),
                     st.dictionaries(texts, ints, max_size=3), st.just(object()), st.just([[1, 2], [3]]))
    small_ids = st.lists(st.integers(-5, 200_000), max_size=12)
    tmp = tempfile.mkdtemp()
    REAL = ferrite.fetch_test_model()
    TINY = write_tiny_model(os.path.join(tmp, "tiny.gguf"), arch="qwen2", biases=True, vocab=151936, context=256)
    TOK = ferrite.Tokenizer.from_gguf(REAL)
    FILE = ferrite.GgufFile(TINY)
    SETTINGS = settings(max_examples={n}, derandomize=True, deadline=None, database=None,
                        suppress_health_check=list(HealthCheck))
    """
)

GROUPS = {
    "gguf": """
        @SETTINGS
        @given(junk, junk, junk)
        def run(a, b, c):
            call("GgufFile", ferrite.GgufFile, a)
            call("GgufFile.tensor", FILE.tensor, a)
            call("GgufFile.tensor", FILE.tensor, "token_embd.weight", device=b)
            call("GgufFile.raw", FILE.raw, a)
            call("dequantize", ferrite.dequantize, a, b, c)
            call("dequantize", ferrite.dequantize, b"\\x00" * 34, "Q8_0", a)
            call("dequantize", ferrite.dequantize, b"\\x00" * 34, a, (32,))
            call("contains", FILE.__contains__, a)
        run()
        f = ferrite.GgufFile(TINY)
        f.close()
        call("closed.tensor", f.tensor, "token_embd.weight")
        call("closed.metadata", lambda: f.metadata)
        call("closed.raw", f.raw, "token_embd.weight")
        call("closed.len", len, f)
    """,
    "tokenizer": """
        @SETTINGS
        @given(junk, junk, texts, small_ids)
        def run(a, b, text, ids):
            call("encode", TOK.encode, a)
            call("encode", TOK.encode, text, a, b)
            call("decode", TOK.decode, a)
            call("decode", TOK.decode, ids, a)
            call("decode_bytes", TOK.decode_bytes, ids)
            call("id_to_token", TOK.id_to_token, a)
            call("token_to_id", TOK.token_to_id, a)
            call("is_special", TOK.is_special, a)
            call("apply_chat_template", TOK.apply_chat_template, a)
            call("apply_chat_template", TOK.apply_chat_template, [{"role": a, "content": b}])
            call("encode_batch", TOK.encode_batch, a)
            d = TOK.decoder()
            call("decoder.push", d.push, a)
            for i in ids:
                call("decoder.push", d.push, i)
            call("Tokenizer.from_gguf", ferrite.Tokenizer.from_gguf, a)
        run()
    """,
    "sampler": """
        @SETTINGS
        @given(junk, junk, ints, floats)
        def run(a, b, n, x):
            call("Sampler", ferrite.Sampler, a)
            call("Sampler", ferrite.Sampler, n)
            call("Sampler", ferrite.Sampler, 10, temperature=x, top_k=n, top_p=x, min_p=x)
            call("Sampler", ferrite.Sampler, 10, repetition_penalty=x, seed=n, prompt_token_ids=a)
            try:
                s = ferrite.Sampler(10, temperature=0.5)
            except ALLOWED:
                return
            call("Sampler.sample", s.sample, a)
            call("Sampler.sample", s.sample, np.full(10, x, dtype=np.float32))
            call("Sampler.sample", s.sample, np.zeros(n % 50, dtype=np.float32))
            call("Sampler.accept", s.accept, a)
            call("Sampler.process", s.process, b)
        run()
    """,
    "model": """
        M = ferrite.Model.load(TINY, device="cpu", kv_cache_tokens=512)
        @SETTINGS
        @given(junk, junk, small_ids, ints)
        def run(a, b, ids, n):
            call("Model.load", ferrite.Model.load, a)
            call("Model.load", ferrite.Model.load, TINY, device=a, max_batch=n, kv_cache_tokens=n, max_step_tokens=n)
            call("forward", M.forward, a)
            call("forward", M.forward, ids)
            call("forward", M.forward, ids, seq=a)
            call("forward", M.forward, ids, last_only=a, on_device=b)
            call("forward_batch", M.forward_batch, a)
            call("forward_batch", M.forward_batch, [ids, ids], seqs=a)
            call("new_sequence", M.new_sequence, a)
            call("new_sequence", M.new_sequence, n)
            call("free_sequence", M.free_sequence, a)
            call("sequence_len", M.sequence_len, a)
        run()
    """,
    "engine": """
        M = ferrite.Model.load(TINY, device="cpu", kv_cache_tokens=512, max_batch=4)
        E = ferrite.Engine(M, TOK)
        G = ferrite.Generator(M, TOK)
        @SETTINGS
        @given(junk, junk, ints, floats)
        def run(a, b, n, x):
            kw = dict(max_tokens=2, temperature=0)
            call("Engine", ferrite.Engine, a, TOK)
            call("Engine", ferrite.Engine, M, a)
            call("submit", E.submit, a, **kw)
            call("submit", E.submit, "hi", max_tokens=n)
            call("submit", E.submit, "hi", max_tokens=1, temperature=x, top_k=n, top_p=x, min_p=x)
            call("submit", E.submit, "hi", max_tokens=1, seed=n, stop=a, stop_token_ids=b)
            call("submit", E.submit, "hi", max_tokens=1, logprobs=n, tools=a)
            call("submit", E.submit, [{"role": a, "content": b}], **kw)
            call("submit", E.submit, [n], **kw)
            # A long timeout legitimately waits that long on an idle engine: only short ones here.
            call("wait_for_work", E.wait_for_work, x if not (isinstance(x, float) and x > 1) else -x)
            call("Generator", ferrite.Generator, M, TOK, max_batch=n)
            call("generate", G.generate, a, **kw)
            call("generate", G.generate, ["a", a], **kw)
            call("generate", G.generate, "hi", max_tokens=1, repetition_penalty=x, presence_penalty=x, frequency_penalty=x)
            call("stream", G.stream, a, **kw)
            try:
                r = E.submit("hello", max_tokens=3, temperature=0)
            except ALLOWED:
                return
            call("Request.next", r.next, x)
            call("Request.next", r.next, a)
            call("Request.poll", r.poll)
            call("Request.result", r.result)
            call("Request.cancel", r.cancel)
            call("GenerationResult", ferrite.GenerationResult, a, b, a, b, n)
            call("Timings", ferrite.Timings, n, n, x)
            while E.has_work():
                E.step()
        run()
        assert E.stats()["kv_blocks_used"] == 0, E.stats()
    """,
}

SUFFIX = textwrap.dedent(
    """
    print("RESULT " + json.dumps(bad[:20]))
    """
)


@pytest.mark.parametrize("group", list(GROUPS))
def test_hostile_arguments_never_crash(group):
    n = int(os.environ.get("FERRITE_HOSTILE_EXAMPLES", "60"))
    code = PRELUDE.format(here=HERE, n=n) + textwrap.dedent(GROUPS[group]) + SUFFIX
    env = dict(os.environ, PYTHONFAULTHANDLER="1", RUST_BACKTRACE="0")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{group}: hung for 600 s\n{(e.stdout or '')[-2000:]}\n{(e.stderr or '')[-2000:]}")
    tail = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{group}: the process died (status {proc.returncode})\n{tail}"
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, f"{group}: no result\n{tail}"
    bad = json.loads(line[len("RESULT "):])
    assert not bad, f"{group}: exceptions outside the standard classes:\n" + "\n".join(bad)
