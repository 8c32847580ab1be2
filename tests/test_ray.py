"""``ferrite.ray`` on a local Ray cluster of this CPU machine (``ray.init(num_cpus=2)``), with the
real test model in two one-thread actors. References: ``ferrite.Generator`` in this process for
the same prompts (greedy text, token counts), the same job run twice (seeded sampling), the
engine's own errors for bad rows; a second cluster in a subprocess with two fake GPUs
(``num_gpus=2`` on this GPU-less machine) for the device each actor is given.
"""

import json
import subprocess
import sys
import textwrap

import pytest

ray = pytest.importorskip("ray", reason="the Ray tests need the test extra (ray[data])")
import ray.data  # noqa: E402

import ferrite  # noqa: E402
import ferrite.ray  # noqa: E402

pytestmark = pytest.mark.model

MAX_TOKENS = 8
TOPICS = ["the sea", "GPUs", "a cat", "rust", "tea", "maps", "bees", "snow", "clocks", "jazz", "salt", "owls",
          "rain", "kites", "moss", "chess"]
PROMPTS = [f"A short note about {TOPICS[i % 16]} (number {i}):" for i in range(32)]
# Two actors of one thread each: the machine has 2 cores.
ACTORS = dict(compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1)


@pytest.fixture(scope="module")
def model_path():
    return ferrite.fetch_test_model()


@pytest.fixture(scope="module")
def gen(model_path):
    return ferrite.Generator.from_gguf(model_path, device="cpu")


@pytest.fixture(scope="module")
def cluster():
    # One local cluster for the module (only one ray.init per process at a time); the fake-GPU
    # cluster runs in a subprocess.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def run(ds, model_path, batch_size=8, batch_format="numpy", **kw):
    kw = {"model": model_path, "threads": 1, "max_tokens": MAX_TOKENS, **kw}
    out = ds.map_batches(ferrite.ray.Generate, fn_constructor_kwargs=kw, batch_size=batch_size,
                         batch_format=batch_format, **ACTORS)
    return out.take_all()


def by(rows, key):
    return {r[key]: r for r in rows}


def test_import_ferrite_does_not_import_ray():
    code = "import sys, ferrite; print([m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'ferrite.ray'))])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_greedy_rows_equal_the_generator_and_bad_rows_fail_alone(cluster, model_path, gen):
    too_long = "hello " * (gen.engine.context_length + 10)
    rows = [{"i": i, "prompt": p, "max_tokens": None, "temperature": None} for i, p in enumerate(PROMPTS)]
    bad = {32: dict(prompt=too_long), 33: dict(prompt="ok", temperature=-1.0), 34: dict(prompt="ok", max_tokens=-3)}
    rows += [{"i": i, "max_tokens": None, "temperature": None, **b} for i, b in bad.items()]
    got = by(run(ray.data.from_items(rows), model_path, temperature=0.0), "i")

    want = gen.generate(PROMPTS, max_tokens=MAX_TOKENS, temperature=0.0)
    assert sorted(got) == list(range(35))
    for i, w in enumerate(want):
        g = got[i]
        assert g["error"] is None, g["error"]
        assert g["text"] == w.text, i
        assert g["finish_reason"] == w.finish_reason
        assert g["prompt_tokens"] == len(w.prompt_token_ids)
        assert g["completion_tokens"] == len(w.token_ids)
    for i, kind in [(32, "ContextLengthError"), (33, "SamplingParameterError"), (34, "SamplingParameterError")]:
        g = got[i]
        assert g["error"].startswith(kind), g["error"]
        assert (g["text"], g["finish_reason"], g["prompt_tokens"], g["completion_tokens"]) == ("", "error", 0, 0)


def test_chat_messages_in_pandas_batches_and_a_malformed_message(cluster, model_path, gen):
    convs = [[{"role": "user", "content": f"Name a color, take {i}."}] for i in range(4)]
    # Arrow gives every message the fields of all: "name" is None where a message has none.
    convs.append([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!", "name": "ann"}])
    rows = [{"i": i, "prompt": c} for i, c in enumerate(convs)]
    rows.append({"i": 5, "prompt": [{"role": "user"}]})  # no content
    want = gen.generate(convs, max_tokens=MAX_TOKENS, temperature=0.0)
    for fmt in ("pandas", "numpy"):
        got = by(run(ray.data.from_items(rows), model_path, batch_size=3, batch_format=fmt, temperature=0.0), "i")
        assert [got[i]["text"] for i in range(5)] == [w.text for w in want], fmt
        assert all(got[i]["error"] is None for i in range(5))
        assert got[5]["error"].startswith("TokenizerError") and got[5]["finish_reason"] == "error", got[5]


def test_per_row_seeds_reproduce_across_jobs(cluster, model_path):
    rows = [{"i": i, "prompt": PROMPTS[i % 4], "seed": 100 + i} for i in range(8)]
    sampled = dict(temperature=0.8, top_k=0, top_p=1.0, min_p=0.0)
    first = by(run(ray.data.from_items(rows), model_path, batch_size=3, **sampled), "i")
    # The same rows again (a retried task), and beside them the same prompts with other seeds.
    again = rows + [{"i": 8 + i, "prompt": PROMPTS[i % 4], "seed": 900 + i} for i in range(8)]
    second = by(run(ray.data.from_items(again), model_path, batch_size=5, **sampled), "i")
    assert [first[i]["text"] for i in range(8)] == [second[i]["text"] for i in range(8)]
    assert sum(second[i]["text"] != second[8 + i]["text"] for i in range(8)) >= 4


def test_generate_returns_rows_in_input_order(cluster, model_path, gen):
    prompts = PROMPTS[:12]
    got = ferrite.ray.generate(prompts, model_path, num_actors=2, batch_size=2, threads=1, max_tokens=4,
                               temperature=0.0, progress=False)
    want = gen.generate(prompts, max_tokens=4, temperature=0.0)
    assert [r["text"] for r in got] == [w.text for w in want]
    assert all(set(r) == {"text", "finish_reason", "prompt_tokens", "completion_tokens", "error"} for r in got)
    assert all(r["error"] is None for r in got)


def test_generate_on_a_dataset_keeps_its_order_and_columns(cluster, model_path):
    ds = ray.data.from_items([{"tag": f"t{i}", "prompt": PROMPTS[i], "seed": i} for i in range(6)])
    got = ferrite.ray.generate(ds, model_path, num_actors=2, batch_size=1, threads=1, max_tokens=2, progress=False)
    assert [r["tag"] for r in got] == [f"t{i}" for i in range(6)]
    assert all(r["prompt"] == PROMPTS[i] and r["seed"] == i and r["completion_tokens"] == 2 for i, r in enumerate(got))
    assert ds.context.execution_options.preserve_order is False  # the job's setting, undone


FAKE_GPUS = textwrap.dedent("""
    import json, sys
    import ray, ray.data
    import ferrite, ferrite.ray
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    # Both actors up before the first batch is handed out, so that each gets rows.
    ray.data.DataContext.get_current().wait_for_min_actors_s = 120
    ds = ray.data.from_items([{"i": i, "prompt": f"Count to {i}:"} for i in range(8)])
    out = ds.map_batches(ferrite.ray.Generate, batch_size=2, num_gpus=1, num_cpus=1,
                         compute=ray.data.ActorPoolStrategy(size=2),
                         fn_constructor_kwargs=dict(model=sys.argv[1], threads=1, max_tokens=2, temperature=0.0,
                                                    device_columns=True))
    rows = out.take_all()
    ray.shutdown()
    print(json.dumps([{k: r[k] for k in ("i", "device", "gpu_ids", "error", "completion_tokens")} for r in rows]))
""")


@pytest.mark.skipif(ferrite.cuda_available(), reason="fakes two GPUs on a machine that has none")
def test_each_actor_gets_its_own_fake_gpu_and_runs_on_the_cpu(model_path):
    out = subprocess.run([sys.executable, "-c", FAKE_GPUS, model_path], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(r["i"] for r in rows) == list(range(8))
    assert all(r["error"] is None and r["completion_tokens"] == 2 for r in rows)
    assert {r["device"] for r in rows} == {"cpu"}  # cuda_available() is False: the CPU, with a warning
    # Two actors, one GPU id each, distinct.
    assert {r["gpu_ids"] for r in rows} == {"0", "1"}


def test_ferrite_ray_passes_mypy_strict(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / ".mypy_cache"),
                          "-p", "ferrite.ray"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_bad_job_wide_option_fails_at_actor_start(model_path):
    # In this process: the constructor is what each actor runs first.
    with pytest.raises(ferrite.SamplingParameterError):
        ferrite.ray.Generate(model_path, device="cpu", threads=1, temperature=-1.0)
    with pytest.raises(TypeError, match="temprature"):
        ferrite.ray.Generate(model_path, device="cpu", threads=1, temprature=0.5)
