"""What wraps the routes: the ASGI middleware stack (authentication or the ``Host`` check, the body guard, the log
source) and the exception handlers that turn every failure into an error envelope.

The checks done before any endpoint sees a request, :class:`~compozy_nb.server.guards.HostCheck` and
:class:`~compozy_nb.server.guards.RequestGuard`, are in :mod:`compozy_nb.server.guards`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from compozy_nb.errors import CompozyNbError, ErrorCode
from compozy_nb.memory.log import LogSourceMiddleware
from compozy_nb.server.errors import error_envelope, validation_error
from compozy_nb.server.guards import HostCheck, RequestGuard, allowed_hosts_from_env
from compozy_nb.server.responses import JSON, error_response

__all__ = ["OPEN_PATHS", "BearerAuth", "install_error_handlers", "install_middleware"]

log = logging.getLogger("compozy_nb.server")

OPEN_PATHS = frozenset({"/healthz"})
"""Paths served without a token."""


class BearerAuth:
    """Pure ASGI middleware: every path except :data:`OPEN_PATHS` needs ``Authorization: Bearer <token>``.

    Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest` (constant time, length hidden).
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._digest = hashlib.sha256(token.encode("utf-8")).digest()

    def authorized(self, header: bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries the token."""
        scheme, _, value = (header or b"").partition(b" ")
        candidate = hashlib.sha256(value.strip()).digest()
        return hmac.compare_digest(candidate, self._digest) and scheme.lower() == b"bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        if self.authorized(header):
            await self.app(scope, receive, send)
            return
        message = "missing bearer token" if header is None else "invalid bearer token"
        hint = "send 'Authorization: Bearer <COMPOZY_API_KEY>'"
        body = error_envelope(401, ErrorCode.UNAUTHORIZED, f"{message}: {hint}")
        response = JSON(body, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="compozy-nb"'})
        await response(scope, receive, send)


def install_middleware(
    app: FastAPI,
    *,
    token: str,
    max_body_bytes: int,
    body_timeout: float,
    allowed_hosts: Sequence[str] | None,
) -> None:
    """Add the middleware stack. From the routes out: the body guard, the log source (``http``), then, outermost,
    :class:`BearerAuth` when ``token`` is set or the ``Host`` check otherwise (a refused request's body is never
    read)."""
    app.add_middleware(RequestGuard, max_bytes=max_body_bytes, body_timeout=body_timeout)
    app.add_middleware(LogSourceMiddleware, source="http")
    if token:
        app.add_middleware(BearerAuth, token=token)
    else:
        hosts = allowed_hosts_from_env() if allowed_hosts is None else list(allowed_hosts)
        app.add_middleware(HostCheck, allowed=hosts)


_HTTP_CODES = {
    400: ErrorCode.INVALID_REQUEST,  # e.g. FastAPI's "There was an error parsing the body"
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    408: ErrorCode.REQUEST_TIMEOUT,
    413: ErrorCode.REQUEST_TOO_LARGE,
}


def install_error_handlers(app: FastAPI) -> None:
    """Every failure as an error envelope: the package's errors with their status (:mod:`.errors`), request
    validation as 400 (not FastAPI's 422), Starlette's HTTP errors (404, 405 ...) with an error code, and
    anything else as a logged 500 ``INTERNAL_ERROR``."""

    async def on_engine_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CompozyNbError)
        return error_response(exc)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSON(validation_error(exc.errors()), status_code=400)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        fallback = ErrorCode.INVALID_REQUEST if exc.status_code < 500 else ErrorCode.INTERNAL_ERROR
        code = _HTTP_CODES.get(exc.status_code, fallback)
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return JSON(
            error_envelope(exc.status_code, code, message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("compozy-nb: unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return JSON(
            error_envelope(
                500, ErrorCode.INTERNAL_ERROR, "internal server error", details={"type": type(exc).__name__}
            ),
            status_code=500,
        )

    app.add_exception_handler(CompozyNbError, on_engine_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_bug)
