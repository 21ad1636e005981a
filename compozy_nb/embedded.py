"""The in-process backend: ``embedded://`` (fakeredis, data in this process) and ``embedded:///path/file.json``
(the same, kept on disk so it survives a kernel restart).

Persistence design: fakeredis has none, so after every command that may change data (anything but known
read-only commands; scripts included) the whole keyspace of database 0 is serialised to JSON (strings, lists,
hashes, sets, sorted sets with their absolute expiry time) and written to a temporary file that then replaces the
file atomically (``os.replace``) — only when the content changed. On first use in a process the file is loaded
into a fresh server. A lock file (``<file>.lock``, ``flock``) keeps a second process from using the same file.

Limits (documented in docs/features/notebook.md): made for notebook-sized data (each write rewrites the file:
cost grows with the data, a few MB is fine, hundreds of MB is not); one process at a time; database 0 only;
writes made through ``Backend.async_client`` (the HTTP server's async path) are saved with the next synchronous
write or when the process exits; a crash keeps the last completed write; no Redis RDB/AOF compatibility.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from compozy_nb.errors import BackendError

SNAPSHOT_VERSION = 1
READ_ONLY = frozenset(
    b"""get mget strlen getrange exists type ttl pttl expiretime pexpiretime lrange llen lindex hget hmget hgetall
    hkeys hvals hlen hexists hstrlen smembers sismember smismember scard srandmember zrange zrangebyscore
    zrevrange zrevrangebyscore zscore zcard zcount zrank zrevrank scan sscan hscan zscan keys dbsize randomkey
    ping echo info time hello client select script config command memory object dump evalsha_ro eval_ro
    watch unwatch multi discard""".split()
)
_announced = False
_servers: dict[str, Any] = {}  # the embedded servers of this process by name (file:<path> for a file)
_lock = threading.Lock()


def embedded_client(url: str, *, asked: bool) -> Any:
    """The fakeredis client for an ``embedded://`` URL (``backends.connect`` wraps it in a Backend): in memory
    (``embedded://`` or ``embedded://name``) or kept in a file (``embedded:///abs/path.json``,
    ``embedded://./relative.json``). ``asked``: the URL was given, not a fallback (announced otherwise).

    Raises:
        BackendError: the file cannot be read, written or is used by another process.
    """
    if not asked:
        announce()
    path = snapshot_path(url)
    return _memory_client(url) if path is None else _file_client(path)


def reset_embedded(name: str = "default") -> None:
    """Forget an embedded server's data (tests, notebooks)."""
    with _lock:
        _servers.pop(name, None)


def snapshot_path(url: str) -> Path | None:
    """The file of an ``embedded://`` URL, or None for an in-memory server."""
    parts = urlsplit(url)
    if not parts.path or parts.path == "/":
        return None
    return Path(os.path.expanduser(parts.netloc + parts.path)).resolve()


def announce() -> None:
    """Say once that the embedded backend is in use: one info line on stdout in IPython/Jupyter (not an error
    box), on stderr elsewhere and always from the CLI (whose stdout stays machine-readable)."""
    global _announced
    if _announced:
        return
    _announced = True
    stream = sys.stdout if _in_ipython() else sys.stderr
    print(
        "compozy-nb: no Redis URL configured; using the embedded in-process backend "
        "(data lives only in this process; set COMPOZY_REDIS_URL or redis.url to use Redis, "
        "or embedded:///path/file.json to keep it on disk)",
        file=stream,
    )


def _in_ipython() -> bool:
    from compozy_nb.memory.log import current_source

    if current_source() == "cli":  # the CLI run in-process (e.g. from a notebook): its stdout is data
        return False
    ipython = sys.modules.get("IPython")
    return ipython is not None and ipython.get_ipython() is not None


def _memory_client(url: str) -> Any:
    import fakeredis

    name = urlsplit(url).netloc or "default"
    with _lock:
        server = _servers.get(name)
        if server is None:
            server = fakeredis.FakeServer()
            _servers[name] = server
    return fakeredis.FakeRedis(server=server)


def _file_client(path: Path) -> Any:
    import fakeredis

    name = f"file:{path}"
    with _lock:
        store = _servers.get(name)
        if not isinstance(store, SnapshotStore):
            store = SnapshotStore(path)
            _servers[name] = store
    return fakeredis.FakeRedis(server=store.server, connection_class=store.connection_class())


class SnapshotStore:
    """A fakeredis server whose database 0 is mirrored to a JSON file after every data-changing command."""

    def __init__(self, path: Path) -> None:
        import fakeredis

        self.path = path
        self.server = fakeredis.FakeServer()
        self._lock = threading.RLock()
        self._digest = ""
        self._lock_file = _acquire(path)
        self._raw = fakeredis.FakeRedis(server=self.server)
        self.load()
        atexit.register(self._save_at_exit)

    def connection_class(self) -> type:
        """A fakeredis connection class whose socket saves after data-changing commands."""
        from fakeredis._clients._sync import FakeRedisConnection

        store = self

        class PersistentConnection(FakeRedisConnection):
            def _connect(self) -> Any:
                sock = super()._connect()
                process = sock._process_command

                def process_and_save(fields: list[bytes]) -> None:
                    process(fields)
                    if fields and bytes(fields[0]).lower() not in READ_ONLY:
                        store.save()

                sock._process_command = process_and_save  # type: ignore[method-assign]
                return sock

        return PersistentConnection

    # ------------------------------------------------------------------ file
    def load(self) -> None:
        """Fill the server from the file (nothing when it does not exist yet)."""
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != SNAPSHOT_VERSION:
                raise ValueError(f"unknown snapshot version {data.get('version')!r}")
            now = int(time.time() * 1000)
            pipe = self._raw.pipeline(transaction=False)
            for entry in data["keys"]:
                _restore(pipe, entry, now)
            pipe.execute()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"cannot load the embedded snapshot {self.path}: {exc}", url=str(self.path)) from None
        self._digest = hashlib.sha256(self.path.read_bytes()).hexdigest()

    def _save_at_exit(self) -> None:
        try:
            self.save()
        except BackendError as exc:  # the directory may be gone: say so, never a traceback at exit
            print(f"compozy-nb: {exc}", file=sys.stderr)

    def save(self) -> None:
        """Write the keyspace to the file when it changed (atomic replace)."""
        with self._lock:
            text = json.dumps({"version": SNAPSHOT_VERSION, "keys": _dump(self._raw)}, separators=(",", ":"))
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest == self._digest:
                return
            try:
                fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                os.replace(tmp, self.path)
            except OSError as exc:
                raise BackendError(
                    f"cannot write the embedded snapshot {self.path}: {exc}", url=str(self.path)
                ) from None
            self._digest = digest


def _b(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _dump(client: Any) -> list[dict[str, Any]]:
    """Every key of database 0 with its type, value and absolute expiry (ms since the epoch)."""
    now = int(time.time() * 1000)
    entries = []
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key).decode()
        ttl = client.pttl(key)
        value: Any
        if kind == "string":
            value = _b(client.get(key))
        elif kind == "list":
            value = [_b(v) for v in client.lrange(key, 0, -1)]
        elif kind == "hash":
            value = {_b(k): _b(v) for k, v in client.hgetall(key).items()}
        elif kind == "set":
            value = sorted(_b(v) for v in client.smembers(key))
        elif kind == "zset":
            value = [[_b(m), s] for m, s in client.zrange(key, 0, -1, withscores=True)]
        else:
            continue
        entries.append({"key": _b(key), "type": kind, "value": value, "expire_at": now + ttl if ttl > 0 else None})
    return entries


def _restore(pipe: Any, entry: dict[str, Any], now: int) -> None:
    key, kind, value, expire_at = base64.b64decode(entry["key"]), entry["type"], entry["value"], entry["expire_at"]
    if expire_at is not None and expire_at <= now:
        return
    d = base64.b64decode
    if kind == "string":
        pipe.set(key, d(value))
    elif kind == "list":
        pipe.rpush(key, *[d(v) for v in value])
    elif kind == "hash":
        pipe.hset(key, mapping={d(k): d(v) for k, v in value.items()})
    elif kind == "set":
        pipe.sadd(key, *[d(v) for v in value])
    elif kind == "zset":
        pipe.zadd(key, {d(m): s for m, s in value})
    if expire_at is not None:
        pipe.pexpireat(key, expire_at)


def _acquire(path: Path) -> Any:
    """An exclusive lock on ``<file>.lock`` for this process's lifetime (where ``fcntl`` exists)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a+")  # noqa: SIM115 - held until exit
    except OSError as exc:
        raise BackendError(f"cannot use {path} for the embedded backend: {exc}", url=str(path)) from None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise BackendError(
            f"{path} is used by another process (one process at a time per embedded file)", url=str(path)
        ) from None
    return handle
