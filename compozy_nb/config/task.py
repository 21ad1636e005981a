"""Task models: the memory task (``type: memory``) and its per-operation config blocks."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compozy_nb.config._yaml import FieldError
from compozy_nb.limits import MAX_EXACT_INT

MAX_INT = MAX_EXACT_INT
OPERATIONS = ("read", "write", "append", "delete", "flush", "health", "clear", "stats")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ReadConfig(_Strict):
    """``read_config``: pagination, the newest N, a token budget, or the archive; filters by role and time."""

    limit: int | None = Field(None, ge=0, le=MAX_INT)
    offset: int = Field(0, ge=0, le=MAX_INT)
    last: int | None = Field(None, ge=0, le=MAX_INT)
    max_tokens: int | None = Field(None, ge=0, le=MAX_INT)
    archive: bool = False
    roles: list[str] | None = None
    since: datetime | None = None
    until: datetime | None = None

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


class FlushConfig(_Strict):
    """``flush_config``."""

    strategy: Literal["simple_fifo", "fifo", "lru", "token_aware_lru", "hybrid_summary"] | None = None
    dry_run: bool = False
    force: bool = False
    threshold: float | None = Field(None, ge=0, le=1)
    max_keys: int | None = Field(None, ge=0, le=10000)


class HealthConfig(_Strict):
    """``health_config`` (optional)."""

    include_stats: bool = True
    check_connectivity: bool = True


class ClearConfig(_Strict):
    """``clear_config``: ``confirm`` must be true; ``backup`` keeps a restorable copy."""

    confirm: bool = False
    backup: bool = False


class StatsConfig(_Strict):
    """``stats_config`` (optional)."""

    include_content: bool = False
    group_by: Literal["role"] | None = None


class MemoryTask(_Strict):
    """A ``type: memory`` task, or the body of an execute request.

    ``key_template`` may be omitted when the memory resource has a default ``key``.
    """

    id: str | None = None
    type: Literal["memory"] = "memory"
    operation: str
    memory_ref: str = Field(min_length=1)
    key_template: str | None = None
    payload: Any = None
    read_config: ReadConfig | None = None
    flush_config: FlushConfig | None = None
    health_config: HealthConfig | None = None
    clear_config: ClearConfig | None = None
    stats_config: StatsConfig | None = None
    output: str | None = None
    on_error: Literal["fail", "continue"] = "fail"
    description: str | None = None
    batch_size: int | None = Field(None, ge=0, le=10000)
    max_keys: int | None = Field(None, ge=0, le=50000)

    @field_validator("operation")
    @classmethod
    def _known_operation(cls, value: str) -> str:
        if value not in OPERATIONS:
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
        if self.operation in ("write", "append") and self.payload is None:
            raise FieldError(f"{self.operation} operation requires payload", "payload")
        return self

    def options(self) -> dict[str, Any]:
        """Keyword arguments for the operation's method, from its config block."""
        block: BaseModel | None = {
            "read": self.read_config,
            "flush": self.flush_config,
            "health": self.health_config,
            "clear": self.clear_config,
            "stats": self.stats_config,
        }.get(self.operation)
        if block is None:
            return {}
        values = block.model_dump(exclude_none=True)
        if self.operation == "health":
            values.pop("check_connectivity", None)
        elif self.operation == "stats":
            values.pop("group_by", None)
        elif self.operation == "flush":
            values.pop("max_keys", None)
        elif self.operation == "read" and not values.get("archive"):
            values.pop("archive", None)
        return values
