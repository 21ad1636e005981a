"""Load test of the HTTP API: concurrent clients appending to a few keys, then a check in Redis that nothing
was lost, duplicated or reordered.

Run ``python benchmarks/bench_server.py`` (50 clients x 100 appends to 10 keys, ~30 s), ``--quick`` (10 x 30),
``--clients/--requests/--keys`` to change the load, ``--redis URL`` to use an existing server (it must be
empty: the database is flushed).

Three runs of the same workload, each followed by the same verification:

1. ``raw``: 50 threads, plain redis-py ``RPUSH`` of the message JSON - the floor (no tokens, no limits, no
   metadata, no ids, no TTL);
2. ``sync``: 50 threads calling ``MemoryInstance.append`` directly (the engine, no HTTP);
3. ``http``: 50 concurrent keep-alive connections (asyncio streams, requests encoded up front) calling
   ``POST /api/v0/memory/bench_memory/append`` on ``python -m compozy_nb.server`` (uvicorn, one process; the
   memory endpoints run on its event loop). With two CPUs or more the server is pinned to one and the load
   generator and Redis to another, so the generator's CPU does not slow the server down.

Verification (per run): the number of stored messages equals the number of requests answered 200, every
(client, seq) pair is stored exactly once, every stored id is unique, each client's messages are stored in
the order it sent them, and the metadata counters equal what the lists hold.

Client and server share the machine's cores, so the HTTP throughput includes the client's own CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RedisServer

from compozy_nb import Project
from compozy_nb.testing import ApiServer

PROJECT = "bench"
MEMORY_REF = "bench_memory"
RESOURCE = f"""resource: memory
id: {MEMORY_REF}
description: unlimited buffer, so every append stays in the list (nothing evicted)
type: buffer
persistence:
  type: redis
  ttl: 1h
archive_max_messages: 0
"""


@dataclass
class Result:
    """One run: latencies (s) of the successful calls, failures, wall time and the verification."""

    name: str
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    check: dict[str, int] = field(default_factory=dict)

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))] * 1000

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


def message(client: int, seq: int) -> dict[str, Any]:
    return {
        "role": "user",
        "content": f"client {client} says hello, message number {seq}",
        "client": client,
        "seq": seq,
    }


def key_for(client: int, seq: int, keys: int) -> str:
    return f"load:k{(client + seq) % keys}"


def redis_key(key: str) -> str:
    return f"compozy:{PROJECT}:memory:{key}"


# ---------------------------------------------------------------------------- the three runs
def run_threads(name: str, clients: int, requests: int, keys: int, call: Callable[[int, int], None]) -> Result:
    """``clients`` threads, each calling ``call(client, seq)`` ``requests`` times in order."""
    result = Result(name)
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def worker(client: int) -> None:
        mine: list[float] = []
        failed: Counter[str] = Counter()
        start.wait()
        for seq in range(requests):
            t0 = time.perf_counter()
            try:
                call(client, seq)
                mine.append(time.perf_counter() - t0)
            except Exception as exc:
                failed[type(exc).__name__] += 1
        with lock:
            result.latencies.extend(mine)
            result.failures.update(failed)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    result.elapsed = time.perf_counter() - t0
    return result


def run_raw(url: str, clients: int, requests: int, keys: int) -> Result:
    client = redis.Redis.from_url(url, max_connections=clients + 4)

    def call(c: int, seq: int) -> None:
        client.rpush(redis_key(key_for(c, seq, keys)), json.dumps(message(c, seq)))

    return run_threads("raw redis-py RPUSH (threads)", clients, requests, keys, call)


def run_sync(project: Project, clients: int, requests: int, keys: int) -> Result:
    instances = {k: project.memory(MEMORY_REF, key=f"load:k{k}") for k in range(keys)}

    def call(c: int, seq: int) -> None:
        instances[(c + seq) % keys].append(message(c, seq))

    return run_threads("sync MemoryInstance.append (threads)", clients, requests, keys, call)


def run_http(base_url: str, clients: int, requests: int, keys: int) -> Result:
    """``clients`` keep-alive HTTP/1.1 connections, each sending its appends one after the other.

    The load generator is a few lines over asyncio streams with the requests encoded up front, so that its own
    CPU time (an ``httpx.AsyncClient`` costs ~3.5 ms per request, more than the server) does not decide the
    latencies measured."""
    result = Result("http POST .../append (keep-alive clients)")
    host, _, port = base_url.removeprefix("http://").partition(":")
    path = f"/api/v0/memory/{MEMORY_REF}/append"

    def encoded(client: int, seq: int) -> bytes:
        body = json.dumps({"key": key_for(client, seq, keys), "messages": [message(client, seq)]}).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    async def client_loop(client: int, go: asyncio.Event) -> None:
        wire = [encoded(client, seq) for seq in range(requests)]
        reader, writer = await asyncio.open_connection(host, int(port))
        await go.wait()
        try:
            for request in wire:
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line[:15].lower() == b"content-length:"
                )
                await reader.readexactly(length)
                if status == 200:
                    result.latencies.append(time.perf_counter() - t0)
                else:
                    result.failures[f"HTTP {status}"] += 1
        except (OSError, asyncio.IncompleteReadError) as exc:
            result.failures[type(exc).__name__] += 1
        finally:
            writer.close()

    async def main() -> None:
        go = asyncio.Event()
        tasks = [asyncio.create_task(client_loop(c, go)) for c in range(clients)]
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        go.set()
        await asyncio.gather(*tasks)
        result.elapsed = time.perf_counter() - t0

    asyncio.run(main())
    return result


def pin(pid: int, cpus: set[int]) -> bool:
    """Bind a process (0: this one) to ``cpus`` when the machine has them (Linux); False otherwise."""
    try:
        if not cpus <= os.sched_getaffinity(0) | os.sched_getaffinity(pid):
            return False
        os.sched_setaffinity(pid, cpus)
        return True
    except (AttributeError, OSError):
        return False


# ---------------------------------------------------------------------------- verification
def verify(client: redis.Redis, keys: int, expected: int) -> dict[str, int]:
    """Count what Redis holds against what was acknowledged."""
    pairs: Counter[tuple[int, int]] = Counter()
    ids: Counter[str] = Counter()
    out_of_order = 0
    metadata_mismatch = 0
    stored = 0
    for k in range(keys):
        name = redis_key(f"load:k{k}")
        raws = client.lrange(name, 0, -1)
        stored += len(raws)
        last_seq: dict[int, int] = {}
        for raw in raws:
            m = json.loads(raw)
            pairs[(m["client"], m["seq"])] += 1
            if "id" in m:
                ids[m["id"]] += 1
            if m["seq"] <= last_seq.get(m["client"], -1):
                out_of_order += 1
            last_seq[m["client"]] = m["seq"]
        meta = client.hgetall(f"{name}:metadata")
        if meta and int(meta.get(b"message_count", -1)) != len(raws):
            metadata_mismatch += 1
    return {
        "stored": stored,
        "lost": max(0, expected - len(pairs)),
        "duplicated": sum(n - 1 for n in pairs.values() if n > 1) + sum(n - 1 for n in ids.values() if n > 1),
        "out_of_order": out_of_order,
        "metadata_mismatch": metadata_mismatch,
    }


# ---------------------------------------------------------------------------- server process
def make_project(root: Path) -> Path:
    (root / "memory").mkdir(parents=True)
    (root / "compozy.yaml").write_text(f"name: {PROJECT}\nautoload:\n  include: ['memory/*.yaml']\n")
    (root / "memory" / "bench.yaml").write_text(RESOURCE)
    return root


def print_results(results: list[Result], requests_total: int) -> None:
    raw = results[0]
    header = ("path", "ok", "failed", "lost", "dup", "order", "meta", "p50 ms", "p99 ms", "req/s", "p50/raw")
    rows = []
    for r in results:
        rows.append(
            (
                r.name,
                str(len(r.latencies)),
                str(sum(r.failures.values())),
                str(r.check["lost"]),
                str(r.check["duplicated"]),
                str(r.check["out_of_order"]),
                str(r.check["metadata_mismatch"]),
                f"{r.pct(0.50):.2f}",
                f"{r.pct(0.99):.2f}",
                f"{r.throughput:,.0f}",
                f"{r.pct(0.50) / raw.pct(0.50):.1f}x",
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    for r in results:
        if r.failures:
            print(f"  {r.name}: failures {dict(r.failures)}")
    print(f"\nexpected per run: {requests_total} messages; lost/dup/order/meta must all be 0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=100, help="appends per client")
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="10 clients x 30 appends")
    parser.add_argument("--redis", default=None, help="an existing, empty Redis (flushed!)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.requests = 10, 30
    total = args.clients * args.requests

    own = None if args.redis else RedisServer().start()
    url = args.redis or own.url  # type: ignore[union-attr]
    workdir = Path(tempfile.mkdtemp(prefix="compozy-bench-server-"))
    server: ApiServer | None = None
    check_client = redis.Redis.from_url(url)
    try:
        project_dir = make_project(workdir / "project")
        project = Project.load(project_dir, redis_url=url)
        server = ApiServer(project_dir, url).start()
        ping = min(_timed(check_client.ping) for _ in range(50)) * 1e6
        print(
            f"bench_server: {args.clients} clients x {args.requests} appends to {args.keys} keys "
            f"({total} per run); Python {sys.version.split()[0]}, {os.cpu_count()} CPU(s), "
            f"Redis PING {ping:.0f} µs"
        )
        # Warm every path (connections, tokenizer, script cache, server thread pool), then start clean.
        run_raw(url, 10, 5, args.keys)
        run_sync(project, 10, 5, args.keys)
        run_http(server.url, 10, 5, args.keys)

        results = []
        cpu_note = ""
        runners: list[tuple[str, Callable[[], Result]]] = [
            ("raw", lambda: run_raw(url, args.clients, args.requests, args.keys)),
            ("sync", lambda: run_sync(project, args.clients, args.requests, args.keys)),
            ("http", lambda: run_http(http_url, args.clients, args.requests, args.keys)),
        ]
        http_url = server.url
        everywhere = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        for name, runner in runners:
            check_client.flushdb()
            pinned = False
            if name == "http" and len(everywhere) >= 2:  # server on one core; load generator and Redis on another
                first, second = sorted(everywhere)[:2]
                pinned = pin(server.proc.pid, {first}) and pin(0, {second})
                if pinned and own is not None and own.proc is not None:
                    pin(own.proc.pid, {second})
            server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
            result = runner()
            client_cpu = time.process_time() - client_cpu
            if pinned:
                pin(0, everywhere)
                if own is not None and own.proc is not None:
                    pin(own.proc.pid, everywhere)
                cpu_note_pin = f"; server pinned to CPU {first}, load generator and Redis to CPU {second}"
            else:
                cpu_note_pin = ""
            if name == "http" and server_cpu is not None and result.latencies:
                server_cpu = (server.cpu_seconds() or 0.0) - server_cpu
                n = len(result.latencies)
                cpu_note = (
                    f"http: server process CPU {server_cpu / n * 1000:.2f} ms/request, "
                    f"load-generator CPU {client_cpu / n * 1000:.2f} ms/request{cpu_note_pin}; "
                    f"p99/p50 {result.pct(0.99) / result.pct(0.50):.1f}"
                )
            result.check = verify(check_client, args.keys, len(result.latencies))
            results.append(result)
        print()
        print_results(results, total)
        if cpu_note:
            print(cpu_note)
        bad = any(
            r.failures
            or r.check["lost"]
            or r.check["duplicated"]
            or r.check["out_of_order"]
            or r.check["metadata_mismatch"]
            or r.check["stored"] != total
            for r in results
        )
        return 1 if bad else 0
    finally:
        if server is not None:
            server.stop()
        if own is not None:
            own.stop()
        else:
            check_client.flushdb()
        shutil.rmtree(workdir, ignore_errors=True)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
