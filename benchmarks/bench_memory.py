"""Latency of the memory operations against raw redis-py (hiredis) baselines on the same server.

Run ``python benchmarks/bench_memory.py`` (full, well under 2 minutes), ``--quick`` (~10-15 s smoke run),
``--redis URL`` to use an existing server instead of starting one, ``--strict`` to exit 1 on a MISS and
``--profile`` to add a cProfile of the append path. See benchmarks/README.md for what each ratio means.

Every comparison is measured in the same run, interleaved in blocks of 10 calls (baseline and subject
alternate), so machine noise hits both sides; only the ratios are meaningful across machines.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import platform
import pstats
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import tiktoken
from redis.utils import HIREDIS_AVAILABLE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RedisServer, Row, interleaved, make_contents, percentile, print_table

from compozy_nb.config.memory import MemoryResource
from compozy_nb.memory.instance import MemoryInstance
from compozy_nb.project import Project
from compozy_nb.tokens import ensure_offline_vocab, get_counter

TTL = "24h"
TTL_MS = 24 * 3600 * 1000
MAX_MESSAGES = 1000
MESSAGE_TOKENS = 50
BUDGET = 1000
FILL_BATCH = 1000

# The floor of an exact-token store: push, trim to the window, refresh the TTL, in one registered script.
RAW_APPEND_LUA = """
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
"""

TARGETS = {"append": 1.3, "read_last": 1.3, "read_budget": 2.0, "budget_flat": 1.25, "stats_flat": 1.5}


@dataclass(frozen=True)
class Settings:
    iterations: int  # per case, benchmarks 1, 2 and 4
    budget_iterations: int  # per case, benchmark 3
    block: int  # calls per case in a row before switching to the next case
    warmup: int
    stats_big: int  # messages in the big stats instance


FULL = Settings(iterations=2000, budget_iterations=1000, block=10, warmup=200, stats_big=100_000)
QUICK = Settings(iterations=300, budget_iterations=200, block=10, warmup=50, stats_big=20_000)


class Bench:
    """The data set and clients of one run."""

    def __init__(self, url: str, settings: Settings, *, log: bool = True) -> None:
        self.settings = settings
        self.project_name = f"bench{uuid.uuid4().hex[:8]}"
        self.project = Project(self.project_name, redis_url=url)
        logging = {"enabled": log}
        self.project.add_memory(
            MemoryResource(id="bench_window", max_messages=MAX_MESSAGES, persistence={"ttl": TTL}, log=logging)
        )
        self.project.add_memory(
            MemoryResource(id="bench_big", max_messages=1_000_000, persistence={"ttl": TTL}, log=logging)
        )
        # the baseline: a plain redis-py client (hiredis parser when installed), its own connection
        self.raw = redis.Redis.from_url(url)
        self.raw_append = self.raw.register_script(RAW_APPEND_LUA)
        counter = get_counter(self.project.resource("bench_window").model_name)
        counter.count("warm up")
        ensure_offline_vocab()
        self.encoding = tiktoken.get_encoding(counter.encoding_name)
        self.contents = make_contents(self.encoding, 64, MESSAGE_TOKENS)
        self.instances: list[MemoryInstance] = []
        self.raw_keys: list[str] = []

    # ------------------------------------------------------------------ data
    def memory(self, ref: str, key: str) -> MemoryInstance:
        mem = self.project.memory(ref, key)
        mem.delete()
        self.instances.append(mem)
        return mem

    def fill(self, mem: MemoryInstance, count: int) -> None:
        """Append ``count`` messages through the package (its encoding, counters and ids), 1000 per script."""
        texts = itertools.cycle(self.contents)
        roles = itertools.cycle(("user", "assistant"))
        done = 0
        while done < count:
            n = min(FILL_BATCH, count - done)
            mem.append([{"role": next(roles), "content": next(texts)} for _ in range(n)])
            done += n
        stats = mem.stats()
        assert stats["message_count"] == min(count, mem.resource.max_messages or count), stats

    def cleanup(self) -> None:
        for mem in self.instances:
            mem.delete()
        if self.raw_keys:
            self.raw.delete(*self.raw_keys)

    def _time(self, cases: dict[str, Callable[[], Any]], iterations: int) -> dict[str, list[int]]:
        s = self.settings
        return interleaved(cases, iterations=iterations, block=s.block, warmup=s.warmup)

    # ------------------------------------------------------------------ 1. append
    def bench_append(self) -> list[Row]:
        mem = self.memory("bench_window", "bench:append")
        self.fill(mem, MAX_MESSAGES)  # steady state: every append evicts the oldest message
        raw_key = f"{mem.layout.base}:rawbaseline"
        self.raw_keys.append(raw_key)
        enc = self.encoding
        pre_encoded = [
            json.dumps(
                {"role": "user", "content": c, "tokens": len(enc.encode_ordinary(c))},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            for c in self.contents
        ]
        self.raw.rpush(raw_key, *(pre_encoded * (MAX_MESSAGES // len(pre_encoded) + 1))[:MAX_MESSAGES])
        script = self.raw_append
        subject_texts = itertools.cycle(self.contents)
        floor_texts = itertools.cycle(self.contents)
        bare_raws = itertools.cycle(pre_encoded)

        def subject() -> None:
            mem.append({"role": "user", "content": next(subject_texts)})

        def floor() -> None:
            content = next(floor_texts)
            tokens = len(enc.encode_ordinary(content))
            raw = json.dumps(
                {"role": "user", "content": content, "tokens": tokens},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            script(keys=[raw_key], args=[raw, MAX_MESSAGES, TTL_MS])

        def bare() -> None:
            script(keys=[raw_key], args=[next(bare_raws), MAX_MESSAGES, TTL_MS])

        t = self._time({"subject": subject, "floor": floor, "bare": bare}, self.settings.iterations)
        assert self.raw.llen(raw_key) == MAX_MESSAGES and mem.stats()["message_count"] == MAX_MESSAGES
        p50, p99 = percentile(t["subject"], 0.5), percentile(t["subject"], 0.99)
        return [
            Row(
                f"append (1 msg, {MESSAGE_TOKENS} tok, max 1000, ttl 24h)",
                p50,
                p99,
                "tiktoken + json.dumps + EVALSHA(RPUSH,LTRIM,PEXPIRE)",
                percentile(t["floor"], 0.5),
                TARGETS["append"],
            ),
            Row(
                "append vs bare script",
                p50,
                p99,
                "EVALSHA(RPUSH,LTRIM,PEXPIRE) only",
                percentile(t["bare"], 0.5),
                None,
                note=f"floor: {percentile(t['floor'], 0.5) / percentile(t['bare'], 0.5):.2f}x",
            ),
        ]

    # ------------------------------------------------------------------ 2. read last 20
    def bench_read_last(self) -> list[Row]:
        mem = self.memory("bench_window", "bench:read")
        self.fill(mem, MAX_MESSAGES)
        base, raw = mem.layout.base, self.raw
        assert mem.read(last=20)["count"] == 20

        def subject() -> None:
            mem.read(last=20)

        def baseline() -> None:
            [json.loads(r) for r in raw.lrange(base, -20, -1)]

        t = self._time({"subject": subject, "baseline": baseline}, self.settings.iterations)
        return [
            Row(
                "read last=20 (of 1000)",
                percentile(t["subject"], 0.5),
                percentile(t["subject"], 0.99),
                "LRANGE -20 -1 + json.loads",
                percentile(t["baseline"], 0.5),
                TARGETS["read_last"],
            )
        ]

    # ------------------------------------------------------------------ 3. read within a token budget
    def bench_read_budget(self) -> list[Row]:
        cases: dict[str, Callable[[], Any]] = {}
        windows: dict[int, int] = {}
        raw = self.raw
        for size in (100, 1000, 10_000):
            mem = self.memory("bench_big", f"bench:budget:{size}")
            self.fill(mem, size)
            window = mem.read(max_tokens=BUDGET)["count"]
            windows[size] = window
            base = mem.layout.base

            def subject(mem: MemoryInstance = mem) -> None:
                mem.read(max_tokens=BUDGET)

            def baseline(base: str = base, window: int = window) -> None:
                [json.loads(r) for r in raw.lrange(base, -window, -1)]

            cases[f"subject{size}"] = subject
            cases[f"baseline{size}"] = baseline
        t = self._time(cases, self.settings.budget_iterations)
        rows = [
            Row(
                f"read max_tokens={BUDGET} @ {size:,} msgs",
                percentile(t[f"subject{size}"], 0.5),
                percentile(t[f"subject{size}"], 0.99),
                f"LRANGE -{windows[size]} -1 + json.loads",
                percentile(t[f"baseline{size}"], 0.5),
                TARGETS["read_budget"],
            )
            for size in (100, 1000, 10_000)
        ]
        rows.append(
            Row(
                "read max_tokens: 10,000 vs 100 msgs",
                rows[2].p50,
                rows[2].p99,
                "read max_tokens @ 100 msgs",
                rows[0].p50,
                TARGETS["budget_flat"],
            )
        )
        return rows

    # ------------------------------------------------------------------ 3b. tool-call transcripts
    def tool_turn(self, n: int) -> list[dict[str, Any]]:
        """One agent turn: a question, an assistant tool call, its result, the answer (~4 x 50 tokens)."""
        text = self.contents[n % len(self.contents)]
        call = {
            "id": f"call_{n}",
            "type": "function",
            "function": {"name": "lookup", "arguments": json.dumps({"q": text[:80]})},
        }
        return [
            {"role": "user", "content": text},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{n}", "content": text},
            {"role": "assistant", "content": [{"type": "text", "text": text}]},
        ]

    def bench_transcript(self) -> list[Row]:
        """Budget reads of a tool-call transcript (whole groups), against the same LRANGE baseline."""
        cases: dict[str, Callable[[], Any]] = {}
        windows: dict[int, int] = {}
        raw = self.raw
        sizes = (100, 10_000)
        for size in sizes:
            mem = self.memory("bench_big", f"bench:transcript:{size}")
            for start in range(0, size // 4, FILL_BATCH // 4):
                mem.append(
                    [m for n in range(start, min(start + FILL_BATCH // 4, size // 4)) for m in self.tool_turn(n)]
                )
            window = mem.read(max_tokens=BUDGET)["count"]
            windows[size] = window
            base = mem.layout.base

            def subject(mem: MemoryInstance = mem) -> None:
                mem.read(max_tokens=BUDGET)

            def baseline(base: str = base, window: int = window) -> None:
                [json.loads(r) for r in raw.lrange(base, -window, -1)]

            cases[f"subject{size}"] = subject
            cases[f"baseline{size}"] = baseline
        t = self._time(cases, self.settings.budget_iterations)
        rows = [
            Row(
                f"transcript read max_tokens={BUDGET} @ {size:,} msgs",
                percentile(t[f"subject{size}"], 0.5),
                percentile(t[f"subject{size}"], 0.99),
                f"LRANGE -{windows[size]} -1 + json.loads",
                percentile(t[f"baseline{size}"], 0.5),
                TARGETS["read_budget"],
                "tool-call groups kept whole",
            )
            for size in sizes
        ]
        rows.append(
            Row(
                "transcript max_tokens: 10,000 vs 100 msgs",
                rows[1].p50,
                rows[1].p99,
                "transcript read @ 100 msgs",
                rows[0].p50,
                TARGETS["budget_flat"],
            )
        )
        return rows

    # ------------------------------------------------------------------ 4. stats
    def bench_stats(self) -> list[Row]:
        small = self.memory("bench_big", "bench:stats:small")
        self.fill(small, 10)
        big = self.memory("bench_big", "bench:stats:big")
        started = time.perf_counter()
        self.fill(big, self.settings.stats_big)
        print(
            f"  (filled {self.settings.stats_big:,} messages in {time.perf_counter() - started:.1f} s)",
            flush=True,
        )
        raw, meta = self.raw, big.layout.metadata
        t = self._time(
            {"small": small.stats, "big": big.stats, "hgetall": lambda: raw.hgetall(meta)},
            self.settings.iterations,
        )
        s50, b50, h50 = (percentile(t[k], 0.5) for k in ("small", "big", "hgetall"))
        big_label = f"{self.settings.stats_big:,}"
        return [
            Row("stats @ 10 msgs", s50, percentile(t["small"], 0.99), "HGETALL metadata", h50, None),
            Row(f"stats @ {big_label} msgs", b50, percentile(t["big"], 0.99), "HGETALL metadata", h50, None),
            Row(
                f"stats: {big_label} vs 10 msgs",
                b50,
                percentile(t["big"], 0.99),
                "stats @ 10 msgs",
                s50,
                TARGETS["stats_flat"],
            ),
        ]

    # ------------------------------------------------------------------ profile
    def profile_append(self, calls: int) -> str:
        """cProfile of ``calls`` steady-state appends, and the server time of both scripts per call."""
        mem = self.memory("bench_window", "bench:profile")
        self.fill(mem, MAX_MESSAGES)
        texts = itertools.cycle(self.contents)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            mem.append({"role": "user", "content": next(texts)})
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(15)
        stats.sort_stats("cumulative").print_stats(20)
        raw_key = f"{mem.layout.base}:rawprofile"
        self.raw_keys.append(raw_key)
        raws = itertools.cycle(json.dumps({"role": "user", "content": c}) for c in self.contents)
        package = self.server_usec(lambda: mem.append({"role": "user", "content": next(texts)}), calls)
        floor = self.server_usec(
            lambda: self.raw_append(keys=[raw_key], args=[next(raws), MAX_MESSAGES, TTL_MS]), calls
        )
        out.write(
            "Server time per EVALSHA (INFO commandstats, includes the script's own redis.call()s): "
            f"package append script {package:.1f} µs, floor script {floor:.1f} µs\n"
            "(cProfile books that server time, and the round trip, under socket recv_into or sendall: "
            "on loopback the server may run while the client is still inside sendall)\n"
        )
        return out.getvalue()

    def server_usec(self, fn: Callable[[], Any], calls: int) -> float:
        """Mean server-side µs per EVALSHA while running ``fn`` (from INFO commandstats deltas)."""

        def snapshot() -> tuple[int, int]:
            entry = self.raw.info("commandstats").get("cmdstat_evalsha", {"calls": 0, "usec": 0})
            return int(entry["calls"]), int(entry["usec"])

        calls0, usec0 = snapshot()
        for _ in range(calls):
            fn()
        calls1, usec1 = snapshot()
        return (usec1 - usec0) / max(1, calls1 - calls0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", metavar="URL", help="use this Redis instead of starting a redis-server")
    parser.add_argument("--quick", action="store_true", help="a ~15 s smoke run (fewer iterations)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a ratio misses its target")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of 2,000 appends")
    parser.add_argument(
        "--log",
        choices=("on", "off"),
        default="on",
        help="the memories' operation log (on, the default users get; off shows the engine without it)",
    )
    return parser.parse_args(argv)


def server_url(args: argparse.Namespace) -> tuple[str, RedisServer | None]:
    if args.redis:
        return args.redis, None
    server = RedisServer().start()
    return server.url, server


def describe(url: str, client: redis.Redis) -> str:
    version = client.info("server").get("redis_version")
    pings = interleaved({"ping": client.ping}, iterations=500, warmup=50)["ping"]
    return (
        f"redis-server {version} at {url} | python {platform.python_version()} "
        f"| redis-py {redis.__version__} (hiredis: {'yes' if HIREDIS_AVAILABLE else 'NO'}) "
        f"| tiktoken {tiktoken.__version__} | PING round trip p50 {percentile(pings, 0.5):.1f} µs"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()
    url, server = server_url(args)
    try:
        bench = Bench(url, settings, log=args.log == "on")
        try:
            print(describe(url, bench.raw))
            print(
                f"mode: {'quick' if args.quick else 'full'} | {settings.iterations} iterations "
                f"({settings.budget_iterations} for budget reads) interleaved in blocks of {settings.block}, "
                f"{settings.warmup} warmup | message: {MESSAGE_TOKENS} tokens of content",
                flush=True,
            )
            rows: list[Row] = []
            for step in (
                bench.bench_append,
                bench.bench_read_last,
                bench.bench_read_budget,
                bench.bench_transcript,
                bench.bench_stats,
            ):
                print(f"- {step.__name__.removeprefix('bench_')} ...", flush=True)
                rows.extend(step())
            print()
            print_table(rows)
            if args.profile:
                print("\ncProfile of 2,000 appends (steady state: 1000 stored, one evicted per append):")
                print(bench.profile_append(2000))
        finally:
            bench.cleanup()
    finally:
        if server is not None:
            server.stop()
    misses = [r.operation for r in rows if r.verdict == "MISS"]
    print(
        f"\n{len(misses)} miss(es){': ' + '; '.join(misses) if misses else ''} "
        f"| total {time.perf_counter() - started:.1f} s"
    )
    return 1 if args.strict and misses else 0


if __name__ == "__main__":
    sys.exit(main())
