"""The operation log of a memory: one event per change, written by the Lua script that makes the change.

Each script that changes a memory (append incl. eviction on write, write, restore, flush incl. summaries, clear,
adoption of a Compozy list) ends with ``log_event(...)`` (``scripts/_common.lua``), which XADDs one entry to
a capped stream next to the memory (``…:<key>:log``, same hash tag on a cluster, same TTL). The last script
argument is a short tab-separated string made here (:func:`log_argument`): whether the log is on, its cap, the
operation, its source and what only Python knows (the strategy, the redacted spans). Compozy never reads the
stream; ``clear`` keeps it and logs that it ran; ``delete`` removes it with the rest of the memory.

Read side: :func:`read_log` (``mem.log()``), :func:`why` (``mem.why(message_id)``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from compozy_nb.errors import InvalidPayloadError
from compozy_nb.memory.steps import Batch, Call, Command, Steps, Work
from compozy_nb.results import OperationResult, html_table

if TYPE_CHECKING:
    from compozy_nb.memory.instance import MemoryInstance
    from compozy_nb.privacy import PrivacyPolicy

SOURCES = ("python", "magic", "cli", "http", "workflow")
ID_FIELDS = ("ids", "evicted_ids", "flushed_ids")
INT_FIELDS = ("appended", "evicted", "flushed", "duplicates", "redacted", "messages", "tokens", "cleared", "count")
EVENT_COLUMNS = (
    "ts",
    "operation",
    "source",
    "appended",
    "evicted",
    "flushed",
    "redacted",
    "messages",
    "tokens",
    "strategy",
    "summary_id",
    "backup_key",
)
F = TypeVar("F", bound=Callable[..., Any])
_SPAN = "\ue000"  # a private-use character: counts the spans a policy replaces

_source: ContextVar[str] = ContextVar("compozy_nb_log_source", default="python")
_redacted: ContextVar[int] = ContextVar("compozy_nb_log_redacted", default=0)


@contextmanager
def log_source(source: str) -> Iterator[None]:
    """Attribute the operations run inside the block to ``source`` (``magic``, ``cli``, ``http``, ``workflow``)."""
    if source not in SOURCES:
        raise ValueError(f"unknown log source {source!r}, must be one of: {', '.join(SOURCES)}")
    token = _source.set(source)
    try:
        yield
    finally:
        _source.reset(token)


def attributed(source: str) -> Callable[[F], F]:
    """Decorator: the operations a shell's entry point runs are attributed to ``source``."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with log_source(source):
                return function(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


class LogSourceMiddleware:
    """Pure ASGI middleware: the memory operations of every request are attributed to ``source``."""

    def __init__(self, app: Any, source: str = "http") -> None:
        self.app = app
        self.source = source

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with log_source(self.source):
            await self.app(scope, receive, send)


def current_source() -> str:
    """Where the running operation comes from (``python`` unless a shell said otherwise)."""
    return _source.get()


def count_redactions(policy: PrivacyPolicy, messages: Sequence[Mapping[str, Any]]) -> int:
    """How many spans ``policy`` replaces in the contents of the messages it stores (counts only)."""
    if not policy.redact_patterns:
        return 0
    from compozy_nb.privacy import PrivacyPolicy

    counting = PrivacyPolicy(policy.redact_patterns, redaction=_SPAN, timeout_s=policy.timeout_s)
    total = 0
    for message in messages:
        if policy.persistable(str(message.get("role", ""))):
            text = str(message.get("content", ""))
            total += counting.redact(text).count(_SPAN) - text.count(_SPAN)
    return total


def note_redactions(count: int) -> None:
    """Remember the spans the payload being encoded had redacted, for the event of the script that stores it."""
    _redacted.set(count)


def log_argument(enabled: bool, max_events: int, ttl_ms: int, operation: str, strategy: str | None = None) -> str:
    """The string the scripts' ``log_event`` reads from their last argument (parsed in scripts/_common.lua)."""
    redacted = _redacted.get() if operation in ("append", "write") else 0  # set by the encoding just before
    return _log_text(enabled, max_events, ttl_ms, operation, _source.get(), strategy, redacted)


@functools.lru_cache(maxsize=512)
def _log_text(
    enabled: bool, max_events: int, ttl_ms: int, operation: str, source: str, strategy: str | None, redacted: int
) -> str:
    # a tab-separated string, cheap to parse in every write script (scripts/_common.lua); names are identifiers
    if not enabled:
        return "_log:0"
    return "\t".join(("_log:1", str(max_events), str(ttl_ms), operation, source, strategy or "", str(redacted)))


def read_entry(instance: MemoryInstance, count: int) -> Batch:
    """The step that logs a read (``log.reads: true``). Reads change nothing, so this entry is added after the
    read, not in its script."""
    fields = {"op": "read", "source": _source.get(), "count": count}
    calls = [Call("xadd", (instance.layout.log, fields, "*", instance.resource.log.max_events))]
    if instance.runtime.ttl_ms > 0:
        calls.append(Call("pexpire", (instance.layout.log, instance.runtime.ttl_ms)))
    return Batch("read", tuple(calls))


# ---------------------------------------------------------------------------------------------- read side
def parse_entry(entry_id: Any, fields: Mapping[Any, Any]) -> dict[str, Any]:
    """One stream entry as an event: ``ts`` (UTC datetime from the entry id), ``operation`` and its fields."""
    eid = _text(entry_id)
    millis = int(eid.split("-", 1)[0])
    event: dict[str, Any] = {"id": eid, "ts": datetime.fromtimestamp(millis / 1000, tz=UTC)}
    for raw_name, raw_value in fields.items():
        name, value = _text(raw_name), _text(raw_value)
        if name == "op":
            event["operation"] = value
        elif name in ID_FIELDS:
            event[name] = _ids(value)
        elif name in INT_FIELDS:
            event[name] = int(value)
        else:
            event[name] = value
    return event


def _ids(value: str) -> list[str]:
    try:
        decoded = json.loads(value)
    except ValueError:
        return []
    return [str(v) for v in decoded] if isinstance(decoded, list) else []


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _stream_bound(since: Any) -> str:
    """An XRANGE start from ``since``: None, a datetime, milliseconds since the epoch, or an entry id."""
    if since is None:
        return "-"
    if isinstance(since, datetime):
        moment = since if since.tzinfo else since.replace(tzinfo=UTC)
        return str(int(moment.timestamp() * 1000))
    if isinstance(since, int) and not isinstance(since, bool) and since >= 0:
        return str(since)
    if isinstance(since, str) and since.replace("-", "", 1).isdigit():
        return since
    raise InvalidPayloadError(
        f"since must be a datetime, milliseconds since the epoch or a log entry id, got {since!r}",
        operation="log",
        field="since",
    )


class LogResult(list[dict[str, Any]]):
    """The events of a memory's operation log, oldest first: a list of dicts with a timeline DataFrame and HTML."""

    def __init__(self, events: Sequence[dict[str, Any]], key: str) -> None:
        super().__init__(events)
        self.key = key

    def to_pandas(self) -> Any:
        """One row per event: ``ts`` (tz-aware UTC), ``operation``, ``source``, counts, totals after the change,
        ``strategy``, ``summary_id``, ``backup_key`` and the id lists."""
        import pandas as pd

        columns = [*EVENT_COLUMNS, *ID_FIELDS, "id"]
        frame = pd.DataFrame(list(self), columns=columns)
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
        counts = [c for c in frame.columns if c in INT_FIELDS]
        return frame.astype(dict.fromkeys(counts, "Int64"))

    def _repr_html_(self) -> str:
        rows = [{**e, "ts": e["ts"].isoformat(timespec="milliseconds")} for e in self]
        shown = [c for c in EVENT_COLUMNS if any(c in r for r in rows)]
        return html_table(rows, shown, caption=f"operation log · {self.key} · {len(self)} events")


def read_log(instance: MemoryInstance, since: Any = None, limit: int | None = None) -> LogResult:
    """The events of ``instance`` from ``since`` on, oldest first, at most ``limit`` of them."""
    return instance._drive(log_steps(instance, since, limit))


PARSE_INLINE = 64
"""Events parsed where they are read; a longer log is parsed as ``Work`` (a worker thread on the async path)."""


def log_steps(instance: MemoryInstance, since: Any = None, limit: int | None = None) -> Steps[LogResult]:
    """:func:`read_log` as steps (memory/steps.py), for either transport: one XRANGE, then the parse."""
    start = _stream_bound(since)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidPayloadError(
            f"limit must be a non-negative integer, got {limit!r}", operation="log", field="limit"
        )
    if limit == 0:
        return LogResult([], instance.key)
    entries = yield Command("log", Call("xrange", (instance.layout.log, start, "+", limit)))

    def parse() -> LogResult:
        return LogResult([parse_entry(eid, fields) for eid, fields in entries], instance.key)

    if len(entries) > PARSE_INLINE:
        result: LogResult = yield Work(parse)
        return result
    return parse()


# ---------------------------------------------------------------------------------------------- why
def why(instance: MemoryInstance, message_id: str) -> OperationResult:
    """Where message ``message_id`` went, from the log: ``kept``, ``evicted`` (by the limits on write),
    ``flushed`` (by a strategy), ``summarized`` (folded into a summary), ``cleared`` (maybe backed up),
    ``replaced`` (by a write or restore), or ``unknown`` (never logged: before the log was on, expired, or the
    memory was deleted, which removes its log too).
    """
    fate: dict[str, Any] = {"fate": "unknown", "at": None}
    added_at = None
    for event in read_log(instance):
        operation = event.get("operation")
        if message_id in event.get("ids", ()) or event.get("summary_id") == message_id:
            if operation in ("write", "restore", "adopt") or added_at is None:
                added_at = event["ts"]
            fate = {"fate": "kept", "at": None}
            continue
        if added_at is None:
            continue
        change = _change(event, message_id)
        if change is not None and fate["fate"] == "kept":
            fate = change
    present = _stored(instance, message_id)
    if present and fate["fate"] != "kept":
        fate = {"fate": "kept", "at": None}
    return OperationResult(
        {
            "operation": "why",
            "key": instance.key,
            "message_id": message_id,
            "added_at": added_at,
            **fate,
            "stored": present,
        }
    )


def _change(event: Mapping[str, Any], message_id: str) -> dict[str, Any] | None:
    """What ``event`` did to a stored message, or None when it left it alone."""
    operation, at = event.get("operation"), event["ts"]
    if message_id in event.get("evicted_ids", ()):
        return {"fate": "evicted", "at": at, "by": "limit", "during": operation}
    if message_id in event.get("flushed_ids", ()):
        if event.get("summary_id"):
            return {
                "fate": "summarized",
                "at": at,
                "summary_id": event["summary_id"],
                "strategy": event.get("strategy"),
            }
        return {"fate": "flushed", "at": at, "strategy": event.get("strategy")}
    if operation == "clear":
        return {"fate": "cleared", "at": at, "backup_key": event.get("backup_key") or None}
    if operation in ("write", "restore"):
        return {"fate": "replaced", "at": at, "during": operation}
    return None


def _stored(instance: MemoryInstance, message_id: str) -> bool:
    from compozy_nb.memory.store import redis_errors

    with redis_errors("why", instance.key):
        return bool(instance.backend.client.sismember(instance.layout.ids, message_id))
