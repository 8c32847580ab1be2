"""The Starlette application: routes, the bearer-token check, the body cap, and the SSE response
that cancels its sequences when the client goes away.

    GET  /health                 503 until the model is loaded, then 200
    GET  /metrics                Prometheus text
    GET  /v1/models              the one served model (and /v1/models/{id})
    POST /v1/chat/completions    messages -> the GGUF's chat template -> the engine
    POST /v1/completions         prompt(s) -> the engine
    POST /tokenize, /detokenize  the token ids a prompt becomes, and back

Every failure is an OpenAI error body (``errors.APIError``); ``/health`` is the only route open
without the API key.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, MutableMapping, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ferrite.server import responses as R
from ferrite.server import sse
from ferrite.server.errors import APIError, bad_request, error_body
from ferrite.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ferrite.server.metrics import Metrics
from ferrite.server.protocol import (
    ChatRequest,
    CompletionRequest,
    parse_chat_request,
    parse_completion_request,
    parse_detokenize_request,
    parse_tokenize_request,
)
from ferrite.server.pump import EnginePump, EngineStopped, Group, QueueFull

log = logging.getLogger("ferrite.server")

DEFAULT_MAX_BODY_BYTES = 4 << 20
RETRY_AFTER_S = 1
_OPEN_PATHS = ("/health",)
_ROUTES_COUNTED = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
                   "/tokenize", "/detokenize")


@dataclass
class Loaded:
    """What serving needs, made by the loader (off the event loop)."""

    engine: Any
    tokenizer: Any
    device: str


@dataclass
class Settings:
    model_name: str
    max_queue: int = 256
    api_key: Optional[str] = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allow_origins: tuple[str, ...] = ()  # browser origins allowed by CORS (web UIs); none by default


class Server:
    """The state shared by the routes: settings, metrics, and the engine once loaded."""

    def __init__(self, settings: Settings, loader: Callable[[], Loaded],
                 on_ready: Optional[Callable[["Server"], None]] = None,
                 on_load_error: Optional[Callable[[BaseException], None]] = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.created = R.now()
        self._loader = loader
        self._on_ready = on_ready
        self._on_load_error = on_load_error
        self.loaded: Optional[Loaded] = None
        self.pump: Optional[EnginePump] = None
        self.pieces: Optional[R.TokenPieces] = None
        self.load_error: Optional[str] = None
        self.capacity_tokens: Optional[int] = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads the model on a thread, so the server answers ``/health`` (503) meanwhile."""
        loop = asyncio.get_running_loop()
        self._loading = loop.run_in_executor(None, self._loader)
        self._loading.add_done_callback(self._loaded)

    def _loaded(self, fut: "asyncio.Future[Loaded]") -> None:
        if fut.cancelled():
            return
        err = fut.exception()
        if err is not None:
            self.load_error = f"{type(err).__name__}: {err}"
            if self._on_load_error is not None:
                self._on_load_error(err)
            else:
                log.error("loading the model failed: %s", self.load_error)
            return
        loaded = fut.result()
        stats = loaded.engine.stats()
        # Token slots of the KV cache shared by all sequences: one sequence can use at most this.
        self.capacity_tokens = int(stats.get("kv_blocks_total", 0) * stats.get("kv_block_tokens", 0)) or None
        self.pump = EnginePump(loaded.engine, self.metrics, self.settings.max_queue)
        self.pump.start(asyncio.get_running_loop())
        self.pieces = R.TokenPieces(loaded.tokenizer)
        self.loaded = loaded
        if self._on_ready is not None:
            self._on_ready(self)

    async def stop(self) -> None:
        if self.pump is not None:
            await self.pump.stop()

    # --- helpers of the routes -----------------------------------------------------------------

    def ready(self) -> Loaded:
        if self.loaded is None:
            raise APIError(503, self.load_error or "the model is still loading", code="model_loading",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        return self.loaded

    def check_model(self, name: Optional[str]) -> None:
        if name is not None and name != self.settings.model_name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves "
                                f"'{self.settings.model_name}'", param="model", code="model_not_found")

    @property
    def context_length(self) -> int:
        return int(self.ready().engine.context_length)

    def max_tokens_for(self, requested: Optional[int], prompt_tokens: int, param: str) -> int:
        """The generation budget, or a 400 before any work when the prompt cannot fit."""
        ctx = self.context_length
        if prompt_tokens >= ctx:
            raise bad_request(
                f"This model's maximum context length is {ctx} tokens; the prompt has {prompt_tokens} tokens "
                "and leaves no room for completion tokens", param, code="context_length_exceeded")
        if requested is None:
            # The room left in the context, within what one sequence can hold in the KV cache (the
            # last token drawn is never stored, hence the + 1).
            room = ctx - prompt_tokens
            if self.capacity_tokens is not None:
                room = min(room, self.capacity_tokens - prompt_tokens + 1)
            if room < 1:
                raise bad_request(
                    f"The prompt has {prompt_tokens} tokens and the KV cache holds {self.capacity_tokens} per "
                    "sequence: no room to generate", param, code="context_length_exceeded")
            return room
        if prompt_tokens + requested > ctx:
            raise bad_request(
                f"This model's maximum context length is {ctx} tokens; the prompt has {prompt_tokens} tokens "
                f"and {requested} completion tokens were asked for ({prompt_tokens + requested} in all)",
                "max_tokens", code="context_length_exceeded")
        return requested

    def open_group(self, size: int) -> Group:
        assert self.pump is not None
        if size > self.pump.capacity:
            # It could never be admitted: retrying (what a 503 asks for) would not help.
            raise bad_request(f"This request needs {size} sequences (prompts x n); the server takes at most "
                              f"{self.pump.capacity} at once (--max-batch + --max-queue)", "n",
                              code="too_many_sequences")
        try:
            return self.pump.open_group(size)
        except QueueFull as e:
            self.metrics.add("rejected_queue_full")
            raise APIError(503, f"The server is overloaded: {e}; retry later", code="server_overloaded",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except EngineStopped as e:
            raise APIError(503, str(e), code="server_shutting_down") from None


def render_chat(tokenizer: Any, messages: list[dict], tools: Optional[list[dict]]) -> list[int]:
    """The prompt ids of a conversation, as the ``Generator`` makes them from message dicts: the
    GGUF's chat template with a generation prompt, then ``encode``."""
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools)
    except (ValueError, TypeError) as e:
        raise bad_request(f"the chat template could not render these messages: {e}", "messages") from None
    return list(tokenizer.encode(text))


async def read_json(request: Request, max_bytes: int) -> Any:
    """The body as JSON, read up to ``max_bytes`` (413 past it, before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"The request body has {declared} bytes; the limit is {max_bytes}",
                       code="request_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise APIError(413, f"The request body is over the limit of {max_bytes} bytes",
                               code="request_too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise bad_request("The client disconnected before the request body was read") from None
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"The request body is not valid JSON: {e}") from None


def _json(payload: Any, status: int = 200, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers=headers)


async def _submit_all(server: Server, group: Group, prompts: list[list[int]], n: int, sampling: Any,
                      max_tokens: list[int]) -> None:
    """Submits n sequences per prompt; a refusal by the engine is a 400 (the group is closed by
    the caller, cancelling whatever was already submitted)."""
    engine = server.ready().engine
    for p, ids in enumerate(prompts):
        for j in range(n):
            try:
                group.add(engine.submit(ids, **sampling.engine_kwargs(max_tokens[p], j)))
            except (ValueError, TypeError, OverflowError) as e:
                raise bad_request(str(e), code="context_length_exceeded" if "context" in str(e).lower() else None) from None


# --- routes ------------------------------------------------------------------------------------


def build_app(server: Server) -> Starlette:
    settings = server.settings

    async def health(request: Request) -> Response:
        if server.loaded is None:
            status = "failed" if server.load_error else "loading"
            return _json({"status": status, "error": server.load_error}, 503)
        return _json({"status": "ok"})

    async def metrics(request: Request) -> Response:
        stats = server.loaded.engine.stats() if server.loaded is not None else None
        return Response(server.metrics.render(stats, settings.max_queue), media_type=METRICS_CONTENT_TYPE)

    def model_card() -> dict:
        card = {"id": settings.model_name, "object": "model", "created": server.created, "owned_by": "ferrite"}
        if server.loaded is not None:
            card["max_model_len"] = server.context_length
        return card

    async def models(request: Request) -> Response:
        return _json({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> Response:
        server.check_model(request.path_params["model"])
        return _json(model_card())

    async def tokenize(request: Request) -> Response:
        body = await read_json(request, settings.max_body_bytes)
        req = parse_tokenize_request(body)
        server.check_model(req.model)
        tok = server.ready().tokenizer
        if req.messages is not None:
            ids = await asyncio.to_thread(render_chat, tok, req.messages, req.tools)
        else:
            ids = await asyncio.to_thread(tok.encode, req.prompt, req.add_special_tokens)
        return _json({"tokens": list(ids), "count": len(ids), "max_model_len": server.context_length})

    async def detokenize(request: Request) -> Response:
        body = await read_json(request, settings.max_body_bytes)
        name, ids = parse_detokenize_request(body, _vocab_size(server))
        server.check_model(name)
        return _json({"prompt": server.ready().tokenizer.decode(ids)})

    async def chat_completions(request: Request) -> Response:
        arrived = time.perf_counter()
        body = await read_json(request, settings.max_body_bytes)
        req = parse_chat_request(body)
        server.check_model(req.model)
        loaded = server.ready()
        ids = await asyncio.to_thread(render_chat, loaded.tokenizer, req.messages, req.tools)
        max_tokens = server.max_tokens_for(req.sampling.max_tokens, len(ids), "messages")
        group = server.open_group(req.n)
        try:
            await _submit_all(server, group, [ids], req.n, req.sampling, [max_tokens])
        except BaseException:
            group.close()
            raise
        return ChatRun(server, req, group, len(ids), arrived).response(request)

    async def completions(request: Request) -> Response:
        arrived = time.perf_counter()
        body = await read_json(request, settings.max_body_bytes)
        req = parse_completion_request(body, _vocab_size(server))
        server.check_model(req.model)
        loaded = server.ready()
        prompts = [
            p if isinstance(p, list) else await asyncio.to_thread(loaded.tokenizer.encode, p)
            for p in req.prompts
        ]
        budgets = [server.max_tokens_for(req.sampling.max_tokens, len(p), "prompt") for p in prompts]
        group = server.open_group(len(prompts) * req.n)
        try:
            await _submit_all(server, group, prompts, req.n, req.sampling, budgets)
        except BaseException:
            group.close()
            raise
        return CompletionRun(server, req, group, [len(p) for p in prompts], arrived).response(request)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return _json(exc.body(), exc.status, exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _json(error_body(f"{exc.detail}: {request.method} {request.url.path}",
                                type="invalid_request_error", code=code), exc.status_code)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return _json(error_body(f"internal server error: {type(exc).__name__}: {exc}", type="server_error"), 500)

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.start()
        yield
        await server.stop()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: internal_error},
        lifespan=_as_context(lifespan),
    )
    app.add_middleware(_Gate, server=server)
    if settings.allow_origins:
        # Outside the key check: a browser's preflight (OPTIONS) carries no Authorization header.
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.allow_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["Retry-After"])
    return app


def _vocab_size(server: Server) -> Optional[int]:
    return int(server.loaded.engine.vocab_size) if server.loaded is not None else None


def _as_context(fn: Callable[[Starlette], AsyncIterator[None]]) -> Any:
    import contextlib

    return contextlib.asynccontextmanager(fn)


class _Gate:
    """Pure ASGI middleware (so streams pass through untouched): the bearer-token check, and the
    count of answers by route and status for ``/metrics``."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app = app
        self.server = server
        key = server.settings.api_key
        self._expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in _ROUTES_COUNTED else ("/v1/models" if path.startswith("/v1/models/") else "other")
        status_seen = [500]

        async def send_counted(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_seen[0] = message["status"]
            await send(message)

        try:
            if self._expected is not None and path not in _OPEN_PATHS and not self._authorized(scope):
                body = error_body("Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                                  type="invalid_request_error", code="invalid_api_key")
                await JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send_counted)
                return
            await self.app(scope, receive, send_counted)
        finally:
            self.server.metrics.count_request(route, status_seen[0])

    def _authorized(self, scope: dict) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                assert self._expected is not None
                return hmac.compare_digest(value, self._expected)
        return False


# --- one generation request, streamed or not ---------------------------------------------------


class _ClientGone(Exception):
    pass


async def _until_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class _Run:
    """A submitted group and how its outputs become a response. Subclasses give the shapes."""

    id_prefix = ""

    def __init__(self, server: Server, req: Any, group: Group, arrived: float) -> None:
        self.server = server
        self.req = req
        self.group = group
        self.arrived = arrived
        self.rid = R.new_id(self.id_prefix)
        self.created = R.now()
        self.model = server.settings.model_name
        self.first_token_seen = False

    def response(self, request: Request) -> Any:
        return _SSEResponse(self) if self.req.stream else _BlockingResponse(self)

    def _note(self, out: Any) -> None:
        if not self.first_token_seen and len(out.token_ids):
            self.first_token_seen = True
            self.server.metrics.observe_ttft(time.perf_counter() - self.arrived)

    def close(self, client_gone: bool) -> None:
        if self.group.close() and client_gone:
            self.server.metrics.add("client_cancelled")

    async def body(self) -> dict[str, Any]:
        async for i, out in self.group.outputs():
            self._note(out)
            self.choices[i].add(out)
        return self._whole(self._finish())

    async def events(self) -> AsyncIterator[bytes]:
        with_usage = self.req.include_usage
        async for i, out in self.group.outputs():
            self._note(out)
            choice = self.choices[i]
            chars_before = choice.chars
            choice.add(out)
            for chunk in self._delta_chunks(choice, out, chars_before, with_usage):
                yield sse.event(chunk)
        usage = self._finish()
        if with_usage:
            yield sse.event(R.usage_chunk(self.rid, self.created, self.model, self.chunk_object, usage))

    def _finish(self) -> dict[str, Any]:
        """The usage of the finished choices, recorded in the metrics."""
        usage = R.choices_usage(self.choices, self._prompt_tokens_per_prompt())
        self.server.metrics.finish_request(time.perf_counter() - self.arrived, usage["prompt_tokens"],
                                           usage["completion_tokens"])
        return usage

    # Subclasses: the choices, and the shapes of their responses.
    choices: list[R.Choice]
    pieces: Optional[Any]
    chunk_object = ""

    def _prompt_tokens_per_prompt(self) -> list[int]:
        raise NotImplementedError

    def _whole(self, usage: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _delta_chunks(self, choice: R.Choice, out: Any, chars_before: int, with_usage: bool) -> list[dict[str, Any]]:
        raise NotImplementedError


class _BlockingResponse:
    """The whole completion as one JSON body; the sequences are cancelled if the client leaves
    before it is ready."""

    def __init__(self, run: _Run) -> None:
        self.run = run

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        run = self.run
        work = asyncio.ensure_future(run.body())
        watch = asyncio.ensure_future(_until_disconnect(receive))
        gone = False
        try:
            done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                gone = True
                return
            try:
                payload, status = work.result(), 200
            except APIError as e:
                payload, status = e.body(), e.status
            except EngineStopped as e:
                payload, status = error_body(str(e), type="server_error"), 503
            except RuntimeError as e:  # a sequence ended with the engine's "error"
                payload, status = error_body(f"generation failed: {e}", type="server_error"), 500
            run.close(client_gone=False)  # before the answer, so its room is free when it arrives
            await _json(payload, status)(scope, receive, send)
        finally:
            for t in (work, watch):
                t.cancel()
            run.close(client_gone=gone)


class _SSEResponse:
    """The completion as Server-Sent Events; a client that disconnects cancels its sequences
    at once (the disconnect is watched beside the stream, not only noticed at the next send)."""

    def __init__(self, run: _Run) -> None:
        self.run = run

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        run = self.run
        gone = False
        stream = asyncio.ensure_future(self._stream(send))
        watch = asyncio.ensure_future(_until_disconnect(receive))
        try:
            done, _ = await asyncio.wait({stream, watch}, return_when=asyncio.FIRST_COMPLETED)
            if stream not in done:
                gone = True
            else:
                stream.result()
        except OSError:  # the transport broke under a send
            gone = True
        finally:
            for t in (stream, watch):
                t.cancel()
            run.close(client_gone=gone or not run.group.finished)

    async def _stream(self, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        headers += [(k.lower().encode(), v.encode()) for k, v in sse.HEADERS.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            async for event in self.run.events():
                await send({"type": "http.response.body", "body": event, "more_body": True})
        except (APIError, EngineStopped, RuntimeError) as e:
            message = e.message if isinstance(e, APIError) else str(e)
            await send({"type": "http.response.body", "body": sse.error_event(message), "more_body": True})
        self.run.close(client_gone=False)  # before [DONE], so its room is free when the client sees it
        await send({"type": "http.response.body", "body": sse.DONE, "more_body": False})


class ChatRun(_Run):
    id_prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def __init__(self, server: Server, req: ChatRequest, group: Group, prompt_tokens: int, arrived: float) -> None:
        super().__init__(server, req, group, arrived)
        self.prompt_tokens = prompt_tokens
        self.choices = [R.Choice(index=i, prompt_tokens=prompt_tokens) for i in range(req.n)]
        self.pieces = server.pieces if req.logprobs else None

    def _prompt_tokens_per_prompt(self) -> list[int]:
        return [self.prompt_tokens]

    def _whole(self, usage: dict[str, Any]) -> dict[str, Any]:
        return R.chat_completion(self.rid, self.created, self.model, self.choices, usage, self.pieces)

    def _delta_chunks(self, choice: R.Choice, out: Any, chars_before: int, with_usage: bool) -> list[dict[str, Any]]:
        return R.chat_delta_chunks(self.rid, self.created, self.model, choice, out, self.pieces, with_usage)


class CompletionRun(_Run):
    id_prefix = "cmpl"
    chunk_object = "text_completion"

    def __init__(self, server: Server, req: CompletionRequest, group: Group, prompt_tokens: list[int],
                 arrived: float) -> None:
        super().__init__(server, req, group, arrived)
        self.prompt_tokens = prompt_tokens
        n = req.n
        self.choices = [R.Choice(index=k, prompt_tokens=prompt_tokens[k // n]) for k in range(len(prompt_tokens) * n)]
        self.pieces = server.pieces if req.sampling.logprobs is not None else None

    def _prompt_tokens_per_prompt(self) -> list[int]:
        return self.prompt_tokens

    def _whole(self, usage: dict[str, Any]) -> dict[str, Any]:
        return R.completion(self.rid, self.created, self.model, self.choices, usage, self.pieces)

    def _delta_chunks(self, choice: R.Choice, out: Any, chars_before: int, with_usage: bool) -> list[dict[str, Any]]:
        return R.completion_delta_chunks(self.rid, self.created, self.model, choice, out, self.pieces, with_usage,
                                         chars_before)
