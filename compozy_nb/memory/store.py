"""The Lua scripts of the memory layout, and Redis errors mapped onto our exception tree."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any, Literal

import redis

from compozy_nb.errors import (
    BackendError,
    CompozyNbError,
    ErrorCode,
    LimitExceededError,
    MemoryOperationError,
)


class ForeignDataError(MemoryOperationError):
    """Internal: the list was written by another tool and must be adopted first (handled by the instance)."""

    code = ErrorCode.FOREIGN_DATA


# "Redis cannot serve this now" -> BACKEND_UNAVAILABLE. ClusterDownError (CLUSTERDOWN) and TryAgainError
# (TRYAGAIN, while resharding) are ResponseErrors, so they are caught before those; RedisClusterException
# (no reachable node, slot not covered) is not even a RedisError.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterException,
)


READ_ONLY_SCRIPTS = frozenset({"read", "stats"})
"""Scripts that write nothing: they take no operation-log argument."""

SCRIPT_KEYS = {"stats": 2, "read": 5}
"""Scripts that use only the first n of an instance's keys (KEYS[1..n], see scripts/_common.lua) are sent only those:
each key is a Lua string to build on every call (the others get all seven)."""


@cache
def script_source(name: str) -> str:
    """The full source of one script: the shared helpers followed by the script itself (a script whose first line
    starts with ``-- standalone`` runs without them)."""
    folder = resources.files("compozy_nb.memory") / "scripts"
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    if body.startswith("-- standalone"):
        return body
    common = (folder / "_common.lua").read_text(encoding="utf-8")
    return f"{common}\n{body}"


@cache
def script_sha(name: str) -> str:
    """The SHA1 Redis knows script ``name`` by."""
    return hashlib.sha1(script_source(name).encode("utf-8")).hexdigest()


class Scripts:
    """The scripts of one client: EVALSHA, and EVAL when the server does not know the script yet.

    EVAL caches the script on the node that runs it, so on a cluster a script only needs the node holding
    the instance's slot (redis-py's ``register_script`` sends SCRIPT LOAD to every primary: while any one
    primary is down, every first use of a script would fail). It also covers SCRIPT FLUSH and restarts.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def run(self, name: str, keys: Sequence[bytes | str], args: Sequence[Any], *, operation: str, key: str) -> Any:
        """Run script ``name``; Redis errors become CompozyNbError subclasses naming the operation and key."""
        with redis_errors(operation, key):
            try:  # execute_command: what client.evalsha() calls, two frames less on every script call
                return self._client.execute_command("EVALSHA", script_sha(name), len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                return self._client.execute_command("EVAL", script_source(name), len(keys), *keys, *args)


_SCRIPT_LOCATION = re.compile(  # Redis 7, and the embedded backend's Lua (fakeredis)
    r"\s*script: [0-9a-f]{40}, on @user_script:\d+\.?"
    r"|@?user_script:[\d?]+:\s*"
    r"|\[string \"[^\"]*\"\]:\d+:\s*"
    r"|\s*stack traceback:.*"
    r"|Error running script \(call to f_[0-9a-f]{40}\):\s*",
    re.DOTALL,
)


def script_free(text: str) -> str:
    """A Redis script error without the script's SHA and ``user_script:NNN`` locations (internal details)."""
    return _SCRIPT_LOCATION.sub(" ", text).strip()


class redis_errors:  # noqa: N801 - a context manager used like the function it replaced
    """Translate redis-py exceptions raised inside the block into the package's errors, naming ``operation`` and
    ``key``. A class rather than a ``@contextmanager`` generator: it wraps every Redis call of both transports."""

    __slots__ = ("key", "operation")

    def __init__(self, operation: str, key: str | None) -> None:
        self.operation = operation
        self.key = key

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: Any) -> Literal[False]:
        if exc is None or isinstance(exc, CompozyNbError) or not isinstance(exc, _TRANSLATED):
            return False
        raise _translated(exc, self.operation, self.key) from None


_TRANSLATED: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, *UNAVAILABLE)  # RedisClusterException too


def _translated(exc: BaseException, operation: str, key: str | None) -> CompozyNbError:
    if isinstance(exc, UNAVAILABLE):
        return BackendError(f"Redis unavailable during {operation}: {exc}", operation=operation, key=key)
    if isinstance(exc, redis.exceptions.ResponseError):
        text = script_free(str(exc))
        if text.startswith("FOREIGN_DATA") or "FOREIGN_DATA" in text[:40]:
            return ForeignDataError(text, operation=operation, key=key)
        if isinstance(exc, redis.exceptions.ReadOnlyError) or "write against a read only replica" in text:
            return BackendError(
                f"Redis is a read-only replica: {operation} cannot write there (nothing was written); "
                "connect to the primary",
                operation=operation,
                key=key,
                reason="read_only_replica",
            )
        if text.startswith("OOM") or "used memory > 'maxmemory'" in text:
            return BackendError(
                f"Redis is out of memory (maxmemory reached) during {operation}: nothing was written",
                code=ErrorCode.BACKEND_OUT_OF_MEMORY,
                operation=operation,
                key=key,
            )
        if isinstance(exc, redis.exceptions.NoPermissionError) or "NOPERM" in text or "can't run this command" in text:
            return MemoryOperationError(
                f"{operation} failed: the Redis user may not run a command it needs ({text}); grant the commands "
                "listed under 'ACL user' in docs/deployment/memory-tasks-rollout.md",
                operation=operation,
                key=key,
            )
        if "INVALID_ARGUMENT" in text:
            detail = text.split("INVALID_ARGUMENT", 1)[1].strip()
            return MemoryOperationError(f"{operation} failed: {detail}", operation=operation, key=key)
        if "LIMIT_EXCEEDED" in text:
            detail = text.split("LIMIT_EXCEEDED", 1)[1].strip()
            return LimitExceededError(detail, operation=operation, key=key)
        if "WRONGTYPE" in text:
            return MemoryOperationError(
                f"the Redis key for memory {key!r} holds another type of value: {text}",
                operation=operation,
                key=key,
            )
        return MemoryOperationError(f"{operation} failed: {text}", operation=operation, key=key)
    return BackendError(f"Redis error during {operation}: {exc}", operation=operation, key=key)
