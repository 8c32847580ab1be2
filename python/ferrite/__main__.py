"""Command line: ``python -m ferrite <command> ...`` (also installed as ``ferrite``).

    python -m ferrite fetch                 # download + verify the test model, print its path
    python -m ferrite info MODEL.gguf       # summary of a GGUF file (or --test-model)
    python -m ferrite generate MODEL.gguf "prompt"      # stream a completion to the terminal
    python -m ferrite generate --test-model "Write a haiku about GPU computing"
    python -m ferrite chat MODEL.gguf       # interactive multi-turn chat (/help inside)
    python -m ferrite serve MODEL.gguf      # OpenAI-compatible HTTP server (the server extra)

Every command parses and checks its arguments before doing any work, so ``--help`` never has a
side effect. Errors are one line on stderr (``--debug`` adds the traceback); exit statuses: 0
done, 1 an input error, 2 an argument error, 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Any, Optional

from ferrite import _cli
from ferrite._cli import EXIT_INPUT, EXIT_INTERRUPTED, CliError, CliParser

PROG = "python -m ferrite"
COMMANDS = ("fetch", "info", "generate", "chat", "serve")


class _VersionAction(argparse.Action):
    """``--version``; imports the native module only when asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from ferrite._ferrite import __version__

        print(f"ferrite {__version__}")
        parser.exit(0)


def _fetch_main(args: argparse.Namespace) -> int:
    from ferrite._fetch import fetch_test_model

    print(fetch_test_model(verbose=not args.quiet))
    return 0


def build_parser() -> CliParser:
    parser = CliParser(prog=PROG, description="ferrite: GGUF files, their tokenizer, and Qwen2-family "
                       "inference on CPU and NVIDIA GPUs.",
                       epilog=f"`{PROG} COMMAND --help` describes a command.")
    parser.add_argument("--version", action=_VersionAction)
    _cli.add_debug_flag(parser)
    common = CliParser(add_help=False)
    _cli.add_debug_flag(common)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliParser)

    fetch = sub.add_parser("fetch", parents=[common], help="download and verify the test model; print its path",
                           description="Download the test model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, 491 MB) "
                                       "once into the cache (~/.cache/ferrite, $FERRITE_CACHE), check its "
                                       "sha256, and print its path.")
    fetch.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    fetch.set_defaults(run=_fetch_main, subparser=fetch)

    from ferrite import _cli_generate, _info

    _info.add_parser(sub, [common])
    _cli_generate.add_generate_parser(sub, [common])
    _cli_generate.add_chat_parser(sub, [common])
    from ferrite.server import cli as _serve_cli  # argparse only: the server stack loads when it runs

    _serve_cli.add_parser(sub, [common])
    return parser


def _command_name(argv: list[str]) -> Optional[str]:
    return next((a for a in argv if not a.startswith("-")), None)


def _configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ferrite: %(message)s"))
    logger = logging.getLogger("ferrite")
    logger.addHandler(handler)
    # The fetch shows its own progress; the log adds the details only when debugging.
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    command = _command_name(argv)
    prog = f"{PROG} {command}" if command in COMMANDS else PROG
    try:
        if command is not None and command not in COMMANDS:
            print(f"{PROG}: error: unknown command {command!r} (commands: {', '.join(COMMANDS)}; "
                  f"see --help)", file=sys.stderr)
            return _cli.EXIT_USAGE
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return _cli.EXIT_USAGE
        if extra and hasattr(args, "args"):
            # argparse gives a list positional only the words before the first option, so in
            # `generate MODEL --raw PROMPT` the prompt comes back as an extra; put it back in order.
            words = [e for e in extra if e == "-" or not e.startswith("-")]
            args.args = list(args.args) + words
            extra = [e for e in extra if e not in words]
        if extra:  # reported by the command's parser, so the message names the command
            args.subparser.error(f"unrecognized arguments: {' '.join(extra)}")
        check = getattr(args, "check", None)
        if check is not None:
            check(args.subparser, args)
        _configure_logging(debug)
        status: int = args.run(args)
        return status
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly; point stdout at nothing so the
        # interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_INPUT
    except CliError as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.status
    except Exception as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {_describe(e)}", file=sys.stderr)
        return EXIT_INPUT


def _describe(e: Exception) -> str:
    """One line for an error: the message of an error about the input, the class as well for
    anything else (a bug), with a pointer to --debug."""
    from ferrite._fetch import ModelFetchError
    from ferrite.errors import FerriteError

    message = str(e) or type(e).__name__
    if isinstance(e, ModelFetchError):
        return message  # several lines on purpose: the failed command and what to do offline
    if isinstance(e, (FerriteError, OSError, ValueError)):
        return " ".join(message.split("\n"))
    return f"{type(e).__name__}: {' '.join(message.split())} (an internal error; --debug shows the traceback)"


if __name__ == "__main__":
    sys.exit(main())
