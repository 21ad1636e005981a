"""The output map of each memory operation, as a ``TypedDict``: what ``MemoryInstance.read()`` (and every other
operation, on both transports) returns, so ``mypy --strict`` checks the keys a caller uses.

At run time an output is an :class:`~compozy_nb.results.OperationResult` (a ``dict`` that renders as a table in a
notebook and has ``to_pandas()``); these types describe its keys. A ``TypedDict`` cannot declare methods, so typed
code gets the DataFrame from the instance (``mem.to_pandas(last=20)``) rather than from the output map.
Compozy's fields are all present with its names (docs/compatibility.md, "Outputs"); ``NotRequired`` keys appear
only in some cases, said on each.
``tests/engine/test_registry.py`` validates every output of every operation, on both transports, against its type
(pydantic, unknown keys refused), so the types cannot drift from what the engine returns.

Example:
    >>> from compozy_nb.memory.outputs import ReadOutput
    >>> sorted(ReadOutput.__required_keys__)
    ['count', 'has_more', 'key', 'messages', 'offset', 'operation', 'total_count']
"""

from typing import Any

from typing_extensions import NotRequired, TypedDict

__all__ = [
    "AppendOutput",
    "ClearOutput",
    "ContentPreview",
    "DeleteOutput",
    "FlushOutput",
    "HealthOutput",
    "ReadOutput",
    "StatsOutput",
    "SummaryFlush",
    "WriteOutput",
]


class _Output(TypedDict):
    operation: str
    key: str
    """The memory key (Redis key without the namespace prefix)."""


class ReadOutput(_Output):
    """``read``: the messages, oldest first (the archive: newest first)."""

    messages: list[dict[str, Any]]
    """Each as written (``role``, ``content``, ``tool_calls`` …) plus ``tokens``, ``id``, ``ts``."""
    count: int
    total_count: int
    """Messages stored (with a filter: matching)."""
    has_more: bool
    offset: int
    """Position of the first returned message."""
    archive: NotRequired[bool]
    """Present (true) when the archive was read."""
    token_count: NotRequired[int]
    """A budget read (``max_tokens``): the tokens of the returned messages."""
    max_tokens: NotRequired[int]
    """A budget read: the budget."""
    warnings: NotRequired[list[str]]
    """A read whose access record Redis refused (out of memory, read-only): the read itself succeeded."""


class _Stored(_Output):
    success: bool
    total_count: int
    """Messages stored after the write."""
    token_count: int
    """Tokens stored after the write."""
    evicted: int
    """Oldest non-system messages moved to the archive to stay within the limits."""
    skipped: int
    """Payload messages left out (empty after redaction)."""
    duplicates: int
    """Payload messages whose id was already stored (an idempotent retry)."""


class WriteOutput(_Stored):
    """``write``: the whole content replaced."""

    count: int
    """Messages written."""


class SummaryFlush(TypedDict):
    """The summary flush an append to a ``hybrid_summary`` memory triggered."""

    flushed_count: int
    summary_generated: bool
    error: NotRequired[dict[str, Any]]
    """The flush failed (the append's messages are stored): its ``code`` and ``message``."""


class AppendOutput(_Stored):
    """``append``: messages added at the end."""

    appended: int
    ids: list[str]
    """The id of each payload message (given or generated), in order."""
    summary_flush: NotRequired[SummaryFlush]
    """The append brought a ``hybrid_summary`` memory to its threshold."""


class DeleteOutput(_Output):
    """``delete``: the instance and its auxiliary keys removed."""

    success: bool
    deleted: bool
    messages_deleted: int


class FlushOutput(_Output):
    """``flush``: by the resource's strategy, when over the threshold (or forced)."""

    success: bool
    flushed_count: int
    message_count: int
    """Messages remaining."""
    token_count: int
    """Tokens remaining."""
    summary_generated: bool
    dry_run: bool
    would_flush: bool
    actual_strategy: str
    threshold: float
    usage: float
    """Usage ratio (0..1) before the flush."""
    would_remove: NotRequired[int]
    """A dry run, or a flush with nothing to do: what a flush would remove."""
    would_remain: NotRequired[int]


class HealthOutput(_Output):
    """``health``: Redis reachable, counters, warnings (never raises for an unreachable Redis)."""

    healthy: bool
    message_count: int | None
    """``None`` when unhealthy."""
    token_count: int | None
    actual_strategy: str
    last_flush: str | None
    redis: dict[str, Any] | None
    """``ping_ms``, ``version``, ``maxmemory_policy``; ``None`` when unhealthy."""
    warnings: list[str]
    error: NotRequired[str]
    """Unhealthy: why."""
    usage: NotRequired[float]
    """With ``include_stats``."""
    current_tokens: NotRequired[int]
    """With ``include_stats``: Compozy's name of ``token_count``."""


class ClearOutput(_Output):
    """``clear``: every message removed (optionally kept in a restorable backup)."""

    success: bool
    messages_cleared: int
    backup_created: bool
    backup_key: str | None


class ContentPreview(TypedDict):
    """``stats(include_content=True)``: the first and last messages, shortened."""

    first: list[dict[str, Any]]
    last: list[dict[str, Any]]


class StatsOutput(_Output):
    """``stats``: counters from the metadata hash (O(1) whatever the history size)."""

    message_count: int
    token_count: int
    max_tokens: int | None
    max_messages: int | None
    token_utilization: float | None
    message_utilization: float | None
    role_distribution: dict[str, int]
    ttl_seconds: float | None
    last_flush: str | None
    flush_count: int
    evicted_count: int
    avg_tokens_per_message: float
    actual_strategy: str
    content_preview: NotRequired[ContentPreview]
