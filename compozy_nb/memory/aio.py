"""The async path: append, read, write, delete and clear of a memory instance over ``redis.asyncio``, for
servers.

The same instance prepares the arguments and builds the outputs (no operation is written twice); only the
Redis round trip is awaited, so concurrent requests on one event loop do not wait for each other. The rare
paths that need more than one round trip - adopting a list written by another tool, a summary flush due
after an append - run the synchronous engine in a worker thread.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

import redis

from compozy_nb.backends import Backend
from compozy_nb.errors import BackendError
from compozy_nb.memory.instance import MemoryInstance, Output, _check_nonneg, cannot_write
from compozy_nb.memory.store import ForeignDataError, redis_errors, script_sha, script_source

MAX_IN_FLIGHT = 64  # below the async client's 100 connections: more requests wait instead of failing
_limits: weakref.WeakKeyDictionary[Backend, asyncio.Semaphore] = weakref.WeakKeyDictionary()


class AsyncMemory:
    """``await AsyncMemory(instance).append(payload)`` / ``.read(...)``: the same outputs as the sync methods."""

    def __init__(self, instance: MemoryInstance) -> None:
        self.instance = instance
        self.client = instance.backend.async_client
        limit = _limits.get(instance.backend)
        if limit is None:
            limit = _limits[instance.backend] = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._limit = limit

    async def _script(self, name: str, args: Sequence[Any], operation: str) -> Any:
        mem = self.instance
        keys = mem.layout.all_keys
        args = [*args, mem._log_arg(operation)] if name != "read" else args
        async with self._limit:
            with redis_errors(operation, mem.key):
                try:
                    return await self.client.evalsha(script_sha(name), len(keys), *keys, *args)
                except redis.exceptions.NoScriptError:
                    return await self.client.eval(script_source(name), len(keys), *keys, *args)

    async def append(self, payload: Any) -> Output:
        """Like :meth:`MemoryInstance.append`."""
        mem = self.instance
        encoded, skipped = await asyncio.to_thread(mem._encode, payload, "append")  # CPU: off the event loop
        if not encoded:
            return await asyncio.to_thread(mem.append, payload)
        args = mem._store_args("append", encoded)
        try:
            result = await self._script("append", args, "append")
        except ForeignDataError:
            await asyncio.to_thread(mem.adopt)
            result = await self._script("append", args, "append")
        out = mem._append_output(encoded, skipped, [int(v) for v in result])
        if mem._summary_due(out):
            await asyncio.to_thread(mem._summary_flush, out)
        return out

    async def write(self, payload: Any) -> Output:
        """Like :meth:`MemoryInstance.write`."""
        mem = self.instance
        encoded, skipped = await asyncio.to_thread(mem._encode, payload, "write")
        result = await self._script("append", mem._store_args("replace", encoded), "write")
        return mem._write_output(skipped, [int(v) for v in result])

    async def delete(self) -> Output:
        """Like :meth:`MemoryInstance.delete`."""
        return self.instance._delete_output(await self._script("delete", [], "delete"))

    async def clear(self, confirm: bool = False, backup: bool = False) -> Output:
        """Like :meth:`MemoryInstance.clear`."""
        args = self.instance._clear_args(confirm, backup)
        return self.instance._clear_output(args[0], await self._script("clear", args, "clear"))

    async def read(
        self,
        limit: int | None = None,
        offset: int = 0,
        *,
        last: int | None = None,
        max_tokens: int | None = None,
        archive: bool = False,
    ) -> Output:
        """Like :meth:`MemoryInstance.read`."""
        mem = self.instance
        _check_nonneg(limit=limit, offset=offset, last=last, max_tokens=max_tokens)
        if archive or (max_tokens is None and mem._track == "0"):
            key = mem.layout.archive if archive else mem.layout.base
            bounds = mem._window_range(offset, limit, None if archive else last)
            async with self._limit:
                with redis_errors("read", mem.key):
                    pipe = self.client.pipeline(transaction=False)
                    pipe.llen(key)
                    if bounds is not None:
                        pipe.lrange(key, *bounds)
                    results = await pipe.execute()
            total, raws = int(results[0]), ([] if bounds is None else list(results[1]))
        else:
            try:
                result = await self._script("read", mem._read_args(max_tokens, last, offset, limit), "read")
                total, raws = int(result[0]), list(result[1:])
            except ForeignDataError:
                total, raws = await asyncio.to_thread(mem._budget_in_python, int(max_tokens or 0))
            except BackendError as exc:
                if not cannot_write(exc):
                    raise
                return await asyncio.to_thread(mem.read, limit, offset, last=last, max_tokens=max_tokens)
        return mem._read_output(total, raws, offset, limit, last=last, max_tokens=max_tokens, archive=archive)
