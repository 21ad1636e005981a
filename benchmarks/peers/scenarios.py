"""The measurement scenarios: interleaved timing with caps and a timed-out probe, the concurrent writers, and the
``Bench`` that fills every subject and runs read last 20 / read within a budget / append / concurrent writers."""

from __future__ import annotations

import gc
import multiprocessing
import re
import statistics
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from _common import percentile

from compozy_nb.tokens import get_counter

from . import adapters
from .base import SIZES, WRITERS, Settings, Subject, make_contents, role_of
from .langchain import LangChain
from .llama_index import LlamaIndex
from .ours import Compozy
from .raw import Raw


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
    return statistics.median(values) if values else 0.0


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
        self.subjects += adapters.subjects(f"peersbench{run}")  # the adapters, next to the peers
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
                if case.subject.name not in ("raw", "compozy", *adapters.ADAPTERS):
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
