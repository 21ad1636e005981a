"""What every part of the peers benchmark shares: sizes, settings, the ``Subject`` interface, the test messages."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import _common

from compozy_nb.tokens import ensure_offline_vocab

SIZES = (100, 1_000, 10_000)
LAST = 20
BUDGET = 1_000
MESSAGE_TOKENS = 50
TTL_S = 24 * 3600
FILL_BATCH = 1_000
WRITERS = 8
ENCODING = "cl100k_base"  # what this project, LlamaIndex's default (gpt-3.5-turbo) and our LangChain counter use

T = TypeVar("T")


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


def import_peer(subject: Subject, load: Callable[[], T]) -> T | None:
    """Run ``load`` (a peer's imports) and keep the deprecation warnings it raised on ``subject.warnings`` (shown in
    the report instead of on stderr); None, with ``subject.skipped`` set, when the peer is not installed."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = load()
    except ImportError as exc:
        subject.skipped = f"not installed ({exc})"
        return None
    subject.warnings = _import_warnings(caught)
    return loaded


def _import_warnings(caught: Iterable[warnings.WarningMessage]) -> tuple[str, ...]:
    found = []
    for w in caught:
        if issubclass(w.category, DeprecationWarning | FutureWarning) and str(w.message) not in found:
            found.append(str(w.message))
    return tuple(found)
