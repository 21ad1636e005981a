"""This project against its peers on one redis-server, in one run: raw redis-py, LlamaIndex and LangChain.

Run ``python benchmarks/bench_peers.py`` (full, about 3-5 minutes; writes benchmarks/RESULTS.md),
``--quick`` (about a minute; prints only, unless ``--output`` is given), ``--redis URL`` to use an existing
server instead of starting one, ``--output PATH`` to write the Markdown report elsewhere.

Subjects, each used through its documented API:

- ``raw``: plain redis-py (hiredis): RPUSH + PEXPIRE in one pipeline, LRANGE + ``json.loads``. The baseline
  of every ratio.
- ``compozy_nb``: this project, ``Project.memory(ref, key)`` of a ``buffer`` resource (no limit, ttl 24h):
  ``append(msg)``, ``read(last=20)``, ``read(max_tokens=1000)``.
- ``llamaindex``: ``RedisChatStore(ttl=86400)`` + ``ChatMemoryBuffer.from_defaults(token_limit=1000)``:
  ``memory.put(ChatMessage)``, ``store.get_messages(key)[-20:]``, ``memory.get()``.
- ``langchain``: langchain-community ``RedisChatMessageHistory(ttl=86400)`` + langchain-core
  ``trim_messages(history.messages, strategy="last", max_tokens=1000, token_counter=<tiktoken counter of the
  LangChain how-to guide>, start_on="human", include_system=True)``: ``add_message``, ``messages[-20:]``.
- ``lc-adapter`` / ``li-adapter`` / ``li-store``: this project's LangChain and LlamaIndex adapters, the same
  operations through the frameworks' interfaces (see benchmarks/peers_adapters.py).

Operations at 100 / 1,000 / 10,000 stored messages (the same deterministic ~50-token texts for every subject,
roles alternating user/assistant): read last 20, read within a 1,000-token budget, append one message; then
8 concurrent writer processes x N appends to one fresh key each (lost / duplicated / out-of-order counts and
throughput). Peers that are not installed, or fail to set up offline, are reported as skipped.

Timing: ``time.perf_counter_ns`` per call, cases of one operation interleaved in blocks of 10 calls (forward
and reverse order in turn). A case stops sampling at its iteration count or when its accumulated time reaches
a cap (slow peers get fewer samples: the sample count is in the report). A budget read is first tried once in
a forked child with a timeout, so a case that would take minutes is reported as timed out instead of run.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import multiprocessing
import os
import platform
import re
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from redis.utils import HIREDIS_AVAILABLE

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import peers_adapters
from _common import RedisServer, percentile

from compozy_nb.project import Project
from compozy_nb.sdk import MemoryResource
from compozy_nb.tokens import ensure_offline_vocab, get_counter

HERE = Path(__file__).resolve().parent

SIZES = (100, 1_000, 10_000)
LAST = 20
BUDGET = 1_000
MESSAGE_TOKENS = 50
TTL_S = 24 * 3600
FILL_BATCH = 1_000
WRITERS = 8
ENCODING = "cl100k_base"  # what this project, LlamaIndex's default (gpt-3.5-turbo) and our LangChain counter use


@dataclass(frozen=True)
class Settings:
    iterations: int  # samples per case at most
    block: int
    warmup: int
    cap_s: float  # per case: stop sampling once this much time was spent in it
    probe_timeout_s: float  # a budget read that does not finish once in this time is reported as timed out
    appends_per_writer: int
    writer_rounds: int  # concurrent-writer runs per subject (subjects alternate); the median throughput counts


FULL = Settings(
    iterations=1000, block=10, warmup=50, cap_s=4.0, probe_timeout_s=45.0, appends_per_writer=500, writer_rounds=3
)
QUICK = Settings(
    iterations=150, block=10, warmup=10, cap_s=1.0, probe_timeout_s=8.0, appends_per_writer=100, writer_rounds=1
)


def make_contents(count: int = 64, tokens: int = MESSAGE_TOKENS, seed: int = 7) -> list[str]:
    """``count`` different ASCII texts of exactly ``tokens`` cl100k tokens (the set benchmarks/bench_memory.py uses)."""
    import tiktoken

    ensure_offline_vocab()
    return _common.make_contents(tiktoken.get_encoding(ENCODING), count, tokens, seed)


def role_of(i: int) -> str:
    return "user" if i % 2 == 0 else "assistant"


# ---------------------------------------------------------------------------------------------------- subjects
class Subject:
    """One implementation under test. ``connect`` is called again in forked children (fresh connections)."""

    name = "?"
    label = "?"
    skipped: str | None = None
    warnings: tuple[str, ...] = ()

    def connect(self, url: str) -> None:
        raise NotImplementedError

    def key(self, name: str) -> str:
        raise NotImplementedError

    def fill(self, key: str, messages: Sequence[tuple[str, str]]) -> None:
        raise NotImplementedError

    def append(self, key: str, role: str, content: str) -> None:
        raise NotImplementedError

    def read_last(self, key: str) -> list[tuple[str, str]]:
        raise NotImplementedError

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        raise NotImplementedError

    def read_all(self, key: str) -> list[tuple[str, str]]:
        raise NotImplementedError


class Raw(Subject):
    """Plain redis-py: the floor each ratio is measured against."""

    name, label = "raw", "raw redis-py"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.windows: dict[str, int] = {}  # key -> how many messages the budget read fetches

    def connect(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def key(self, name: str) -> str:
        return f"{self.prefix}raw:{name}"

    def fill(self, key: str, messages: Sequence[tuple[str, str]]) -> None:
        for start in range(0, len(messages), FILL_BATCH):
            chunk = messages[start : start + FILL_BATCH]
            self.client.rpush(key, *(json.dumps({"role": r, "content": c}) for r, c in chunk))
        self.client.expire(key, TTL_S)

    def append(self, key: str, role: str, content: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(key, json.dumps({"role": role, "content": content}))
        pipe.expire(key, TTL_S)
        pipe.execute()

    def _decode(self, raws: Iterable[bytes]) -> list[tuple[str, str]]:
        return [(m["role"], m["content"]) for m in map(json.loads, raws)]

    def read_last(self, key: str) -> list[tuple[str, str]]:
        return self._decode(self.client.lrange(key, -LAST, -1))

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        # the floor: fetch exactly the newest n messages, n = what this project's budget read returns
        return self._decode(self.client.lrange(key, -self.windows[key], -1))

    def read_all(self, key: str) -> list[tuple[str, str]]:
        return self._decode(self.client.lrange(key, 0, -1))


class Compozy(Subject):
    """This project: a ``buffer`` resource without limits (like the peers' stores), ttl 24h."""

    name, label = "compozy", "compozy_nb"

    def __init__(self, project_name: str) -> None:
        self.project_name = project_name
        self.instances: dict[str, Any] = {}

    def connect(self, url: str) -> None:
        self.project = Project(self.project_name, redis_url=url)
        self.project.add(MemoryResource("peers").buffer().ttl("24h"))
        self.instances = {}

    def key(self, name: str) -> str:
        return f"peers:{name}"

    def mem(self, key: str) -> Any:
        mem = self.instances.get(key)
        if mem is None:
            mem = self.instances[key] = self.project.memory("peers", key)
        return mem

    def fill(self, key: str, messages: Sequence[tuple[str, str]]) -> None:
        mem = self.mem(key)
        for start in range(0, len(messages), FILL_BATCH):
            mem.append([{"role": r, "content": c} for r, c in messages[start : start + FILL_BATCH]])

    def append(self, key: str, role: str, content: str) -> None:
        self.mem(key).append({"role": role, "content": content})

    @staticmethod
    def _pairs(out: Any) -> list[tuple[str, str]]:
        return [(m["role"], m["content"]) for m in out["messages"]]

    def read_last(self, key: str) -> list[tuple[str, str]]:
        return self._pairs(self.mem(key).read(last=LAST))

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        return self._pairs(self.mem(key).read(max_tokens=BUDGET))

    def read_all(self, key: str) -> list[tuple[str, str]]:
        return self._pairs(self.mem(key).read())


class LlamaIndex(Subject):
    """LlamaIndex: ``RedisChatStore`` + ``ChatMemoryBuffer`` (its default tiktoken tokenizer)."""

    name, label = "llamaindex", "LlamaIndex"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                from llama_index.core.llms import ChatMessage
                from llama_index.core.memory import ChatMemoryBuffer
                from llama_index.storage.chat_store.redis import RedisChatStore
            self.warnings = _import_warnings(caught)
        except ImportError as exc:
            self.skipped = f"not installed ({exc})"
            return
        self.ChatMessage, self.ChatMemoryBuffer, self.RedisChatStore = ChatMessage, ChatMemoryBuffer, RedisChatStore

    def connect(self, url: str) -> None:
        self.store = self.RedisChatStore(redis_url=url, ttl=TTL_S)
        self.memories: dict[str, Any] = {}

    def key(self, name: str) -> str:
        return f"{self.prefix}llama:{name}"

    def memory(self, key: str) -> Any:
        memory = self.memories.get(key)
        if memory is None:
            memory = self.memories[key] = self.ChatMemoryBuffer.from_defaults(
                chat_store=self.store, chat_store_key=key, token_limit=BUDGET
            )
        return memory

    def fill(self, key: str, messages: Sequence[tuple[str, str]]) -> None:
        # the exact bytes RedisChatStore.add_message writes, pushed in batches to save set-up time
        client = self.store._redis_client
        for start in range(0, len(messages), FILL_BATCH):
            chunk = messages[start : start + FILL_BATCH]
            client.rpush(key, *(self.ChatMessage(role=r, content=c).model_dump_json() for r, c in chunk))
        client.expire(key, TTL_S)

    def append(self, key: str, role: str, content: str) -> None:
        self.memory(key).put(self.ChatMessage(role=role, content=content))

    @staticmethod
    def _pairs(messages: Iterable[Any]) -> list[tuple[str, str]]:
        return [(str(m.role.value), str(m.content)) for m in messages]

    def read_last(self, key: str) -> list[tuple[str, str]]:
        # BaseChatStore has no "last n": get_messages loads the whole list
        return self._pairs(self.store.get_messages(key)[-LAST:])

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        return self._pairs(self.memory(key).get())

    def read_all(self, key: str) -> list[tuple[str, str]]:
        return self._pairs(self.store.get_messages(key))


class LangChain(Subject):
    """LangChain: langchain-community ``RedisChatMessageHistory`` + langchain-core ``trim_messages``."""

    name, label = "langchain", "LangChain"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                from langchain_community.chat_message_histories import RedisChatMessageHistory
                from langchain_core.messages import AIMessage, HumanMessage, message_to_dict, trim_messages
            self.warnings = _import_warnings(caught)
        except ImportError as exc:
            self.skipped = f"not installed ({exc})"
            return
        self.History, self.trim_messages, self.message_to_dict = RedisChatMessageHistory, trim_messages, message_to_dict
        self.classes = {"user": HumanMessage, "assistant": AIMessage}
        self.token_counter = _langchain_tiktoken_counter()

    def connect(self, url: str) -> None:
        self.url = url
        self.histories: dict[str, Any] = {}

    def key(self, name: str) -> str:
        return name  # the session id; the store key is key_prefix + session id

    def history(self, key: str) -> Any:
        history = self.histories.get(key)
        if history is None:
            history = self.histories[key] = self.History(
                session_id=key, url=self.url, key_prefix=f"{self.prefix}lc:", ttl=TTL_S
            )
        return history

    def fill(self, key: str, messages: Sequence[tuple[str, str]]) -> None:
        # the exact bytes RedisChatMessageHistory.add_message writes (LPUSH: newest first), in batches
        history = self.history(key)
        client = history.redis_client
        for start in range(0, len(messages), FILL_BATCH):
            chunk = messages[start : start + FILL_BATCH]
            client.lpush(history.key, *(json.dumps(self.message_to_dict(self.classes[r](content=c))) for r, c in chunk))
        client.expire(history.key, TTL_S)

    def append(self, key: str, role: str, content: str) -> None:
        self.history(key).add_message(self.classes[role](content=content))

    @staticmethod
    def _pairs(messages: Iterable[Any]) -> list[tuple[str, str]]:
        roles = {"human": "user", "ai": "assistant"}
        return [(roles.get(m.type, m.type), str(m.content)) for m in messages]

    def read_last(self, key: str) -> list[tuple[str, str]]:
        # no "last n" either: .messages loads (and reverses) the whole list
        return self._pairs(self.history(key).messages[-LAST:])

    def read_budget(self, key: str) -> list[tuple[str, str]]:
        trimmed = self.trim_messages(
            self.history(key).messages,
            max_tokens=BUDGET,
            strategy="last",
            token_counter=self.token_counter,
            start_on="human",
            include_system=True,
            allow_partial=False,
        )
        return self._pairs(trimmed)

    def read_all(self, key: str) -> list[tuple[str, str]]:
        return self._pairs(self.history(key).messages)


def _import_warnings(caught: Iterable[warnings.WarningMessage]) -> tuple[str, ...]:
    """The deprecation warnings a peer raised on import (shown in the report instead of on stderr)."""
    found = []
    for w in caught:
        if issubclass(w.category, DeprecationWarning | FutureWarning) and str(w.message) not in found:
            found.append(str(w.message))
    return tuple(found)


def _langchain_tiktoken_counter() -> Callable[[list[Any]], int]:
    """The custom tiktoken token counter of LangChain's "how to trim messages" guide, with cl100k_base."""
    import tiktoken
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    ensure_offline_vocab()
    encoding = tiktoken.get_encoding(ENCODING)

    def str_token_counter(text: str) -> int:
        return len(encoding.encode(text))

    def tiktoken_counter(messages: list[Any]) -> int:
        num_tokens = 3  # every reply is primed with <|start|>assistant<|message|>
        tokens_per_message, tokens_per_name = 3, 1
        for msg in messages:
            if isinstance(msg, HumanMessage):
                role = "user"
            elif isinstance(msg, AIMessage):
                role = "assistant"
            elif isinstance(msg, ToolMessage):
                role = "tool"
            elif isinstance(msg, SystemMessage):
                role = "system"
            else:
                raise ValueError(f"Unsupported messages type {msg.__class__}")
            num_tokens += tokens_per_message + str_token_counter(role) + str_token_counter(msg.content)
            if msg.name:
                num_tokens += tokens_per_name + str_token_counter(msg.name)
        return num_tokens

    return tiktoken_counter


# ---------------------------------------------------------------------------------------------------- timing
@dataclass
class Case:
    operation: str
    size: int
    subject: Subject
    fn: Callable[[], Any]
    samples: list[int] = field(default_factory=list)
    returned: int | None = None  # messages returned by a read
    tokens: int | None = None  # their tokens by this project's rule (content + role + 2, cl100k)
    timed_out: float | None = None  # seconds, when the probe did not finish
    probe_s: float | None = None
    error: str | None = None


def _probe_child(fn: Callable[[], Any], conn: Any) -> None:
    try:
        t0 = time.perf_counter()
        fn()
        conn.send(("ok", time.perf_counter() - t0))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def probe(case: Case, timeout: float) -> None:
    """Run the case once in a forked child; mark it timed out (and kill the child, by pid) past ``timeout``."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_probe_child, args=(case.fn, child), daemon=True)
    proc.start()
    child.close()
    if parent.poll(timeout):
        status, value = parent.recv()
        if status == "ok":
            case.probe_s = value
        else:
            case.error = value
    else:
        case.timed_out = timeout
    if proc.is_alive():
        proc.kill()
    proc.join(5)
    parent.close()


def run_interleaved(cases: Sequence[Case], settings: Settings) -> None:
    """Sample every runnable case, interleaved in blocks; each stops at its iteration count or its time cap."""
    runnable = [c for c in cases if c.timed_out is None and c.error is None]
    cap = int(settings.cap_s * 1e9)
    clock = time.perf_counter_ns
    for case in runnable:  # warm up, but never longer than a tenth of the cap (at least one call)
        if case.probe_s is not None and case.probe_s * 1e9 > cap // 10:
            continue  # one call costs more than the whole warm-up allowance: the probe was its warm-up
        until = clock() + cap // 10
        for _ in range(settings.warmup):
            case.fn()
            if clock() > until:
                break
    spent = {id(c): 0 for c in runnable}
    gc.collect()
    rnd = 0
    while True:
        active = [c for c in runnable if len(c.samples) < settings.iterations and spent[id(c)] < cap]
        if not active:
            break
        for case in active if rnd % 2 == 0 else reversed(active):
            fn, out = case.fn, case.samples
            for _ in range(settings.block):
                t0 = clock()
                fn()
                dt = clock() - t0
                out.append(dt)
                spent[id(case)] += dt
                if spent[id(case)] >= cap or len(out) >= settings.iterations:
                    break
        rnd += 1


# ---------------------------------------------------------------------------------------------------- concurrency
@dataclass
class WriterResult:
    subject: Subject
    expected: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0  # writers whose own messages are not stored in the order they appended them
    errors: int = 0
    throughputs: list[float] = field(default_factory=list)  # appends/s of each round
    p50s: list[float] = field(default_factory=list)  # µs, median writer's p50 of each round
    note: str = ""

    @property
    def throughput(self) -> float:
        return _median(self.throughputs)

    @property
    def p50_us(self) -> float:
        return _median(self.p50s)


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


TAG = re.compile(r"^\[w(\d+)#(\d+)\] ")


def _writer(
    subject: Subject, url: str, key: str, writer: int, count: int, contents: list[str], barrier: Any, conn: Any
) -> None:
    try:
        subject.connect(url)  # fresh connections in this process
        barrier.wait(30)
        start = time.perf_counter_ns()
        latencies, errors = [], 0
        for i in range(count):
            text = f"[w{writer}#{i}] {contents[(writer * 7 + i) % len(contents)]}"
            t0 = time.perf_counter_ns()
            try:
                subject.append(key, role_of(i), text)
            except Exception:
                errors += 1
            latencies.append(time.perf_counter_ns() - t0)
        conn.send(("ok", start, time.perf_counter_ns(), errors, percentile(latencies, 0.5)))
    except BaseException:
        conn.send(("error", traceback.format_exc(limit=3), 0, 0, 0.0))


def concurrent_writers(result: WriterResult, url: str, key: str, per_writer: int, contents: list[str]) -> None:
    """8 forked processes append ``per_writer`` tagged messages each to ``key``; then count what was stored
    (added to ``result``)."""
    subject = result.subject
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WRITERS)
    pipes, procs = [], []
    for w in range(WRITERS):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_writer, args=(subject, url, key, w, per_writer, contents, barrier, child), daemon=True
        )
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    result.expected += WRITERS * per_writer
    starts, ends, p50s, errors_before = [], [], [], result.errors
    for parent, proc in zip(pipes, procs, strict=True):
        if not parent.poll(300):
            result.note = "a writer did not finish in 300 s"
            proc.kill()
        else:
            status, start, end, errors, p50 = parent.recv()
            if status != "ok":
                result.note = f"writer failed: {str(start).strip().splitlines()[-1]}"
            else:
                starts.append(start)
                ends.append(end)
                result.errors += errors
                p50s.append(p50)
        proc.join(10)
    if len(starts) == WRITERS:
        done = WRITERS * per_writer - (result.errors - errors_before)
        result.throughputs.append(done / ((max(ends) - min(starts)) / 1e9))
        result.p50s.append(_median(p50s))
    stored = subject.read_all(key)
    result.stored += len(stored)
    seen: dict[tuple[int, int], int] = {}
    order: dict[int, list[int]] = {}
    for _, content in stored:
        m = TAG.match(content)
        if m is None:
            continue
        w, i = int(m.group(1)), int(m.group(2))
        seen[(w, i)] = seen.get((w, i), 0) + 1
        order.setdefault(w, []).append(i)
    result.lost += sum(1 for w in range(WRITERS) for i in range(per_writer) if (w, i) not in seen)
    result.duplicated += sum(n - 1 for n in seen.values())
    result.out_of_order += sum(1 for seq in order.values() if seq != sorted(seq))


# ---------------------------------------------------------------------------------------------------- the run
class Bench:
    def __init__(self, url: str, settings: Settings) -> None:
        self.url, self.settings = url, settings
        run = uuid.uuid4().hex[:8]
        self.prefix = f"peersbench{run}:"
        self.contents = make_contents()
        self.counter = get_counter(None)
        self.raw = Raw(self.prefix)
        self.subjects: list[Subject] = [self.raw, Compozy(f"peersbench{run}")]
        for cls in (LlamaIndex, LangChain):
            self.subjects.append(cls(self.prefix))
        self.subjects += peers_adapters.subjects(f"peersbench{run}")  # the adapters, next to the peers
        for subject in self.subjects:
            if subject.skipped:
                continue
            try:
                subject.connect(url)
            except Exception as exc:
                subject.skipped = f"set-up failed: {type(exc).__name__}: {exc}"
        self.active = [s for s in self.subjects if not s.skipped]
        self.cases: list[Case] = []
        self.writers: list[WriterResult] = []

    def messages(self, n: int) -> list[tuple[str, str]]:
        return [(role_of(i), self.contents[i % len(self.contents)]) for i in range(n)]

    def our_tokens(self, pairs: Sequence[tuple[str, str]]) -> int:
        return sum(self.counter.count_message(r, c) for r, c in pairs)

    def fill(self) -> None:
        for size in SIZES:
            messages = self.messages(size)
            for subject in self.active:
                subject.fill(subject.key(f"h{size}"), messages)
        compozy = next(s for s in self.active if s.name == "compozy")
        for size in SIZES:
            window = len(compozy.read_budget(compozy.key(f"h{size}")))
            self.raw.windows[self.raw.key(f"h{size}")] = window

    def check(self, case: Case, pairs: list[tuple[str, str]]) -> None:
        """A read must return the newest messages, newest last."""
        expected = self.messages(case.size)[-len(pairs) :] if pairs else []
        if pairs != expected:
            case.error = f"returned {len(pairs)} messages that are not the newest ones in order"
        case.returned, case.tokens = len(pairs), self.our_tokens(pairs)

    def reads(self, operation: str, method: str) -> None:
        cases = []
        for size in SIZES:
            for subject in self.active:
                fn = getattr(subject, method)
                key = subject.key(f"h{size}")
                cases.append(Case(operation, size, subject, lambda fn=fn, key=key: fn(key)))
        if method == "read_budget":
            for case in cases:
                if case.subject.name not in ("raw", "compozy", *peers_adapters.ADAPTERS):
                    print(f"    probe {case.subject.label} @ {case.size:,} ...", flush=True)
                    probe(case, self.settings.probe_timeout_s)
        for case in cases:
            if case.timed_out is None and case.error is None:
                self.check(case, case.fn())
        run_interleaved(cases, self.settings)
        self.cases.extend(cases)

    def appends(self) -> None:
        cases = []
        for size in SIZES:
            for subject in self.active:
                key = subject.key(f"h{size}")
                counter = iter(range(10**9))

                def fn(subject: Subject = subject, key: str = key, counter: Any = counter) -> None:
                    i = next(counter)
                    subject.append(key, role_of(i), self.contents[i % len(self.contents)])

                cases.append(Case("append 1 message", size, subject, fn))
        run_interleaved(cases, self.settings)
        self.cases.extend(cases)

    def concurrency(self) -> None:
        self.writers = [WriterResult(subject) for subject in self.active]
        for rnd in range(self.settings.writer_rounds):
            print(f"    round {rnd + 1} of {self.settings.writer_rounds} ...", flush=True)
            for result in self.writers if rnd % 2 == 0 else reversed(self.writers):
                key = result.subject.key(f"concurrent{rnd}")
                concurrent_writers(result, self.url, key, self.settings.appends_per_writer, self.contents)

    def cleanup(self) -> None:
        client = self.raw.client
        for pattern in (f"{self.prefix}*", f"compozy:{self.prefix[:-1]}:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])


# ---------------------------------------------------------------------------------------------------- report
def fmt_us(us: float) -> str:
    if us >= 1_000_000:
        return f"{us / 1e6:.2f} s"
    if us >= 10_000:
        return f"{us / 1000:.1f} ms"
    if us >= 1_000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.0f} µs"


def fmt_ratio(r: float) -> str:
    if r >= 100:
        return f"{r:,.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.2f}x"


def versions() -> dict[str, str]:
    out = {}
    for dist in (
        "compozy-nb",
        "redis",
        "hiredis",
        "tiktoken",
        "llama-index-core",
        "llama-index-storage-chat-store-redis",
        "langchain-core",
        "langchain-community",
        "pydantic",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def machine(client: redis.Redis, load_start: str, load_end: str) -> list[str]:
    info = client.info("server")
    pings: list[int] = []
    for _ in range(300):
        t0 = time.perf_counter_ns()
        client.ping()
        pings.append(time.perf_counter_ns() - t0)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable by this process)",
        f"- load average (1 / 5 / 15 min): {load_start} at start, {load_end} at end",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()})",
        f"- redis-server {info.get('redis_version')} (loopback, no persistence), PING round trip p50 "
        f"{percentile(pings, 0.5):.0f} µs; redis-py hiredis parser: {'yes' if HIREDIS_AVAILABLE else 'no'}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
    ]


def report(bench: Bench, settings: Settings, mode: str, lines_machine: list[str], elapsed: float) -> str:
    subjects = bench.subjects
    active = bench.active
    by = {(c.operation, c.size, c.subject.name): c for c in bench.cases}
    operations = []
    for c in bench.cases:
        if c.operation not in operations:
            operations.append(c.operation)

    def p50(case: Case) -> float | None:
        return percentile(case.samples, 0.5) if case.samples else None

    def cell(case: Case | None, base: float | None) -> str:
        if case is None:
            return "skipped"
        if case.timed_out is not None:
            return f"> {case.timed_out:.0f} s (timed out)"
        if case.error is not None:
            return "error"
        value = p50(case)
        if value is None:
            return "—"
        if case.subject.name == "raw" or not base:
            return fmt_us(value)
        return f"{fmt_us(value)} ({fmt_ratio(value / base)})"

    out = [
        "# Benchmarks against peers",
        "",
        f"Generated by `python benchmarks/bench_peers.py{' --quick' if mode == 'quick' else ''}` on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} ({mode} run, {elapsed:.0f} s). "
        "Every subject ran against the same redis-server in the same run; the ratios (subject p50 ÷ raw "
        "redis-py p50, lower is better) are what carry across machines, not the absolute numbers.",
        "",
        "## Machine",
        "",
        *lines_machine,
        "",
        "## Subjects",
        "",
    ]
    for s in subjects:
        out.append(f"- **{s.label}**: " + (f"skipped — {s.skipped}" if s.skipped else "ran"))
    out += [
        "",
        "## Latency (p50, ratio vs raw redis-py)",
        "",
        "| operation | stored msgs | " + " | ".join(s.label for s in subjects) + " |",
        "|---|---:|" + "---:|" * len(subjects),
    ]
    for op in operations:
        for size in SIZES:
            raw_case = by.get((op, size, "raw"))
            base = p50(raw_case) if raw_case else None
            cells = [cell(by.get((op, size, s.name)) if not s.skipped else None, base) for s in subjects]
            out.append(f"| {op} | {size:,} | " + " | ".join(cells) + " |")
    out += [
        "",
        "## Details",
        "",
        "Samples: calls timed (a case stops at "
        f"{settings.iterations:,} calls or {settings.cap_s:g} s of accumulated time, whichever comes first). "
        f"Returned: messages a read returned; tokens: their tokens by this project's rule (cl100k_base, "
        "content + role + 2 per message), the same yardstick for every subject.",
        "",
        "| operation | stored | subject | p50 | p99 | samples | returned | tokens | ratio p50 |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for op in operations:
        for size in SIZES:
            raw_case = by.get((op, size, "raw"))
            base = p50(raw_case) if raw_case else None
            for s in active:
                case = by.get((op, size, s.name))
                if case is None:
                    continue
                if case.timed_out is not None or case.error is not None:
                    what = (
                        f"did not finish once in {case.timed_out:.0f} s"
                        if case.timed_out is not None
                        else f"error: {case.error}"
                    )
                    out.append(f"| {op} | {size:,} | {s.label} | {what} | | | | | |")
                    continue
                v50 = p50(case) or 0.0
                v99 = percentile(case.samples, 0.99) if case.samples else 0.0
                ratio = "1 (baseline)" if s.name == "raw" else (fmt_ratio(v50 / base) if base else "—")
                out.append(
                    f"| {op} | {size:,} | {s.label} | {fmt_us(v50)} | {fmt_us(v99)} | {len(case.samples):,} | "
                    f"{'' if case.returned is None else case.returned} | {'' if case.tokens is None else case.tokens} "
                    f"| {ratio} |"
                )
    raw_w = next((w for w in bench.writers if w.subject.name == "raw"), None)
    out += [
        "",
        f"## {WRITERS} concurrent writers",
        "",
        f"{WRITERS} forked processes, each with its own connections, wait on a barrier and then append "
        f"{settings.appends_per_writer:,} tagged messages each (roles alternating) to one fresh key; then the "
        f"whole key is read back and checked. {settings.writer_rounds} round(s) per subject, subjects in "
        "alternating order; counts are summed over the rounds, appends/s (all appends ÷ last writer's end - "
        "first writer's start) and the p50 latency of one append under contention are medians over the rounds. "
        "Ratio = raw appends/s ÷ subject appends/s (time per append relative to raw, lower is better). "
        "Out of order = writers whose own messages are not stored in the order they appended them.",
        "",
        "| subject | expected | stored | lost | duplicated | out of order | errors | appends/s | p50 per append "
        "| ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in bench.writers:
        ratio = (
            "1 (baseline)"
            if w.subject.name == "raw"
            else (fmt_ratio(raw_w.throughput / w.throughput) if raw_w and w.throughput else "—")
        )
        out.append(
            f"| {w.subject.label} | {w.expected:,} | {w.stored:,} | {w.lost} | {w.duplicated} | {w.out_of_order} | "
            f"{w.errors} | {w.throughput:,.0f} | {fmt_us(w.p50_us)} | {ratio} |" + (f" {w.note}" if w.note else "")
        )
    for s in subjects:
        if s.skipped:
            out.append(f"| {s.label} | skipped | | | | | | | | |")
    out += peers_adapters.report_lines(bench.cases, SIZES, p50, fmt_ratio)
    out += ["", "## What differs between the subjects (read before comparing)", "", *SEMANTICS]
    extra = notes(bench)
    if extra:
        out += ["", "## Notes on this run", "", *extra]
    return "\n".join(out) + "\n"


SEMANTICS = [
    "- **Stored form.** raw: `{role, content}` JSON, RPUSH. compozy_nb: Compozy's wire format (role, content, "
    "token count, id, timestamps) in a list, plus a metadata hash (message and token counters) kept by the same "
    "Lua script. LlamaIndex: `ChatMessage.model_dump_json()` (role, blocks, additional_kwargs), RPUSH. "
    "LangChain: `message_to_dict()` JSON, **LPUSH** (newest first; `.messages` reverses the list on read).",
    "- **append.** raw: RPUSH + EXPIRE in one pipeline (1 round trip). compozy_nb: counts the message's tokens "
    "(tiktoken), assigns an id, redacts per policy, then one Lua script appends, updates the counters, applies "
    "the limits and refreshes the TTL atomically (1 round trip). LlamaIndex `put` and LangChain `add_message`: "
    "push, then a separate EXPIRE because a TTL is set (2 round trips, not atomic together). The peers count "
    "no tokens on write. Every store here is unbounded (this project's resource has no limit, to match); with a "
    "limit, this project evicts in the same script, the peers have no server-side window at all.",
    "- **read last 20.** raw and compozy_nb: LRANGE -20 -1 (this project in a MULTI with LLEN for the total). "
    'Neither peer has a "last n" read: `RedisChatStore.get_messages(key)` and '
    "`RedisChatMessageHistory.messages` load and deserialize the **whole** history, then the caller slices "
    "`[-20:]` — so they grow with the history.",
    f"- **read within {BUDGET:,} tokens.** compozy_nb: one Lua script walks the stored per-message token counts "
    "from the newest back and returns only the messages that fit — nothing else crosses the network, flat in "
    "history size. raw: the floor, LRANGE of exactly the number of newest messages this project returns + "
    "`json.loads`. LlamaIndex `ChatMemoryBuffer.get()`: loads the whole history, then re-tokenizes the "
    "space-joined contents of the remaining messages after each message it drops (default tokenizer: tiktoken "
    "for gpt-3.5-turbo = cl100k_base; content only, no per-message or role overhead), i.e. quadratic in the "
    "history size; it also drops leading assistant messages. LangChain: loads the whole history, then "
    '`trim_messages(strategy="last", start_on="human", include_system=True)` binary-searches the cut with '
    "the tiktoken counter of LangChain's how-to guide (cl100k_base here; 3 tokens per message + role + "
    "content, + 3 for the reply). The three token rules differ slightly, so each returns a slightly different "
    "number of messages (column *returned*; *tokens* re-counts them with one rule: LlamaIndex's content-only "
    "count can return a window over 1,000 tokens once role and per-message overhead are counted).",
    "- **Concurrency.** Every subject appends with a single server-side push, which Redis applies atomically, "
    "so lost/duplicated counts are expected to be 0 for every subject; the table checks it, and shows what each "
    "append costs under contention. With 8 writer processes on a small machine, throughput is bounded by client "
    "CPU (JSON, pydantic, tiktoken) more than by Redis, so these ratios are the noisiest of the report.",
    "- **Deprecations.** LlamaIndex marks `ChatMemoryBuffer` deprecated in favour of `llama_index.core.memory."
    "Memory`; langchain-community's `RedisChatMessageHistory` has a successor in the separate `langchain-redis` "
    "package. Both are used here because they are the Redis-backed APIs the peers document for this job.",
]


def notes(bench: Bench) -> list[str]:
    out = []
    for case in bench.cases:
        if case.timed_out is not None:
            per_call = ""
            smaller = [
                c
                for c in bench.cases
                if c.operation == case.operation and c.subject is case.subject and c.size < case.size and c.samples
            ]
            if smaller and case.subject.name == "llamaindex" and case.operation.startswith("read ≤"):
                ref = max(smaller, key=lambda c: c.size)
                est = percentile(ref.samples, 0.5) / 1e6 * (case.size / ref.size) ** 2
                per_call = (
                    f" Extrapolating its {ref.size:,}-message p50 quadratically (its algorithm re-tokenizes the "
                    f"remaining history once per dropped message) gives roughly {est:,.0f} s per call."
                )
            out.append(
                f"- {case.subject.label} `{case.operation}` at {case.size:,} stored messages did not finish "
                f"one call within {case.timed_out:.0f} s; the child process was killed.{per_call}"
            )
        elif case.error is not None:
            out.append(f"- {case.subject.label} `{case.operation}` at {case.size:,}: {case.error}")
    for w in bench.writers:
        if w.note:
            out.append(f"- concurrent writers, {w.subject.label}: {w.note}")
    for subject in bench.subjects:
        for message in subject.warnings:
            out.append(f'- {subject.label} warned on import: "{message}"')
    return out


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", metavar="URL", help="use this Redis instead of starting a redis-server")
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run (fewer samples, caps)")
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="write the Markdown report here (default: benchmarks/RESULTS.md for a full run, none for --quick)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    output = Path(args.output) if args.output else (None if args.quick else HERE / "RESULTS.md")
    started = time.perf_counter()
    load_start = loadavg()
    server = None if args.redis else RedisServer().start()
    url = args.redis or server.url  # type: ignore[union-attr]
    try:
        bench = Bench(url, settings)
        try:
            for s in bench.subjects:
                print(f"{s.label}: {'skipped — ' + s.skipped if s.skipped else 'ready'}", flush=True)
            print(f"- fill {', '.join(f'{n:,}' for n in SIZES)} messages per subject ...", flush=True)
            bench.fill()
            print(f"- read last {LAST} ...", flush=True)
            bench.reads(f"read last {LAST}", "read_last")
            print(f"- read within {BUDGET:,} tokens ...", flush=True)
            bench.reads(f"read ≤ {BUDGET:,} tokens", "read_budget")
            print("- append ...", flush=True)
            bench.appends()
            print(f"- {WRITERS} concurrent writers x {settings.appends_per_writer} appends ...", flush=True)
            bench.concurrency()
            lines = machine(bench.raw.client, load_start, loadavg())
            text = report(bench, settings, mode, lines, time.perf_counter() - started)
        finally:
            bench.cleanup()
    finally:
        if server is not None:
            server.stop()
    print()
    print(text)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        print(f"written to {output}")
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
