"""The async path (redis.asyncio) gives the same outputs and the same data as the sync engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from compozy_nb import Project
from compozy_nb.backends import Backend
from compozy_nb.memory.aio import AsyncMemory
from compozy_nb.memory.outputs import AppendOutput

RESOURCE = """
resource: memory
id: chat
type: token_based
max_messages: 5
persistence: {type: redis, ttl: 1h}
privacy_policy: {redact_patterns: ['\\b\\d{3}-\\d{2}-\\d{4}\\b']}
"""


def _project(backend: Backend) -> Project:
    project = Project("aio")
    project.use_backend(backend)
    project.add_yaml(RESOURCE)
    return project


def _strip(out: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in out.items() if k != "ids"}


def test_async_append_and_read_match_sync(backend: Backend) -> None:
    project = _project(backend)
    sync_mem = project.memory("chat", key="sync")
    async_mem = AsyncMemory(project.memory("chat", key="async"))

    async def scenario() -> list[Mapping[str, Any]]:
        outs: list[Mapping[str, Any]] = []
        for i in range(7):
            outs.append(await async_mem.append({"role": "user", "content": f"m{i} ssn 123-45-6789", "id": f"i{i}"}))
        outs.append(await async_mem.append({"role": "user", "content": "dup", "id": "i6"}))
        outs.append(await async_mem.read())
        outs.append(await async_mem.read(last=2))
        outs.append(await async_mem.read(max_tokens=30))
        outs.append(await async_mem.read(archive=True, limit=3))
        await async_mem.client.aclose()
        return outs

    got = asyncio.run(scenario())
    want: list[Mapping[str, Any]] = [
        sync_mem.append({"role": "user", "content": f"m{i} ssn 123-45-6789", "id": f"i{i}"}) for i in range(7)
    ]
    want.append(sync_mem.append({"role": "user", "content": "dup", "id": "i6"}))
    want += [sync_mem.read(), sync_mem.read(last=2), sync_mem.read(max_tokens=30), sync_mem.read(archive=True, limit=3)]
    for got_out, want_out in zip(got, want, strict=True):
        a, b = _strip(dict(got_out)), _strip(dict(want_out))
        a["key"] = b["key"] = "k"
        for out in (a, b):
            for m in out.get("messages", []):
                m.pop("ts"), m.pop("id")
        assert a == b
    raw = backend.client.lrange("compozy:aio:memory:async", 0, -1)
    assert len(raw) == 5 and all(b"123-45-6789" not in r for r in raw)
    assert json.loads(raw[-1])["content"] == "m6 ssn [REDACTED]"


def test_async_write_clear_delete_match_sync(backend: Backend) -> None:
    project = _project(backend)
    sync_mem = project.memory("chat", key="s")
    async_mem = AsyncMemory(project.memory("chat", key="a"))
    messages = [{"role": "user", "content": f"w{i}", "id": f"w{i}"} for i in range(7)]

    async def scenario() -> list[Mapping[str, Any]]:
        outs: list[Mapping[str, Any]] = [
            await async_mem.write(messages),
            await async_mem.clear(confirm=True, backup=True),
        ]
        outs.append(await async_mem.write(messages[:2]))
        outs.append(await async_mem.delete())
        try:
            await async_mem.clear()
        except Exception as exc:
            outs.append({"error": type(exc).__name__})
        await async_mem.client.aclose()
        return outs

    got = asyncio.run(scenario())
    want: list[Mapping[str, Any]] = [sync_mem.write(messages), sync_mem.clear(confirm=True, backup=True)]
    want += [sync_mem.write(messages[:2]), sync_mem.delete()]
    want.append({"error": "ConfirmRequiredError"})
    for got_out, want_out in zip(got, want, strict=True):
        a, b = dict(got_out), dict(want_out)
        a.pop("key", None), b.pop("key", None)
        for out in (a, b):
            if out.get("backup_key"):
                out["backup_key"] = out["backup_key"].rsplit(":backup:", 1)[0].rsplit(":", 1)[0]
        assert a == b
    assert backend.client.exists("compozy:aio:memory:a") == 0


def test_async_appends_run_concurrently_without_loss(backend: Backend) -> None:
    project = _project(backend)
    project.add_yaml(RESOURCE.replace("id: chat", "id: big").replace("max_messages: 5", "max_messages: 1000"))
    mem = AsyncMemory(project.memory("big", key="many"))

    async def scenario() -> list[AppendOutput]:
        outs = await asyncio.gather(*(mem.append(f"message {i}") for i in range(200)))
        await mem.client.aclose()
        return list(outs)

    outs = asyncio.run(scenario())
    assert sum(o["appended"] for o in outs) == 200
    stats = project.memory("big", key="many").stats()
    assert stats["message_count"] == 200
    assert sorted(json.loads(r)["content"] for r in backend.client.lrange("compozy:aio:memory:many", 0, -1)) == sorted(
        f"message {i}" for i in range(200)
    )


def test_async_append_adopts_compozy_data(backend: Backend) -> None:
    project = _project(backend)
    backend.client.rpush("compozy:aio:memory:old", json.dumps({"role": "user", "content": "from compozy"}))
    backend.client.hset("compozy:aio:memory:old:metadata", mapping={"message_count": 1, "token_count": 5})
    mem = AsyncMemory(project.memory("chat", key="old"))

    async def scenario() -> AppendOutput:
        out = await mem.append("hello")
        await mem.client.aclose()
        return out

    out = asyncio.run(scenario())
    assert out["total_count"] == 2
    assert project.memory("chat", key="old").stats()["message_count"] == 2


def test_async_messages_with_scalar_fields_are_stored_as_sync_stores_them(backend: Backend) -> None:
    """Small payloads whose extra fields are numbers, booleans or None are encoded on the event loop (a worker
    thread costs more than the work); a huge int takes the worker thread. Both store what the sync path stores,
    and a NaN is refused with the same error, writing nothing."""
    project = _project(backend)
    project.add_yaml(RESOURCE.replace("id: chat", "id: big").replace("max_messages: 5", "max_messages: 100"))
    payloads: list[Any] = [
        {"role": "user", "content": "hi", "client": 3, "seq": 17, "score": 0.25, "final": False, "note": None},
        [{"role": "user", "content": "a", "n": -(2**63)}, {"role": "assistant", "content": "b", "n": 2**64 - 1}],
        {"role": "user", "content": "big", "n": 2**100},  # beyond 64 bits: encoded in the worker thread
    ]
    sync_mem = project.memory("big", key="s")
    async_mem = AsyncMemory(project.memory("big", key="a"))

    async def scenario() -> str:
        for payload in payloads:
            await async_mem.append(payload)
        try:
            await async_mem.append({"role": "user", "content": "x", "score": float("nan")})
        except Exception as exc:  # compared with the sync path's error below
            error = f"{type(exc).__name__}: {exc}"
        else:
            error = "no error"
        await async_mem.client.aclose()
        return error

    async_error = asyncio.run(scenario())
    for payload in payloads:
        sync_mem.append(payload)
    try:
        sync_mem.append({"role": "user", "content": "x", "score": float("nan")})
    except Exception as exc:
        sync_error = f"{type(exc).__name__}: {exc}"
    assert async_error == sync_error and "NaN" in async_error

    def stored(key: str) -> list[dict[str, Any]]:
        out = []
        for raw in backend.client.lrange(f"compozy:aio:memory:{key}", 0, -1):
            message = json.loads(raw)
            del message["id"], message["ts"]
            out.append(message)
        return out

    assert stored("a") == stored("s")
    assert [m["content"] for m in stored("a")] == ["hi", "a", "b", "big"]
    assert stored("a")[0]["client"] == 3 and stored("a")[3]["n"] == 2**100
