"""The FastAPI application: a thin HTTP shell over :class:`~compozy_nb.project.Project`.

:func:`create_app` wires the parts: the routes (:mod:`compozy_nb.server.routes`, over the project), the middleware
stack and exception handlers (:mod:`compozy_nb.server.middleware`), and the OpenAPI document (FastAPI's 422
replaced by our 400, the bearer scheme declared when a token is set). No operation is implemented here.

Concurrency: the memory endpoints ``read``, ``write``, ``append``, ``delete``, ``flush``, ``clear``, ``health``
and ``stats`` are ``async def`` over :class:`~compozy_nb.memory.aio.AsyncMemory`: they await redis.asyncio on
the event loop and send CPU-heavy steps (tokenizing, decoding a whole list, planning a flush, a summarizer) to
worker threads. Task and workflow execution is ``async def`` too (:meth:`Project.aexecute
<compozy_nb.project.Project.aexecute>`, :meth:`Project.arun <compozy_nb.project.Project.arun>`): memory over
``AsyncMemory``, LLMs over async clients, the run's own CPU work (templates, prompts) and plain Python LLMs and
tools in worker threads, so a run waiting on a model holds no thread. The memory ``log`` and ``instances`` are
async as well; only ``/healthz`` is a plain ``def`` function, which FastAPI runs in anyio's worker-thread pool, set
to ``threads`` tokens at startup (anyio's default is 40). So a request waiting on Redis or on an LLM never blocks
the event loop or the other requests. Writes stay correct under any interleaving because each one is a single
atomic Lua script.

The backend is connected once, by :attr:`Project.backend <compozy_nb.project.Project.backend>` (thread-safe);
startup compiles every resource's runtime and connects, and only logs a warning when Redis is down: requests then
get 503 ``BACKEND_UNAVAILABLE`` until it is reachable.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from compozy_nb.errors import CompozyNbError
from compozy_nb.project import Project
from compozy_nb.server.guards import DEFAULT_BODY_TIMEOUT
from compozy_nb.server.middleware import OPEN_PATHS, install_error_handlers, install_middleware
from compozy_nb.server.responses import JSON
from compozy_nb.server.routes import health_router, memory_router, workflow_router

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_THREADS", "create_app"]

log = logging.getLogger("compozy_nb.server")

DEFAULT_THREADS = 64
DEFAULT_MAX_BODY = 8 * 1024 * 1024


def create_app(
    project: Project,
    api_key: str | None = None,
    *,
    threads: int = DEFAULT_THREADS,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The HTTP API of ``project``.

    Args:
        project: A loaded project (its backend is connected at startup, or at the first request).
        api_key: Bearer token required on every endpoint except ``/healthz``. ``None`` reads
            ``COMPOZY_API_KEY``; an empty string turns authentication off.
        threads: Worker threads for synchronous work FastAPI runs in anyio's pool (``/healthz``).
        max_body_bytes: Larger request bodies get 413 ``REQUEST_TOO_LARGE``.
        body_timeout: Seconds a client may take to send its body (then 408 ``REQUEST_TIMEOUT``, connection
            closed).
        allowed_hosts: With authentication off, the ``Host`` names served besides loopback names and
            addresses (``None`` reads ``COMPOZY_ALLOWED_HOSTS``; ``["*"]`` turns the check off). Others get 403
            ``HOST_NOT_ALLOWED`` (DNS rebinding protection).
    """
    token = os.environ.get("COMPOZY_API_KEY", "") if api_key is None else api_key

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = threads
        await anyio.to_thread.run_sync(_warm, project)
        yield

    from compozy_nb import __version__

    app = FastAPI(
        title="compozy-nb",
        version=__version__,
        description=(
            "Memory tasks and workflows of a compozy-nb project over HTTP (Compozy-compatible). "
            "Envelope: {status, message, data} or "
            "{status, message, error: {code, message, field?, details?}}."
        ),
        lifespan=lifespan,
        default_response_class=JSON,
    )
    app.state.project = project
    install_middleware(
        app, token=token, max_body_bytes=max_body_bytes, body_timeout=body_timeout, allowed_hosts=allowed_hosts
    )
    install_error_handlers(app)
    app.include_router(health_router(project))
    app.include_router(workflow_router(project))
    app.include_router(memory_router(project))
    _customize_openapi(app, secured=bool(token))
    return app


def _warm(project: Project) -> None:
    """Compile every resource's runtime (tokenizer, privacy) and connect the backend before the first request;
    when that fails (Redis down), log a warning: requests get 503 until Redis is reachable."""
    try:
        for rid in project.resources:
            project.runtime(rid)
        _ = project.backend
    except CompozyNbError as exc:
        log.warning("compozy-nb: %s (requests will get 503 until it is reachable)", exc)


def _customize_openapi(app: FastAPI, *, secured: bool) -> None:
    """Our 400 replaces FastAPI's 422; the bearer scheme is declared when a token is set."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                operation.get("responses", {}).pop("422", None)
                if not secured or path in OPEN_PATHS:
                    operation.get("responses", {}).pop("401", None)
                if secured and path not in OPEN_PATHS:
                    operation["security"] = [{"bearerAuth": []}]
        components = schema.setdefault("components", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        if secured:
            components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
