"""The fluent SDK builds exactly the models YAML builds, prints back as YAML, and runs."""

from __future__ import annotations

import pandas as pd
import pytest

import compozy_nb
from compozy_nb import ConfigError, MemoryResource, Project, Workflow
from compozy_nb.backends import Backend
from compozy_nb.config._yaml import load_documents, validate_document
from compozy_nb.config.memory import MemoryResource as MemoryModel
from compozy_nb.config.workflow import Workflow as WorkflowModel
from compozy_nb.sdk import EMAIL

SEED_YAML = r"""
resource: memory
id: conversation_memory
description: Conversation history with token management
key: "conv:{{.user_id}}:{{.session_id}}"
type: token_based
max_tokens: 4000
max_messages: 100
persistence:
  type: redis
  ttl: 24h
token_provider:
  provider: openai
  model: gpt-3.5-turbo
privacy_policy:
  redact_patterns:
    - '\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b'
  non_persistable_message_types:
    - system
"""


def seed_builder() -> MemoryResource:
    return (
        MemoryResource("conversation_memory", "Conversation history with token management")
        .key("conv:{{.user_id}}:{{.session_id}}")
        .token_based(max_tokens=4000, max_messages=100)
        .ttl("24h")
        .model("gpt-3.5-turbo")
        .redact(EMAIL)
        .non_persistable("system")
    )


def chatbot_builder() -> Workflow:
    return (
        Workflow("chatbot", version="1.0.0")
        .input(["user_id", "session_id", "user_message"], user_id="string", session_id="string", user_message="string")
        .read_memory("read_history", "conversation_memory", output="conversation_history")
        .basic(
            "generate_response",
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "assistant", "content": "{{.conversation_history}}"},
                {"role": "user", "content": "{{.user_message}}"},
            ],
            reply_template="echo: {{.last_user_message}}",
            output="ai_response",
        )
        .append_memory(
            "save_interaction",
            "conversation_memory",
            payload=[
                {"role": "user", "content": "{{.user_message}}"},
                {"role": "assistant", "content": "{{.ai_response.content}}"},
            ],
        )
        .output(reply="{{.ai_response.content}}")
    )


def test_memory_builder_equals_yaml_model() -> None:
    from_yaml = validate_document(MemoryModel, load_documents(SEED_YAML)[0], what="memory")
    assert seed_builder().build() == from_yaml


def test_builders_round_trip_through_yaml() -> None:
    for builder, model in ((seed_builder(), MemoryModel), (chatbot_builder(), WorkflowModel)):
        text = builder.to_yaml()
        assert validate_document(model, load_documents(text)[0], what="x") == builder.build()
        assert repr(builder) == text


def test_builder_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="at least one limit"):
        MemoryResource("m").token_based().build()
    with pytest.raises(ConfigError, match=r"unsafe|catastrophic|nested"):
        MemoryResource("m").redact("(a+)+").build()


def test_builders_run(backend: Backend) -> None:
    project = Project("sdk")
    project.use_backend(backend)
    assert project.add(seed_builder(), chatbot_builder()) == ["conversation_memory", "chatbot"]
    run = project.workflow("chatbot").run(user_id="u", session_id="s", user_message="hi")
    assert run["status"] == "completed" and run["output"] == {"reply": "echo: hi"}
    assert isinstance(run, compozy_nb.RunResult)
    assert list(run.to_pandas()["task"]) == ["read_history", "generate_response", "save_interaction"]


def test_add_is_all_or_nothing(backend: Backend) -> None:
    project = Project("sdk")
    project.use_backend(backend)
    with pytest.raises(ConfigError):
        project.add(seed_builder(), Workflow("broken").read_memory("r", "ghost_memory"))
    assert project.resources == {} and project.workflows == {}


def test_run_many_dataframe(backend: Backend) -> None:
    project = Project("sdk")
    project.use_backend(backend)
    project.add(seed_builder(), chatbot_builder())
    rows = pd.DataFrame({"user_id": ["a", "b", "c"], "session_id": ["1", "1", "1"], "user_message": ["x", "y", "z"]})
    result = project.workflow("chatbot").run_many(rows, progress=False)
    assert list(result["status"]) == ["completed"] * 3
    assert list(result["output.reply"]) == ["echo: x", "echo: y", "echo: z"]
    bad = project.workflow("chatbot").run_many([{"user_id": "a"}], progress=False)
    assert bad.loc[0, "status"] == "failed" and bad.loc[0, "error_code"] == "INVALID_CONFIG"


def test_results_display(backend: Backend) -> None:
    project = Project("sdk")
    project.use_backend(backend)
    project.add(seed_builder())
    mem = project.memory("conversation_memory", user_id="u", session_id="s")
    mem.append([{"role": "user", "content": "<b>hi</b>", "metadata": {"k": 1}}])
    read = mem.read()
    html = read._repr_html_()
    assert "&lt;b&gt;hi&lt;/b&gt;" in html and "<b>hi</b>" not in html.replace("<b>read", "")
    frame = mem.to_pandas()
    assert list(frame.columns[:4]) == ["position", "role", "content", "tokens"] and "metadata" in frame.columns
    stats = mem.stats().to_pandas()
    assert len(stats) == 1 and stats.loc[0, "message_count"] == 1


def test_plot(backend: Backend) -> None:
    import matplotlib

    matplotlib.use("Agg")
    project = Project("sdk")
    project.use_backend(backend)
    project.add(MemoryResource("m").key("k:{{.u}}").buffer(max_messages=3))
    mem = project.memory("m", u="1")
    for i in range(5):
        mem.append(f"message {i}")
    ax = mem.plot()
    assert "3 live, 2 archived" in ax.get_title()
