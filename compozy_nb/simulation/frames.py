"""The simulator's inputs, checked: the conversations DataFrame, the resources and the read options."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from compozy_nb.config.memory import MemoryResource
from compozy_nb.errors import ConfigError, InvalidPayloadError

REQUIRED_COLUMNS = ("conversation_id", "role", "content")
READ_OPTIONS = ("max_tokens", "last", "limit")


def check_frame(frame: Any) -> Any:
    """The conversations as a DataFrame with the required columns (a list of dicts is accepted too).

    Raises:
        InvalidPayloadError: naming the missing column.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        if not isinstance(frame, Sequence) or isinstance(frame, str | bytes):
            raise InvalidPayloadError(
                f"conversations must be a DataFrame or a list of message dicts, got {type(frame).__name__}",
                operation="simulate",
                field="conversations",
            )
        frame = pd.DataFrame(list(frame))
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise InvalidPayloadError(
            f"conversations lack the column(s) {', '.join(missing)} (needed: {', '.join(REQUIRED_COLUMNS)})",
            operation="simulate",
            field=f"conversations.{missing[0]}",
        )
    return frame


def to_resource(value: Any, index: int) -> MemoryResource:
    """A memory resource model from a model, an SDK builder or YAML text.

    Raises:
        ConfigError: not a memory resource (with the YAML error's file:line for text).
    """
    if isinstance(value, MemoryResource):
        return value
    build = getattr(value, "build", None)
    if callable(build):
        built = build()
        if isinstance(built, MemoryResource):
            return built
    if isinstance(value, str):
        from compozy_nb.project import Project

        project = Project("simulate")
        ids = project.add_yaml(value, source=f"<resources[{index}]>")
        if len(ids) == 1 and ids[0] in project.resources:
            return project.resources[ids[0]]
    raise ConfigError(
        f"resources[{index}] is not a memory resource (give a MemoryResource builder or model, or its YAML)",
        operation="simulate",
        field=f"resources[{index}]",
    )


def to_resources(values: Sequence[Any]) -> list[MemoryResource]:
    """Every resource, with ids that tell them apart.

    Raises:
        ConfigError: no resource, or two with the same id.
    """
    if isinstance(values, str | MemoryResource) or not isinstance(values, Sequence) or not values:
        values = [values] if values else []
    resources = [to_resource(v, i) for i, v in enumerate(values)]
    if not resources:
        raise ConfigError("give at least one memory resource", operation="simulate", field="resources")
    ids = [r.id for r in resources]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate:
        raise ConfigError(
            f"two resources have the id '{duplicate}': give each configuration its own id",
            operation="simulate",
            field="resources",
        )
    return resources


def to_read_options(read: Mapping[str, Any] | None) -> dict[str, int]:
    """What the agent reads before each assistant turn: ``None`` (everything), ``{"max_tokens": N}``,
    ``{"last": N}`` (with ``limit`` allowed as well).

    Raises:
        ConfigError: an unknown option or a value that is not a non-negative integer.
    """
    if read is None:
        return {}
    if not isinstance(read, Mapping):
        raise ConfigError(
            'read must be a mapping such as {"max_tokens": 1000} or {"last": 20}', operation="simulate", field="read"
        )
    options: dict[str, int] = {}
    for name, value in read.items():
        if name not in READ_OPTIONS:
            raise ConfigError(
                f"unknown read option '{name}', must be one of: {', '.join(READ_OPTIONS)}",
                operation="simulate",
                field=f"read.{name}",
            )
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(
                f"read.{name} must be a non-negative integer, got {value!r}",
                operation="simulate",
                field=f"read.{name}",
            )
        options[name] = value
    return options
