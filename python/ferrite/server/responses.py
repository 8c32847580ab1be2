"""OpenAI response bodies: completions, chunks of a stream, usage and logprobs, built from the
engine's ``RequestOutput`` deltas.

Shapes follow the OpenAI API reference: ``chat.completion`` / ``chat.completion.chunk`` (the
first chunk of a choice carries ``role``, the last an empty ``delta`` and ``finish_reason``; with
``stream_options.include_usage`` every chunk has ``"usage": null`` and one more chunk with
``"choices": []`` carries the usage) and ``text_completion`` (legacy logprobs: ``tokens``,
``token_logprobs``, ``top_logprobs``, ``text_offset``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Optional

# The engine says why a sequence ended; OpenAI knows "stop" (a natural end or a stop string) and
# "length". "cancelled" and "error" never reach a completed response.
_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


def finish_reason(engine_reason: str) -> str:
    try:
        return _FINISH[engine_reason]
    except KeyError:
        raise ValueError(f"no OpenAI finish_reason for the engine's {engine_reason!r}") from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


class TokenPieces:
    """Each token's own text and bytes, for logprobs (a byte-level token may be part of a
    character: its text then holds U+FFFD and ``bytes`` the exact bytes, as OpenAI does)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        piece = self._cache.get(token_id)
        if piece is None:
            raw = bytes(self._tok.decode_bytes([token_id]))
            piece = (raw.decode("utf-8", errors="replace"), list(raw))
            self._cache[token_id] = piece
        return piece


@dataclass
class Choice:
    """One choice (one engine sequence) as its deltas arrive."""

    index: int
    prompt_tokens: int
    text: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: Optional[str] = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    text_offsets: list[int] = field(default_factory=list)
    chars: int = 0  # characters of text so far (legacy text_offset)
    sent_role: bool = False

    def add(self, out: Any) -> None:
        """Takes one ``RequestOutput``. A finishing output with ``error`` raises, so a failed
        sequence never becomes a completed choice."""
        if out.finish_reason == "error":
            raise RuntimeError(out.error or "generation failed")
        ids = list(out.token_ids)
        self.completion_tokens += len(ids)
        if out.logprobs is not None:
            self.token_ids.extend(ids)
            self.logprobs.extend(out.logprobs)
            self.top_logprobs.extend(out.top_logprobs or [[] for _ in ids])
            self.text_offsets.extend([self.chars] * len(ids))
        self.text.append(out.text)
        self.chars += len(out.text)
        if out.finish_reason is not None:
            self.finish_reason = finish_reason(out.finish_reason)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def choices_usage(choices: list[Choice], prompt_tokens_by_prompt: list[int]) -> dict[str, int]:
    """Prompt tokens count once per prompt (the n choices of a prompt share it, as OpenAI bills);
    completion tokens add up over every choice."""
    return usage(sum(prompt_tokens_by_prompt), sum(c.completion_tokens for c in choices))


# --- logprobs ----------------------------------------------------------------------------------


def chat_logprobs(pieces: TokenPieces, ids: list[int], lps: list[float],
                  tops: list[list[tuple[int, float]]]) -> dict[str, Any]:
    content = []
    for i, (tid, lp) in enumerate(zip(ids, lps)):
        text, raw = pieces(tid)
        top = tops[i] if i < len(tops) else []
        content.append({
            "token": text,
            "logprob": lp,
            "bytes": raw,
            "top_logprobs": [{"token": pieces(t)[0], "logprob": lp_t, "bytes": pieces(t)[1]} for t, lp_t in top],
        })
    return {"content": content, "refusal": None}


def completion_logprobs(pieces: TokenPieces, ids: list[int], lps: list[float],
                        tops: list[list[tuple[int, float]]], offsets: list[int]) -> dict[str, Any]:
    return {
        "tokens": [pieces(t)[0] for t in ids],
        "token_logprobs": list(lps),
        "top_logprobs": [{pieces(t)[0]: lp_t for t, lp_t in (tops[i] if i < len(tops) else [])} for i in range(len(ids))],
        "text_offset": list(offsets),
    }


def _delta_logprobs(pieces: TokenPieces, out: Any) -> tuple[list[int], list[float], list]:
    ids = list(out.token_ids)
    return ids, list(out.logprobs), list(out.top_logprobs or [[] for _ in ids])


# --- chat --------------------------------------------------------------------------------------


def chat_completion(rid: str, created: int, model: str, choices: list[Choice], usage_: dict,
                    pieces: Optional[TokenPieces]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": "".join(c.text), "refusal": None},
                "logprobs": None if pieces is None else chat_logprobs(pieces, c.token_ids, c.logprobs, c.top_logprobs),
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage_,
        "system_fingerprint": None,
    }


def chat_chunk(rid: str, created: int, model: str, index: int, delta: dict, *,
               logprobs: Optional[dict] = None, finish: Optional[str] = None,
               with_usage_field: bool = False) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }
    if with_usage_field:
        chunk["usage"] = None
    return chunk


def chat_delta_chunks(rid: str, created: int, model: str, choice: Choice, out: Any,
                      pieces: Optional[TokenPieces], with_usage_field: bool) -> list[dict]:
    """The chunks one ``RequestOutput`` of a choice becomes: the role first (once), then its
    text (with its tokens' logprobs when asked), then the finishing chunk."""
    chunks = []
    if not choice.sent_role:
        choice.sent_role = True
        chunks.append(chat_chunk(rid, created, model, choice.index, {"role": "assistant", "content": ""},
                                 with_usage_field=with_usage_field))
    lp = None
    if pieces is not None and out.logprobs is not None and len(out.token_ids):
        lp = chat_logprobs(pieces, *_delta_logprobs(pieces, out))
    if out.text or lp is not None:
        chunks.append(chat_chunk(rid, created, model, choice.index, {"content": out.text}, logprobs=lp,
                                 with_usage_field=with_usage_field))
    if choice.finish_reason is not None:
        chunks.append(chat_chunk(rid, created, model, choice.index, {}, finish=choice.finish_reason,
                                 with_usage_field=with_usage_field))
    return chunks


def usage_chunk(rid: str, created: int, model: str, obj: str, usage_: dict) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                             "usage": usage_}
    if obj == "chat.completion.chunk":
        chunk["system_fingerprint"] = None
    return chunk


# --- completions -------------------------------------------------------------------------------


def completion(rid: str, created: int, model: str, choices: list[Choice], usage_: dict,
               pieces: Optional[TokenPieces]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "text": "".join(c.text),
                "logprobs": None if pieces is None
                else completion_logprobs(pieces, c.token_ids, c.logprobs, c.top_logprobs, c.text_offsets),
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage_,
        "system_fingerprint": None,
    }


def completion_delta_chunks(rid: str, created: int, model: str, choice: Choice, out: Any,
                            pieces: Optional[TokenPieces], with_usage_field: bool,
                            chars_before: int) -> list[dict]:
    """A text chunk for the output's text (or its logprobs), and the finish reason on the last
    one: the legacy stream puts ``finish_reason`` on a chunk that may also carry text."""
    lp = None
    if pieces is not None and out.logprobs is not None and len(out.token_ids):
        ids, lps, tops = _delta_logprobs(pieces, out)
        lp = completion_logprobs(pieces, ids, lps, tops, [chars_before] * len(ids))
    if not out.text and lp is None and choice.finish_reason is None:
        return []
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": choice.index, "text": out.text, "logprobs": lp, "finish_reason": choice.finish_reason}],
    }
    if with_usage_field:
        chunk["usage"] = None
    return [chunk]
