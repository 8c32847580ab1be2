"""The HTTP server's plumbing against a scripted engine (tests/server_fake_engine.py), driven by the
official ``openai`` client and raw ``httpx``: what the real engine cannot be made to do on cue (a
sequence failing mid-stream, a step raising, a load that takes a while, a full queue held still).
Generation itself is tested against the real engine in tests/test_server.py."""

import json
import threading
import time

import pytest

pytest.importorskip("uvicorn", reason="the server tests need the test extra (uvicorn, starlette, openai)")
import httpx  # noqa: E402
import openai  # noqa: E402
import uvicorn  # noqa: E402

from ferrite.server.app import Loaded, Server, Settings, build_app  # noqa: E402
from server_fake_engine import ByteTokenizer, FakeEngine  # noqa: E402

USER = [{"role": "user", "content": "hi"}]


class Running:
    """The app under uvicorn on a free port, in a thread of this process."""

    def __init__(self, engine, loaded=None, **settings):
        self.engine = engine
        self.loaded = loaded or threading.Event()
        if loaded is None:
            self.loaded.set()

        def load():
            assert self.loaded.wait(30)
            return Loaded(engine=engine, tokenizer=ByteTokenizer(), device="cpu")

        self.server = Server(Settings(model_name="fake", **settings), load)
        config = uvicorn.Config(build_app(self.server), host="127.0.0.1", port=0, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=2)
        self.uv = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uv.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uv.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        port = self.uv.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def client(self, **kw):
        kw.setdefault("api_key", "none")
        return openai.OpenAI(base_url=self.url + "/v1", max_retries=0, **kw)

    def wait_ready(self):
        deadline = time.monotonic() + 30
        while httpx.get(self.url + "/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)

    def stop(self):
        self.uv.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def run():
    servers = []

    def start(engine=None, **kw):
        s = Running(engine or FakeEngine(), **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def assert_openai_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


def test_health_is_503_while_loading_then_200(run):
    gate = threading.Event()
    s = run(loaded=gate)
    r = httpx.get(s.url + "/health")
    assert r.status_code == 503 and r.json()["status"] == "loading"
    assert_openai_error(httpx.post(s.url + "/v1/chat/completions", json={"messages": USER}), 503, "model_loading")
    gate.set()
    s.wait_ready()
    assert httpx.get(s.url + "/health").json() == {"status": "ok"}


def test_chat_streamed_and_not_through_the_openai_client(run):
    s = run()
    c = s.client()
    r = c.chat.completions.create(model="fake", messages=USER, max_tokens=6)
    prompt_tokens = len(ByteTokenizer().apply_chat_template(USER))
    assert r.choices[0].message.content == "ab cab" and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt_tokens, 6)
    chunks = list(c.chat.completions.create(model="fake", messages=USER, max_tokens=6, n=2, stream=True,
                                            stream_options={"include_usage": True}))
    for i in range(2):
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices and ch.choices[0].index == i) == "ab cab"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == prompt_tokens  # the prompt counts once for n choices
    assert s.server.pump.in_flight == 0


def test_a_sequence_that_fails_mid_stream_ends_with_an_error_event(run):
    s = run(FakeEngine(fail_after=2))
    stream = s.client().chat.completions.create(model="fake", messages=USER, max_tokens=6, stream=True)
    got = []
    with pytest.raises(openai.APIError, match="scripted failure"):
        for ch in stream:
            got.append(ch.choices[0].delta.content or "")
    assert "".join(got) == "ab"
    r = httpx.post(s.url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 6})
    assert_openai_error(r, 500)
    assert "scripted failure" in r.json()["error"]["message"]
    assert s.server.pump.in_flight == 0


def test_a_failing_engine_step_ends_open_streams_with_an_error_event(run):
    s = run(FakeEngine(step_raises=True))
    with httpx.stream("POST", s.url + "/v1/completions", json={"prompt": "x", "stream": True}) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line]
    assert "scripted step failure" in json.loads(events[0][len("data: "):])["error"]["message"]
    assert events[-1] == "data: [DONE]"


def test_a_full_queue_answers_503_with_retry_after(run):
    engine = FakeEngine(step_s=0.05)
    s = run(engine, max_queue=1)  # 4 running + 1 waiting
    body = {"prompt": "x", "max_tokens": 40, "stream": True}
    streams = [httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=30) for _ in range(5)]
    opened = [st.__enter__() for st in streams]
    try:
        assert all(r.status_code == 200 for r in opened)
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert_openai_error(r, 503, "server_overloaded")
        assert r.headers["retry-after"] == "1"
        with pytest.raises(openai.InternalServerError):
            s.client().completions.create(model="fake", prompt="x", max_tokens=2)
        metrics = httpx.get(s.url + "/metrics").text
        assert "ferrite_requests_rejected_total 2" in metrics
    finally:
        for st in streams:
            st.__exit__(None, None, None)
    # The closed streams freed their room: the server takes requests again.
    deadline = time.monotonic() + 10
    while s.server.pump.in_flight:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert s.client().completions.create(model="fake", prompt="x", max_tokens=2).choices[0].text == "ab"


def test_a_request_that_could_never_fit_is_a_400_not_a_503(run):
    s = run(max_queue=1)  # 4 running + 1 waiting
    assert_openai_error(httpx.post(s.url + "/v1/completions", json={"prompt": "x", "n": 6}), 400,
                        "too_many_sequences", "n")
    assert_openai_error(httpx.post(s.url + "/v1/completions", json={"prompt": ["x", "y", "z"], "n": 2}), 400,
                        "too_many_sequences")
    assert s.client().completions.create(model="fake", prompt=["x", "y"], n=2, max_tokens=2).usage.completion_tokens == 8


def test_a_client_that_disconnects_cancels_its_sequence(run):
    engine = FakeEngine(step_s=0.02)
    s = run(engine)
    with httpx.stream("POST", s.url + "/v1/chat/completions",
                      json={"messages": USER, "max_tokens": 60, "stream": True}) as r:
        assert r.status_code == 200
        data = []
        for line in r.iter_lines():
            if line.startswith("data:"):
                data.append(line)
            if len(data) == 3:
                break
    deadline = time.monotonic() + 10
    while s.server.pump.in_flight or engine._running:  # cancelled, so the engine drops it
        assert time.monotonic() < deadline, "the sequence was not released"
        time.sleep(0.01)
    assert engine.finished_ids == [1] and engine.steps < 30
    assert "ferrite_requests_cancelled_total 1" in httpx.get(s.url + "/metrics").text
    # A non-streamed request whose client gives up is cancelled too.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 60}, timeout=0.2)
    deadline = time.monotonic() + 10
    while s.server.pump.in_flight:
        assert time.monotonic() < deadline, "the non-streamed sequence was not released"
        time.sleep(0.01)
    assert "ferrite_requests_cancelled_total 2" in httpx.get(s.url + "/metrics").text


def test_api_key(run):
    s = run(api_key="sekret")
    assert httpx.get(s.url + "/health").status_code == 200  # probes need no key
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
        assert_openai_error(httpx.get(s.url + "/v1/models", headers=headers), 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        s.client(api_key="wrong").models.list()
    assert [m.id for m in s.client(api_key="sekret").models.list()] == ["fake"]
    assert_openai_error(httpx.get(s.url + "/metrics"), 401)


def test_cors_only_when_asked(run):
    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    plain = run(api_key="k")
    assert "access-control-allow-origin" not in httpx.options(plain.url + "/v1/chat/completions", headers=preflight).headers
    s = run(api_key="k", allow_origins=("http://ui.example",))
    r = httpx.options(s.url + "/v1/chat/completions", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ui.example"
    r = httpx.get(s.url + "/v1/models", headers={"Origin": "http://ui.example", "Authorization": "Bearer k"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ui.example"
    r = httpx.options(s.url + "/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"})
    assert r.headers.get("access-control-allow-origin") != "http://evil.example"


def test_error_bodies(run):
    s = run(max_body_bytes=1000)
    url = s.url
    assert_openai_error(httpx.post(url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": USER}),
                        404, "model_not_found", "model")
    with pytest.raises(openai.NotFoundError):
        s.client().chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        s.client().chat.completions.create(model="fake", messages=USER, response_format={"type": "json_object"})
    assert_openai_error(httpx.get(url + "/v1/models/other"), 404, "model_not_found")
    assert httpx.get(url + "/v1/models/fake").json()["id"] == "fake"
    assert_openai_error(httpx.get(url + "/v1/nothing"), 404)
    assert_openai_error(httpx.get(url + "/v1/chat/completions"), 405)
    assert_openai_error(httpx.post(url + "/v1/completions", content=b"{not json"), 400)
    assert_openai_error(httpx.post(url + "/v1/completions", json={"prompt": "x" * 2000}), 413, "request_too_large")
    chunked = httpx.post(url + "/v1/completions", content=iter([b'{"prompt": "', b"x" * 1500, b'"}']))
    assert_openai_error(chunked, 413)
    # Past the context (128 tokens here): 400 before any work.
    err = assert_openai_error(httpx.post(url + "/v1/completions", json={"prompt": "x" * 128}), 400,
                              "context_length_exceeded")
    assert "128" in err["message"]
    assert_openai_error(httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 128}), 400,
                        "context_length_exceeded", "max_tokens")
    assert s.engine.steps == 0 and s.server.pump.in_flight == 0


def test_tokenize_and_detokenize(run):
    s = run()
    r = httpx.post(s.url + "/tokenize", json={"prompt": "hé"}).json()
    assert r == {"tokens": list("hé".encode()), "count": 3, "max_model_len": 128}
    r = httpx.post(s.url + "/tokenize", json={"messages": USER}).json()
    assert r["tokens"] == list(ByteTokenizer().apply_chat_template(USER).encode())
    assert httpx.post(s.url + "/detokenize", json={"tokens": list("hé".encode())}).json() == {"prompt": "hé"}
    assert_openai_error(httpx.post(s.url + "/detokenize", json={"tokens": [256]}), 400, param="tokens")


def test_serve_command_line(tmp_path):
    import subprocess
    import sys

    def serve(*args):
        r = subprocess.run([sys.executable, "-m", "ferrite", "serve", *args], capture_output=True, text=True,
                           timeout=60, env={**__import__("os").environ, "FERRITE_API_KEY": ""})
        return r.returncode, r.stderr

    missing = str(tmp_path / "missing.gguf")
    rc, err = serve(missing)
    assert rc == 1 and "no such file" in err and "WARNING" not in err
    rc, err = serve("--host", "0.0.0.0", missing)
    assert rc == 1 and "WARNING: listening on 0.0.0.0 without --api-key" in err
    rc, err = serve("--host", "0.0.0.0", "--api-key", "k", missing)
    assert "WARNING" not in err
    rc, err = serve("--host", "::1", missing)
    assert "WARNING" not in err  # loopback
    rc, err = serve()
    assert rc == 2 and "give MODEL.gguf" in err
    rc, err = serve("--max-batch", "0", missing)
    assert rc == 2 and "--max-batch" in err
    rc, err = serve("--help")
    assert rc == 0
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    rc, err = serve("--port", "0", str(bad))
    assert rc == 1 and "failed" in err and "GgufError" in err and "Traceback" not in err
