#!/usr/bin/env python3
"""Throughput of ``ferrite.ray`` with 1 and 2 CPU actors beside the Generator in this process.

    python benches/bench_ray.py [--model PATH] [--prompts 32] [--new-tokens 32] [--batch-size 8]
        [--threads 1] [--actors 1,2] [--inflight 1] [--json OUT]

Every run generates --new-tokens tokens for each of --prompts chat prompts (end-of-generation
ignored, greedy, prefix cache on as in normal use), so every run does the same work:

- Generator: ``Generator.generate`` on the whole list in this process, with --threads threads
  (the reference: one actor's share of the machine) and with every core;
- Ray, N actors: ``Dataset.map_batches(ferrite.ray.Generate, compute=ActorPoolStrategy(size=N))``
  on a local cluster (``ray.init(num_cpus=cores)``), each actor with --threads threads and
  num_cpus=--threads, batches of --batch-size rows, --inflight batches handed to an actor at a
  time (1, as ``ferrite.ray.generate`` does; 0 for Ray's default, which lets the first actor up
  queue batches the others would take).

tokens/s = prompts x new tokens / wall time. For Ray the wall time is the whole job as a user
waits for it (actors started, the model loaded in each, rows generated, results back); the
"startup" column is a job of one 1-token row per actor, the fixed part of that, and
"tok/s w/o startup" takes it out. Ratios are against the Generator with --threads threads.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import ferrite

TOPICS = ["the sea", "GPUs", "a cat", "compilers", "tea", "maps", "bees", "snow", "clocks", "jazz", "salt", "owls"]


def conversations(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Write a short essay about {TOPICS[i % len(TOPICS)]} (take {i})."}]
            for i in range(n)]


def ray_job(ray, path: str, rows: list[dict], actors: int, threads: int, batch_size: int, inflight: int | None,
            **sampling) -> float:
    import ferrite.ray

    ds = ray.data.from_items(rows)
    out = ds.map_batches(ferrite.ray.Generate, batch_size=batch_size, num_cpus=threads,
                         compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=inflight),
                         fn_constructor_kwargs=dict(model=path, threads=threads, **sampling))
    t0 = time.perf_counter()
    got = out.take_all()
    elapsed = time.perf_counter() - t0
    assert all(r["error"] is None for r in got), [r["error"] for r in got if r["error"]][:3]
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF path (default: the test model)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="threads (and Ray CPUs) per actor")
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--inflight", type=int, default=1,
                    help="ActorPoolStrategy's max_tasks_in_flight_per_actor (0: Ray's default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.inflight = args.inflight or None
    path = args.model or ferrite.fetch_test_model()
    convs = conversations(args.prompts)
    sampling = dict(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    tokens = args.prompts * args.new_tokens
    cores = os.cpu_count() or 1
    table = []

    for threads in sorted({args.threads, cores}):
        gen = ferrite.Generator.from_gguf(path, device="cpu", threads=threads)
        t0 = time.perf_counter()
        results = gen.generate(convs, **sampling)
        elapsed = time.perf_counter() - t0
        assert all(len(r.token_ids) == args.new_tokens for r in results)
        table.append(dict(run=f"Generator, in process", actors=0, threads=threads, wall_s=elapsed, startup_s=0.0))
        del gen

    import ray
    import ray.data

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        for actors in [int(a) for a in args.actors.split(",")]:
            startup = ray_job(ray, path, [{"prompt": "Hi"}] * actors, actors, args.threads, 1, args.inflight,
                              max_tokens=1)
            rows = [{"prompt": c} for c in convs]
            elapsed = ray_job(ray, path, rows, actors, args.threads, args.batch_size, args.inflight, **sampling)
            table.append(dict(run="ferrite.ray", actors=actors, threads=args.threads, wall_s=elapsed,
                              startup_s=startup))
    finally:
        ray.shutdown()

    ref = next(r for r in table if r["actors"] == 0 and r["threads"] == args.threads)
    ref_tps = tokens / ref["wall_s"]
    print(f"\n{args.prompts} chat prompts x {args.new_tokens} new tokens = {tokens} tokens, greedy, "
          f"batches of {args.batch_size} rows, max_tasks_in_flight_per_actor={args.inflight}, {cores} cores\n")
    print("| run | actors | threads each | wall s | startup s | tok/s | tok/s w/o startup | vs Generator |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in table:
        tps = tokens / r["wall_s"]
        net = tokens / max(r["wall_s"] - r["startup_s"], 1e-9)
        r.update(tok_s=tps, tok_s_without_startup=net, ratio=tps / ref_tps)
        print(f"| {r['run']} | {r['actors'] or '-'} | {r['threads']} | {r['wall_s']:.1f} | {r['startup_s']:.1f} | "
              f"{tps:.1f} | {net:.1f} | {tps / ref_tps:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), tokens=tokens, cores=cores, table=table), f, indent=1)


if __name__ == "__main__":
    main()
