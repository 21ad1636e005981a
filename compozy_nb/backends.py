"""Connections: ``redis://``, ``rediss://``, ``redis+cluster://`` and the in-process ``embedded://`` backend.

Resolution order: explicit argument, ``COMPOZY_REDIS_URL``, ``redis.url`` in compozy.yaml, then embedded
(announced once on stderr). An explicit URL that cannot be reached is an error, never a silent fallback.
"""

from __future__ import annotations

import asyncio
import os
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from compozy_nb._secrets import MaskedStr, mask_url, scrub
from compozy_nb.errors import BackendError, ConfigError

EMBEDDED_URL = "embedded://"
_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster", "embedded", "unix")


@dataclass(frozen=True)
class ConnectOptions:
    """Timeouts and retries for real Redis. Retries apply to connection errors only."""

    connect_timeout: float = 5.0
    socket_timeout: float = 5.0
    retries: int = 3
    backoff_base: float = 0.05
    backoff_cap: float = 1.0


@dataclass(eq=False, repr=False)
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
    _async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = field(
        default_factory=weakref.WeakKeyDictionary, repr=False
    )
    _async_unbound: Any = field(default=None, repr=False)

    @property
    def async_client(self) -> Any:
        """A ``redis.asyncio`` client for the same server, for the running event loop.

        A ``redis.asyncio`` connection only works on the loop that opened it, and scripts (``asyncio.run``),
        notebooks and frameworks (LlamaIndex's sync ``Memory.put``) run several loops, one after the other or
        in different threads: each loop gets its own client, made on first use and dropped with the loop.
        Asked outside a running loop, the client made there is given to the first loop that asks next.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if self._async_unbound is None:
                self._async_unbound = _async_client(self)
            return self._async_unbound
        client = self._async_clients.get(loop)
        if client is None:
            client, self._async_unbound = self._async_unbound or _async_client(self), None
            self._async_clients[loop] = client
        return client

    @property
    def cluster(self) -> bool:
        """True for Redis Cluster (keys of one instance then share a hash tag)."""
        return self.kind == "cluster"

    @property
    def display_url(self) -> str:
        """The URL with any password hidden."""
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"Backend(url={self.display_url!r}, kind={self.kind!r})"

    def close(self) -> None:
        """Close the connection pool (the embedded server lives on for other connections)."""
        try:
            self.client.close()
        except Exception:  # pragma: no cover - closing must never raise
            pass


def parse_url(url: str) -> SplitResult:
    """Split a backend URL and check the parts redis-py would otherwise reject with a raw ``ValueError``
    (or silently ignore, like a database that is not a number).

    Raises:
        ConfigError: the part that is wrong (host, port, database), never the password.
    """
    shown = mask_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"malformed backend URL {shown}: {exc}", field="url", url=shown) from None
    scheme = parts.scheme.lower()
    if scheme in ("embedded", "unix") or not scheme:
        return parts
    try:
        port = parts.port
    except ValueError:
        port_text = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ConfigError(
            f"malformed backend URL {shown}: port '{scrub(port_text)}' is not a number between 0 and 65535",
            field="url.port",
            url=shown,
        ) from None
    if port == 0:
        raise ConfigError(f"malformed backend URL {shown}: port 0", field="url.port", url=shown)
    if not parts.hostname and not scheme.endswith("+cluster"):
        raise ConfigError(f"malformed backend URL {shown}: no host", field="url.host", url=shown)
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ConfigError(
            f"malformed backend URL {shown}: database '{scrub(database)}' is not a number (use /0 ... /15)",
            field="url.database",
            url=shown,
        )
    return parts


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
    if not isinstance(resolved, str):
        raise ConfigError(f"a backend URL must be a string, got {type(resolved).__name__}", field="url")
    scheme = parse_url(resolved).scheme.lower()
    if scheme not in _SCHEMES:
        raise BackendError(
            f"unsupported backend URL scheme '{scheme}://' (use redis://, rediss://, redis+cluster:// or embedded://)",
            url=mask_url(resolved),
        )
    if scheme == "embedded":
        from compozy_nb.embedded import embedded_client

        return Backend(resolved, embedded_client(resolved, asked=asked), "embedded", options or ConnectOptions())
    options = options or ConnectOptions()
    kind = "cluster" if scheme.endswith("+cluster") else "redis"
    client = _make_client(resolved, kind, options)
    _handshake(client, resolved, kind)
    return Backend(MaskedStr(resolved), client, kind, options)


def _make_client(url: str, kind: str, options: ConnectOptions) -> Any:
    """The redis-py client for ``url``; an option it refuses (``?socket_timeout=abc``) is INVALID_CONFIG."""
    try:
        if kind == "cluster":
            return _cluster_client(url, options)
        return redis.Redis.from_url(
            url,
            socket_connect_timeout=options.connect_timeout,
            socket_timeout=options.socket_timeout,
            retry=_retry(options),
            retry_on_error=[redis.exceptions.ConnectionError],
            health_check_interval=30,
        )
    except (ValueError, TypeError) as exc:
        shown = mask_url(url)
        raise ConfigError(
            f"malformed backend URL {shown}: {scrub(str(exc), _passwords(url))}", field="url", url=shown
        ) from None
    except Exception as exc:  # a cluster client talks to the nodes while it is built
        raise _unavailable(url, exc) from None


def _handshake(client: Any, url: str, kind: str) -> None:
    """PING the server, then ECHO a nonce: a server that answers ``+PONG`` to everything is not Redis.

    Any failure while connecting (also one that makes redis-py raise something else than a RedisError) is
    BACKEND_UNAVAILABLE, and the half-open client is closed.
    """
    nonce = f"compozy-nb-{uuid.uuid4().hex}"
    try:
        pong = client.ping()
        route = {"target_nodes": client.get_default_node()} if kind == "cluster" else {}
        echoed = client.echo(nonce, **route)
    except Exception as exc:  # whatever a broken peer makes the client raise
        _close_quietly(client)
        raise _unavailable(url, exc) from None
    values = list(echoed.values()) if isinstance(echoed, dict) else [echoed]
    if pong is not True or any(_text(v) != nonce for v in values):
        _close_quietly(client)
        raise BackendError(
            f"cannot use {mask_url(url)}: the server does not behave like Redis "
            f"(PING -> {scrub(repr(pong))[:40]}, ECHO -> {scrub(repr(values[0] if values else None))[:40]})",
            url=mask_url(url),
        )


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _unavailable(url: str, exc: BaseException) -> BackendError:
    shown = mask_url(url)
    detail = scrub(str(exc), _passwords(url))[:300] or type(exc).__name__
    if not isinstance(exc, (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)):
        detail = f"the server does not behave like Redis ({type(exc).__name__}: {detail})"
    return BackendError(f"cannot reach Redis at {shown}: {detail}", url=shown)


def _passwords(url: str) -> list[str]:
    """The credentials inside a URL (userinfo password or lone token, ``?password=`` values)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.password or "", "" if parts.password else parts.username or ""]
    for piece in parts.query.split("&"):
        name, _, value = piece.partition("=")
        if mask_url(f"x://h/?{name}=v") != f"x://h/?{name}=v":
            found.append(value)
    return [f for f in found if f]


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # closing a half-open client must never hide the real error
        pass


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


def reset_embedded(name: str = "default") -> None:
    """Forget an embedded server's data (tests, notebooks)."""
    from compozy_nb.embedded import reset_embedded as reset

    reset(name)
