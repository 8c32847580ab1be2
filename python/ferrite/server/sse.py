"""Server-Sent Events framing of an OpenAI stream.

Each event is one ``data:`` line of compact JSON and a blank line; the stream ends with
``data: [DONE]``. JSON never holds a raw newline (``json.dumps`` escapes it), so one ``data:``
line per event is always enough. An error after the 200 headers went out cannot change the
status any more: it is sent as a ``data: {"error": {...}}`` event, which the ``openai`` client
raises as an ``APIError``.
"""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"

# Headers of every stream: no caching, and no buffering by a reverse proxy (nginx reads
# X-Accel-Buffering), so each token reaches the client when it is made.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"


def event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def error_event(message: str, type: str = "server_error", code: Any = None) -> bytes:
    return event({"error": {"message": message, "type": type, "param": None, "code": code}})
