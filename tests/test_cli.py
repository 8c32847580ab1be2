"""`python -m ferrite info` against figures computed with gguf-py."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import gguf
import pytest

import ferrite


@pytest.fixture(scope="module")
def model_path():
    return ferrite.fetch_test_model(verbose=False)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferrite", *args], capture_output=True, text=True, timeout=120)


def test_info_summarizes_the_real_model(model_path):
    out = run_cli("info", model_path)
    assert out.returncode == 0, out.stderr
    ref = gguf.GGUFReader(model_path)
    n_params = sum(int(t.n_elements) for t in ref.tensors)
    assert f"({n_params:,})" in out.stdout
    assert "architecture  qwen2" in out.stdout
    assert "block_count                        24" in out.stdout
    assert "layer_norm_rms_epsilon   1e-06" in out.stdout
    counts = Counter(t.tensor_type.name for t in ref.tensors)
    nbytes = Counter()
    for t in ref.tensors:
        nbytes[t.tensor_type.name] += int(t.n_bytes)
    for name, count in counts.items():
        row = next(line for line in out.stdout.splitlines() if line.startswith(name + " "))
        assert row.split()[1] == str(count) and f"{nbytes[name]:,}" in row
    assert "gpt2 (pre-tokenizer qwen2), 151,936 tokens, 151,387 merges" in out.stdout
    assert "chat template present" in out.stdout


def test_info_on_a_bad_file_is_an_error_message_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    out = run_cli("info", str(bad))
    assert out.returncode == 1
    assert "magic" in out.stderr and "Traceback" not in out.stderr


def test_fetch_prints_the_verified_path(model_path):
    out = run_cli("fetch")
    assert out.returncode == 0 and out.stdout.strip() == model_path
