"""The OpenAI error body, and the one exception every route raises to send it.

OpenAI answers every failure with ``{"error": {"message", "type", "param", "code"}}``; the
official clients read ``message`` and ``code`` from it and choose the exception class from the
HTTP status (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 503 with
``Retry-After``: retried).
"""

from __future__ import annotations

from typing import Any, Optional


class APIError(Exception):
    """A request that ends in an OpenAI error body with HTTP status ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: Optional[str] = None,
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _default_type(status)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _default_type(status: int) -> str:
    # OpenAI's own answers use "invalid_request_error" for every 4xx (a wrong key and an unknown
    # model included, told apart by ``code``) and "server_error" for 5xx.
    return "invalid_request_error" if status < 500 else "server_error"


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, type="invalid_request_error", param=param, code=code)
