"""The FastAPI application: a thin HTTP shell over :class:`~compozy_nb.project.Project`.

No operation is implemented here: every endpoint validates the request's shape, calls one ``Project`` or
``MemoryInstance`` method and wraps its output map in Compozy's envelope.

Concurrency: the engine is synchronous (redis-py, one Lua script per write). Endpoints are plain ``def``
functions, which FastAPI runs in anyio's worker-thread pool, so a request waiting on Redis (or on an LLM in a
basic task) never blocks the event loop or the other requests. The pool is set to ``threads`` tokens at
startup (anyio's default is 40) and every thread borrows its own connection from redis-py's pool. Writes stay
correct under any interleaving because each one is a single atomic Lua script.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from enum import Enum
from typing import Annotated, Any, Literal, TypeVar

import anyio.to_thread
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from compozy_nb.config.task import MemoryTask
from compozy_nb.config.workflow import BasicTask
from compozy_nb.errors import BackendError, CompozyNbError, ConfigError, ErrorCode
from compozy_nb.limits import MAX_EXACT_INT
from compozy_nb.memory.aio import AsyncMemory
from compozy_nb.memory.instance import MemoryInstance, Output
from compozy_nb.memory.keys import validate_key
from compozy_nb.memory.log import LogSourceMiddleware
from compozy_nb.memory.store import redis_errors
from compozy_nb.project import Project
from compozy_nb.server.errors import (
    envelope,
    error_envelope,
    from_exception,
    http_status,
    validation_error,
)
from compozy_nb.server.guards import DEFAULT_BODY_TIMEOUT, HostCheck, RequestGuard, allowed_hosts_from_env
from compozy_nb.workflow.runner import run_workflow, validate_input

log = logging.getLogger("compozy_nb.server")
T = TypeVar("T")

API_PREFIX = "/api/v0"
OPEN_PATHS = frozenset({"/healthz"})
DEFAULT_THREADS = 64
DEFAULT_MAX_BODY = 8 * 1024 * 1024
READ_LIMIT_DEFAULT = 50
READ_LIMIT_MAX = 1000
MAX_OFFSET = 2**32 - 1  # a Redis list holds at most 2^32 - 1 elements
SAFE_INT = MAX_EXACT_INT  # I-JSON (RFC 7493): larger integers do not survive JSON parsers or Lua numbers

SEED_EXAMPLE: dict[str, Any] = {
    "type": "memory",
    "operation": "write",
    "memory_ref": "conversation_memory",
    "key_template": "conv:{{.user_id}}:{{.session_id}}",
    "payload": {"role": "user", "content": "Hello"},
    "input": {"user_id": "user123", "session_id": "sess456"},
}


# ---------------------------------------------------------------------------- request / response models
class TaskRequest(BaseModel):
    """The body of ``POST /workflows/{workflow_id}/tasks/{task_id}/execute`` (the seed's execute request).

    Fields left out are taken from task ``task_id`` of workflow ``workflow_id``. Any other field of a memory
    or basic task (``read_config``, ``messages``, ``provider`` ...) may be given too.
    """

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [SEED_EXAMPLE]})

    type: Literal["memory", "basic"] | None = Field(None, description="default: the task's type, or memory")
    operation: str | None = Field(None, description="read|write|append|delete|flush|health|clear|stats")
    memory_ref: str | None = Field(None, description="memory resource id")
    key_template: str | None = Field(None, description="Go-style template, e.g. conv:{{.user_id}}")
    payload: Any = Field(None, description="a message map, a list of maps or a string (write/append)")
    input: dict[str, Any] | None = Field(None, description="template variables (also under .workflow.input)")
    read_config: dict[str, Any] | None = None
    flush_config: dict[str, Any] | None = None
    health_config: dict[str, Any] | None = None
    clear_config: dict[str, Any] | None = None
    stats_config: dict[str, Any] | None = None

    @field_validator("read_config", "flush_config", "health_config", "clear_config", "stats_config")
    @classmethod
    def _safe_integers(cls, block: dict[str, Any] | None) -> dict[str, Any] | None:
        for name, value in (block or {}).items():
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > SAFE_INT:
                raise ValueError(f"{name} must be between -{SAFE_INT} and {SAFE_INT} (I-JSON integers)")
        return block


class WorkflowRunRequest(BaseModel):
    """The body of ``POST /workflows/{workflow_id}/execute``."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(default_factory=dict, description="the workflow input")


class MessageIn(BaseModel):
    """A message: ``content`` required; ``role`` defaults to ``user``; other fields are stored as given."""

    model_config = ConfigDict(extra="allow")

    role: str | None = Field(None, description="user | assistant | system | tool (default: user)")
    content: Any = Field(description="non-empty text")


class _KeyBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: str = Field(description="the literal memory key (no templating), e.g. conv:user123:sess456")


class MessagesRequest(_KeyBody):
    """Body of ``write`` and ``append``."""

    messages: list[MessageIn] = Field(min_length=1)

    def payload(self) -> list[dict[str, Any]]:
        """The messages as the engine's payload."""
        return [m.model_dump(exclude_unset=True) for m in self.messages]


class KeyRequest(_KeyBody):
    """Body of ``delete``."""


class FlushRequest(_KeyBody):
    """Body of ``flush``."""

    force: bool = False
    dry_run: bool = False
    strategy: str | None = Field(None, description="simple_fifo|fifo|lru|token_aware_lru|hybrid_summary")
    threshold: float | None = Field(None, description="usage ratio (0..1) at which to flush")
    max_keys: int | None = Field(None, description="accepted for Compozy compatibility; ignored")


class ClearRequest(_KeyBody):
    """Body of ``clear``."""

    confirm: bool = Field(False, description="must be true, or the request fails with 409")
    backup: bool = Field(False, description="keep the cleared messages in a restorable backup list")


class Envelope(BaseModel):
    """Compozy's success envelope."""

    status: int
    message: str
    data: Any


class ErrorDetail(BaseModel):
    """The ``error`` object of an error envelope."""

    code: str
    message: str
    field: str | None = None
    details: Any = None


class ErrorEnvelope(BaseModel):
    """Compozy's error envelope."""

    status: int
    message: str
    error: ErrorDetail
    data: Any = None


class TaskResponse(BaseModel):
    """The seed's execute response."""

    status: Literal["completed"]
    output: dict[str, Any]


KeyQuery = Annotated[str, Query(description="the literal memory key (no templating), e.g. conv:user123:sess456")]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "invalid input (error.code, error.message, error.field)",
        401: "missing or wrong bearer token (when an API key is set)",
        404: "unknown workflow, task or memory resource",
        409: "clear without confirm: true",
        413: "LIMIT_EXCEEDED: a message or the messages do not fit the memory's limits",
        500: "a bug (INTERNAL_ERROR) or undecodable stored data (CORRUPT_DATA)",
        503: "Redis unavailable (BACKEND_UNAVAILABLE)",
    }
    return {s: {"model": ErrorEnvelope, "description": text[s]} for s in (*statuses, 401, 500, 503)}


_MEMORY_ERRORS = _errors(400, 404, 413)


# ---------------------------------------------------------------------------- responses
class _JSON(JSONResponse):
    """JSON without ASCII escaping; values the engine returns that JSON lacks become strings."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def _ok(message: str, data: Any) -> _JSON:
    return _JSON(envelope(200, message, data))


def _error(exc: CompozyNbError) -> _JSON:
    status, body = from_exception(exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return _JSON(body, status_code=status, headers=headers)


def _renamed(exc: CompozyNbError, old: str = "", new: str = "", default_field: str | None = None) -> CompozyNbError:
    """The same error with an engine name (``payload``, ``flush_config.``) replaced by the request's name
    (``messages``, nothing) in its field and message, and ``default_field`` when it names no field."""
    context = dict(exc.context)
    message = exc.message
    field = context.get("field")
    if old and isinstance(field, str) and field.startswith(old):
        context["field"] = new + field[len(old) :]
    if old and old in message:
        message = message.replace(old, new, 1)
    if context.get("field") is None and default_field:
        context["field"] = default_field
    if context == exc.context and message == exc.message:
        return exc
    try:
        return type(exc)(message, code=exc.code, **context)
    except TypeError:  # pragma: no cover - a subclass with another constructor keeps its own names
        return exc


def _call(fn: Callable[[], T], old: str = "", new: str = "", default_field: str | None = None) -> T:
    """``fn()``, with its errors renamed by :func:`_renamed`."""
    try:
        return fn()
    except CompozyNbError as exc:
        raise _renamed(exc, old, new, default_field) from None


# ---------------------------------------------------------------------------- auth
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
        response = _JSON(body, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="compozy-nb"'})
        await response(scope, receive, send)


# ---------------------------------------------------------------------------- the engine, shared by threads
class _Engine:
    """The project, with its backend connected once under a lock (threads may race for the first use)."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._lock = threading.Lock()
        self._connected = False

    def ready(self) -> Project:
        """The project with a connected backend.

        Raises:
            BackendError: Redis cannot be reached (tried again by the next request).
        """
        if not self._connected:
            with self._lock:
                if not self._connected:
                    _ = self.project.backend
                    self._connected = True
        return self.project

    def warm(self) -> None:
        """Connect and compile every resource's runtime (tokenizer, privacy) before the first request."""
        try:
            for rid in self.project.resources:
                self.project.runtime(rid)
            self.ready()
        except CompozyNbError as exc:
            log.warning("compozy-nb: %s (requests will get 503 until it is reachable)", exc)

    def try_ready(self) -> Project:
        """The project, connected if Redis answers; otherwise the engine validates the request first and
        raises BackendError at its first Redis call."""
        try:
            return self.ready()
        except BackendError:
            return self.project

    def memory(self, memory_ref: str, key: str) -> MemoryInstance:
        """One instance; unknown ``memory_ref`` (404) and invalid ``key`` (400) before Redis (503)."""
        self.project.resource(memory_ref)
        _call(lambda: validate_key(key), default_field="key")
        return self.ready().memory(memory_ref, key=key)


# ---------------------------------------------------------------------------- the app
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
        threads: Worker threads for the (synchronous) engine calls.
        max_body_bytes: Larger request bodies get 413 ``REQUEST_TOO_LARGE``.
        body_timeout: Seconds a client may take to send its body (then 408 ``REQUEST_TIMEOUT``, connection
            closed).
        allowed_hosts: With authentication off, the ``Host`` names served besides loopback names and
            addresses (``None`` reads ``COMPOZY_ALLOWED_HOSTS``; ``["*"]`` turns the check off). Others get 403
            ``HOST_NOT_ALLOWED`` (DNS rebinding protection).
    """
    token = os.environ.get("COMPOZY_API_KEY", "") if api_key is None else api_key
    engine = _Engine(project)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = threads
        await anyio.to_thread.run_sync(engine.warm)
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
        default_response_class=_JSON,
    )
    app.state.project = project
    app.add_middleware(RequestGuard, max_bytes=max_body_bytes, body_timeout=body_timeout)
    app.add_middleware(LogSourceMiddleware, source="http")
    if token:
        app.add_middleware(BearerAuth, token=token)
    else:
        hosts = allowed_hosts_from_env() if allowed_hosts is None else list(allowed_hosts)
        app.add_middleware(HostCheck, allowed=hosts)
    _install_error_handlers(app)
    _add_health(app, engine)
    _add_workflow_routes(app, engine)
    _add_memory_routes(app, engine)
    _customize_openapi(app, secured=bool(token))
    return app


_HTTP_CODES = {
    400: ErrorCode.INVALID_REQUEST,  # e.g. FastAPI's "There was an error parsing the body"
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    408: ErrorCode.REQUEST_TIMEOUT,
    413: ErrorCode.REQUEST_TOO_LARGE,
}


def _install_error_handlers(app: FastAPI) -> None:
    async def on_engine_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CompozyNbError)
        return _error(exc)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _JSON(validation_error(exc.errors()), status_code=400)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        fallback = ErrorCode.INVALID_REQUEST if exc.status_code < 500 else ErrorCode.INTERNAL_ERROR
        code = _HTTP_CODES.get(exc.status_code, fallback)
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return _JSON(
            error_envelope(exc.status_code, code, message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("compozy-nb: unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return _JSON(
            error_envelope(
                500, ErrorCode.INTERNAL_ERROR, "internal server error", details={"type": type(exc).__name__}
            ),
            status_code=500,
        )

    app.add_exception_handler(CompozyNbError, on_engine_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_bug)


def _add_health(app: FastAPI, engine: _Engine) -> None:
    @app.get("/healthz", tags=["health"], response_model=Envelope, responses={503: {"model": ErrorEnvelope}})
    def healthz() -> JSONResponse:
        """The process answers and Redis answers a PING (never needs a token)."""
        project = engine.project
        data: dict[str, Any] = {"process": "ok", "project": project.name, "redis": {"ok": False}}
        try:
            backend = engine.ready().backend
            with redis_errors("healthz", None):
                started = time.perf_counter()
                backend.client.ping()
            data["redis"] = {
                "ok": True,
                "backend": backend.kind,
                "url": backend.display_url,
                "ping_ms": round((time.perf_counter() - started) * 1000, 3),
            }
        except BackendError as exc:
            data["redis"]["error"] = exc.message
            return _JSON(
                error_envelope(503, exc.code, str(exc), data=data), status_code=503, headers={"Retry-After": "1"}
            )
        return _ok("healthy", data)


# ---------------------------------------------------------------------------- workflows
def _is_complete(fields: dict[str, Any]) -> bool:
    """Whether a task body can run without a task definition to fill it in."""
    if fields.get("type") == "basic":
        return "messages" in fields
    return "operation" in fields and "memory_ref" in fields


def _merge_task(engine: _Engine, workflow_id: str, task_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The request's fields over the defined task's (top-level keys; a config block replaces the task's)."""
    workflow = engine.project.workflows.get(workflow_id)
    task: MemoryTask | BasicTask | None = workflow.task(task_id) if workflow is not None else None
    if task is not None and fields.get("type", task.type) == task.type:
        return {**task.model_dump(exclude_unset=True), **fields}
    if _is_complete(fields):
        return fields
    missing = (
        ["messages"] if fields.get("type") == "basic" else [f for f in ("operation", "memory_ref") if f not in fields]
    )
    if task is not None:
        raise ConfigError(
            f"task '{task_id}' of workflow '{workflow_id}' is a {task.type} task; a "
            f"'{fields.get('type')}' request must be complete (missing: {', '.join(missing)})",
            field="type",
        )
    if workflow is None:
        known = ", ".join(sorted(engine.project.workflows)) or "none registered"
        raise ConfigError(
            f"workflow not found: '{workflow_id}' (known: {known}); a request for an undefined "
            f"task must be complete (missing: {', '.join(missing)})",
            code=ErrorCode.WORKFLOW_NOT_FOUND,
            workflow=workflow_id,
        )
    known = ", ".join(t.id for t in workflow.tasks)
    raise ConfigError(
        f"task not found: '{task_id}' in workflow '{workflow_id}' (tasks: {known}); a request "
        f"for an undefined task must be complete (missing: {', '.join(missing)})",
        code=ErrorCode.TASK_NOT_FOUND,
        workflow=workflow_id,
        task=task_id,
    )


_TASK_FIELDS = {
    True: {
        "INVALID_KEY": "key_template",
        "TEMPLATE_ERROR": "key_template",
        "MEMORY_NOT_FOUND": "memory_ref",
        "CONFIRM_REQUIRED": "clear_config.confirm",
        "LIMIT_EXCEEDED": "payload",
        "INVALID_PAYLOAD": "payload",
    },
    False: {"MEMORY_NOT_FOUND": "memory"},
}
_NO_FIELD = "<document>"


def _task_error(exc: CompozyNbError, is_memory: bool) -> CompozyNbError:
    """Name the request field at fault. Errors of the task model's cross-field checks (payload required,
    key_template syntax) come from the engine without a field (``<document>``): it is inferred here."""
    if exc.context.get("field") == _NO_FIELD:
        context = {k: v for k, v in exc.context.items() if k != "field"}
        message = exc.message.removeprefix(f"{_NO_FIELD}: ")
        guess = "payload" if "payload" in message else "key_template" if "template" in message else "body"
        exc = type(exc)(message, code=exc.code, **context, field=guess)
    return _renamed(exc, default_field=_TASK_FIELDS[is_memory].get(exc.code))


def _add_workflow_routes(app: FastAPI, engine: _Engine) -> None:
    @app.post(
        "/workflows/{workflow_id}/tasks/{task_id}/execute",
        tags=["workflows"],
        response_model=TaskResponse,
        responses=_errors(400, 404, 409, 413),
    )
    def execute_task(
        workflow_id: str, task_id: str, body: Annotated[TaskRequest | None, Body()] = None
    ) -> JSONResponse:
        """Execute one task (the seed's request). Missing fields come from task ``task_id`` of workflow
        ``workflow_id``; a complete body runs even when they are not defined (ad-hoc). ``.workflow.id`` is
        ``workflow_id``. Returns ``{"status": "completed", "output": {...}}``."""
        fields = body.model_dump(exclude_unset=True) if body is not None else {}
        if fields.get("type", "") is None:
            del fields["type"]
        data = fields.pop("input", None) or {}
        merged = _merge_task(engine, workflow_id, task_id, fields)
        is_memory = merged.get("type", "memory") == "memory"
        try:
            if is_memory and isinstance(merged.get("memory_ref"), str):
                engine.project.resource(merged["memory_ref"])
            return _JSON(engine.try_ready().execute(merged, data, workflow_id=workflow_id))
        except CompozyNbError as exc:
            raise _task_error(exc, is_memory) from None

    @app.post("/workflows/{workflow_id}/execute", tags=["workflows"], responses=_errors(400, 404))
    def execute_workflow(workflow_id: str, body: Annotated[WorkflowRunRequest | None, Body()] = None) -> JSONResponse:
        """Run a whole workflow with ``{"input": {...}}`` and return the run JSON. A run that failed keeps
        the run JSON as body with the HTTP status of its error code (400, 404, 409, 413, 503 ...)."""
        data = body.input if body is not None else {}
        handle = engine.project.workflow(workflow_id)
        validate_input(handle.definition, data)
        # runner.run_workflow, not Project.run(id, input): that one passes the input as **kwargs, so an input
        # property named "self" raised TypeError (a 500).
        run = run_workflow(engine.try_ready(), handle.definition, data)
        error = run.get("error") or {}
        status = 200 if run.get("status") == "completed" else http_status(str(error.get("code")))
        return _JSON(run, status_code=status)


# ---------------------------------------------------------------------------- memory (Compozy's REST shapes)
def _add_memory_routes(app: FastAPI, engine: _Engine) -> None:
    base = f"{API_PREFIX}/memory/{{memory_ref}}"
    tags: list[str | Enum] = ["memory"]

    @app.get(f"{base}/read", tags=tags, response_model=Envelope, responses=_MEMORY_ERRORS)
    async def read(
        memory_ref: str,
        key: KeyQuery,
        limit: Annotated[int, Query(le=READ_LIMIT_MAX, description="≤ 0 means 50")] = READ_LIMIT_DEFAULT,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        role: Annotated[list[str] | None, Query(description="only these roles (repeatable)")] = None,
        since: Annotated[str | None, Query(description="only messages written at/after (ISO-8601)")] = None,
        until: Annotated[str | None, Query(description="only messages written before (ISO-8601)")] = None,
    ) -> JSONResponse:
        """Messages, oldest first: ``{key, messages, total_count, has_more, limit, offset, count}``.

        Runs on the event loop over redis.asyncio (the async path); with filters (``role``, ``since``,
        ``until``), decoding and filtering the whole list happens in a worker thread."""
        limit = limit if limit > 0 else READ_LIMIT_DEFAULT
        mem = engine.memory(memory_ref, key)
        out = await AsyncMemory(mem).read(limit, offset, roles=role, since=since, until=until)
        return _ok("memory read successfully", {**out, "limit": limit, "offset": offset})

    @app.post(f"{base}/write", tags=tags, response_model=Envelope, responses=_MEMORY_ERRORS)
    async def write(memory_ref: str, body: MessagesRequest) -> JSONResponse:
        """Replace the content with ``messages``: ``{success, count, key, ...}`` (async path)."""
        mem = engine.memory(memory_ref, body.key)
        try:
            out = await AsyncMemory(mem).write(body.payload())
        except CompozyNbError as exc:
            raise _renamed(exc, "payload", "messages", "messages") from None
        return _ok("memory written successfully", out)

    @app.post(f"{base}/append", tags=tags, response_model=Envelope, responses=_MEMORY_ERRORS)
    async def append(memory_ref: str, body: MessagesRequest) -> JSONResponse:
        """Append ``messages`` atomically: ``{success, appended, total_count, key, ...}``.

        Runs on the event loop over redis.asyncio (the async path)."""
        mem = engine.memory(memory_ref, body.key)
        try:
            out = await AsyncMemory(mem).append(body.payload())
        except CompozyNbError as exc:
            raise _renamed(exc, "payload", "messages", "messages") from None
        return _ok("memory appended successfully", out)

    @app.post(f"{base}/delete", tags=tags, response_model=Envelope, responses=_MEMORY_ERRORS)
    async def delete(memory_ref: str, body: KeyRequest) -> JSONResponse:
        """Remove the instance (messages, metadata, archive, backups): ``{success, key, ...}`` (async path)."""
        return _ok("memory deleted successfully", await AsyncMemory(engine.memory(memory_ref, body.key)).delete())

    @app.post(f"{base}/flush", tags=tags, response_model=Envelope, responses=_MEMORY_ERRORS)
    async def flush(memory_ref: str, body: FlushRequest) -> JSONResponse:
        """Flush when over the threshold (or ``force``): ``{success, key, summary_generated, message_count,
        token_count, dry_run, would_flush, actual_strategy, ...}`` (async path; planning and a
        ``hybrid_summary`` summarizer run in a worker thread)."""
        mem = engine.memory(memory_ref, body.key)
        try:
            out = await AsyncMemory(mem).flush(
                body.strategy, dry_run=body.dry_run, force=body.force, threshold=body.threshold
            )
        except CompozyNbError as exc:
            raise _renamed(exc, "flush_config.", "") from None
        return _ok("memory flushed successfully", out)

    @app.post(f"{base}/clear", tags=tags, response_model=Envelope, responses=_errors(400, 404, 409))
    async def clear(memory_ref: str, body: ClearRequest) -> JSONResponse:
        """Remove every message; needs ``confirm: true`` (409 otherwise): ``{success, key,
        messages_cleared, backup_created, backup_key}`` (async path)."""
        mem = engine.memory(memory_ref, body.key)
        try:
            out = await AsyncMemory(mem).clear(confirm=body.confirm, backup=body.backup)
        except CompozyNbError as exc:
            raise _renamed(exc, "clear_config.", "", "confirm") from None
        return _ok("memory cleared successfully", out)

    @app.get(f"{base}/health", tags=tags, response_model=Envelope, responses=_MEMORY_ERRORS)
    async def health(memory_ref: str, key: KeyQuery, include_stats: bool = True) -> JSONResponse:
        """``{healthy, key, token_count, message_count, actual_strategy, last_flush, redis, warnings}``;
        503 (with the same data) when Redis is unreachable (async path)."""
        out: Output = await AsyncMemory(engine.memory(memory_ref, key)).health(include_stats=include_stats)
        if not out.get("healthy"):
            message = f"memory unhealthy: {out.get('error', 'Redis is unreachable')}"
            return _JSON(
                error_envelope(503, ErrorCode.BACKEND_UNAVAILABLE, message, data=out),
                status_code=503,
                headers={"Retry-After": "1"},
            )
        return _ok("memory health retrieved successfully", out)

    @app.get(f"{base}/stats", tags=tags, response_model=Envelope, responses=_MEMORY_ERRORS)
    async def stats(memory_ref: str, key: KeyQuery, include_content: bool = False) -> JSONResponse:
        """Counters from the metadata hash, plus Compozy's names ``context_window_used`` (= message_count) and
        ``token_limit`` (= max_tokens, the resource's real limit) (async path)."""
        out = await AsyncMemory(engine.memory(memory_ref, key)).stats(include_content=include_content)
        data = {**out, "context_window_used": out["message_count"], "token_limit": out["max_tokens"]}
        return _ok("memory stats retrieved successfully", data)

    @app.get(f"{base}/log", tags=tags, response_model=Envelope, responses=_MEMORY_ERRORS)
    def log(
        memory_ref: str,
        key: KeyQuery,
        since: Annotated[str | None, Query(max_length=40, description="ms since the epoch or an event id")] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> JSONResponse:
        """The operation log, oldest first: ``{key, count, events: [{id, ts, operation, source, ...}]}``."""
        mem = engine.memory(memory_ref, key)
        events = _call(lambda: mem.log(since=since, limit=limit))
        data = {"key": key, "count": len(events), "events": [{**e, "ts": e["ts"].isoformat()} for e in events]}
        return _ok("memory log retrieved successfully", data)

    @app.get(f"{base}/instances", tags=tags, response_model=Envelope, responses=_MEMORY_ERRORS)
    def instances(
        memory_ref: str,
        pattern: Annotated[str, Query(min_length=1, max_length=512, description="glob over memory keys")] = "*",
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    ) -> JSONResponse:
        """Stored instances whose key matches ``pattern`` (SCAN, never KEYS), with their stats (limits of
        ``memory_ref``). Keys do not name their resource: every matching key of the project is listed."""
        engine.project.resource(memory_ref)
        rows = engine.ready().instances(pattern, memory_ref=memory_ref, limit=limit + 1)
        data = {
            "pattern": pattern,
            "count": min(len(rows), limit),
            "has_more": len(rows) > limit,
            "instances": rows[:limit],
        }
        return _ok("memory instances listed successfully", data)


# ---------------------------------------------------------------------------- OpenAPI
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
