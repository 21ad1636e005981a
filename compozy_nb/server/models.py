"""The request and response models of the HTTP API (pydantic), and the limits they check.

They define the OpenAPI document's schemas: each operation lists its error statuses
(:func:`error_responses`) with the :class:`ErrorEnvelope` schema.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from compozy_nb.limits import MAX_EXACT_INT
from compozy_nb.memory import operations

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


CONFIG_FIELDS = tuple(op.config_field for op in operations.OPERATIONS.values() if op.config_field)


class _TaskRequestHead(BaseModel):
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
    # and one ``<operation>_config`` object per operation with options, from the registry (below)

    @field_validator(*CONFIG_FIELDS, check_fields=False)
    @classmethod
    def _safe_integers(cls, block: dict[str, Any] | None) -> dict[str, Any] | None:
        for name, value in (block or {}).items():
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > SAFE_INT:
                raise ValueError(f"{name} must be between -{SAFE_INT} and {SAFE_INT} (I-JSON integers)")
        return block


if TYPE_CHECKING:
    TaskRequest = _TaskRequestHead
else:
    TaskRequest = create_model(
        "TaskRequest",
        __base__=_TaskRequestHead,
        __doc__=_TaskRequestHead.__doc__,
        **dict.fromkeys(CONFIG_FIELDS, (dict[str, Any] | None, None)),
    )


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


_PLAIN = (bool, int, float, str)


def _loose(annotation: Any) -> Any:
    """The field's type without its literal choices or parsed kinds (a time is a string here): the engine checks
    the value and names the field."""
    kinds = [k for k in typing.get_args(annotation) or (annotation,) if k is not type(None)]
    plain = [k if k in _PLAIN or typing.get_origin(k) is list else str for k in kinds]
    loose: Any = plain[0]
    for kind in plain[1:]:
        loose = loose | kind
    return loose | None if type(None) in typing.get_args(annotation) else loose


def option_fields(operation: str, *, ignored: bool) -> dict[str, Any]:
    """The HTTP fields of an operation's options, from the registry: its name, a loose type (bounds and choices
    are the engine's to check, so errors name the field the same way in every shell), the default and the
    description; ``ignored`` adds the Compozy-only fields a request may carry."""
    op = operations.OPERATIONS[operation]
    names = op.options.model_fields if ignored else operations.arguments(op)
    return {
        name: (_loose(info.annotation), Field(info.default, description=info.description))
        for name, info in op.options.model_fields.items()
        if name in names
    }


def _body(operation: str, doc: str) -> type[_KeyBody]:
    return create_model(
        f"{operation.capitalize()}Request", __base__=_KeyBody, __doc__=doc, **option_fields(operation, ignored=True)
    )


def _query(operation: str, **http: Any) -> type[BaseModel]:
    """The query model of ``operation``: its registry options, with ``http`` overriding some (Compozy's bounds)."""
    model: type[BaseModel] = create_model(
        f"{operation.capitalize()}Query",
        __config__=ConfigDict(extra="ignore", populate_by_name=True),
        **{**option_fields(operation, ignored=False), **http},
    )
    return model


if TYPE_CHECKING:  # the fields below come from the registry at run time

    class FlushRequest(_KeyBody):
        """Body of ``flush``."""

    class ClearRequest(_KeyBody):
        """Body of ``clear``."""

    class HealthQuery(BaseModel):
        """Query of ``health``."""

    class StatsQuery(BaseModel):
        """Query of ``stats``."""

    class ReadQuery(BaseModel):
        """Query of ``read``."""

        limit: int | None
        offset: int
        last: int | None
        max_tokens: int | None

else:
    FlushRequest = _body("flush", "Body of ``flush`` (``max_keys`` is accepted for Compozy compatibility, ignored).")
    ClearRequest = _body("clear", "Body of ``clear``: ``confirm`` must be true, or the request fails with 409.")
    HealthQuery = _query("health")
    StatsQuery = _query("stats")
    ReadQuery = _query(
        "read",
        # Compozy's read: a page of at most 1,000 messages, 50 when the limit is left out or not positive
        limit=(
            int | None,
            Field(
                None,
                le=READ_LIMIT_MAX,
                description=f"at most N messages (≤ 0 or left out: {READ_LIMIT_DEFAULT}, without last/max_tokens)",
            ),
        ),
        offset=(int, Field(0, ge=0, le=MAX_OFFSET, description="skip the first N")),
        roles=(list[str] | None, Field(None, alias="role", description="only these roles (repeatable)")),
    )


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
