"""OpenAI request bodies: parsing and validation into what the engine takes.

Every field of ``POST /v1/chat/completions`` and ``POST /v1/completions`` is either honoured,
accepted because it cannot change the output (``user``, ``metadata``, ...), or refused with a
400 that names it; an unknown field is refused too, so nothing a client asks for is silently
dropped. Ranges follow the OpenAI API reference. ferrite's own sampling fields (``top_k``,
``min_p``, ``repetition_penalty``, ``ignore_eos``, ``stop_token_ids``) ride along as extra body
fields (``extra_body=`` in the ``openai`` client).

Sampling defaults are OpenAI's (temperature 1, top_p 1, no top-k or min-p), not the
``Generator``'s, so a client gets the distribution the API defines; chat ``max_tokens`` defaults
to the room left in the context and completions ``max_tokens`` to 16, as in the API.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ferrite.server.errors import bad_request

Prompt = Union[str, list]  # raw text or token ids

# Fields accepted as they are: they identify or label the request and cannot change the output.
_INFORMATIONAL = ("user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key")

# Fields of the API that ferrite does not implement. A value equal to the API's default is
# accepted (clients and SDKs send those); anything else is a 400 naming the field.
_CHAT_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "response_format": ({"type": "text"},),
    "logit_bias": ({},),
    "functions": (),
    "function_call": (),
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
    "reasoning_effort": (),
    "web_search_options": (),
    "verbosity": (),
}
_COMPLETION_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "echo": (False,),
    "suffix": ("",),
    "logit_bias": ({},),
}

_SAMPLING_FIELDS = (
    "max_tokens", "temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty",
    "n", "stream", "stream_options",
    # ferrite's extras
    "top_k", "min_p", "repetition_penalty", "ignore_eos", "stop_token_ids",
)
_CHAT_FIELDS = frozenset(
    ("model", "messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice",
     "parallel_tool_calls", *_SAMPLING_FIELDS)
)
_COMPLETION_FIELDS = frozenset(("model", "prompt", "logprobs", "best_of", *_SAMPLING_FIELDS))

MAX_N = 128
MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20
_ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class Sampling:
    """What the engine's ``submit`` takes besides the prompt; ``max_tokens`` is ``None`` when
    the client left it to the room in the context."""

    max_tokens: Optional[int]
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: Optional[int] = None  # None, 0 (the chosen token's) or k best
    ignore_eos: bool = False

    def engine_kwargs(self, max_tokens: int, choice: int) -> dict[str, Any]:
        """Keyword arguments of ``Engine.submit`` for choice ``choice`` of ``n``: with a seed,
        choice i draws with ``seed + i`` so the n choices differ yet replay."""
        return dict(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=None if self.seed is None else (self.seed + choice) % (1 << 64),
            stop=list(self.stop) or None,
            stop_token_ids=list(self.stop_token_ids),
            logprobs=self.logprobs,
            ignore_eos=self.ignore_eos,
        )


@dataclass
class ChatRequest:
    model: Optional[str]
    messages: list[dict]
    tools: Optional[list[dict]]
    n: int
    stream: bool
    include_usage: bool
    sampling: Sampling
    logprobs: bool  # the response carries ``logprobs.content``


@dataclass
class CompletionRequest:
    model: Optional[str]
    prompts: list[Prompt]
    n: int
    stream: bool
    include_usage: bool
    sampling: Sampling


# --- field readers: each names the field in its error -----------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(body: dict, name: str, default: Any, lo: Optional[int] = None, hi: Optional[int] = None) -> Any:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not _is_int(v):
        raise bad_request(f"'{name}' must be an integer, got {_show(v)}", name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise bad_request(f"'{name}' must be {_range(lo, hi)}, got {v}", name)
    return v


def _float(body: dict, name: str, default: float, lo: Optional[float] = None, hi: Optional[float] = None,
           lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise bad_request(f"'{name}' must be a number, got {_show(v)}", name)
    v = float(v)
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
        if lo_open:
            bounds = f"greater than {lo:g}" + (f" and at most {hi:g}" if hi is not None else "")
        else:
            bounds = _range(lo, hi)
        raise bad_request(f"'{name}' must be {bounds}, got {v:g}", name)
    return v


def _bool(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad_request(f"'{name}' must be a boolean, got {_show(v)}", name)
    return v


def _range(lo: Any, hi: Any) -> str:
    if lo is not None and hi is not None:
        return f"between {lo:g} and {hi:g}" if isinstance(lo, float) else f"between {lo} and {hi}"
    if lo is not None:
        return f"at least {lo}"
    return f"at most {hi}"


def _show(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_fields(body: Any, allowed: frozenset, unsupported: dict[str, tuple[Any, ...]]) -> None:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for name, value in body.items():
        if name in allowed or name in _INFORMATIONAL:
            continue
        if name in unsupported:
            if value is None or value in unsupported[name]:
                continue
            raise bad_request(f"'{name}' is not supported by this server (got {_show(value)})", name,
                              code="unsupported_parameter")
        raise bad_request(f"unknown field '{name}'", name, code="unknown_parameter")


def _model(body: dict) -> Optional[str]:
    v = body.get("model")
    if v is not None and not isinstance(v, str):
        raise bad_request(f"'model' must be a string, got {_show(v)}", "model")
    return v


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request(f"'stop' must be a string or a list of strings, got {_show(v)}", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"'stop' holds {len(stops)} strings; at most {MAX_STOP_STRINGS} are allowed", "stop")
    if any(s == "" for s in stops):
        raise bad_request("'stop' strings must not be empty", "stop")
    return stops


def _stream(body: dict) -> tuple[bool, bool]:
    stream = _bool(body, "stream", False)
    opts = body.get("stream_options")
    if opts is None:
        return stream, False
    if not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
    if not isinstance(opts, dict):
        raise bad_request(f"'stream_options' must be an object, got {_show(opts)}", "stream_options")
    for k in opts:
        if k != "include_usage":
            raise bad_request(f"'stream_options.{k}' is not supported", f"stream_options.{k}",
                              code="unsupported_parameter")
    return stream, _bool(opts, "include_usage", False)


def _sampling(body: dict, max_tokens: Optional[int], logprobs: Optional[int]) -> Sampling:
    top_k = _int(body, "top_k", 0, lo=-1)
    stop_token_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_token_ids, list) or not all(_is_int(t) and t >= 0 for t in stop_token_ids):
        raise bad_request("'stop_token_ids' must be a list of token ids", "stop_token_ids")
    seed = _int(body, "seed", None, lo=-(1 << 63), hi=(1 << 64) - 1)
    return Sampling(
        max_tokens=max_tokens,
        temperature=_float(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=max(top_k, 0),  # -1 is the other common spelling of "off"
        min_p=_float(body, "min_p", 0.0, 0.0, 1.0),
        repetition_penalty=_float(body, "repetition_penalty", 1.0, 0.0, None, lo_open=True),
        presence_penalty=_float(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_float(body, "frequency_penalty", 0.0, -2.0, 2.0),
        seed=None if seed is None else seed % (1 << 64),
        stop=_stop(body),
        stop_token_ids=list(stop_token_ids),
        logprobs=logprobs,
        ignore_eos=_bool(body, "ignore_eos", False),
    )


# --- chat --------------------------------------------------------------------------------------


def parse_chat_request(body: Any) -> ChatRequest:
    _check_fields(body, _CHAT_FIELDS, _CHAT_UNSUPPORTED)
    messages = _messages(body.get("messages"))
    tools = _tools(body)
    max_tokens = _int(body, "max_tokens", None, lo=0)
    max_completion = _int(body, "max_completion_tokens", None, lo=0)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise bad_request("'max_tokens' and 'max_completion_tokens' disagree; send one of them", "max_tokens")
    want_logprobs = _bool(body, "logprobs", False)
    top = _int(body, "top_logprobs", None, lo=0, hi=MAX_TOP_LOGPROBS)
    if top is not None and not want_logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs' set to true", "top_logprobs")
    stream, include_usage = _stream(body)
    return ChatRequest(
        model=_model(body),
        messages=messages,
        tools=tools,
        n=_int(body, "n", 1, lo=1, hi=MAX_N),
        stream=stream,
        include_usage=include_usage,
        sampling=_sampling(
            body,
            max_completion if max_completion is not None else max_tokens,
            (top or 0) if want_logprobs else None,
        ),
        logprobs=want_logprobs,
    )


def _messages(v: Any) -> list[dict]:
    if v is None:
        raise bad_request("'messages' is required", "messages")
    if not isinstance(v, list) or not v:
        raise bad_request("'messages' must be a non-empty list of message objects", "messages")
    return [_message(m, i) for i, m in enumerate(v)]


def _message(m: Any, i: int) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise bad_request(f"'{where}' must be an object with 'role' and 'content'", where)
    role = m.get("role")
    if role not in _ROLES:
        raise bad_request(f"'{where}.role' must be one of {', '.join(_ROLES)}; got {_show(role)}", f"{where}.role")
    out = dict(m)
    # "developer" is the newer API's name for the system message; chat templates know "system".
    out["role"] = "system" if role == "developer" else role
    content = m.get("content")
    if isinstance(content, list):
        out["content"] = _text_parts(content, where)
    elif content is None:
        if not (role == "assistant" and m.get("tool_calls")):
            raise bad_request(f"'{where}.content' is required", f"{where}.content")
    elif not isinstance(content, str):
        raise bad_request(f"'{where}.content' must be a string or a list of text parts", f"{where}.content")
    if m.get("tool_calls") is not None:
        out["tool_calls"] = _tool_calls(m["tool_calls"], where)
    return out


def _text_parts(parts: list, where: str) -> str:
    texts = []
    for j, p in enumerate(parts):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind != "text" or not isinstance(p.get("text"), str):
            raise bad_request(
                f"'{where}.content[{j}]' has type {_show(kind)}; only text parts are supported",
                f"{where}.content[{j}]", code="unsupported_content_type",
            )
        texts.append(p["text"])
    return "\n".join(texts)


def _tool_calls(calls: Any, where: str) -> list:
    if not isinstance(calls, list):
        raise bad_request(f"'{where}.tool_calls' must be a list", f"{where}.tool_calls")
    out = []
    for c in calls:
        c = dict(c) if isinstance(c, dict) else c
        fn = c.get("function") if isinstance(c, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            # The API sends arguments as a JSON string; chat templates (like transformers') expect
            # the object and serialize it themselves.
            try:
                args = json.loads(fn["arguments"])
            except ValueError:
                args = None
            if isinstance(args, dict):
                c["function"] = {**fn, "arguments": args}
        out.append(c)
    return out


def _tools(body: dict) -> Optional[list[dict]]:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if body.get("parallel_tool_calls") is False:
        raise bad_request("'parallel_tool_calls' false is not supported: tool calls are not constrained",
                          "parallel_tool_calls", code="unsupported_parameter")
    if choice not in (None, "auto", "none"):
        raise bad_request(f"'tool_choice' {_show(choice)} is not supported: only \"auto\" and \"none\"",
                          "tool_choice", code="unsupported_parameter")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise bad_request("'tools' must be a list of tool objects", "tools")
    # "none": the model must answer in text, so the template does not offer it the tools.
    return None if choice == "none" or not tools else tools


# --- completions -------------------------------------------------------------------------------


def parse_completion_request(body: Any, vocab_size: Optional[int] = None) -> CompletionRequest:
    _check_fields(body, _COMPLETION_FIELDS, _COMPLETION_UNSUPPORTED)
    if body.get("best_of") not in (None, 1, body.get("n", 1)):
        raise bad_request("'best_of' other than n is not supported", "best_of", code="unsupported_parameter")
    stream, include_usage = _stream(body)
    return CompletionRequest(
        model=_model(body),
        prompts=_prompts(body.get("prompt"), vocab_size),
        n=_int(body, "n", 1, lo=1, hi=MAX_N),
        stream=stream,
        include_usage=include_usage,
        sampling=_sampling(body, _int(body, "max_tokens", 16, lo=0),
                           _int(body, "logprobs", None, lo=0, hi=MAX_TOP_LOGPROBS)),
    )


def _prompts(v: Any, vocab_size: Optional[int]) -> list[Prompt]:
    """A string, a list of strings, a list of token ids, or a list of token-id lists."""
    if v is None:
        raise bad_request("'prompt' is required", "prompt")
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and v:
        if all(isinstance(p, str) for p in v):
            return list(v)
        if all(_is_int(t) for t in v):
            return [_token_ids(v, vocab_size, "prompt")]
        if all(isinstance(p, list) and p for p in v):
            return [_token_ids(p, vocab_size, f"prompt[{i}]") for i, p in enumerate(v)]
    raise bad_request("'prompt' must be a string, a list of strings, a list of token ids or a list of "
                      "token-id lists (none empty)", "prompt")


def _token_ids(ids: list, vocab_size: Optional[int], where: str) -> list[int]:
    for t in ids:
        if not _is_int(t) or t < 0 or (vocab_size is not None and t >= vocab_size):
            raise bad_request(f"'{where}' holds {_show(t)}, not a token id of this model "
                              f"(0..{'' if vocab_size is None else vocab_size - 1})", where.split("[")[0])
    return list(ids)


# --- tokenize / detokenize ---------------------------------------------------------------------


@dataclass
class TokenizeRequest:
    model: Optional[str]
    prompt: Optional[str]  # raw text, or None with messages
    messages: Optional[list[dict]]
    tools: Optional[list[dict]]
    add_special_tokens: bool


def parse_tokenize_request(body: Any) -> TokenizeRequest:
    _check_fields(body, frozenset(("model", "prompt", "messages", "tools", "add_special_tokens")), {})
    has_prompt, has_messages = body.get("prompt") is not None, body.get("messages") is not None
    if has_prompt == has_messages:
        raise bad_request("send exactly one of 'prompt' (text) and 'messages' (a conversation)", "prompt")
    if has_prompt and not isinstance(body["prompt"], str):
        raise bad_request("'prompt' must be a string", "prompt")
    return TokenizeRequest(
        model=_model(body),
        prompt=body.get("prompt"),
        messages=_messages(body["messages"]) if has_messages else None,
        tools=_tools(body),
        add_special_tokens=_bool(body, "add_special_tokens", True),
    )


def parse_detokenize_request(body: Any, vocab_size: Optional[int]) -> tuple[Optional[str], list[int]]:
    _check_fields(body, frozenset(("model", "tokens")), {})
    tokens = body.get("tokens")
    if not isinstance(tokens, list):
        raise bad_request("'tokens' must be a list of token ids", "tokens")
    return _model(body), _token_ids(tokens, vocab_size, "tokens")
