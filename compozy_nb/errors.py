"""One exception tree for the whole package.

Every error carries a stable machine-readable ``code`` (the strings the CLI, the magics and the HTTP API
report) and optional context: the ``operation``, the memory ``key`` and, for configuration errors, the
``source`` (``file:line``) and ``field``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Every error code the package reports, in one place.

    Members are strings (``ErrorCode.INVALID_KEY == "INVALID_KEY"``) so they serialise as the bare code in
    JSON and compare equal to the codes callers already match on. The HTTP server maps each one to a status
    (``compozy_nb.server.errors.STATUS_BY_CODE``, which must list them all). Output maps (``to_dict()``, run
    maps, HTTP bodies) carry the plain string; ``repr`` is the plain string's too.
    """

    def __repr__(self) -> str:
        return repr(self.value)

    COMPOZY_ERROR = "COMPOZY_ERROR"
    """Base code of :class:`CompozyNbError` (not raised as such by the package)."""
    # configuration and input
    INVALID_CONFIG = "INVALID_CONFIG"
    INVALID_KEY = "INVALID_KEY"
    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    TEMPLATE_ERROR = "TEMPLATE_ERROR"
    PRIVACY_ERROR = "PRIVACY_ERROR"
    CONFIRM_REQUIRED = "CONFIRM_REQUIRED"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    # lookups
    MEMORY_NOT_FOUND = "MEMORY_NOT_FOUND"
    WORKFLOW_NOT_FOUND = "WORKFLOW_NOT_FOUND"
    TASK_NOT_FOUND = "TASK_NOT_FOUND"
    # storage
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
    BACKEND_OUT_OF_MEMORY = "BACKEND_OUT_OF_MEMORY"
    CORRUPT_DATA = "CORRUPT_DATA"
    FOREIGN_DATA = "FOREIGN_DATA"
    MEMORY_OPERATION_ERROR = "MEMORY_OPERATION_ERROR"
    # the LLM behind a basic task or a summarizer
    PROVIDER_ERROR = "PROVIDER_ERROR"
    PROVIDER_AUTH_ERROR = "PROVIDER_AUTH_ERROR"
    PROVIDER_TIMEOUT = "PROVIDER_TIMEOUT"
    FLUSH_FAILED = "FLUSH_FAILED"
    # environment
    MISSING_DEPENDENCY = "MISSING_DEPENDENCY"
    # reported by the HTTP server only
    INVALID_REQUEST = "INVALID_REQUEST"
    UNAUTHORIZED = "UNAUTHORIZED"
    HOST_NOT_ALLOWED = "HOST_NOT_ALLOWED"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    """A bug: an exception that is not a :class:`CompozyNbError` (reported without its traceback)."""


class CompozyNbError(Exception):
    """Base class of every error raised by compozy-nb.

    Attributes:
        code: Stable error code, e.g. ``INVALID_KEY``.
        message: Human readable message without the context prefix.
        context: Extra facts (``operation``, ``key``, ``source``, ``field`` ...), all JSON-serialisable.
    """

    code: ErrorCode = ErrorCode.COMPOZY_ERROR

    def __init__(self, message: str, *, code: ErrorCode | None = None, **context: Any) -> None:
        if code is not None:
            self.code = ErrorCode(code)  # a string that is not a code fails here, not in the HTTP layer
        self.message = message
        self.context: dict[str, Any] = {k: v for k, v in context.items() if v is not None}
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.context.get("source")
        prefix = f"{where}: " if where else ""
        field = self.context.get("field")
        if field and f"'{field}'" not in self.message and field not in self.message:
            prefix += f"{field}: "
        return f"{prefix}{self.message}"

    def within(self, prefix: str) -> CompozyNbError:
        """The same error with its field named as a shell's user wrote it: ``since`` inside ``read_config.``
        is ``read_config.since`` (the engine names the parameter; each shell adds its own prefix)."""
        field = self.context.get("field")
        if not isinstance(field, str) or not prefix:
            return self
        new = self.__class__.__new__(self.__class__)
        new.__dict__.update(self.__dict__)
        new.message = self.message.removeprefix(f"{field}: ")
        new.context = {**self.context, "field": prefix + field}
        Exception.__init__(new, new._format())
        return new

    def _render_traceback_(self) -> list[str]:
        """IPython shows the error as one line with its code (like the magic), not a traceback."""
        return [f"{type(self).__name__} [{self.code}]: {self}"]

    def to_dict(self) -> dict[str, Any]:
        """The error as the JSON object the CLI and the HTTP API print."""
        return {"code": self.code.value, "message": str(self), **self.context}


class ConfigError(CompozyNbError, ValueError):
    """Invalid configuration: YAML, resource, task, workflow, unknown operation, unsafe regex."""

    code = ErrorCode.INVALID_CONFIG


class MemoryNotFoundError(CompozyNbError, LookupError):
    """A ``memory_ref`` that names no registered memory resource."""

    code = ErrorCode.MEMORY_NOT_FOUND


class InvalidKeyError(CompozyNbError, ValueError):
    """A rendered memory key that breaks Compozy's key rules."""

    code = ErrorCode.INVALID_KEY


class InvalidPayloadError(CompozyNbError, ValueError):
    """A payload that is not a message, a list of messages or a string."""

    code = ErrorCode.INVALID_PAYLOAD


class TemplateError(CompozyNbError, ValueError):
    """A template that is malformed, breaks the sandbox or names a missing variable."""

    code = ErrorCode.TEMPLATE_ERROR


class ConfirmRequiredError(CompozyNbError, ValueError):
    """``clear`` called without ``confirm: true``."""

    code = ErrorCode.CONFIRM_REQUIRED


class LimitExceededError(CompozyNbError, ValueError):
    """A write that cannot fit the memory's limits even after evicting everything evictable."""

    code = ErrorCode.LIMIT_EXCEEDED


class PrivacyError(CompozyNbError):
    """Redaction could not be applied (e.g. a pattern ran past its time bound)."""

    code = ErrorCode.PRIVACY_ERROR


class BackendError(CompozyNbError, ConnectionError):
    """Redis (or the embedded backend) is unreachable or failed."""

    code = ErrorCode.BACKEND_UNAVAILABLE


class CorruptDataError(CompozyNbError):
    """Stored data that cannot be decoded (e.g. a list element that is not JSON)."""

    code = ErrorCode.CORRUPT_DATA


class MemoryOperationError(CompozyNbError):
    """An operation failed for a reason not covered by a more specific class."""

    code = ErrorCode.MEMORY_OPERATION_ERROR


class ProviderError(CompozyNbError):
    """The LLM call failed (HTTP error, timeout, bad reply): ``PROVIDER_ERROR``, ``PROVIDER_TIMEOUT``,
    ``PROVIDER_AUTH_ERROR``."""

    code = ErrorCode.PROVIDER_ERROR


__all__ = [
    "BackendError",
    "CompozyNbError",
    "ConfigError",
    "ConfirmRequiredError",
    "CorruptDataError",
    "ErrorCode",
    "InvalidKeyError",
    "InvalidPayloadError",
    "LimitExceededError",
    "MemoryNotFoundError",
    "MemoryOperationError",
    "PrivacyError",
    "ProviderError",
    "TemplateError",
]
