"""One memory instance (a resource + a rendered key) and its 8 operations.

Every operation that changes data is a single Lua script: atomic, one round trip, no lock. Each returns
the output map documented in docs/features/memory-tasks.md; every map carries ``operation`` and ``key``.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, overload

from compozy_nb.backends import Backend
from compozy_nb.config.memory import STRATEGIES, MemoryResource
from compozy_nb.errors import (
    BackendError,
    CompozyNbError,
    ConfigError,
    ConfirmRequiredError,
    ErrorCode,
    InvalidKeyError,
    InvalidPayloadError,
    MemoryOperationError,
)
from compozy_nb.limits import MAX_EXACT_INT
from compozy_nb.memory import flush as flushing
from compozy_nb.memory import frames, operations, transcript
from compozy_nb.memory import log as oplog
from compozy_nb.memory.keys import KeyLayout, compozy_key_warning, validate_key
from compozy_nb.memory.messages import (
    Encoded,
    canonical,
    count_decoded,
    decode,
    encode,
    new_id,
    new_op_id,
    normalize_payload,
    stored_text,
    utc_now_iso,
)
from compozy_nb.memory.outputs import (
    AppendOutput,
    ClearOutput,
    DeleteOutput,
    FlushOutput,
    HealthOutput,
    ReadOutput,
    StatsOutput,
    WriteOutput,
)
from compozy_nb.memory.steps import Batch, Call, Command, Script, Step, Steps, Work
from compozy_nb.memory.store import READ_ONLY_SCRIPTS, SCRIPT_KEYS, ForeignDataError, Scripts, redis_errors
from compozy_nb.privacy import PrivacyPolicy
from compozy_nb.results import OperationResult, display_limits
from compozy_nb.tokens import TokenCounter, get_counter

MAX_INT = MAX_EXACT_INT  # the largest count Redis and JSON clients agree on
# the metadata fields of the fingerprint our scripts check before trusting their counters (_common.lua)
FINGERPRINT_FIELDS = ("token_count", "message_count", "nb_count", "nb_tokens", "nb_last")
_FINGERPRINT_KEYS = tuple(f.encode() for f in FINGERPRINT_FIELDS)  # HGETALL's keys are bytes
OPERATIONS = operations.NAMES
Output = dict[str, Any]
T = TypeVar("T")


class MemoryRuntime:
    """What a resource needs at run time, built once per resource: tokenizer, privacy policy, summarizer."""

    def __init__(
        self,
        resource: MemoryResource,
        summarizer: flushing.Summarizer | None = None,
    ) -> None:
        self.resource = resource
        self.counter: TokenCounter = get_counter(resource.model_name)
        policy = resource.privacy_policy
        self.privacy = PrivacyPolicy(
            redact_patterns=policy.redact_patterns if policy else (),
            non_persistable_roles=policy.non_persistable_message_types if policy else (),
            redaction=policy.default_redaction_string if policy else "[REDACTED]",
        )
        self.summarizer: flushing.Summarizer = summarizer or flushing.RuleBasedSummarizer(self.counter)
        self.ttl_ms = math.ceil(resource.persistence.ttl_seconds * 1000)
        self.token_limit = resource.token_limit
        self.track = "1" if resource.uses_access_tracking else "0"
        fixed = (self.ttl_ms, resource.max_messages or 0, self.token_limit or 0, resource.archive_max_messages)
        self.append_config = {  # append.lua's config argument by mode, encoded once (redis-py would on every call)
            mode: "\t".join((mode, *(str(v) for v in fixed), self.track)).encode() for mode in ("append", "replace")
        }
        self.display_limits = display_limits(resource)  # what every output map carries for the notebook views


_connections: weakref.WeakKeyDictionary[Backend, Scripts] = weakref.WeakKeyDictionary()


def _connection(backend: Backend) -> Scripts:
    """The registered scripts of a backend, made once and dropped with the backend."""
    scripts = _connections.get(backend)
    if scripts is None:
        scripts = _connections[backend] = Scripts(backend.client)
    return scripts


class MemoryInstance:
    """The memory stored under one key, with the 8 operations of Compozy's memory tasks.

    Payloads given to these methods are data, stored verbatim (after privacy redaction).

    Args:
        runtime: The resource and its tokenizer/privacy/summarizer.
        key: The rendered memory key (validated here).
        backend: Where the data lives.
        project: The project name (the ``{project}`` part of the Redis keys).
    """

    def __init__(self, runtime: MemoryRuntime, key: str, backend: Backend, project: str = "default") -> None:
        self.runtime = runtime
        self.resource = runtime.resource
        self.key = validate_key(key)
        self.backend = backend
        self.project = project
        self.layout = KeyLayout(project, self.key, backend.cluster)
        self._keys = tuple(k.encode() for k in self.layout.all_keys)  # every script's KEYS, encoded once
        self._script_keys = {name: self._keys[:n] for name, n in SCRIPT_KEYS.items()}
        self._scripts = _connection(backend)

    def __repr__(self) -> str:
        return f"MemoryInstance(ref={self.resource.id!r}, key={self.key!r}, backend={self.backend.kind!r})"

    def to_pandas(self, **read_options: Any) -> Any:
        """The messages as a DataFrame (``read_options`` as for :meth:`read`)."""
        return self.read(**read_options).to_pandas()  # type: ignore[attr-defined]

    def _repr_html_(self) -> str:
        """The newest messages as a chat transcript (notebooks; ``display_limit`` of them)."""
        from compozy_nb.notebook.views import DISPLAY

        return str(self.read(last=DISPLAY["limit"])._repr_html_())  # type: ignore[attr-defined]

    def plot(self, ax: Any = None) -> Any:
        """Tokens per message and cumulative tokens against the token limit (matplotlib), archived
        (flushed or evicted) messages shaded, summaries marked. Returns the matplotlib Axes."""
        from compozy_nb.notebook.plot import plot_memory

        return plot_memory(self, ax=ax)

    def log(self, since: Any = None, limit: int | None = None) -> oplog.LogResult:
        """The operation log, oldest first: one event per change (``to_pandas()`` gives the timeline).

        Args:
            since: Only events from then on: a datetime, milliseconds since the epoch, or an event ``id``.
            limit: At most this many events.
        """
        return oplog.read_log(self, since, limit)

    def why(self, message_id: str) -> Output:
        """Where a message went, from the log: kept, evicted (when, by the limit), flushed (strategy), folded
        into a summary (its id), cleared (backup key), replaced by a write, or unknown."""
        return oplog.why(self, message_id)

    def plot_log(self, ax: Any = None) -> Any:
        """Tokens and messages over time from the log, evictions/flushes/summaries marked (matplotlib)."""
        from compozy_nb.notebook.log_plot import plot_log

        return plot_log(self.log(), ax=ax)

    # ------------------------------------------------------------------ helpers
    def _out(self, operation: str, **values: Any) -> Output:
        return OperationResult({"operation": operation, "key": self.key, **values}, limits=self.runtime.display_limits)

    def _run(self, script: str, args: Sequence[Any], operation: str, strategy: str | None = None) -> Any:
        keys, args = self._script_input(script, args, operation, strategy)
        return self._scripts.run(script, keys, args, operation=operation, key=self.key)

    def _script_input(
        self, script: str, args: Sequence[Any], operation: str, strategy: str | None = None
    ) -> tuple[Sequence[bytes], Sequence[Any]]:
        """The KEYS and ARGV a script is sent, on either transport: the keys it uses (store.SCRIPT_KEYS), and a
        write script's arguments followed by its operation log argument."""
        keys = self._script_keys.get(script, self._keys)
        return keys, (args if script in READ_ONLY_SCRIPTS else [*args, self._log_arg(operation, strategy)])

    def _log_arg(self, operation: str, strategy: str | None = None) -> str:
        """The last argument of a write script: its operation log entry's settings (memory/log.py)."""
        settings = self.resource.log
        return oplog.log_argument(settings.enabled, settings.max_events, self.runtime.ttl_ms, operation, strategy)

    def _encode(self, payload: Any, operation: str) -> tuple[list[Encoded], int]:
        messages = normalize_payload(payload, operation=operation)
        if self.resource.log.enabled:
            oplog.note_redactions(oplog.count_redactions(self.runtime.privacy, messages))
        messages, skipped = self.runtime.privacy.apply(messages)
        now = utc_now_iso()
        encoded = [
            encode(
                m,
                self.runtime.counter,
                now=now,
                max_bytes=self.resource.max_message_bytes,
                max_tokens=self.runtime.token_limit,
                operation=operation,
                index=i,
            )
            for i, m in enumerate(messages)
        ]
        return encoded, skipped

    @property
    def _track(self) -> str:
        return self.runtime.track

    def _store_args(self, mode: str, encoded: Sequence[Encoded]) -> list[Any]:
        """append.lua's arguments. The operation id and every message id are fixed here, before the first
        send, so a re-send of the same arguments (a retry after a lost reply) writes nothing twice."""
        args: list[Any] = [new_op_id().encode(), self.runtime.append_config[mode], b"%d" % len(encoded)]
        for item in encoded:  # as bytes: redis-py's encoder costs more per argument than str.encode
            args.extend((item.raw, b"%d" % item.tokens, item.id.encode(), item.role.encode()))
        return args

    def _store(self, mode: str, encoded: Sequence[Encoded], operation: str) -> list[int]:
        args = self._store_args(mode, encoded)
        try:
            result = self._run("append", args, operation)
        except ForeignDataError:
            self.adopt()
            result = self._run("append", args, operation)
        return [int(v) for v in result]

    def adopt(self) -> bool:
        """Take over a list written or extended by another tool (Compozy): give each message its token count
        and an id, and rebuild the counters. Roles, contents and other fields are unchanged, so Compozy still
        reads it; an element that is not JSON is kept as it is (0 tokens). Returns False when there was
        nothing to adopt."""
        return self._drive(self._adopt_steps())

    def _adopt_steps(self) -> Steps[bool]:
        for _ in range(5):
            meta, raws = yield Batch(
                "adopt",
                (Call("hmget", (self.layout.metadata, *FINGERPRINT_FIELDS)), Call("lrange", (self.layout.base, 0, -1))),
            )
            if not raws or is_ours(meta, len(raws), raws[-1]):
                return False
            args = yield Work(functools.partial(self._adopt_args, raws))  # tokenizes every message
            if int((yield Script("adopt", tuple(args), "adopt"))):
                return True
        raise MemoryOperationError("the memory kept changing while being adopted; try again", key=self.key)

    def _adopt_args(self, raws: Sequence[bytes]) -> list[Any]:
        args: list[Any] = [len(raws)]
        for position, raw in enumerate(raws):
            args.extend((raw, *self._canonical(raw, position)))
        return args

    def _adopt_if_writable_steps(self) -> Steps[bool]:
        """:meth:`adopt` for reads (stats, health): False, instead of an error, where Redis refuses writes."""
        try:
            return (yield from self._adopt_steps())
        except BackendError as exc:
            if cannot_write(exc):
                return False
            raise

    def _drive(self, steps: Steps[T]) -> T:
        """Run an operation's steps (memory/steps.py) on the synchronous client."""
        resume: Callable[[Any], Step] = steps.send  # Runner's protocol, inlined: this path is every operation's
        value: Any = None
        while True:
            try:
                step = resume(value)
            except StopIteration as finished:
                return cast(T, finished.value)
            try:
                value, resume = self._execute(step), steps.send
            except Exception as exc:  # thrown in at the step's yield: the operation decides
                value, resume = exc, steps.throw

    def _execute(self, step: Step) -> Any:
        client = self.backend.client
        if isinstance(step, Batch):  # the most frequent step first
            with redis_errors(step.operation, self.key):
                pipe = client.pipeline(transaction=False)
                for call in step.calls:
                    getattr(pipe, call.name)(*call.args)
                return pipe.execute()
        if isinstance(step, Work):
            return step.func()
        if isinstance(step, Script):
            return self._run(step.name, step.args, step.operation, step.strategy)
        with redis_errors(step.operation, self.key):  # a Command
            try:
                return getattr(client, step.call.name)(*step.call.args)
            except Exception as exc:
                if tolerated(step.call, exc):
                    return exc
                raise

    def _canonical(self, raw: bytes, position: int) -> tuple[str, int, str, str]:
        return canonical(raw, self.runtime.counter, key=self.key, position=position)

    def _decode_all(self, raws: Sequence[bytes], start: int) -> list[dict[str, Any]]:
        return [decode(raw, key=self.key, position=start + i) for i, raw in enumerate(raws)]

    # ------------------------------------------------------------------ operations
    def append(self, payload: Any) -> AppendOutput:
        """Append one message, a list of messages or a string (a user message), atomically.

        Over a limit, the oldest non-system messages are evicted into the archive in the same step.
        A message whose id is already stored is skipped and counted in ``duplicates``.
        """
        encoded, skipped = self._encode(payload, "append")
        if not encoded:
            count, tokens, _ = self._counters("append")
            return cast(AppendOutput, self._append_output(encoded, skipped, [0, count, tokens, 0, 0, 0]))
        out = self._append_output(encoded, skipped, self._store("append", encoded, "append"))
        if self._summary_due(out):
            self._summary_flush(out)
        return cast(AppendOutput, out)

    def _append_output(self, encoded: Sequence[Encoded], skipped: int, result: Sequence[int]) -> Output:
        accepted, total, tokens, evicted, duplicates, _ = result
        return self._out(
            "append",
            success=True,
            appended=accepted,
            total_count=total,
            token_count=tokens,
            evicted=evicted,
            skipped=skipped,
            duplicates=duplicates,
            ids=[e.id for e in encoded],
        )

    def _summary_due(self, out: Output) -> bool:
        """Whether an append just brought a hybrid_summary memory to its threshold."""
        return (
            self.resource.flushing.type == "hybrid_summary"
            and bool(out["appended"])
            and self._over_threshold(out["total_count"], out["token_count"], None)
        )

    def _summary_flush(self, out: Output) -> None:
        """The summary flush an append triggers, reported in the append's output."""
        self._drive(self._summary_flush_steps(out))

    def _summary_flush_steps(self, out: Output) -> Steps[None]:
        # the messages are stored: a failing summary must not turn this append into an error
        try:
            summary = yield from self._flush_steps("hybrid_summary", dry_run=False, force=False, threshold=None)
        except Exception as exc:  # any failure: the append itself is complete and must not look failed
            error = (
                exc.to_dict()
                if isinstance(exc, CompozyNbError)
                else {"code": ErrorCode.FLUSH_FAILED.value, "message": type(exc).__name__}
            )
            out["summary_flush"] = {"flushed_count": 0, "summary_generated": False, "error": error}
            warnings.warn(
                f"append to '{self.key}' stored its messages, but the summary flush failed: [{error['code']}] "
                f"{error['message']}",
                RuntimeWarning,
                stacklevel=_caller_level(),
            )
        else:
            out["summary_flush"] = {k: summary[k] for k in ("flushed_count", "summary_generated")}
            out["total_count"], out["token_count"] = summary["message_count"], summary["token_count"]

    def write(self, payload: Any) -> WriteOutput:
        """Replace the whole content atomically (limits and privacy apply as for append)."""
        encoded, skipped = self._encode(payload, "write")
        return cast(WriteOutput, self._write_output(skipped, self._store("replace", encoded, "write")))

    def _write_output(self, skipped: int, result: Sequence[int]) -> Output:
        accepted, total, tokens, evicted, duplicates, _ = result
        return self._out(
            "write",
            success=True,
            count=accepted,
            total_count=total,
            token_count=tokens,
            evicted=evicted,
            skipped=skipped,
            duplicates=duplicates,
        )

    def read(
        self,
        limit: int | None = None,
        offset: int = 0,
        *,
        last: int | None = None,
        max_tokens: int | None = None,
        archive: bool = False,
        roles: Sequence[str] | str | None = None,
        since: Any = None,
        until: Any = None,
    ) -> ReadOutput:
        """Read messages, oldest first.

        Args:
            limit: At most this many messages (default: all).
            offset: Skip this many of the oldest messages.
            last: Only the newest ``last`` messages (whole tool-call groups).
            max_tokens: The newest messages whose tokens fit this budget (whole tool-call groups; one round
                trip, flat in history).
            archive: Read the archive of flushed and evicted messages instead (newest first).
            roles: Only messages with these roles.
            since: Only messages written at or after this time (a datetime or an ISO-8601 string).
            until: Only messages written before this time.
        """
        return cast(
            ReadOutput, self._drive(self._read_steps(limit, offset, last, max_tokens, archive, roles, since, until))
        )

    def _read_steps(
        self,
        limit: int | None,
        offset: int,
        last: int | None,
        max_tokens: int | None,
        archive: bool,
        roles: Sequence[str] | str | None,
        since: Any,
        until: Any,
    ) -> Steps[Output]:
        _check_nonneg(limit=limit, offset=offset, last=last, max_tokens=max_tokens)
        selection = transcript.Selection(roles, since, until)
        if selection.active:
            _, raws = yield from self._window_steps(self.layout.archive if archive else self.layout.base, 0, None)
            filtered: Output = yield Work(
                lambda: self._filtered_read(
                    raws, selection, offset, limit, last=last, max_tokens=max_tokens, archive=archive
                )
            )
            return filtered
        warnings: list[str] = []
        if archive:
            total, raws = yield from self._window_steps(self.layout.archive, offset, limit)
        elif max_tokens is None and self._track == "0":
            total, raws = yield from self._window_steps(self.layout.base, offset, limit, last=last)
        else:
            try:
                total, raws = yield from self._read_script_steps(max_tokens, last, offset, limit)
            except BackendError as exc:
                if not cannot_write(exc):
                    raise
                warnings.append(access_skipped_warning(exc))
                total, raws = yield from self._read_without_record_steps(max_tokens, last, offset, limit)
        out = self._read_output(total, raws, offset, limit, last=last, max_tokens=max_tokens, archive=archive)
        if warnings:
            out["warnings"] = warnings
        if self.resource.log.reads and self.resource.log.enabled:
            yield oplog.read_entry(self, out["count"])
        return out

    def _read_without_record_steps(
        self, max_tokens: int | None, last: int | None, offset: int, limit: int | None
    ) -> Steps[tuple[int, list[Any]]]:
        """The read script's answer without its access record, for a Redis that refuses writes."""
        if max_tokens is not None:
            return (yield from self._budget_in_python_steps(max_tokens))
        return (yield from self._window_steps(self.layout.base, offset, limit, last=last))

    def _read_output(
        self,
        total: int,
        raws: Sequence[Any],
        offset: int,
        limit: int | None,
        *,
        last: int | None,
        max_tokens: int | None,
        archive: bool,
    ) -> Output:
        if archive or (max_tokens is None and last is None):
            start = offset
            has_more = offset + len(raws) < total
        else:
            start = total - len(raws)
            has_more = start > 0
        messages = self._decode_all(raws, start)
        if last is not None and not archive and start > 0:  # the oldest group is cut: none of it (whole groups)
            cut = transcript.leading_tool_run(messages)
            messages, start, has_more = messages[cut:], start + cut, True
        out = self._out(
            "read",
            messages=messages,
            count=len(messages),
            total_count=total,
            has_more=has_more,
            offset=start,
        )
        if archive:
            out["archive"] = True
        if max_tokens is not None:
            out["token_count"] = sum(int(m.get("tokens", 0)) for m in messages)
            out["max_tokens"] = max_tokens
        return out

    def _filtered_read(
        self,
        raws: Sequence[bytes],
        selection: transcript.Selection,
        offset: int,
        limit: int | None,
        *,
        last: int | None,
        max_tokens: int | None,
        archive: bool,
    ) -> Output:
        """A read with filters: the whole list (``raws``, no access recorded) decoded, filtered, then paged."""
        matching = [m for m in self._decode_all(raws, 0) if selection.matches(m)]
        messages, start = transcript.page(matching, offset=offset, limit=limit, last=last, max_tokens=max_tokens)
        newest = last is not None or max_tokens is not None
        out = self._out(
            "read",
            messages=messages,
            count=len(messages),
            total_count=len(matching),
            has_more=start > 0 if newest else start + len(messages) < len(matching),
            offset=start,
        )
        if archive:
            out["archive"] = True
        if max_tokens is not None:
            out["token_count"] = sum(int(m.get("tokens", 0)) for m in messages)
            out["max_tokens"] = max_tokens
        return out

    def export(self, path: str | Path, *, archive: bool = False) -> Output:
        """Write every message (or the archive) to ``path``: JSONL, or Parquet when it ends in ``.parquet``."""
        messages = self.read(archive=archive)["messages"]
        target = frames.export_messages(messages, path)
        return self._out("export", success=True, path=str(target), count=len(messages))

    @overload
    def import_file(self, path: str | Path, *, replace: Literal[False] = False) -> AppendOutput: ...

    @overload
    def import_file(self, path: str | Path, *, replace: Literal[True]) -> WriteOutput: ...

    @overload
    def import_file(self, path: str | Path, *, replace: bool) -> WriteOutput | AppendOutput: ...

    def import_file(self, path: str | Path, *, replace: bool = False) -> WriteOutput | AppendOutput:
        """Append the messages of a file written by :meth:`export` (ids kept: importing twice adds nothing);
        ``replace=True`` writes them instead (replacing the content)."""
        messages = frames.import_messages(path)
        return self.write(messages) if replace else self.append(messages)

    @staticmethod
    def _window_range(offset: int, limit: int | None, last: int | None) -> tuple[int, int] | None:
        """The LRANGE bounds of a plain read (None: nothing to fetch)."""
        if last == 0 or limit == 0:
            return None
        if last is not None:
            return -last, -1
        return offset, (-1 if limit is None else offset + limit - 1)

    def _window_steps(
        self, key: str, offset: int, limit: int | None, *, last: int | None = None
    ) -> Steps[tuple[int, list[Any]]]:
        """LLEN + LRANGE in one round trip (no script needed when no access is recorded). Not MULTI: Redis
        refuses queued commands when it is out of memory (noeviction), and reads must work."""
        bounds = self._window_range(offset, limit, last)
        calls = (Call("llen", (key,)),) if bounds is None else (Call("llen", (key,)), Call("lrange", (key, *bounds)))
        results = yield Batch("read", calls)
        return int(results[0]), ([] if bounds is None else list(results[1]))

    def _read_args(self, max_tokens: int | None, last: int | None, offset: int, limit: int | None) -> list[Any]:
        now_ms = str(int(time.time() * 1000))
        if max_tokens is not None:
            return ["budget", max_tokens, 0, self._track, now_ms]
        if last is not None:
            return ["last", last, 0, self._track, now_ms]
        return ["range", offset, -1 if limit is None else limit, self._track, now_ms]

    def _read_script_steps(
        self, max_tokens: int | None, last: int | None, offset: int, limit: int | None
    ) -> Steps[tuple[int, list[Any]]]:
        args = self._read_args(max_tokens, last, offset, limit)
        try:
            result = yield Script("read", tuple(args), "read")
        except ForeignDataError:
            return (yield from self._budget_in_python_steps(int(max_tokens or 0)))
        return int(result[0]), list(result[1:])

    def _budget_in_python_steps(self, budget: int) -> Steps[tuple[int, list[Any]]]:
        """A budget read of a list written by another tool (no token counts stored): count here, write
        nothing."""
        raws = yield Command("read", Call("lrange", (self.layout.base, 0, -1)))
        start = yield Work(lambda: self._newest_within(raws, budget))  # tokenizes the whole list
        return len(raws), list(raws[start:])

    def _newest_within(self, raws: Sequence[bytes], budget: int) -> int:
        messages = self._decode_all(raws, 0)
        tokens = [count_decoded(self.runtime.counter, m) for m in messages]
        return transcript.newest_whole_groups(tokens, [str(m.get("role")) for m in messages], budget, None)

    def delete(self) -> DeleteOutput:
        """Remove the instance: messages, metadata, archive, ids, access data and backups."""
        return cast(DeleteOutput, self._delete_output(self._run("delete", [], "delete")))

    def _delete_output(self, result: Sequence[Any]) -> Output:
        count, deleted = (int(v) for v in result)
        return self._out("delete", success=True, deleted=deleted > 0, messages_deleted=count)

    def clear(self, confirm: bool = False, backup: bool = False) -> ClearOutput:
        """Remove all messages. Needs ``confirm=True``; ``backup=True`` keeps them in a restorable backup list.

        Raises:
            ConfirmRequiredError: without ``confirm=True`` (nothing is removed).
        """
        args = self._clear_args(confirm, backup)
        return cast(ClearOutput, self._clear_output(args[0], self._run("clear", args, "clear")))

    def _clear_args(self, confirm: bool, backup: bool) -> list[Any]:
        if confirm is not True:
            raise ConfirmRequiredError(
                "clear operation requires clear_config.confirm to be true (nothing was removed)",
                operation="clear",
                key=self.key,
                field="confirm",
            )
        return [self.layout.backup(_stamp()) if backup else "", self.runtime.ttl_ms]

    def _clear_output(self, backup_key: str, result: Sequence[Any]) -> Output:
        cleared, created = (int(v) for v in result)
        return self._out(
            "clear",
            success=True,
            messages_cleared=cleared,
            backup_created=bool(created),
            backup_key=backup_key if created else None,
        )

    def backups(self) -> list[str]:
        """The backup keys made by ``clear(backup=True)`` that still exist, oldest first."""
        client = self.backend.client
        with redis_errors("backups", self.key):
            names = sorted(n.decode() if isinstance(n, bytes) else n for n in client.smembers(self.layout.backups))
            return [n for n in names if client.exists(n)]

    def restore(self, backup_key: str) -> Output:
        """Replace the content with a backup made by ``clear(backup=True)``."""
        if not backup_key.startswith(self.layout.base + ":backup:"):
            raise InvalidKeyError(
                f"{backup_key!r} is not a backup of memory {self.key!r}", operation="restore", key=self.key
            )
        with redis_errors("restore", self.key):
            raws = self.backend.client.lrange(backup_key, 0, -1)
        if not raws:
            raise InvalidKeyError(f"backup {backup_key!r} does not exist (expired?)", operation="restore", key=self.key)
        messages = self._decode_all(raws, 0)
        encoded = [
            Encoded(
                raw if isinstance(raw, bytes) else raw.encode("utf-8"),
                count_decoded(self.runtime.counter, m),
                str(m.get("id") or new_id()),
                str(m["role"]),
            )
            for raw, m in zip(raws, messages, strict=True)
        ]
        accepted, total, tokens, evicted, _, _ = self._store("replace", encoded, "restore")
        return self._out(
            "restore",
            success=True,
            restored=accepted,
            total_count=total,
            token_count=tokens,
            evicted=evicted,
            backup_key=backup_key,
        )

    def flush(
        self,
        strategy: str | None = None,
        *,
        dry_run: bool = False,
        force: bool = False,
        threshold: float | None = None,
    ) -> FlushOutput:
        """Flush when usage reaches ``threshold`` (default: the resource's summarize_threshold) or ``force``.

        Removed messages go to the archive; ``hybrid_summary`` replaces the oldest ones with one summary
        system message. Messages appended while the flush runs survive. A flush racing another flush never
        raises: the second removes what is still there (possibly nothing, ``flushed_count: 0``).
        """
        return cast(
            FlushOutput, self._drive(self._flush_steps(strategy, dry_run=dry_run, force=force, threshold=threshold))
        )

    def _flush_steps(
        self, strategy: str | None, *, dry_run: bool, force: bool, threshold: float | None
    ) -> Steps[Output]:
        chosen = strategy or self.resource.flushing.type
        chosen = "simple_fifo" if chosen == "fifo" else chosen
        if chosen not in STRATEGIES:
            raise ConfigError(
                f"invalid strategy '{chosen}', must be one of: {', '.join(STRATEGIES)}",
                operation="flush",
                key=self.key,
                field="strategy",
            )
        if chosen == "hybrid_summary" and not self.resource.flushing.summary_tokens:
            raise ConfigError(
                "hybrid_summary needs flushing.summary_tokens on the memory resource",
                operation="flush",
                key=self.key,
                field="strategy",
            )
        if threshold is not None and not 0 <= threshold <= 1:
            raise ConfigError("threshold must be between 0 and 1", operation="flush", key=self.key, field="threshold")
        limit = self.resource.flushing.summarize_threshold if threshold is None else threshold
        yield from self._adopt_steps()
        snapshot, access = yield from self._snapshot_steps(chosen)
        count = len(snapshot)
        tokens = sum(s.tokens for s in snapshot)
        current_usage = flushing.usage(self.resource, count, tokens)
        would_flush = bool(count) and (force or current_usage >= limit)
        plan: flushing.FlushPlan = (
            (yield Work(lambda: flushing.plan_flush(chosen, snapshot, self.resource, access=access)))
            if would_flush
            else flushing.FlushPlan(chosen)
        )
        base = {"actual_strategy": plan.strategy, "threshold": limit, "usage": round(current_usage, 4)}
        if dry_run or not plan.remove:
            added = 1 if plan.strategy == "hybrid_summary" and plan.remove else 0
            remaining = count - len(plan.remove) + added if dry_run else count
            return self._out(
                "flush",
                success=True,
                flushed_count=0,
                message_count=count,
                token_count=tokens,
                summary_generated=False,
                dry_run=dry_run,
                would_flush=would_flush and bool(plan.remove),
                would_remove=len(plan.remove),
                would_remain=remaining,
                **base,
            )
        summary_raw, summary_tokens, summary_id = b"", 0, ""
        if plan.strategy == "hybrid_summary":
            summary_raw, summary_tokens, summary_id = yield Work(lambda: self._summary(plan))  # calls the LLM
        result = yield Script(
            "flush",
            (
                new_op_id(),  # the operation id: a re-send after a lost reply returns the first run's result
                self.runtime.ttl_ms,
                self.resource.archive_max_messages,
                utc_now_iso(),
                summary_raw,
                summary_tokens,
                summary_id,
                self._track,
                len(plan.remove),
                *(s.raw for s in plan.remove),
            ),
            "flush",
            plan.strategy,
        )
        removed, remaining_count, remaining_tokens, summary_written = (int(v) for v in result)
        if summary_written == -1:  # a racing flush took some of the planned messages: it did the work
            removed, summary_written = 0, 0
        return self._out(
            "flush",
            success=True,
            flushed_count=removed,
            message_count=remaining_count,
            token_count=remaining_tokens,
            summary_generated=bool(summary_written),
            dry_run=False,
            would_flush=True,
            **base,
        )

    def health(self, include_stats: bool = True) -> HealthOutput:
        """Check Redis and this instance. Unreachable Redis gives ``healthy: false``, not an exception."""
        return cast(HealthOutput, self._drive(self._health_steps(include_stats)))

    def _health_steps(self, include_stats: bool) -> Steps[Output]:
        warnings: list[str] = []
        key_warning = compozy_key_warning(self.key)
        if key_warning:
            warnings.append(key_warning)
        try:
            started = time.perf_counter()
            yield Command("health", Call("ping"))
            ping_ms = round((time.perf_counter() - started) * 1000, 3)
            info = yield from _server_info_steps()
            if info.pop("read_only_replica", False):
                raise BackendError(
                    "Redis is a read-only replica: every write fails with BACKEND_UNAVAILABLE (connect to the primary)",
                    operation="health",
                    key=self.key,
                    reason="read_only_replica",
                )
            count, tokens, last_flush = yield from self._counters_steps("health")
        except BackendError as exc:
            return self._out(
                "health",
                healthy=False,
                error=exc.message,
                message_count=None,
                token_count=None,
                actual_strategy=self.resource.flushing.type,
                last_flush=None,
                redis=None,
                warnings=[*warnings, _unhealthy_warning(exc)],
            )
        policy = info.get("maxmemory_policy")
        if isinstance(policy, str) and policy.startswith("allkeys-"):
            warnings.append(
                f"maxmemory-policy is {policy}: Redis may evict memories under memory pressure "
                "(use noeviction or volatile-*)"
            )
        elif isinstance(policy, str) and policy.startswith("volatile-") and self.runtime.ttl_ms > 0:
            warnings.append(
                f"maxmemory-policy is {policy} and this memory has a TTL: Redis may evict it under memory "
                "pressure (use noeviction, or no TTL)"
            )
        out = self._out(
            "health",
            healthy=True,
            message_count=count,
            token_count=tokens,
            actual_strategy=self.resource.flushing.type,
            last_flush=last_flush,
            redis={"ping_ms": ping_ms, **info},
            warnings=warnings,
        )
        if include_stats:
            out["usage"] = round(flushing.usage(self.resource, count, tokens), 4)
            out["current_tokens"] = tokens  # Compozy's name
        return out

    def stats(self, include_content: bool = False) -> StatsOutput:
        """Counters kept in the metadata hash: O(1) whatever the history size."""
        return cast(StatsOutput, self._drive(self._stats_steps(include_content)))

    def _stats_steps(self, include_content: bool) -> Steps[Output]:
        # stats.lua: the metadata, PTTL, LLEN, the tail (and head/tail previews) in one call; a list another tool
        # changed is adopted first, so role counts and token totals describe the list as it is
        args = ("1" if include_content else "0",)
        for _ in range(2):
            results: list[Any] = yield Script("stats", args, "stats")
            flat = results[0]
            meta: dict[bytes, bytes] = dict(zip(flat[::2], flat[1::2], strict=True))
            length = int(results[2])
            if (
                not length
                or is_ours([meta.get(f) for f in _FINGERPRINT_KEYS], length, results[3])
                or not (yield from self._adopt_if_writable_steps())
            ):
                break
        count = int(meta.get(b"message_count", length))
        tokens = int(meta.get(b"token_count", 0))
        roles = {_s(k[5:]): int(v) for k, v in meta.items() if k.startswith(b"role:") and int(v) > 0}
        if count != length:  # written by another tool: the metadata is not ours, trust the list
            count = length
        last_flush = meta.get(b"last_flush")
        pttl = int(results[1])
        limit = self.resource.token_limit
        out = self._out(
            "stats",
            message_count=count,
            token_count=tokens,
            max_tokens=limit,
            max_messages=self.resource.max_messages,
            token_utilization=round(tokens / limit, 4) if limit else None,
            message_utilization=round(count / self.resource.max_messages, 4) if self.resource.max_messages else None,
            role_distribution=dict(sorted(roles.items())),
            ttl_seconds=round(pttl / 1000, 3) if pttl > 0 else None,
            last_flush=None if last_flush is None else _s(last_flush),
            flush_count=int(meta.get(b"flush_count", 0)),
            evicted_count=int(meta.get(b"evicted_count", 0)),
            avg_tokens_per_message=round(tokens / count, 2) if count else 0,
            actual_strategy=self.resource.flushing.type,
        )
        if include_content:
            head = self._decode_all(results[4], 0)
            tail = self._decode_all(results[5], max(0, length - len(results[5])))
            out["content_preview"] = {
                "first": [_preview(m) for m in head],
                "last": [_preview(m) for m in tail] if length > 3 else [],
            }
        return out

    # ------------------------------------------------------------------ internals
    def _counters(self, operation: str) -> tuple[int, int, str | None]:
        """message_count, token_count and last_flush; a list another tool changed is adopted first."""
        return self._drive(self._counters_steps(operation))

    def _counters_steps(self, operation: str) -> Steps[tuple[int, int, str | None]]:
        calls = (
            Call("hmget", (self.layout.metadata, *FINGERPRINT_FIELDS, "last_flush")),
            Call("llen", (self.layout.base,)),
            Call("lindex", (self.layout.base, -1)),
        )
        for _ in range(2):
            values, length, last = yield Batch(operation, calls)
            if (
                not length
                or is_ours(values[:-1], int(length), last)
                or not (yield from self._adopt_if_writable_steps())
            ):
                break
        count = int(values[1]) if values[1] is not None else int(length)
        tokens = int(values[0] or 0) if length else 0
        last_flush = _s(values[-1]) if values[-1] else None
        return (int(length) if count != length else count), tokens, last_flush

    def _over_threshold(self, count: int, tokens: int, threshold: float | None) -> bool:
        limit = self.resource.flushing.summarize_threshold if threshold is None else threshold
        return flushing.usage(self.resource, count, tokens) >= limit

    def _snapshot_steps(self, strategy: str) -> Steps[tuple[list[flushing.Stored], dict[str, float] | None]]:
        if strategy in ("lru", "token_aware_lru"):
            raws, scored = yield Batch(
                "flush",
                (Call("lrange", (self.layout.base, 0, -1)), Call("zrange", (self.layout.access, 0, -1, False, True))),
            )
            access: dict[str, float] | None = {_s(m): float(s) for m, s in scored}
        else:
            raws, access = (yield Command("flush", Call("lrange", (self.layout.base, 0, -1)))), None
        snapshot = yield Work(lambda: self._stored(raws))  # decodes the whole list
        return snapshot, access

    def _stored(self, raws: Sequence[bytes]) -> list[flushing.Stored]:
        snapshot = []
        for position, raw in enumerate(raws):
            try:
                message: Mapping[str, Any] = decode(raw, key=self.key, position=position)
            except CompozyNbError:
                message = {"role": "user", "content": "", "tokens": 0}
            snapshot.append(flushing.Stored(raw, message, position))
        return snapshot

    def _summary(self, plan: flushing.FlushPlan) -> tuple[bytes, int, str]:
        previous = "\n".join(str(s.message.get("content", "")) for s in plan.remove if s.is_summary) or None
        originals = [s.message for s in plan.remove if not s.is_summary]
        budget = int(self.resource.flushing.summary_tokens or 0)
        text = self.runtime.summarizer(originals, previous, budget)
        if not isinstance(text, str) or not text.strip():
            raise CompozyNbError(
                "the summarizer returned no text", code=ErrorCode.FLUSH_FAILED, operation="flush", key=self.key
            )
        text = flushing.truncate_tokens(self.runtime.privacy.redact(text), self.runtime.counter, budget)
        folded = sum(int(s.message.get("summarized_count", 0)) for s in plan.remove if s.is_summary)
        encoded = encode(
            {"role": "system", "content": text, "summary": True, "summarized_count": folded + len(originals)},
            self.runtime.counter,
            now=utc_now_iso(),
            max_bytes=self.resource.max_message_bytes,
            max_tokens=None,
            operation="flush",
        )
        return encoded.raw, encoded.tokens, encoded.id


_OUR_HEAD = re.compile(rb'^\{"tokens":\d+,"id":"([^"\\]*)"')


def _end_id(raw: Any) -> str:
    """The id of a list element ('' when it has none), as _common.lua's end_id reads it."""
    ours = _OUR_HEAD.match(raw) if isinstance(raw, bytes) else None
    if ours:
        return ours.group(1).decode("utf-8", "replace")
    try:
        message = json.loads(raw)
    except ValueError:
        return ""
    mid = message.get("id") if isinstance(message, dict) else None
    return mid if isinstance(mid, str) else ""


def is_ours(fields: Sequence[Any], length: int, last: Any) -> bool:
    """Whether the counters of a non-empty list can be trusted (the fingerprint of _common.lua's
    load_counters): ``fields`` are the values of FINGERPRINT_FIELDS, ``last`` the list's tail element.

    Every Compozy write changes the counts or the tail (its elements carry no id): append and write push at
    the tail, a flush shortens the list."""
    tokens, count, nb_count, nb_tokens, nb_last = fields  # as Redis replied them (all bytes or all str)
    if nb_count is None or count != nb_count or tokens is None or tokens != nb_tokens or int(nb_count) != length:
        return False
    return nb_last is not None and _end_id(last) == _s(nb_last)


def cannot_write(exc: BackendError) -> bool:
    """Whether Redis refused a write it could serve as a read: out of memory, or a read-only replica."""
    return exc.code == ErrorCode.BACKEND_OUT_OF_MEMORY or exc.context.get("reason") == "read_only_replica"


def access_skipped_warning(exc: BackendError) -> str:
    """The warning of an LRU read whose access record Redis refused."""
    why = "is out of memory" if exc.code == ErrorCode.BACKEND_OUT_OF_MEMORY else "is a read-only replica"
    return f"Redis {why}: the messages were read but their access times were not recorded (LRU order is stale)"


_PACKAGE = str(Path(__file__).resolve().parents[1])


def _caller_level() -> int:
    """The ``warnings.warn`` stacklevel of the first frame outside this package (the caller's code), for a
    warning raised inside an operation's steps, however deep the transport drove them."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def _check_nonneg(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > MAX_INT
        ):
            raise InvalidPayloadError(f"must be a non-negative integer, got {value!r}", operation="read", field=name)


def _s(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{int(time.time() * 1000) % 1000:03d}Z-" + new_id()[:6]


def _preview(message: Mapping[str, Any], width: int = 80) -> dict[str, Any]:
    text = " ".join(stored_text(message).split())
    return {"role": message.get("role"), "content": text if len(text) <= width else text[: width - 3] + "..."}


def _is_connection_error(exc: BaseException) -> bool:
    from compozy_nb.memory.store import UNAVAILABLE

    return isinstance(exc, UNAVAILABLE)


def _unhealthy_warning(exc: BackendError) -> str:
    if exc.context.get("reason") == "read_only_replica":
        return "Redis is a read-only replica"
    if exc.code == ErrorCode.BACKEND_OUT_OF_MEMORY:
        return "Redis is out of memory"
    return "Redis is unreachable"


def tolerated(call: Call, exc: Exception) -> bool:
    """Whether ``exc`` raised by ``call`` goes back to the operation as a value (see :class:`Call`)."""
    return call.tolerate and not _is_connection_error(exc)


def _server_info_steps() -> Steps[dict[str, Any]]:
    """Replication role, version and maxmemory policy; a command the server refuses (managed Redis often
    disables CONFIG) leaves its fact unknown."""
    replication = yield Command("health", Call("info", ("replication",), tolerate=True))
    server = yield Command("health", Call("info", ("server",), tolerate=True))
    policy = yield Command("health", Call("config_get", ("maxmemory-policy",), tolerate=True))
    info: dict[str, Any] = {"read_only_replica": False, "version": None, "maxmemory_policy": None}
    if isinstance(replication, Mapping):
        info["read_only_replica"] = replication.get("role") == "slave" and bool(replication.get("slave_read_only", 1))
    if isinstance(server, Mapping):
        info["version"] = server.get("redis_version")
    if isinstance(policy, Mapping) and policy:
        info["maxmemory_policy"] = _s(next(iter(policy.values())))
    return info


def run_operation(
    instance: MemoryInstance, operation: str, payload: Any = None, options: Mapping[str, Any] | None = None
) -> Output:
    """Run one of the 8 operations with task-style options (``read_config`` etc. already unpacked).

    Raises:
        ConfigError: an unknown operation (field ``operation``) or option (field: its name).
    """
    try:
        result: Output = operations.call(instance, operation, payload, options)
    except CompozyNbError as exc:  # the engine names the parameter; a task names it inside its config block
        raise operations.in_task(operation, exc) from None
    return result
