"""HTTP status codes and response bodies for the package's error tree, and the renaming of an engine error's field
to the request's name (:func:`renamed`) (no FastAPI import here).

Every response of the API uses Compozy's envelope (``engine/infra/server/router/response.go``)::

    {"status": 200, "message": "memory read successfully", "data": {...}}
    {"status": 400, "message": "...", "error": {"code": "INVALID_KEY", "message": "...", "field": "key",
                                                 "details": {...}}}

``error.field`` names the request field at fault when there is one; ``error.details`` carries the rest of
the error's context (``operation``, ``key``, ``workflow`` ...) or, for request validation, every problem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from compozy_nb.errors import CompozyNbError, ErrorCode

T = TypeVar("T")

STATUS_BY_CODE: dict[ErrorCode, int] = {
    # 400: the request is wrong and retrying it unchanged will fail again.
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_CONFIG: 400,
    ErrorCode.INVALID_KEY: 400,
    ErrorCode.INVALID_PAYLOAD: 400,
    ErrorCode.TEMPLATE_ERROR: 400,
    ErrorCode.PRIVACY_ERROR: 400,
    # 413: what was sent does not fit the memory's limits (max_message_bytes, token or message limits).
    ErrorCode.LIMIT_EXCEEDED: 413,
    ErrorCode.REQUEST_TOO_LARGE: 413,
    ErrorCode.UNAUTHORIZED: 401,
    # 403: authentication is off and the Host header is not a local name (DNS rebinding protection).
    ErrorCode.HOST_NOT_ALLOWED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.MEMORY_NOT_FOUND: 404,
    ErrorCode.WORKFLOW_NOT_FOUND: 404,
    ErrorCode.TASK_NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.CONFIRM_REQUIRED: 409,
    # The LLM behind a basic task or a summarizer failed: a gateway error, not ours.
    ErrorCode.PROVIDER_ERROR: 502,
    ErrorCode.PROVIDER_AUTH_ERROR: 502,
    ErrorCode.FLUSH_FAILED: 502,
    ErrorCode.BACKEND_UNAVAILABLE: 503,
    ErrorCode.BACKEND_OUT_OF_MEMORY: 507,
    ErrorCode.PROVIDER_TIMEOUT: 504,
    # Stored data we cannot decode, a key holding another Redis type, bugs: the server's problem.
    ErrorCode.CORRUPT_DATA: 500,
    ErrorCode.MEMORY_OPERATION_ERROR: 500,
    ErrorCode.INTERNAL_ERROR: 500,
    # Never answered with: the base class's code, an engine-internal signal, a notebook-only failure.
    ErrorCode.COMPOZY_ERROR: 500,
    ErrorCode.FOREIGN_DATA: 500,
    ErrorCode.MISSING_DEPENDENCY: 500,
}
"""HTTP status of each error code: every :class:`~compozy_nb.errors.ErrorCode` is listed (checked at import)."""

_UNLISTED = set(ErrorCode) - set(STATUS_BY_CODE)
if _UNLISTED:  # pragma: no cover - fails the import, and with it every server test
    raise RuntimeError(f"STATUS_BY_CODE lists no HTTP status for {sorted(_UNLISTED)}")


def http_status(code: str) -> int:
    """The HTTP status for an error ``code``.

    Raises:
        ValueError: ``code`` is not an :class:`~compozy_nb.errors.ErrorCode` (a bug: every code the package
            reports is one, so an unknown code is never silently answered as some status).
    """
    return STATUS_BY_CODE[ErrorCode(code)]


def envelope(status: int, message: str, data: Any) -> dict[str, Any]:
    """A success body: ``{"status", "message", "data"}``."""
    return {"status": status, "message": message, "data": data}


def error_envelope(
    status: int,
    code: ErrorCode,
    message: str,
    *,
    field: str | None = None,
    details: Any = None,
    data: Any = None,
) -> dict[str, Any]:
    """An error body: ``{"status", "message", "error": {"code", "message", "field"?, "details"?}}``.

    ``data`` is added when the failure still has something to show (e.g. an unhealthy instance).
    """
    error: dict[str, Any] = {"code": code.value, "message": message}
    if field:
        error["field"] = field
    if details:
        error["details"] = details
    body: dict[str, Any] = {"status": status, "message": message, "error": error}
    if data is not None:
        body["data"] = data
    return body


def from_exception(exc: CompozyNbError) -> tuple[int, dict[str, Any]]:
    """The status and error body for one of the package's exceptions."""
    status = http_status(exc.code)
    context = dict(exc.context)
    field = context.pop("field", None)
    return status, error_envelope(status, exc.code, str(exc), field=field, details=context or None)


def renamed(exc: CompozyNbError, old: str = "", new: str = "", default_field: str | None = None) -> CompozyNbError:
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


def call_renamed(fn: Callable[[], T], old: str = "", new: str = "", default_field: str | None = None) -> T:
    """``fn()``, with its errors renamed by :func:`renamed`."""
    try:
        return fn()
    except CompozyNbError as exc:
        raise renamed(exc, old, new, default_field) from None


def field_path(loc: Sequence[Any]) -> str:
    """``("body", "messages", 0, "role")`` -> ``messages[0].role``; ``("query", "key")`` -> ``key``."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    if not parts:
        return "body" if loc and loc[0] == "body" else ".".join(str(p) for p in loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_error(errors: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The 400 body for a request that failed FastAPI's validation (malformed JSON, missing or mistyped
    fields, out-of-range query parameters)."""
    problems: list[dict[str, Any]] = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        field = "body" if err.get("type") == "json_invalid" else field_path(loc)
        problems.append({"field": field, "message": _problem_text(err, loc), "type": err.get("type")})
    if not problems:
        problems.append({"field": "body", "message": "invalid request", "type": "invalid"})
    first = problems[0]
    message = first["message"] if len(problems) == 1 else "; ".join(p["message"] for p in problems[:5])
    if len(problems) > 5:
        message += f" (and {len(problems) - 5} more)"
    return error_envelope(400, ErrorCode.INVALID_REQUEST, message, field=first["field"], details=problems)


def _problem_text(err: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    kind = err.get("type")
    field = field_path(loc)
    if kind == "missing" and loc and loc[0] == "query":
        return f"{field} query parameter is required"
    if kind == "missing" and loc == ("body",):
        return "request body is required (a JSON object)"
    if loc == ("body",) and kind in ("model_attributes_type", "dict_type", "model_type"):
        return "request body must be a JSON object sent with Content-Type: application/json"
    if kind == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return f"request body is not valid JSON{': ' + str(detail) if detail else ''}"
    return f"{field}: {err.get('msg', 'invalid value')}"
