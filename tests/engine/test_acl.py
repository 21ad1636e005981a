"""The ACL user of docs/deployment/memory-tasks-rollout.md can run every operation (real redis-server).

Redis checks ACLs for the commands a Lua script calls too, so a command missing from the documented user fails a
write with NOPERM in production only. The test creates the user from the page's own ``ACL SETUSER`` block, starts
from a server that has no script cached (the first call of each script is an ``EVAL``), and runs every operation,
the operation log, a Compozy-written list (adoption) and the LRU access data through it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from compozy_nb import MemoryOperationError, Project
from compozy_nb.backends import connect
from compozy_nb.testing import RedisServer

ROLLOUT = Path(__file__).resolve().parents[2] / "docs" / "deployment" / "memory-tasks-rollout.md"
PASSWORD = "acl-test-password"


def documented_rules() -> list[str]:
    """The rules of the page's ``ACL SETUSER compozy …`` block, the password replaced by the test's."""
    page = ROLLOUT.read_text(encoding="utf-8")
    block = re.search(r"### ACL user\n.*?```text\n(ACL SETUSER compozy .*?)```", page, re.DOTALL)
    assert block is not None, "the ACL SETUSER block of the rollout page"
    words = block.group(1).split()[3:]  # after ACL SETUSER compozy
    assert ">CHANGE-ME" in words
    return [f">{PASSWORD}" if word == ">CHANGE-ME" else word for word in words]


def acl(admin: Any, *words: str) -> None:
    """``ACL <words>`` as redis-cli would send it (redis-py's acl_setuser takes the rules apart)."""
    admin.execute_command("ACL", *words)


@pytest.fixture
def acl_url(redis_server: RedisServer, redis_url: str) -> Iterator[str]:
    """A URL logged in as the documented user, on a server with no script cached."""
    admin = redis.Redis.from_url(redis_url)
    admin.script_flush()
    name = f"compozy-{uuid.uuid4().hex[:8]}"
    acl(admin, "SETUSER", name, "reset", *documented_rules())
    try:
        yield f"redis://{name}:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    finally:
        acl(admin, "DELUSER", name)


RESOURCES = [
    {"resource": "memory", "id": "chat", "type": "buffer", "max_messages": 4, "persistence": {"ttl": "1h"},
     "log": {"reads": True}},
    {"resource": "memory", "id": "lru", "type": "token_based", "max_tokens": 60, "persistence": {"ttl": "1h"},
     "flushing": {"type": "lru"}},
    {"resource": "memory", "id": "summary", "type": "token_based", "max_tokens": 400, "persistence": {"ttl": "1h"},
     "flushing": {"type": "hybrid_summary", "summarize_threshold": 0.5, "summary_tokens": 40}},
]  # fmt: skip


def test_the_documented_acl_user_runs_every_operation(acl_url: str, redis_url: str) -> None:
    project = Project("acl")
    project.use_backend(connect(acl_url))
    for resource in RESOURCES:
        project.add_yaml(yaml.safe_dump(resource, sort_keys=False))
    admin = redis.Redis.from_url(redis_url)

    chat = project.memory("chat", key="user:1")
    assert chat.health()["healthy"] is True
    for i in range(6):  # evictions into the archive
        chat.append({"role": "user", "content": f"message {i}"})
    chat.append([{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}])  # fmt: skip
    assert chat.read(last=2)["messages"][-1]["role"] == "tool"
    assert chat.read(max_tokens=30)["messages"]
    assert chat.read(archive=True)["messages"]
    assert chat.stats()["message_count"] == 4
    chat.write([{"role": "user", "content": "rewritten"}])
    assert chat.flush(force=True)["success"] is True
    backup = chat.clear(confirm=True, backup=True)["backup_key"]
    assert backup is not None and chat.backups() == [backup]
    assert chat.restore(backup)["success"] is True
    events = chat.log()
    assert [event["operation"] for event in events][:2] == ["append", "append"], events[:2]
    assert chat.why(chat.read()["messages"][0]["id"])

    lru = project.memory("lru", key="user:1")
    for i in range(8):
        lru.append({"role": "user", "content": f"lru message number {i}"})
    assert lru.read(limit=2)["messages"] and admin.exists(lru.layout.access)
    lru.flush(force=True)

    summary = project.memory("summary", key="user:1")
    summary.append([{"role": "user", "content": f"a longer message about topic {i} " * 3} for i in range(12)])
    assert summary.flush(force=True)["success"] is True

    compozy = project.memory("chat", key="user:compozy")  # a list Compozy wrote: adopted on first use
    admin.rpush(compozy.layout.base, json.dumps({"role": "user", "content": "from Compozy"}))
    admin.hset(compozy.layout.metadata, mapping={"message_count": 1, "token_count": 3})
    compozy.append({"role": "assistant", "content": "from compozy-nb"})
    assert [m["content"] for m in compozy.read()["messages"]] == ["from Compozy", "from compozy-nb"]

    assert {i["key"] for i in project.instances()} >= {"user:1", "user:compozy"}
    for memory in (chat, lru, summary, compozy):
        assert memory.delete()["success"] is True


def test_a_command_missing_from_the_acl_is_named_as_such(redis_server: RedisServer, redis_url: str) -> None:
    # Redis checks a script's commands one by one: without PEXPIRE the append script is refused at its TTL step,
    # with an error saying what to grant (not a bare "append failed")
    admin = redis.Redis.from_url(redis_url)
    name = f"compozy-{uuid.uuid4().hex[:8]}"
    acl(admin, "SETUSER", name, "reset", *documented_rules(), "-pexpire")
    try:
        project = Project("acl")
        project.use_backend(connect(f"redis://{name}:{PASSWORD}@127.0.0.1:{redis_server.port}/0"))
        project.add_yaml(yaml.safe_dump(RESOURCES[0], sort_keys=False))
        with pytest.raises(MemoryOperationError) as caught:
            project.memory("chat", key="user:2").append("hello")
        assert "may not run a command" in str(caught.value) and "ACL user" in str(caught.value)
        assert "user_script" not in str(caught.value)
    finally:
        acl(admin, "DELUSER", name)
