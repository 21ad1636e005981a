"""The fluent SDK builds exactly the models YAML builds, prints back as YAML, and runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pandas as pd
import pytest

import compozy_nb
from compozy_nb import ConfigError, MemoryResource, Project, Workflow
from compozy_nb.backends import Backend
from compozy_nb.config._yaml import load_documents, validate_document
from compozy_nb.config.memory import MemoryResource as MemoryModel
from compozy_nb.config.workflow import Workflow as WorkflowModel
from compozy_nb.results import OperationResult
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
    read = cast(OperationResult, mem.read())  # what an output is at run time (its type: ReadOutput)
    html = read._repr_html_()
    assert "&lt;b&gt;hi&lt;/b&gt;" in html and "<b>hi</b>" not in html.replace("<b>read", "")
    frame = mem.to_pandas()
    assert list(frame.columns[:4]) == ["position", "role", "content", "tokens"] and "metadata" in frame.columns
    stats = cast(OperationResult, mem.stats()).to_pandas()
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


# ---------------------------------------------------------------- notebook displays and run_many (issue 15)
ECHO_WORKFLOW = """
name: echo
tasks:
  - id: call
    type: basic
    provider: python
    function: echo
    messages:
      - {role: user, content: "{{.text}}"}
"""


def _echo_project(backend: Backend, echo: Callable[..., Any]) -> Project:
    project = Project("runs")
    project.use_backend(backend)
    project.llm("echo")(echo)
    project.add_yaml(ECHO_WORKFLOW)
    return project


def test_run_many_runs_in_parallel_and_keeps_the_order(backend: Backend) -> None:
    import threading

    barrier = threading.Barrier(3, timeout=60)

    def echo(messages: list[dict[str, str]]) -> str:
        barrier.wait()  # three runs reach this at once only when they run in parallel
        return messages[-1]["content"].upper()

    project = _echo_project(backend, echo)
    frame = project.workflow("echo").run_many([{"text": t} for t in ("a", "b", "c")], progress=False, max_workers=3)
    assert frame["output.content"].tolist() == ["A", "B", "C"]
    assert frame["status"].tolist() == ["completed"] * 3
    assert {"tokens_sent", "latency_ms", "error", "error_code"} <= set(frame.columns)
    assert (frame["tokens_sent"] > 0).all() and (frame["latency_ms"] >= 0).all()


def test_run_many_reports_why_a_row_failed_and_coerces_rows(backend: Backend) -> None:
    import numpy as np

    seen: list[str] = []

    def echo(messages: list[dict[str, str]]) -> str:
        seen.append(messages[-1]["content"])
        return "ok"

    project = _echo_project(backend, echo)
    rows = pd.DataFrame({"text": ["x", None], "n": [np.int64(1), np.int64(2)]})
    frame = project.workflow("echo").run_many(rows, progress=False)
    assert frame["status"].tolist() == ["completed", "failed"]
    assert frame.loc[1, "error_code"] == "TEMPLATE_ERROR"
    assert frame.loc[1, "error"].startswith("task 'call' failed: [TEMPLATE_ERROR]")
    assert seen == ["x"]  # the missing value was left out of the input, so the template named it


def test_run_many_never_overwrites_input_columns_named_like_results(backend: Backend) -> None:
    project = _echo_project(backend, lambda messages: "ok")
    rows = [{"text": "a", "status": "vip", "error": "none", "error_code": 7}]
    frame = project.workflow("echo").run_many(rows, progress=False)
    assert frame.loc[0, "status"] == "vip" and frame.loc[0, "error"] == "none" and frame.loc[0, "error_code"] == 7
    assert frame.loc[0, "run.status"] == "completed" and frame.loc[0, "run.output.content"] == "ok"


def test_run_many_progress_bar_without_warnings(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    project = _echo_project(backend, lambda messages: "ok")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = project.workflow("echo").run_many([{"text": "a"}, {"text": "b"}], progress=True, max_workers=2)
    assert frame["status"].tolist() == ["completed", "completed"]
    assert "2/2" in capsys.readouterr().err


def test_transcript_renders_tool_calls_parts_summaries_and_redactions(backend: Backend) -> None:
    project = Project("views")
    project.use_backend(backend)
    project.add(MemoryResource("m").key("k:{{.u}}").token_based(max_tokens=1000).redact(EMAIL))
    mem = project.memory("m", u="1")
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "ada"}'}}
    mem.append(
        [
            {"role": "user", "content": "mail ada@example.com"},
            {"role": "assistant", "content": "looking", "tool_calls": [call]},
            {"role": "tool", "content": "found", "tool_call_id": "call_1", "name": "lookup"},
            {"role": "system", "content": "earlier: greetings", "summary": True},
        ]
    )
    html = cast(OperationResult, mem.read())._repr_html_()
    assert "mail <span class='cnb-red'>[REDACTED]</span>" in html
    assert "lookup({&quot;q&quot;: &quot;ada&quot;})" in html and "#call_1" in html
    assert "result of #call_1" in html and "summary of earlier messages" in html
    assert "4 of 4 messages" in html and " / 1,000 tokens" in html
    assert html == mem._repr_html_()  # the instance shows the same transcript
    assert str(mem.to_pandas()["ts"].dt.tz) == "UTC"


def test_transcript_renders_content_parts_and_calls_without_text() -> None:
    from compozy_nb.notebook.views import transcript_html

    call = {"id": "c9", "type": "function", "function": {"name": "search", "arguments": "{}"}}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "see [REDACTED]"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "user", "content": "<script>x</script> " + "long " * 200},
    ]
    html = transcript_html(messages, title="t")
    assert "see <span class='cnb-red'>[REDACTED]</span>" in html and "[image_url]" in html
    assert "search({})" in html and "&lt;script&gt;" in html and "<script>" not in html
    assert "long " * 200 in html  # never cut; the bubble wraps


def test_project_and_error_reprs(backend: Backend) -> None:
    project = Project("reprs")
    assert "not connected yet" in repr(project) and "compozy:reprs:memory:*" in repr(project)
    project.use_backend(backend)
    assert backend.display_url in repr(project)
    error = ConfigError("bad thing", field="x")
    assert error._render_traceback_() == ["ConfigError [INVALID_CONFIG]: x: bad thing"]


def test_inspector_lists_sorts_selects_and_pages(backend: Backend) -> None:
    from compozy_nb.notebook.inspector import Inspector

    project = Project("insp")
    project.use_backend(backend)
    project.add(MemoryResource("conv").key("conv:{{.user_id}}:{{.session_id}}").buffer(max_messages=500))
    project.memory("conv", user_id="ann", session_id="s1").append(
        [{"role": "user", "content": f"message {i}", "id": f"m{i}"} for i in range(120)]
    )
    project.memory("conv", user_id="bob", session_id="s2").append({"role": "user", "content": "hi from bob"})
    inspector = Inspector(project, "conv:*", page_size=50)
    assert (
        "2 instances" in inspector.table.value and "<th style='text-align:left'>user_id</th>" in inspector.table.value
    )
    assert inspector.instance.options == ("conv:ann:s1", "conv:bob:s2")
    assert inspector.page_label.value == "page 3/3"
    assert "message 119" in inspector.transcript.value and "message 99" not in inspector.transcript.value
    assert "20 of 120 messages" in inspector.transcript.value  # one page, never the whole list
    inspector.previous_page.click()
    assert inspector.page_label.value == "page 2/3" and "message 99" in inspector.transcript.value
    inspector.sort.value = "message_count"
    inspector.descending.value = True
    assert inspector.instance.options == ("conv:ann:s1", "conv:bob:s2")
    inspector.instance.value = "conv:bob:s2"
    assert "hi from bob" in inspector.transcript.value
    assert "operation log · conv:bob:s2" in inspector.log.value
    project.memory("conv", user_id="cat", session_id="s3").append({"role": "user", "content": "new"})
    inspector.refresh_button.click()
    assert "conv:cat:s3" in inspector.instance.options and inspector.instance.value == "conv:bob:s2"


def test_plot_draws_the_limit_on_one_axis_and_does_not_echo(backend: Backend) -> None:
    import matplotlib

    matplotlib.use("Agg")
    project = Project("plot")
    project.use_backend(backend)
    project.add(MemoryResource("m").key("k").token_based(max_tokens=100))
    mem = project.memory("m")
    mem.append([{"role": "user", "content": "word " * 20}])
    drawn = mem.plot()
    assert len(drawn.figure.axes) == 1  # no twin axis
    assert drawn.ax.get_ylim()[1] >= 100  # the limit is visible whatever the bars
    assert any("max_tokens = 100" in t.get_text() for t in drawn.ax.get_legend().get_texts())
    assert drawn._ipython_display_() is None


def test_plot_without_matplotlib_names_the_extra(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    project = Project("noplot")
    project.use_backend(backend)
    project.add(MemoryResource("m").key("k").buffer())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what Python does when it is not installed
    with pytest.raises(ConfigError, match=r"pip install 'compozy-nb\[notebook\]'"):
        project.memory("m").plot()
