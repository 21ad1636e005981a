"""The 8 operations on both transports: ``MemoryInstance`` (sync) and ``AsyncMemory`` (redis.asyncio) run the
same scenario on both backends and must give the same outputs, the same errors and the same data in Redis."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from compozy_nb import OPERATIONS, AsyncMemory, Project
from compozy_nb.backends import Backend, connect
from compozy_nb.errors import CompozyNbError
from compozy_nb.memory.instance import MemoryInstance
from compozy_nb.memory.outputs import AppendOutput, StatsOutput
from compozy_nb.testing import RedisServer, free_port

RESOURCE = {
    "resource": "memory",
    "id": "mem",
    "type": "token_based",
    "max_messages": 10,
    "persistence": {"type": "redis", "ttl": "1h"},
    "flushing": {"type": "hybrid_summary", "summary_tokens": 40, "summarize_threshold": 0.8},
    "privacy_policy": {"redact_patterns": [r"\b\d{3}-\d{2}-\d{4}\b"]},
}
VOLATILE = {"id", "ids", "ts", "ping_ms", "last_flush", "ttl_seconds", "backup_key", "key"}
"""Output fields that differ between two runs (ids, times, keys): compared by presence only."""


def _project(backend: Backend, **fields: Any) -> Project:
    project = Project("transports")
    project.use_backend(backend)
    project.add_yaml(yaml.safe_dump({**RESOURCE, **fields}, sort_keys=False))
    return project


class Transport:
    """Calls an operation by name on one transport and returns its output (or the error's class and code)."""

    def __init__(self, instance: MemoryInstance, kind: str) -> None:
        self.kind = kind
        self.instance = instance
        self.memory: MemoryInstance | AsyncMemory = instance if kind == "sync" else AsyncMemory(instance)
        self.loop = asyncio.new_event_loop() if kind == "async" else None

    def __call__(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        try:
            result = getattr(self.memory, operation)(*args, **kwargs)
            if self.loop is not None:
                result = self.loop.run_until_complete(result)
        except CompozyNbError as exc:
            return {"error": type(exc).__name__, "code": exc.code, "field": exc.context.get("field")}
        return result

    def close(self) -> None:
        if self.loop is not None:
            assert isinstance(self.memory, AsyncMemory)
            self.loop.run_until_complete(self.memory.client.aclose())
            self.loop.close()


@pytest.fixture(params=["sync", "async"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


def _normal(value: Any) -> Any:
    """``value`` with the volatile fields replaced by whether they were set."""
    if isinstance(value, dict):
        return {k: (v is not None) if k in VOLATILE else _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def user(content: str) -> dict[str, Any]:
    return {"role": "user", "content": content}


def scenario(op: Callable[..., Any]) -> list[Any]:
    """Every operation, its main options and its errors, in an order where each output depends on the last."""
    return [
        op("append", [user(f"m{i} ssn 123-45-6789") for i in range(6)]),
        op("read"),
        op("read", last=2),
        op("read", max_tokens=20),
        op("stats"),
        op("stats", include_content=True),
        op("health"),
        op("health", include_stats=False),
        op("flush", dry_run=True, force=True),
        op("flush", strategy="simple_fifo", force=True),
        op("append", [user(f"n{i}") for i in range(4)]),
        op("flush", strategy="lru", force=True),
        op("append", [user(f"o{i}") for i in range(5)]),  # reaches the threshold: the append flushes too
        op("flush", strategy="hybrid_summary", force=True),
        op("flush"),  # under the threshold: nothing to do
        op("read", archive=True, limit=3),
        op("write", [user("w1"), user("w2")]),
        op("clear"),
        op("clear", confirm=True, backup=True),
        op("append", "after clear"),
        op("flush", strategy="nope"),
        op("read", limit=-1),
        op("delete"),
        op("stats"),
        op("health"),
    ]


def _stored(backend: Backend, instance: MemoryInstance) -> list[dict[str, Any]]:
    messages = []
    for key in (instance.layout.base, instance.layout.archive):
        for raw in backend.client.lrange(key, 0, -1):
            message = json.loads(raw)
            messages.append({k: v for k, v in message.items() if k not in VOLATILE})
    return messages


def test_every_operation_gives_the_same_outputs_and_data_on_both_transports(backend: Backend) -> None:
    project = _project(backend)
    runs: dict[str, list[Any]] = {}
    data: dict[str, list[dict[str, Any]]] = {}
    for kind in ("sync", "async"):
        instance = project.memory("mem", key=f"scenario:{kind}")
        op = Transport(instance, kind)
        try:
            runs[kind] = scenario(op)
            # the last write left nothing; replay the middle of the scenario to compare stored data too
            op("append", [user(f"d{i} 123-45-6789") for i in range(9)])
            op("flush", strategy="hybrid_summary", force=True)
        finally:
            op.close()
        data[kind] = _stored(backend, instance)
    assert _normal(runs["async"]) == _normal(runs["sync"])
    assert data["async"] == data["sync"]
    assert any(m.get("summary") for m in data["sync"])
    assert all("123-45-6789" not in json.dumps(m) for m in data["sync"])
    # the scenario did exercise what it claims
    outputs = dict(zip(range(len(runs["sync"])), runs["sync"], strict=True))
    assert outputs[12]["summary_flush"]["summary_generated"] is True
    assert outputs[13]["summary_generated"] is True and outputs[14]["flushed_count"] == 0
    assert outputs[17]["code"] == "CONFIRM_REQUIRED" and outputs[20]["code"] == "INVALID_CONFIG"
    assert outputs[6]["healthy"] is True and outputs[24]["message_count"] == 0


def test_async_memory_has_every_operation_with_the_sync_signature() -> None:
    for operation in OPERATIONS:
        sync_method = getattr(MemoryInstance, operation)
        async_method = getattr(AsyncMemory, operation)
        assert inspect.iscoroutinefunction(async_method), operation
        assert inspect.signature(async_method) == inspect.signature(sync_method), operation


def test_both_transports_adopt_a_list_compozy_wrote(backend: Backend, transport_kind: str) -> None:
    project = _project(backend)
    instance = project.memory("mem", key="compozy:written")
    backend.client.rpush(instance.layout.base, *(json.dumps(user(f"c{i}")) for i in range(4)))
    op = Transport(instance, transport_kind)
    try:
        stats = op("stats")
        health = op("health")
        flushed = op("flush", strategy="simple_fifo", force=True)
    finally:
        op.close()
    assert stats["message_count"] == 4 and stats["token_count"] > 0
    assert health["healthy"] is True and health["message_count"] == 4
    assert flushed["success"] is True
    assert instance.stats()["message_count"] == 4 - flushed["flushed_count"]
    adopted = [json.loads(raw) for raw in backend.client.lrange(instance.layout.base, 0, -1)]
    assert all(m["tokens"] > 0 and m["id"] for m in adopted)  # token counts and ids given on adoption
    assert [m["content"] for m in adopted] == [f"c{i}" for i in range(4)][flushed["flushed_count"] :]


@pytest.fixture
def lost_backend(redis_server: Any, tmp_path: Path) -> Iterator[Backend]:
    """A backend whose redis-server has been stopped."""
    server = RedisServer(free_port(), tmp_path)
    server.start()
    backend = connect(server.url)
    server.stop()
    yield backend
    backend.close()


def test_both_transports_report_unreachable_redis_as_unhealthy(lost_backend: Backend, transport_kind: str) -> None:
    instance = _project(lost_backend).memory("mem", key="lost")
    op = Transport(instance, transport_kind)
    try:
        health = op("health")
        stats = op("stats")
    finally:
        op.close()
    assert health["healthy"] is False and health["redis"] is None and health["warnings"]
    assert stats == {"error": "BackendError", "code": "BACKEND_UNAVAILABLE", "field": None}


def test_project_amemory_is_the_async_transport_of_memory(backend: Backend) -> None:
    project = _project(backend)
    memory = project.amemory("mem", key="via:amemory")
    assert isinstance(memory, AsyncMemory) and memory.key == "via:amemory"

    async def scenario() -> StatsOutput:
        await memory.append("hello")
        out = await memory.stats()
        await memory.client.aclose()
        return out

    assert asyncio.run(scenario())["message_count"] == 1
    assert project.memory("mem", key="via:amemory").read()["messages"][0]["content"] == "hello"


def test_both_transports_log_reads_and_filter_by_role(backend: Backend, transport_kind: str) -> None:
    # regression: the async read never wrote the read entry of ``log.reads: true`` and had no role/time filters
    project = _project(backend, log={"reads": True})
    instance = project.memory("mem", key=f"logged:{transport_kind}")
    op = Transport(instance, transport_kind)
    try:
        op("append", [user("question"), {"role": "assistant", "content": "answer"}, user("thanks")])
        everything = op("read")
        users = op("read", roles=["user"])
        newest_user = op("read", roles="user", last=1)
    finally:
        op.close()
    assert everything["count"] == 3
    assert [m["content"] for m in users["messages"]] == ["question", "thanks"] and users["total_count"] == 2
    assert [m["content"] for m in newest_user["messages"]] == ["thanks"]
    assert [(e["operation"], e.get("count")) for e in instance.log()] == [("append", None), ("read", 3)]


def test_async_memory_works_across_event_loops(backend: Backend) -> None:
    # regression: the in-flight limit was one asyncio.Semaphore per backend; once it had made a call wait
    # (more than 64 in flight) it belonged to that loop, and the next asyncio.run on the backend failed with
    # "bound to a different event loop"
    project = _project(backend, max_messages=1000, flushing={"type": "simple_fifo"})
    memory = project.amemory("mem", key="loops")

    async def burst(tag: str) -> int:
        outs = await asyncio.gather(*(memory.append(f"{tag} {i}") for i in range(150)))
        await memory.client.aclose()
        return sum(out["appended"] for out in outs)

    assert asyncio.run(burst("first")) == 150
    assert asyncio.run(burst("second")) == 150
    assert project.memory("mem", key="loops").stats()["message_count"] == 300


def test_async_memory_needs_no_aclose_between_event_loops(backend: Backend) -> None:
    # regression: one redis.asyncio client per backend, so the second asyncio.run reused connections of the
    # first (closed) loop: RuntimeError "Event loop is closed"
    memory = _project(backend).amemory("mem", key="no-aclose")

    async def append(text: str) -> int:
        return int((await memory.append(text))["total_count"])

    assert [asyncio.run(append(t)) for t in ("one", "two", "three")] == [1, 2, 3]


def test_concurrent_async_calls_share_a_pipeline_and_keep_their_own_results(backend: Backend) -> None:
    # script calls of one event-loop turn go to Redis as one pipeline: each caller still gets its own output or
    # error, and scripts Redis has forgotten (SCRIPT FLUSH) are sent again with EVAL
    project = _project(backend, max_messages=1000, max_tokens=200, flushing={"type": "simple_fifo"})
    memory = project.amemory("mem", key="pipelined")
    too_big = user("word " * 400)  # more tokens than the memory's limit: LIMIT_EXCEEDED, nothing stored

    broken = project.amemory("mem", key="pipelined:broken")
    backend.client.set(broken.instance.layout.base, "not a list")  # the script fails there (WRONGTYPE)

    async def burst() -> list[AppendOutput | BaseException]:
        calls = [memory.append(user(f"m{i}")) for i in range(40)]
        calls.insert(20, memory.append(too_big))
        calls.insert(10, broken.append(user("lost")))
        return await asyncio.gather(*calls, return_exceptions=True)

    backend.client.script_flush()
    outs = asyncio.run(burst())
    errors = [o for o in outs if isinstance(o, BaseException)]
    assert len(errors) == 2 and all(isinstance(e, CompozyNbError) for e in errors)
    assert isinstance(errors[0], CompozyNbError) and isinstance(errors[1], CompozyNbError)  # narrows for mypy
    assert outs[10] is errors[0] and errors[0].context["key"] == "pipelined:broken"  # the script's own error
    assert errors[1].code == "LIMIT_EXCEEDED" and errors[1].context["operation"] == "append"
    assert backend.client.get(broken.instance.layout.base) == b"not a list"
    stored_ids = [json.loads(raw)["id"] for raw in backend.client.lrange(memory.instance.layout.base, 0, -1)]
    appended = [o for o in outs if not isinstance(o, BaseException)]
    assert sorted(stored_ids) == sorted(i for o in appended for i in o["ids"]) and len(stored_ids) == 40
    assert sorted(o["total_count"] for o in appended) == list(range(1, 41))  # one atomic script per call
