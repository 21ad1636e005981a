"""Tool-calling agents in workflows: tool-call groups reach the model intact, the python provider may call
tools, the runner runs registered tools and stores the whole turn, the openai provider sends tools."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from compozy_nb.backends import Backend
from compozy_nb.project import Project
from compozy_nb.testing import on_transport

if TYPE_CHECKING:  # tests/ is on sys.path when pytest runs; mypy sees the module as tests.fake_openai
    from tests.fake_openai import FakeOpenAI, Reply
else:
    from fake_openai import FakeOpenAI, Reply

pytestmark = pytest.mark.usefixtures("transport")  # every test on both transports (conftest.py)

MEMORY = """
resource: memory
id: agent_memory
type: buffer
key: "agent:{{.user}}"
max_tokens: 4000
"""

WORKFLOW = """
name: agent
tasks:
  - id: turn
    type: basic
    provider: python
    function: model
    memory:
      - {id: agent_memory, key: "agent:{{.user}}", max_context_tokens: 60}
    messages:
      - {role: system, content: "You are a weather bot."}
      - {role: user, content: "{{.text}}"}
"""


@pytest.fixture
def project(backend: Backend) -> Project:
    project = Project("agents")
    project.use_backend(backend)
    project.add_yaml(MEMORY)
    project.add_yaml(WORKFLOW)
    return on_transport(project)


def stored(project: Project) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in m.items() if k not in ("tokens", "id", "ts")}
        for m in project.memory("agent_memory", key="agent:u1").read()["messages"]
    ]


def weather_model(prompts: list[list[dict[str, Any]]]) -> Any:
    """A model that calls get_weather for the city in the last user message, then answers from the result."""

    def model(messages: list[dict[str, Any]]) -> dict[str, Any]:
        prompts.append([dict(m) for m in messages])
        last = messages[-1]
        if last["role"] == "tool" and last["content"].startswith("error"):
            return {"content": "The weather service failed."}
        if last["role"] == "tool":
            return {"content": f"It is {json.loads(last['content'])['celsius']}C."}
        city = last["content"].split()[-1]
        call = {
            "id": f"call_{city}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }
        return {"content": None, "tool_calls": [call]}

    return model


def test_a_tool_using_turn_is_stored_whole_and_sent_back_intact(project: Project) -> None:
    prompts: list[list[dict[str, Any]]] = []
    project.llm("model")(weather_model(prompts))
    project.tool("get_weather")(lambda city: {"city": city, "celsius": len(city)})

    run = project.run("agent", {"user": "u1", "text": "weather in Paris"})
    assert run["status"] == "completed", run.get("error")
    assert run["output"]["content"] == "It is 5C."
    call = {
        "id": "call_Paris",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    assert stored(project) == [
        {"role": "user", "content": "weather in Paris"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_Paris", "content": '{"city": "Paris", "celsius": 5}'},
        {"role": "assistant", "content": "It is 5C."},
    ]
    assert run["output"]["turn"] == stored(project)[1:3]

    prompts.clear()
    project.run("agent", {"user": "u1", "text": "weather in Rome"})
    first = prompts[0]
    # the history within 60 tokens: whole groups only, so the tool result never comes without its call
    history = first[1:-1]
    roles = [m["role"] for m in history]
    assert roles and roles[0] != "tool"
    for index, message in enumerate(history):
        if message["role"] == "tool":
            assert any(c["id"] == message["tool_call_id"] for m in history[:index] for c in m.get("tool_calls", []))
    assert all(set(m) <= {"role", "content", "tool_calls", "tool_call_id"} for m in history)


def test_an_unregistered_tool_ends_the_turn_and_is_not_stored(project: Project) -> None:
    project.llm("model")(weather_model([]))
    run = project.run("agent", {"user": "u1", "text": "weather in Oslo"})
    assert run["status"] == "completed", run.get("error")
    assert run["output"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert run["output"]["finish_reason"] == "tool_calls"
    assert stored(project) == []  # an unanswered call would make the next prompt invalid


def test_a_failing_tool_answers_with_its_error(project: Project) -> None:
    project.llm("model")(weather_model([]))

    @project.tool("get_weather")
    def broken(city: str) -> Any:
        raise RuntimeError("service down")

    run = project.run("agent", {"user": "u1", "text": "weather in Lima"})
    assert run["status"] == "completed", run.get("error")
    assert stored(project)[2] == {
        "role": "tool",
        "tool_call_id": "call_Lima",
        "content": "error: RuntimeError: service down",
    }
    assert stored(project)[3] == {"role": "assistant", "content": "The weather service failed."}


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def test_openai_provider_sends_tools_and_reads_tool_calls(project: Project, fake_openai: FakeOpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    project.add_yaml(
        json.dumps(
            {
                "name": "oa",
                "tasks": [
                    {
                        "id": "t",
                        "type": "basic",
                        "provider": "openai",
                        "model": "gpt-x",
                        "base_url": fake_openai.base_url,
                        "tools": tools,
                        "tool_choice": "auto",
                        "memory": [{"id": "agent_memory", "key": "agent:u1"}],
                        "messages": [{"role": "user", "content": "weather in Nice"}],
                    }
                ],
            }
        )
    )
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Nice"}'}}
    fake_openai.queue(
        Reply(
            body={
                "choices": [
                    {
                        "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                        "finish_reason": "tool_calls",
                    }
                ],
                "model": "gpt-x",
            }
        ),
        Reply(
            body={
                "choices": [{"message": {"role": "assistant", "content": "Sunny."}, "finish_reason": "stop"}],
                "model": "gpt-x",
            }
        ),
    )
    project.tool("get_weather")(lambda city: "sunny in " + city)
    run = project.run("oa", {})
    assert run["status"] == "completed", run.get("error")
    first, second = (r.body if isinstance(r.body, dict) else json.loads(r.body) for r in fake_openai.requests)
    assert first["tools"] == tools and first["tool_choice"] == "auto"
    assert second["messages"][-2:] == [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny in Nice"},
    ]
    assert [m["role"] for m in stored(project)] == ["user", "assistant", "tool", "assistant"]
