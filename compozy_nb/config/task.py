"""Task models: the memory task (``type: memory``) and its per-operation config blocks.

The operations, their config blocks (``read_config`` …) and which need a payload come from the registry,
:mod:`compozy_nb.memory.operations`; this module only adds what a task has around them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from compozy_nb.config._yaml import FieldError
from compozy_nb.limits import MAX_EXACT_INT
from compozy_nb.memory import operations
from compozy_nb.memory.operations import ClearConfig, FlushConfig, HealthConfig, ReadConfig, StatsConfig

__all__ = ["OPERATIONS", "ClearConfig", "FlushConfig", "HealthConfig", "MemoryTask", "ReadConfig", "StatsConfig"]

MAX_INT = MAX_EXACT_INT
OPERATIONS = operations.NAMES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _TaskHead(_Strict):
    id: str | None = None
    type: Literal["memory"] = "memory"
    operation: str
    memory_ref: str = Field(min_length=1)
    key_template: str | None = None
    payload: Any = None


# one optional config block per operation with options (read_config, flush_config, ...), from the registry
if TYPE_CHECKING:
    _TaskConfigs = _TaskHead
else:
    _TaskConfigs = create_model(
        "_TaskConfigs",
        __base__=_TaskHead,
        **{op.config_field: (op.options | None, None) for op in operations.OPERATIONS.values() if op.config_field},
    )


class MemoryTask(_TaskConfigs):
    """A ``type: memory`` task, or the body of an execute request.

    ``key_template`` may be omitted when the memory resource has a default ``key``. Each operation with
    options has its config block (``read_config``, ``flush_config``, ``health_config``, ``clear_config``,
    ``stats_config``).
    """

    output: str | None = None
    on_error: Literal["fail", "continue"] = "fail"
    description: str | None = None
    batch_size: int | None = Field(None, ge=0, le=10000)
    max_keys: int | None = Field(None, ge=0, le=50000)

    @field_validator("operation")
    @classmethod
    def _known_operation(cls, value: str) -> str:
        if value not in operations.OPERATIONS:
            raise ValueError(f"invalid operation '{value}', must be one of: {', '.join(OPERATIONS)}")
        return value

    @field_validator("key_template")
    @classmethod
    def _key_template_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            from compozy_nb.templating import validate

            validate(value)
        return value

    @model_validator(mode="after")
    def _payload_rules(self) -> MemoryTask:
        if operations.OPERATIONS[self.operation].payload and self.payload is None:
            raise FieldError(f"{self.operation} operation requires payload", "payload")
        return self

    def config(self) -> operations.Options | None:
        """The operation's config block as given (None when absent)."""
        field = operations.OPERATIONS[self.operation].config_field
        block: operations.Options | None = getattr(self, field) if field else None
        return block

    def options(self) -> dict[str, Any]:
        """Keyword arguments for the operation's method, from its config block."""
        return operations.keywords(operations.OPERATIONS[self.operation], self.config())
