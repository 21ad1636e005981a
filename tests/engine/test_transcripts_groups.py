"""Tool-call groups are never split: reads of the newest messages, eviction and every flush strategy take or remove
a message together with the run of ``tool`` messages after it, on both backends."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
import yaml

from compozy_nb.backends import Backend
from compozy_nb.memory.instance import MemoryInstance
from compozy_nb.memory.transcript import newest_whole_groups
from compozy_nb.project import Project
from compozy_nb.testing import on_transport

pytestmark = pytest.mark.usefixtures("transport")  # every test on both transports (conftest.py)


def make_memory(backend: Backend, key: str = "g:1", **fields: Any) -> MemoryInstance:
    project = Project("groups")
    project.use_backend(backend)
    project.add_yaml(yaml.safe_dump({"resource": "memory", "id": "mem", "type": "buffer", **fields}))
    return on_transport(project.memory("mem", key=key))


def turn(n: int, results: int) -> list[dict[str, Any]]:
    """A question, an assistant message calling ``results`` tools, their results, the answer."""
    calls = [
        {"id": f"c{n}.{i}", "type": "function", "function": {"name": "f", "arguments": json.dumps({"n": n, "i": i})}}
        for i in range(results)
    ]
    return [
        {"role": "user", "content": f"question number {n}", "id": f"u{n}"},
        {"role": "assistant", "content": None, "tool_calls": calls, "id": f"a{n}"},
        *({"role": "tool", "tool_call_id": c["id"], "content": f"result {c['id']} " * 3, "id": c["id"]} for c in calls),
        {"role": "assistant", "content": f"answer {n}", "id": f"z{n}"},
    ]


def transcript(turns: int = 6) -> list[dict[str, Any]]:
    return [m for n in range(turns) for m in turn(n, 1 + n % 3)]


def assert_whole_groups(messages: Sequence[dict[str, Any]], *, at_start: bool = False) -> None:
    """No tool message without the assistant message that called it, right before its run."""
    calls: set[str] = set()
    for index, message in enumerate(messages):
        if message["role"] == "tool":
            if index == 0 and at_start:
                continue
            assert message["tool_call_id"] in calls, [m["id"] for m in messages]
        else:
            calls = {c["id"] for c in message.get("tool_calls") or ()}


def roles(messages: Sequence[dict[str, Any]]) -> list[str]:
    return [str(m["role"]) for m in messages]


@pytest.mark.parametrize("flushing", [None, {"type": "lru"}])
def test_budget_and_last_reads_return_whole_groups(backend: Backend, flushing: dict[str, Any] | None) -> None:
    fields: dict[str, Any] = {"flushing": flushing} if flushing else {}
    mem = make_memory(backend, **fields)
    mem.append(transcript())
    stored = mem.read()["messages"]
    tokens = [m["tokens"] for m in stored]
    for budget in range(0, sum(tokens) + 5, 3):
        out = mem.read(max_tokens=budget)
        start = newest_whole_groups(tokens, roles(stored), budget, None)
        assert [m["id"] for m in out["messages"]] == [m["id"] for m in stored[start:]], budget
        assert out["offset"] == start and out["token_count"] <= budget
        assert_whole_groups(out["messages"])
        if start < len(stored):  # the next older group did not fit
            assert start == 0 or out["token_count"] + tokens[start - 1] > budget or stored[start - 1]["role"] == "tool"
    for last in range(len(stored) + 2):
        out = mem.read(last=last)
        start = newest_whole_groups(tokens, roles(stored), None, last)
        assert [m["id"] for m in out["messages"]] == [m["id"] for m in stored[start:]], last
        assert out["count"] <= last
        assert out["has_more"] == (start > 0)
        assert_whole_groups(out["messages"])


def test_a_group_that_does_not_fit_is_left_out_whole(backend: Backend) -> None:
    mem = make_memory(backend)
    mem.append(turn(0, 3))
    answer, results = mem.read()["messages"][-1], mem.read()["messages"][2:5]
    budget = answer["tokens"] + sum(m["tokens"] for m in results)  # the answer and the 3 results, not the call
    assert roles(mem.read(max_tokens=budget)["messages"]) == ["assistant"]
    assert roles(mem.read(last=4)["messages"]) == ["assistant"]


def test_orphan_leading_tool_run_is_a_group(backend: Backend) -> None:
    """Tool messages whose call another tool removed (here: written so) form a group of their own."""
    mem = make_memory(backend)
    mem.write([{"role": "tool", "tool_call_id": "x", "content": "late"}, *turn(1, 1)])
    everything = mem.read()["messages"]
    assert mem.read(max_tokens=sum(m["tokens"] for m in everything))["count"] == len(everything)
    assert mem.read(last=len(everything))["count"] == len(everything)
    assert roles(mem.read(last=len(everything) - 1)["messages"]) == roles(everything[1:])


@pytest.mark.parametrize("limit", [{"max_messages": 7}, {"max_tokens": 120}])
def test_eviction_removes_whole_groups(backend: Backend, limit: dict[str, Any]) -> None:
    mem = make_memory(backend, **limit)
    mem.append({"role": "system", "content": "You are a bot.", "id": "sys"})
    for n in range(8):
        mem.append(turn(n, 1 + n % 3))
        stored = mem.read()["messages"]
        assert stored[0]["id"] == "sys"
        assert stored[1]["role"] != "tool"
        assert_whole_groups(stored)
        archived = list(reversed(mem.read(archive=True)["messages"]))
        assert_whole_groups(archived)
        ids = [m["id"] for m in stored]
        assert len(ids) == len(set(ids))
    assert mem.stats()["evicted_count"] > 0


def test_eviction_within_one_batch_keeps_groups(backend: Backend) -> None:
    mem = make_memory(backend, max_messages=6)
    out = mem.append(transcript(4))
    stored = mem.read()["messages"]
    assert out["evicted"] > 0 and len(stored) <= 6
    assert stored[0]["role"] != "tool"
    assert_whole_groups(stored)
    assert stored[-1]["id"] == "z3"


@pytest.mark.parametrize("strategy", ["simple_fifo", "lru", "token_aware_lru", "hybrid_summary"])
def test_every_flush_strategy_removes_whole_groups(backend: Backend, strategy: str) -> None:
    flushing: dict[str, Any] = {"type": strategy}
    if strategy == "hybrid_summary":
        flushing.update(summary_tokens=200, summarize_oldest_percent=0.3)
    mem = make_memory(backend, max_messages=40, flushing=flushing)
    mem.append(transcript(8))
    if strategy in ("lru", "token_aware_lru"):
        mem.read(last=5)  # recently used: the newest groups
        mem.read(max_tokens=60)
    out = mem.flush(force=True)
    assert out["flushed_count"] > 0
    stored = mem.read()["messages"]
    kept = [m for m in stored if not m.get("summary")]
    assert kept[0]["role"] != "tool"
    assert_whole_groups(kept)
    assert_whole_groups(list(reversed(mem.read(archive=True)["messages"])))
    if strategy == "hybrid_summary":
        assert stored[0]["summary"] is True and "[called f]" in stored[0]["content"]


def test_flush_takes_tool_results_appended_after_the_plan(backend: Backend) -> None:
    """flush.lua removes the tool run after a planned message, even results appended since the plan."""
    mem = make_memory(backend)
    mem.append(turn(0, 1)[:2])  # question, tool call
    raws = backend.client.lrange(mem.layout.base, 0, -1)
    mem.append({"role": "tool", "tool_call_id": "c0.0", "content": "late result"})
    mem.append({"role": "user", "content": "next"})
    args = ["op-late-1", 0, 100, "2026-01-01T00:00:00.000Z", "", 0, "", "0", 2, *raws]
    removed, count, _, _ = (int(v) for v in mem._run("flush", args, "flush"))
    assert (removed, count) == (3, 1)
    assert roles(mem.read()["messages"]) == ["user"]
    assert mem.stats()["message_count"] == 1 and mem.stats()["role_distribution"] == {"user": 1}


def test_compozy_written_tool_messages_budget_in_python(backend: Backend) -> None:
    """A list without token counts (written by another tool) is read within a budget in Python: groups too."""
    mem = make_memory(backend)
    for message in turn(0, 2):
        backend.client.rpush(
            mem.layout.base, json.dumps({"role": message["role"], "content": message["content"] or ""})
        )
    everything = mem.read()["messages"]
    out = mem.read(max_tokens=30)
    assert out["messages"] == [] or out["messages"][0]["role"] != "tool"
    assert len(everything) == 5


def test_a_summary_flush_replans_when_tool_results_arrived_after_the_plan(backend: Backend) -> None:
    """A summary covers exactly what it summarised: a tool result appended after the plan makes it re-plan."""
    mem = make_memory(backend)
    mem.append(turn(0, 1)[:2])
    raws = backend.client.lrange(mem.layout.base, 0, -1)
    mem.append({"role": "tool", "tool_call_id": "c0.0", "content": "late result"})
    summary = '{"tokens":3,"id":"s1","role":"system","content":"Summary","summary":true,"summarized_count":2}'
    args = ["op-late-2", 0, 100, "2026-01-01T00:00:00.000Z", summary, 3, "s1", "0", 2, *raws]
    assert [int(v) for v in mem._run("flush", args, "flush")][3] == -1
    assert roles(mem.read()["messages"]) == ["user", "assistant", "tool"]
