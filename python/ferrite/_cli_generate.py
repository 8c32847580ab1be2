"""``python -m ferrite generate`` and ``python -m ferrite chat``: streaming text to the terminal.

    python -m ferrite generate MODEL.gguf "Write a haiku about GPU computing"
    python -m ferrite generate --test-model "Write a haiku about GPU computing"
    python -m ferrite generate MODEL.gguf --raw "def fibonacci(n):" --temperature 0
    python -m ferrite chat --test-model --device cuda

Arguments are checked before the model is loaded; the sampling defaults are the API's
(``Generator.generate``/``stream``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Optional

from ferrite import _cli
from ferrite._cli import CliError, note

# The API's defaults (Generator.generate / Generator.stream); tests/test_cli.py checks them.
DEFAULTS = dict(max_tokens=256, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.0)


def _add_model_and_sampling(parser: argparse.ArgumentParser) -> None:
    _cli.add_model_arguments(parser)
    parser.add_argument("--device", type=_cli.device, default="auto",
                        help='"auto" (default: the first CUDA GPU when usable, else the CPU), "cpu", '
                             '"cuda" or "cuda:N"')
    s = parser.add_argument_group("sampling (the defaults are the Python API's)")
    s.add_argument("--max-tokens", type=_cli.non_negative_int, default=DEFAULTS["max_tokens"],
                   help="new tokens at most (default %(default)s)")
    s.add_argument("--temperature", type=_cli.non_negative_float, default=DEFAULTS["temperature"],
                   help="0 is greedy (default %(default)s)")
    s.add_argument("--top-k", type=_cli.non_negative_int, default=DEFAULTS["top_k"],
                   help="0 disables (default %(default)s)")
    s.add_argument("--top-p", type=_cli.top_p, default=DEFAULTS["top_p"], help="1 disables (default %(default)s)")
    s.add_argument("--min-p", type=_cli.unit_interval, default=DEFAULTS["min_p"],
                   help="0 disables (default %(default)s)")
    s.add_argument("--repetition-penalty", type=_cli.positive_float, default=DEFAULTS["repetition_penalty"],
                   help="1 disables (default %(default)s)")
    s.add_argument("--seed", type=_cli.seed, default=None, help="sampling seed (default: from the clock)")
    parser.add_argument("--system", default=None, help="system message for the chat template")
    parser.add_argument("--stats", action="store_true", help="print token counts and speeds to stderr")


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )


def _load(model_path: str, device: str) -> tuple[Any, Any]:
    import ferrite

    note(f"ferrite: loading {model_path} (device {device})")
    started = time.perf_counter()
    model = ferrite.Model.load(model_path, device=device)
    tokenizer = ferrite.Tokenizer.from_gguf(model_path)
    note(f"ferrite: loaded on {model.device} in {time.perf_counter() - started:.1f} s")
    return ferrite.Generator(model, tokenizer), tokenizer


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _stream_to_terminal(generator: Any, prompt: Any, args: argparse.Namespace) -> str:
    """Writes the generation piece by piece to stdout and returns the text. Ctrl-C stops it
    (the KV cache is freed) and propagates as KeyboardInterrupt."""
    stream = generator.stream(prompt, **_sampling(args))
    pieces: list[str] = []
    try:
        for piece in stream:
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        if pieces and _cli.is_terminal(sys.stdout):
            sys.stdout.write("\n")  # the message that follows starts on its own line
            sys.stdout.flush()
        raise
    finally:
        stream.close()
    sys.stdout.write("\n")
    sys.stdout.flush()
    result = stream.result
    if args.stats and result is not None:
        t = result.timings
        note(
            f"[{len(result.token_ids)} tokens, finish={result.finish_reason}, seed={result.seed}; "
            f"prefill {t.prefill_tokens} tok at {t.prefill_tok_s:.1f} tok/s, "
            f"decode {t.decode_tokens} tok at {t.decode_tok_s:.1f} tok/s]"
        )
    return "".join(pieces)


def _split_model_and_rest(parser: argparse.ArgumentParser, args: argparse.Namespace, names: str) -> list[str]:
    """Sets ``args.model`` from the positionals (unless ``--test-model``) and returns the rest."""
    positional: list[str] = list(args.args)
    if args.test_model:
        args.model = None
        return positional
    if not positional:
        parser.error(f"give {names}, or --test-model instead of MODEL.gguf")
    args.model = positional[0]
    return positional[1:]


# --- generate ---------------------------------------------------------------------------------

def add_generate_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "generate", parents=parents, help="stream a completion of a prompt (chat template by default)",
        description="Stream a completion of PROMPT to stdout. The prompt goes through the model's chat "
                    "template when it has one (--raw: as plain text).",
        usage='%(prog)s (MODEL.gguf | --test-model) PROMPT [options]',
    )
    p.add_argument("args", nargs="*", metavar="MODEL.gguf PROMPT",
                   help='the model (unless --test-model) and the prompt ("-" reads stdin)')
    template = p.add_mutually_exclusive_group()
    template.add_argument("--chat", dest="chat", action="store_true", default=None,
                          help="wrap the prompt in the model's chat template (default when it has one)")
    template.add_argument("--raw", dest="chat", action="store_false", help="use the prompt as raw text")
    _add_model_and_sampling(p)
    p.set_defaults(check=_check_generate, run=generate_main, subparser=p)
    return p


def _check_generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    rest = _split_model_and_rest(parser, args, "MODEL.gguf and a PROMPT")
    if len(rest) != 1:
        parser.error("give exactly one PROMPT after the model; quote it" if rest else "give a PROMPT")
    args.prompt = rest[0]


def generate_main(args: argparse.Namespace) -> int:
    path = _cli.resolve_model(args.model, args.test_model)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    generator, tokenizer = _load(path, args.device)
    chat = _has_chat_template(tokenizer) if args.chat is None else args.chat
    if chat:
        if not _has_chat_template(tokenizer):
            raise CliError(f"{path}: this model has no chat template; use --raw")
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": prompt})
        _stream_to_terminal(generator, messages, args)
    else:
        _stream_to_terminal(generator, prompt, args)
    return 0


# --- chat -------------------------------------------------------------------------------------

def add_chat_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "chat", parents=parents, help="interactive multi-turn chat with a model",
        description="Chat with a model through its chat template. Type /help in the chat for its "
                    "commands; Ctrl-D (end of input) or /exit leaves, Ctrl-C stops a reply.",
        usage="%(prog)s (MODEL.gguf | --test-model) [options]",
    )
    p.add_argument("args", nargs="*", metavar="MODEL.gguf", help="the model (unless --test-model)")
    _add_model_and_sampling(p)
    p.set_defaults(check=_check_chat, run=chat_main, subparser=p)
    return p


def _check_chat(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    rest = _split_model_and_rest(parser, args, "MODEL.gguf")
    if rest:
        parser.error(f"unexpected arguments: {' '.join(rest)} ; chat reads its messages from the terminal")


CHAT_HELP = """\
commands:
  /help            this list
  /reset           forget the conversation (the system message stays)
  /system TEXT     set the system message (the conversation is kept)
  /system          show the system message
  /exit, /quit     leave (as does Ctrl-D)
Ctrl-C while the model answers stops the reply (it is not kept); at the prompt it leaves.
A message that starts with / is sent as typed when written with two: //etc/hosts -> /etc/hosts"""


def _history_file() -> Optional[str]:
    from ferrite._fetch import cache_dir

    return str(cache_dir() / "chat_history")


def _enable_line_editing() -> Optional[str]:
    """Arrow keys, line editing and history through readline where Python has it (not on
    Windows' stock Python). Returns the history file to save at exit, if any."""
    try:
        import readline
    except ImportError:
        return None
    history = _history_file()
    if history:
        try:
            readline.read_history_file(history)
        except OSError:
            pass  # first run, or an unreadable file: start with an empty history
        readline.set_history_length(1000)
    return history


def _save_history(history: Optional[str]) -> None:
    if not history:
        return
    try:
        import readline

        os.makedirs(os.path.dirname(history), exist_ok=True)
        readline.write_history_file(history)
    except (ImportError, OSError):
        pass  # history is a convenience; never fail the chat over it


class ChatSession:
    """The conversation and the chat commands, apart from the terminal (tests drive it)."""

    def __init__(self, system: Optional[str]) -> None:
        self.system = system
        self.history: list[dict[str, str]] = []

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def command(self, text: str) -> Optional[str]:
        """Runs a /command; returns what to tell the user, or None for /exit."""
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return None
        if name == "/help":
            return CHAT_HELP
        if name == "/reset":
            n = len(self.history)
            self.history.clear()
            return f"[conversation cleared: {n} message{'s' if n != 1 else ''} forgotten]"
        if name == "/system":
            if not arg:
                return f"[system message: {self.system!r}]" if self.system else "[no system message: the template's default applies]"
            self.system = arg
            return f"[system message set ({len(arg)} characters); the conversation is kept]"
        return f"[unknown command {name}: /help lists them; write //{text[1:]} to send it as a message]"


def chat_main(args: argparse.Namespace) -> int:
    path = _cli.resolve_model(args.model, args.test_model)
    generator, tokenizer = _load(path, args.device)
    if not _has_chat_template(tokenizer):
        raise CliError(f"{path}: this model has no chat template; use `generate --raw`")
    session = ChatSession(args.system)
    interactive = _cli.is_terminal(sys.stdin)
    history = _enable_line_editing() if interactive else None
    note("ferrite chat: type a message; /help lists the commands; Ctrl-D or /exit leaves")
    try:
        while True:
            try:
                line = input("> " if interactive else "")
            except EOFError:
                if interactive:
                    sys.stdout.write("\n")  # leave the terminal on a fresh line, not after "> "
                    sys.stdout.flush()
                return 0
            text = line.strip()
            if not text:
                continue
            if text.startswith("/") and not text.startswith("//"):
                reply = session.command(text)
                if reply is None:
                    return 0
                note(reply)
                continue
            content = line.lstrip()[1:] if text.startswith("//") else line
            session.history.append({"role": "user", "content": content})
            try:
                answer = _stream_to_terminal(generator, session.messages(), args)
            except KeyboardInterrupt:
                # Ctrl-C ends this reply, not the chat; the partial reply is dropped.
                session.history.pop()
                note("[reply interrupted; it is not kept in the conversation]")
                continue
            session.history.append({"role": "assistant", "content": answer})
    finally:
        _save_history(history)
