"""The memory resource: one YAML document with ``resource: memory``."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from compozy_nb.config._yaml import FieldError
from compozy_nb.config.durations import parse_duration
from compozy_nb.limits import MAX_EXACT_INT

MemoryType = Literal["token_based", "message_count_based", "buffer"]
FlushType = Literal["simple_fifo", "lru", "token_aware_lru", "hybrid_summary"]
FLUSH_TYPES: tuple[str, ...] = get_args(FlushType)
FlushStrategy = Literal["simple_fifo", "fifo", "lru", "token_aware_lru", "hybrid_summary"]
"""A flush's ``strategy``: a resource's flush type, or ``fifo`` (Compozy's name for ``simple_fifo``)."""
STRATEGIES: tuple[str, ...] = get_args(FlushStrategy)
PROVIDERS = ("openai", "python", "scripted")
"""The LLM providers (of basic tasks and of summarizers)."""
DEFAULT_THRESHOLD = 0.8
DEFAULT_SUMMARIZE_OLDEST = 0.3
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
DEFAULT_ARCHIVE_MAX = 1000
MAX_COUNT = MAX_EXACT_INT  # counts and limits stay exact integers in Lua, Redis replies and JSON


MODEL_CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-3.5-turbo": 16385,
    "gpt-4": 8192,
    "gpt-4-32k": 32768,
    "gpt-4-turbo": 128000,
    "gpt-4o": 128000,
    "gpt-4o-mini": 128000,
    "gpt-4.1": 1047576,
    "o1": 200000,
    "o3": 200000,
    "o4-mini": 200000,
}


def context_window(model: str | None) -> int | None:
    """The context window of ``model`` (longest known prefix wins), or None when unknown."""
    if not model:
        return None
    matches = [name for name in MODEL_CONTEXT_WINDOWS if model == name or model.startswith(name + "-")]
    return MODEL_CONTEXT_WINDOWS[max(matches, key=len)] if matches else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


class SummarizerConfig(_Strict):
    """An LLM (or Python) summarizer for ``hybrid_summary``; without one the summary is rule-based."""

    provider: str
    model: str | None = None

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in PROVIDERS:
            raise ValueError(f"unknown summarizer provider '{value}', must be one of: {', '.join(PROVIDERS)}")
        return value


class FlushingConfig(_Strict):
    """``flushing``: which strategy ``flush`` uses and when it triggers."""

    type: FlushType = "simple_fifo"
    summarize_threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1)
    summary_tokens: int | None = Field(None, gt=0, le=MAX_COUNT)
    summarize_oldest_percent: float = Field(DEFAULT_SUMMARIZE_OLDEST, gt=0, le=1)
    summarizer: SummarizerConfig | None = None

    @model_validator(mode="after")
    def _hybrid_needs_summary_tokens(self) -> FlushingConfig:
        if self.type == "hybrid_summary" and self.summary_tokens is None:
            raise ValueError("hybrid_summary needs flushing.summary_tokens (the target summary length)")
        return self


class PersistenceConfig(_Strict):
    """``persistence``: where and how long. The store is Redis (or the embedded backend) either way."""

    type: Literal["redis", "in_memory"] = "redis"
    ttl: str | int | float = "0"
    circuit_breaker: dict[str, Any] | None = Field(
        None, description="Accepted for Compozy compatibility; Compozy has no consumer for it and neither do we."
    )

    @field_validator("ttl", mode="before")
    @classmethod
    def _check_ttl(cls, value: str | int | float) -> str | int | float:
        parse_duration(value)
        return value

    @property
    def ttl_seconds(self) -> float:
        """The TTL in seconds; 0 means the keys never expire."""
        return parse_duration(self.ttl)


class TokenProviderConfig(_Strict):
    """``token_provider``: which model's tokenizer counts tokens (tiktoken, offline)."""

    provider: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    api_key: str | None = None
    endpoint: str | None = None
    settings: dict[str, Any] | None = None
    fallback: str | None = None


class PrivacyPolicyConfig(_Strict):
    """``privacy_policy``: applied before any byte reaches Redis."""

    redact_patterns: list[str] = Field(default_factory=list)
    non_persistable_message_types: list[str] = Field(default_factory=list)
    default_redaction_string: str = "[REDACTED]"

    @field_validator("redact_patterns")
    @classmethod
    def _safe_patterns(cls, patterns: list[str]) -> list[str]:
        from compozy_nb.privacy import check_pattern

        for index, pattern in enumerate(patterns):
            try:
                check_pattern(pattern)
            except ValueError as exc:
                raise FieldError(f"redact_patterns[{index}]: {getattr(exc, 'message', exc)}", index) from None
        return patterns


class LockingConfig(_Strict):
    """``locking``: accepted for Compozy compatibility. Our writes are single Lua scripts and need no lock."""

    append_ttl: str = "30s"
    clear_ttl: str = "10s"
    flush_ttl: str = "5m"

    @field_validator("append_ttl", "clear_ttl", "flush_ttl", mode="before")
    @classmethod
    def _check(cls, value: str) -> str:
        parse_duration(value)
        return value


class TokenAllocation(_Strict):
    """``token_allocation``: budget shares; validated to sum to 1.0."""

    short_term: float = Field(0.0, ge=0, le=1)
    long_term: float = Field(0.0, ge=0, le=1)
    system: float = Field(0.0, ge=0, le=1)
    user_defined: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sums_to_one(self) -> TokenAllocation:
        total = self.short_term + self.long_term + self.system + sum(self.user_defined.values())
        if abs(total - 1.0) > 0.001:
            raise ValueError(f"token allocation sum ({total:.3f}) must be approximately 1.0")
        return self


class LogConfig(_Strict):
    """``log``: the operation log, one event per change in a capped stream next to the memory (memory/log.py)."""

    enabled: bool = True
    max_events: int = Field(10000, ge=1, le=MAX_COUNT)
    reads: bool = False


class MemoryResource(_Strict):
    """A memory resource, as written in ``memory/*.yaml``.

    ``key`` (alias ``default_key_template``) is the default key template used when a task gives none.
    """

    resource: Literal["memory"] = "memory"
    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_\-.]+$")
    description: str | None = None
    version: str | None = None
    key: str | None = Field(None, validation_alias=AliasChoices("key", "default_key_template"))
    type: MemoryType = "token_based"
    max_tokens: int | None = Field(None, gt=0, le=MAX_COUNT)
    max_messages: int | None = Field(None, gt=0, le=MAX_COUNT)
    max_context_ratio: float | None = Field(None, gt=0, le=1)
    token_allocation: TokenAllocation | None = None
    flushing: FlushingConfig = Field(default_factory=FlushingConfig)
    persistence: PersistenceConfig = Field(default_factory=PersistenceConfig)
    token_provider: TokenProviderConfig | None = None
    privacy_policy: PrivacyPolicyConfig | None = None
    locking: LockingConfig | None = None
    privacy_scope: Literal["global", "user", "session"] = Field(
        "global", description="Accepted for Compozy compatibility (validated; isolation comes from the key)."
    )
    expiration: str | int | float | None = Field(
        None, description="Accepted for Compozy compatibility (validated); the TTL is persistence.ttl."
    )
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, gt=0, le=MAX_COUNT)
    archive_max_messages: int = Field(DEFAULT_ARCHIVE_MAX, ge=0, le=MAX_COUNT)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="before")
    @classmethod
    def _one_key_field(cls, data: Any) -> Any:
        if isinstance(data, dict) and "key" in data and "default_key_template" in data:
            raise FieldError(
                "give the default key template once: 'key' or 'default_key_template', not both",
                "default_key_template",
            )
        return data

    @field_validator("expiration", mode="before")
    @classmethod
    def _check_expiration(cls, value: str | int | float | None) -> str | int | float | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("key")
    @classmethod
    def _key_template_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            from compozy_nb.templating import validate

            validate(value)
        return value

    @model_validator(mode="after")
    def _limits(self) -> MemoryResource:
        if self.type == "token_based" and not (self.max_tokens or self.max_messages or self.max_context_ratio):
            raise FieldError(
                "token_based memory must have at least one limit configured "
                "(max_tokens, max_context_ratio, or max_messages)",
                "type",
            )
        if self.type == "message_count_based" and not self.max_messages:
            raise FieldError("message_count_based memory needs max_messages", "type")
        if self.max_context_ratio is not None and context_window(self.model_name) is None:
            known = ", ".join(sorted(MODEL_CONTEXT_WINDOWS))
            raise FieldError(
                f"max_context_ratio needs token_provider.model set to a model with a known context window ({known})",
                "max_context_ratio",
            )
        return self

    @property
    def token_limit(self) -> int | None:
        """The enforced token limit: the smaller of ``max_tokens`` and ratio x the model's context window."""
        limits = [self.max_tokens] if self.max_tokens else []
        window = context_window(self.model_name)
        if self.max_context_ratio is not None and window is not None:
            limits.append(max(1, int(window * self.max_context_ratio)))
        return min(limits) if limits else None

    @property
    def model_name(self) -> str | None:
        """The model whose tokenizer counts tokens."""
        return self.token_provider.model if self.token_provider else None

    @property
    def uses_access_tracking(self) -> bool:
        """Whether reads must record access times (LRU strategies)."""
        return self.flushing.type in ("lru", "token_aware_lru")

    def to_yaml_dict(self) -> dict[str, Any]:
        """The resource as it would be written in YAML (defaults left out)."""
        return self.model_dump(mode="json", exclude_defaults=True, exclude={"resource"}) | {"resource": "memory"}
