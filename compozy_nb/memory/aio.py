"""The async transport: all 8 operations of a memory instance over ``redis.asyncio`` (standalone and
cluster), for servers and async agents.

The same instance prepares the arguments and builds the outputs (no operation is written twice); only the
Redis round trips are awaited, so concurrent calls on one event loop do not wait for each other. Operations
of more than one round trip (stats, health, flush, adopting a list another tool wrote, the summary flush an
append can trigger) are the instance's step generators (memory/steps.py) driven here with ``await``; the
CPU-heavy or blocking steps among them (tokenizing, decoding a whole list, planning a flush, calling the
summarizer) and the encoding of large payloads run in a worker thread, never on the event loop. Script calls
made in one turn of the loop are sent as one pipeline (:class:`_ClientState`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

import redis

from compozy_nb.errors import CompozyNbError
from compozy_nb.memory import log as oplog
from compozy_nb.memory import operations
from compozy_nb.memory.instance import MemoryInstance, Output, tolerated
from compozy_nb.memory.messages import Encoded
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
from compozy_nb.memory.steps import Command, Runner, Script, Step, Steps, Work
from compozy_nb.memory.store import ForeignDataError, redis_errors, script_sha, script_source

T = TypeVar("T")

MAX_IN_FLIGHT = 64  # below the async client's 100 connections: more requests wait instead of failing
INLINE_CHARS = 1024
"""Payloads of text up to this many characters are encoded on the event loop (tens of microseconds of work)."""
INLINE_MESSAGES = 8
INLINE_FIELDS = 16  # at most this many fields per message of an inline payload
_SCALAR_CHARS = 24  # what a number, bool or None counts for against INLINE_CHARS (its JSON is at most this long)


def _small(payload: Any) -> bool:
    """A string, a message map or a short list of them whose values are all short strings or small scalars (a
    number within 64 bits, a bool, None; no nesting)."""
    if isinstance(payload, str):
        return len(payload) <= INLINE_CHARS
    if isinstance(payload, Mapping):
        items: Sequence[Any] = (payload,)
    elif isinstance(payload, list) and len(payload) <= INLINE_MESSAGES:
        items = payload
    else:
        return False
    total = 0
    for item in items:
        if not isinstance(item, Mapping) or len(item) > INLINE_FIELDS:
            return False
        for value in item.values():
            if isinstance(value, str):
                total += len(value)
            elif _scalar(value):
                total += _SCALAR_CHARS
            else:
                return False
    return total <= INLINE_CHARS


def _scalar(value: Any) -> bool:
    """None, a bool, a float or an int within 64 bits (a huge int costs its decimal conversion)."""
    return value is None or isinstance(value, bool | float) or (isinstance(value, int) and value.bit_length() <= 64)


class _ClientState:
    """What the async transport keeps per ``redis.asyncio`` client, i.e. per backend and event loop
    (``Backend.async_client``): the in-flight limit (``limit``: a semaphore belongs to the loop it first made
    wait, so it cannot be shared across loops) and the pipeline of script calls.

    Script calls made in one turn of the event loop go to Redis as one pipeline: one write and one read for
    all of them instead of a round trip each (what a server under concurrent requests does all the time). A
    call waits at most one loop turn more; each result or error goes back to its own caller. Pipelines are not
    transactions: each script is still atomic on its own, and a re-send after a dropped connection (the
    client's retry) is harmless because every write script is idempotent on its operation and message ids."""

    __slots__ = ("_client", "_pending", "_scheduled", "limit")

    def __init__(self, client: Any) -> None:
        self.limit = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._client = client
        self._pending: list[tuple[str, Sequence[bytes], Sequence[Any], asyncio.Future[Any]]] = []
        self._scheduled = False

    def run(self, name: str, keys: Sequence[bytes], args: Sequence[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((name, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            _background(loop.create_task(self._send()))  # runs after the tasks ready in this turn have queued
        return future

    async def _send(self) -> None:
        batch, self._pending, self._scheduled = self._pending, [], False
        try:
            pipe = self._client.pipeline(transaction=False)
            for name, keys, args, _ in batch:
                pipe.evalsha(script_sha(name), len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed: every caller gets the error
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (name, keys, args, future), result in zip(batch, results, strict=True):
            if isinstance(result, redis.exceptions.NoScriptError):  # first use, or SCRIPT FLUSH
                _background(asyncio.ensure_future(self._eval(name, keys, args, future)))
            elif future.done():  # the caller was cancelled
                continue
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _eval(self, name: str, keys: Sequence[bytes], args: Sequence[Any], future: asyncio.Future[Any]) -> None:
        try:
            result = await self._client.eval(script_source(name), len(keys), *keys, *args)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)


_states: weakref.WeakKeyDictionary[Any, _ClientState] = weakref.WeakKeyDictionary()
_tasks: set[asyncio.Task[None]] = set()


def _state(client: Any) -> _ClientState:
    """The state of ``client`` (made on first use, dropped with the client)."""
    state = _states.get(client)
    if state is None:
        state = _states[client] = _ClientState(client)
    return state


def _background(task: asyncio.Task[None]) -> None:
    """Keep a reference to ``task`` until it is done (the loop keeps only weak ones)."""
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


class AsyncMemory:
    """``await AsyncMemory(instance).append(payload)``, ``.read(...)``, ``.flush(...)`` ...: the 8 operations of
    :class:`~compozy_nb.memory.instance.MemoryInstance` with the same arguments, outputs and errors.

    Example:
        >>> mem = project.amemory("conversation", key="user:42")  # doctest: +SKIP
        >>> await mem.append("hello")  # doctest: +SKIP
    """

    def __init__(self, instance: MemoryInstance) -> None:
        self.instance = instance

    @property
    def client(self) -> Any:
        """The backend's ``redis.asyncio`` client for the running event loop (see ``Backend.async_client``)."""
        return self.instance.backend.async_client

    @property
    def key(self) -> str:
        """The instance's rendered key."""
        return self.instance.key

    def __repr__(self) -> str:
        return f"AsyncMemory({self.instance!r})"

    async def _drive(self, steps: Steps[T]) -> T:
        """Run an operation's steps (memory/steps.py), awaiting each; see ``MemoryInstance._drive``."""
        run = Runner(steps)
        while (step := run.next()) is not None:
            try:
                run.done(await self._execute(step))
            except Exception as exc:  # thrown in at the step's yield: the operation decides
                run.failed(exc)
        return cast(T, run.result)

    async def _execute(self, step: Step) -> Any:
        if isinstance(step, Work):
            return await asyncio.to_thread(step.func)
        if isinstance(step, Script):
            return await self._script(step.name, step.args, step.operation, step.strategy)
        client = self.client
        async with _state(client).limit:
            with redis_errors(step.operation, self.instance.key):
                if isinstance(step, Command):
                    try:
                        return await getattr(client, step.call.name)(*step.call.args)
                    except Exception as exc:
                        if tolerated(step.call, exc):
                            return exc
                        raise
                pipe = client.pipeline(transaction=False)
                for call in step.calls:
                    getattr(pipe, call.name)(*call.args)
                return await pipe.execute()

    async def _script(self, name: str, args: Sequence[Any], operation: str, strategy: str | None = None) -> Any:
        mem = self.instance
        keys, args = mem._script_input(name, args, operation, strategy)
        client = self.client
        state = _state(client)
        async with state.limit:
            with redis_errors(operation, mem.key):
                if not mem.backend.cluster:
                    return await state.run(name, keys, args)
                try:  # a cluster pipeline splits by node: one call at a time
                    return await client.evalsha(script_sha(name), len(keys), *keys, *args)
                except redis.exceptions.NoScriptError:
                    return await client.eval(script_source(name), len(keys), *keys, *args)

    async def append(self, payload: Any) -> AppendOutput:
        """Like :meth:`MemoryInstance.append`."""
        mem = self.instance
        encoded, skipped = await self._encode(payload, "append")
        if not encoded:
            count, tokens, _ = await self._drive(mem._counters_steps("append"))
            return cast(AppendOutput, mem._append_output(encoded, skipped, [0, count, tokens, 0, 0, 0]))
        result = await self._store("append", encoded, "append")
        out = mem._append_output(encoded, skipped, result)
        if mem._summary_due(out):
            await self._drive(mem._summary_flush_steps(out))
        return cast(AppendOutput, out)

    async def _encode(self, payload: Any, operation: str) -> tuple[list[Encoded], int]:
        """The instance's encoding (normalize, redact, count tokens): inline for a small text payload, where a
        worker thread would cost more than the work; in a worker thread otherwise (the event loop never
        tokenizes a large payload)."""
        if _small(payload):
            return self.instance._encode(payload, operation)
        return await asyncio.to_thread(self.instance._encode, payload, operation)

    async def _store(self, mode: str, encoded: Sequence[Any], operation: str) -> list[int]:
        args = self.instance._store_args(mode, encoded)
        try:
            result = await self._script("append", args, operation)
        except ForeignDataError:
            await self.adopt()
            result = await self._script("append", args, operation)
        return [int(v) for v in result]

    async def log(self, since: Any = None, limit: int | None = None) -> oplog.LogResult:
        """Like :meth:`MemoryInstance.log` (a long log is parsed in a worker thread)."""
        return await self._drive(oplog.log_steps(self.instance, since, limit))

    async def adopt(self) -> bool:
        """Like :meth:`MemoryInstance.adopt`."""
        return await self._drive(self.instance._adopt_steps())

    async def flush(
        self,
        strategy: str | None = None,
        *,
        dry_run: bool = False,
        force: bool = False,
        threshold: float | None = None,
    ) -> FlushOutput:
        """Like :meth:`MemoryInstance.flush` (a ``hybrid_summary`` summarizer runs in a worker thread)."""
        steps = self.instance._flush_steps(strategy, dry_run=dry_run, force=force, threshold=threshold)
        return cast(FlushOutput, await self._drive(steps))

    async def health(self, include_stats: bool = True) -> HealthOutput:
        """Like :meth:`MemoryInstance.health`: unreachable Redis gives ``healthy: false``, not an exception."""
        return cast(HealthOutput, await self._drive(self.instance._health_steps(include_stats)))

    async def stats(self, include_content: bool = False) -> StatsOutput:
        """Like :meth:`MemoryInstance.stats`."""
        return cast(StatsOutput, await self._drive(self.instance._stats_steps(include_content)))

    async def write(self, payload: Any) -> WriteOutput:
        """Like :meth:`MemoryInstance.write`."""
        mem = self.instance
        encoded, skipped = await self._encode(payload, "write")
        return cast(WriteOutput, mem._write_output(skipped, await self._store("replace", encoded, "write")))

    async def delete(self) -> DeleteOutput:
        """Like :meth:`MemoryInstance.delete`."""
        return cast(DeleteOutput, self.instance._delete_output(await self._script("delete", [], "delete")))

    async def clear(self, confirm: bool = False, backup: bool = False) -> ClearOutput:
        """Like :meth:`MemoryInstance.clear`."""
        args = self.instance._clear_args(confirm, backup)
        return cast(ClearOutput, self.instance._clear_output(args[0], await self._script("clear", args, "clear")))

    async def read(
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
        """Like :meth:`MemoryInstance.read`."""
        steps = self.instance._read_steps(limit, offset, last, max_tokens, archive, roles, since, until)
        return cast(ReadOutput, await self._drive(steps))


async def arun_operation(
    instance: MemoryInstance, operation: str, payload: Any = None, options: Mapping[str, Any] | None = None
) -> Output:
    """:func:`~compozy_nb.memory.instance.run_operation` over :class:`AsyncMemory`: one of the 8 operations
    with task-style options, errors naming the task's config field.

    Raises:
        ConfigError: an unknown operation (field ``operation``) or option (field: its name).
    """
    try:
        result: Output = await operations.call(AsyncMemory(instance), operation, payload, options)
    except CompozyNbError as exc:
        raise operations.in_task(operation, exc) from None
    return result
