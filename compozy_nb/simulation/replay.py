"""Replaying conversations on the engine: one memory instance per conversation, on throwaway keys.

The agent of a replay works like the example chatbot: before each assistant message it reads its memory (the
``read`` options) and is sent what the read returns; the messages since its previous read (its own last reply,
the user's message, tool results) are appended first, in one append. Everything goes through
:class:`~compozy_nb.memory.instance.MemoryInstance`, so limits, eviction, redaction and summaries are the
engine's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from compozy_nb.backends import Backend, connect, reset_embedded
from compozy_nb.config.memory import MemoryResource
from compozy_nb.memory.instance import MemoryInstance, MemoryRuntime
from compozy_nb.privacy import PrivacyPolicy

MESSAGE_FIELDS = ("role", "content", "id", "name", "tool_calls", "tool_call_id")
_SPAN = "\ue000"  # a private-use character: counts the spans the policy replaces


@dataclass(frozen=True)
class Conversation:
    """One conversation's messages, oldest first, with ids derived from the input."""

    conversation_id: str
    messages: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Task:
    """A unit of work for one process: some conversations under one resource."""

    resource: MemoryResource
    conversations: tuple[Conversation, ...]
    read: Mapping[str, int]
    backend_url: str


@dataclass
class Outcome:
    """What a task measured: one row per agent turn and one per conversation."""

    turns: list[dict[str, Any]] = field(default_factory=list)
    conversations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Counters:
    evicted: int = 0
    flushed: int = 0
    summaries: int = 0
    redacted_spans: int = 0


def run_task(task: Task) -> Outcome:
    """Replay the task's conversations on a private namespace of its backend, then delete what it wrote."""
    with _namespace(task.backend_url) as (backend, project):
        runtime = MemoryRuntime(task.resource)
        spans = _SpanCounter(runtime.privacy)

        def replay(number: int) -> Outcome:
            instance = MemoryInstance(runtime, f"sim:{number}", backend, project)
            try:
                return _replay(instance, task.conversations[number], task.read, spans)
            finally:
                _delete(instance)

        parts = [replay(n) for n in range(len(task.conversations))]
        return Outcome(
            [row for part in parts for row in part.turns],
            [row for part in parts for row in part.conversations],
        )


class _namespace:  # noqa: N801 - used like a function: ``with _namespace(url) as (backend, project)``
    """A backend and a fresh project name; an embedded server made for it is dropped at the end."""

    def __init__(self, url: str) -> None:
        self.project = "sim-" + uuid.uuid4().hex[:12]
        self.embedded = url.startswith("embedded://")
        self.url = f"embedded://{self.project}" if self.embedded else url
        self.backend: Backend | None = None

    def __enter__(self) -> tuple[Backend, str]:
        self.backend = connect(self.url)
        return self.backend, self.project

    def __exit__(self, *exc: object) -> None:
        assert self.backend is not None
        if self.embedded:
            reset_embedded(self.project)
        else:
            _delete_namespace(self.backend, self.project)
        self.backend.close()


def _delete(instance: MemoryInstance) -> None:
    client = instance.backend.client
    for key in instance.layout.all_keys:
        client.delete(key)


def _delete_namespace(backend: Backend, project: str) -> None:
    """Whatever is left under the namespace (backups, keys added by later versions)."""
    client = backend.client
    keys = list(client.scan_iter(match=f"compozy:{project}:*", count=1000))
    for key in keys:
        client.delete(key)


class _SpanCounter:
    """How many spans the resource's privacy policy redacts in a message (the same patterns, in order)."""

    def __init__(self, privacy: PrivacyPolicy) -> None:
        self.policy = PrivacyPolicy(privacy.redact_patterns, redaction=_SPAN) if privacy.redact_patterns else None
        self.privacy = privacy

    def __call__(self, messages: Sequence[Mapping[str, Any]]) -> int:
        if self.policy is None:
            return 0
        total = 0
        for message in messages:
            if self.privacy.persistable(str(message.get("role", ""))):
                text = str(message.get("content", ""))
                total += self.policy.redact(text).count(_SPAN) - text.count(_SPAN)
        return total


def _replay(
    instance: MemoryInstance,
    conversation: Conversation,
    read: Mapping[str, int],
    spans: _SpanCounter,
) -> Outcome:
    outcome = Outcome()
    counters = _Counters()
    pending: list[dict[str, Any]] = []
    seen: list[str] = []
    first_user = next((m["id"] for m in conversation.messages if m["role"] == "user"), None)
    agent_turn = 0
    for message in conversation.messages:
        if message["role"] == "assistant":
            _store(instance, pending, counters, spans)
            agent_turn += 1
            context = _read(instance, read)
            outcome.turns.append(
                _turn_row(conversation.conversation_id, agent_turn, context, seen, first_user, counters)
            )
            pending = []
        pending.append(message)
        seen.append(message["id"])
    _store(instance, pending, counters, spans)
    stats = instance.stats()
    outcome.conversations.append(
        {
            "conversation_id": conversation.conversation_id,
            "agent_turns": agent_turn,
            "messages_stored": stats["message_count"],
            "tokens_stored": stats["token_count"],
            "evicted": counters.evicted,
            "flushed": counters.flushed,
            "summaries": counters.summaries,
            "redacted_spans": counters.redacted_spans,
        }
    )
    return outcome


def _read(instance: MemoryInstance, read: Mapping[str, int]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = instance.read(
        limit=read.get("limit"), last=read.get("last"), max_tokens=read.get("max_tokens")
    )["messages"]
    return messages


def _store(instance: MemoryInstance, pending: list[dict[str, Any]], counters: _Counters, spans: _SpanCounter) -> None:
    if not pending:
        return
    out = instance.append(pending)
    counters.evicted += int(out["evicted"])
    counters.redacted_spans += spans(pending)
    summary = out.get("summary_flush")
    if summary:
        counters.flushed += int(summary["flushed_count"])
        counters.summaries += int(bool(summary["summary_generated"]))


def _turn_row(
    conversation_id: str,
    agent_turn: int,
    context: Sequence[Mapping[str, Any]],
    seen: Sequence[str],
    first_user: str | None,
    counters: _Counters,
) -> dict[str, Any]:
    ids = {str(m.get("id")) for m in context}
    recalled = sum(1 for mid in seen if mid in ids)
    return {
        "conversation_id": conversation_id,
        "turn": agent_turn,
        "messages_sent": len(context),
        "tokens_sent": sum(int(m.get("tokens", 0)) for m in context),
        "recall": recalled / len(seen) if seen else 1.0,
        "first_user_kept": first_user is None or first_user in ids,
        "split_tool_groups": split_tool_groups(context),
        "evicted_so_far": counters.evicted,
        "flushed_so_far": counters.flushed,
    }


def split_tool_groups(context: Sequence[Mapping[str, Any]]) -> int:
    """Tool results the agent is sent without the assistant message that made the call."""
    calls = {
        str(call.get("id"))
        for m in context
        if m.get("role") == "assistant" and isinstance(m.get("tool_calls"), list)
        for call in m["tool_calls"]
        if isinstance(call, Mapping)
    }
    return sum(1 for m in context if m.get("role") == "tool" and str(m.get("tool_call_id")) not in calls)


def conversations_from_frame(frame: Any) -> list[Conversation]:
    """Split a DataFrame into conversations, ordered by ``turn`` (or row order), with derived ids.

    A message keeps an ``id`` the frame gives; otherwise its id is ``<conversation number>-<position>``, so a
    replay is the same every time.
    """
    from compozy_nb.simulation.frames import check_frame

    frame = check_frame(frame)
    conversations = []
    for number, (conversation_id, group) in enumerate(frame.groupby("conversation_id", sort=False)):
        messages = tuple(_message(number, position, row) for position, row in enumerate(_records(group)))
        conversations.append(Conversation(str(conversation_id), messages))
    return conversations


def _records(group: Any) -> Iterator[dict[str, Any]]:
    if "turn" in group.columns:
        group = group.sort_values("turn", kind="stable")
    columns = [c for c in MESSAGE_FIELDS if c in group.columns]
    yield from group[columns].to_dict(orient="records")


def _message(number: int, position: int, row: Mapping[str, Any]) -> dict[str, Any]:
    message = {k: v for k, v in row.items() if _present(v)}
    message["id"] = str(message.get("id") or f"{number}-{position}")
    return message


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float):
        return value == value  # NaN is pandas' missing value
    return True
