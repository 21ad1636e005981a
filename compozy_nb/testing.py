"""Helpers for tests, notebooks and benchmarks, used by this project's own suite and handy in yours.

- :class:`RedisServer`: a throwaway ``redis-server`` on a free loopback port, no persistence, stopped by pid;
- :class:`ApiServer`: ``python -m compozy_nb.server`` for a project, on a free port;
- :func:`transport` / :func:`on_transport` / :class:`AsyncDriven` / :class:`AsyncDrivenProject`: run a suite
  written against the sync API over the async transport;
- :func:`need_redis`: skip (or, with ``COMPOZY_REQUIRE_REDIS=1``, fail) a pytest test without ``redis-server``.

::

    with RedisServer() as server:
        project = compozy_nb.Project("test", redis_url=server.url)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast, overload

import redis

if TYPE_CHECKING:
    from compozy_nb.backends import Backend
    from compozy_nb.memory.instance import MemoryInstance
    from compozy_nb.project import Project, WorkflowHandle

T = TypeVar("T")

__all__ = [
    "ApiServer",
    "AsyncDriven",
    "AsyncDrivenProject",
    "RedisServer",
    "check_output",
    "free_port",
    "need_redis",
    "on_transport",
    "redis_server_binary",
    "transport",
]


def check_output(operation: str, output: Mapping[str, Any]) -> None:
    """Assert that ``output`` is what operation ``operation`` declares (its ``TypedDict`` in
    :mod:`compozy_nb.memory.outputs`, from the registry): every required key, no undeclared key, each value of
    its declared type (pydantic, strict; nested maps included).

    Raises:
        AssertionError: naming the missing, undeclared or mistyped keys.
    """
    from pydantic import TypeAdapter, ValidationError
    from typing_extensions import get_type_hints

    from compozy_nb.memory.operations import get

    def keys_of(kind: Any, value: Mapping[str, Any], where: str) -> None:
        keys, required, optional = set(value), set(kind.__required_keys__), set(kind.__optional_keys__)
        assert required <= keys, f"{where}: missing {sorted(required - keys)}"
        assert keys <= required | optional, f"{where}: undeclared {sorted(keys - required - optional)}"
        hints = get_type_hints(kind)
        for name, item in value.items():
            if isinstance(item, Mapping) and hasattr(hints[name], "__required_keys__"):
                keys_of(hints[name], item, f"{where}.{name}")

    kind = get(operation).output
    keys_of(kind, output, operation)
    try:
        TypeAdapter(kind).validate_python(dict(output), strict=True)
    except ValidationError as exc:
        raise AssertionError(f"{operation}: {exc}") from None


def redis_server_binary() -> str | None:
    """The ``redis-server`` on PATH, or None."""
    return shutil.which("redis-server")


def need_redis() -> None:
    """In a pytest test: skip it when ``redis-server`` is not installed, or fail it when the environment says
    Redis is required (``COMPOZY_REQUIRE_REDIS=1``, as CI sets)."""
    import pytest

    if redis_server_binary() is None:
        if os.environ.get("COMPOZY_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not installed but COMPOZY_REQUIRE_REDIS=1")
        pytest.skip("redis-server not installed (set COMPOZY_REQUIRE_REDIS=1 to make this a failure)")


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

    def start(self, timeout: float = 10.0) -> Self:
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


class ApiServer:
    """``python -m compozy_nb.server`` for a project, on a free loopback port, stopped by pid (the test suite's
    and ``benchmarks/bench_server.py``'s server)::

        with ApiServer(project_dir, redis.url) as api:
            httpx.get(f"{api.url}/healthz")

    Args:
        project_dir: The project directory (``compozy.yaml``).
        redis_url: The backend URL (``--redis``).
        api_key: Sets ``COMPOZY_API_KEY`` for the server (default: none, and the caller's is not passed on).
        host: The bind address.
    """

    def __init__(
        self, project_dir: Path | str, redis_url: str, *, api_key: str | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.project_dir = Path(project_dir)
        self.redis_url = redis_url
        self.api_key = api_key
        self.host = host
        self.port = free_port()
        self.logdir = Path(tempfile.mkdtemp(prefix="compozy-nb-server-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The server's command line."""
        return [
            sys.executable,
            *("-m", "compozy_nb.server", "--project", str(self.project_dir), "--host", self.host),
            *("--port", str(self.port), "--redis", self.redis_url, "--log-level", "warning", "--no-access-log"),
        ]

    def env(self) -> dict[str, str]:
        """The environment: the caller's, without its API key and backend URL, plus ``api_key``."""
        env = {k: v for k, v in os.environ.items() if k not in ("COMPOZY_API_KEY", "COMPOZY_REDIS_URL")}
        if self.api_key:
            env["COMPOZY_API_KEY"] = self.api_key
        return env

    def start(self, timeout: float = 30.0) -> Self:
        """Start it and wait until ``/healthz`` answers (another port when the free one was taken meanwhile)."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> Self:
        import httpx

        with (self.logdir / "out.log").open("wb") as out, (self.logdir / "err.log").open("wb") as err:
            self.proc = subprocess.Popen(self.command(), cwd=self.project_dir, env=self.env(), stdout=out, stderr=err)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.stderr()}")
            try:
                httpx.get(f"{self.url}/healthz", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer in {timeout:g} s: {self.stderr()}")

    def stderr(self) -> str:
        """What the server wrote to stderr so far."""
        path = self.logdir / "err.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process so far (Linux ``/proc``), or None."""
        try:
            assert self.proc is not None
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (AssertionError, OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Terminate it (kill after 10 s) and remove its logs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        shutil.rmtree(self.logdir, ignore_errors=True)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class _Loops:
    """One event loop per calling thread (a loop runs one coroutine at a time; tests use threads too)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._loops: dict[int, asyncio.AbstractEventLoop] = {}
        self._lock = threading.Lock()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` to its end on this thread's loop."""
        with self._lock:
            loop = self._loops.get(threading.get_ident())
            if loop is None:
                loop = self._loops[threading.get_ident()] = asyncio.new_event_loop()
        return loop.run_until_complete(coroutine)

    async def _close_client(self) -> None:
        await self.backend.async_client.aclose()

    def close(self) -> None:
        """Close each loop's async Redis client, then the loop (once no thread uses them)."""
        with self._lock:
            loops, self._loops = list(self._loops.values()), {}
        for loop in loops:
            try:
                loop.run_until_complete(self._close_client())
            finally:
                loop.close()


_ASYNC_TOO = frozenset({"log"})  # AsyncMemory methods besides the 8 operations


class AsyncDriven:
    """A memory instance whose 8 operations (and ``log``) run on the async transport.

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
        self._loops = _Loops(instance.backend)

    def __getattr__(self, name: str) -> Any:
        from compozy_nb.memory.operations import OPERATIONS

        if name not in OPERATIONS and name not in _ASYNC_TOO:
            return getattr(self.instance, name)
        method = getattr(self.memory, name)
        return lambda *args, **kwargs: self._loops.run(method(*args, **kwargs))

    def __repr__(self) -> str:
        return f"AsyncDriven({self.instance!r})"

    def close(self) -> None:
        """Close the loops and their async clients (call it when no thread uses the instance)."""
        self._loops.close()


class AsyncDrivenProject:
    """A project whose workflow runs go through the async runner: ``run``, ``workflow(id).run`` and
    ``workflow(id).run_many`` await ``arun``/``arun_many`` on a loop of the calling thread; memories it
    hands out are :class:`AsyncDriven`; everything else is the project's. Call :meth:`close` when done."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._loops = _Loops(project.backend)
        self._memories: list[AsyncDriven] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.project, name)

    def run(self, workflow_id: str, input: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``await project.arun(workflow_id, input)``."""
        return self._loops.run(self.project.arun(workflow_id, input))

    def workflow(self, workflow_id: str) -> _AsyncDrivenHandle:
        """The workflow handle, its runs awaited."""
        return _AsyncDrivenHandle(self.project.workflow(workflow_id), self._loops)

    def memory(self, *args: Any, **kwargs: Any) -> MemoryInstance:
        """An instance with its operations on the async transport."""
        driven = AsyncDriven(self.project.memory(*args, **kwargs))
        self._memories.append(driven)
        return cast("MemoryInstance", driven)

    def __repr__(self) -> str:
        return f"AsyncDrivenProject({self.project!r})"

    def close(self) -> None:
        """Close the loops, their async clients and the memories handed out."""
        while self._memories:
            self._memories.pop().close()
        self._loops.close()


class _AsyncDrivenHandle:
    def __init__(self, handle: WorkflowHandle, loops: _Loops) -> None:
        self.handle, self._loops = handle, loops

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def run(self, input: Mapping[str, Any] | None = None, /, **kwargs: Any) -> dict[str, Any]:
        return self._loops.run(self.handle.arun(input, **kwargs))

    def run_many(self, rows: Any, *, progress: bool | None = None, max_workers: int = 1) -> Any:
        if max_workers < 1:  # the same refusal as run_many's, before anything runs
            return self.handle.run_many(rows, progress=progress, max_workers=max_workers)
        return self._loops.run(self.handle.arun_many(rows, progress=progress, concurrency=max_workers))


_Driven = AsyncDriven | AsyncDrivenProject
_TRANSPORT: ContextVar[tuple[str, list[_Driven]] | None] = ContextVar("compozy_nb_test_transport", default=None)


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
    made: list[_Driven] = []
    token = _TRANSPORT.set((kind, made))
    try:
        yield
    finally:
        _TRANSPORT.reset(token)
        while made:
            made.pop().close()


@overload
def on_transport(target: MemoryInstance) -> MemoryInstance: ...


@overload
def on_transport(target: Project) -> Project: ...


def on_transport(target: MemoryInstance | Project) -> MemoryInstance | Project:
    """``target`` (a memory instance or a project) on the transport chosen by the enclosing
    :func:`transport` (itself outside one)."""
    from compozy_nb.project import Project

    current = _TRANSPORT.get()
    if current is None or current[0] == "sync":
        return target
    driven: _Driven = AsyncDrivenProject(target) if isinstance(target, Project) else AsyncDriven(target)
    current[1].append(driven)
    return cast("MemoryInstance | Project", driven)
