"""Pure ASGI middlewares that check a request before any endpoint sees it (no FastAPI import here).

* :class:`HostCheck` - with authentication off, only ``Host`` names on the allow-list are served, so a web
  page on ``evil.example`` that re-resolves its name to 127.0.0.1 (DNS rebinding) cannot reach the API.
* :class:`RequestGuard` - the body: at most ``max_bytes`` (413 ``REQUEST_TOO_LARGE``), complete within
  ``body_timeout`` seconds (408 ``REQUEST_TIMEOUT``, connection closed) and, when it is JSON, nested at most
  ``max_depth`` levels (400 ``INVALID_PAYLOAD``). The body is read once and replayed to the app.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable
from typing import Any

import anyio
import anyio.to_thread
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from compozy_nb.errors import ErrorCode
from compozy_nb.limits import MAX_DEPTH, nesting_depth
from compozy_nb.server.errors import error_envelope

__all__ = [
    "ALLOWED_HOSTS_ENV",
    "DEFAULT_BODY_TIMEOUT",
    "LOCAL_HOSTS",
    "HostCheck",
    "RequestGuard",
    "allowed_hosts_from_env",
]

ALLOWED_HOSTS_ENV = "COMPOZY_ALLOWED_HOSTS"
"""Extra ``Host`` names served when authentication is off (comma separated; ``*`` allows any)."""
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
"""Always allowed: loopback names (``*.localhost`` and every loopback address are allowed too)."""
DEFAULT_BODY_TIMEOUT = 30.0
"""Seconds a client may take to send a request body before the connection is closed."""


def _respond(status: int, code: ErrorCode, message: str, close: bool = False) -> JSONResponse:
    headers = {"Connection": "close"} if close else None
    return JSONResponse(error_envelope(status, code, message), status_code=status, headers=headers)


def allowed_hosts_from_env() -> list[str]:
    """The names in ``COMPOZY_ALLOWED_HOSTS`` (comma separated, blanks ignored)."""
    return [name.strip() for name in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if name.strip()]


def host_name(header: str) -> str:
    """``Host`` header value without its port, lower case: ``[::1]:8000`` -> ``::1``, ``a.b:80`` -> ``a.b``."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def _is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostCheck:
    """Serve only requests whose ``Host`` is a loopback name or address, or on the allow-list.

    Args:
        app: The wrapped ASGI app.
        allowed: Extra host names (without port); ``*`` allows every host. The bound address belongs here
            when it is not a loopback one.
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(host_name(name) for name in allowed)

    def allows(self, header: str | None) -> bool:
        """Whether a request with this ``Host`` header value (``None``: no header) is served."""
        if header is None or "*" in self.allowed:
            return True
        name = host_name(header)
        return _is_loopback_name(name) or name in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope.get("headers", ()) if k == b"host"), None)
        header = raw.decode("latin-1") if raw is not None else None
        if self.allows(header):
            await self.app(scope, receive, send)
            return
        message = (
            f"host {host_name(header or '')[:100]!r} is not allowed: without an API key only localhost and the "
            f"names in {ALLOWED_HOSTS_ENV} are served (DNS rebinding protection)"
        )
        await _respond(403, ErrorCode.HOST_NOT_ALLOWED, message)(scope, receive, send)


class _RefusedError(Exception):
    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


class RequestGuard:
    """Read the whole body (bounded in size and time), check its JSON depth, then call the app.

    Args:
        app: The wrapped ASGI app.
        max_bytes: Larger bodies get 413 ``REQUEST_TOO_LARGE``.
        body_timeout: Seconds allowed for the whole body to arrive; then 408 ``REQUEST_TIMEOUT`` and the
            connection is closed.
        max_depth: Deepest JSON nesting accepted (400 ``INVALID_PAYLOAD`` beyond).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        max_depth: int = MAX_DEPTH,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_declared_size(scope)
            body = await self._read_body(receive)
            if self._may_be_too_deep(body) and await anyio.to_thread.run_sync(self._too_deep, body):
                message = f"request body: JSON nested deeper than {self.max_depth} levels (maps and lists)"
                raise _RefusedError(_respond(400, ErrorCode.INVALID_PAYLOAD, message))
        except _RefusedError as refused:
            await refused.response(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _check_declared_size(self, scope: Scope) -> None:
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            message = f"request body is {int(declared)} bytes, more than {self.max_bytes}"
            raise _RefusedError(_respond(413, ErrorCode.REQUEST_TOO_LARGE, message, close=True))

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        received = 0
        with anyio.move_on_after(self.body_timeout) as scope:
            while True:
                message = await receive()
                if message["type"] != "http.request":  # the client went away
                    raise _RefusedError(_respond(400, ErrorCode.INVALID_REQUEST, "client disconnected", close=True))
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_bytes:
                    message_text = f"request body is more than {self.max_bytes} bytes"
                    raise _RefusedError(_respond(413, ErrorCode.REQUEST_TOO_LARGE, message_text, close=True))
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        assert scope.cancelled_caught
        message_text = f"request body not received within {self.body_timeout:g} s; closing the connection"
        raise _RefusedError(_respond(408, ErrorCode.REQUEST_TIMEOUT, message_text, close=True))

    def _may_be_too_deep(self, body: bytes) -> bool:
        """Cheap test on the event loop: a body with at most ``max_depth`` brackets cannot nest deeper."""
        return body.count(b"[") + body.count(b"{") > self.max_depth

    def _too_deep(self, body: bytes) -> bool:
        """Whether ``body`` is JSON nested deeper than ``max_depth`` (not JSON: False, FastAPI reports it); parsed
        in a worker thread."""
        try:
            value: Any = json.loads(body)
        except RecursionError:
            return True
        except ValueError:
            return False
        return nesting_depth(value, stop_after=self.max_depth) > self.max_depth


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the already-read body once, then waits on the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
