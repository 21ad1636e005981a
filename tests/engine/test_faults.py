"""Faults on a real redis-server that each test starts itself, so it can kill it.

- Timeouts and retries come from ConnectOptions; connection errors are retried with backoff, a command
  that timed out is not re-sent (it may have run: the caller decides, and idempotent appends make that safe).
- A killed server: every operation fails fast with BACKEND_UNAVAILABLE, health says ``healthy: false``, and
  the same client reconnects by itself once the server is back.
- kill -9 during a stream of appends, with ``appendfsync always``: after restart no partial write is visible.
- A corrupted list element: read names the key and the position; clear and append keep working.
- Idempotent appends: a retried batch (same ids) is stored once, even when the first try timed out.

Wall-clock bounds are generous: the point is that calls raise instead of hanging (pytest-timeout guards).
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from compozy_nb import Project
from compozy_nb.backends import ConnectOptions, connect
from compozy_nb.errors import BackendError, CorruptDataError
from compozy_nb.memory.instance import MemoryInstance
from compozy_nb.memory.keys import KeyLayout
from compozy_nb.memory.outputs import AppendOutput, WriteOutput
from compozy_nb.testing import RedisServer, check_output, free_port, need_redis

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

PROJECT = "faults"
RESOURCES = """
resource: memory
id: chat
type: buffer
---
resource: memory
id: limited
type: message_count_based
max_messages: 40
archive_max_messages: 100000
"""
FAST = ConnectOptions(connect_timeout=0.5, socket_timeout=0.5, retries=2, backoff_base=0.01, backoff_cap=0.05)


# ------------------------------------------------------------------------------------------ helpers
def kill(server: RedisServer) -> None:
    """SIGKILL the server process (no shutdown, no final fsync) and reap it."""
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(10)
    server.proc = None


def restart(server: RedisServer) -> None:
    """Start the server again on the same port (its port may linger in TIME_WAIT: retry briefly)."""
    deadline = time.time() + 10
    while True:
        try:
            server.start()
            return
        except RuntimeError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def open_project(url: str, options: ConnectOptions = FAST) -> Project:
    """A project on ``url`` with our connect options."""
    project = Project(PROJECT)
    project.use_backend(connect(url, options=options))
    project.add_yaml(RESOURCES)
    return project


def batch(tag: str, size: int = 3) -> list[dict[str, Any]]:
    """``size`` messages with ids ``<tag>-<n>``."""
    return [
        {"id": f"{tag}-{i}", "role": "user", "content": f"{tag} message {i} " + "word " * (i % 5)} for i in range(size)
    ]


def stored_state(client: redis.Redis, layout: KeyLayout) -> tuple[list[dict[str, Any]], dict[str, str], set[str]]:
    """The decoded list, the metadata hash and the ids set of an instance, read directly."""
    items = [json.loads(raw) for raw in client.lrange(layout.base, 0, -1)]
    meta = {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], client.hgetall(layout.metadata)).items()}
    ids = {raw.decode() for raw in cast(set[bytes], client.smembers(layout.ids))}
    return items, meta, ids


def evalsha_calls(client: redis.Redis) -> int:
    """How many EVALSHA commands the server has executed."""
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


class FaultyProxy:
    """A TCP proxy in front of redis-server that can lose replies or drop new connections.

    ``lose_replies()``: on the connections open now, requests still reach Redis (and run) but replies never
    reach the client, so it times out on a command that did run; connections opened later work normally
    (a client that re-sends the command on a new connection gets an answer). ``drop_connections(n)``: the
    next ``n`` connections are closed as soon as they are accepted (a connection error before any command).
    ``cut_script_replies(n)``: the replies to the next ``n`` scripts (EVALSHA/EVAL) are dropped after Redis ran
    them, and their connection closed (the client sees a connection error on a command that did run, and
    retries it on a new connection).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepted = 0
        self._drop = 0
        self._cut = 0
        self.cut = 0  # replies dropped so far by cut_script_replies
        self._scripts_sent: set[int] = set()  # connections whose last request was a script
        self._deaf: set[int] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def drop_connections(self, count: int) -> None:
        with self._lock:
            self._drop = count

    def cut_script_replies(self, count: int) -> None:
        with self._lock:
            self._cut = count

    def _cutting(self, connection: int) -> bool:
        with self._lock:
            if self._cut <= 0 or connection not in self._scripts_sent:
                return False
            self._cut -= 1
            self.cut += 1
            return True

    def lose_replies(self) -> None:
        with self._lock:
            self._deaf = set(range(self.accepted))

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            with self._lock:
                number = self.accepted
                self.accepted += 1
                dropping = self._drop > 0
                if dropping:
                    self._drop -= 1
            if dropping:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, None, number), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, number), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies_of: int | None, requests_of: int = -1) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if requests_of >= 0:
                    with self._lock:
                        if b"EVAL" in data.upper()[:64]:
                            self._scripts_sent.add(requests_of)
                        else:
                            self._scripts_sent.discard(requests_of)
                if replies_of is not None and replies_of in self._deaf:
                    continue
                if replies_of is not None and self._cutting(replies_of):
                    break  # the reply is dropped and the connection closed (finally)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            sock.close()


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (no persistence), killed or stopped at the end."""
    need_redis()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    own = RedisServer(free_port(), workdir)
    own.start()
    yield own
    own.stop()


@pytest.fixture
def durable_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with an append-only file fsynced on every write."""
    need_redis()
    workdir = tmp_path / "durable"
    workdir.mkdir()
    own = RedisServer(free_port(), workdir, ["--appendonly", "yes", "--appendfsync", "always"])
    own.start()
    yield own
    own.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[FaultyProxy]:
    """A faulty proxy in front of ``server``."""
    own = FaultyProxy(server.port)
    yield own
    own.close()


# ------------------------------------------------------------------------------------------ options
def test_connect_options_are_applied(server: RedisServer) -> None:
    options = ConnectOptions(connect_timeout=0.25, socket_timeout=0.75, retries=5, backoff_base=0.02, backoff_cap=0.3)
    backend = connect(server.url, options=options)
    try:
        kwargs = backend.client.connection_pool.connection_kwargs
        assert kwargs["socket_connect_timeout"] == 0.25
        assert kwargs["socket_timeout"] == 0.75
        assert backend.client.get_retry().get_retries() == 5
    finally:
        backend.close()


def test_defaults_are_bounded() -> None:
    defaults = ConnectOptions()
    assert 0 < defaults.connect_timeout <= 10 and 0 < defaults.socket_timeout <= 10
    assert 0 <= defaults.retries <= 5 and defaults.backoff_cap <= 2


def test_connection_errors_are_retried(server: RedisServer, proxy: FaultyProxy) -> None:
    proxy.drop_connections(2)
    backend = connect(
        proxy.url,
        options=ConnectOptions(connect_timeout=0.5, socket_timeout=0.5, retries=3, backoff_base=0.01, backoff_cap=0.05),
    )
    try:
        assert backend.client.ping()
        assert proxy.accepted == 3
    finally:
        backend.close()


def test_without_retries_a_connection_error_is_reported(server: RedisServer, proxy: FaultyProxy) -> None:
    proxy.drop_connections(1)
    with pytest.raises(BackendError) as caught:
        connect(proxy.url, options=ConnectOptions(connect_timeout=0.5, socket_timeout=0.5, retries=0))
    assert caught.value.code == "BACKEND_UNAVAILABLE"


def test_socket_timeout_bounds_a_silent_server(server: RedisServer, proxy: FaultyProxy) -> None:
    project = open_project(proxy.url, ConnectOptions(connect_timeout=0.5, socket_timeout=0.3, retries=0))
    memory = project.memory("chat", key="silent")
    memory.append("warm up")
    proxy.lose_replies()
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        memory.read()
    assert caught.value.code == "BACKEND_UNAVAILABLE"
    assert time.monotonic() - started < 20  # bounded by the socket timeout, not hanging
    assert memory.read()["count"] == 1  # a fresh connection is made for the next call


def test_a_command_that_timed_out_is_not_resent(server: RedisServer, proxy: FaultyProxy) -> None:
    project = open_project(
        proxy.url,
        ConnectOptions(connect_timeout=0.5, socket_timeout=0.3, retries=3, backoff_base=0.01, backoff_cap=0.05),
    )
    memory = project.memory("chat", key="resent")
    memory.append("warm up")  # loads the script
    direct = redis.Redis(port=server.port)
    before = evalsha_calls(direct)
    proxy.lose_replies()
    with pytest.raises(BackendError):  # a retry on a new connection would get an answer
        memory.append(batch("once"))
    assert evalsha_calls(direct) - before == 1
    assert direct.llen(memory.layout.base) == 4  # it ran once: the caller decides whether to retry


# ------------------------------------------------------------------------------------------ kill and restart
ALL_OPERATIONS: dict[str, Callable[[MemoryInstance], object]] = {
    "append": lambda m: m.append("hello"),
    "write": lambda m: m.write([{"role": "user", "content": "replace"}]),
    "read": lambda m: m.read(),
    "read_budget": lambda m: m.read(max_tokens=100),
    "stats": lambda m: m.stats(),
    "flush": lambda m: m.flush(force=True),
    "clear": lambda m: m.clear(confirm=True, backup=True),
    "delete": lambda m: m.delete(),
}


def test_killed_server_fails_fast_then_the_same_client_reconnects(server: RedisServer) -> None:
    project = open_project(server.url)
    memory = project.memory("chat", key="conv:kill")
    memory.append(batch("before"))
    kill(server)

    for name, operation in ALL_OPERATIONS.items():
        started = time.monotonic()
        with pytest.raises(BackendError) as caught:
            operation(memory)
        assert caught.value.code == "BACKEND_UNAVAILABLE", name
        assert caught.value.context.get("operation"), name
        assert time.monotonic() - started < 20, name  # fails, does not hang
    with pytest.raises(BackendError):
        project.instances()
    health = memory.health()
    assert health["healthy"] is False and health["redis"] is None
    check_output("health", health)  # the unhealthy shape is a HealthOutput too
    assert "unreachable" in " ".join(health["warnings"]).lower()

    restart(server)  # fresh: no persistence, the data is gone
    assert memory.health()["healthy"] is True
    out = memory.append(batch("after"))
    assert out["appended"] == 3 and out["total_count"] == 3
    assert [m["id"] for m in memory.read()["messages"]] == ["after-0", "after-1", "after-2"]
    assert [row["key"] for row in project.instances()] == ["conv:kill"]


def test_unreachable_url_is_an_error_not_a_fallback() -> None:
    port = free_port()
    with pytest.raises(BackendError) as caught:
        connect(f"redis://127.0.0.1:{port}/0", options=FAST)
    assert caught.value.code == "BACKEND_UNAVAILABLE"
    project = Project(PROJECT, redis_url=f"redis://127.0.0.1:{port}/0")
    project.add_yaml(RESOURCES)
    with pytest.raises(BackendError):
        project.memory("chat", key="x").append("hello")


@pytest.mark.slow
def test_kill_during_appends_leaves_no_partial_write(durable_server: RedisServer) -> None:
    server = durable_server
    project = open_project(server.url)
    layout = KeyLayout(PROJECT, "conv:durable")
    acknowledged: list[str] = []
    failures: list[BaseException] = []
    sent = threading.Event()

    def writer() -> None:
        memory = project.memory("limited", key="conv:durable")
        n = 0
        while True:
            try:
                memory.append(batch(f"b{n:05d}"))
            except BackendError:
                return
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)
                return
            acknowledged.append(f"b{n:05d}")
            n += 1
            if n >= 20:
                sent.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert sent.wait(30), "the writer made no progress"
    time.sleep(0.2)
    kill(server)
    thread.join(30)
    assert not thread.is_alive() and not failures, failures

    restart(server)
    direct = redis.Redis(port=server.port)
    items, meta, ids = stored_state(direct, layout)
    archived = [json.loads(raw) for raw in direct.lrange(layout.archive, 0, -1)]
    assert int(meta["message_count"]) == len(items) == direct.llen(layout.base)
    assert int(meta["token_count"]) == sum(int(m["tokens"]) for m in items)
    assert ids == {m["id"] for m in items}
    role_counts = {k[5:]: int(v) for k, v in meta.items() if k.startswith("role:") and int(v)}
    assert role_counts == {"user": len(items)}
    assert len(items) == 40  # the limit held
    assert int(meta["evicted_count"]) == len(archived)

    # every batch is all there (list or archive) or not there at all; every acknowledged batch is there
    seen: dict[str, int] = {}
    for message in [*items, *archived]:
        tag = message["id"].rsplit("-", 1)[0]
        seen[tag] = seen.get(tag, 0) + 1
    assert all(count == 3 for count in seen.values()), {t: c for t, c in seen.items() if c != 3}
    assert set(acknowledged) <= set(seen)
    assert len(seen) <= len(acknowledged) + 1  # at most the batch in flight when the server died

    memory = project.memory("limited", key="conv:durable")  # the same project reconnects
    assert memory.append(batch("after"))["total_count"] == 40
    assert memory.stats()["message_count"] == 40


# ------------------------------------------------------------------------------------------ corruption
GARBAGE = [b"not json at all", b"42", b'{"role": "user"}', b"\xff\xfe\x00 binary"]


def corrupted(server: RedisServer, garbage: bytes) -> tuple[Any, redis.Redis]:
    """An instance holding two good messages followed by ``garbage`` pushed by another tool."""
    project = open_project(server.url)
    memory = project.memory("chat", key="conv:corrupt")
    memory.append(batch("ok", 2))
    direct = redis.Redis(port=server.port)
    direct.rpush(memory.layout.base, garbage)  # another tool, a bug, a bad migration...
    return memory, direct


@pytest.mark.parametrize("garbage", GARBAGE)
def test_corrupt_element_is_named_on_read(server: RedisServer, garbage: bytes) -> None:
    memory, _ = corrupted(server, garbage)
    for read in (memory.read, lambda: memory.read(last=1), lambda: memory.read(offset=2, limit=1)):
        with pytest.raises(CorruptDataError) as caught:
            read()
        error = caught.value
        assert error.code == "CORRUPT_DATA"
        assert error.context["key"] == "conv:corrupt" and error.context["position"] == 2
        assert "conv:corrupt" in str(error) and "position 2" in str(error)
    assert [m["id"] for m in memory.read(limit=2)["messages"]] == ["ok-0", "ok-1"]  # the rest is readable
    assert memory.stats()["message_count"] == 3


@pytest.mark.parametrize("garbage", GARBAGE)
def test_clear_then_append_work_after_a_corrupt_element(server: RedisServer, garbage: bytes) -> None:
    memory, direct = corrupted(server, garbage)
    cleared = memory.clear(confirm=True)
    assert cleared["success"] and cleared["messages_cleared"] == 3
    assert direct.llen(memory.layout.base) == 0
    assert memory.append(batch("fresh", 2))["total_count"] == 2
    assert [m["id"] for m in memory.read()["messages"]] == ["fresh-0", "fresh-1"]
    items, meta, ids = stored_state(direct, memory.layout)
    assert int(meta["message_count"]) == len(items) == 2 and ids == {"fresh-0", "fresh-1"}


@pytest.mark.parametrize("pushed", [*GARBAGE, b'{"role":"user","content":"written by Compozy meanwhile"}'])
def test_append_after_another_tool_pushed_keeps_counters_equal_to_the_list(server: RedisServer, pushed: bytes) -> None:
    memory, direct = corrupted(server, pushed)
    out = memory.append(batch("more", 1))
    assert out["appended"] == 1 and out["total_count"] == 4
    meta = direct.hgetall(memory.layout.metadata)
    assert int(meta[b"message_count"]) == direct.llen(memory.layout.base) == 4
    assert memory.stats()["message_count"] == 4


# ------------------------------------------------------------------------------------------ idempotence
def test_retried_batch_is_stored_once(server: RedisServer) -> None:
    project = open_project(server.url)
    memory = project.memory("chat", key="conv:retry")
    first = memory.append(batch("r", 3))
    retry = memory.append(batch("r", 3))
    assert first["appended"] == 3 and first["duplicates"] == 0
    assert retry["appended"] == 0 and retry["duplicates"] == 3
    assert retry["total_count"] == 3 and retry["token_count"] == first["token_count"]
    assert retry["ids"] == first["ids"]

    generated = memory.append([{"role": "assistant", "content": "no id given"}])
    (new_id,) = generated["ids"]
    again = memory.append([{"id": new_id, "role": "assistant", "content": "no id given"}])
    assert again["duplicates"] == 1 and again["total_count"] == 4

    partly = memory.append([*batch("r", 3)[1:], *batch("s", 1)])
    assert partly["appended"] == 1 and partly["duplicates"] == 2 and partly["total_count"] == 5
    items, meta, ids = stored_state(redis.Redis(port=server.port), memory.layout)
    assert [m["id"] for m in items] == ["r-0", "r-1", "r-2", new_id, "s-0"]
    assert int(meta["message_count"]) == 5 and ids == {m["id"] for m in items}


def test_append_retried_after_a_timeout_is_stored_once(server: RedisServer, proxy: FaultyProxy) -> None:
    project = open_project(proxy.url, ConnectOptions(connect_timeout=0.5, socket_timeout=0.3, retries=0))
    memory = project.memory("chat", key="conv:timeout")
    memory.append("warm up")
    direct = redis.Redis(port=server.port)

    proxy.lose_replies()  # Redis runs the append, the reply is lost: the client sees a timeout
    with pytest.raises(BackendError):
        memory.append(batch("t", 3))
    assert direct.llen(memory.layout.base) == 4  # it did run

    retry = memory.append(batch("t", 3))  # the caller retries the same batch
    assert retry["appended"] == 0 and retry["duplicates"] == 3 and retry["total_count"] == 4
    items, meta, ids = stored_state(direct, memory.layout)
    assert [m["id"] for m in items][1:] == ["t-0", "t-1", "t-2"] and ids == {m["id"] for m in items}
    assert int(meta["message_count"]) == 4 and int(meta["token_count"]) == sum(m["tokens"] for m in items)


def test_project_file_sets_timeouts_and_retries(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        (tmp_path / "compozy.yaml").write_text(
            f"name: t\nredis: {{url: '{server.url}', connect_timeout: 0.7, socket_timeout: 1.5, retries: 0}}\n"
        )
        project = Project.load(tmp_path)
        kwargs = project.backend.client.connection_pool.connection_kwargs
        assert kwargs["socket_connect_timeout"] == 0.7 and kwargs["socket_timeout"] == 1.5
        assert kwargs["retry"].get_retries() == 0
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------ retry safety
# The connection drops after Redis ran a write and before its reply arrives: redis-py retries on a new
# connection (connection errors are retried), so the same script runs twice. Every write must then leave
# Redis exactly as one run does and answer as one run does.
RETRYING = ConnectOptions(connect_timeout=0.5, socket_timeout=2.0, retries=3, backoff_base=0.01, backoff_cap=0.05)


def retried(proxy: FaultyProxy, direct: redis.Redis, call: Any) -> Any:
    """Run ``call`` while the reply of its write script is dropped; check the script ran twice."""
    before, cut = evalsha_calls(direct), proxy.cut
    proxy.cut_script_replies(1)
    out = call()
    assert proxy.cut == cut + 1, "the fault was not injected"
    assert evalsha_calls(direct) - before == 2, "the script was not re-sent"
    return out


@pytest.fixture
def retrying(server: RedisServer, proxy: FaultyProxy) -> tuple[Any, redis.Redis]:
    """A memory behind the faulty proxy, its scripts loaded, and a direct client to check Redis."""
    project = open_project(proxy.url, RETRYING)
    memory = project.memory("limited", key="conv:resend")
    memory.append("warm up")
    memory.flush(force=True)
    memory.clear(confirm=True)
    memory.read(max_tokens=10)
    return memory, redis.Redis(port=server.port)


def test_resent_append_with_generated_ids_is_stored_once(retrying: tuple[Any, redis.Redis], proxy: FaultyProxy) -> None:
    memory, direct = retrying
    memory.append([{"role": "user", "content": "first"}])
    payload = [{"role": "user", "content": "no id"}, {"content": "second, no id"}]
    out = retried(proxy, direct, lambda: memory.append(payload))
    assert (out["appended"], out["total_count"], out["duplicates"]) == (2, 3, 0)  # the first run's answer
    items, meta, ids = stored_state(direct, memory.layout)
    assert [m["content"] for m in items] == ["first", "no id", "second, no id"]
    assert ids == {m["id"] for m in items} and [m["id"] for m in items][1:] == out["ids"]
    assert int(meta["message_count"]) == 3 and int(meta["token_count"]) == sum(m["tokens"] for m in items)
    assert memory.stats()["role_distribution"] == {"user": 3}


def test_resent_append_that_evicted_evicts_once(retrying: tuple[Any, redis.Redis], proxy: FaultyProxy) -> None:
    memory, direct = retrying
    memory.append(batch("old", 40))  # max_messages 40
    out = retried(proxy, direct, lambda: memory.append(batch("new", 5)))
    assert (out["appended"], out["evicted"], out["total_count"]) == (5, 5, 40)
    items, meta, _ = stored_state(direct, memory.layout)
    assert [m["id"] for m in items] == [f"old-{i}" for i in range(5, 40)] + [f"new-{i}" for i in range(5)]
    assert direct.llen(memory.layout.archive) == 5 and int(meta["evicted_count"]) == 5


def test_resent_write_is_applied_once(retrying: tuple[Any, redis.Redis], proxy: FaultyProxy) -> None:
    memory, direct = retrying
    memory.append(batch("before", 3))
    out = retried(proxy, direct, lambda: memory.write([{"role": "system", "content": "fresh"}, {"content": "hello"}]))
    assert (out["count"], out["total_count"], out["duplicates"]) == (2, 2, 0)
    items, _, ids = stored_state(direct, memory.layout)
    assert [m["content"] for m in items] == ["fresh", "hello"] and ids == {m["id"] for m in items}
    assert memory.stats()["role_distribution"] == {"system": 1, "user": 1}


def test_resent_clear_with_backup_keeps_the_backup(retrying: tuple[Any, redis.Redis], proxy: FaultyProxy) -> None:
    memory, direct = retrying
    memory.append(batch("keep", 4))
    out = retried(proxy, direct, lambda: memory.clear(confirm=True, backup=True))
    assert (out["messages_cleared"], out["backup_created"]) == (4, True)
    assert memory.backups() == [out["backup_key"]] and direct.llen(memory.layout.base) == 0
    assert [json.loads(raw)["id"] for raw in direct.lrange(out["backup_key"], 0, -1)] == [f"keep-{i}" for i in range(4)]

    restored = retried(proxy, direct, lambda: memory.restore(out["backup_key"]))
    assert (restored["restored"], restored["total_count"]) == (4, 4)
    items, _, ids = stored_state(direct, memory.layout)
    assert [m["id"] for m in items] == [f"keep-{i}" for i in range(4)] and ids == {m["id"] for m in items}


def test_resent_flush_archives_once(retrying: tuple[Any, redis.Redis], proxy: FaultyProxy) -> None:
    memory, direct = retrying
    memory.append(batch("f", 36))
    out = retried(proxy, direct, lambda: memory.flush(force=True))
    assert out["flushed_count"] > 0
    items, meta, _ = stored_state(direct, memory.layout)
    assert len(items) == 36 - out["flushed_count"] == out["message_count"]
    assert direct.llen(memory.layout.archive) == out["flushed_count"]
    assert int(meta["flush_count"]) == 1 and int(meta["token_count"]) == sum(m["tokens"] for m in items)


def test_resent_async_append_is_stored_once(server: RedisServer, proxy: FaultyProxy) -> None:
    from compozy_nb.memory.aio import AsyncMemory

    project = open_project(proxy.url, RETRYING)
    memory = project.memory("chat", key="conv:async-resend")
    direct = redis.Redis(port=server.port)

    async def scenario() -> tuple[AppendOutput, WriteOutput]:
        aio = AsyncMemory(memory)
        await aio.append("warm up")
        before = evalsha_calls(direct)
        proxy.cut_script_replies(1)
        out = await aio.append([{"role": "user", "content": "async, no id"}])
        assert proxy.cut == 1 and evalsha_calls(direct) - before == 2
        proxy.cut_script_replies(1)
        written = await aio.write([{"content": "one"}, {"content": "two"}])
        await aio.client.aclose()
        return out, written

    import asyncio

    out, written = asyncio.run(scenario())
    assert (out["appended"], out["total_count"]) == (1, 2)
    assert (written["count"], written["total_count"]) == (2, 2)
    items, _, ids = stored_state(direct, memory.layout)
    assert [m["content"] for m in items] == ["one", "two"] and ids == {m["id"] for m in items}


def test_async_cluster_client_does_not_retry_timeouts() -> None:
    from compozy_nb.backends import _async_cluster_class, _Cluster

    for cls in (_async_cluster_class(), _Cluster):
        assert redis.exceptions.ConnectionError in cls.ERRORS_ALLOW_RETRY
        assert not any(issubclass(e, redis.exceptions.TimeoutError) for e in cls.ERRORS_ALLOW_RETRY)


def test_resent_pipeline_of_async_appends_stores_each_once(server: RedisServer, proxy: FaultyProxy) -> None:
    # concurrent async calls share one pipeline: when its reply is lost after Redis ran it, the client re-sends
    # the whole pipeline, and every script in it must change nothing the second time
    import asyncio

    project = open_project(proxy.url, RETRYING)
    memory = project.amemory("chat", key="conv:pipeline-resend")
    direct = redis.Redis(port=server.port)

    async def scenario() -> list[AppendOutput]:
        await memory.append("warm up")
        before = evalsha_calls(direct)
        proxy.cut_script_replies(1)
        outs = await asyncio.gather(*(memory.append([{"content": f"concurrent {i}"}]) for i in range(3)))
        assert proxy.cut == 1, "the fault was not injected"
        assert evalsha_calls(direct) - before == 6, "the pipeline was not sent twice"
        await memory.client.aclose()
        return list(outs)

    outs = asyncio.run(scenario())
    # regression: the memory recorded the result of its last call only, so the re-sent calls of a pipeline ran
    # again, found their message stored and answered "appended 0, duplicates 1"; each now answers as it first did
    assert [(o["appended"], o["duplicates"], o["total_count"]) for o in outs] == [(1, 0, 2), (1, 0, 3), (1, 0, 4)]
    items, meta, ids = stored_state(direct, memory.instance.layout)
    assert [o["ids"][0] for o in outs] == [m["id"] for m in items[1:]]
    assert [m["content"] for m in items] == ["warm up", "concurrent 0", "concurrent 1", "concurrent 2"]
    assert ids == {m["id"] for m in items} and int(meta["message_count"]) == 4


def test_the_retry_record_is_bounded(server: RedisServer) -> None:
    # every write records its result under its operation id for re-sends; the record keeps whole entries of
    # the newest calls and never grows past 384 bytes, however many writes a memory sees
    project = open_project(server.url)
    memory = project.memory("chat", key="conv:record")
    for i in range(60):
        memory.append(f"message {i}")
    record = redis.Redis(port=server.port).hget(memory.layout.metadata, "nb_ops")
    assert record is not None and 300 < len(record) <= 384
    entries = cast(bytes, record).decode().split("\n")[1:]
    assert len(entries) >= 8
    for entry in entries:
        op, result = entry.split("\t")
        assert len(op) >= 16 and isinstance(json.loads(result), list)
    assert json.loads(entries[-1].split("\t")[1])[1] == 60  # the newest last: its total_count
