"""A scripted stand-in for ``ferrite.Engine`` (docs/ENGINE_API.md), for the server tests that need
an engine to misbehave on cue (a sequence failing mid-stream, a step raising) or to run slowly
enough to fill the queue. It does no inference: request ``r`` emits the token ids of ``script``
one per step, then ``length``. The real engine is what tests/test_server.py drives."""

from __future__ import annotations

import itertools
import threading
import time
from types import SimpleNamespace


class FakeRequest:
    def __init__(self, engine, rid, prompt_ids, max_tokens, logprobs, fail_after):
        self.id = rid
        self.prompt_token_ids = list(prompt_ids)
        self.seed = 0
        self._engine = engine
        self._max_tokens = max_tokens
        self._logprobs = logprobs
        self._fail_after = fail_after
        self._emitted = 0
        self._outputs = []
        self.finished = False
        self.cancelled = False

    def poll(self):
        with self._engine._lock:
            outs, self._outputs = self._outputs, []
            return outs

    def cancel(self):
        with self._engine._lock:
            if not self.finished:
                self.cancelled = True

    def _step(self):
        """One token, or the finishing output; called with the engine's lock held."""
        if self.cancelled:
            self._push([], "", "cancelled")
            return
        if self._fail_after is not None and self._emitted >= self._fail_after:
            self._push([], "", "error", error="scripted failure")
            return
        tid = self._engine.script[self._emitted % len(self._engine.script)]
        self._emitted += 1
        finish = "length" if self._emitted >= self._max_tokens else None
        self._push([tid], self._engine.texts[tid], finish)

    def _push(self, ids, text, finish, error=None):
        lps = [-0.25] * len(ids) if self._logprobs is not None else None
        tops = [[(t, -0.25)] for t in ids] if self._logprobs else None
        self._outputs.append(SimpleNamespace(request_id=self.id, token_ids=ids, text=text, logprobs=lps,
                                             top_logprobs=tops, finish_reason=finish, error=error))
        if finish is not None:
            self.finished = True
            self._engine._running.remove(self)
            self._engine.finished_ids.append(self.id)


class FakeEngine:
    max_batch = 4
    context_length = 128
    vocab_size = 256

    def __init__(self, step_s=0.01, fail_after=None, step_raises=False):
        self.step_s = step_s
        self.fail_after = fail_after
        self.step_raises = step_raises
        self.script = list(b"ab c")
        self.texts = {t: chr(t) for t in range(256)}
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._ids = itertools.count(1)
        self._running = []
        self.finished_ids = []
        self.steps = 0

    def submit(self, prompt, max_tokens=16, logprobs=None, **_):
        if len(prompt) + max_tokens > self.context_length:
            raise ValueError("prompt + max_tokens past the context")
        with self._lock:
            r = FakeRequest(self, next(self._ids), prompt, max_tokens, logprobs, self.fail_after)
            self._running.append(r)
            self._work.notify_all()
            return r

    def wait_for_work(self, timeout):
        with self._lock:
            return bool(self._running) or self._work.wait_for(lambda: bool(self._running), timeout)

    def step(self):
        time.sleep(self.step_s)
        if self.step_raises:
            raise RuntimeError("scripted step failure")
        with self._lock:
            batch = list(self._running[: self.max_batch])
            for r in batch:
                r._step()
            self.steps += 1
            return [r.id for r in batch]

    def stats(self):
        with self._lock:
            running = min(len(self._running), self.max_batch)
            return dict(running=running, waiting=len(self._running) - running, kv_blocks_total=16,
                        kv_blocks_used=running, kv_block_tokens=16, kv_tokens_used=running * 16,
                        steps=self.steps, last_step_s=self.step_s, prompt_tokens=0, cached_prompt_tokens=0,
                        generated_tokens=0, preemptions=0, requests_finished=len(self.finished_ids))


class ByteTokenizer:
    """Token i is byte i: enough for the routes that tokenize."""

    def encode(self, text, add_special_tokens=True):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids):
        return bytes(ids)

    def apply_chat_template(self, messages, add_generation_prompt=True, tools=None):
        return "".join(f"<{m['role']}>{m.get('content') or ''}" for m in messages) + "<assistant>"
