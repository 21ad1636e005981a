"""One exception tree for the whole package.

Every error carries a stable machine-readable ``code`` (the strings the CLI, the magics and the HTTP API
report) and optional context: the ``operation``, the memory ``key`` and, for configuration errors, the
``source`` (``file:line``) and ``field``.
"""

from __future__ import annotations

from typing import Any


class CompozyNbError(Exception):
    """Base class of every error raised by compozy-nb.

    Attributes:
        code: Stable error code, e.g. ``INVALID_KEY``.
        message: Human readable message without the context prefix.
        context: Extra facts (``operation``, ``key``, ``source``, ``field`` ...), all JSON-serialisable.
    """

    code: str = "COMPOZY_ERROR"

    def __init__(self, message: str, *, code: str | None = None, **context: Any) -> None:
        if code is not None:
            self.code = code
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

    def _render_traceback_(self) -> list[str]:
        """IPython shows the error as one line with its code (like the magic), not a traceback."""
        return [f"{type(self).__name__} [{self.code}]: {self}"]

    def to_dict(self) -> dict[str, Any]:
        """The error as the JSON object the CLI and the HTTP API print."""
        return {"code": self.code, "message": str(self), **self.context}


class ConfigError(CompozyNbError, ValueError):
    """Invalid configuration: YAML, resource, task, workflow, unknown operation, unsafe regex."""

    code = "INVALID_CONFIG"


class MemoryNotFoundError(CompozyNbError, LookupError):
    """A ``memory_ref`` that names no registered memory resource."""

    code = "MEMORY_NOT_FOUND"


class InvalidKeyError(CompozyNbError, ValueError):
    """A rendered memory key that breaks Compozy's key rules."""

    code = "INVALID_KEY"


class InvalidPayloadError(CompozyNbError, ValueError):
    """A payload that is not a message, a list of messages or a string."""

    code = "INVALID_PAYLOAD"


class TemplateError(CompozyNbError, ValueError):
    """A template that is malformed, breaks the sandbox or names a missing variable."""

    code = "TEMPLATE_ERROR"


class ConfirmRequiredError(CompozyNbError, ValueError):
    """``clear`` called without ``confirm: true``."""

    code = "CONFIRM_REQUIRED"


class LimitExceededError(CompozyNbError, ValueError):
    """A write that cannot fit the memory's limits even after evicting everything evictable."""

    code = "LIMIT_EXCEEDED"


class PrivacyError(CompozyNbError):
    """Redaction could not be applied (e.g. a pattern ran past its time bound)."""

    code = "PRIVACY_ERROR"


class BackendError(CompozyNbError, ConnectionError):
    """Redis (or the embedded backend) is unreachable or failed."""

    code = "BACKEND_UNAVAILABLE"


class CorruptDataError(CompozyNbError):
    """Stored data that cannot be decoded (e.g. a list element that is not JSON)."""

    code = "CORRUPT_DATA"


class MemoryOperationError(CompozyNbError):
    """An operation failed for a reason not covered by a more specific class."""

    code = "MEMORY_OPERATION_ERROR"


__all__ = [
    "BackendError",
    "CompozyNbError",
    "ConfigError",
    "ConfirmRequiredError",
    "CorruptDataError",
    "InvalidKeyError",
    "InvalidPayloadError",
    "LimitExceededError",
    "MemoryNotFoundError",
    "MemoryOperationError",
    "PrivacyError",
    "TemplateError",
]
