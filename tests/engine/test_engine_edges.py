"""The memory engine at its edges (issue 10): failed calls write nothing, durations are bounded at load, every
operation works at 100,000 messages, a lone surrogate in a key is INVALID_KEY everywhere, a read-only replica
or a full Redis is reported as such, rewrites by Compozy that keep the list length are noticed, and keys
Compozy would refuse are warned about.

Real redis-server everywhere (the fixtures of tests/conftest.py, plus servers of their own for the replica
and maxmemory cases).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from compozy_nb import Project
from compozy_nb.backends import ConnectOptions, connect
from compozy_nb.cli import main
from compozy_nb.errors import BackendError, ConfigError, InvalidKeyError, MemoryOperationError
from compozy_nb.memory.keys import KeyLayout, compozy_key_warning, key_template_warning
from compozy_nb.memory.store import Scripts
from compozy_nb.testing import RedisServer, free_port, need_redis

pytestmark = [pytest.mark.redis]

REPO_ROOT = Path(__file__).resolve().parents[2]
RESOURCES = """
resource: memory
id: chat
type: buffer
persistence: {ttl: 24h}
---
resource: memory
id: lru
type: message_count_based
max_messages: 200000
archive_max_messages: 200000
flushing: {type: lru}
"""


def open_project(url: str, name: str = "edges") -> Project:
    project = Project(name)
    project.use_backend(connect(url))
    project.add_yaml(RESOURCES)
    return project


def snapshot(client: redis.Redis, layout: KeyLayout) -> dict[str, Any]:
    """Every key of an instance with its type, value and whether it expires: what "nothing was written" compares."""
    state: dict[str, Any] = {}
    for key in client.scan_iter(match=f"{layout.base}*"):
        kind = cast(bytes, client.type(key)).decode()
        value: Any = {
            "list": client.lrange(key, 0, -1) if kind == "list" else None,
            "hash": client.hgetall(key) if kind == "hash" else None,
            "set": sorted(client.smembers(key)) if kind == "set" else None,
            "zset": client.zrange(key, 0, -1, withscores=True) if kind == "zset" else None,
            "stream": client.xrange(key) if kind == "stream" else None,
        }[kind]
        state[key.decode()] = (kind, value, client.pttl(key) > 0)
    return state


# ------------------------------------------------------------------------------------------ item 2: bounds
@pytest.mark.parametrize(
    ("ttl", "reason"),
    [
        ("100000000000h", "longer than the maximum"),
        (".inf", "not a finite number"),
        ("-.inf", "not a finite number"),
        (".nan", "not a finite number"),
        ("1" * 400, "not a finite number"),
        ("'" + "1" * 400 + "'", "not a finite number"),
        ("500us", "shorter than 1ms"),
        ("1ns", "shorter than 1ms"),
        ("true", "invalid duration"),
        ("false", "invalid duration"),
        ("'1e999'", "invalid duration"),
        ("-5", "negative"),
    ],
)
def test_unbounded_durations_are_refused_at_load(tmp_path: Path, ttl: str, reason: str) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "compozy.yaml").write_text("name: bounds\nredis: {url: 'embedded://bounds'}\n")
    (tmp_path / "memory" / "chat.yaml").write_text(
        f"resource: memory\nid: chat\ntype: buffer\npersistence:\n  ttl: {ttl}\n"
    )
    with pytest.raises(ConfigError) as caught:
        Project.load(tmp_path)
    assert caught.value.code == "INVALID_CONFIG"
    assert "chat.yaml:5" in str(caught.value) and "persistence.ttl" in str(caught.value)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "field", ["max_messages", "max_tokens", "archive_max_messages", "max_message_bytes", "expiration: 1ns\n#"]
)
def test_out_of_range_limits_are_refused_at_load(field: str) -> None:
    line = field if ":" in field else f"{field}: {'9' * 400}"
    with pytest.raises(ConfigError):
        Project("bounds").add_yaml(f"resource: memory\nid: chat\ntype: buffer\n{line}\n")


def test_the_longest_allowed_ttl_stores_and_expires_in_100_years(redis_url: str) -> None:
    project = Project("bounds")
    project.use_backend(connect(redis_url))
    project.add_yaml("resource: memory\nid: chat\ntype: buffer\npersistence: {ttl: 36500d}\n")
    memory = project.memory("chat", key="long")
    assert memory.append("kept")["total_count"] == 1
    pttl = redis.Redis.from_url(redis_url).pttl(memory.layout.base)
    assert 36499 * 86400 * 1000 < pttl <= 36500 * 86400 * 1000


BAD_ARGUMENTS: dict[str, tuple[str, list[Any]]] = {
    # script: (the arguments, with one bad value)
    "append:ttl in exponent form": (
        "append",
        ["op1", "append\t1e+17\t0\t0\t1000\t0", 1, '{"role":"user"}', 3, "i1", "user"],
    ),
    "append:huge ttl": ("append", ["op1", f"append\t{10**17}\t0\t0\t1000\t0", 1, '{"role":"user"}', 3, "i1", "user"]),
    "append:negative limit": ("append", ["op1", "append\t0\t-1\t0\t1000\t0", 1, '{"role":"user"}', 3, "i1", "user"]),
    "append:bad mode": ("append", ["op1", "upsert\t0\t0\t0\t1000\t0", 1, '{"role":"user"}', 3, "i1", "user"]),
    "append:config with a missing field": (
        "append",
        ["op1", "append\t0\t0\t1000\t0", 1, '{"role":"user"}', 3, "i1", "user"],
    ),
    "append:short batch": ("append", ["op1", "append\t0\t0\t0\t1000\t0", 2, '{"role":"user"}', 3, "i1", "user"]),
    "append:bad tokens": ("append", ["op1", "append\t0\t0\t0\t1000\t0", 1, '{"role":"user"}', "nan", "i1", "user"]),
    "append:empty id": ("append", ["op1", "replace\t0\t0\t0\t1000\t0", 1, '{"role":"user"}', 3, "", "user"]),
    "append:bad track": ("append", ["op1", "replace\t0\t0\t0\t1000\tyes", 1, '{"role":"user"}', 3, "i1", "user"]),
    "append:huge limit": ("append", ["op1", f"append\t0\t{2**53}\t0\t1000\t0", 1, '{"role":"user"}', 3, "i1", "user"]),
    "flush:ttl": ("flush", ["op1", "inf", 1000, "2026-01-01T00:00:00Z", "", 0, "", "0", 0]),
    "flush:count": ("flush", ["op1", 0, 1000, "2026-01-01T00:00:00Z", "", 0, "", "0", 5, "x"]),
    "flush:summary without id": ("flush", ["op1", 0, 1000, "2026-01-01T00:00:00Z", '{"role":"system"}', 3, "", "0", 0]),
    "clear:ttl": ("clear", ["", "1e+17"]),
    "clear:backup outside the instance": ("clear", ["compozy:edges:memory:other", 0]),
    "adopt:count": ("adopt", [3, "a", "b", 1, "i", "user"]),
    "adopt:tokens": ("adopt", [1, "a", "b", "-4", "i", "user"]),
    "read:mode": ("read", ["scan", 0, -1, "1", 1]),
    "read:now": ("read", ["range", 0, -1, "1", "1.5e12"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_a_script_given_a_bad_argument_writes_nothing(redis_url: str, case: str) -> None:
    project = open_project(redis_url)
    memory = project.memory("lru", key="conv:bad-args")
    memory.append([{"role": "user", "content": f"message {i}"} for i in range(5)])
    memory.read()  # an access record
    client = redis.Redis.from_url(redis_url)
    before = snapshot(client, memory.layout)
    script, args = BAD_ARGUMENTS[case]
    with pytest.raises(MemoryOperationError) as caught:
        Scripts(client).run(script, memory.layout.all_keys, args, operation="test", key=memory.key)
    assert "is not valid (nothing was written)" in str(caught.value)
    assert snapshot(client, memory.layout) == before


def test_writes_over_garbled_event_counters_store_once_and_count(redis_url: str) -> None:
    """A metadata counter another tool garbled made an evicting append's (a write's, a flush's) last HINCRBY fail
    after the change was stored (a failed call that wrote); the counters are now set in the same HSET as the others."""
    project = Project("edges")
    project.use_backend(connect(redis_url))
    project.add_yaml("resource: memory\nid: small\ntype: message_count_based\nmax_messages: 3\n")
    memory = project.memory("small", key="conv:garbled")
    memory.append([{"role": "user", "content": f"message {i}"} for i in range(3)])
    client = redis.Redis.from_url(redis_url)
    client.hset(memory.layout.metadata, "evicted_count", "not a number")
    out = memory.append({"role": "user", "content": "one more"})
    assert (out["appended"], out["evicted"], out["total_count"]) == (1, 1, 3)
    assert [m["content"] for m in memory.read()["messages"]] == ["message 1", "message 2", "one more"]
    assert memory.stats()["evicted_count"] == 1
    memory.append({"role": "user", "content": "and another"})
    assert memory.stats()["evicted_count"] == 2
    client.hset(memory.layout.metadata, "evicted_count", "garbled again")
    written = memory.write([{"role": "user", "content": f"rewrite {i}"} for i in range(5)])  # 2 dropped: evicted
    assert (written["success"], written["total_count"], written["evicted"]) == (True, 3, 2), written
    assert [m["content"] for m in memory.read()["messages"]] == ["rewrite 2", "rewrite 3", "rewrite 4"]
    assert memory.stats()["evicted_count"] == 2
    client.hset(memory.layout.metadata, "flush_count", "garbled too")
    flushed = memory.flush(force=True)
    assert flushed["success"] and flushed["flushed_count"] >= 1, flushed
    assert memory.stats()["flush_count"] == 1


# ------------------------------------------------------------------------------------------ item 8: 100,000 messages
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_operation_works_at_100000_messages(redis_url: str) -> None:
    size = 100_000
    project = Project("edges")
    project.use_backend(connect(redis_url, options=ConnectOptions(socket_timeout=300)))  # a shared, loaded machine
    project.add_yaml(RESOURCES)
    memory = project.memory("lru", key="conv:large")
    client = redis.Redis.from_url(redis_url)

    written = memory.write([{"id": f"w{i}", "content": f"m {i}"} for i in range(size)])  # one script call
    assert (written["count"], written["total_count"]) == (size, size)
    appended = memory.append([{"id": f"a{i}", "content": f"n {i}"} for i in range(size)])  # explicit ids, non-empty
    assert (appended["appended"], appended["total_count"], appended["duplicates"]) == (size, 2 * size, 0)
    again = memory.append([{"id": f"a{i}", "content": f"n {i}"} for i in range(size)])  # every id already stored
    assert (again["appended"], again["duplicates"]) == (0, size)

    read = memory.read()  # records 200,000 access times
    assert read["count"] == 2 * size and "warnings" not in read
    assert client.zcard(memory.layout.access) == 2 * size
    budget = memory.read(max_tokens=50_000)
    assert 0 < budget["count"] < 2 * size and budget["token_count"] <= 50_000

    stats = memory.stats()
    assert (stats["message_count"], stats["role_distribution"]) == (2 * size, {"user": 2 * size})
    assert memory.health()["message_count"] == 2 * size

    flushed = memory.flush(force=True)
    assert flushed["flushed_count"] > size // 10
    remaining = 2 * size - flushed["flushed_count"]
    assert client.llen(memory.layout.base) == remaining == flushed["message_count"]
    assert client.scard(memory.layout.ids) == remaining and client.zcard(memory.layout.access) == remaining

    cleared = memory.clear(confirm=True, backup=True)
    assert cleared["messages_cleared"] == remaining and client.llen(memory.layout.base) == 0
    assert cleared["backup_key"] is not None
    restored = memory.restore(cleared["backup_key"])
    assert restored["restored"] == remaining == client.scard(memory.layout.ids)

    deleted = memory.delete()
    assert deleted["messages_deleted"] == remaining
    assert snapshot(client, memory.layout) == {}


# ------------------------------------------------------------------------------------------ item 9: surrogates
SURROGATE_KEY = "k\ud800"


def test_a_lone_surrogate_in_a_key_is_invalid_key_from_python() -> None:
    project = open_project(f"embedded://{uuid.uuid4().hex}")
    call: Callable[[], object]
    for call in (
        lambda: project.memory("chat", key=SURROGATE_KEY),
        lambda: project.memory("chat", key="conv:{{.u}}", u="x\udfff"),
    ):
        with pytest.raises(InvalidKeyError) as caught:
            call()
        assert caught.value.code == "INVALID_KEY"
        json.dumps(caught.value.to_dict(), ensure_ascii=False).encode("utf-8")  # printable and encodable


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient.")
def test_a_lone_surrogate_in_a_key_is_invalid_key_over_http() -> None:
    from fastapi.testclient import TestClient

    from compozy_nb.server import create_app

    project = Project.load(REPO_ROOT, redis_url=f"embedded://{uuid.uuid4().hex}")
    memory_url = "/api/v0/memory/conversation_memory"
    body = b'{"key": "k\\ud800", "messages": [{"role": "user", "content": "hi"}]}'  # valid JSON
    headers = {"content-type": "application/json"}
    with TestClient(
        create_app(project, api_key=""), base_url="http://localhost", raise_server_exceptions=False
    ) as client:
        for response in (
            client.post(f"{memory_url}/append", content=body, headers=headers),
            client.post(f"{memory_url}/write", content=body, headers=headers),
            client.get(f"{memory_url}/read", params={"key": "k\udcff".encode("utf-8", "surrogateescape")}),
        ):
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "INVALID_KEY"


def test_a_lone_surrogate_in_a_key_is_invalid_key_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = tmp_path / "request.json"
    request.write_text(
        '{"type": "memory", "operation": "append", "memory_ref": "conversation_memory", '
        '"key_template": "k\\ud800", "payload": {"role": "user", "content": "hi"}}'
    )
    code = main(["exec", str(request), "--project", str(REPO_ROOT), "--redis", f"embedded://{uuid.uuid4().hex}"])
    printed = capsys.readouterr()
    assert code == 1 and "INVALID_KEY" in printed.out + printed.err
    assert "Traceback" not in printed.out + printed.err

    proc = subprocess.run(
        [sys.executable, "-m", "compozy_nb.cli", "exec", str(request), "--project", str(REPO_ROOT)],
        capture_output=True,
        text=True,
        env={
            "COMPOZY_REDIS_URL": f"embedded://{uuid.uuid4().hex}",
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO_ROOT),
        },
        timeout=120,
    )
    assert proc.returncode == 1 and "INVALID_KEY" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------ item 15: replica, maxmemory
@pytest.fixture
def replica(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A read-only replica of the session's redis-server, in sync."""
    need_redis()
    own = RedisServer(free_port(), tmp_path, ["--replicaof", "127.0.0.1", str(redis_server.port)])
    own.start()
    client = redis.Redis(port=own.port)
    for _ in range(200):
        if client.info("replication").get("master_link_status") == "up":
            break
        time.sleep(0.05)
    yield own
    own.stop()


def test_a_read_only_replica_refuses_writes_as_backend_unavailable(redis_url: str, replica: RedisServer) -> None:
    open_project(redis_url).memory("lru", key="conv:replica").append([{"content": "one"}, {"content": "two"}])
    redis.Redis.from_url(redis_url).wait(1, 5000)  # replicated
    memory = open_project(replica.url).memory("lru", key="conv:replica")
    for write in (
        lambda: memory.append("three"),
        lambda: memory.write("three"),
        lambda: memory.clear(confirm=True, backup=True),
        lambda: memory.delete(),
    ):
        with pytest.raises(BackendError) as caught:
            write()
        assert caught.value.code == "BACKEND_UNAVAILABLE"
        assert "read-only replica" in str(caught.value) and caught.value.context["reason"] == "read_only_replica"

    stats = memory.stats()  # a list another tool changed is adopted first: a write, refused here
    client = redis.Redis.from_url(redis_url)
    client.rpush(memory.layout.base, b'{"role":"user","content":"pushed by Compozy"}')
    client.wait(1, 5000)
    assert memory.stats()["message_count"] == stats["message_count"] + 1

    health = memory.health()
    assert health["healthy"] is False and "read-only replica" in health["error"]
    assert "Redis is a read-only replica" in health["warnings"]

    read = memory.read()  # an lru read records access times: a write the replica refuses
    assert [m["content"] for m in read["messages"]] == ["one", "two", "pushed by Compozy"]
    assert any("access times were not recorded" in w for w in read["warnings"])
    assert memory.read(max_tokens=1000)["count"] == 3
    assert memory.read(last=1)["messages"][0]["content"] == "pushed by Compozy"


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient.")
def test_a_read_only_replica_is_a_retryable_503_over_http(redis_url: str, replica: RedisServer) -> None:
    from fastapi.testclient import TestClient

    from compozy_nb.server import create_app

    project = Project.load(REPO_ROOT, redis_url=replica.url)
    body = {"key": "conv:http-replica", "messages": [{"role": "user", "content": "hi"}]}
    with TestClient(
        create_app(project, api_key=""), base_url="http://localhost", raise_server_exceptions=False
    ) as client:
        response = client.post("/api/v0/memory/conversation_memory/append", json=body)
    assert response.status_code == 503 and response.headers.get("retry-after")
    error = response.json()["error"]
    assert error["code"] == "BACKEND_UNAVAILABLE" and "read-only replica" in response.json()["message"]


def test_lru_reads_at_maxmemory_return_their_messages(tmp_path: Path) -> None:
    need_redis()
    server = RedisServer(free_port(), tmp_path, ["--maxmemory-policy", "noeviction"])
    server.start()
    try:
        memory = open_project(server.url).memory("lru", key="conv:full")
        memory.append([{"role": "user", "content": f"message {i}"} for i in range(3)])
        client = redis.Redis(port=server.port)
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used // 2)  # full: every write is refused from now on
        read = memory.read()
        assert [m["content"] for m in read["messages"]] == [f"message {i}" for i in range(3)]
        assert any("out of memory" in w for w in read["warnings"])
        assert memory.read(max_tokens=1000)["count"] == 3
        with pytest.raises(BackendError) as caught:
            memory.append("one more")
        assert caught.value.code == "BACKEND_OUT_OF_MEMORY"
        client.config_set("maxmemory", 0)
        assert "warnings" not in memory.read()
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------ item 16: Compozy rewrites
def go_json(role: str, content: str) -> bytes:
    """What Compozy's store writes for one message: json.Marshal(llm.Message{Role, Content}), Go escaping."""
    text = json.dumps({"role": role, "content": content}, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


def compozy_replace(client: redis.Redis, layout: KeyLayout, messages: list[tuple[str, str]], tokens: int) -> None:
    """Compozy's ReplaceMessagesWithMetadata, step by step as its store runs it: DEL the list, RPUSH every element,
    HSET token_count (its content-only token sum) and message_count, PEXPIRE list and metadata with the list's
    previous TTL."""
    ttl = client.pttl(layout.base)
    pipe = client.pipeline(transaction=True)
    pipe.delete(layout.base)
    for role, content in messages:
        pipe.rpush(layout.base, go_json(role, content))
    pipe.hset(layout.metadata, "token_count", tokens)
    pipe.hset(layout.metadata, "message_count", len(messages))
    if ttl > 0:
        pipe.pexpire(layout.base, ttl)
        pipe.pexpire(layout.metadata, ttl)
    pipe.execute()


def compozy_append_and_trim(client: redis.Redis, layout: KeyLayout, message: tuple[str, str], max_len: int) -> None:
    """Compozy's AppendAndTrimWithMetadata for one message: RPUSH, HINCRBY token_count and message_count, LTRIM
    to ``max_len``, HSET message_count to the new length."""
    pipe = client.pipeline(transaction=True)
    pipe.rpush(layout.base, go_json(*message))
    pipe.hincrby(layout.metadata, "token_count", 7)
    pipe.hincrby(layout.metadata, "message_count", 1)
    pipe.ltrim(layout.base, -max_len, -1)
    pipe.execute()
    client.hset(layout.metadata, "message_count", client.llen(layout.base))


def test_a_compozy_write_that_keeps_the_length_is_noticed(redis_url: str) -> None:
    memory = open_project(redis_url).memory("chat", key="conv:rewritten")
    memory.append(
        [
            {"role": "system", "content": "be brief"},
            {"role": "tool", "content": "42"},
            {"role": "user", "content": "hello"},
            {"role": "user", "content": "and more"},
        ]
    )
    assert memory.stats()["role_distribution"] == {"system": 1, "tool": 1, "user": 2}
    client = redis.Redis.from_url(redis_url)
    rewritten = [("assistant", "a <b> & c"), ("assistant", "second"), ("user", "third"), ("assistant", "fourth")]
    compozy_replace(client, memory.layout, rewritten, tokens=9)

    truth = sum(memory.runtime.counter.count_message(r, c) for r, c in rewritten)
    stats = memory.stats()
    assert stats["role_distribution"] == {"assistant": 3, "user": 1}
    assert (stats["message_count"], stats["token_count"]) == (4, truth)
    assert memory.health()["token_count"] == truth
    out = memory.append({"role": "user", "content": "fifth"})
    assert out["total_count"] == 5
    assert [m["content"] for m in memory.read()["messages"]] == [c for _, c in rewritten] + ["fifth"]
    meta = client.hgetall(memory.layout.metadata)
    assert int(meta[b"token_count"]) == sum(int(m["tokens"]) for m in memory.read()["messages"])


def test_a_compozy_append_and_trim_that_keeps_the_length_is_noticed(redis_url: str) -> None:
    memory = open_project(redis_url).memory("chat", key="conv:trimmed")
    memory.append([{"role": "user", "content": f"ours {i}"} for i in range(3)])
    client = redis.Redis.from_url(redis_url)
    compozy_append_and_trim(client, memory.layout, ("assistant", "from Compozy"), max_len=3)

    messages = memory.read()["messages"]
    assert [m["content"] for m in messages] == ["ours 1", "ours 2", "from Compozy"]
    assert memory.stats()["role_distribution"] == {"assistant": 1, "user": 2}
    out = memory.append("after")
    assert out["total_count"] == 4
    assert out["token_count"] == sum(int(m["tokens"]) for m in memory.read()["messages"])


def test_a_compozy_token_count_change_alone_is_noticed(redis_url: str) -> None:
    memory = open_project(redis_url).memory("chat", key="conv:recounted")
    first = memory.append("one")
    client = redis.Redis.from_url(redis_url)
    client.hset(memory.layout.metadata, "token_count", 0)  # Compozy's GetOrInit / recount paths HSET it
    out = memory.append("two")
    assert out["token_count"] == first["token_count"] + memory.runtime.counter.count_message("user", "two")


# ------------------------------------------------------------------------------------------ item 18: Compozy's key rule
def test_keys_compozy_refuses_are_warned_about() -> None:
    assert compozy_key_warning("conv:u1:s1") is None
    assert "Compozy" in (compozy_key_warning("conv:*") or "")
    assert key_template_warning("conv:{{.user_id}}") is None
    assert key_template_warning("conv:{{ .a }}:*") is not None

    memory = open_project(f"embedded://{uuid.uuid4().hex}").memory("chat", key="conv:*")
    health = memory.health()
    assert health["healthy"] is True and any("Compozy's key rule" in w for w in health["warnings"])
    plain = open_project(f"embedded://{uuid.uuid4().hex}").memory("chat", key="conv:1")
    assert not any("Compozy" in w for w in plain.health()["warnings"])


def test_validate_warns_about_key_templates_compozy_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "compozy.yaml").write_text("name: keys\n")
    (tmp_path / "memory" / "chat.yaml").write_text("resource: memory\nid: chat\ntype: buffer\nkey: 'conv:*:{{.u}}'\n")
    assert main(["validate", "--project", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "warning: memory 'chat': key template 'conv:*:{{.u}}' contains '*'" in err
