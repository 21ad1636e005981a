"""Finding stored instances by key pattern with SCAN (every primary of a cluster), never KEYS."""

from __future__ import annotations

from collections.abc import Iterator

from compozy_nb.backends import Backend
from compozy_nb.memory.keys import KeyLayout
from compozy_nb.memory.store import redis_errors


def scan_keys(backend: Backend, project: str, pattern: str = "*", count: int = 500) -> Iterator[str]:
    """Memory keys (not Redis keys) of the message lists matching ``pattern``, in SCAN order (arbitrary).

    ``pattern`` is a glob over memory keys (``conv:u1:*``). Metadata, archive and other auxiliary keys
    are skipped.
    """
    match = KeyLayout.pattern(project, pattern, backend.cluster)
    seen: set[str] = set()
    with redis_errors("scan", pattern):
        for raw in backend.client.scan_iter(match=match, count=count, _type="list"):
            key = _new_instance_key(project, raw, seen)
            if key is not None:
                yield key


async def ascan_keys(backend: Backend, project: str, pattern: str = "*", count: int = 500) -> list[str]:
    """:func:`scan_keys` over ``redis.asyncio`` (every primary of a cluster): the keys, in SCAN order."""
    match = KeyLayout.pattern(project, pattern, backend.cluster)
    seen: set[str] = set()
    keys: list[str] = []
    with redis_errors("scan", pattern):
        async for raw in backend.async_client.scan_iter(match=match, count=count, _type="list"):
            key = _new_instance_key(project, raw, seen)
            if key is not None:
                keys.append(key)
    return keys


def _new_instance_key(project: str, raw: bytes | str, seen: set[str]) -> str | None:
    """The memory key of Redis list ``raw`` when it is a message list not seen yet (recorded in ``seen``)."""
    name = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    if KeyLayout.is_auxiliary(name):
        return None
    key = KeyLayout.instance_key(project, name)
    if key in seen:
        return None
    seen.add(key)
    return key
