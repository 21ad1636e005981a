"""The eight memory operations, declared once.

Each :class:`Operation` says what the operation is called, what it does (one line, the help text of every
shell), whether it takes a payload, its output map's type (:mod:`~compozy_nb.memory.outputs`) and its options
model — the fields of a task's ``<operation>_config`` block, the keyword arguments of the
``MemoryInstance``/``AsyncMemory`` method of the same name, the ``%compozy memory OP`` flags and the HTTP request
fields. Everything else derives from :data:`OPERATIONS`:

- the task model (``config/task.py``): the valid ``operation`` names, one ``<op>_config`` field per operation
  with options, "write/append need a payload";
- :func:`call` (used by ``run_operation``, the workflow runner and ``AsyncMemory.run``);
- the magic's per-operation flags (:func:`flags`, help text from each field's description);
- the HTTP request bodies and the execute request's config blocks (``server/models.py``).

Adding an option is one field here; adding an operation is one entry here plus its method on both transports.
A field marked :data:`IGNORED` is accepted for Compozy compatibility (config blocks, HTTP bodies) and never
reaches the method; :class:`Flag` renames a field's command-line flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo

from compozy_nb.config.memory import FlushStrategy
from compozy_nb.errors import CompozyNbError, ConfigError
from compozy_nb.limits import MAX_EXACT_INT
from compozy_nb.memory import outputs

__all__ = [
    "IGNORED",
    "NAMES",
    "OPERATIONS",
    "ClearConfig",
    "Flag",
    "FlushConfig",
    "HealthConfig",
    "NoOptions",
    "Operation",
    "Options",
    "ReadConfig",
    "StatsConfig",
    "arguments",
    "call",
    "get",
    "in_task",
]


@dataclass(frozen=True)
class Flag:
    """Field metadata: the command-line flag of a field (default ``--field-name``)."""

    name: str


@dataclass(frozen=True)
class _Ignored:
    """Field metadata: accepted for Compozy compatibility, validated, never passed to the operation."""


IGNORED = _Ignored()


class Options(BaseModel):
    """An operation's options (a task's ``<operation>_config`` block): unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NoOptions(Options):
    """Operations without options."""


class ReadConfig(Options):
    """``read_config``: pagination, the newest N, a token budget, or the archive; filters by role and time."""

    limit: int | None = Field(None, ge=0, le=MAX_EXACT_INT, description="at most N messages")
    offset: int = Field(0, ge=0, le=MAX_EXACT_INT, description="skip the first N")
    last: int | None = Field(None, ge=0, le=MAX_EXACT_INT, description="the newest N")
    max_tokens: int | None = Field(None, ge=0, le=MAX_EXACT_INT, description="newest within a token budget")
    archive: bool = Field(False, description="read the archive (flushed/evicted) instead")
    roles: Annotated[list[str] | None, Flag("--role")] = Field(None, description="only this role (repeatable)")
    since: datetime | None = Field(None, description="only messages written at/after this ISO-8601 time")
    until: datetime | None = Field(None, description="only messages written before this ISO-8601 time")

    @field_validator("roles", mode="before")
    @classmethod
    def _role_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("since", "until", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        if value is None:
            return None
        from compozy_nb.memory.transcript import parse_time

        try:
            return parse_time(value, "read_config")
        except ValueError:
            raise ValueError("must be a date/time (ISO-8601)") from None

    @model_validator(mode="after")
    def _one_mode(self) -> ReadConfig:
        if self.last is not None and self.max_tokens is not None:
            raise ValueError("give either last or max_tokens, not both")
        if (self.last is not None or self.max_tokens is not None) and (self.limit is not None or self.offset):
            raise ValueError("limit/offset cannot be combined with last or max_tokens")
        return self


class FlushConfig(Options):
    """``flush_config``."""

    strategy: FlushStrategy | None = Field(
        None, description="simple_fifo, lru, token_aware_lru or hybrid_summary (default: the resource's)"
    )
    dry_run: bool = Field(False, description="only say what would be flushed")
    force: bool = Field(False, description="flush even below the threshold")
    threshold: float | None = Field(None, ge=0, le=1, description="flush above this utilisation (0..1)")
    max_keys: Annotated[int | None, IGNORED] = Field(None, ge=0, le=10000, description="accepted, ignored")


class HealthConfig(Options):
    """``health_config`` (optional)."""

    include_stats: bool = Field(True, description="add counts, usage and limits")
    check_connectivity: Annotated[bool, IGNORED] = Field(True, description="accepted, ignored (always checked)")


class ClearConfig(Options):
    """``clear_config``: ``confirm`` must be true; ``backup`` keeps a restorable copy."""

    confirm: bool = Field(False, description="required")
    backup: bool = Field(False, description="keep a restorable backup")


class StatsConfig(Options):
    """``stats_config`` (optional)."""

    include_content: bool = Field(False, description="oldest/newest previews")
    group_by: Annotated[Literal["role"] | None, IGNORED] = Field(None, description="accepted, ignored")


@dataclass(frozen=True)
class Operation:
    """One memory operation.

    Attributes:
        name: The operation (and the transports' method) name.
        summary: One line: what it does (help text of the magic, the CLI and the HTTP docs).
        options: Its options model.
        payload: It takes a payload (the messages), required.
        writes: It changes the memory.
        output: The ``TypedDict`` of its output map (:mod:`compozy_nb.memory.outputs`).
    """

    name: str
    summary: str
    options: type[Options] = NoOptions
    payload: bool = False
    writes: bool = False
    output: Any = None

    @property
    def config_field(self) -> str | None:
        """The task's config block (``read_config`` ...), or None for an operation without options."""
        return f"{self.name}_config" if self.options.model_fields else None


OPERATIONS: Mapping[str, Operation] = {
    op.name: op
    for op in (
        Operation("read", "messages as a DataFrame (a transcript)", ReadConfig, output=outputs.ReadOutput),
        Operation("write", "replace every message", payload=True, writes=True, output=outputs.WriteOutput),
        Operation("append", "add messages at the end", payload=True, writes=True, output=outputs.AppendOutput),
        Operation("delete", "delete the instance", writes=True, output=outputs.DeleteOutput),
        Operation("flush", "flush by the resource's strategy", FlushConfig, writes=True, output=outputs.FlushOutput),
        Operation("health", "counts, usage, warnings, Redis ping", HealthConfig, output=outputs.HealthOutput),
        Operation(
            "clear", "remove every message (needs --confirm)", ClearConfig, writes=True, output=outputs.ClearOutput
        ),
        Operation("stats", "counts, tokens, utilisation, roles, TTL", StatsConfig, output=outputs.StatsOutput),
    )
}
NAMES: tuple[str, ...] = tuple(OPERATIONS)


def get(name: str) -> Operation:
    """The operation called ``name``.

    Raises:
        ConfigError: ``name`` is not one of the 8 (field ``operation``).
    """
    try:
        return OPERATIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"invalid operation '{name}', must be one of: {', '.join(NAMES)}", field="operation"
        ) from None


def ignored(info: FieldInfo) -> bool:
    """Whether a field is accepted for Compozy compatibility only."""
    return IGNORED in info.metadata


def flag(name: str, info: FieldInfo) -> str:
    """The command-line flag of option ``name``."""
    return next((m.name for m in info.metadata if isinstance(m, Flag)), "--" + name.replace("_", "-"))


def arguments(operation: Operation) -> dict[str, FieldInfo]:
    """The options that reach the method: every field of the options model but the ignored ones."""
    return {name: info for name, info in operation.options.model_fields.items() if not ignored(info)}


def keywords(operation: Operation, options: Options | Mapping[str, Any] | None) -> dict[str, Any]:
    """The method's keyword arguments from ``options`` (a validated model, or a mapping the method validates
    itself): ``None`` values and ignored fields left out.

    Raises:
        ConfigError: a mapping names an option the operation does not have (field: that name).
    """
    if options is None:
        return {}
    values = options.model_dump(exclude_none=True) if isinstance(options, Options) else dict(options)
    fields = operation.options.model_fields
    for name in values:
        if name not in fields:
            known = ", ".join(arguments(operation)) or "none"
            raise ConfigError(f"{operation.name} has no option '{name}' (options: {known})", field=name)
    wanted = arguments(operation)
    return {k: v for k, v in values.items() if k in wanted and v is not None}


def in_task(name: str, exc: CompozyNbError) -> CompozyNbError:
    """``exc`` as a task reports it: an option the engine names (``since``) inside the operation's config
    block (``read_config.since``)."""
    operation = OPERATIONS.get(name)
    if operation is None or not operation.config_field or exc.context.get("field") not in arguments(operation):
        return exc
    return exc.within(f"{operation.config_field}.")


def call(target: Any, name: str, payload: Any = None, options: Options | Mapping[str, Any] | None = None) -> Any:
    """Run operation ``name`` on ``target`` (a ``MemoryInstance``, or an ``AsyncMemory``: then awaitable).

    ``options`` is the operation's options (a validated model, or a mapping the method validates); ``payload``
    goes to write and append.
    """
    operation = get(name)
    method = getattr(target, operation.name)
    if operation.payload:
        return method(payload)
    return method(**keywords(operation, options))
