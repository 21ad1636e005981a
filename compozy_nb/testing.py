"""A throwaway ``redis-server`` for tests, notebooks and benchmarks: a free loopback port, no persistence, stopped
by pid. Used by this project's own test suite; handy in yours::

    with RedisServer() as server:
        project = compozy_nb.Project("test", redis_url=server.url)
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import redis

if TYPE_CHECKING:
    from compozy_nb.memory.instance import MemoryInstance

__all__ = ["AsyncDriven", "RedisServer", "free_port", "on_transport", "redis_server_binary", "transport"]


def redis_server_binary() -> str | None:
    """The ``redis-server`` on PATH, or None."""
    return shutil.which("redis-server")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 below 55535 (Redis Cluster uses port + 10000 for its bus)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < 55535:
            return port
    raise RuntimeError("no free port below 55535")


class RedisServer:
    """A redis-server process of our own.

    Args:
        port: The port (default: a free one).
        workdir: Its working directory (default: a new temporary one).
        extra: More ``redis-server`` arguments (they may re-enable persistence, e.g. ``--appendonly yes``).
    """

    def __init__(self, port: int | None = None, workdir: Path | None = None, extra: Sequence[str] = ()) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.port = port if port is not None else free_port()
        self._own_workdir = workdir is None
        self.workdir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="compozy-nb-redis-"))
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start it and wait until it answers PING."""
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(self.workdir), "--daemonize", "no", *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return self
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}") from None
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start in {timeout:g} s")

    def flush(self) -> None:
        """FLUSHALL."""
        redis.Redis(port=self.port).flushall()

    def stop(self) -> None:
        """Terminate it (kill after 5 s); a working directory it made itself is removed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class AsyncDriven:
    """A memory instance whose 8 operations run on the async transport.

    ``AsyncDriven(mem).read(last=5)`` awaits ``AsyncMemory(mem).read(last=5)`` on an event loop of the calling
    thread and returns its output; every other attribute (``key``, ``layout``, ``restore`` …) is the
    instance's. Lets a suite written against :class:`~compozy_nb.memory.instance.MemoryInstance` run unchanged
    over ``AsyncMemory`` (threads included: each gets its own loop). Call :meth:`close` when done (closes the
    loops and their async Redis clients).
    """

    def __init__(self, instance: MemoryInstance) -> None:
        from compozy_nb.memory.aio import AsyncMemory

        self.instance = instance
        self.memory = AsyncMemory(instance)
        self._loops: dict[int, asyncio.AbstractEventLoop] = {}
        self._lock = threading.Lock()

    def _loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            loop = self._loops.get(threading.get_ident())
            if loop is None:
                loop = self._loops[threading.get_ident()] = asyncio.new_event_loop()
            return loop

    def __getattr__(self, name: str) -> Any:
        from compozy_nb.memory.operations import OPERATIONS

        if name not in OPERATIONS:
            return getattr(self.instance, name)
        method = getattr(self.memory, name)
        return lambda *args, **kwargs: self._loop().run_until_complete(method(*args, **kwargs))

    def __repr__(self) -> str:
        return f"AsyncDriven({self.instance!r})"

    async def _close_client(self) -> None:
        await self.memory.client.aclose()

    def close(self) -> None:
        """Close each loop's async client, then the loop (call it when no thread uses the instance)."""
        with self._lock:
            loops, self._loops = list(self._loops.values()), {}
        for loop in loops:
            try:
                loop.run_until_complete(self._close_client())
            finally:
                loop.close()


_TRANSPORT: ContextVar[tuple[str, list[AsyncDriven]] | None] = ContextVar("compozy_nb_test_transport", default=None)


@contextmanager
def transport(kind: str) -> Iterator[None]:
    """Inside, :func:`on_transport` puts instances on ``kind`` ("sync" or "async"); the async ones made
    inside are closed at the end. A suite runs on both transports with a fixture::

        @pytest.fixture(params=["sync", "async"])
        def transport(request):
            with compozy_nb.testing.transport(request.param):
                yield request.param
    """
    if kind not in ("sync", "async"):
        raise ValueError(f"transport must be 'sync' or 'async', not {kind!r}")
    made: list[AsyncDriven] = []
    token = _TRANSPORT.set((kind, made))
    try:
        yield
    finally:
        _TRANSPORT.reset(token)
        while made:
            made.pop().close()


def on_transport(instance: MemoryInstance) -> MemoryInstance:
    """``instance`` on the transport chosen by the enclosing :func:`transport` (itself outside one)."""
    current = _TRANSPORT.get()
    if current is None or current[0] == "sync":
        return instance
    driven = AsyncDriven(instance)
    current[1].append(driven)
    return cast("MemoryInstance", driven)
