"""Connections: ``redis://``, ``rediss://``, ``redis+cluster://`` and the in-process ``embedded://`` backend.

Resolution order: explicit argument, ``COMPOZY_REDIS_URL``, ``redis.url`` in compozy.yaml, then embedded
(announced once on stderr). An explicit URL that cannot be reached is an error, never a silent fallback.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from compozy_nb.errors import BackendError

EMBEDDED_URL = "embedded://"
_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster", "embedded", "unix")
_embedded_servers: dict[str, Any] = {}
_lock = threading.Lock()
_announced = False


@dataclass(frozen=True)
class ConnectOptions:
    """Timeouts and retries for real Redis. Retries apply to connection errors only."""

    connect_timeout: float = 5.0
    socket_timeout: float = 5.0
    retries: int = 3
    backoff_base: float = 0.05
    backoff_cap: float = 1.0


@dataclass(eq=False)
class Backend:
    """A live connection to where memories are stored.

    Attributes:
        url: The URL it was opened with (password masked in ``repr``).
        client: A redis-py client (``redis.Redis``, ``redis.RedisCluster`` or ``fakeredis.FakeRedis``).
        kind: ``redis``, ``cluster`` or ``embedded``.
    """

    url: str
    client: Any = field(repr=False)
    kind: str
    options: ConnectOptions = field(default_factory=lambda: ConnectOptions(), repr=False)
    _async_client: Any = field(default=None, repr=False)

    @property
    def async_client(self) -> Any:
        """A ``redis.asyncio`` client for the same server, made on first use (bind it to one event loop)."""
        if self._async_client is None:
            self._async_client = _async_client(self)
        return self._async_client

    @property
    def cluster(self) -> bool:
        """True for Redis Cluster (keys of one instance then share a hash tag)."""
        return self.kind == "cluster"

    @property
    def display_url(self) -> str:
        """The URL with any password hidden."""
        return mask_url(self.url)

    def close(self) -> None:
        """Close the connection pool (the embedded server lives on for other connections)."""
        try:
            self.client.close()
        except Exception:  # pragma: no cover - closing must never raise
            pass


def mask_url(url: str) -> str:
    """Hide the password in a URL."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def resolve_url(explicit: str | None = None, project_url: str | None = None) -> tuple[str, bool]:
    """Pick the URL to use and say whether it was asked for (explicit, environment or project)."""
    for candidate in (explicit, os.environ.get("COMPOZY_REDIS_URL"), project_url):
        if candidate:
            return candidate, True
    return EMBEDDED_URL, False


def connect(
    url: str | None = None, *, project_url: str | None = None, options: ConnectOptions | None = None
) -> Backend:
    """Open a backend and check that it answers.

    Raises:
        BackendError: an unknown scheme or a server that cannot be reached.
    """
    resolved, asked = resolve_url(url, project_url)
    scheme = urlsplit(resolved).scheme.lower()
    if scheme not in _SCHEMES:
        raise BackendError(
            f"unsupported backend URL scheme '{scheme}://' (use redis://, rediss://, redis+cluster:// or embedded://)",
            url=mask_url(resolved),
        )
    if scheme == "embedded":
        from compozy_nb.embedded import connect_embedded

        return connect_embedded(resolved, asked=asked, options=options or ConnectOptions())
    options = options or ConnectOptions()
    try:
        if scheme.endswith("+cluster"):
            client: Any = _cluster_client(resolved, options)
            kind = "cluster"
        else:
            client = redis.Redis.from_url(
                resolved,
                socket_connect_timeout=options.connect_timeout,
                socket_timeout=options.socket_timeout,
                retry=_retry(options),
                retry_on_error=[redis.exceptions.ConnectionError],
                health_check_interval=30,
            )
            kind = "redis"
        client.ping()
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        # RedisClusterException (no reachable node, cluster mode disabled ...) is not a RedisError
        raise BackendError(f"cannot reach Redis at {mask_url(resolved)}: {exc}", url=mask_url(resolved)) from None
    return Backend(resolved, client, kind, options)


def _retry(options: ConnectOptions) -> Retry:
    """Backoff retries on connection errors only: a command that timed out may have run, so it is not sent
    again behind the caller's back (redis-py's default Retry also retries timeouts)."""
    return Retry(
        ExponentialBackoff(options.backoff_cap, options.backoff_base),
        options.retries,
        supported_errors=(redis.exceptions.ConnectionError,),
    )


class _Cluster(redis.RedisCluster):
    """RedisCluster that, like our standalone client, never re-sends a command that timed out (it may have run):
    redis-py's cluster client retries TimeoutError whatever Retry it is given."""

    ERRORS_ALLOW_RETRY = tuple(  # type: ignore[assignment]
        e for e in redis.RedisCluster.ERRORS_ALLOW_RETRY if not issubclass(e, redis.exceptions.TimeoutError)
    )


def _without_timeouts(errors: tuple[type[Exception], ...]) -> tuple[type[Exception], ...]:
    return tuple(e for e in errors if not issubclass(e, redis.exceptions.TimeoutError))


def _async_cluster_class() -> type[Any]:
    """redis.asyncio's RedisCluster without retries on timeouts (as :class:`_Cluster`), made on first use."""
    import redis.asyncio as aioredis

    return type(
        "_AsyncCluster",
        (aioredis.RedisCluster,),
        {"ERRORS_ALLOW_RETRY": _without_timeouts(aioredis.RedisCluster.ERRORS_ALLOW_RETRY)},
    )


def _cluster_client(url: str, options: ConnectOptions) -> Any:
    plain = url.replace("+cluster", "", 1)
    return _Cluster.from_url(
        plain,
        socket_connect_timeout=options.connect_timeout,
        socket_timeout=options.socket_timeout,
        retry=_retry(options),
    )


def _async_client(backend: Backend) -> Any:
    import redis.asyncio as aioredis

    options = backend.options
    if backend.kind == "embedded":
        import fakeredis

        server = backend.client.connection_pool.connection_kwargs["server"]
        return fakeredis.FakeAsyncRedis(server=server)
    if backend.kind == "cluster":
        return _async_cluster_class().from_url(
            backend.url.replace("+cluster", "", 1),
            socket_connect_timeout=options.connect_timeout,
            socket_timeout=options.socket_timeout,
        )
    from redis.asyncio.retry import Retry as AsyncRetry

    return aioredis.Redis.from_url(
        backend.url,
        socket_connect_timeout=options.connect_timeout,
        socket_timeout=options.socket_timeout,
        retry=AsyncRetry(
            ExponentialBackoff(options.backoff_cap, options.backoff_base),
            options.retries,
            supported_errors=(redis.exceptions.ConnectionError,),
        ),
        retry_on_error=[redis.exceptions.ConnectionError],
    )


def _embedded_client(url: str) -> Any:
    import fakeredis

    name = urlsplit(url).netloc or "default"
    with _lock:
        server = _embedded_servers.get(name)
        if server is None:
            server = fakeredis.FakeServer()
            _embedded_servers[name] = server
    return fakeredis.FakeRedis(server=server)


def _announce_embedded() -> None:
    global _announced
    with _lock:
        if _announced:
            return
        _announced = True
    print(
        "compozy-nb: no Redis URL configured; using the embedded in-process backend "
        "(data lives only in this process; set COMPOZY_REDIS_URL or redis.url to use Redis)",
        file=sys.stderr,
    )


def reset_embedded(name: str = "default") -> None:
    """Forget an embedded server's data (tests, notebooks)."""
    with _lock:
        _embedded_servers.pop(name, None)
