"""The async transport under concurrency: 200 ``AsyncMemory.append`` calls gathered on one event loop against the
same 200 appends made one after the other with ``MemoryInstance.append``, on the same server in the same run.
Target: the concurrent batch at ≥ 2x the throughput of the sequential one, and nothing lost.

    python benchmarks/bench_async.py                 # a private redis-server
    python benchmarks/bench_async.py --redis URL     # an existing server (keys under a unique project name)
    python benchmarks/bench_async.py --rounds 3

Each round times both batches on fresh keys (sequential first on odd rounds, concurrent first on even ones) and
checks that every concurrent append was stored. The ratio printed is the median over the rounds. Throughput
comes from overlapping the Redis round trips and the worker-thread encoding; the machine's core count bounds it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import tiktoken
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RedisServer, make_contents

from compozy_nb.memory.aio import MAX_IN_FLIGHT, AsyncMemory
from compozy_nb.project import Project
from compozy_nb.tokens import ensure_offline_vocab, get_counter

TARGET = 2.0
CALLS = 200


def _project(url: str) -> Project:
    project = Project(f"bench{uuid.uuid4().hex[:8]}", redis_url=url)
    project.add_yaml(
        yaml.safe_dump(
            {
                "resource": "memory",
                "id": "chat",
                "type": "message_count_based",
                "max_messages": 1000,
                "persistence": {"ttl": "1h"},
            }
        )
    )
    return project


def _sequential(project: Project, key: str, contents: list[str]) -> float:
    mem = project.memory("chat", key=key)
    started = time.perf_counter()
    for i in range(CALLS):
        mem.append({"role": "user", "content": contents[i % len(contents)]})
    return time.perf_counter() - started


def _concurrent(project: Project, key: str, contents: list[str]) -> float:
    mem = AsyncMemory(project.memory("chat", key=key))

    async def batch() -> float:
        # not timed: a long-running process (a server, a notebook kernel) has its connections open already, as
        # the sync client has after its first call; 64 concurrent calls open the pool's 64 connections
        await asyncio.gather(*(mem.append("warm up") for _ in range(MAX_IN_FLIGHT)))
        await mem.delete()
        started = time.perf_counter()
        outs = await asyncio.gather(
            *(mem.append({"role": "user", "content": contents[i % len(contents)]}) for i in range(CALLS))
        )
        elapsed = time.perf_counter() - started
        await mem.client.aclose()
        if sum(o["appended"] for o in outs) != CALLS:
            raise SystemExit("concurrent appends were lost")
        return elapsed

    return asyncio.run(batch())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", help="an existing Redis URL (default: a private redis-server)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    args = parser.parse_args(argv)
    ensure_offline_vocab()
    contents = make_contents(tiktoken.get_encoding(get_counter(None).encoding_name), 64, 50)
    server = None if args.redis else RedisServer().start()
    try:
        url = args.redis or server.url  # type: ignore[union-attr]
        project = _project(url)
        project.memory("chat", key="warm").append("warm up")
        ratios = []
        print(f"{'round':>5}  {'sequential':>12}  {'concurrent':>12}  {'ratio':>6}")
        for r in range(args.rounds):
            order = ("sequential", "concurrent") if r % 2 else ("concurrent", "sequential")
            times = {}
            for name in order:
                key = f"{name}:{r}"
                run = _sequential if name == "sequential" else _concurrent
                times[name] = run(project, key, contents)
                stored = project.memory("chat", key=key).stats()["message_count"]
                if stored != CALLS:
                    raise SystemExit(f"{name}: {stored} of {CALLS} messages stored")
                project.memory("chat", key=key).delete()
            ratio = times["sequential"] / times["concurrent"]
            ratios.append(ratio)
            print(
                f"{r + 1:>5}  {CALLS / times['sequential']:>8.0f}/s  {CALLS / times['concurrent']:>8.0f}/s  "
                f"{ratio:>5.2f}x"
            )
        median = statistics.median(ratios)
        verdict = "PASS" if median >= TARGET else "MISS"
        print(
            f"\n{CALLS} concurrent async appends: {median:.2f}x the throughput of {CALLS} sequential sync "
            f"appends (median of {args.rounds}; target >= {TARGET:g}x) {verdict}"
        )
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
