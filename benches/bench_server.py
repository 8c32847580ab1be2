"""Load test of ``ferrite serve``: N concurrent streaming clients for a fixed time, and beside it
the engine's own throughput on the same batch in the same run.

    # against a server already running
    python benches/bench_server.py --url http://127.0.0.1:8000/v1 --clients 16 --duration 30

    # one command: start the server on the test model, load it, stop it, then time the engine
    # alone on the same work (the H200 figures of docs/BENCHMARKS.md)
    python benches/bench_server.py --serve --test-model --device cuda --clients 64 --duration 60 --engine

Each client loops: one streamed chat completion (``--max-tokens`` tokens, ``ignore_eos`` so every
request makes exactly that many; ``stream_options.include_usage`` for the token counts), then the
next, until ``--duration`` seconds have passed; requests still running then are finished and
counted. Prints requests/s, output tokens/s, time to first token (TTFT), inter-token latency
(ITL: the gap between consecutive content chunks) and whole-request latency percentiles.
``--engine``: after the server has stopped, the same model is loaded in this process and
``--clients`` requests of the same prompt and length are run straight on ``ferrite.Engine``,
repeated for about the same time; the ratio server / engine is the cost of HTTP, JSON and SSE.
The client runs on the same machine as the server and takes CPU from it (on a 2-core machine,
a lot: say so beside the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


@dataclass
class Sample:
    ok: bool
    start: float
    end: float
    ttft_s: float = float("nan")
    gaps_s: list = field(default_factory=list)
    completion_tokens: int = 0
    error: str = ""


async def one_request(client, url: str, body: dict, headers: dict) -> Sample:
    t0 = time.perf_counter()
    last = None
    s = Sample(ok=False, start=t0, end=t0)
    try:
        async with client.stream("POST", url, json=body, headers=headers) as r:
            if r.status_code != 200:
                s.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                s.end = time.perf_counter()
                return s
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    s.error = chunk["error"]["message"]
                    break
                if chunk.get("usage"):
                    s.completion_tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices", ()):
                    if choice.get("delta", {}).get("content"):
                        now = time.perf_counter()
                        if last is None:
                            s.ttft_s = now - t0
                        else:
                            s.gaps_s.append(now - last)
                        last = now
    except Exception as e:  # noqa: BLE001 - a failed request is counted, not fatal
        s.error = f"{type(e).__name__}: {e}"
    s.end = time.perf_counter()
    s.ok = not s.error and s.completion_tokens > 0
    return s


async def load(args: argparse.Namespace, base_url: str) -> tuple[list[Sample], float]:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        models = (await client.get(base_url + "/models", headers=headers)).json()
        model = args.model or models["data"][0]["id"]
        body = {
            "model": model,
            "messages": [{"role": "user", "content": args.prompt}],
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        url = base_url + "/chat/completions"
        # One warm-up request (kernel compilation, caches) outside the timed window.
        warm = await one_request(client, url, {**body, "max_tokens": 4}, headers)
        if not warm.ok:
            raise SystemExit(f"warm-up request failed: {warm.error}")
        samples: list[Sample] = []
        t_start = time.perf_counter()
        deadline = t_start + args.duration

        async def worker() -> None:
            while time.perf_counter() < deadline:
                samples.append(await one_request(client, url, body, headers))

        await asyncio.gather(*(worker() for _ in range(args.clients)))
        return samples, time.perf_counter() - t_start


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def report(samples: list[Sample], wall_s: float) -> dict:
    ok = [s for s in samples if s.ok]
    tokens = sum(s.completion_tokens for s in ok)
    ttft = [s.ttft_s for s in ok]
    gaps = [g for s in ok for g in s.gaps_s]
    e2e = [s.end - s.start for s in ok]
    return {
        "requests": len(ok),
        "errors": len(samples) - len(ok),
        "first_error": next((s.error for s in samples if not s.ok), ""),
        "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s,
        "output_tok_s": tokens / wall_s,
        **{f"ttft_p{q}_ms": 1000 * pct(ttft, q) for q in (50, 90, 99)},
        **{f"itl_p{q}_ms": 1000 * pct(gaps, q) for q in (50, 90, 99)},
        **{f"latency_p{q}_s": pct(e2e, q) for q in (50, 90, 99)},
    }


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "ferrite", "serve", "--port", "0", "--device", args.device,
           "--max-batch", str(max(args.clients, 1))]
    cmd += ["--test-model"] if args.test_model else [args.model_path]
    if args.kv_cache_tokens:
        cmd += ["--kv-cache-tokens", str(args.kv_cache_tokens)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # "ferrite serve: ready at http://127.0.0.1:PORT/v1 (...)"
        m = re.search(r"ready at (http://\S+/v1)", line)
        if m:
            return proc, m.group(1)
    raise SystemExit(f"the server exited ({proc.wait()}) before it was ready")


def engine_alone(args: argparse.Namespace, wall_s: float) -> dict:
    """The same work on ferrite.Engine in this process: --clients requests at a time, rounds until
    about ``wall_s`` has passed; output tokens per second."""
    import ferrite

    path = ferrite.fetch_test_model() if args.test_model else args.model_path
    model = ferrite.Model.load(path, device=args.device, max_batch=max(args.clients, 1),
                               kv_cache_tokens=args.kv_cache_tokens)
    tok = ferrite.Tokenizer.from_gguf(path)
    engine = ferrite.Engine(model, tok)
    prompt = [{"role": "user", "content": args.prompt}]

    def round_(n_tokens: int) -> int:
        reqs = [engine.submit(prompt, max_tokens=n_tokens, temperature=args.temperature, top_k=0, top_p=1.0,
                              min_p=0.0, ignore_eos=True) for _ in range(args.clients)]
        tokens = 0
        while engine.has_work():
            engine.step()
            tokens += sum(len(out.token_ids) for r in reqs for out in r.poll())
        return tokens + sum(len(out.token_ids) for r in reqs for out in r.poll())

    round_(4)  # warm-up
    tokens, t0 = 0, time.perf_counter()
    while True:
        tokens += round_(args.max_tokens)
        if time.perf_counter() - t0 >= min(wall_s, args.duration):
            break
    elapsed = time.perf_counter() - t0
    return {"output_tok_s": tokens / elapsed, "wall_s": elapsed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000/v1", help="the server's base URL (…/v1)")
    ap.add_argument("--serve", action="store_true", help="start `ferrite serve` for the run, stop it after")
    ap.add_argument("--test-model", action="store_true", help="with --serve/--engine: the test model")
    ap.add_argument("--model-path", help="with --serve/--engine: a GGUF file")
    ap.add_argument("--device", default="cpu", help="with --serve/--engine (default cpu)")
    ap.add_argument("--kv-cache-tokens", type=int, default=None)
    ap.add_argument("--engine", action="store_true", help="also time ferrite.Engine alone on the same work")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens each request generates (default 64)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--model", default=None, help="model id to send (default: the server's first)")
    ap.add_argument("--api-key", default=os.environ.get("FERRITE_API_KEY"))
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if (args.serve or args.engine) and not (args.test_model or args.model_path):
        ap.error("--serve and --engine need --test-model or --model-path")

    proc = None
    url = args.url
    if args.serve:
        proc, url = start_server(args)
    try:
        samples, wall_s = asyncio.run(load(args, url))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    server = report(samples, wall_s)
    engine = engine_alone(args, wall_s) if args.engine else None

    print(f"\n{args.clients} streaming clients, {args.max_tokens} tokens each, {args.duration:g} s "
          f"({server['wall_s']:.1f} s with the last requests), device {args.device}")
    print(f"requests {server['requests']} ok, {server['errors']} failed"
          + (f" (first: {server['first_error']})" if server["errors"] else ""))
    print("\n| figure | p50 | p90 | p99 |\n| --- | ---: | ---: | ---: |")
    for name, key, unit in (("time to first token", "ttft", "ms"), ("inter-token latency", "itl", "ms"),
                            ("request latency", "latency", "s")):
        print(f"| {name} ({unit}) | " + " | ".join(f"{server[f'{key}_p{q}_{unit}']:.1f}" for q in (50, 90, 99)) + " |")
    print("\n| | requests/s | output tokens/s |\n| --- | ---: | ---: |")
    print(f"| ferrite serve | {server['requests_per_s']:.2f} | {server['output_tok_s']:.1f} |")
    if engine is not None:
        print(f"| ferrite.Engine alone (same batch) | - | {engine['output_tok_s']:.1f} |")
        print(f"| server / engine | | {server['output_tok_s'] / engine['output_tok_s']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "server": server, "engine": engine}, f, indent=2)
    return 0 if server["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
