"""The bridge between the engine and asyncio: one thread steps the engine, the event loop reads
each request's outputs.

The pump thread loops ``engine.wait_for_work(0.1)``, ``engine.step()`` (both release the GIL)
and hands the ids that got output to the event loop in one ``call_soon_threadsafe`` per step.
There each id wakes the ``Group`` (one HTTP request: its n choices, or every prompt of a
completions batch) that owns it, and the group's reader calls ``Request.poll()``. So every HTTP
request feeds the same engine and is batched with the others, and the event loop never blocks
on a step.

Admission is bounded: a group of k sequences is refused (``QueueFull``, a 503 upstream) when the
sequences in flight would pass ``max_batch + max_queue``. The count is taken and changed on the
event loop only, so concurrent requests cannot race past it. A group always ends through
``close()`` (a ``finally`` upstream): unfinished sequences are cancelled, so a client that goes
away frees its KV room before the next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, AsyncIterator, Callable, Optional

from ferrite.server.metrics import Metrics

log = logging.getLogger("ferrite.server")


class QueueFull(Exception):
    """The engine has ``max_batch + max_queue`` sequences in flight already."""


class EngineStopped(Exception):
    """The pump stopped (server shutdown, or the engine failed) while a request was running."""


class Group:
    """The engine requests of one HTTP request, read together in arrival order."""

    def __init__(self, pump: "EnginePump", size: int) -> None:
        self._pump = pump
        self._size = size
        self.requests: list[Any] = []
        self._done: set[int] = set()
        self._wake = asyncio.Event()
        self._closed = False
        self.failure: Optional[str] = None

    def add(self, request: Any) -> None:
        self.requests.append(request)
        self._pump._owners[request.id] = self

    def wake(self) -> None:
        self._wake.set()

    async def outputs(self) -> AsyncIterator[tuple[int, Any]]:
        """Yields ``(choice index, RequestOutput)`` until every request has finished."""
        while len(self._done) < len(self.requests):
            self._wake.clear()
            got = False
            for i, req in enumerate(self.requests):
                if i in self._done:
                    continue
                for out in req.poll():
                    got = True
                    if out.finish_reason is not None:
                        self._done.add(i)
                    yield i, out
            if self.failure is not None:
                raise EngineStopped(self.failure)
            if not got and len(self._done) < len(self.requests):
                await self._wake.wait()

    @property
    def finished(self) -> bool:
        return len(self._done) == len(self.requests)

    def close(self) -> bool:
        """Cancels what has not finished and gives the room back; returns whether anything was
        cancelled. Safe to call twice."""
        if self._closed:
            return False
        self._closed = True
        cancelled = False
        for i, req in enumerate(self.requests):
            self._pump._owners.pop(req.id, None)
            if i not in self._done and not req.finished:
                req.cancel()
                cancelled = True
        self._pump._release(self._size)
        return cancelled


class EnginePump:
    def __init__(self, engine: Any, metrics: Metrics, max_queue: int) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_queue = max_queue
        self.capacity = int(engine.max_batch) + max_queue
        self._owners: dict[int, Group] = {}  # engine request id -> group; event loop only
        self._in_flight = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- the event loop's side -----------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="ferrite-engine-pump", daemon=True)
        self._thread.start()

    def open_group(self, size: int) -> Group:
        """Reserves room for ``size`` sequences or raises ``QueueFull``."""
        if self._stop.is_set():
            raise EngineStopped("the server is shutting down")
        if self._in_flight + size > self.capacity:
            raise QueueFull(f"{self._in_flight} sequences in flight; this request needs {size} more "
                            f"and the server takes {self.capacity} (max batch + max queue)")
        self._in_flight += size
        self.metrics.sequences_in_flight = self._in_flight
        return Group(self, size)

    def _release(self, size: int) -> None:
        self._in_flight -= size
        self.metrics.sequences_in_flight = self._in_flight

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _wake(self, ids: list[int]) -> None:
        for rid in ids:
            group = self._owners.get(rid)
            if group is not None:
                group.wake()

    def _fail_all(self, message: str) -> None:
        for group in set(self._owners.values()):
            group.failure = message
            group.wake()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stops the pump thread after its current step; requests still open end with an error
        event (their sequences are cancelled when their handlers close them)."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout_s)
        self._fail_all("the server is shutting down")

    # --- the pump thread -----------------------------------------------------------------------

    def _run(self) -> None:
        engine, loop = self.engine, self._loop
        assert loop is not None
        while not self._stop.is_set():
            if not engine.wait_for_work(0.1):
                continue
            t0 = time.perf_counter()
            try:
                ids = engine.step()
            except Exception as e:  # the engine's own failure: every open request ends with it
                log.exception("engine step failed")
                _call(loop, self._fail_all, f"engine step failed: {e}")
                time.sleep(0.1)
                continue
            self.metrics.observe_step(time.perf_counter() - t0)
            if ids:
                _call(loop, self._wake, list(ids))


def _call(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop closed under us: the server is gone
        pass
