"""``GET /metrics``: the server's and the engine's figures in the Prometheus text format
(version 0.0.4): HTTP requests by route and status, tokens, the queue, KV-cache use, step time,
time to first token.

Counters and histograms are plain Python guarded by one lock (the engine's pump thread observes
step times, the event loop everything else); the engine's own gauges and totals are read from
``engine.stats()`` when scraped.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import defaultdict
from typing import Any, Iterable, Optional

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; wide enough for a CPU step of a long prefill and a GPU decode step alike.
STEP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts):
            cumulative += n
            le = "+Inf" if bound == math.inf else _num(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        out.append(f"{name}_sum {_num(self.sum)}")
        out.append(f"{name}_count {self.count}")
        return out


class Metrics:
    """What the server counts itself; ``render(stats)`` adds the engine's ``stats()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.http_requests: dict[tuple[str, int], int] = defaultdict(int)
        self.rejected_queue_full = 0
        self.client_cancelled = 0
        self.sequences_in_flight = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.step_s = Histogram(STEP_BUCKETS_S)
        self.ttft_s = Histogram(LATENCY_BUCKETS_S)
        self.request_s = Histogram(LATENCY_BUCKETS_S)

    def count_request(self, route: str, status: int) -> None:
        with self._lock:
            self.http_requests[(route, status)] += 1

    def observe_step(self, seconds: float) -> None:
        with self._lock:
            self.step_s.observe(seconds)

    def observe_ttft(self, seconds: float) -> None:
        with self._lock:
            self.ttft_s.observe(seconds)

    def finish_request(self, seconds: float, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self.request_s.observe(seconds)
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens

    def add(self, attr: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, attr, getattr(self, attr) + n)

    def render(self, stats: Optional[dict[str, Any]], max_queue: int) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[str]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)

        with self._lock:
            metric("ferrite_http_requests_total", "counter", "HTTP requests answered, by route and status.",
                   [f'ferrite_http_requests_total{{route="{_label(r)}",status="{s}"}} {n}'
                    for (r, s), n in sorted(self.http_requests.items())])
            metric("ferrite_requests_rejected_total", "counter", "Requests refused with 503 because the queue was full.",
                   [f"ferrite_requests_rejected_total {self.rejected_queue_full}"])
            metric("ferrite_requests_cancelled_total", "counter",
                   "Requests whose client went away before they finished (their sequences cancelled).",
                   [f"ferrite_requests_cancelled_total {self.client_cancelled}"])
            metric("ferrite_sequences_in_flight", "gauge",
                   "Engine sequences the server has submitted and not yet seen finish.",
                   [f"ferrite_sequences_in_flight {self.sequences_in_flight}"])
            metric("ferrite_queue_capacity", "gauge", "Sequences allowed to wait beyond the running batch (--max-queue).",
                   [f"ferrite_queue_capacity {max_queue}"])
            metric("ferrite_request_prompt_tokens_total", "counter", "Prompt tokens of completed requests.",
                   [f"ferrite_request_prompt_tokens_total {self.prompt_tokens}"])
            metric("ferrite_request_completion_tokens_total", "counter", "Generated tokens of completed requests.",
                   [f"ferrite_request_completion_tokens_total {self.completion_tokens}"])
            metric("ferrite_engine_step_seconds", "histogram", "Wall time of each engine step.",
                   self.step_s.lines("ferrite_engine_step_seconds"))
            metric("ferrite_time_to_first_token_seconds", "histogram", "From the request's arrival to its first token.",
                   self.ttft_s.lines("ferrite_time_to_first_token_seconds"))
            metric("ferrite_request_duration_seconds", "histogram", "From arrival to the last token, completed requests.",
                   self.request_s.lines("ferrite_request_duration_seconds"))
        if stats is not None:
            _engine_metrics(metric, stats)
        return "\n".join(out) + "\n"


# Engine stats keys -> (metric name, type, help). Counters are the engine's totals since start.
_ENGINE = (
    ("running", "ferrite_engine_requests_running", "gauge", "Sequences in the running batch."),
    ("waiting", "ferrite_engine_requests_waiting", "gauge", "Sequences waiting for admission (the queue)."),
    ("kv_blocks_used", "ferrite_kv_blocks_used", "gauge", "KV-cache blocks in use."),
    ("kv_blocks_total", "ferrite_kv_blocks_total", "gauge", "KV-cache blocks in all."),
    ("kv_block_tokens", "ferrite_kv_block_tokens", "gauge", "Token slots per KV-cache block."),
    ("kv_tokens_used", "ferrite_kv_tokens_used", "gauge", "Tokens held in the KV cache."),
    ("steps", "ferrite_engine_steps_total", "counter", "Engine steps run."),
    ("last_step_s", "ferrite_engine_last_step_seconds", "gauge", "Wall time of the last engine step."),
    ("prompt_tokens", "ferrite_engine_prompt_tokens_total", "counter", "Prompt tokens admitted."),
    ("cached_prompt_tokens", "ferrite_engine_cached_prompt_tokens_total", "counter",
     "Prompt tokens reused from the prefix cache."),
    ("generated_tokens", "ferrite_engine_generated_tokens_total", "counter", "Tokens generated."),
    ("preemptions", "ferrite_engine_preemptions_total", "counter", "Sequences preempted for KV room."),
    ("requests_finished", "ferrite_engine_requests_finished_total", "counter", "Sequences finished."),
)


def _engine_metrics(metric: Any, stats: dict[str, Any]) -> None:
    for key, name, kind, help_text in _ENGINE:
        if key in stats:
            metric(name, kind, help_text, [f"{name} {_num(stats[key])}"])
    total = stats.get("kv_blocks_total")
    if total:
        metric("ferrite_kv_cache_usage_ratio", "gauge", "Fraction of KV-cache blocks in use.",
               [f"ferrite_kv_cache_usage_ratio {_num(stats.get('kv_blocks_used', 0) / total)}"])


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
