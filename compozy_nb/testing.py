"""A throwaway ``redis-server`` for tests, notebooks and benchmarks: a free loopback port, no persistence, stopped
by pid. Used by this project's own test suite; handy in yours::

    with RedisServer() as server:
        project = compozy_nb.Project("test", redis_url=server.url)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis

__all__ = ["RedisServer", "free_port", "redis_server_binary"]


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
