"""Command line: ``python -m ferrite <command> ...``.

    python -m ferrite fetch                 # download + verify the test model, print its path
    python -m ferrite info MODEL.gguf       # summary of a GGUF file
"""

from __future__ import annotations

import sys


def _fetch(argv: list[str]) -> int:
    from ferrite._fetch import ModelFetchError, fetch_test_model

    try:
        print(fetch_test_model())
    except ModelFetchError as e:
        print(f"ferrite fetch: {e}", file=sys.stderr)
        return 1
    return 0


def _info(argv: list[str]) -> int:
    from ferrite._info import main

    return main(argv)


COMMANDS = {
    "fetch": (_fetch, "download and verify the test model; print its path"),
    "info": (_info, "summarize a GGUF file"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m ferrite <command> [args]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<10} {help_text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    handler, _ = COMMANDS[argv[0]]
    try:
        return handler(argv[1:])
    except Exception as e:  # the CLI prints the error's message rather than a traceback
        from ferrite.errors import FerriteError

        if isinstance(e, (FerriteError, OSError)):
            print(f"ferrite {argv[0]}: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
