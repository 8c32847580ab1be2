"""Command line: ``python -m ferrite <command> ...``.

    python -m ferrite fetch                 # download + verify the test model, print its path
    python -m ferrite info MODEL.gguf       # summary of a GGUF file
    python -m ferrite generate MODEL.gguf "prompt"      # stream a completion to the terminal
    python -m ferrite generate --test-model "Write a haiku about GPU computing"
    python -m ferrite chat MODEL.gguf       # interactive multi-turn chat (/exit to leave)
    python -m ferrite serve MODEL.gguf      # OpenAI-compatible HTTP server (pip install 'ferrite[server]')
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


def _generate(argv: list[str]) -> int:
    from ferrite._cli_generate import generate_main

    return generate_main(argv)


def _chat(argv: list[str]) -> int:
    from ferrite._cli_generate import chat_main

    return chat_main(argv)


def _serve(argv: list[str]) -> int:
    from ferrite.server.cli import main

    return main(argv)


COMMANDS = {
    "fetch": (_fetch, "download and verify the test model; print its path"),
    "info": (_info, "summarize a GGUF file"),
    "generate": (_generate, "stream a completion of a prompt (chat template by default)"),
    "chat": (_chat, "interactive multi-turn chat with a model"),
    "serve": (_serve, "OpenAI-compatible HTTP server (chat, completions, SSE streaming)"),
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
