"""Shared fixtures: a real redis-server on a free loopback port, and both backends for the engine suite."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from compozy_nb.backends import Backend, connect

REQUIRE_REDIS = os.environ.get("COMPOZY_REQUIRE_REDIS") == "1"
REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 below 55535 (cluster bus ports are port + 10000)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 55535:
            return port
    raise RuntimeError("no free port below 55535")


class RedisServer:
    """A redis-server process of our own, stopped by pid."""

    def __init__(self, port: int, workdir: Path, extra: list[str] | None = None) -> None:
        assert REDIS_SERVER is not None
        self.port = port
        self.workdir = workdir
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [
            str(REDIS_SERVER),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
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
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}") from None
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start in 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def _need_redis() -> None:
    if REDIS_SERVER is None:
        if REQUIRE_REDIS:
            pytest.fail("redis-server is not installed but COMPOZY_REQUIRE_REDIS=1")
        pytest.skip("redis-server not installed (set COMPOZY_REQUIRE_REDIS=1 to make this a failure)")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole session."""
    _need_redis()
    workdir = Path(tempfile.mkdtemp(prefix="compozy-redis-"))
    server = RedisServer(free_port(), workdir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's redis-server (database flushed before each test)."""
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture(params=["redis", "embedded"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The engine suite runs on both: a real redis-server and the embedded fakeredis backend."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else f"embedded://{uuid.uuid4().hex}"
    backend = connect(url)
    yield backend
    backend.close()


# Shared machines are noisy: no per-example deadline (a deadline is a wall-clock threshold).
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("compozy", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("compozy")
