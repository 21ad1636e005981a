"""A real 3-primary Redis Cluster for tests: three redis-server processes of our own, stopped by pid.

Nodes listen on free loopback ports below 55535 whose cluster bus port (port + 10000) is free too.
``redis-cli --cluster create`` assigns the 16384 slots; the cluster is ready once every node reports
``cluster_state:ok`` and agrees on the slot map.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from compozy_nb.testing import need_redis, redis_server_binary

REDIS_SERVER = redis_server_binary()
REQUIRE_REDIS = os.environ.get("COMPOZY_REQUIRE_REDIS") == "1"
REDIS_CLI = shutil.which("redis-cli")
BUS_OFFSET = 10000
START_TIMEOUT = 30.0


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(count: int = 3) -> list[int]:
    """``count`` distinct free ports below 55535 whose bus ports (port + 10000) are free as well."""
    ports: list[int] = []
    for _ in range(500):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port >= 65535 - BUS_OFFSET or port in ports or port + BUS_OFFSET in ports:
            continue
        if any(abs(port - other) == BUS_OFFSET for other in ports):
            continue
        if _port_is_free(port + BUS_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free port pairs (port, port + 10000) below 55535")


class RedisCluster:
    """Three cluster-enabled redis-server primaries (no replicas) on loopback."""

    def __init__(self, workdir: Path, ports: list[int], extra: list[str] | None = None) -> None:
        assert REDIS_SERVER is not None
        self.workdir = workdir
        self.ports = ports
        self.extra = extra or []
        self.procs: list[subprocess.Popen[bytes] | None] = []

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL of the first node (the client discovers the others)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def node(self, port: int) -> redis.Redis:
        """A plain client on one node."""
        return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2, socket_timeout=5)

    def start(self) -> None:
        """Start the three nodes, assign the slots and wait until the cluster is ok."""
        self.procs = [self._spawn(port) for port in self.ports]
        for port in self.ports:
            self._wait_ping(port)
        self._create()
        self.wait_state("ok")

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        cmd = [
            str(REDIS_SERVER),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(self.workdir / f"nodes-{port}.conf"),
            "--cluster-node-timeout",
            "5000",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
            *self.extra,
        ]
        with open(self.workdir / f"redis-{port}.log", "ab") as log:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, port: int) -> None:
        """SIGKILL one node (its nodes.conf stays, so :meth:`restart` brings the same node back)."""
        index = self.ports.index(port)
        proc = self.procs[index]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        self.procs[index] = None

    def restart(self, port: int) -> None:
        """Start a killed node again (same port, same cluster identity, empty data) and wait for it."""
        index = self.ports.index(port)
        self.procs[index] = self._spawn(port)
        self._wait_ping(port)

    def _wait_ping(self, port: int) -> None:
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            try:
                self.node(port).ping()
                return
            except redis.exceptions.ConnectionError:
                if any(p is not None and p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"a cluster node exited; see logs in {self.workdir}") from None
                time.sleep(0.05)
        raise RuntimeError(f"cluster node on port {port} did not start")

    def _create(self) -> None:
        assert REDIS_CLI is not None
        cmd = [
            REDIS_CLI,
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in self.ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        done = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                "redis-cli --cluster create failed: "
                + done.stdout.decode(errors="replace")[-2000:]
                + done.stderr.decode(errors="replace")[-2000:]
            )

    def wait_state(self, state: str, ports: list[int] | None = None, timeout: float = START_TIMEOUT) -> None:
        """Wait until every node of ``ports`` (default: all) reports ``cluster_state:<state>`` (and, for
        ``ok``, knows every node and every slot)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(self._node_in_state(port, state) for port in ports or self.ports):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not reach cluster_state:{state} in {timeout} s")

    def _node_in_state(self, port: int, state: str) -> bool:
        try:
            info = cast(Any, self.node(port)).execute_command("CLUSTER", "INFO")  # unannotated in redis-py
            text = info.decode() if isinstance(info, bytes) else str(info)
            if f"cluster_state:{state}" not in text:
                return False
            if state != "ok":
                return True
            known = int(text.split("cluster_known_nodes:", 1)[1].split()[0])
            assigned = int(text.split("cluster_slots_ok:", 1)[1].split()[0])
            return known == len(self.ports) and assigned == 16384
        except (redis.exceptions.RedisError, IndexError, ValueError):
            return False

    def primary_for_slot(self, slot: int) -> int:
        """The port of the primary serving ``slot``."""
        for start, end, primary, *_ in cast(Any, self.node(self.ports[0])).execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
        raise LookupError(f"slot {slot} is not served")

    def keyslot(self, key: str) -> int:
        """``CLUSTER KEYSLOT key`` as computed by the server."""
        return int(cast(Any, self.node(self.ports[0])).execute_command("CLUSTER", "KEYSLOT", key))

    def flushall(self) -> None:
        """Empty every primary."""
        for port in self.ports:
            self.node(port).flushall()

    def stop(self) -> None:
        """Stop every node we started, by pid."""
        running = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs = []


def need_cluster_tools() -> None:
    """Skip (or fail, with COMPOZY_REQUIRE_REDIS=1) when redis-server or redis-cli is missing."""
    need_redis()
    if REDIS_CLI is None:
        if REQUIRE_REDIS:
            pytest.fail("redis-cli is not installed but COMPOZY_REQUIRE_REDIS=1")
        pytest.skip("redis-cli not installed (set COMPOZY_REQUIRE_REDIS=1 to make this a failure)")


def start_cluster(extra: list[str] | None = None) -> Iterator[RedisCluster]:
    """Start a cluster, yield it, stop it: the body of a fixture. ``extra``: more redis-server options."""
    need_cluster_tools()
    workdir = Path(tempfile.mkdtemp(prefix="compozy-cluster-"))
    cluster = None
    for _attempt in range(3):  # a port taken between choosing and binding: try fresh ports
        cluster = RedisCluster(workdir, free_cluster_ports(3), extra)
        try:
            cluster.start()
            break
        except RuntimeError:
            cluster.stop()
            for conf in workdir.glob("nodes-*.conf"):
                conf.unlink()
            cluster = None
    if cluster is None:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError("could not start a 3-node Redis Cluster")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
