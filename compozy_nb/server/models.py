"""The request and response models of the HTTP API (pydantic), and the limits they check.

They define the OpenAPI document's schemas: each operation lists its error statuses
(:func:`error_responses`) with the :class:`ErrorEnvelope` schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from compozy_nb.limits import MAX_EXACT_INT

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


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of an operation: ``statuses`` plus 401, 500 and 503, each with the error envelope."""
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


MEMORY_ERRORS = error_responses(400, 404, 413)
"""The error responses of most memory endpoints."""
