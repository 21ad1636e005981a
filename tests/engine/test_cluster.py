"""The engine on a real 3-primary Redis Cluster (``redis+cluster://``).

A module-scoped cluster runs a compact version of the engine suite: every operation, every flush strategy,
clear with backup and restore, limits, idempotent appends. It also checks the cluster layout (every key of an
instance in one slot, ``compozy:{project}:memory:{<key>}``), that instances spread over all primaries and that
listing by pattern scans every primary. Clusters of their own (started per test) lose a primary on purpose.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from compozy_nb import Project
from compozy_nb.backends import Backend, ConnectOptions, connect
from compozy_nb.errors import BackendError, ConfirmRequiredError, InvalidKeyError
from compozy_nb.memory.keys import KeyLayout
from compozy_nb.memory.outputs import AppendOutput
from compozy_nb.testing import RedisServer
from tests.cluster import RedisCluster, free_cluster_ports, start_cluster

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

PROJECT = "demo"
RESOURCES = """
resource: memory
id: conv
type: message_count_based
max_messages: 10
archive_max_messages: 1000
---
resource: memory
id: tokens
type: token_based
max_tokens: 120
---
resource: memory
id: unlimited
type: buffer
---
resource: memory
id: fifo
type: message_count_based
max_messages: 10
flushing:
  type: simple_fifo
---
resource: memory
id: lru
type: message_count_based
max_messages: 10
flushing:
  type: lru
---
resource: memory
id: token_lru
type: token_based
max_tokens: 200
flushing:
  type: token_aware_lru
---
resource: memory
id: summary
type: message_count_based
max_messages: 10
flushing:
  type: hybrid_summary
  summary_tokens: 60
"""
FAST = ConnectOptions(connect_timeout=1.0, socket_timeout=2.0, retries=2, backoff_base=0.01, backoff_cap=0.1)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """One 3-primary cluster for the module."""
    yield from start_cluster()


@pytest.fixture
def backend(cluster: RedisCluster) -> Iterator[Backend]:
    """A cluster backend on an emptied cluster."""
    cluster.flushall()
    backend = connect(cluster.url)
    yield backend
    backend.close()


@pytest.fixture
def project(backend: Backend) -> Project:
    """A project with the resources above, on the cluster."""
    project = Project(PROJECT)
    project.use_backend(backend)
    project.add_yaml(RESOURCES)
    return project


def messages(count: int, prefix: str = "m", start: int = 0) -> list[dict[str, Any]]:
    """``count`` user/assistant messages with ids ``<prefix><n>``."""
    return [
        {
            "id": f"{prefix}{i}",
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"message {i} about the weather in city number {i}",
        }
        for i in range(start, start + count)
    ]


def instance_keys(cluster: RedisCluster, layout: KeyLayout) -> dict[str, int]:
    """Every Redis key of one instance on any primary -> the port of the node holding it."""
    found: dict[str, int] = {}
    for port in cluster.ports:
        for raw in cluster.node(port).scan_iter(match=layout.base + "*", count=1000):
            found[raw.decode()] = port
    return found


def assert_consistent(cluster: RedisCluster, layout: KeyLayout) -> list[dict[str, Any]]:
    """Metadata counters equal to what the list holds; returns the decoded list."""
    port = cluster.primary_for_slot(cluster.keyslot(layout.base))
    node = cluster.node(port)
    stored = [json.loads(raw) for raw in node.lrange(layout.base, 0, -1)]
    meta = {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], node.hgetall(layout.metadata)).items()}
    if stored or meta:
        assert int(meta["message_count"]) == len(stored)
        assert int(meta["token_count"]) == sum(m["tokens"] for m in stored)
    ids = {raw.decode() for raw in cast(set[bytes], node.smembers(layout.ids))}
    assert ids == {m["id"] for m in stored}
    return stored


# ------------------------------------------------------------------------------------------ connect
def test_cluster_url_connects_to_a_cluster_client(cluster: RedisCluster) -> None:
    backend = connect(cluster.url)
    try:
        assert backend.kind == "cluster" and backend.cluster
        assert isinstance(backend.client, redis.RedisCluster)
        assert backend.client.ping()
        primaries = sorted(node.port for node in cast(Any, backend.client).get_primaries())  # unannotated in redis-py
        assert primaries == sorted(cluster.ports)
    finally:
        backend.close()


def test_connect_options_reach_every_cluster_node(cluster: RedisCluster) -> None:
    options = ConnectOptions(connect_timeout=0.7, socket_timeout=1.3, retries=4)
    backend = connect(cluster.url, options=options)
    try:
        assert backend.client.retry.get_retries() == 4
        for node in backend.client.get_primaries():
            kwargs = node.redis_connection.connection_pool.connection_kwargs
            assert kwargs["socket_connect_timeout"] == 0.7
            assert kwargs["socket_timeout"] == 1.3
    finally:
        backend.close()


def test_unreachable_cluster_url_is_a_backend_error() -> None:
    (port,) = free_cluster_ports(1)
    with pytest.raises(BackendError) as caught:
        connect(f"redis+cluster://127.0.0.1:{port}", options=FAST)
    assert caught.value.code == "BACKEND_UNAVAILABLE"
    assert str(port) in str(caught.value)


def test_cluster_url_on_a_standalone_server_is_a_backend_error(redis_server: RedisServer) -> None:
    with pytest.raises(BackendError) as caught:
        connect(f"redis+cluster://127.0.0.1:{redis_server.port}", options=FAST)
    assert caught.value.code == "BACKEND_UNAVAILABLE"


# ------------------------------------------------------------------------------------------ layout
def test_instance_keys_share_one_hash_tag_and_slot(cluster: RedisCluster, project: Project) -> None:
    memory = project.memory("lru", key="conv:u1:s1")
    memory.append(messages(12))  # over max_messages: evicts into the archive
    memory.clear(confirm=True, backup=True)
    memory.append(messages(2, prefix="n"))
    memory.read(limit=1)  # LRU access data

    layout = memory.layout
    assert layout.base == "compozy:demo:memory:{conv:u1:s1}"
    assert layout.metadata == "compozy:demo:memory:{conv:u1:s1}:metadata"
    found = instance_keys(cluster, layout)
    plain = {name[len(layout.base) :] for name in found if ":backup:" not in name}
    assert plain == {"", ":metadata", ":archive", ":ids", ":access", ":backups", ":log"}
    assert any(":backup:" in name for name in found)
    assert all(name.startswith("compozy:demo:memory:{conv:u1:s1}") for name in found)
    slots = {cluster.keyslot(name) for name in found}
    assert slots == {cluster.keyslot("conv:u1:s1")}
    assert len(set(found.values())) == 1


def test_every_key_kind_is_on_the_instance_slot(cluster: RedisCluster, project: Project) -> None:
    memory = project.memory("lru", key="conv:u2:s9")
    layout = memory.layout
    expected = {cluster.keyslot(f"{{{memory.key}}}")}
    for name in [*layout.all_keys, layout.backup("20250101T000000000Z-abcdef")]:
        assert {cluster.keyslot(name)} == expected, name


def test_instances_spread_over_every_primary(cluster: RedisCluster, project: Project) -> None:
    keys = [f"conv:u{i}:s1" for i in range(50)]
    for key in keys:
        project.memory("unlimited", key=key).append(messages(2, prefix=key + "-"))
    holders: dict[int, list[str]] = {}
    for key in keys:
        base = KeyLayout(PROJECT, key, cluster=True).base
        port = cluster.primary_for_slot(cluster.keyslot(base))
        assert cluster.node(port).llen(base) == 2  # really stored on that primary
        holders.setdefault(port, []).append(key)
    assert set(holders) == set(cluster.ports)


def test_instances_lists_keys_from_every_primary(cluster: RedisCluster, project: Project) -> None:
    keys = [f"conv:u{i}:s1" for i in range(50)]
    for key in keys:
        memory = project.memory("conv", key=key)
        memory.append(messages(12, prefix=key + "-"))  # archive + ids + metadata: not listed
        memory.clear(confirm=True, backup=True)  # backups: not listed
        memory.append(messages(1, prefix=key + "-again-"))
    rows = project.instances()
    assert sorted(row["key"] for row in rows) == sorted(keys)
    assert all(row["message_count"] == 1 for row in rows)
    ports = {cluster.primary_for_slot(cluster.keyslot(f"{{{row['key']}}}")) for row in rows}
    assert ports == set(cluster.ports)

    some = project.instances("conv:u1*")
    assert sorted(row["key"] for row in some) == sorted(["conv:u1:s1", *(f"conv:u1{i}:s1" for i in range(10))])
    assert len(project.instances(limit=7)) == 7
    assert project.instances("nothing:*") == []
    # the same listing on the event loop (what the HTTP server runs): SCAN over redis.asyncio on every primary
    assert asyncio.run(project.ainstances()) == rows
    assert asyncio.run(project.ainstances("conv:u1*", limit=3)) == some[:3]


# ------------------------------------------------------------------------------------------ engine suite
def test_append_read_write(cluster: RedisCluster, project: Project) -> None:
    memory = project.memory("unlimited", key="chat:1")
    out = memory.append(messages(6))
    assert out["appended"] == 6 and out["total_count"] == 6 and out["ids"] == [f"m{i}" for i in range(6)]
    assert memory.append("plain string")["total_count"] == 7

    everything = memory.read()
    assert [m["content"] for m in everything["messages"]][-1] == "plain string"
    assert everything["count"] == 7 and not everything["has_more"]
    window = memory.read(limit=2, offset=1)
    assert [m["id"] for m in window["messages"]] == ["m1", "m2"] and window["has_more"]
    assert memory.read(last=2)["messages"][0]["id"] == "m5"
    budget = memory.read(max_tokens=40)
    assert budget["token_count"] <= 40 and budget["count"] >= 1
    assert budget["messages"][-1]["content"] == "plain string"

    written = memory.write(messages(3, prefix="w"))
    assert written["count"] == 3 and written["total_count"] == 3
    assert [m["id"] for m in memory.read()["messages"]] == ["w0", "w1", "w2"]
    assert_consistent(cluster, memory.layout)


def test_limits_evict_into_the_archive(cluster: RedisCluster, project: Project) -> None:
    memory = project.memory("conv", key="chat:limits")
    memory.append({"role": "system", "content": "You are terse."})
    out = memory.append(messages(12))
    assert out["total_count"] == 10 and out["evicted"] == 3
    stored = assert_consistent(cluster, memory.layout)
    assert stored[0]["role"] == "system"
    archive = memory.read(archive=True)
    assert {m["id"] for m in archive["messages"]} == {"m0", "m1", "m2"}

    tokens = project.memory("tokens", key="chat:tokens")
    for i in range(10):
        tokens.append(messages(1, start=i))
    assert tokens.stats()["token_count"] <= 120
    assert_consistent(cluster, tokens.layout)


@pytest.mark.parametrize("resource", ["fifo", "lru", "token_lru", "summary"])
def test_flush_each_strategy(cluster: RedisCluster, project: Project, resource: str) -> None:
    memory = project.memory(resource, key=f"chat:flush:{resource}")
    if resource == "token_lru":
        memory.append(messages(12))
    else:
        memory.append(messages(9))  # 9/10: over the 0.8 threshold (summary auto-flushes on its own)
    before = memory.stats()
    out = memory.flush(force=True)
    assert out["success"]
    if resource == "summary" and out["flushed_count"] == 0:
        pytest.fail(f"hybrid_summary flush removed nothing: {out}")
    assert out["flushed_count"] > 0
    stored = assert_consistent(cluster, memory.layout)
    assert out["message_count"] == len(stored)
    if resource == "summary":
        assert out["summary_generated"]
        assert stored[0]["role"] == "system" and stored[0].get("summary") is True
        assert len(stored) == before["message_count"] - out["flushed_count"] + 1
    else:
        assert len(stored) == before["message_count"] - out["flushed_count"]
    assert memory.read(archive=True)["total_count"] >= out["flushed_count"]
    assert memory.stats()["flush_count"] == before["flush_count"] + 1


def test_hybrid_summary_flushes_on_append(cluster: RedisCluster, project: Project) -> None:
    memory = project.memory("summary", key="chat:auto")
    outputs = [memory.append(m) for m in messages(12)]
    flushed = [o for o in outputs if "summary_flush" in o]
    assert flushed and flushed[0]["summary_flush"]["summary_generated"]
    stored = assert_consistent(cluster, memory.layout)
    assert stored[0].get("summary") is True
    assert stored[-1]["id"] == "m11"  # the newest message always survives
    assert memory.stats()["last_flush"] is not None


def test_lru_access_data_lives_on_the_slot_and_drives_the_flush(cluster: RedisCluster, project: Project) -> None:
    memory = project.memory("lru", key="chat:lru")
    memory.append(messages(8))
    memory.read(limit=4)  # m0..m3 are now recently used; m4..m7 never read
    port = cluster.primary_for_slot(cluster.keyslot(memory.layout.base))
    accessed = {raw.decode() for raw in cast(list[bytes], cluster.node(port).zrange(memory.layout.access, 0, -1))}
    assert accessed == {"m0", "m1", "m2", "m3"}
    out = memory.flush(force=True)
    assert out["flushed_count"] == 3
    remaining = [m["id"] for m in memory.read()["messages"]]
    assert remaining == ["m0", "m1", "m2", "m3", "m7"]
    assert_consistent(cluster, memory.layout)


def test_clear_with_backup_restore_and_delete(cluster: RedisCluster, project: Project) -> None:
    memory = project.memory("unlimited", key="chat:clear")
    memory.append(messages(5))
    with pytest.raises(ConfirmRequiredError):
        memory.clear()
    assert memory.stats()["message_count"] == 5

    cleared = memory.clear(confirm=True, backup=True)
    assert cleared["messages_cleared"] == 5 and cleared["backup_created"]
    backup_key = cleared["backup_key"]
    assert backup_key is not None
    assert backup_key.startswith("compozy:demo:memory:{chat:clear}:backup:")
    assert cluster.keyslot(backup_key) == cluster.keyslot(memory.layout.base)
    assert memory.backups() == [backup_key]
    assert memory.read()["count"] == 0

    memory.append(messages(1, prefix="after"))
    restored = memory.restore(backup_key)
    assert restored["restored"] == 5
    assert [m["id"] for m in memory.read()["messages"]] == [f"m{i}" for i in range(5)]
    assert_consistent(cluster, memory.layout)
    with pytest.raises(InvalidKeyError):
        memory.restore("compozy:demo:memory:{other}:backup:x")

    memory.clear(confirm=True, backup=True)
    deleted = memory.delete()
    assert deleted["deleted"]
    assert instance_keys(cluster, memory.layout) == {}  # backups included


def test_stats_and_health(cluster: RedisCluster, project: Project) -> None:
    memory = project.memory("conv", key="chat:stats")
    memory.append(messages(4))
    stats = memory.stats(include_content=True)
    assert stats["message_count"] == 4 and stats["max_messages"] == 10
    assert stats["role_distribution"] == {"assistant": 2, "user": 2}
    assert stats["content_preview"]["first"][0]["content"].startswith("message 0")
    health = memory.health()
    assert health["healthy"] is True and health["message_count"] == 4
    assert health["redis"] is not None
    assert health["redis"]["version"]


def test_idempotent_append_on_the_cluster(cluster: RedisCluster, project: Project) -> None:
    memory = project.memory("unlimited", key="chat:idem")
    batch = messages(3)
    first = memory.append(batch)
    again = memory.append(batch)
    assert first["appended"] == 3 and first["duplicates"] == 0
    assert again["appended"] == 0 and again["duplicates"] == 3 and again["total_count"] == 3
    assert len(assert_consistent(cluster, memory.layout)) == 3


def test_a_list_written_by_compozy_is_used_on_the_cluster(cluster: RedisCluster, project: Project) -> None:
    memory = project.memory("unlimited", key="compozy:written")
    writer = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    writer.rpush(
        memory.layout.base,
        json.dumps({"role": "user", "content": "hello from the Compozy engine"}),
        json.dumps({"role": "assistant", "content": "hi"}),
    )
    assert [m["content"] for m in memory.read()["messages"]] == ["hello from the Compozy engine", "hi"]
    out = memory.append(messages(1))
    assert out["total_count"] == 3
    stored = assert_consistent(cluster, memory.layout)
    assert [m["role"] for m in stored] == ["user", "assistant", "user"]


# ------------------------------------------------------------------------------------------ faults
def keys_per_primary(cluster: RedisCluster, prefix: str) -> dict[int, str]:
    """One memory key held by each primary."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < len(cluster.ports):
        key = f"{prefix}{i}"
        found.setdefault(cluster.primary_for_slot(cluster.keyslot(f"{{{key}}}")), key)
        i += 1
    return found


@pytest.fixture
def partial_cluster() -> Iterator[RedisCluster]:
    """A cluster of its own that keeps serving the slots it still has when a primary dies."""
    yield from start_cluster(["--cluster-require-full-coverage", "no"])


@pytest.fixture
def fragile_cluster() -> Iterator[RedisCluster]:
    """A cluster of its own, quick to declare itself down (node timeout 1 s)."""
    yield from start_cluster(["--cluster-node-timeout", "1000"])


def test_dead_primary_fails_its_keys_fast(partial_cluster: RedisCluster) -> None:
    cluster = partial_cluster
    project = Project(PROJECT)
    project.use_backend(connect(cluster.url, options=FAST))
    project.add_yaml(RESOURCES)
    placed = keys_per_primary(cluster, "conv:dead:")
    for key in placed.values():
        project.memory("unlimited", key=key).append(messages(2))
    victim = cluster.ports[1]
    cluster.kill(victim)

    memory = project.memory("unlimited", key=placed[victim])
    for operation in (lambda: memory.append("x"), memory.read, memory.stats):
        with pytest.raises(BackendError) as caught:
            operation()
        assert caught.value.code == "BACKEND_UNAVAILABLE"
    assert memory.health()["healthy"] is False
    with pytest.raises(BackendError):
        project.instances()  # listing needs every primary


def test_live_primaries_keep_working_when_one_dies(partial_cluster: RedisCluster) -> None:
    cluster = partial_cluster
    project = Project(PROJECT)
    project.use_backend(connect(cluster.url, options=FAST))
    project.add_yaml(RESOURCES)
    placed = keys_per_primary(cluster, "conv:alive:")
    for key in placed.values():
        project.memory("unlimited", key=key).append(messages(2))  # only the append script is loaded
    victim = cluster.ports[0]
    cluster.kill(victim)

    for port, key in placed.items():
        if port == victim:
            continue
        memory = project.memory("unlimited", key=key)
        assert memory.append(messages(1, prefix="more"))["total_count"] == 3
        assert memory.read()["count"] == 3  # first use of the read script since the node died
        memory.flush(force=True, strategy="simple_fifo")
        assert memory.clear(confirm=True)["success"]
        assert memory.health()["healthy"] is True


def test_cluster_down_is_backend_unavailable_then_recovers(fragile_cluster: RedisCluster) -> None:
    cluster = fragile_cluster
    project = Project(PROJECT)
    project.use_backend(connect(cluster.url, options=FAST))
    project.add_yaml(RESOURCES)
    placed = keys_per_primary(cluster, "conv:down:")
    for key in placed.values():
        project.memory("unlimited", key=key).append(messages(2))
    victim = cluster.ports[2]
    cluster.kill(victim)
    alive = [p for p in cluster.ports if p != victim]
    cluster.wait_state("fail", alive)

    memory = project.memory("unlimited", key=placed[alive[0]])
    with pytest.raises(BackendError) as caught:
        memory.append("x")
    assert caught.value.code == "BACKEND_UNAVAILABLE"
    assert memory.health()["healthy"] is False

    cluster.restart(victim)  # same node id and slots, data lost (no persistence)
    cluster.wait_state("ok")
    for port, key in placed.items():
        memory = project.memory("unlimited", key=key)
        expected = 2 if port != victim else 0
        assert memory.append(messages(1, prefix="back"))["total_count"] == expected + 1
        assert memory.health()["healthy"] is True


def test_cluster_client_does_not_retry_timeouts(backend: Backend) -> None:
    allowed = type(backend.client).ERRORS_ALLOW_RETRY
    assert redis.exceptions.ConnectionError in allowed
    assert not any(issubclass(e, redis.exceptions.TimeoutError) for e in allowed)


# ------------------------------------------------------------------------------------------ retry safety
def test_a_resent_script_changes_nothing_on_the_cluster(project: Project, cluster: RedisCluster) -> None:
    """What redis-py's cluster client re-sends after a connection error (the same arguments) is a no-op."""
    memory = project.memory("conv", key="conv:resend")
    memory.append(messages(8))
    encoded, _ = memory._encode([{"role": "user", "content": "no id given"}, {"content": "nor here"}], "append")
    args = memory._store_args("append", encoded)
    first = memory._run("append", args, "append")
    resent = memory._run("append", args, "append")
    assert resent == first and [int(v) for v in first][:2] == [2, 10]
    stored = assert_consistent(cluster, memory.layout)
    assert [m["content"] for m in stored][-2:] == ["no id given", "nor here"] and len(stored) == 10

    write_args = memory._store_args("replace", memory._encode([{"content": "only"}], "write")[0])
    assert memory._run("append", write_args, "write") == memory._run("append", write_args, "write")
    assert [m["content"] for m in assert_consistent(cluster, memory.layout)] == ["only"]

    clear_args = memory._clear_args(True, True)
    first_clear = memory._run("clear", clear_args, "clear")
    assert memory._run("clear", clear_args, "clear") == first_clear and [int(v) for v in first_clear] == [1, 1]
    assert memory.backups() == [clear_args[0]]


def test_the_async_cluster_client_does_not_retry_timeouts(project: Project, cluster: RedisCluster) -> None:
    import asyncio

    from compozy_nb.memory.aio import AsyncMemory

    memory = project.memory("conv", key="conv:async")
    client_class = type(memory.backend.async_client)
    assert not any(issubclass(e, redis.exceptions.TimeoutError) for e in client_class.ERRORS_ALLOW_RETRY)

    async def scenario() -> AppendOutput:
        out = await AsyncMemory(memory).append(messages(3))
        await memory.backend.async_client.aclose()
        return out

    assert asyncio.run(scenario())["total_count"] == 3
    assert len(assert_consistent(cluster, memory.layout)) == 3
