"""The API's JSON response class and the envelopes as responses (Starlette only, no FastAPI import here)."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from compozy_nb.errors import CompozyNbError, ErrorCode
from compozy_nb.server.errors import envelope, error_envelope, from_exception

__all__ = ["JSON", "error_response", "failure", "ok", "unavailable"]


class JSON(JSONResponse):
    """JSON without ASCII escaping; values the engine returns that JSON lacks become strings."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def ok(message: str, data: Any) -> JSON:
    """A 200 success envelope."""
    return JSON(envelope(200, message, data))


def failure(status: int, body: dict[str, Any]) -> JSON:
    """An error body with its status; a 503 tells the client to retry (``Retry-After: 1``)."""
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSON(body, status_code=status, headers=headers)


def error_response(exc: CompozyNbError) -> JSON:
    """The response for one of the package's exceptions."""
    return failure(*from_exception(exc))


def unavailable(code: ErrorCode, message: str, data: Any) -> JSON:
    """A 503 error envelope that still carries ``data`` (what could be checked without Redis)."""
    return failure(503, error_envelope(503, code, message, data=data))
