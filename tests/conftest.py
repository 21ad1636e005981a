"""Shared fixtures: a real redis-server on a free loopback port, and both backends for the engine suite."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from compozy_nb import testing
from compozy_nb.backends import Backend, connect
from compozy_nb.testing import RedisServer, free_port


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole session."""
    testing.need_redis()
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


@pytest.fixture(params=["sync", "async"])
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test on both transports: inside, ``compozy_nb.testing.on_transport(mem)`` is ``mem`` itself or
    ``mem`` with its 8 operations awaited on ``AsyncMemory``. Opt in per module with
    ``pytestmark = pytest.mark.usefixtures("transport")``."""
    kind: str = request.param
    with testing.transport(kind):
        yield kind
