"""``python -m ferrite generate`` and ``python -m ferrite chat``: streaming text to the terminal.

    python -m ferrite generate MODEL.gguf "Write a haiku about GPU computing"
    python -m ferrite generate --test-model "Write a haiku about GPU computing"
    python -m ferrite generate MODEL.gguf --raw "def fibonacci(n):" --temperature 0
    python -m ferrite chat --test-model --device cuda
"""

from __future__ import annotations

import argparse
import sys


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--test-model", action="store_true", help="use the test model (ferrite.fetch_test_model())")
    parser.add_argument("--device", default="cpu", help='"cpu" (default), "cuda" or "cuda:N"')
    parser.add_argument("--max-tokens", type=int, default=512, help="new tokens at most (default 512)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=40, help="0 disables (default 40)")
    parser.add_argument("--top-p", type=float, default=0.95, help="1 disables (default 0.95)")
    parser.add_argument("--min-p", type=float, default=0.05, help="0 disables (default 0.05)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="1 disables (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: from the clock)")
    parser.add_argument("--system", default=None, help="system message for the chat template")
    parser.add_argument("--stats", action="store_true", help="print token counts and speeds to stderr")


def _sampling(args: argparse.Namespace) -> dict:
    return dict(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )


def _load(model_path: str, device: str):
    import ferrite

    print(f"ferrite: loading {model_path} on {device}", file=sys.stderr)
    model = ferrite.Model.load(model_path, device=device)
    tokenizer = ferrite.Tokenizer.from_gguf(model_path)
    return ferrite.Generator(model, tokenizer), tokenizer


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _stream_to_terminal(generator, prompt, args: argparse.Namespace) -> str:
    stream = generator.stream(prompt, **_sampling(args))
    pieces = []
    try:
        for piece in stream:
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        stream.close()
    sys.stdout.write("\n")
    sys.stdout.flush()
    result = stream.result
    if args.stats and result is not None:
        t = result.timings
        print(
            f"[{len(result.token_ids)} tokens, finish={result.finish_reason}, seed={result.seed}; "
            f"prefill {t.prefill_tokens} tok at {t.prefill_tok_s:.1f} tok/s, "
            f"decode {t.decode_tokens} tok at {t.decode_tok_s:.1f} tok/s]",
            file=sys.stderr,
        )
    return "".join(pieces)


def _model_path(args: argparse.Namespace, positional: list[str], usage: str) -> tuple[str, list[str]]:
    if args.test_model:
        import ferrite

        return ferrite.fetch_test_model(), positional
    if not positional:
        raise SystemExit(f"{usage}\nerror: give MODEL.gguf, or --test-model")
    return positional[0], positional[1:]


def generate_main(argv: list[str]) -> int:
    usage = 'usage: python -m ferrite generate (MODEL.gguf | --test-model) "prompt" [options]'
    parser = argparse.ArgumentParser(prog="python -m ferrite generate", usage=usage)
    parser.add_argument("args", nargs="*", help='MODEL.gguf (unless --test-model) and the prompt ("-" reads stdin)')
    template = parser.add_mutually_exclusive_group()
    template.add_argument("--chat", dest="chat", action="store_true", default=None,
                          help="wrap the prompt in the model's chat template (default when it has one)")
    template.add_argument("--raw", dest="chat", action="store_false", help="use the prompt as raw text")
    _common(parser)
    args = parser.parse_args(argv)
    path, rest = _model_path(args, args.args, usage)
    if len(rest) != 1:
        parser.error("give exactly one prompt (quote it)")
    prompt = sys.stdin.read() if rest[0] == "-" else rest[0]

    generator, tokenizer = _load(path, args.device)
    chat = _has_chat_template(tokenizer) if args.chat is None else args.chat
    if chat:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": prompt})
        _stream_to_terminal(generator, messages, args)
    else:
        _stream_to_terminal(generator, prompt, args)
    return 0


def chat_main(argv: list[str]) -> int:
    usage = "usage: python -m ferrite chat (MODEL.gguf | --test-model) [options]"
    parser = argparse.ArgumentParser(prog="python -m ferrite chat", usage=usage)
    parser.add_argument("args", nargs="*", help="MODEL.gguf (unless --test-model)")
    _common(parser)
    args = parser.parse_args(argv)
    path, rest = _model_path(args, args.args, usage)
    if rest:
        parser.error(f"unexpected arguments: {rest}")

    generator, tokenizer = _load(path, args.device)
    if not _has_chat_template(tokenizer):
        print("ferrite chat: this model has no chat template; use `generate --raw`", file=sys.stderr)
        return 1
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    print("ferrite chat: /exit to leave, /reset to forget the conversation", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history.clear()
            continue
        history.append({"role": "user", "content": line})
        try:
            reply = _stream_to_terminal(generator, system + history, args)
        except KeyboardInterrupt:
            # Ctrl-C ends this reply, not the chat; the partial reply is dropped from history.
            print("\n[interrupted]", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})
