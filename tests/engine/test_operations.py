"""The 8 memory operations on both backends (real redis-server and embedded): output maps, Compozy's Redis
layout, exact counters, token counts, privacy, limits, TTL, read modes, flush strategies, clear/backup/
restore, health, stats, corrupted and Compozy-written data.

Every check reads Redis directly (LRANGE/HGETALL/PTTL ...) next to the operation outputs.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import tiktoken
import yaml

from compozy_nb.backends import Backend, connect
from compozy_nb.errors import (
    BackendError,
    ConfigError,
    ConfirmRequiredError,
    CorruptDataError,
    InvalidKeyError,
    LimitExceededError,
)
from compozy_nb.memory.instance import MemoryInstance
from compozy_nb.project import Project
from compozy_nb.testing import on_transport
from compozy_nb.tokens import ensure_offline_vocab

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_RESOURCE = REPO_ROOT / "memory" / "conversation.yaml"
PROJECT = "ops"
EMAIL = "alice.smith@example.com"
SSN = "123-45-6789"
EMAIL_PATTERN = r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Z|a-z]{2,}\b"
SSN_PATTERN = r"\b\d{3}-\d{2}-\d{4}\b"

# The output maps of instance.py (every one has operation and key).
WRITE_KEYS = {
    "operation",
    "key",
    "success",
    "count",
    "total_count",
    "token_count",
    "evicted",
    "skipped",
    "duplicates",
}
APPEND_KEYS = {
    "operation",
    "key",
    "success",
    "appended",
    "total_count",
    "token_count",
    "evicted",
    "skipped",
    "duplicates",
    "ids",
}
READ_KEYS = {"operation", "key", "messages", "count", "total_count", "has_more", "offset"}
DELETE_KEYS = {"operation", "key", "success", "deleted", "messages_deleted"}
CLEAR_KEYS = {"operation", "key", "success", "messages_cleared", "backup_created", "backup_key"}
RESTORE_KEYS = {
    "operation",
    "key",
    "success",
    "restored",
    "total_count",
    "token_count",
    "evicted",
    "backup_key",
}
FLUSH_KEYS = {
    "operation",
    "key",
    "success",
    "flushed_count",
    "message_count",
    "token_count",
    "summary_generated",
    "dry_run",
    "would_flush",
    "actual_strategy",
    "threshold",
    "usage",
}
FLUSH_PLAN_KEYS = FLUSH_KEYS | {"would_remove", "would_remain"}  # dry run, or nothing to remove
HEALTH_KEYS = {
    "operation",
    "key",
    "healthy",
    "message_count",
    "token_count",
    "actual_strategy",
    "last_flush",
    "redis",
    "warnings",
}
HEALTH_DOWN_KEYS = HEALTH_KEYS | {"error"}
STATS_KEYS = {
    "operation",
    "key",
    "message_count",
    "token_count",
    "max_tokens",
    "max_messages",
    "token_utilization",
    "message_utilization",
    "role_distribution",
    "ttl_seconds",
    "last_flush",
    "flush_count",
    "evicted_count",
    "avg_tokens_per_message",
    "actual_strategy",
}


# ---------------------------------------------------------------------------------------------- helpers
def _s(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


pytestmark = pytest.mark.usefixtures("transport")  # every test on both transports (conftest.py)


def make_memory(backend: Backend, key: str = "chat:1", **fields: Any) -> MemoryInstance:
    """A project with one memory resource ``mem`` built from ``fields``, and its instance at ``key`` (on the
    transport of the running test)."""
    project = Project(PROJECT)
    project.use_backend(backend)
    project.add_yaml(yaml.safe_dump({"resource": "memory", "id": "mem", **fields}, sort_keys=False))
    return on_transport(project.memory("mem", key=key))


def user(content: str, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, **extra}


def raw_list(mem: MemoryInstance) -> list[bytes]:
    return list(mem.backend.client.lrange(mem.layout.base, 0, -1))


def stored(mem: MemoryInstance) -> list[dict[str, Any]]:
    """The messages LIST, decoded, oldest first."""
    return [json.loads(raw) for raw in raw_list(mem)]


def archived(mem: MemoryInstance) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in mem.backend.client.lrange(mem.layout.archive, 0, -1)]


def contents(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages]


def metadata(mem: MemoryInstance) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in mem.backend.client.hgetall(mem.layout.metadata).items()}


def instance_keys(mem: MemoryInstance) -> list[str]:
    """Every Redis key of the instance (messages, metadata, archive, ids, access, backups)."""
    base = mem.layout.base
    names = (_s(k) for k in mem.backend.client.keys(base + "*"))
    return sorted(n for n in names if n == base or n.startswith(base + ":"))


def assert_counters(mem: MemoryInstance) -> None:
    """The metadata hash (and stats) tell the truth: LLEN, the sum of the tokens fields, the roles."""
    messages = stored(mem)
    meta = metadata(mem)
    assert int(meta.get("message_count", 0)) == len(messages) == mem.backend.client.llen(mem.layout.base)
    assert int(meta.get("token_count", 0)) == sum(m["tokens"] for m in messages)
    stats = mem.stats()
    assert stats["message_count"] == len(messages)
    assert stats["token_count"] == sum(m["tokens"] for m in messages)
    assert stats["role_distribution"] == dict(sorted(Counter(m["role"] for m in messages).items()))


def assert_ttl(mem: MemoryInstance, ttl_ms: int) -> None:
    keys = instance_keys(mem)
    assert keys
    for name in keys:
        pttl = mem.backend.client.pttl(name)
        assert 0 < pttl <= ttl_ms, (name, pttl)


@pytest.fixture(scope="module")
def encodings() -> dict[str, tiktoken.Encoding]:
    ensure_offline_vocab()
    return {name: tiktoken.get_encoding(name) for name in ("cl100k_base", "o200k_base")}


def tiktoken_message(enc: tiktoken.Encoding, role: str, content: str) -> int:
    """Compozy's rule: tokens(content) + tokens(role) + 2."""
    return len(enc.encode_ordinary(content)) + len(enc.encode_ordinary(role)) + 2


def cl100k(role: str, content: str) -> int:
    ensure_offline_vocab()
    return tiktoken_message(tiktoken.get_encoding("cl100k_base"), role, content)


# ------------------------------------------------------------------------------------------ seed tasks
SEED_INPUT = {"user_id": "user123", "session_id": "sess456"}
SEED_KEY = "conv:user123:sess456"


@pytest.fixture
def seed_project(backend: Backend) -> Project:
    project = Project("demo")
    project.use_backend(backend)
    project.add_yaml(SEED_RESOURCE.read_text(encoding="utf-8"), source=str(SEED_RESOURCE))
    return project


def seed_task(operation: str, input: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "type": "memory",
        "operation": operation,
        "memory_ref": "conversation_memory",
        "key_template": "conv:{{.user_id}}:{{.session_id}}",
        **extra,
        "input": {**SEED_INPUT, **(input or {})},
    }


def completed(result: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    assert set(result) == {"status", "output"}
    assert result["status"] == "completed"
    output: dict[str, Any] = result["output"]
    assert set(output) == keys
    assert output["key"] == SEED_KEY
    return output


def test_seed_tasks_end_to_end(seed_project: Project) -> None:
    project = seed_project
    mem = on_transport(project.memory("conversation_memory", **SEED_INPUT))
    assert mem.layout.base == f"compozy:demo:memory:{SEED_KEY}"

    # write (the seed's write example, with metadata rendered from the input)
    out = completed(
        project.execute(
            seed_task(
                "write",
                payload={"role": "user", "content": "Hello AI", "metadata": {"user_id": "{{.user_id}}"}},
            )
        ),
        WRITE_KEYS,
    )
    hello = cl100k("user", "Hello AI")
    assert out == {
        "operation": "write",
        "key": SEED_KEY,
        "success": True,
        "count": 1,
        "total_count": 1,
        "token_count": hello,
        "evicted": 0,
        "skipped": 0,
        "duplicates": 0,
    }
    [first] = stored(mem)
    assert first["metadata"] == {"user_id": "user123"}

    # append (the seed's save_interaction)
    out = completed(
        project.execute(
            seed_task(
                "append",
                input={
                    "user_message": "What is Redis?",
                    "ai_response": {"content": "An in-memory data store."},
                    "timestamp": "2024-01-01T00:00:00Z",
                },
                payload=[
                    {"role": "user", "content": "{{.user_message}}", "timestamp": "{{.timestamp}}"},
                    {
                        "role": "assistant",
                        "content": "{{.ai_response.content}}",
                        "timestamp": "{{.timestamp}}",
                    },
                ],
            )
        ),
        APPEND_KEYS,
    )
    question, answer = cl100k("user", "What is Redis?"), cl100k("assistant", "An in-memory data store.")
    assert out["appended"] == 2 and out["total_count"] == 3 and out["success"] is True
    assert out["token_count"] == hello + question + answer
    assert out["evicted"] == out["skipped"] == out["duplicates"] == 0
    assert len(out["ids"]) == 2
    assert [m["id"] for m in stored(mem)[1:]] == out["ids"]
    assert [m["timestamp"] for m in stored(mem)[1:]] == ["2024-01-01T00:00:00Z"] * 2

    # read with read_config
    out = completed(project.execute(seed_task("read", read_config={"limit": 10, "offset": 0})), READ_KEYS)
    assert contents(out["messages"]) == ["Hello AI", "What is Redis?", "An in-memory data store."]
    assert [m["role"] for m in out["messages"]] == ["user", "user", "assistant"]
    assert out["count"] == out["total_count"] == 3 and out["has_more"] is False and out["offset"] == 0

    # stats with stats_config
    out = completed(project.execute(seed_task("stats", stats_config={"include_content": False})), STATS_KEYS)
    total = hello + question + answer
    assert out["message_count"] == 3 and out["token_count"] == total
    assert out["max_tokens"] == 4000 and out["max_messages"] == 100
    assert out["role_distribution"] == {"assistant": 1, "user": 2}
    assert 0 < out["ttl_seconds"] <= 24 * 3600
    assert out["actual_strategy"] == "simple_fifo"

    # health with health_config
    out = completed(
        project.execute(seed_task("health", health_config={"include_stats": True})),
        HEALTH_KEYS | {"usage", "current_tokens"},
    )
    assert out["healthy"] is True and out["message_count"] == 3 and out["token_count"] == total
    assert set(out["redis"]) == {"ping_ms", "version", "maxmemory_policy"}

    # flush with flush_config: far under the 0.8 threshold, nothing happens
    out = completed(
        project.execute(seed_task("flush", flush_config={"dry_run": False, "force": False})), FLUSH_PLAN_KEYS
    )
    assert out["success"] is True and out["flushed_count"] == 0 and out["would_flush"] is False
    assert out["message_count"] == 3 and out["token_count"] == total and out["dry_run"] is False
    assert out["summary_generated"] is False and out["actual_strategy"] == "simple_fifo"
    assert len(stored(mem)) == 3

    # clear with clear_config confirm + backup
    out = completed(project.execute(seed_task("clear", clear_config={"confirm": True, "backup": True})), CLEAR_KEYS)
    assert out["success"] is True and out["messages_cleared"] == 3 and out["backup_created"] is True
    assert out["backup_key"].startswith(f"compozy:demo:memory:{SEED_KEY}:backup:")
    assert stored(mem) == []
    assert mem.backups() == [out["backup_key"]]

    # delete
    out = completed(project.execute(seed_task("delete")), DELETE_KEYS)
    assert out == {
        "operation": "delete",
        "key": SEED_KEY,
        "success": True,
        "deleted": True,
        "messages_deleted": 0,
    }
    assert instance_keys(mem) == []


def test_seed_resource_privacy_on_execute(seed_project: Project) -> None:
    out = seed_project.execute(
        seed_task(
            "append",
            payload=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"mail me at {EMAIL}"},
            ],
        )
    )["output"]
    assert out["skipped"] == 1 and out["appended"] == 1
    mem = seed_project.memory("conversation_memory", **SEED_INPUT)
    assert contents(stored(mem)) == ["mail me at [REDACTED]"]
    assert out["token_count"] == cl100k("user", "mail me at [REDACTED]")


def test_execute_config_blocks_reach_the_operations(backend: Backend) -> None:
    project = Project(PROJECT)
    project.use_backend(backend)
    project.add_yaml(yaml.safe_dump({"resource": "memory", "id": "mem", "max_messages": 4, "key": "u:{{.user_id}}"}))
    body = {"type": "memory", "memory_ref": "mem", "input": {"user_id": "42"}}
    out = project.execute({**body, "operation": "append", "payload": [user(f"m{i}") for i in range(6)]})["output"]
    assert out["key"] == "u:42" and out["evicted"] == 2
    out = project.execute({**body, "operation": "read", "read_config": {"last": 2}})["output"]
    assert contents(out["messages"]) == ["m4", "m5"]
    out = project.execute({**body, "operation": "read", "read_config": {"archive": True}})["output"]
    assert out["archive"] is True and contents(out["messages"]) == ["m1", "m0"]
    budget = cl100k("user", "m5")
    out = project.execute({**body, "operation": "read", "read_config": {"max_tokens": budget}})["output"]
    assert set(out) == READ_KEYS | {"token_count", "max_tokens"}
    assert contents(out["messages"]) == ["m5"] and out["token_count"] == budget
    out = project.execute({**body, "operation": "stats", "stats_config": {"include_content": True}})["output"]
    assert set(out) == STATS_KEYS | {"content_preview"}
    out = project.execute({**body, "operation": "health", "health_config": {"include_stats": False}})["output"]
    assert set(out) == HEALTH_KEYS
    out = project.execute(
        {**body, "operation": "flush", "flush_config": {"strategy": "fifo", "dry_run": True, "force": True}}
    )["output"]
    assert out["dry_run"] is True and out["would_remove"] == 2 and len(stored(project.memory("mem", "u:42"))) == 4
    with pytest.raises(ConfirmRequiredError):
        project.execute({**body, "operation": "clear", "clear_config": {"confirm": False}})
    with pytest.raises(ConfirmRequiredError):
        project.execute({**body, "operation": "clear"})
    assert len(stored(project.memory("mem", "u:42"))) == 4


# ------------------------------------------------------------------------------------------- layout
def test_redis_layout_is_compozys(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10)
    mem.append([user("first"), {"role": "assistant", "content": "second"}])
    mem.append({"role": "tool", "content": "third"})
    assert mem.layout.base == f"compozy:{PROJECT}:memory:chat:1"
    assert mem.layout.metadata == f"compozy:{PROJECT}:memory:chat:1:metadata"
    assert _s(backend.client.type(mem.layout.base)) == "list"
    assert _s(backend.client.type(mem.layout.metadata)) == "hash"
    messages = stored(mem)
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "first"),
        ("assistant", "second"),
        ("tool", "third"),
    ]
    for m in messages:
        assert {"role", "content", "tokens", "id", "ts"} <= set(m)
        datetime.fromisoformat(m["ts"].replace("Z", "+00:00"))
    assert len({m["id"] for m in messages}) == 3
    meta = metadata(mem)
    assert meta["message_count"] == "3"
    assert int(meta["token_count"]) == sum(m["tokens"] for m in messages)
    assert_counters(mem)


# ------------------------------------------------------------------------------------------- tokens
@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        (None, "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4o", "o200k_base"),
    ],
)
def test_token_count_matches_tiktoken(
    backend: Backend, encodings: dict[str, tiktoken.Encoding], model: str | None, encoding: str
) -> None:
    fields: dict[str, Any] = {"max_tokens": 100_000}
    if model:
        fields["token_provider"] = {"provider": "openai", "model": model}
    mem = make_memory(backend, **fields)
    payload = [
        user("naïve café — 東京 🚀 Здравствуйте, мир! 你好世界"),
        {"role": "assistant", "content": "def f(x):\n    return x ** 2  # ünïcödé"},
        {"role": "tool", "content": '{"temperature": 21.5, "city": "Zürich"}'},
        {"role": "system", "content": "<|endoftext|> is plain text here"},
    ]
    out = mem.append(payload)
    enc = encodings[encoding]
    expected = [tiktoken_message(enc, m["role"], m["content"]) for m in payload]
    assert [m["tokens"] for m in stored(mem)] == expected
    assert out["token_count"] == sum(expected)
    # the two encodings really disagree on this text, so the check tells them apart
    other = encodings["o200k_base" if encoding == "cl100k_base" else "cl100k_base"]
    assert expected != [tiktoken_message(other, m["role"], m["content"]) for m in payload]
    assert_counters(mem)


# ------------------------------------------------------------------------------------------ privacy
def _all_values(client: Any) -> dict[str, bytes]:
    """Every key of the server and a byte dump of its value, read with the command of its type."""
    dump: dict[str, bytes] = {}
    for name in client.keys("*"):
        kind = _s(client.type(name))
        if kind == "list":
            parts = client.lrange(name, 0, -1)
        elif kind == "hash":
            parts = [x for kv in client.hgetall(name).items() for x in kv]
        elif kind == "set":
            parts = list(client.smembers(name))
        elif kind == "zset":
            parts = [m for m, _ in client.zrange(name, 0, -1, withscores=True)]
        elif kind == "string":
            parts = [client.get(name)]
        elif kind == "stream":  # the operation log
            parts = [x for _, fields in client.xrange(name) for kv in fields.items() for x in kv]
        else:  # pragma: no cover - we create no other type
            raise AssertionError(f"unexpected type {kind} for {name!r}")
        dump[_s(name)] = b"\n".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)
    return dump


def test_redaction_never_reaches_redis(backend: Backend) -> None:
    mem = make_memory(
        backend,
        max_messages=3,
        archive_max_messages=50,
        flushing={"type": "lru"},
        persistence={"ttl": "1h"},
        privacy_policy={"redact_patterns": [EMAIL_PATTERN, SSN_PATTERN]},
    )
    out = mem.write([user(f"I am {EMAIL}, SSN {SSN}", metadata={"contact": EMAIL, "ids": [SSN]})])
    assert out["count"] == 1
    for i in range(4):  # evictions into the archive
        mem.append([user(f"again {EMAIL} #{i}"), {"role": "assistant", "content": f"noted {SSN}"}])
    mem.read(limit=2)  # access data
    mem.flush(force=True)
    backup_key = mem.clear(confirm=True, backup=True)["backup_key"]
    assert backup_key is not None
    mem.restore(backup_key)
    mem.append(user(f"last {SSN} {EMAIL}"))

    for message in stored(mem) + archived(mem):
        assert EMAIL not in json.dumps(message) and SSN not in json.dumps(message)
        assert "[REDACTED]" in message["content"]
    dump = _all_values(backend.client)
    assert any(":archive" in name for name in dump) and any(":backup:" in name for name in dump)
    for name, data in dump.items():
        assert EMAIL.encode() not in data, name
        assert SSN.encode() not in data, name
    assert stored(mem)[-1]["content"] == "last [REDACTED] [REDACTED]"
    assert_counters(mem)


def test_redaction_covers_every_stored_field(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10, privacy_policy={"redact_patterns": [EMAIL_PATTERN]})
    mem.append(user("see subject", subject=f"mail from {EMAIL}", tags=[EMAIL]))
    for name, data in _all_values(backend.client).items():
        assert EMAIL.encode() not in data, name


@pytest.mark.parametrize("configured", [["SYSTEM", "Tool"], ["system", "tool"]])
def test_non_persistable_roles_are_skipped_case_insensitively(backend: Backend, configured: list[str]) -> None:
    mem = make_memory(backend, max_messages=10, privacy_policy={"non_persistable_message_types": configured})
    out = mem.append(
        [
            {"role": "system", "content": "secret instructions"},
            user("hello"),
            {"role": "tool", "content": "tool output"},
            {"role": "assistant", "content": "hi"},
        ]
    )
    assert out["skipped"] == 2 and out["appended"] == 2 and len(out["ids"]) == 2
    written = mem.write([{"role": "system", "content": "x"}, user("fresh")])
    assert written["skipped"] == 1 and written["total_count"] == 1
    out = mem.append({"role": "tool", "content": "only"})
    assert out["skipped"] == 1 and out["appended"] == 0 and out["total_count"] == 1
    assert [(m["role"], m["content"]) for m in stored(mem)] == [("user", "fresh")]
    for data in _all_values(backend.client).values():
        assert b"secret instructions" not in data and b"tool output" not in data
    assert_counters(mem)


# ------------------------------------------------------------------------------------------- limits
def test_max_messages_enforced_on_every_append(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=3)
    for i in range(6):
        out = mem.append(user(f"m{i}"))
        assert out["total_count"] == min(i + 1, 3)
        assert out["evicted"] == (1 if i >= 3 else 0)
        assert len(raw_list(mem)) <= 3
        assert_counters(mem)
    assert contents(stored(mem)) == ["m3", "m4", "m5"]
    assert contents(mem.read(archive=True)["messages"]) == ["m2", "m1", "m0"]
    out = mem.append([user(f"b{i}") for i in range(5)])  # a batch bigger than the limit
    assert out["evicted"] == 5 and out["total_count"] == 3
    assert contents(stored(mem)) == ["b2", "b3", "b4"]
    assert contents(mem.read(archive=True)["messages"])[:5] == ["b1", "b0", "m5", "m4", "m3"]
    assert_counters(mem)


def test_max_tokens_enforced_on_every_append(backend: Backend) -> None:
    per = cl100k("user", "m0")
    mem = make_memory(backend, max_tokens=3 * per + 1)
    for i in range(6):
        out = mem.append(user(f"m{i}"))
        assert out["token_count"] <= 3 * per + 1
        assert_counters(mem)
    assert contents(stored(mem)) == ["m3", "m4", "m5"]
    assert contents(archived(mem)) == ["m2", "m1", "m0"]


def test_limits_enforced_on_write(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=3)
    mem.append(user("old"))
    out = mem.write([user(f"w{i}") for i in range(5)])
    assert out["total_count"] == 3 and out["evicted"] == 2
    assert contents(stored(mem)) == ["w2", "w3", "w4"]
    assert contents(mem.read(archive=True)["messages"]) == ["w1", "w0"]
    assert_counters(mem)

    per = cl100k("user", "w0")
    mem2 = make_memory(backend, key="chat:2", max_tokens=2 * per)
    out = mem2.write([user(f"w{i}") for i in range(4)])
    assert out["total_count"] == 2 and out["token_count"] == 2 * per
    assert contents(stored(mem2)) == ["w2", "w3"]
    assert_counters(mem2)


def test_system_messages_are_never_evicted(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=3)
    mem.write([user("u0"), {"role": "system", "content": "rules"}, user("u1")])
    mem.append(user("u2"))
    assert contents(stored(mem)) == ["rules", "u1", "u2"]
    mem.append([user("u3"), user("u4")])
    assert contents(stored(mem)) == ["rules", "u3", "u4"]
    assert "rules" not in contents(archived(mem))
    assert_counters(mem)

    sys_tokens = cl100k("system", "rules")
    per = cl100k("user", "u0")
    mem2 = make_memory(backend, key="chat:2", max_tokens=sys_tokens + 2 * per)
    mem2.append([{"role": "system", "content": "rules"}, *[user(f"u{i}") for i in range(5)]])
    assert contents(stored(mem2)) == ["rules", "u3", "u4"]
    assert_counters(mem2)


def _snapshot(mem: MemoryInstance) -> tuple[list[bytes], dict[str, str], list[bytes]]:
    return raw_list(mem), metadata(mem), list(mem.backend.client.lrange(mem.layout.archive, 0, -1))


def test_single_message_over_max_tokens_writes_nothing(backend: Backend) -> None:
    mem = make_memory(backend, max_tokens=50)
    mem.append([user("keep me"), user("and me")])
    before = _snapshot(mem)
    huge = "lorem ipsum " * 100
    for operation in (mem.append, mem.write):
        with pytest.raises(LimitExceededError) as info:
            operation([user("small"), user(huge)])
        assert info.value.code == "LIMIT_EXCEEDED"
        assert _snapshot(mem) == before
    assert_counters(mem)


def test_append_system_message_to_system_only_memory_is_refused(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=2)
    mem.append([{"role": "system", "content": "s1"}, {"role": "system", "content": "s2"}])
    before = _snapshot(mem)
    with pytest.raises(LimitExceededError) as info:
        mem.append({"role": "system", "content": "s3"})
    assert info.value.code == "LIMIT_EXCEEDED"
    assert _snapshot(mem) == before


@pytest.mark.parametrize("limit", ["max_messages", "max_tokens"])
def test_append_user_message_to_system_only_memory_is_refused(backend: Backend, limit: str) -> None:
    system = [{"role": "system", "content": "s1"}, {"role": "system", "content": "s2"}]
    value = 2 if limit == "max_messages" else sum(cl100k(m["role"], m["content"]) for m in system)
    limits: dict[str, Any] = {limit: value}
    mem = make_memory(backend, **limits)
    mem.append(system)
    before = _snapshot(mem)
    with pytest.raises(LimitExceededError) as info:
        mem.append(user("hello"))
    assert info.value.code == "LIMIT_EXCEEDED"
    assert _snapshot(mem) == before


def test_archive_max_messages_caps_the_archive(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=1, archive_max_messages=2)
    for i in range(5):
        mem.append(user(f"m{i}"))
    assert contents(stored(mem)) == ["m4"]
    assert contents(archived(mem)) == ["m3", "m2"]
    out = mem.read(archive=True)
    assert out["total_count"] == 2 and contents(out["messages"]) == ["m3", "m2"]

    none = make_memory(backend, key="chat:2", max_messages=1, archive_max_messages=0)
    none.append([user("a"), user("b")])
    assert not backend.client.exists(none.layout.archive)


# ---------------------------------------------------------------------------------------------- TTL
def test_ttl_on_every_key_after_each_write(backend: Backend) -> None:
    hour = 3_600_000
    mem = make_memory(backend, max_messages=3, flushing={"type": "lru"}, persistence={"ttl": "1h"})
    mem.append([user("a"), user("b")])
    assert_ttl(mem, hour)
    mem.write([user(f"w{i}") for i in range(5)])  # evicts into the archive
    assert backend.client.exists(mem.layout.archive)
    assert_ttl(mem, hour)
    mem.read(limit=2)  # access data
    assert backend.client.exists(mem.layout.access)
    assert_ttl(mem, hour)
    mem.append(user("c"))
    assert_ttl(mem, hour)
    assert mem.flush(force=True)["flushed_count"] > 0
    assert_ttl(mem, hour)
    backup_key = mem.clear(confirm=True, backup=True)["backup_key"]
    assert backup_key in instance_keys(mem)
    assert_ttl(mem, hour)
    assert backup_key is not None
    mem.restore(backup_key)
    assert_ttl(mem, hour)
    ttl_seconds = mem.stats()["ttl_seconds"]
    assert ttl_seconds is not None
    assert 0 < ttl_seconds <= 3600


def set_pttl(mem: MemoryInstance, ms: int) -> None:
    """Age every key of the instance: as if its TTL had been set ``ttl - ms`` ago."""
    for name in instance_keys(mem):
        mem.backend.client.pexpire(name, ms)


def pttls(mem: MemoryInstance) -> dict[str, int]:
    """The TTL left of each key of the instance but the operation log (which has its own TTL setting)."""
    client = mem.backend.client
    return {name.rsplit(":", 1)[-1]: int(client.pttl(name)) for name in instance_keys(mem) if name != mem.layout.log}


def test_append_refreshes_the_ttl_once_more_than_its_slack_has_run(backend: Backend) -> None:
    # an append re-expires the keys when more than min(1 % of the TTL, 1 min) of it has run (36 s of 1 h): a busy
    # memory re-expires them about once a minute instead of with every message, and still expires between
    # TTL - 1 min and TTL after its last write
    hour = 3_600_000
    mem = make_memory(backend, max_messages=2, persistence={"ttl": "1h"})
    mem.append([user("a"), user("b")])
    set_pttl(mem, hour - 30_000)  # set 30 s ago: within the slack
    mem.append(user("c"))  # evicts "a" (creating the archive, which gets the list's TTL)
    assert len(pttls(mem)) == 4 and all(hour - 45_000 < ms <= hour - 30_000 for ms in pttls(mem).values()), pttls(mem)
    set_pttl(mem, hour - 40_000)  # set 40 s ago: beyond the slack
    mem.append(user("d"))
    assert all(hour - 10_000 < ms <= hour for ms in pttls(mem).values()), pttls(mem)


def test_keys_created_between_refreshes_expire_with_the_list(backend: Backend) -> None:
    # between two refreshes, a key the append creates gets the list's TTL: the archive (first eviction) and the
    # ids set (re-created by SADD after Redis evicted it under maxmemory, or a hand DEL); a list emptied by the
    # eviction and pushed again is re-expired in full
    hour = 3_600_000
    mem = make_memory(backend, max_messages=2, persistence={"ttl": "1h"})
    mem.append([user("a"), user("b")])
    assert not mem.backend.client.exists(mem.layout.archive)
    mem.backend.client.delete(mem.layout.ids)
    set_pttl(mem, hour - 10_000)
    mem.append(user("c"))  # evicts "a": creates the archive and the ids set
    assert set(pttls(mem)) == {mem.layout.base.rsplit(":", 1)[-1], "metadata", "archive", "ids"}
    assert all(hour - 25_000 < ms <= hour - 10_000 for ms in pttls(mem).values()), pttls(mem)
    assert mem.backend.client.smembers(mem.layout.ids) == {m["id"].encode() for m in stored(mem)[1:]}

    single = make_memory(backend, key="chat:single", max_messages=1, persistence={"ttl": "1h"})
    single.append(user("x"))
    set_pttl(single, hour - 10_000)
    single.append(user("y"))  # evicts the only message: the list is emptied, then pushed again
    assert contents(stored(single)) == ["y"]
    assert all(hour - 5_000 < ms <= hour for ms in pttls(single).values()), pttls(single)


def test_a_shorter_ttl_applies_at_the_next_append(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10, persistence={"ttl": "1h"})
    mem.append(user("a"))
    shorter = make_memory(backend, max_messages=10, persistence={"ttl": "10m"})
    shorter.append(user("b"))
    assert all(0 < ms <= 600_000 for ms in pttls(shorter).values()), pttls(shorter)


@pytest.mark.parametrize("ttl", ["0", 0])
def test_ttl_zero_means_no_expiry(backend: Backend, ttl: Any) -> None:
    mem = make_memory(backend, max_messages=2, flushing={"type": "lru"}, persistence={"ttl": ttl})
    mem.append([user(f"m{i}") for i in range(4)])
    mem.read()
    mem.flush(force=True)
    mem.clear(confirm=True, backup=True)
    mem.append(user("after"))
    keys = instance_keys(mem)
    assert len(keys) >= 4
    for name in keys:
        assert backend.client.pttl(name) == -1, name
    assert mem.stats()["ttl_seconds"] is None


# --------------------------------------------------------------------------------------------- read
@pytest.fixture
def seven(backend: Backend) -> MemoryInstance:
    mem = make_memory(backend, max_messages=100)
    mem.append([user(f"m{i}") for i in range(7)])
    return mem


def test_read_all_and_pagination(seven: MemoryInstance) -> None:
    out = seven.read()
    assert set(out) == READ_KEYS
    assert contents(out["messages"]) == [f"m{i}" for i in range(7)]
    assert (out["count"], out["total_count"], out["has_more"], out["offset"]) == (7, 7, False, 0)
    pages = [seven.read(limit=3, offset=o) for o in (0, 3, 6, 10)]
    assert [contents(p["messages"]) for p in pages] == [["m0", "m1", "m2"], ["m3", "m4", "m5"], ["m6"], []]
    assert [p["has_more"] for p in pages] == [True, True, False, False]
    assert [p["offset"] for p in pages] == [0, 3, 6, 10]
    assert all(p["total_count"] == 7 for p in pages)
    assert seven.read(limit=0)["messages"] == []


def test_read_last(seven: MemoryInstance) -> None:
    out = seven.read(last=2)
    assert contents(out["messages"]) == ["m5", "m6"]
    assert (out["offset"], out["has_more"], out["total_count"]) == (5, True, 7)
    out = seven.read(last=50)
    assert contents(out["messages"]) == [f"m{i}" for i in range(7)] and out["has_more"] is False
    assert seven.read(last=0)["messages"] == []


def test_read_token_budget(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=100)
    texts = ["tiny", "a much longer message " * 8, "small one", "small two"]
    mem.append([user(t) for t in texts])
    tokens = [m["tokens"] for m in stored(mem)]
    # the oldest would fit the rest of the budget, but the long one before it does not: stop there
    budget = tokens[0] + tokens[2] + tokens[3]
    assert tokens[1] > tokens[0]
    out = mem.read(max_tokens=budget)
    assert set(out) == READ_KEYS | {"token_count", "max_tokens"}
    assert contents(out["messages"]) == ["small one", "small two"]
    assert out["token_count"] == tokens[2] + tokens[3] and out["max_tokens"] == budget
    assert out["offset"] == 2 and out["has_more"] is True
    assert contents(mem.read(max_tokens=tokens[3])["messages"]) == ["small two"]
    assert mem.read(max_tokens=tokens[3] - 1)["messages"] == []
    everything = mem.read(max_tokens=sum(tokens))
    assert contents(everything["messages"]) == texts and everything["has_more"] is False


def test_read_archive_newest_first(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=2)
    for i in range(6):
        mem.append(user(f"m{i}"))
    out = mem.read(archive=True)
    assert out["archive"] is True and out["total_count"] == 4
    assert contents(out["messages"]) == ["m3", "m2", "m1", "m0"]
    page = mem.read(archive=True, limit=2, offset=1)
    assert contents(page["messages"]) == ["m2", "m1"] and page["has_more"] is True


def test_reads_record_access_only_for_lru(backend: Backend) -> None:
    for strategy in ("lru", "token_aware_lru", "simple_fifo"):
        mem = make_memory(backend, key=f"acc:{strategy}", max_messages=10, flushing={"type": strategy})
        ids = mem.append([user(f"m{i}") for i in range(4)])["ids"]
        mem.read(limit=2)
        mem.read(last=1)
        scores = [backend.client.zscore(mem.layout.access, i) for i in ids]
        if strategy == "simple_fifo":
            assert not backend.client.exists(mem.layout.access)
        else:
            assert [s is not None for s in scores] == [True, True, False, True]


# -------------------------------------------------------------------------------------- write/append
def test_write_replaces_content_ids_and_counters(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10, flushing={"type": "lru"})
    mem.append([{"role": "system", "content": "s", "id": "a"}, {"role": "assistant", "content": "x", "id": "b"}])
    mem.read()
    out = mem.write([user("fresh", id="c"), user("newer", id="d")])
    assert set(out) == WRITE_KEYS
    assert out["count"] == 2 and out["total_count"] == 2 and out["duplicates"] == 0
    assert [(m["id"], m["content"]) for m in stored(mem)] == [("c", "fresh"), ("d", "newer")]
    assert {_s(m) for m in backend.client.smembers(mem.layout.ids)} == {"c", "d"}
    assert not backend.client.exists(mem.layout.access)
    assert mem.stats()["role_distribution"] == {"user": 2}
    assert_counters(mem)
    # an id that the write replaced is free again
    appended = mem.append(user("again", id="a"))
    assert appended["appended"] == 1 and appended["duplicates"] == 0
    assert_counters(mem)


def test_append_ids_are_idempotent(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10)
    out = mem.append(user("hello", id="msg-1"))
    assert out["ids"] == ["msg-1"] and out["appended"] == 1
    out = mem.append(user("hello", id="msg-1"))
    assert out["duplicates"] == 1 and out["appended"] == 0 and out["total_count"] == 1
    out = mem.append([user("x", id="msg-2"), user("x again", id="msg-2"), user("y")])
    assert out["duplicates"] == 1 and out["appended"] == 2 and len(out["ids"]) == 3
    assert out["ids"][:2] == ["msg-2", "msg-2"]
    assert [m["id"] for m in stored(mem)] == ["msg-1", "msg-2", out["ids"][2]]
    assert contents(stored(mem)) == ["hello", "x", "y"]
    assert_counters(mem)


# -------------------------------------------------------------------------------------------- flush
def test_flush_threshold_force_and_dry_run(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10)  # simple_fifo, threshold 0.8, target 5
    mem.append([user(f"m{i}") for i in range(7)])
    out = mem.flush()
    assert set(out) == FLUSH_PLAN_KEYS
    assert out["flushed_count"] == 0 and out["would_flush"] is False and out["usage"] == 0.7
    assert out["threshold"] == 0.8 and len(raw_list(mem)) == 7

    before = _snapshot(mem)
    out = mem.flush(dry_run=True, force=True)
    assert out["dry_run"] is True and out["would_flush"] is True
    assert (out["would_remove"], out["would_remain"], out["flushed_count"]) == (2, 5, 0)
    assert _snapshot(mem) == before

    out = mem.flush(force=True)
    assert set(out) == FLUSH_KEYS
    assert out["flushed_count"] == 2 and out["message_count"] == 5 and out["would_flush"] is True
    assert contents(stored(mem)) == [f"m{i}" for i in range(2, 7)]
    assert_counters(mem)

    mem.append([user(f"n{i}") for i in range(3)])  # 8 of 10: over the threshold
    dry = mem.flush(dry_run=True)
    assert dry["would_flush"] is True and dry["would_remove"] == 3
    out = mem.flush()
    assert out["flushed_count"] == 3 and out["message_count"] == 5
    assert contents(stored(mem)) == ["m5", "m6", "n0", "n1", "n2"]
    assert contents(archived(mem)) == ["m4", "m3", "m2", "m1", "m0"]
    assert mem.flush(threshold=0.4)["flushed_count"] == 0  # already at 50%
    assert_counters(mem)


def test_flush_simple_fifo_reaches_half_of_each_limit(backend: Backend) -> None:
    per = cl100k("user", "m0")
    mem = make_memory(backend, max_messages=100, max_tokens=10 * per)
    mem.append([{"role": "system", "content": "rules"}, *[user(f"m{i}") for i in range(8)]])
    usage = mem.flush(dry_run=True)["usage"]
    assert usage >= 0.8
    out = mem.flush()
    remaining = stored(mem)
    assert out["token_count"] == sum(m["tokens"] for m in remaining) <= 5 * per
    # minimal: the oldest evicted one would not have fitted
    assert out["token_count"] + per > 5 * per
    assert remaining[0]["content"] == "rules"
    assert contents(remaining[1:]) == [f"m{i}" for i in range(8 - len(remaining) + 1, 8)]
    assert_counters(mem)


def test_flush_lru_keeps_recently_read(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10, flushing={"type": "lru"})
    mem.append([user(f"m{i}") for i in range(9)])
    mem.read(limit=2)  # m0, m1
    mem.read(limit=1, offset=4)  # m4
    out = mem.flush()
    assert out["actual_strategy"] == "lru" and out["flushed_count"] == 4
    assert contents(stored(mem)) == ["m0", "m1", "m4", "m7", "m8"]
    assert sorted(contents(archived(mem))) == ["m2", "m3", "m5", "m6"]
    evicted_ids = {m["id"] for m in archived(mem)}
    assert not evicted_ids & {_s(i) for i in backend.client.smembers(mem.layout.ids)}
    assert_counters(mem)


def test_flush_token_aware_lru(backend: Backend) -> None:
    per = cl100k("user", "m0")
    mem = make_memory(backend, max_tokens=10 * per, flushing={"type": "token_aware_lru"})
    mem.append([user(f"m{i}") for i in range(9)])
    mem.read(limit=1)  # m0 was just used
    out = mem.flush()
    assert out["actual_strategy"] == "token_aware_lru"
    assert out["token_count"] <= 5 * per
    assert contents(stored(mem)) == ["m0", "m5", "m6", "m7", "m8"]
    assert_counters(mem)


def test_flush_strategy_override_and_errors(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10, flushing={"type": "lru"})
    mem.append([user(f"m{i}") for i in range(9)])
    mem.read(limit=1)
    out = mem.flush(strategy="simple_fifo")
    assert out["actual_strategy"] == "simple_fifo"
    assert contents(stored(mem)) == [f"m{i}" for i in range(4, 9)]
    with pytest.raises(ConfigError):
        mem.flush(strategy="hybrid_summary")  # no summary_tokens on this resource
    with pytest.raises(ConfigError):
        mem.flush(strategy="nope")
    assert_counters(mem)


def test_flush_hybrid_summary(backend: Backend) -> None:
    mem = make_memory(
        backend,
        max_messages=10,
        flushing={
            "type": "hybrid_summary",
            "summary_tokens": 80,
            "summarize_threshold": 1.0,
            "summarize_oldest_percent": 0.5,
        },
    )
    mem.append([{"role": "system", "content": "rules"}, *[user(f"m{i}") for i in range(8)]])
    stats = mem.stats()
    assert stats["last_flush"] is None and stats["flush_count"] == 0
    assert mem.health()["last_flush"] is None

    out = mem.flush(force=True)
    assert out["summary_generated"] is True and out["flushed_count"] == 4
    messages = stored(mem)
    assert [m["content"] for m in messages[2:]] == ["m4", "m5", "m6", "m7"]
    assert messages[0]["content"] == "rules"
    summary = messages[1]
    assert summary["role"] == "system" and summary["summary"] is True
    assert summary["summarized_count"] == 4
    assert summary["tokens"] == cl100k("system", summary["content"])
    assert contents(archived(mem)) == ["m3", "m2", "m1", "m0"]
    assert out["message_count"] == 6 and out["token_count"] == sum(m["tokens"] for m in messages)
    stats = mem.stats()
    assert stats["flush_count"] == 1
    assert stats["last_flush"] is not None
    first_flush = datetime.fromisoformat(stats["last_flush"].replace("Z", "+00:00"))
    assert first_flush.tzinfo is not None
    assert mem.health()["last_flush"] == stats["last_flush"]
    assert_counters(mem)

    out = mem.flush(force=True)  # folds the previous summary into the new one
    assert out["summary_generated"] is True
    messages = stored(mem)
    summaries = [m for m in messages if m.get("summary")]
    assert len(summaries) == 1 and summaries[0]["id"] != summary["id"]
    assert summaries[0]["summarized_count"] == 6
    assert contents(messages) == ["rules", summaries[0]["content"], "m6", "m7"]
    assert contents(archived(mem))[:3] == ["m5", "m4", summary["content"]]
    stats = mem.stats()
    assert stats["flush_count"] == 2
    assert stats["last_flush"] is not None
    assert datetime.fromisoformat(stats["last_flush"].replace("Z", "+00:00")) >= first_flush
    assert_counters(mem)


def test_flush_empty_memory(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10)
    cases: tuple[dict[str, Any], ...] = ({}, {"force": True}, {"force": True, "dry_run": True})
    for kwargs in cases:
        out = mem.flush(**kwargs)
        assert out["flushed_count"] == 0 and out["message_count"] == 0 and out["token_count"] == 0
        assert out["would_flush"] is False and out["success"] is True
    assert instance_keys(mem) == []


# -------------------------------------------------------------------------------- clear / backup / delete
def test_clear_requires_confirm(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10)
    mem.append([user("a"), user("b")])
    before = _snapshot(mem)
    with pytest.raises(ConfirmRequiredError) as info:
        mem.clear()
    assert info.value.code == "CONFIRM_REQUIRED"
    with pytest.raises(ConfirmRequiredError):
        mem.clear(confirm=False, backup=True)
    assert _snapshot(mem) == before
    assert mem.backups() == []


def test_clear_backup_and_restore(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10)
    mem.append([{"role": "system", "content": "rules"}, user("a"), {"role": "assistant", "content": "b"}])
    old = raw_list(mem)
    out = mem.clear(confirm=True, backup=True)
    assert set(out) == CLEAR_KEYS
    assert out["messages_cleared"] == 3 and out["backup_created"] is True
    backup_key = out["backup_key"]
    assert backup_key is not None
    assert _s(backend.client.type(backup_key)) == "list"
    assert backend.client.lrange(backup_key, 0, -1) == old
    assert mem.backups() == [backup_key]
    assert raw_list(mem) == [] and metadata(mem).get("message_count", "0") == "0"
    assert mem.read()["messages"] == []
    assert_counters(mem)

    restored = mem.restore(backup_key)
    assert set(restored) == RESTORE_KEYS
    assert restored["restored"] == 3 and restored["total_count"] == 3
    assert restored["token_count"] == sum(json.loads(r)["tokens"] for r in old)
    assert contents(stored(mem)) == ["rules", "a", "b"]
    assert_counters(mem)
    assert mem.stats()["role_distribution"] == {"assistant": 1, "system": 1, "user": 1}

    empty = mem.clear(confirm=True)
    assert empty["backup_created"] is False and empty["backup_key"] is None
    out = mem.clear(confirm=True, backup=True)  # nothing to back up
    assert out["messages_cleared"] == 0 and out["backup_created"] is False and out["backup_key"] is None
    with pytest.raises(InvalidKeyError):
        mem.restore(backup_key + "x")
    with pytest.raises(InvalidKeyError):
        mem.restore("compozy:ops:memory:other:backup:1")


def test_delete_removes_every_key(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=2, flushing={"type": "lru"}, persistence={"ttl": "1h"})
    mem.append([user(f"m{i}") for i in range(4)])  # archive
    mem.read()  # access
    mem.clear(confirm=True, backup=True)  # backup + backups set
    mem.append([user("x"), user("y")])
    mem.read()
    other = make_memory(backend, key="chat:10", max_messages=2)
    other.append(user("neighbour"))
    kinds = {name.rsplit(":", 1)[-1] for name in instance_keys(mem)}
    assert {"metadata", "archive", "ids", "access", "backups"} <= kinds
    assert any(":backup:" in name for name in instance_keys(mem))
    out = mem.delete()
    assert set(out) == DELETE_KEYS
    assert out["deleted"] is True and out["messages_deleted"] == 2
    assert instance_keys(mem) == []
    assert mem.backups() == []
    assert contents(stored(other)) == ["neighbour"]
    out = mem.delete()
    assert out["deleted"] is False and out["messages_deleted"] == 0


# ------------------------------------------------------------------------------------------- health
def test_health(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10)
    mem.append([user("a"), user("b")])
    out = mem.health()
    assert set(out) == HEALTH_KEYS | {"usage", "current_tokens"}
    assert out["healthy"] is True and out["message_count"] == 2
    assert out["token_count"] == sum(m["tokens"] for m in stored(mem))
    assert out["usage"] == 0.2 and out["actual_strategy"] == "simple_fifo" and out["last_flush"] is None
    assert out["redis"] is not None
    assert set(out["redis"]) == {"ping_ms", "version", "maxmemory_policy"}
    assert isinstance(out["redis"]["ping_ms"], float) and out["redis"]["ping_ms"] >= 0
    if backend.kind == "redis":
        assert out["redis"]["version"] == backend.client.info("server")["redis_version"]
        assert out["redis"]["maxmemory_policy"] == "noeviction"
        assert out["warnings"] == []
    assert set(mem.health(include_stats=False)) == HEALTH_KEYS


def test_health_warns_about_allkeys_eviction(redis_url: str) -> None:
    backend = connect(redis_url)
    client = redis.Redis.from_url(redis_url)
    old = _s(client.config_get("maxmemory-policy")["maxmemory-policy"])
    try:
        client.config_set("maxmemory-policy", "allkeys-lru")
        out = make_memory(backend, max_messages=10).health()
        assert out["redis"] is not None
        assert out["healthy"] is True and out["redis"]["maxmemory_policy"] == "allkeys-lru"
        assert len(out["warnings"]) == 1 and "allkeys-lru" in out["warnings"][0]
    finally:
        client.config_set("maxmemory-policy", old)
        backend.close()


@pytest.fixture
def lost_backend(redis_server: Any, tmp_path: Path) -> Iterator[Backend]:
    """A backend connected to a redis-server that is then stopped."""
    from compozy_nb.testing import RedisServer, free_port

    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        backend = connect(server.url)
        memory = make_memory(backend, max_messages=10)
        memory.append(user("hello"))
    finally:
        server.stop()
    yield backend
    backend.close()


def test_health_with_unreachable_redis(lost_backend: Backend) -> None:
    mem = make_memory(lost_backend, max_messages=10)
    out = mem.health()
    assert set(out) == HEALTH_DOWN_KEYS
    assert out["healthy"] is False and out["redis"] is None
    assert out["message_count"] is None and out["token_count"] is None
    assert isinstance(out["error"], str) and out["error"]
    assert out["key"] == "chat:1" and out["warnings"]


# -------------------------------------------------------------------------------------------- stats
def test_stats(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=8, max_tokens=1000, persistence={"ttl": "2h"})
    mem.append(
        [
            {"role": "system", "content": "rules"},
            user("a question"),
            {"role": "assistant", "content": "an answer that is " + "long " * 30},
            user("q2"),
            {"role": "tool", "content": "result"},
        ]
    )
    messages = stored(mem)
    tokens = sum(m["tokens"] for m in messages)
    out = mem.stats()
    assert set(out) == STATS_KEYS
    assert out["message_count"] == 5 and out["token_count"] == tokens
    assert out["max_tokens"] == 1000 and out["max_messages"] == 8
    assert out["token_utilization"] == round(tokens / 1000, 4)
    assert out["message_utilization"] == round(5 / 8, 4)
    assert out["role_distribution"] == {"assistant": 1, "system": 1, "tool": 1, "user": 2}
    assert out["ttl_seconds"] is not None
    assert 0 < out["ttl_seconds"] <= 7200
    assert out["last_flush"] is None and out["flush_count"] == 0 and out["evicted_count"] == 0
    assert out["avg_tokens_per_message"] == round(tokens / 5, 2)
    assert out["actual_strategy"] == "simple_fifo"

    out = mem.stats(include_content=True)
    assert set(out) == STATS_KEYS | {"content_preview"}
    preview = out["content_preview"]
    assert [p["content"] for p in preview["first"]] == ["rules", "a question", preview["first"][2]["content"]]
    assert preview["first"][2]["content"].endswith("...") and len(preview["first"][2]["content"]) <= 80
    assert [(p["role"], p["content"]) for p in preview["last"][1:]] == [("user", "q2"), ("tool", "result")]

    mem.append([user(f"x{i}") for i in range(5)])  # 10 > 8: evictions are counted
    assert mem.stats()["evicted_count"] == 2
    empty = make_memory(backend, key="chat:2", max_messages=3).stats()
    assert empty["message_count"] == 0 and empty["avg_tokens_per_message"] == 0
    assert empty["token_utilization"] is None and empty["ttl_seconds"] is None


# ---------------------------------------------------------------------------------- foreign data
def test_corrupted_element(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10)
    mem.append([user("a"), user("b")])
    backend.client.rpush(mem.layout.base, "this is not json {")
    with pytest.raises(CorruptDataError) as info:
        mem.read()
    error = info.value
    assert error.code == "CORRUPT_DATA"
    assert error.context["key"] == "chat:1" and error.context["position"] == 2
    assert "chat:1" in str(error) and "position 2" in str(error)
    assert contents(mem.read(limit=2)["messages"]) == ["a", "b"]

    out = mem.append(user("c"))  # still works; the counters are rebuilt from the list
    assert out["total_count"] == 4
    meta = metadata(mem)
    assert int(meta["message_count"]) == backend.client.llen(mem.layout.base) == 4
    good = [json.loads(r) for i, r in enumerate(raw_list(mem)) if i != 2]
    assert int(meta["token_count"]) == sum(m["tokens"] for m in good)
    with pytest.raises(CorruptDataError):
        mem.read(last=2)

    assert mem.clear(confirm=True)["messages_cleared"] == 4
    assert mem.read()["messages"] == []
    mem.append(user("fresh"))
    assert contents(mem.read()["messages"]) == ["fresh"]
    assert_counters(mem)


FOREIGN_JSON_FORMS = [  # elements another tool may write: each is read exactly as json.loads reads it
    b' {"role": "user", "content": "spaces around"} ',
    b'\xef\xbb\xbf{"role":"user","content":"a UTF-8 BOM"}',
    '{"role":"user","content":"UTF-16"}'.encode("utf-16"),
    b'{"role":"user","content":"a big int","n":18446744073709551616123}',
    b'{"role":"user","content":"another tool wrote NaN","x":NaN,"y":1e400}',
    b'{"role":"user","content":"lone \\ud800 surrogate"}',
    b'{"role":"user","content":"dup","content":"last wins"}',
]


def test_elements_other_tools_wrote_decode_as_json_loads_does(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=20)
    backend.client.rpush(mem.layout.base, *FOREIGN_JSON_FORMS)
    messages = mem.read()["messages"]
    expected = [json.loads(raw) for raw in FOREIGN_JSON_FORMS]
    assert [m["content"] for m in messages] == [e["content"] for e in expected]
    assert messages[3]["n"] == 18446744073709551616123 and isinstance(messages[3]["n"], int)
    assert math.isnan(messages[4]["x"]) and messages[4]["y"] == math.inf
    assert messages[5]["content"] == "lone \ud800 surrogate" and messages[6]["content"] == "last wins"
    backend.client.rpush(mem.layout.base, b'{"role":"user","content":"x"} trailing')
    with pytest.raises(CorruptDataError) as info:
        mem.read()
    assert info.value.context["position"] == len(FOREIGN_JSON_FORMS)


def _compozy_write(mem: MemoryInstance, messages: list[dict[str, str]]) -> int:
    """What Compozy's engine does: RPUSH plain {role, content} JSON and HSET its two counters."""
    client = mem.backend.client
    for message in messages:
        client.rpush(mem.layout.base, json.dumps(message))
    tokens = sum(cl100k(m["role"], m["content"]) for m in messages)
    client.hset(mem.layout.metadata, mapping={"message_count": len(messages), "token_count": tokens})
    return tokens


COMPOZY_MESSAGES = [
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi! How can I help you today?"},
]


def test_compozy_written_data_is_readable_and_appendable(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10)
    compozy_tokens = _compozy_write(mem, COMPOZY_MESSAGES)
    out = mem.read()
    assert [(m["role"], m["content"]) for m in out["messages"]] == [(m["role"], m["content"]) for m in COMPOZY_MESSAGES]
    assert mem.stats()["message_count"] == 2 and mem.stats()["token_count"] == compozy_tokens

    appended = mem.append(user("and one more"))
    new_tokens = cl100k("user", "and one more")
    assert appended["total_count"] == 3 and appended["token_count"] == compozy_tokens + new_tokens
    meta = metadata(mem)
    assert int(meta["message_count"]) == backend.client.llen(mem.layout.base) == 3
    assert int(meta["token_count"]) == compozy_tokens + new_tokens
    adopted = [json.loads(r) for r in raw_list(mem)[:2]]  # adopted: token counts and ids added
    assert [(m["role"], m["content"]) for m in adopted] == [(m["role"], m["content"]) for m in COMPOZY_MESSAGES]
    assert [m["tokens"] for m in adopted] == [cl100k(m["role"], m["content"]) for m in COMPOZY_MESSAGES]
    assert all(m["id"] for m in adopted)
    assert contents(mem.read()["messages"]) == [m["content"] for m in COMPOZY_MESSAGES] + ["and one more"]


def test_compozy_written_data_counters_after_eviction_and_flush(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=3)
    _compozy_write(mem, COMPOZY_MESSAGES)

    def truth() -> tuple[int, int, dict[str, int]]:
        messages = [json.loads(r) for r in raw_list(mem)]
        tokens = sum(m.get("tokens") or cl100k(m["role"], m["content"]) for m in messages)
        return len(messages), tokens, dict(sorted(Counter(m["role"] for m in messages).items()))

    mem.append([user("one"), user("two")])  # evicts Compozy's first message
    stats = mem.stats()
    assert (stats["message_count"], stats["token_count"], stats["role_distribution"]) == truth()
    mem.flush(force=True)  # removes Compozy's second message
    stats = mem.stats()
    assert (stats["message_count"], stats["token_count"], stats["role_distribution"]) == truth()


def test_compozy_written_data_token_budget(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10)
    _compozy_write(mem, COMPOZY_MESSAGES)
    last = COMPOZY_MESSAGES[-1]
    out = mem.read(max_tokens=cl100k(last["role"], last["content"]))
    assert contents(out["messages"]) == [last["content"]]
    assert mem.read(max_tokens=1)["messages"] == []


def test_hybrid_summary_runs_on_append_over_threshold(backend: Backend) -> None:
    mem = make_memory(
        backend,
        max_messages=10,
        flushing={"type": "hybrid_summary", "summary_tokens": 60, "summarize_threshold": 0.8},
    )
    out = mem.append([user(f"m{i}") for i in range(7)])
    assert set(out) == APPEND_KEYS
    out = mem.append(user("m7"))  # 8 of 10 reaches the threshold
    assert set(out) == APPEND_KEYS | {"summary_flush"}
    assert out["summary_flush"]["summary_generated"] is True
    flushed = out["summary_flush"]["flushed_count"]
    assert flushed >= 2 and out["total_count"] == 8 - flushed + 1
    messages = stored(mem)
    assert len(messages) == out["total_count"] and messages[0]["summary"] is True
    assert out["token_count"] == sum(m["tokens"] for m in messages)
    assert_counters(mem)


@pytest.mark.parametrize(
    "strategy",
    [
        "simple_fifo",
        "lru",
        "token_aware_lru",
        pytest.param(
            "hybrid_summary",
        ),
    ],
)
def test_flush_dry_run_predicts_the_real_flush(backend: Backend, strategy: str) -> None:
    per = cl100k("user", "m0")
    mem = make_memory(
        backend,
        max_messages=10,
        max_tokens=10 * per,
        flushing={"type": strategy, "summary_tokens": 40, "summarize_threshold": 1.0},
    )
    mem.append([user(f"m{i}") for i in range(9)])
    dry = mem.flush(dry_run=True, force=True)
    real = mem.flush(force=True)
    assert real["flushed_count"] == dry["would_remove"] > 0
    assert real["message_count"] == dry["would_remain"] == len(raw_list(mem))
    assert_counters(mem)


# ---------------------------------------------------------------------------------- sharing Redis with Compozy
def _compozy_append(mem: MemoryInstance, message: dict[str, str]) -> None:
    """Compozy's append: RPUSH the plain JSON and HINCRBY its two counters."""
    client = mem.backend.client
    client.rpush(mem.layout.base, json.dumps(message))
    client.hincrby(mem.layout.metadata, "message_count", 1)
    client.hincrby(mem.layout.metadata, "token_count", cl100k(message["role"], message["content"]))


def test_compozy_append_after_adoption_is_adopted_again(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=3)
    mem.append([user("one"), user("two")])
    _compozy_append(mem, {"role": "user", "content": "three from compozy"})
    mem.append([user("four"), user("five"), user("six"), user("seven")])
    assert contents(stored(mem)) == ["five", "six", "seven"]
    assert_counters(mem)
    assert mem.stats()["role_distribution"] == {"user": 3}


def test_ids_of_messages_deleted_by_another_tool_are_forgotten(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=10)
    mem.append(user("first", id="msg-1"))
    backend.client.delete(mem.layout.base, mem.layout.metadata)  # what Compozy's clear/delete does
    mem.append(user("other", id="msg-0"))
    out = mem.append(user("first again", id="msg-1"))
    assert out["duplicates"] == 0 and out["appended"] == 1
    assert contents(stored(mem)) == ["other", "first again"]
    assert_counters(mem)


def test_summaries_are_redacted(backend: Backend) -> None:
    project = Project(PROJECT)
    project.use_backend(backend)
    project.add_yaml(
        """
resource: memory
id: mem
type: message_count_based
max_messages: 10
flushing: {type: hybrid_summary, summary_tokens: 40, summarizer: {provider: python, model: leaky}}
privacy_policy: {redact_patterns: ['\\b[\\w.+-]+@[\\w-]+\\.\\w+\\b']}
"""
    )
    project.llm("leaky")(lambda messages: "User is bob@example.com")
    mem = on_transport(project.memory("mem", key="k"))
    mem.append([user(f"m{i}") for i in range(4)])
    out = mem.flush(force=True)
    assert out["summary_generated"] is True
    assert stored(mem)[0]["content"] == "User is [REDACTED]"
    assert all(b"bob@example.com" not in raw for raw in raw_list(mem))


def test_health_warns_on_volatile_policy_with_ttl(redis_url: str) -> None:
    import redis as redis_py

    from compozy_nb import connect

    admin = redis_py.Redis.from_url(redis_url)
    admin.config_set("maxmemory-policy", "volatile-lru")
    try:
        backend = connect(redis_url)
        with_ttl = make_memory(backend, max_messages=5, persistence={"type": "redis", "ttl": "1h"})
        without = make_memory(backend, key="chat:2", max_messages=5)
        assert any("volatile-lru" in w for w in with_ttl.health()["warnings"])
        assert without.health()["warnings"] == []
    finally:
        admin.config_set("maxmemory-policy", "noeviction")


def test_reads_work_when_redis_is_out_of_memory(redis_url: str) -> None:
    import redis as redis_py

    from compozy_nb import connect

    mem = make_memory(connect(redis_url), max_messages=5)
    mem.append([user("a"), user("b")])
    admin = redis_py.Redis.from_url(redis_url)
    admin.config_set("maxmemory", "1")
    try:
        assert contents(mem.read()["messages"]) == ["a", "b"]
        assert contents(mem.read(last=1)["messages"]) == ["b"]
        with pytest.raises(BackendError) as info:
            mem.append(user("c"))
        assert info.value.code == "BACKEND_OUT_OF_MEMORY"
    finally:
        admin.config_set("maxmemory", "0")
