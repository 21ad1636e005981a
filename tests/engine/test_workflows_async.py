"""Workflow runs on the event loop: ``await project.arun(...)``, ``await handle.arun_many(...)``, ``async def``
LLMs and tools. (Every test of test_workflows, test_transcripts_workflows and test_providers_edges also runs
through ``arun`` via the ``transport`` fixture; these are the async-only properties.)"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Any, cast

import pytest

from compozy_nb import Project
from compozy_nb.backends import Backend
from compozy_nb.errors import ConfigError

MEMORY = """
resource: memory
id: chat
type: buffer
key: "chat:{{.user}}"
"""

WORKFLOW = """
name: turn
tasks:
  - id: reply
    type: basic
    provider: python
    function: model
    memory:
      - {id: chat, key: "chat:{{.user}}"}
    messages:
      - {role: user, content: "{{.text}}"}
"""


@pytest.fixture
def project(backend: Backend) -> Project:
    project = Project("aio")
    project.use_backend(backend)
    project.add_yaml(MEMORY)
    project.add_yaml(WORKFLOW)
    return project


def stored(project: Project, user: str) -> list[str]:
    return [m["content"] for m in project.memory("chat", user=user).read()["messages"]]


class InFlight:
    """Counts how many calls of an async function are running at once, and on which threads."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.threads: set[int] = set()

    async def model(self, messages: list[dict[str, Any]]) -> str:
        self.threads.add(threading.get_ident())
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.02)
        self.now -= 1
        content: str = messages[-1]["content"]
        return "echo: " + content


def test_arun_many_interleaves_async_llm_calls_on_the_loop_thread(project: Project) -> None:
    flight = InFlight()
    project.llm("model")(flight.model)
    rows = [{"user": f"u{i % 5}", "text": f"message {i}"} for i in range(20)]

    async def main() -> Any:
        return await project.workflow("turn").arun_many(rows, progress=False, concurrency=4)

    frame = asyncio.run(main())

    assert list(frame["status"]) == ["completed"] * 20
    assert list(frame["output"] if "output" in frame else frame["output.content"]) == [
        f"echo: message {i}" for i in range(20)
    ]
    assert flight.most == 4  # exactly the concurrency asked for, all on one thread: the loop's
    assert flight.threads == {threading.get_ident()}
    for user in range(5):  # every turn stored, none lost (rows of one user share a memory)
        texts = stored(project, f"u{user}")
        assert sorted(texts) == sorted(
            [f"message {i}" for i in range(user, 20, 5)] + [f"echo: message {i}" for i in range(user, 20, 5)]
        )


def test_arun_gives_the_same_run_json_and_memory_as_run(backend: Backend) -> None:
    runs = {}
    for kind in ("sync", "async"):
        project = Project("same")
        project.use_backend(backend)
        project.add_yaml(MEMORY)
        project.add_yaml(WORKFLOW)
        project.llm("model")(lambda messages: f"{len(messages)} messages")
        for turn in range(3):
            data = {"user": kind, "text": f"turn {turn}"}
            run = project.run("turn", data) if kind == "sync" else asyncio.run(project.arun("turn", data))
        runs[kind] = (run, stored(project, kind))
    (sync_run, sync_memory), (async_run, async_memory) = runs["sync"], runs["async"]
    assert sync_memory == async_memory == ["turn 0", "1 messages", "turn 1", "3 messages", "turn 2", "5 messages"]
    for run in (sync_run, async_run):
        run.pop("exec_id")
        for task in run["tasks"].values():
            task.pop("duration_ms")
    assert json.loads(json.dumps(sync_run)) == json.loads(json.dumps(async_run))


def test_async_llms_and_tools_run_on_both_transports(project: Project) -> None:
    project.add_yaml(WORKFLOW.replace("name: turn", "name: tools").replace("function: model", "function: caller"))
    calls: list[str] = []

    async def caller(messages: list[dict[str, Any]]) -> Any:
        await asyncio.sleep(0)
        if messages[-1]["role"] == "tool":
            return "it is " + messages[-1]["content"]
        call = {"id": "c1", "type": "function", "function": {"name": "clock", "arguments": '{"zone": "UTC"}'}}
        return {"content": None, "tool_calls": [call]}

    async def clock(zone: str) -> str:
        await asyncio.sleep(0)
        calls.append(zone)
        return f"noon {zone}"

    project.llm("caller")(caller)
    project.tool("clock")(clock)
    sync_run = project.run("tools", {"user": "s", "text": "time?"})
    async_run = asyncio.run(project.arun("tools", {"user": "a", "text": "time?"}))
    for run in (sync_run, async_run):
        assert run["status"] == "completed", run.get("error")
        assert run["output"]["content"] == "it is noon UTC"
    assert calls == ["UTC", "UTC"]
    assert stored(project, "s") == stored(project, "a") == ["time?", None, "noon UTC", "it is noon UTC"]


def test_a_plain_tool_in_an_async_run_runs_off_the_loop(project: Project) -> None:
    project.add_yaml(WORKFLOW.replace("name: turn", "name: tools").replace("function: model", "function: caller"))
    where: list[int] = []

    def caller(messages: list[dict[str, Any]]) -> Any:
        if messages[-1]["role"] == "tool":
            return "done"
        call = {"id": "c", "type": "function", "function": {"name": "t", "arguments": "{}"}}
        return {"content": None, "tool_calls": [call]}

    project.llm("caller")(caller)
    project.tool("t")(lambda: cast(object, where.append(threading.get_ident())) or "ok")  # cast: append returns None

    async def main() -> dict[str, Any]:
        return await project.arun("tools", {"user": "x", "text": "go"})

    assert asyncio.run(main())["status"] == "completed"
    assert where and where[0] != threading.get_ident()  # a plain (maybe blocking) tool never runs on the loop


def test_an_async_llm_past_its_timeout_is_cancelled(project: Project) -> None:
    project.add_yaml(WORKFLOW.replace("name: turn", "name: slow").replace("function: model", "function: slow"))
    project.add_yaml(
        WORKFLOW.replace("name: turn", "name: slow2").replace("function: model", "function: slow\n    timeout: 0.1")
    )
    finished: list[bool] = []

    async def slow(messages: list[dict[str, Any]]) -> str:
        await asyncio.sleep(5)
        finished.append(True)
        return "late"

    project.llm("slow")(slow)
    run = asyncio.run(project.arun("slow2", {"user": "t", "text": "hi"}))
    assert run["status"] == "failed"
    assert run["error"]["code"] == "PROVIDER_TIMEOUT" and "(cancelled)" in run["error"]["message"]
    assert finished == [] and stored(project, "t") == []


def test_arun_many_checks_its_concurrency(project: Project) -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="concurrency must be at least 1") as info:
            asyncio.run(project.workflow("turn").arun_many([{"user": "u", "text": "x"}], concurrency=bad))  # type: ignore[arg-type]
        assert info.value.context["field"] == "concurrency"
    assert stored(project, "u") == []


def test_blocking_plain_tools_do_not_hold_up_other_runs(project: Project) -> None:
    """40 runs whose plain tool blocks fill the loop's default thread pool (min(32, CPUs + 4) threads); a run
    without tools still completes while they wait, because runs advance between steps in a pool of their own."""
    project.add_yaml(WORKFLOW.replace("name: turn", "name: tools").replace("function: model", "function: caller"))
    gate = threading.Event()
    blocked: list[int] = []

    def caller(messages: list[dict[str, Any]]) -> Any:
        if messages[-1]["role"] == "tool":
            return "done"
        if messages[-1]["content"] == "no tools":
            return "quick"
        call = {"id": "c", "type": "function", "function": {"name": "wait", "arguments": "{}"}}
        return {"content": None, "tool_calls": [call]}

    def wait() -> str:
        blocked.append(1)
        gate.wait(120)
        return "ok"

    project.llm("caller")(caller)
    project.tool("wait")(wait)

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        slow = [asyncio.ensure_future(project.arun("tools", {"user": f"b{i}", "text": "go"})) for i in range(40)]
        pool_size = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor
        while len(blocked) < pool_size and not any(task.done() for task in slow):  # the default pool is full
            await asyncio.sleep(0.01)
        try:  # a guard against a hang, not a time limit
            quick = await asyncio.wait_for(project.arun("tools", {"user": "q", "text": "no tools"}), timeout=60)
        finally:
            gate.set()
        return quick, list(await asyncio.gather(*slow))

    quick, slow_runs = asyncio.run(main())
    assert quick["status"] == "completed" and quick["output"]["content"] == "quick"
    assert [run["status"] for run in slow_runs] == ["completed"] * 40
