"""Concurrency on a real redis-server: many processes appending to one key, flushes racing appends and
each other, idempotent retries. Every process builds its own Project and connection ("spawn" context).

The invariants checked after each race are the ones a single-threaded run would give: nothing lost,
nothing duplicated, every message either in the list or in the archive (never both), each writer's
messages in the order it sent them, and the metadata counters equal to what the list really holds.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, cast

import pytest
import redis

from compozy_nb import Project
from compozy_nb.memory.flush import RuleBasedSummarizer
from compozy_nb.memory.instance import MemoryInstance, MemoryRuntime
from compozy_nb.memory.keys import KeyLayout

pytestmark = pytest.mark.slow

PROJECT = "conc"
KEY = "race:one"
SPAWN = multiprocessing.get_context("spawn")
JOIN_TIMEOUT = 180  # a safety net against a hung child, not a performance threshold

UNLIMITED = """
resource: memory
id: unlimited
type: buffer
archive_max_messages: 10000
"""

LIMITED = """
resource: memory
id: limited
type: message_count_based
max_messages: 100
archive_max_messages: 10000
"""

STRATEGIES = ("simple_fifo", "lru", "token_aware_lru", "hybrid_summary")


def flushing_resource(strategy: str) -> str:
    """A resource flushed with ``strategy``; the archive is large enough to keep every removed message."""
    summary = "\n  summary_tokens: 64" if strategy == "hybrid_summary" else ""
    return f"""
resource: memory
id: flushing
type: message_count_based
max_messages: 300
archive_max_messages: 100000
flushing:
  type: {strategy}{summary}
"""


# ------------------------------------------------------------------------------------------ helpers
def open_memory(url: str, resource_yaml: str, key: str = KEY) -> Any:
    """A fresh Project with its own connection, and the instance of its only resource under ``key``."""
    project = Project(PROJECT, redis_url=url)
    (resource_id,) = project.add_yaml(resource_yaml)
    return project.memory(resource_id, key=key)


def worker_messages(worker: int, count: int, roles: Sequence[str]) -> list[dict[str, Any]]:
    """``count`` messages of ``worker`` with ids ``w<worker>-<index>`` and varying lengths."""
    return [
        {
            "id": f"w{worker}-{i:04d}",
            "role": roles[(worker + i) % len(roles)],
            "content": f"worker {worker} message {i} " + "word " * ((worker * 7 + i) % 13),
        }
        for i in range(count)
    ]


def _append_worker(
    url: str,
    resource_yaml: str,
    messages: list[dict[str, Any]],
    barrier: Any,
    results: Any,
) -> None:
    """Child process: append ``messages`` one call each, then report the summed outputs."""
    try:
        memory = open_memory(url, resource_yaml)
        barrier.wait()
        totals: Counter[str] = Counter()
        for message in messages:
            out = memory.append(message)
            totals["calls"] += 1
            totals["appended"] += out["appended"]
            totals["duplicates"] += out["duplicates"]
            totals["evicted"] += out["evicted"]
        results.put(("ok", dict(totals)))
    except BaseException:
        results.put(("error", traceback.format_exc()))
        raise


def run_appenders(
    url: str,
    resource_yaml: str,
    plans: Sequence[list[dict[str, Any]]],
    during: Callable[[Callable[[], bool]], None] | None = None,
) -> list[dict[str, int]]:
    """Start one process per plan, release them together, optionally run ``during(busy)`` in this process
    while they append (``busy()`` is true until every child has finished), and return their totals."""
    barrier = SPAWN.Barrier(len(plans) + 1)
    results = SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_append_worker, args=(url, resource_yaml, plan, barrier, results), daemon=True)
        for plan in plans
    ]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=JOIN_TIMEOUT)
        if during is not None:
            during(lambda: any(proc.is_alive() for proc in procs))
        reports = [results.get(timeout=JOIN_TIMEOUT) for _ in procs]
    finally:
        for proc in procs:
            proc.join(JOIN_TIMEOUT)
            if proc.is_alive():  # pragma: no cover - only on a hung child
                proc.kill()
    errors = [detail for status, detail in reports if status == "error"]
    assert not errors, "\n".join(errors)
    assert all(proc.exitcode == 0 for proc in procs)
    return [detail for _, detail in reports]


def total(reports: Sequence[dict[str, int]], name: str) -> int:
    return sum(report.get(name, 0) for report in reports)


class Stored:
    """Everything Redis holds for the instance under ``KEY``, decoded."""

    def __init__(self, url: str, key: str = KEY) -> None:
        client = redis.Redis.from_url(url)
        layout = KeyLayout(PROJECT, key)
        self.messages = [json.loads(raw) for raw in client.lrange(layout.base, 0, -1)]
        self.archive = [json.loads(raw) for raw in client.lrange(layout.archive, 0, -1)]
        self.meta = {
            k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], client.hgetall(layout.metadata)).items()
        }
        self.ids_set = {m.decode() for m in cast(set[bytes], client.smembers(layout.ids))}
        self.access = {m.decode() for m in cast(list[bytes], client.zrange(layout.access, 0, -1))}
        self.llen = client.llen(layout.base)
        client.close()

    @property
    def ids(self) -> list[str]:
        return [m["id"] for m in self.messages]

    @property
    def archive_ids(self) -> list[str]:
        return [m["id"] for m in self.archive]

    def plain(self, messages: Sequence[dict[str, Any]]) -> list[str]:
        """Ids of the messages that are not summaries."""
        return [m["id"] for m in messages if not m.get("summary")]

    def assert_counters_true(self) -> None:
        """The metadata hash matches the list: count, tokens, per-role counts; the id set matches too."""
        assert int(self.meta["message_count"]) == self.llen == len(self.messages)
        assert int(self.meta["token_count"]) == sum(int(m["tokens"]) for m in self.messages)
        roles = {k[5:]: int(v) for k, v in self.meta.items() if k.startswith("role:")}
        assert all(v >= 0 for v in roles.values()), roles
        assert {r: c for r, c in roles.items() if c} == dict(Counter(m["role"] for m in self.messages))
        assert len(set(self.ids)) == len(self.ids), "duplicate ids in the list"
        assert self.ids_set == set(self.ids)


def assert_each_writer_in_order(sequence: Sequence[str], workers: int) -> None:
    """The ids of each worker appear in ``sequence`` in the order the worker sent them."""
    for worker in range(workers):
        mine = [int(i.split("-")[1]) for i in sequence if i.startswith(f"w{worker}-")]
        assert mine == sorted(mine), f"worker {worker}'s messages are out of order"


# ------------------------------------------------------------------------------------------ appends
def test_parallel_appends_to_one_key_lose_nothing(redis_url: str) -> None:
    workers, per_worker = 8, 500
    plans = [worker_messages(w, per_worker, ("user", "assistant", "system", "tool")) for w in range(workers)]
    sent = [m["id"] for plan in plans for m in plan]

    reports = run_appenders(redis_url, UNLIMITED, plans)

    assert total(reports, "calls") == workers * per_worker
    assert total(reports, "appended") == workers * per_worker
    assert total(reports, "duplicates") == 0
    assert total(reports, "evicted") == 0
    stored = Stored(redis_url)
    assert stored.llen == workers * per_worker
    assert sorted(stored.ids) == sorted(sent)
    assert_each_writer_in_order(stored.ids, workers)
    stored.assert_counters_true()
    expected_roles = Counter(m["role"] for plan in plans for m in plan)
    assert {k[5:]: int(v) for k, v in stored.meta.items() if k.startswith("role:")} == expected_roles
    assert stored.archive == []


def test_parallel_appends_over_a_limit_archive_every_eviction(redis_url: str) -> None:
    workers, per_worker = 8, 500
    plans = [worker_messages(w, per_worker, ("user", "assistant")) for w in range(workers)]
    sent = {m["id"] for plan in plans for m in plan}

    reports = run_appenders(redis_url, LIMITED, plans)

    assert total(reports, "appended") == len(sent)
    assert total(reports, "duplicates") == 0
    stored = Stored(redis_url)
    assert stored.llen == 100
    assert len(stored.archive) == len(sent) - 100
    assert total(reports, "evicted") == len(sent) - 100
    assert int(stored.meta["evicted_count"]) == len(sent) - 100
    assert len(set(stored.archive_ids)) == len(stored.archive_ids)
    assert not set(stored.ids) & set(stored.archive_ids)
    assert set(stored.ids) | set(stored.archive_ids) == sent
    # The archive is newest first: reversed, followed by the list, it is the order messages were stored.
    assert_each_writer_in_order([*reversed(stored.archive_ids), *stored.ids], workers)
    stored.assert_counters_true()


def test_concurrent_retries_with_the_same_ids_store_each_message_once(redis_url: str) -> None:
    workers = 4
    shared = worker_messages(0, 200, ("user", "assistant"))
    plans = []
    for w in range(workers):
        plan = list(shared)
        random.Random(w).shuffle(plan)  # each retrier sends the same messages in its own order
        plans.append(plan)

    reports = run_appenders(redis_url, UNLIMITED, plans)

    assert total(reports, "appended") == 200
    assert total(reports, "duplicates") == 600
    stored = Stored(redis_url)
    assert stored.llen == 200
    assert sorted(stored.ids) == sorted(m["id"] for m in shared)
    stored.assert_counters_true()
    by_id = {m["id"]: m for m in shared}
    assert all(m["content"] == by_id[m["id"]]["content"] for m in stored.messages)


# ------------------------------------------------------------------------------------------ flushes
def check_flush_outcome(stored: Stored, sent: set[str], strategy: str) -> None:
    """Nothing lost, nothing in both places, nothing twice; summaries (hybrid) are consistent."""
    list_plain = stored.plain(stored.messages)
    archive_plain = stored.plain(stored.archive)
    assert len(set(archive_plain)) == len(archive_plain), "a message was archived twice"
    assert not set(list_plain) & set(archive_plain), "a message is both stored and archived"
    assert set(list_plain) | set(archive_plain) == sent, "a message was lost"
    assert len(list_plain) + len(archive_plain) == len(sent)
    stored.assert_counters_true()
    assert stored.access <= set(stored.ids), "access data kept for a message no longer stored"
    summaries = [m for m in stored.messages if m.get("summary")]
    if strategy != "hybrid_summary":
        assert summaries == []
        return
    assert len(summaries) <= 1, f"{len(summaries)} summaries in the list"
    # Every message a summary covers was removed into the archive, and counted once.
    summarized = sum(int(m["summarized_count"]) for m in summaries)
    evicted_by_appends = int(stored.meta.get("evicted_count", 0))
    assert summarized + evicted_by_appends == len(archive_plain)
    folded = [m for m in stored.archive if m.get("summary")]
    assert len(folded) + len(summaries) == int(stored.meta.get("summary_count", 0))


@pytest.mark.parametrize(
    "strategy",
    [
        *STRATEGIES[:-1],
        # Fails most runs (it depends on the interleaving): see the deterministic test below.
        pytest.param("hybrid_summary"),
    ],
)
def test_flush_racing_appends_loses_nothing(redis_url: str, strategy: str) -> None:
    workers, per_worker = 4, 300
    resource = flushing_resource(strategy)
    plans = [worker_messages(w, per_worker, ("user", "assistant", "tool")) for w in range(workers)]
    sent = {m["id"] for plan in plans for m in plan}
    memory = open_memory(redis_url, resource)
    flushed: list[int] = []

    def flush_while(busy: Callable[[], bool]) -> None:
        while busy():
            out = memory.flush(force=True)
            assert out["success"] is True
            flushed.append(out["flushed_count"])
            if strategy in ("lru", "token_aware_lru"):
                memory.read(last=20)  # records access times the next LRU plan uses

    reports = run_appenders(redis_url, resource, plans, during=flush_while)

    assert total(reports, "appended") == len(sent)
    assert total(reports, "duplicates") == 0
    assert flushed, "the flushing loop never ran"
    stored = Stored(redis_url)
    check_flush_outcome(stored, sent, strategy)
    if strategy != "hybrid_summary":
        assert int(stored.meta.get("evicted_count", 0)) == total(reports, "evicted")


def flush_together(memories: Sequence[Any]) -> tuple[list[dict[str, Any]], list[BaseException]]:
    """Run ``flush(force=True)`` on each memory in its own thread, released together by a barrier."""
    barrier = threading.Barrier(len(memories))
    outs: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def flush(memory: Any) -> None:
        try:
            barrier.wait()
            outs.append(memory.flush(force=True))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=flush, args=(memory,)) for memory in memories]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    return outs, errors


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_flushes_racing_each_other(redis_url: str, strategy: str) -> None:
    resource = flushing_resource(strategy)
    writer = open_memory(redis_url, resource)
    flushers = [open_memory(redis_url, resource) for _ in range(2)]
    sent: set[str] = set()
    for round_no in range(10):
        batch = [
            {
                "id": f"r{round_no}-{i:03d}",
                "role": ("user", "assistant")[i % 2],
                "content": f"round {round_no} #{i}",
            }
            for i in range(240)
        ]
        if round_no == 0:
            writer.write(batch)
        else:
            batch = batch[:120]
            writer.append(batch)
        sent.update(m["id"] for m in batch)
        before = Stored(redis_url)
        outs, errors = flush_together(flushers)
        assert errors == []
        after = Stored(redis_url)
        removed = sum(out["flushed_count"] for out in outs)
        written = sum(1 for out in outs if out["summary_generated"])
        assert removed > 0
        assert removed == len(before.messages) - len(after.messages) + written
        assert removed == len(after.archive) - len(before.archive)
        archived_now = after.archive[:removed]
        # a flush that runs after the other one finished may fold the summary that one just wrote
        assert {m["id"] for m in archived_now if not m.get("summary")} <= set(before.ids)
        assert not {m["id"] for m in archived_now} & set(after.ids)
        check_flush_outcome(after, sent, strategy)


TWO_HYBRID_RESOURCES = """
resource: memory
id: half
type: message_count_based
max_messages: 20
archive_max_messages: 1000
flushing: {type: hybrid_summary, summary_tokens: 64, summarize_oldest_percent: 0.5}
---
resource: memory
id: third
type: message_count_based
max_messages: 20
archive_max_messages: 1000
flushing: {type: hybrid_summary, summary_tokens: 64, summarize_oldest_percent: 0.3}
"""


def test_hybrid_flush_overtaken_while_summarizing_does_not_summarize_twice(redis_url: str) -> None:
    """The interleaving of the race above, made deterministic: another client's flush lands while this
    flush's summarizer runs (between its snapshot and its script). Two resources with the same key share
    one list; they differ only in how much a flush summarizes."""
    project = Project(PROJECT, redis_url=redis_url)
    project.add_yaml(TWO_HYBRID_RESOURCES)
    other = project.memory("third", key=KEY)
    runtime = project.runtime("half")
    default_summarizer = RuleBasedSummarizer(runtime.counter)

    def overtaken(messages: Any, previous: str | None, max_tokens: int) -> str:
        other.flush(force=True)
        return default_summarizer(messages, previous, max_tokens)

    memory = MemoryInstance(MemoryRuntime(runtime.resource, summarizer=overtaken), KEY, project.backend, PROJECT)
    memory.write([{"id": f"m{i}", "content": f"message {i}"} for i in range(10)])

    memory.flush(force=True)

    stored = Stored(redis_url)
    check_flush_outcome(stored, {f"m{i}" for i in range(10)}, "hybrid_summary")
