"""Stateful property test: random operation sequences on a MemoryInstance against a pure-Python model.

The model is a list of messages (role, content, tokens, id, extra fields), an archive (newest first), the
clear backups and a few counters. After every step the real memory must equal the model: ``read()``, the
archive, ``stats()``, the Redis metadata hash recomputed from the list itself, and the invariants (never above
``max_messages``/``max_tokens``, system messages never evicted or flushed). The machine runs on the embedded
backend and on a real redis-server.

Token counts in the model come from the tokenizer (``count_message``), which is not the code under test.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from compozy_nb import Project, connect
from compozy_nb.backends import Backend, reset_embedded
from compozy_nb.config.memory import MemoryResource
from compozy_nb.errors import (
    CompozyNbError,
    ConfirmRequiredError,
    InvalidKeyError,
    InvalidPayloadError,
    LimitExceededError,
)
from compozy_nb.tokens import get_counter

try:
    from tests import strategies as s
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    import strategies as s  # type: ignore[no-redef,import-not-found]

PROJECT = "modeltest"
MAX_MESSAGES = 6
MAX_TOKENS = 120
ARCHIVE_MAX = 10
THRESHOLD = 0.8  # the resource's default flushing.summarize_threshold
FIFO_TARGET_MESSAGES = math.floor(MAX_MESSAGES * 0.5)
FIFO_TARGET_TOKENS = math.floor(MAX_TOKENS * 0.5)
COUNTER = get_counter(None)
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")

RESOURCE = MemoryResource(
    id="model",
    type="token_based",
    max_messages=MAX_MESSAGES,
    max_tokens=MAX_TOKENS,
    archive_max_messages=ARCHIVE_MAX,
)


def machine_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        stateful_step_count=30,
        deadline=None,
        report_multiple_bugs=False,  # shrink the first failure only: a stateful shrink is slow
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------------------------------------------- model
@dataclass
class Msg:
    """One message as the model expects it stored. ``id`` is None until the memory generates one."""

    role: str
    content: str
    tokens: int
    id: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    def stored(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "id": self.id,
            "role": self.role,
            "content": self.content,
            **self.extra,
        }


def to_msg(item: Any) -> Msg:
    """The model's reading of one payload element (a string is a user message)."""
    if isinstance(item, str):
        item = {"content": item}
    role = item.get("role", "user")
    content = item["content"]
    extra = {k: v for k, v in item.items() if k not in ("role", "content", "id", "tokens", "ts")}
    mid = str(item["id"]) if "id" in item else None
    return Msg(role, content, COUNTER.count_message(role, content), mid, extra)


def to_msgs(payload: Any) -> list[Msg]:
    items = payload if isinstance(payload, list) else [payload]
    return [to_msg(item) for item in items]


class ModelLimitExceededError(Exception):
    """The model says the operation must fail with LIMIT_EXCEEDED (and change nothing)."""


@dataclass
class Stored:
    accepted: int
    evicted: int
    duplicates: int


@dataclass
class MemoryModel:
    messages: list[Msg] = field(default_factory=list)
    archive: list[Msg] = field(default_factory=list)  # newest first
    backups: dict[str, list[Msg]] = field(default_factory=dict)
    evicted_count: int = 0
    flush_count: int = 0
    flushed: bool = False  # last_flush is set
    meta_exists: bool = False
    pinned: list[Msg] = field(default_factory=list)  # system messages that must still be stored

    @property
    def token_count(self) -> int:
        return sum(m.tokens for m in self.messages)

    def roles(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.messages:
            out[m.role] = out.get(m.role, 0) + 1
        return dict(sorted(out.items()))

    def usage(self) -> float:
        return max(self.token_count / MAX_TOKENS, len(self.messages) / MAX_MESSAGES)

    def _archive(self, removed: list[Msg]) -> None:
        self.archive = [*reversed(removed), *self.archive][:ARCHIVE_MAX]

    def store(self, mode: str, batch: list[Msg]) -> Stored:
        """append (mode 'append') or write/restore (mode 'replace'): de-duplicate ids, then evict the oldest
        non-system messages (stored ones before new ones) until the limits hold; all or nothing. The newest
        non-system message of the batch is what the caller asked to store: it is never evicted."""
        if any(m.tokens > MAX_TOKENS for m in batch):
            raise ModelLimitExceededError("one message alone is over the token limit")
        current = [] if mode == "replace" else list(self.messages)
        present = {m.id for m in current}
        seen: set[str] = set()
        new: list[Msg] = []
        duplicates = 0
        for m in batch:
            if m.id is not None and (m.id in seen or m.id in present):
                duplicates += 1
                continue
            if m.id is not None:
                seen.add(m.id)
            new.append(m)
        need_messages = len(current) + len(new) - MAX_MESSAGES
        need_tokens = sum(m.tokens for m in current) + sum(m.tokens for m in new) - MAX_TOKENS
        evicted: list[Msg] = []

        def satisfied() -> bool:
            return len(evicted) >= need_messages and sum(m.tokens for m in evicted) >= need_tokens

        plain_new = [m for m in new if m.role != "system"]
        protected = plain_new[-1] if plain_new else None
        for m in [*current, *new]:
            if satisfied():
                break
            if m.role != "system" and m is not protected:
                evicted.append(m)
        if not satisfied():
            raise ModelLimitExceededError("does not fit even after evicting every non-system message")
        gone = {id(m) for m in evicted}
        self.messages = [m for m in [*current, *new] if id(m) not in gone]
        self._archive(evicted)
        self.evicted_count += len(evicted)
        self.meta_exists = True
        new_systems = [m for m in new if m.role == "system"]
        self.pinned = new_systems if mode == "replace" else [*self.pinned, *new_systems]
        return Stored(len(new), len(evicted), duplicates)

    def fifo_plan(self, force: bool, threshold: float | None) -> tuple[bool, list[Msg]]:
        """simple_fifo: when usage reaches the threshold (or force), remove the oldest non-system messages
        until the memory is within 50% of each limit."""
        count, tokens = len(self.messages), self.token_count
        would = bool(count) and (force or self.usage() >= (THRESHOLD if threshold is None else threshold))
        remove: list[Msg] = []
        if would:
            for m in (m for m in self.messages if m.role != "system"):
                if count <= FIFO_TARGET_MESSAGES and tokens <= FIFO_TARGET_TOKENS:
                    break
                remove.append(m)
                count -= 1
                tokens -= m.tokens
        return would, remove

    def apply_flush(self, remove: list[Msg]) -> None:
        gone = {id(m) for m in remove}
        self.messages = [m for m in self.messages if id(m) not in gone]
        self._archive(remove)
        self.flush_count += 1
        self.flushed = True
        self.meta_exists = True

    def clear(self, backup_key: str | None) -> None:
        if backup_key is not None:
            self.backups[backup_key] = list(self.messages)
        self.messages = []
        self.pinned = []
        self.meta_exists = False
        self.evicted_count = self.flush_count = 0
        self.flushed = False

    def delete(self) -> list[str]:
        dropped = list(self.backups)
        self.messages, self.archive, self.backups, self.pinned = [], [], {}, []
        self.meta_exists = self.flushed = False
        self.evicted_count = self.flush_count = 0
        return dropped


# ---------------------------------------------------------------------------------------------------- helpers
def _s(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _without_ts(message: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(message.get("ts"), str) and message["ts"].endswith("Z"), message
    return {k: v for k, v in message.items() if k != "ts"}


def _match(expected: list[Msg], actual: list[dict[str, Any]], what: str) -> None:
    """The actual messages equal the model's, in order; a generated id is learnt the first time it is seen."""
    assert len(actual) == len(expected), (what, [m.stored() for m in expected], actual)
    for want, got in zip(expected, actual, strict=True):
        if want.id is None:
            assert GENERATED_ID.match(str(got.get("id"))), (what, got)
            want.id = got["id"]
    assert [_without_ts(m) for m in actual] == [m.stored() for m in expected], what


def _attempt(call: Any) -> tuple[Any, CompozyNbError | None]:
    try:
        return call(), None
    except CompozyNbError as exc:
        return None, exc


def _tokens_to_exceed(room: int) -> str:
    """A system message content whose message tokens exceed ``room`` but not the memory's token limit."""
    words = 1
    while COUNTER.count_message("system", " ".join(["rule"] * words)) <= room:
        words += 1
    content = " ".join(["rule"] * words)
    assert COUNTER.count_message("system", content) <= MAX_TOKENS
    return content


# ---------------------------------------------------------------------------------------------------- machine
class MemoryMachine(RuleBasedStateMachine):
    """Random sequences of the memory operations, checked against :class:`MemoryModel` after every step."""

    backend_url: ClassVar[str | None] = None  # None: a fresh embedded server per example

    def __init__(self) -> None:
        super().__init__()
        self._embedded: str | None = None
        if self.backend_url is None:
            self._embedded = uuid.uuid4().hex
            self.backend: Backend = connect(f"embedded://{self._embedded}")
        else:
            self.backend = connect(self.backend_url)
            self.backend.client.flushdb()
        project = Project(PROJECT)
        project.add_memory(RESOURCE)
        project.use_backend(self.backend)
        self.key = f"conv:{uuid.uuid4().hex[:8]}:s1"
        self.memory = project.memory("model", key=self.key)
        self.model = MemoryModel()
        self.dead_backups: list[str] = []
        # The Redis layout is Compozy's, written here independently of the package.
        self.base = f"compozy:{PROJECT}:memory:{self.key}"

    def teardown(self) -> None:
        self.backend.close()
        if self._embedded is not None:
            reset_embedded(self._embedded)

    # ------------------------------------------------------------------ raw views
    def raw_state(self) -> tuple[Any, ...]:
        """Everything stored for the instance: messages, archive, metadata, ids, backups."""
        client = self.backend.client
        pipe = client.pipeline(transaction=False)
        pipe.lrange(self.base, 0, -1)
        pipe.lrange(f"{self.base}:archive", 0, -1)
        pipe.hgetall(f"{self.base}:metadata")
        pipe.smembers(f"{self.base}:ids")
        pipe.smembers(f"{self.base}:backups")
        messages, archive, meta, ids, backups = pipe.execute()
        meta = {_s(k): _s(v) for k, v in meta.items()}
        return messages, archive, meta, {_s(i) for i in ids}, {_s(b) for b in backups}

    def unchanged(self, before: tuple[Any, ...]) -> None:
        assert self.raw_state() == before, "a failed operation changed the stored data"

    # ------------------------------------------------------------------ writes
    def _append(self, payload: Any) -> None:
        batch = to_msgs(payload)
        before = self.raw_state()
        out, err = _attempt(lambda: self.memory.append(payload))
        if not batch:
            assert err is None, err
            assert out == {
                "operation": "append",
                "key": self.key,
                "success": True,
                "appended": 0,
                "total_count": len(self.model.messages),
                "token_count": self.model.token_count,
                "evicted": 0,
                "skipped": 0,
                "duplicates": 0,
                "ids": [],
            }
            return
        try:
            result = self.model.store("append", batch)
        except ModelLimitExceededError:
            event("append: LIMIT_EXCEEDED")
            assert isinstance(err, LimitExceededError), (err, payload)
            assert err.code == "LIMIT_EXCEEDED"
            self.unchanged(before)
            return
        assert err is None, (err, payload)
        event(f"append: evicted={result.evicted > 0} duplicates={result.duplicates > 0}")
        for m, got in zip(batch, out["ids"], strict=True):
            if m.id is None:
                assert GENERATED_ID.match(got), got
                m.id = got
        assert out == {
            "operation": "append",
            "key": self.key,
            "success": True,
            "appended": result.accepted,
            "total_count": len(self.model.messages),
            "token_count": self.model.token_count,
            "evicted": result.evicted,
            "skipped": 0,
            "duplicates": result.duplicates,
            "ids": [m.id for m in batch],
        }

    def _write(self, payload: Any) -> None:
        batch = to_msgs(payload)
        before = self.raw_state()
        out, err = _attempt(lambda: self.memory.write(payload))
        try:
            result = self.model.store("replace", batch)
        except ModelLimitExceededError:
            event("write: LIMIT_EXCEEDED")
            assert isinstance(err, LimitExceededError), (err, payload)
            self.unchanged(before)
            return
        assert err is None, (err, payload)
        event(f"write: evicted={result.evicted > 0}")
        assert out == {
            "operation": "write",
            "key": self.key,
            "success": True,
            "count": result.accepted,
            "total_count": len(self.model.messages),
            "token_count": self.model.token_count,
            "evicted": result.evicted,
            "skipped": 0,
            "duplicates": result.duplicates,
        }

    @rule(payload=s.payloads())
    def append(self, payload: Any) -> None:
        self._append(payload)

    @rule(data=st.data())
    def append_with_ids(self, data: st.DataObject) -> None:
        """Explicit ids, often one already stored or repeated within the batch: counted as duplicates."""
        stored = [m.id for m in self.model.messages if m.id is not None]
        ids = st.one_of(s.message_ids(), st.sampled_from(stored)) if stored else s.message_ids()
        batch = data.draw(st.lists(st.builds(lambda m, i: {**m, "id": i}, s.messages(), ids), min_size=1, max_size=4))
        self._append(batch)

    @rule(payload=st.lists(s.messages(), min_size=3, max_size=8))
    def append_many(self, payload: list[dict[str, Any]]) -> None:
        """Batches big enough to evict stored messages (and the oldest new ones)."""
        self._append(payload)

    @rule(
        content=s.repeated_words(30, MAX_TOKENS),
        role=st.sampled_from(s.ROLES),
        before=st.lists(s.messages(), max_size=2),
    )
    def append_large(self, content: str, role: str, before: list[dict[str, Any]]) -> None:
        """A message of up to the whole token limit: token-driven eviction (or LIMIT_EXCEEDED when it
        does not fit beside the system messages, or is alone above the limit)."""
        self._append([*before, {"role": role, "content": content}])

    @rule(payload=st.one_of(s.payloads(max_batch=9), st.lists(s.messages(), min_size=7, max_size=9)))
    def write(self, payload: Any) -> None:
        self._write(payload)

    @rule(data=st.data(), size=st.sampled_from([1, 2, 3, MAX_MESSAGES, MAX_MESSAGES + 1]))
    def write_system_only(self, data: st.DataObject, size: int) -> None:
        """System messages only: up to a full memory (or one too many: LIMIT_EXCEEDED, nothing evictable)."""
        self._write(data.draw(st.lists(s.system_messages(max_words=3), min_size=size, max_size=size)))

    # ------------------------------------------------------------------ reads
    def expected_read(self, options: dict[str, Any]) -> tuple[list[Msg], dict[str, Any]]:
        """The messages a read must return, and the rest of its output map."""
        stored, total = self.model.messages, len(self.model.messages)
        extra: dict[str, Any] = {}
        if "max_tokens" in options:  # the newest messages that fit, stopping at the first that does not
            budget, used, start = options["max_tokens"], 0, total
            while start > 0 and used + stored[start - 1].tokens <= budget:
                start -= 1
                used += stored[start].tokens
            want = stored[start:]
            extra = {"token_count": used, "max_tokens": budget}
        elif "last" in options:
            want = stored[total - min(options["last"], total) :]
            start = total - len(want)
        else:
            start, limit = options.get("offset", 0), options.get("limit")
            want = stored[start:] if limit is None else stored[start : start + limit]
        has_more = start + len(want) < total if "offset" in options or not options else start > 0
        out = {
            "operation": "read",
            "key": self.key,
            "count": len(want),
            "total_count": total,
            "has_more": has_more,
            "offset": start,
            **extra,
        }
        return want, out

    @rule(
        options=st.one_of(
            st.fixed_dictionaries({"limit": st.none() | st.integers(0, 8), "offset": st.integers(0, 8)}),
            st.fixed_dictionaries({"last": st.integers(0, 8)}),
            st.fixed_dictionaries({"max_tokens": st.integers(0, 150)}),
        )
    )
    def read(self, options: dict[str, Any]) -> None:
        """A window (limit/offset), the newest ``last`` messages, or the newest within a token budget."""
        want, expected = self.expected_read(options)
        out = cast(dict[str, Any], self.memory.read(**options))  # a dict at run time: pop() a required key
        _match(want, out.pop("messages"), f"read {options}")
        assert out == expected, options

    # ------------------------------------------------------------------ flush, clear, restore, delete
    @rule(
        force=st.booleans(),
        dry_run=st.booleans(),
        threshold=st.sampled_from([None, None, 0.0, 0.5, 1.0]),
        strategy=st.sampled_from([None, "simple_fifo"]),
    )
    def flush(self, force: bool, dry_run: bool, threshold: float | None, strategy: str | None) -> None:
        count, tokens, usage = len(self.model.messages), self.model.token_count, self.model.usage()
        would, remove = self.model.fifo_plan(force, threshold)
        out = self.memory.flush(strategy, dry_run=dry_run, force=force, threshold=threshold)
        base = {
            "operation": "flush",
            "key": self.key,
            "success": True,
            "summary_generated": False,
            "dry_run": dry_run,
            "actual_strategy": "simple_fifo",
            "threshold": THRESHOLD if threshold is None else threshold,
            "usage": round(usage, 4),
        }
        event(f"flush: dry_run={dry_run} removes={bool(remove)}")
        if dry_run or not remove:
            assert out == base | {
                "flushed_count": 0,
                "message_count": count,
                "token_count": tokens,
                "would_flush": would and bool(remove),
                "would_remove": len(remove),
                "would_remain": count - len(remove) if dry_run else count,
            }
            return
        self.model.apply_flush(remove)
        assert out == base | {
            "flushed_count": len(remove),
            "message_count": len(self.model.messages),
            "token_count": self.model.token_count,
            "would_flush": True,
        }

    @rule(backup=st.booleans())
    def clear(self, backup: bool) -> None:
        count = len(self.model.messages)
        out = self.memory.clear(confirm=True, backup=backup)
        created = backup and count > 0
        backup_key = out.get("backup_key")
        if created:
            assert isinstance(backup_key, str) and backup_key.startswith(f"{self.base}:backup:"), backup_key
            assert backup_key not in self.model.backups
        assert out == {
            "operation": "clear",
            "key": self.key,
            "success": True,
            "messages_cleared": count,
            "backup_created": created,
            "backup_key": backup_key if created else None,
        }
        self.model.clear(backup_key if created else None)

    @rule(confirm=st.sampled_from([False, None, "yes", 1]), backup=st.booleans())
    def clear_without_confirm(self, confirm: Any, backup: bool) -> None:
        before = self.raw_state()
        with pytest.raises(ConfirmRequiredError):
            self.memory.clear(confirm=confirm, backup=backup)
        self.unchanged(before)

    @precondition(lambda self: bool(self.model.backups))
    @rule(data=st.data())
    def restore(self, data: st.DataObject) -> None:
        backup_key = data.draw(st.sampled_from(sorted(self.model.backups)))
        saved = [dataclasses.replace(m, extra=dict(m.extra)) for m in self.model.backups[backup_key]]
        evicted_before = self.model.evicted_count
        result = self.model.store("replace", saved)
        event("restore")
        assert result.evicted == 0 and result.duplicates == 0  # a backup always fits the limits it was made under
        assert self.model.evicted_count == evicted_before
        out = self.memory.restore(backup_key)
        assert out == {
            "operation": "restore",
            "key": self.key,
            "success": True,
            "restored": len(saved),
            "total_count": len(saved),
            "token_count": self.model.token_count,
            "evicted": 0,
            "backup_key": backup_key,
        }

    @precondition(lambda self: bool(self.dead_backups))
    @rule(data=st.data())
    def restore_missing_backup(self, data: st.DataObject) -> None:
        other = f"compozy:{PROJECT}:memory:other:backup:20250101T000000000Z-abcdef"
        backup_key = data.draw(st.sampled_from([*self.dead_backups, other]))
        before = self.raw_state()
        with pytest.raises(InvalidKeyError):
            self.memory.restore(backup_key)
        self.unchanged(before)

    @rule()
    def delete(self) -> None:
        m = self.model
        deleted = bool(m.messages) or m.meta_exists or bool(m.archive) or bool(m.backups)
        count = len(m.messages)
        out = self.memory.delete()
        self.dead_backups.extend(m.delete())
        assert out == {
            "operation": "delete",
            "key": self.key,
            "success": True,
            "deleted": deleted,
            "messages_deleted": count,
        }

    # ------------------------------------------------------------------ errors: nothing changes
    @rule(payload=s.invalid_payloads(), write=st.booleans())
    def invalid_payload(self, payload: Any, write: bool) -> None:
        before = self.raw_state()
        with pytest.raises(InvalidPayloadError) as info:
            (self.memory.write if write else self.memory.append)(payload)
        assert info.value.code == "INVALID_PAYLOAD"
        self.unchanged(before)

    @rule(
        content=s.oversized_content(MAX_TOKENS),
        role=st.sampled_from(s.ROLES),
        others=st.lists(s.messages(), max_size=2),
        write=st.booleans(),
    )
    def message_over_token_limit(self, content: str, role: str, others: list[Any], write: bool) -> None:
        payload = [*others, {"role": role, "content": content}]
        assert COUNTER.count_message(role, content) > MAX_TOKENS
        before = self.raw_state()
        with pytest.raises(LimitExceededError) as info:
            (self.memory.write if write else self.memory.append)(payload)
        assert info.value.code == "LIMIT_EXCEEDED"
        self.unchanged(before)

    @precondition(lambda self: bool(self.model.messages) and all(m.role == "system" for m in self.model.messages))
    @rule(others=st.lists(s.messages(roles=st.sampled_from(s.NON_SYSTEM_ROLES)), max_size=2))
    def append_system_when_only_system_is_stored(self, others: list[dict[str, Any]]) -> None:
        """Only system messages stored and no room left: a system message does not fit, whatever is evicted
        (the non-system messages of the same batch included)."""
        if len(self.model.messages) >= MAX_MESSAGES:
            content = "stay on topic"
        else:
            content = _tokens_to_exceed(MAX_TOKENS - self.model.token_count)
        event(f"only system stored, full by count: {len(self.model.messages) >= MAX_MESSAGES}")
        before = self.raw_state()
        payload = [*others, {"role": "system", "content": content}]
        with pytest.raises(ModelLimitExceededError):
            self.model.store("append", to_msgs(payload))
        with pytest.raises(LimitExceededError) as info:
            self.memory.append(payload)
        assert info.value.code == "LIMIT_EXCEEDED"
        self.unchanged(before)

    @rule()
    def health(self) -> None:
        out = self.memory.health()
        assert out["healthy"] is True and out["operation"] == "health" and out["key"] == self.key
        assert (out["message_count"], out["token_count"]) == (
            len(self.model.messages),
            self.model.token_count,
        )
        assert out["actual_strategy"] == "simple_fifo"
        assert (out["last_flush"] is not None) == self.model.flushed
        assert out["usage"] == round(self.model.usage(), 4)

    # ------------------------------------------------------------------ the checks after every step
    @invariant()
    def memory_equals_model(self) -> None:
        m = self.model
        out = self.memory.read()
        _match(m.messages, out["messages"], "read()")
        assert (out["count"], out["total_count"], out["has_more"], out["offset"]) == (
            len(m.messages),
            len(m.messages),
            False,
            0,
        )
        archived = self.memory.read(archive=True)
        _match(m.archive, archived["messages"], "archive")
        assert archived["total_count"] == len(m.archive)
        assert sorted(self.memory.backups()) == sorted(m.backups)

        stats = cast(dict[str, Any], self.memory.stats())  # a dict at run time: pop() a required key
        assert (stats.pop("last_flush") is not None) == m.flushed
        count, tokens = len(m.messages), m.token_count
        assert stats == {
            "operation": "stats",
            "key": self.key,
            "message_count": count,
            "token_count": tokens,
            "max_tokens": MAX_TOKENS,
            "max_messages": MAX_MESSAGES,
            "token_utilization": round(tokens / MAX_TOKENS, 4),
            "message_utilization": round(count / MAX_MESSAGES, 4),
            "role_distribution": m.roles(),
            "ttl_seconds": None,
            "flush_count": m.flush_count,
            "evicted_count": m.evicted_count,
            "avg_tokens_per_message": round(tokens / count, 2) if count else 0,
            "actual_strategy": "simple_fifo",
        }

    @invariant()
    def metadata_is_the_truth_and_limits_hold(self) -> None:
        raws, archive, meta, ids, _ = self.raw_state()
        stored = [json.loads(r) for r in raws]
        roles: dict[str, int] = {}
        for message in stored:
            roles[message["role"]] = roles.get(message["role"], 0) + 1
        truth_tokens = sum(message["tokens"] for message in stored)
        for message in stored:
            assert message["tokens"] == COUNTER.count_message(message["role"], message["content"])
        assert bool(meta) == self.model.meta_exists, meta
        if meta or stored:
            assert int(meta["message_count"]) == len(stored)
            assert int(meta["token_count"]) == truth_tokens
        assert {k[5:]: int(v) for k, v in meta.items() if k.startswith("role:") and v != "0"} == roles
        assert all(int(v) >= 0 for k, v in meta.items() if k.startswith("role:"))
        assert ids == {message["id"] for message in stored}
        assert len(ids) == len(stored), "message ids are unique"
        # the limits, always
        assert len(stored) <= MAX_MESSAGES
        assert truth_tokens <= MAX_TOKENS
        # system messages are never evicted nor flushed
        assert all(json.loads(r)["role"] != "system" for r in archive)
        assert len(archive) <= ARCHIVE_MAX
        stored_ids = {message["id"] for message in stored}
        assert all(p.id in stored_ids for p in self.model.pinned if p.id is not None)


# ---------------------------------------------------------------------------------------------------- tests
# A failing run shrinks for up to Hypothesis's 5 minutes before it reports the minimal sequence: let it.
@pytest.mark.timeout(900)
def test_memory_matches_model_on_embedded_backend() -> None:
    run_state_machine_as_test(MemoryMachine, settings=machine_settings(60))


@pytest.mark.redis
@pytest.mark.timeout(900)
def test_memory_matches_model_on_redis(redis_server: Any) -> None:
    class OnRedis(MemoryMachine):
        backend_url = redis_server.url

    run_state_machine_as_test(OnRedis, settings=machine_settings(30))


# ---------------------------------------------------------------------------------------------------- found bugs
def _fresh_memory(backend: Backend) -> Any:
    project = Project(PROJECT)
    project.add_memory(RESOURCE)
    project.use_backend(backend)
    return project.memory("model", key=f"conv:{uuid.uuid4().hex[:8]}:s1")


def test_content_that_is_not_encodable_is_an_invalid_payload_and_changes_nothing(backend: Backend) -> None:
    memory = _fresh_memory(backend)
    memory.append("kept")
    before = memory.read()["messages"]
    with pytest.raises(InvalidPayloadError):
        memory.append([{"role": "user", "content": "fine"}, {"role": "user", "content": "broken \ud800 text"}])
    assert memory.read()["messages"] == before


def test_fifo_alias_reports_the_same_actual_strategy_whether_or_not_it_flushes(backend: Backend) -> None:
    memory = _fresh_memory(backend)
    idle = memory.flush(strategy="fifo")  # empty: nothing to flush
    for i in range(MAX_MESSAGES):
        memory.append(f"message {i}")
    busy = memory.flush(strategy="fifo")
    assert (idle["flushed_count"], busy["flushed_count"]) == (0, MAX_MESSAGES - FIFO_TARGET_MESSAGES)
    assert idle["actual_strategy"] == busy["actual_strategy"]
