"""What-if simulator benchmark: a 10,000-turn replay of one configuration against the bare appends and reads it
performs, issued in a loop, measured in the same run on the same server.

    python benchmarks/bench_simulate.py                 # a private redis-server, plus the embedded backend
    python benchmarks/bench_simulate.py --redis URL     # an existing server (keys under a unique namespace)

Rows:
- ``engine loop`` (the baseline): the appends and reads the replay performs, issued by hand in a loop:
  ``mem.append(batch)`` / ``mem.read(last=20)`` on the same engine, one call at a time.
- ``simulate``: ``compozy_nb.simulate(df, [resource], read={"last": 20}, max_workers=1)``. Target: ≤ 3x the
  engine loop.
- ``raw redis-py loop`` (information): for each agent turn one RPUSH of the same stored JSON and one LRANGE of the
  last 20: no Lua script, no token counting, no decoding; what the engine itself costs over raw Redis.
- ``simulate, N workers`` (information): the same replay over N processes.
Run it on a quiet machine: with many processes competing for the CPU the absolute numbers move a lot; the ratios
less so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd
import redis
import tiktoken
from _common import RedisServer, make_contents

import compozy_nb
from compozy_nb.memory.instance import MemoryInstance, MemoryRuntime
from compozy_nb.memory.messages import encode, utc_now_iso
from compozy_nb.sdk import MemoryResource
from compozy_nb.tokens import ensure_offline_vocab, get_counter

LAST = 20
TARGET = 3.0


def conversations(count: int, turns: int) -> pd.DataFrame:
    """``count`` conversations of ``turns`` agent turns (user, assistant), about 30 tokens a message."""
    ensure_offline_vocab()
    texts = make_contents(tiktoken.get_encoding(get_counter(None).encoding_name), 500, 30)
    rows = []
    for c in range(count):
        for t in range(turns):
            for r, role in enumerate(("user", "assistant")):
                rows.append(
                    {"conversation_id": f"c{c}", "turn": 2 * t + r, "role": role, "content": texts[(c + t + r) % 500]}
                )
    return pd.DataFrame(rows)


def resource() -> Any:
    return MemoryResource("window40").message_count_based(40).build()


def batches(frame: pd.DataFrame) -> list[list[list[dict[str, Any]]]]:
    """Per conversation, the appends the simulator makes: the messages between two reads."""
    out = []
    for conversation_id, group in frame.groupby("conversation_id", sort=False):
        calls: list[list[dict[str, Any]]] = []
        pending: list[dict[str, Any]] = []
        for position, row in enumerate(group.to_dict(orient="records")):
            if row["role"] == "assistant" and pending:
                calls.append(pending)
                pending = []
            pending.append({"role": row["role"], "content": row["content"], "id": f"{conversation_id}-{position}"})
        calls.append(pending)
        out.append(calls)
    return out


def bare_loop(url: str, plan: list[list[list[dict[str, Any]]]]) -> Callable[[], None]:
    client = redis.Redis.from_url(url)
    counter = get_counter(None)
    encoded = [
        [
            [
                encode(m, counter, now=utc_now_iso(), max_bytes=65536, max_tokens=None, operation="append").raw
                for m in call
            ]
            for call in calls
        ]
        for calls in plan
    ]

    def run() -> None:
        prefix = f"bench-bare-{uuid.uuid4().hex[:8]}"
        for number, calls in enumerate(encoded):
            key = f"{prefix}:{number}"
            for i, raws in enumerate(calls):
                client.rpush(key, *raws)
                if i < len(calls) - 1:
                    client.lrange(key, -LAST, -1)
            client.delete(key)

    return run


def engine_loop(url: str, plan: list[list[list[dict[str, Any]]]]) -> Callable[[], None]:
    backend = compozy_nb.connect(url)
    runtime = MemoryRuntime(resource())

    def run() -> None:
        project = f"bench-eng-{uuid.uuid4().hex[:8]}"
        for number, calls in enumerate(plan):
            mem = MemoryInstance(runtime, f"sim:{number}", backend, project)
            for i, call in enumerate(calls):
                mem.append(call)
                if i < len(calls) - 1:
                    mem.read(last=LAST)
            for key in mem.layout.all_keys:
                backend.client.delete(key)

    return run


def timed(cases: list[tuple[str, Callable[[], Any]]], repeat: int) -> list[tuple[str, float]]:
    """The best of ``repeat`` runs of each case, the cases interleaved so slow phases of the machine hit all."""
    best = {name: float("inf") for name, _ in cases}
    for round_ in range(repeat):
        for name, fn in cases if round_ % 2 == 0 else list(reversed(cases)):
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    return [(name, best[name]) for name, _ in cases]


def measure(url: str, frame: pd.DataFrame, repeat: int, workers: int) -> list[tuple[str, float]]:
    plan = batches(frame)
    model = resource()

    def sim(n: int) -> Callable[[], Any]:
        return lambda: compozy_nb.simulate(
            frame, [model], read={"last": LAST}, backend=url, max_workers=n, progress=False
        )

    cases: list[tuple[str, Callable[[], Any]]] = [
        ("engine loop", engine_loop(url, plan)),
        ("simulate", sim(1)),
        ("raw redis-py loop", bare_loop(url, plan) if not url.startswith("embedded") else embedded_bare(url, plan)),
    ]
    if workers > 1:
        cases.append((f"simulate, {workers} workers", sim(workers)))
    return timed(cases, repeat)


def embedded_bare(url: str, plan: list[list[list[dict[str, Any]]]]) -> Callable[[], None]:
    """The bare loop on the embedded backend's own client."""
    backend = compozy_nb.connect(url)
    counter = get_counter(None)
    encoded = [
        [
            [
                encode(m, counter, now=utc_now_iso(), max_bytes=65536, max_tokens=None, operation="append").raw
                for m in call
            ]
            for call in calls
        ]
        for calls in plan
    ]

    def run() -> None:
        client = backend.client
        for number, calls in enumerate(encoded):
            key = f"bench-bare:{number}"
            for i, raws in enumerate(calls):
                client.rpush(key, *raws)
                if i < len(calls) - 1:
                    client.lrange(key, -LAST, -1)
            client.delete(key)

    return run


def report(title: str, rows: list[tuple[str, float]], turns: int, target: float | None) -> None:
    base = rows[0][1]
    print(f"\n{title}: {turns} agent turns")
    print(f"{'case':<24}{'seconds':>10}{'µs/turn':>10}{'ratio':>9}  result")
    for name, seconds in rows:
        ratio = seconds / base
        verdict = "baseline" if name == "engine loop" else "info"
        if name == "simulate" and target is not None:
            verdict = "PASS" if ratio <= target else "MISS"
            verdict += f" (target ≤ {target:.1f}x)"
        print(f"{name:<24}{seconds:>10.3f}{seconds / turns * 1e6:>10.1f}{ratio:>8.2f}x  {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", help="an existing Redis URL (default: a private redis-server)")
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--turns", type=int, default=100, help="agent turns per conversation")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (the best is kept)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded-backend rows")
    args = parser.parse_args(argv)
    frame = conversations(args.conversations, args.turns)
    turns = args.conversations * args.turns
    server = None if args.redis else RedisServer().start()
    try:
        url = args.redis or server.url  # type: ignore[union-attr]
        report("Redis", measure(url, frame, args.repeat, args.workers), turns, TARGET)
    finally:
        if server is not None:
            server.stop()
    if not args.no_embedded:
        rows = measure("embedded://bench", frame, args.repeat, args.workers)
        report("embedded (fakeredis, in-process Lua)", rows, turns, TARGET)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
