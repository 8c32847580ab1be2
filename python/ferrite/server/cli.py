"""``ferrite serve MODEL.gguf`` (also ``python -m ferrite serve``): the OpenAI-compatible server.

    ferrite serve MODEL.gguf [--host 127.0.0.1] [--port 8000] [--device auto|cpu|cuda|cuda:N]
                  [--max-batch N] [--kv-cache-tokens N] [--kv-cache-dtype T] [--max-queue N] [--api-key KEY]

The server listens at once and answers ``/health`` with 503 while the model loads on a thread;
the URL is printed when it is ready. Ctrl-C or SIGTERM stops taking connections, lets running
requests finish for ``--shutdown-timeout`` seconds, cancels the rest, then stops the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The ``serve`` subcommand of ``python -m ferrite``; builds no server until it runs."""
    from ferrite import _cli

    p: argparse.ArgumentParser = sub.add_parser(
        "serve", parents=parents, help="OpenAI-compatible HTTP server (chat, completions, SSE streaming)",
        description="Serve a GGUF model over the OpenAI HTTP API: /v1/chat/completions, /v1/completions "
                    "(streamed as Server-Sent Events or not), /v1/models, /health, /metrics, /tokenize, "
                    "/detokenize. Needs the server extra: pip install 'ferrite-llm[server]'.",
        usage="%(prog)s (MODEL.gguf | --test-model) [options]")
    p.add_argument("model", nargs="?", metavar="MODEL.gguf", help="the GGUF file to serve")
    _cli.add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_cli.non_negative_int, default=8000,
                   help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--device", type=_cli.device, default="auto",
                   help='"auto" (default: the first CUDA GPU if usable, else the CPU), "cpu", "cuda" or "cuda:N"')
    p.add_argument("--max-batch", type=_cli.non_negative_int, default=64,
                   help="sequences the engine runs together (default 64)")
    p.add_argument("--kv-cache-tokens", type=_cli.non_negative_int, default=None,
                   help="token slots of the KV cache shared by all sequences (default: the model's choice)")
    p.add_argument("--kv-cache-dtype", default="float32", choices=["float32", "float16"],
                   help="what the KV cache stores keys and values as (default float32; float16 halves its memory)")
    p.add_argument("--max-queue", type=_cli.non_negative_int, default=256,
                   help="sequences allowed to wait beyond the running batch; past it requests get 503 (default 256)")
    p.add_argument("--api-key", default=os.environ.get("FERRITE_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' (default: $FERRITE_API_KEY, else none)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the file's stem)")
    p.add_argument("--max-body-bytes", type=_cli.non_negative_int, default=4 << 20,
                   help="largest request body (default 4 MiB)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let browser pages from ORIGIN call the API (CORS; repeat for more, '*' for any)")
    p.add_argument("--shutdown-timeout", type=_cli.non_negative_float, default=10.0,
                   help="seconds running requests get to finish on Ctrl-C/SIGTERM (default 10)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="uvicorn's log level (default warning; info logs every request)")
    p.set_defaults(check=_check, run=run, subparser=p)
    return p


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from ferrite import _cli

    _cli.check_model_choice(parser, args)
    for name in ("max_batch", "max_body_bytes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from ferrite import _cli

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise _cli.CliError(f"the server extra is not installed ({e.name} is missing): "
                            "pip install 'ferrite-llm[server]'") from None
    if not _is_loopback(args.host) and not args.api_key:
        _cli.note(f"ferrite serve: WARNING: listening on {args.host} without --api-key: anyone who can reach "
                  "this address can use the model")
    path = _cli.resolve_model(args.model, args.test_model)
    return _serve(args, str(path))


def _serve(args: argparse.Namespace, path: str) -> int:
    import uvicorn

    from ferrite.server.app import Loaded, Server, Settings, build_app

    def load() -> Loaded:
        import ferrite

        model = ferrite.Model.load(path, device=args.device, max_batch=args.max_batch,
                                   kv_cache_tokens=args.kv_cache_tokens, kv_cache_dtype=args.kv_cache_dtype)
        tokenizer = ferrite.Tokenizer.from_gguf(path)
        return Loaded(engine=ferrite.Engine(model, tokenizer), tokenizer=tokenizer, device=model.device)

    exit_code = [0]
    uv: Optional["uvicorn.Server"] = None

    def on_ready(server: Server) -> None:
        asyncio.ensure_future(_announce(uv, server, args.host))

    def on_load_error(err: BaseException) -> None:
        print(f"ferrite serve: loading {path} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        exit_code[0] = 1
        if uv is not None:
            uv.should_exit = True

    settings = Settings(model_name=args.model_name or Path(path).stem, max_queue=args.max_queue,
                        api_key=args.api_key or None, max_body_bytes=args.max_body_bytes,
                        allow_origins=tuple(args.allow_origin))
    server = Server(settings, load, on_ready=on_ready, on_load_error=on_load_error)
    config = uvicorn.Config(build_app(server), host=args.host, port=args.port, log_level=args.log_level,
                            access_log=args.log_level in ("debug", "info"), lifespan="on",
                            timeout_graceful_shutdown=args.shutdown_timeout)
    uv = _uvicorn_server_class()(config)
    print(f"ferrite serve: loading {path} on {args.device}", file=sys.stderr, flush=True)
    uv.run()  # installs its own SIGINT/SIGTERM handlers: graceful shutdown, then lifespan shutdown
    if exit_code[0] == 0 and not uv.started:
        exit_code[0] = 1  # could not bind the port (uvicorn printed why)
    print("ferrite serve: stopped", file=sys.stderr, flush=True)
    return exit_code[0]


def _uvicorn_server_class() -> type:
    import uvicorn

    class Uvicorn(uvicorn.Server):
        """uvicorn's server, but a SIGINT/SIGTERM ends ``run()`` normally (exit status 0 after a
        clean stop) instead of being raised again once uvicorn has shut down."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Uvicorn


async def _announce(uv: object, server: object, host: str) -> None:
    """Prints the URL once uvicorn has bound its socket (the model may load faster than that)."""
    while not getattr(uv, "started", False):
        if getattr(uv, "should_exit", False):
            return
        await asyncio.sleep(0.02)
    port = uv.servers[0].sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    shown = f"[{host}]" if ":" in host else host
    loaded = server.loaded  # type: ignore[attr-defined]
    print(f"ferrite serve: ready at http://{shown}:{port}/v1 (model '{server.settings.model_name}' "  # type: ignore[attr-defined]
          f"on {loaded.device})", flush=True)
