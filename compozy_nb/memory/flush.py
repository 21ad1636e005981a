"""Flush strategies: which stored messages a flush removes, and the summary that replaces them.

A strategy only plans. The plan is applied by ``flush.lua``, which removes exactly the planned messages
(matched by their stored bytes), so messages appended after the snapshot always survive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from compozy_nb.config.memory import STRATEGIES, MemoryResource
from compozy_nb.memory import transcript
from compozy_nb.tokens import TokenCounter

TARGET_RATIO = 0.5


@dataclass(frozen=True)
class Stored:
    """One stored message of a snapshot: its exact bytes, decoded form and position."""

    raw: bytes
    message: Mapping[str, Any]
    position: int

    @property
    def tokens(self) -> int:
        """The token count recorded at write time."""
        value = self.message.get("tokens", 0)
        return int(value) if isinstance(value, int | float) else 0

    @property
    def role(self) -> str:
        """The message role."""
        return str(self.message.get("role", "user"))

    @property
    def is_summary(self) -> bool:
        """True for a summary written by an earlier hybrid_summary flush."""
        return bool(self.message.get("summary"))


@dataclass
class FlushPlan:
    """What a flush will do."""

    strategy: str
    remove: list[Stored] = field(default_factory=list)
    summary: str | None = None
    summarized: int = 0

    @property
    def removed_tokens(self) -> int:
        """Tokens the removed messages held."""
        return sum(s.tokens for s in self.remove)


class Summarizer(Protocol):
    """Turns the messages being flushed (and any earlier summary) into one summary text."""

    def __call__(self, messages: Sequence[Mapping[str, Any]], previous: str | None, max_tokens: int) -> str: ...


def usage(resource: MemoryResource, message_count: int, token_count: int) -> float:
    """How full the memory is: the highest ratio of count to limit over the limits that are set."""
    ratios = []
    if resource.token_limit:
        ratios.append(token_count / resource.token_limit)
    if resource.max_messages:
        ratios.append(message_count / resource.max_messages)
    return max(ratios, default=0.0)


def _evict_until_target(
    ordered: Sequence[Sequence[Stored]],
    resource: MemoryResource,
    count: int,
    tokens: int,
    *,
    tokens_only: bool = False,
) -> list[Stored]:
    """Take whole groups from ``ordered`` until the memory is within TARGET_RATIO of each limit."""
    msg_target = (
        None if tokens_only else (math.floor(resource.max_messages * TARGET_RATIO) if resource.max_messages else None)
    )
    tok_target = math.floor(resource.token_limit * TARGET_RATIO) if resource.token_limit else None
    if tokens_only and tok_target is None and resource.max_messages:
        msg_target = math.floor(resource.max_messages * TARGET_RATIO)
    removed: list[Stored] = []
    for group in ordered:
        over_msgs = msg_target is not None and count > msg_target
        over_tokens = tok_target is not None and tokens > tok_target
        if not (over_msgs or over_tokens):
            break
        removed.extend(group)
        count -= len(group)
        tokens -= sum(item.tokens for item in group)
    return sorted(removed, key=lambda s: s.position)


def tool_call_groups(snapshot: Sequence[Stored]) -> list[list[Stored]]:
    """The snapshot cut into tool-call groups: a message and the ``tool`` messages right after it (a leading tool
    run is a group of its own). Flushes remove whole groups."""
    bounds = transcript.groups([s.role for s in snapshot])
    return [list(snapshot[start:end]) for start, end in bounds]


def plan_flush(
    strategy: str,
    snapshot: Sequence[Stored],
    resource: MemoryResource,
    *,
    access: Mapping[str, float] | None = None,
) -> FlushPlan:
    """Plan a flush of ``snapshot`` (oldest first) with ``strategy``. System messages are never removed,
    except an earlier summary, which hybrid_summary folds into the new one. Tool-call groups are removed whole;
    a group led by a system message is kept whole."""
    strategy = "simple_fifo" if strategy == "fifo" else strategy
    count = len(snapshot)
    tokens = sum(s.tokens for s in snapshot)
    evictable = [g for g in tool_call_groups(snapshot) if g[0].role != "system"]
    if strategy == "simple_fifo":
        return FlushPlan(strategy, _evict_until_target(evictable, resource, count, tokens))
    if strategy in ("lru", "token_aware_lru"):
        seen = access or {}

        def last_used(s: Stored) -> float:
            """Last read time (ms), else the write time: a message never read counts as used when written."""
            mid = str(s.message.get("id", ""))
            return seen.get(mid, _written_ms(s))

        def was_read(s: Stored) -> bool:
            """At equal times (read in the millisecond it was written), a message read survives."""
            return str(s.message.get("id", "")) in seen

        def recency(group: Sequence[Stored]) -> tuple[float, bool]:
            """A group is as recent as its most recently used message."""
            return max(last_used(s) for s in group), any(was_read(s) for s in group)

        if strategy == "lru":
            ordered = sorted(evictable, key=lambda g: (*recency(g), g[0].position))
            return FlushPlan(strategy, _evict_until_target(ordered, resource, count, tokens))
        ordered = sorted(evictable, key=lambda g: (*recency(g), -sum(s.tokens for s in g), g[0].position))
        return FlushPlan(strategy, _evict_until_target(ordered, resource, count, tokens, tokens_only=True))
    if strategy == "hybrid_summary":
        previous = [s for s in snapshot if s.is_summary]
        plain = sum(len(g) for g in evictable)
        take = math.ceil(plain * resource.flushing.summarize_oldest_percent) if plain >= 2 else 0
        take = max(take, 2) if take else 0
        chosen: list[Stored] = []
        for group in evictable:
            if len(chosen) >= take:
                break
            chosen.extend(group)
        if not chosen:
            return FlushPlan(strategy)
        remove = sorted([*previous, *chosen], key=lambda s: s.position)
        return FlushPlan(strategy, remove, summarized=len(chosen))
    raise ValueError(f"invalid strategy '{strategy}', must be one of: {', '.join(STRATEGIES)}")


_HEADER = re.compile(r"^Summary of (\d+) earlier messages:\n?")


def _written_ms(stored: Stored) -> float:
    ts = stored.message.get("ts")
    if isinstance(ts, str):
        try:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000
        except ValueError:
            pass
    return float(stored.position) - 1e15


class RuleBasedSummarizer:
    """The deterministic summarizer used when no LLM summarizer is configured.

    One line per message, ``- role: first words``, under a header counting every message summarized so far;
    an earlier summary's lines are kept (folded), and when the text exceeds ``max_tokens`` the oldest lines
    go first, so the newest facts survive.
    """

    def __init__(self, counter: TokenCounter, preview_chars: int = 120) -> None:
        self._counter = counter
        self._preview = preview_chars

    def __call__(self, messages: Sequence[Mapping[str, Any]], previous: str | None, max_tokens: int) -> str:
        earlier_count, earlier_lines = 0, []
        if previous:
            match = _HEADER.match(previous)
            if match:
                earlier_count = int(match.group(1))
                previous = previous[match.end() :]
            earlier_lines = [line for line in previous.splitlines() if line.strip()]
        lines = list(earlier_lines)
        for message in messages:
            text = " ".join(_summary_text(message).split())
            if len(text) > self._preview:
                text = text[: self._preview - 3].rstrip() + "..."
            lines.append(f"- {message.get('role', 'user')}: {text}")
        header = f"Summary of {earlier_count + len(messages)} earlier messages:"
        while len(lines) > 1 and self._counter.count("\n".join([header, *lines])) > max_tokens:
            lines.pop(0)
        return truncate_tokens("\n".join([header, *lines]), self._counter, max_tokens)


def _summary_text(message: Mapping[str, Any]) -> str:
    """What a summary line says of a message: its text, or the tools it called."""
    text = transcript.text_projection(message.get("content"))
    calls = [c.get("function", {}).get("name", "") for c in message.get("tool_calls") or () if isinstance(c, Mapping)]
    if calls:
        text = (text + " " if text else "") + f"[called {', '.join(str(name) for name in calls)}]"
    return text


def truncate_tokens(text: str, counter: TokenCounter, max_tokens: int) -> str:
    """Cut ``text`` to at most ``max_tokens`` tokens (ending in ``...`` when cut)."""
    if counter.count(text) <= max_tokens:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if counter.count(text[:mid].rstrip() + "...") <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "..."
