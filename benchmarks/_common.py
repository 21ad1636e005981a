"""Shared helpers for the benchmarks: a private redis-server, interleaved timing, percentiles, a table.

Benchmarks are scripts, not tests: they print latencies and ratios against raw redis-py baselines measured
in the same run on the same server, so the ratios are what matter, not the absolute numbers.
"""

from __future__ import annotations

import gc
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from compozy_nb.testing import RedisServer as _Server
from compozy_nb.testing import free_port, redis_server_binary

__all__ = ["VOCABULARY", "RedisServer", "free_port", "make_contents"]


class RedisServer(_Server):
    """The throwaway redis-server of :mod:`compozy_nb.testing`, with a clear exit when there is none."""

    def __init__(self) -> None:
        if redis_server_binary() is None:
            raise SystemExit("redis-server is not installed: install it or pass --redis URL")
        super().__init__()


VOCABULARY = (
    "agent memory redis token budget message user assistant context window summary archive eviction "
    "workflow notebook python latency request answer question prefers concise detailed explanation "
    "example conversation history retrieval policy limit trim expire script atomic counter metadata "
    "session tool result weather booking order invoice customer support ticket priority status "
    "update schedule meeting"
)


def make_contents(encoding: Any, count: int, tokens: int, seed: int = 7) -> list[str]:
    """``count`` different, deterministic ASCII texts of exactly ``tokens`` tokens of ``encoding``."""
    rng = random.Random(seed)
    words = VOCABULARY.split()
    out = []
    for i in range(count):
        text = " ".join(rng.choice(words) for _ in range(tokens * 2))
        ids = encoding.encode_ordinary(f"Turn {i}: {text}")[:tokens]
        out.append(encoding.decode(ids).strip())
    return out


def interleaved(
    cases: Mapping[str, Callable[[], Any]], *, iterations: int, block: int = 10, warmup: int = 100
) -> dict[str, list[int]]:
    """Time each case ``iterations`` times (ns per call), interleaved in small blocks.

    Each round runs ``block`` calls of every case, in forward order on even rounds and reverse order on odd
    ones, so slow phases of the machine (other processes, CPU frequency) hit every case alike.
    """
    names = list(cases)
    for name in names:
        fn = cases[name]
        for _ in range(warmup):
            fn()
    samples: dict[str, list[int]] = {name: [] for name in names}
    rounds = max(1, math.ceil(iterations / block))
    clock = time.perf_counter_ns
    gc.collect()
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            fn, out = cases[name], samples[name]
            for _ in range(block):
                t0 = clock()
                fn()
                out.append(clock() - t0)
    return samples


def percentile(values: Sequence[int], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank, in µs."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1] / 1000.0


@dataclass
class Row:
    """One line of the result table. ``target`` None means informational (no PASS/MISS)."""

    operation: str
    p50: float
    p99: float
    baseline: str
    base_p50: float
    target: float | None
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.p50 / self.base_p50 if self.base_p50 else math.inf

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "info"
        return "PASS" if self.ratio <= self.target else "MISS"


def print_table(rows: Sequence[Row]) -> None:
    """Print the rows as an aligned text table."""
    header = ("operation", "p50 µs", "p99 µs", "baseline", "base p50 µs", "ratio p50", "target", "result")
    lines = [
        (
            r.operation,
            f"{r.p50:.1f}",
            f"{r.p99:.1f}",
            r.baseline,
            f"{r.base_p50:.1f}",
            f"{r.ratio:.2f}x",
            f"≤ {r.target:.2f}x" if r.target is not None else (r.note or "—"),
            r.verdict,
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    right = {1, 2, 4, 5}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print(fmt(line))
