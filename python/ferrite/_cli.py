"""What every ``python -m ferrite`` command shares: an argument parser whose errors are one line,
argument types that validate before any work is done, and the model path (a file or
``--test-model``).

Exit statuses: 0 done, 1 an input error (a missing or malformed file, a model the command cannot
use), 2 an argument error, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from typing import NoReturn, Optional

EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An error the CLI reports as one line (no traceback) with an exit status."""

    def __init__(self, message: str, status: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.status = status


class CliParser(argparse.ArgumentParser):
    """argparse, except that an argument error is one line on stderr (exit status 2) that names
    the problem and points at ``--help``, instead of the usage block followed by the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, show the Python traceback too")


# --- argument types: each raises ArgumentTypeError, which argparse reports as one line ----------

def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def seed(text: str) -> int:
    value = _int(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be in 0 .. 2**64-1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value:g}")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value:g}")
    return value


def top_p(text: str) -> float:
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return value


def unit_interval(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value:g}")
    return value


_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def device(text: str) -> str:
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f'{text!r} is not a device: use "auto", "cpu", "cuda" or "cuda:N"')
    return text


# --- the model file ---------------------------------------------------------------------------

def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--test-model", action="store_true",
                        help="use the test model (downloaded once by `python -m ferrite fetch`) "
                             "instead of MODEL.gguf")


def check_model_choice(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exactly one of a positional MODEL.gguf and ``--test-model``; else an argument error."""
    if args.test_model and args.model:
        parser.error("give MODEL.gguf or --test-model, not both")
    if not args.test_model and not args.model:
        parser.error("give MODEL.gguf, or --test-model")


def check_model_file(path: str) -> str:
    """``path`` if it names a readable regular file; else a one-line input error."""
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CliError(f"{path}: is a directory, not a GGUF file")
    if not os.path.isfile(path):
        raise CliError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise CliError(f"{path}: permission denied")
    return path


def resolve_model(model: Optional[str], test_model: bool) -> str:
    """The model file to open: ``model`` after checking it, or the test model (fetched, verified)."""
    if test_model:
        from ferrite._fetch import fetch_test_model

        return fetch_test_model(verbose=True)
    assert model is not None  # the parsers require one of the two
    return check_model_file(model)


def is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (OSError, ValueError):
        return False


def note(message: str) -> None:
    """A status line for the person at the terminal; stdout stays the program's output."""
    print(message, file=sys.stderr, flush=True)
