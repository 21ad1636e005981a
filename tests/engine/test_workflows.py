"""Workflows: the seed's chatbot example, templating inside tasks, the LLM providers (scripted, python and
openai against a real HTTP server on loopback), Compozy's agent memory on basic tasks, and hybrid_summary
with a Python summarizer. Everything that touches memory runs on a real redis-server and on the embedded
backend.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from compozy_nb import Project
from compozy_nb.backends import Backend
from compozy_nb.config.project import ProjectSettings
from compozy_nb.errors import CompozyNbError, ConfigError
from compozy_nb.memory.keys import KeyLayout
from compozy_nb.testing import on_transport

if TYPE_CHECKING:  # tests/ is on sys.path when pytest runs; mypy sees the module as tests.fake_openai
    from tests.fake_openai import FakeOpenAI, Reply, completion
else:
    from fake_openai import FakeOpenAI, Reply, completion

pytestmark = pytest.mark.usefixtures("transport")  # every test on both transports (conftest.py)

REPO_ROOT = Path(__file__).resolve().parents[2]
WF = "chatbot-workflow"
TURNS = ("Hello, I am Bob.", "I like green tea.", "What do I like?")

BUFFER = """
resource: memory
id: notes
type: buffer
"""

SECOND_BUFFER = """
resource: memory
id: facts
type: buffer
"""


@pytest.fixture
def example(backend: Backend) -> Project:
    """The repo-root example project (compozy.yaml + memory/ + workflows/) on the test backend."""
    project = Project.load(REPO_ROOT)
    project.use_backend(backend)
    return on_transport(project)


@pytest.fixture
def project(backend: Backend) -> Project:
    """An empty inline project with two buffer memories, on the test backend."""
    project = Project("wf")
    project.add_yaml(BUFFER)
    project.add_yaml(SECOND_BUFFER)
    project.use_backend(backend)
    return on_transport(project)


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A real OpenAI-compatible HTTP server on a free loopback port."""
    with FakeOpenAI() as server:
        yield server


def chat(project: Project, user_message: str, user_id: str = "u1", session_id: str = "s1") -> dict[str, Any]:
    return project.workflow(WF).run(user_id=user_id, session_id=session_id, user_message=user_message)


def stored(project: Project, key: str, ref: str = "conversation_memory") -> list[dict[str, Any]]:
    return list(project.memory(ref, key=key).read()["messages"])


def basic_task(**fields: Any) -> dict[str, Any]:
    """An execute body for a basic task (scripted unless told otherwise)."""
    body: dict[str, Any] = {
        "type": "basic",
        "provider": "scripted",
        "replies": ["ok"],
        "messages": [{"role": "user", "content": "hi"}],
    }
    body.update(fields)
    return body


# ------------------------------------------------------------------------------------------ chatbot example
def test_chatbot_three_turns_keep_the_conversation(example: Project) -> None:
    runs = [chat(example, text) for text in TURNS]

    assert [r["status"] for r in runs] == ["completed"] * 3
    messages = stored(example, "conv:u1:s1")
    assert len(messages) == 6
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    expected = []
    for turn, text in enumerate(TURNS, start=1):
        expected += [text, f"You said: {text} (turn {turn})"]
    assert [m["content"] for m in messages] == expected
    for message in messages:
        # the payload's extra field survives storage, rendered from {{.now}} as ISO-8601 UTC
        assert datetime.fromisoformat(message["timestamp"].replace("Z", "+00:00")).utcoffset() is not None

    third_prompt = runs[2]["tasks"]["generate_response"]["output"]["prompt"]
    assert third_prompt == [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "assistant",
            "content": "\n".join(f"{'user' if i % 2 == 0 else 'assistant'}: {c}" for i, c in enumerate(expected[:4])),
        },
        {"role": "user", "content": TURNS[2]},
    ]


def test_chatbot_first_turn_drops_the_empty_history_message(example: Project) -> None:
    run = chat(example, "first words")

    prompt = run["tasks"]["generate_response"]["output"]["prompt"]
    assert prompt == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "first words"},
    ]


def test_run_json_shape_and_rendered_output(example: Project) -> None:
    chat(example, "one")
    run = chat(example, "two")

    assert set(run) == {"status", "workflow_id", "exec_id", "output", "tasks"}
    assert run["status"] == "completed"
    assert run["workflow_id"] == WF
    assert isinstance(run["exec_id"], str) and run["exec_id"]
    assert list(run["tasks"]) == ["read_history", "generate_response", "save_interaction"]
    for result in run["tasks"].values():
        assert set(result) == {"status", "output", "error", "duration_ms"}
        assert result["status"] == "completed"
        assert result["error"] is None
        assert isinstance(result["duration_ms"], int | float) and result["duration_ms"] >= 0
    assert run["output"] == {"reply": "You said: two (turn 2)", "history_count": 2}
    assert type(run["output"]["history_count"]) is int  # a single-reference template keeps the type
    json.dumps(run)  # the run JSON is JSON

    generate = run["tasks"]["generate_response"]["output"]
    assert set(generate) == {"content", "role", "model", "provider", "usage", "finish_reason", "prompt"}
    assert generate["provider"] == "scripted"
    assert generate["model"] == "gpt-3.5-turbo"
    assert generate["role"] == "assistant"
    assert set(generate["usage"]) == {"prompt_tokens", "completion_tokens"}
    assert run["tasks"]["save_interaction"]["output"]["appended"] == 2


def test_each_run_gets_its_own_exec_id(example: Project) -> None:
    ids = {chat(example, f"m{i}")["exec_id"] for i in range(3)}
    assert len(ids) == 3


def test_workflow_handle_and_project_run_share_memory(example: Project) -> None:
    first = example.workflow(WF).run(user_id="u9", session_id="s9", user_message="via handle")
    second = example.run(WF, {"user_id": "u9", "session_id": "s9", "user_message": "via run"})

    assert first["status"] == second["status"] == "completed"
    assert second["output"]["history_count"] == 2
    assert [m["content"] for m in stored(example, "conv:u9:s9")][::2] == ["via handle", "via run"]


def test_sessions_are_separate_memories(example: Project) -> None:
    chat(example, "alpha", session_id="a")
    run = chat(example, "beta", session_id="b")

    assert run["output"]["history_count"] == 0
    assert len(stored(example, "conv:u1:a")) == len(stored(example, "conv:u1:b")) == 2


def test_unknown_workflow_is_a_clear_error(example: Project) -> None:
    with pytest.raises(ConfigError) as info:
        example.run("no-such-workflow", {})
    assert info.value.code == "WORKFLOW_NOT_FOUND"
    assert WF in str(info.value)  # names the known workflows


# ------------------------------------------------------------------------------------------ input schema
def test_missing_required_input_fails_before_anything_runs(example: Project, backend: Backend) -> None:
    with pytest.raises(ConfigError, match="user_message") as info:
        example.run(WF, {"user_id": "u1", "session_id": "s1"})

    assert info.value.context["field"] == "input.user_message"
    assert backend.client.dbsize() == 0  # nothing was read, written or created


def test_wrong_input_type_is_rejected(example: Project, backend: Backend) -> None:
    with pytest.raises(ConfigError, match=r"user_id.*must be string") as info:
        example.workflow(WF).run(user_id=42, session_id="s1", user_message="hi")

    assert isinstance(info.value, ValueError)
    assert info.value.context["field"] == "input.user_id"
    assert backend.client.dbsize() == 0


def test_integer_input_rejects_booleans_and_closed_schema_rejects_extras(project: Project) -> None:
    project.add_yaml("""
name: typed
input:
  type: object
  properties:
    n: {type: integer}
  required: [n]
  additionalProperties: false
tasks:
  - id: say
    type: basic
    provider: scripted
    reply_template: "n={{.last_user_message}}"
    messages: [{role: user, content: "{{.n}}"}]
""")
    assert project.run("typed", {"n": 3})["output"]["content"] == "n=3"
    with pytest.raises(ConfigError, match="must be integer"):
        project.run("typed", {"n": True})
    with pytest.raises(ConfigError, match="unknown property 'extra'"):
        project.run("typed", {"n": 1, "extra": "x"})


# ------------------------------------------------------------------------------------------ errors in tasks
FAILING = """
name: failing
tasks:
  - id: first
    type: memory
    operation: append
    memory_ref: notes
    key_template: "ok:{{.user_id}}"
    payload: "before the failure"
  - id: broken
    type: memory
    operation: append
    memory_ref: notes
    key_template: "n:{{.no_such_variable}}"
    payload: "never stored"
    on_error: {on_error}
  - id: after
    type: memory
    operation: append
    memory_ref: notes
    key_template: "ok:{{.user_id}}"
    payload: "after the failure"
"""


def test_a_failing_task_stops_the_run(project: Project) -> None:
    project.add_yaml(FAILING.replace("{on_error}", "fail"))

    run = project.run("failing", {"user_id": "u1"})

    assert run["status"] == "failed"
    assert run["output"] is None
    assert run["error"]["code"] == "TEMPLATE_ERROR"
    assert run["error"]["task"] == "broken"
    assert "no_such_variable" in run["error"]["message"]
    assert list(run["tasks"]) == ["first", "broken"]  # 'after' never ran
    assert run["tasks"]["first"]["status"] == "completed"
    broken = run["tasks"]["broken"]
    assert broken["status"] == "failed" and broken["output"] is None
    assert broken["error"]["code"] == "TEMPLATE_ERROR"
    assert [m["content"] for m in stored(project, "ok:u1", "notes")] == ["before the failure"]


def test_on_error_continue_goes_on(project: Project) -> None:
    project.add_yaml(FAILING.replace("{on_error}", "continue"))

    run = project.run("failing", {"user_id": "u1"})

    assert run["status"] == "completed"
    assert "error" not in run
    assert [run["tasks"][t]["status"] for t in ("first", "broken", "after")] == ["completed", "failed", "completed"]
    assert run["tasks"]["broken"]["error"]["code"] == "TEMPLATE_ERROR"
    assert [m["content"] for m in stored(project, "ok:u1", "notes")] == ["before the failure", "after the failure"]
    assert run["output"] == run["tasks"]["after"]["output"]  # no output mapping: the last task's output


def test_key_template_error_names_the_field(project: Project) -> None:
    project.add_yaml(FAILING.replace("{on_error}", "fail"))

    error = project.run("failing", {"user_id": "u1"})["error"]

    assert error["task"] == "broken"
    assert "key_template" in error["message"] or error.get("field") == "key_template"


def test_invalid_key_after_rendering_fails_with_its_code(project: Project) -> None:
    project.add_yaml("""
name: badkey
tasks:
  - id: w
    type: memory
    operation: append
    memory_ref: notes
    key_template: "conv {{.user_id}}"
    payload: "x"
""")
    run = project.run("badkey", {"user_id": "u1"})
    assert run["status"] == "failed"
    assert run["error"]["code"] == "INVALID_KEY"


def test_output_mapping_with_a_missing_variable_fails_the_run(project: Project) -> None:
    project.add_yaml("""
name: badout
tasks:
  - id: r
    type: memory
    operation: read
    memory_ref: notes
    key_template: "k"
output:
  nothing: "{{.tasks.r.output.no_such_field}}"
""")
    run = project.run("badout", {})
    assert run["status"] == "failed"
    assert run["error"]["code"] == "TEMPLATE_ERROR"
    assert run["output"] is None


def test_reference_to_a_later_task_is_rejected_when_added(project: Project) -> None:
    with pytest.raises(ConfigError, match="has not run yet"):
        project.add_yaml("""
name: later
tasks:
  - id: a
    type: memory
    operation: append
    memory_ref: notes
    key_template: "k:{{.tasks.b.output.count}}"
    payload: "x"
  - id: b
    type: memory
    operation: read
    memory_ref: notes
    key_template: "k"
""")
    assert "later" not in project.workflows


def test_unknown_memory_ref_is_rejected_when_added(project: Project) -> None:
    with pytest.raises(ConfigError, match="no_such_memory"):
        project.add_yaml("""
name: unknown-ref
tasks:
  - id: a
    type: memory
    operation: read
    memory_ref: no_such_memory
    key_template: "k"
""")
    assert "unknown-ref" not in project.workflows


# ------------------------------------------------------------------------------------------ templates in tasks
COPY = """
name: copy
tasks:
  - id: read_history
    type: memory
    operation: read
    memory_ref: notes
    key_template: "src:{{.user_id}}"
  - id: copy
    type: memory
    operation: write
    memory_ref: notes
    key_template: "dst:{{.user_id}}"
    payload: "{{.tasks.read_history.output.messages}}"
  - id: ask
    type: basic
    provider: scripted
    replies: ["fine"]
    messages:
      - role: system
        content: "History so far:\\n{{.tasks.read_history.output}}"
      - role: user
        content: "{{.question}}"
"""


def test_single_reference_payload_keeps_the_list(project: Project) -> None:
    project.add_yaml(COPY)
    source = project.memory("notes", key="src:u1")
    source.append([{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "mood": "glad"}])

    run = project.run("copy", {"user_id": "u1", "question": "and now?"})

    assert run["status"] == "completed", run.get("error")
    assert run["tasks"]["copy"]["output"]["count"] == 2
    copied = stored(project, "dst:u1", "notes")
    assert [(m["role"], m["content"]) for m in copied] == [("user", "q1"), ("assistant", "a1")]
    assert copied[1]["mood"] == "glad"


def test_read_output_in_content_renders_as_transcript(project: Project) -> None:
    project.add_yaml(COPY)
    project.memory("notes", key="src:u1").append(
        [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    )

    run = project.run("copy", {"user_id": "u1", "question": "and now?"})

    prompt = run["tasks"]["ask"]["output"]["prompt"]
    assert prompt[0] == {"role": "system", "content": "History so far:\nuser: q1\nassistant: a1"}
    assert prompt[1] == {"role": "user", "content": "and now?"}


def test_message_rendering_empty_is_dropped(project: Project) -> None:
    project.add_yaml("""
name: empty
tasks:
  - id: r
    type: memory
    operation: read
    memory_ref: notes
    key_template: "nothing-here"
    output: history
  - id: ask
    type: basic
    provider: scripted
    replies: ["fine"]
    messages:
      - role: system
        content: "Be brief."
      - role: assistant
        content: "{{.history}}"
      - role: user
        content: "hello"
""")
    run = project.run("empty", {})
    assert run["tasks"]["ask"]["output"]["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]


def test_template_context_variables(project: Project) -> None:
    project.add_yaml("""
name: ctx
tasks:
  - id: r
    type: memory
    operation: read
    memory_ref: notes
    key_template: "ctx:{{.workflow.input.user_id}}"
    output: history
  - id: echo
    type: basic
    provider: scripted
    reply_template: "{{.last_user_message}}"
    messages:
      - role: user
        content: "{{.workflow.id}}|{{.workflow.exec_id}}|{{.input.user_id}}|{{.user_id}}|{{.history.key}}|{{.now}}"
""")
    run = project.run("ctx", {"user_id": "u7"})

    wid, exec_id, via_input, top, key, now = run["output"]["content"].split("|")
    assert (wid, exec_id, via_input, top, key) == ("ctx", run["exec_id"], "u7", "u7", "ctx:u7")
    assert now.endswith("Z")
    assert datetime.fromisoformat(now.replace("Z", "+00:00")).utcoffset() is not None


def test_scripted_replies_are_used_in_order(project: Project) -> None:
    project.add_yaml("""
name: scripted
tasks:
  - id: say
    type: basic
    provider: scripted
    replies: ["one", "two"]
    messages: [{role: user, content: "x"}]
""")
    contents = [project.run("scripted", {})["output"]["content"] for _ in range(3)]
    assert contents == ["one", "two", "one"]


# ------------------------------------------------------------------------------------------ openai provider
def openai_project(base_url: str | None, **task: Any) -> Project:
    """An inline project whose one workflow calls the openai provider."""
    project = Project("oa")
    body = {
        "id": "call",
        "type": "basic",
        "provider": "openai",
        "model": "gpt-test",
        "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "{{.q}}"}],
        **({"base_url": base_url} if base_url else {}),
        **task,
    }
    project.add_yaml(json.dumps({"name": "oa", "tasks": [body]}))
    return project


def test_openai_request_body_headers_and_output(fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LLM_KEY", "sk-test-123")
    fake_openai.queue(
        Reply(
            200,
            completion(
                "Paris.", model="gpt-test-0613", prompt_tokens=123, completion_tokens=45, finish_reason="length"
            ),
        )
    )
    project = openai_project(fake_openai.base_url, api_key_env="FAKE_LLM_KEY", temperature=0.3, max_tokens=64)

    run = project.run("oa", {"q": "Capital of France?"})

    assert run["status"] == "completed", run.get("error")
    assert len(fake_openai.requests) == 1
    request = fake_openai.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-123"
    assert request.headers["content-type"].startswith("application/json")
    sent = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Capital of France?"}]
    assert request.body == {"model": "gpt-test", "messages": sent, "temperature": 0.3, "max_tokens": 64}
    assert run["output"] == {
        "content": "Paris.",
        "role": "assistant",
        "model": "gpt-test-0613",
        "provider": "openai",
        "usage": {"prompt_tokens": 123, "completion_tokens": 45},
        "finish_reason": "length",
        "prompt": sent,
    }


def test_openai_leaves_out_unset_options(fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    project = openai_project(fake_openai.base_url, api_key_env="NO_SUCH_KEY_VAR")

    run = project.run("oa", {"q": "hi"})

    assert run["status"] == "completed", run.get("error")
    body = fake_openai.requests[0].body
    assert "max_tokens" not in body and "temperature" not in body
    # a custom base_url (Ollama, vLLM, llama.cpp) may go without a key: no Authorization header
    assert "authorization" not in fake_openai.requests[0].headers


def test_openai_retries_429_then_succeeds(fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LLM_KEY", "k")
    fake_openai.queue(
        Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}),
        Reply(200, completion("after the retry")),
    )
    project = openai_project(fake_openai.base_url, api_key_env="FAKE_LLM_KEY")

    run = project.run("oa", {"q": "hi"})

    assert run["status"] == "completed", run.get("error")
    assert run["output"]["content"] == "after the retry"
    assert len(fake_openai.requests) == 2
    assert fake_openai.requests[0].body == fake_openai.requests[1].body


def test_openai_retries_500_then_succeeds(fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LLM_KEY", "k")
    fake_openai.queue(Reply(500, {"error": {"message": "boom"}}), Reply(200, completion("recovered")))
    project = openai_project(fake_openai.base_url, api_key_env="FAKE_LLM_KEY")

    run = project.run("oa", {"q": "hi"})

    assert run["status"] == "completed", run.get("error")
    assert run["output"]["content"] == "recovered"
    assert len(fake_openai.requests) == 2


def test_openai_gives_up_after_the_retries(fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LLM_KEY", "k")
    fake_openai.queue(*[Reply(503, {"error": {"message": "overloaded"}}, {"Retry-After": "0"})] * 10)
    project = openai_project(fake_openai.base_url, api_key_env="FAKE_LLM_KEY")

    run = project.run("oa", {"q": "hi"})

    assert run["status"] == "failed"
    assert run["error"]["code"] == "PROVIDER_ERROR"
    assert "503" in run["error"]["message"]
    assert 1 < len(fake_openai.requests) < 10  # retried, but not forever


def test_openai_401_is_a_clear_error_and_not_retried(fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LLM_KEY", "sk-wrong")
    fake_openai.queue(Reply(401, {"error": {"message": "Incorrect API key provided"}}))
    project = openai_project(fake_openai.base_url, api_key_env="FAKE_LLM_KEY")

    run = project.run("oa", {"q": "hi"})

    assert run["status"] == "failed"
    assert run["error"]["code"] == "PROVIDER_AUTH_ERROR"
    assert run["error"]["task"] == "call"
    assert "FAKE_LLM_KEY" in run["error"]["message"]
    assert "sk-wrong" not in run["error"]["message"]  # never echo the key
    assert len(fake_openai.requests) == 1


def test_openai_other_4xx_is_not_retried(fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LLM_KEY", "k")
    fake_openai.queue(Reply(400, {"error": {"message": "model 'gpt-test' does not exist"}}))
    project = openai_project(fake_openai.base_url, api_key_env="FAKE_LLM_KEY")

    run = project.run("oa", {"q": "hi"})

    assert run["status"] == "failed"
    assert run["error"]["code"] == "PROVIDER_ERROR"
    assert "does not exist" in run["error"]["message"]
    assert len(fake_openai.requests) == 1


def test_openai_timeout(fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LLM_KEY", "k")
    fake_openai.queue(Reply(block=True))  # the server never answers this request
    project = openai_project(fake_openai.base_url, api_key_env="FAKE_LLM_KEY", timeout=0.2)

    run = project.run("oa", {"q": "hi"})

    assert run["status"] == "failed"
    assert run["error"]["code"] == "PROVIDER_TIMEOUT"


def test_openai_missing_key_fails_before_any_request(fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    project = openai_project(None)  # default OpenAI base_url

    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        project.execute({**project.workflows["oa"].tasks[0].model_dump(exclude_none=True), "input": {"q": "x"}})
    run = project.run("oa", {"q": "hi"})

    assert run["status"] == "failed"
    assert run["error"]["code"] == "INVALID_CONFIG"  # a configuration error, not a failed HTTP call
    assert "OPENAI_API_KEY" in run["error"]["message"]
    assert fake_openai.requests == []


def test_openai_defaults_from_compozy_yaml(fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJECT_LLM_KEY", "sk-project")
    settings = ProjectSettings(
        name="oa",
        providers={
            "openai": {"base_url": fake_openai.base_url, "api_key_env": "PROJECT_LLM_KEY", "model": "default-model"}
        },
    )
    project = Project(settings=settings)

    result = project.execute(
        {"type": "basic", "provider": "openai", "model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    )

    assert result["status"] == "completed"
    assert fake_openai.requests[0].headers["authorization"] == "Bearer sk-project"
    assert fake_openai.requests[0].body["model"] == "m1"


def test_openai_reply_with_agent_memory(
    fake_openai: FakeOpenAI, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLM_KEY", "k")
    project.memory("notes", key="agent").append({"role": "user", "content": "earlier"})
    fake_openai.queue(Reply(200, completion("remembered")))

    result = project.execute(
        basic_task(
            provider="openai",
            model="gpt-test",
            base_url=fake_openai.base_url,
            api_key_env="FAKE_LLM_KEY",
            replies=None,
            memory=[{"id": "notes", "key": "agent"}],
            messages=[{"role": "user", "content": "now"}],
        )
    )

    assert fake_openai.requests[0].body["messages"] == [
        {"role": "user", "content": "earlier"},
        {"role": "user", "content": "now"},
    ]
    assert result["output"]["content"] == "remembered"
    assert [m["content"] for m in stored(project, "agent", "notes")] == ["earlier", "now", "remembered"]


# ------------------------------------------------------------------------------------------ python provider
def test_python_provider_gets_the_messages_and_returns_text(project: Project) -> None:
    seen: list[list[dict[str, Any]]] = []

    @project.llm("shout")
    def shout(messages: list[dict[str, Any]]) -> str:
        seen.append(messages)
        content: str = messages[-1]["content"]
        return content.upper()

    project.add_yaml("""
name: py
tasks:
  - id: call
    type: basic
    provider: python
    function: shout
    messages:
      - {role: system, content: "sys"}
      - {role: user, content: "{{.text}}"}
""")
    run = project.run("py", {"text": "quiet please"})

    assert run["status"] == "completed", run.get("error")
    assert seen == [[{"role": "system", "content": "sys"}, {"role": "user", "content": "quiet please"}]]
    output = run["output"]
    assert output["content"] == "QUIET PLEASE"
    assert output["provider"] == "python"
    assert output["role"] == "assistant"
    assert output["prompt"] == seen[0]


def test_python_provider_dict_reply(project: Project) -> None:
    @project.llm("rich")
    def rich(messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "content": "hello",
            "model": "my-local-model",
            "finish_reason": "length",
            "usage": {"prompt_tokens": 9, "completion_tokens": 2},
        }

    result = project.execute(basic_task(provider="python", model="rich", replies=None))

    output = result["output"]
    assert output["content"] == "hello"
    assert output["model"] == "my-local-model"
    assert output["finish_reason"] == "length"
    assert output["usage"] == {"prompt_tokens": 9, "completion_tokens": 2}


def test_python_provider_unregistered_name(project: Project) -> None:
    @project.llm("known_one")
    def known(messages: list[dict[str, Any]]) -> str:
        return "x"

    with pytest.raises(ConfigError, match=r"'missing_fn'.*known_one"):
        project.execute(basic_task(provider="python", function="missing_fn", replies=None))


def test_python_provider_exception_becomes_provider_error(project: Project) -> None:
    @project.llm("boom")
    def boom(messages: list[dict[str, Any]]) -> str:
        raise RuntimeError("model crashed")

    with pytest.raises(CompozyNbError, match="model crashed") as info:
        project.execute(basic_task(provider="python", function="boom", replies=None))
    assert info.value.code == "PROVIDER_ERROR"


def test_python_provider_bad_return_type(project: Project) -> None:
    @project.llm("number")
    def number(messages: list[dict[str, Any]]) -> int:
        return 42

    with pytest.raises(CompozyNbError, match="string or a dict") as info:
        project.execute(basic_task(provider="python", function="number", replies=None))
    assert info.value.code == "PROVIDER_ERROR"


# ------------------------------------------------------------------------------------------ agent memory
def seed_notes(project: Project, key: str, contents: list[str], ref: str = "notes") -> list[dict[str, Any]]:
    roles = ["user", "assistant"]
    project.memory(ref, key=key).append([{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)])
    return stored(project, key, ref)


def test_agent_memory_is_injected_after_system_messages_and_written_back(project: Project) -> None:
    seed_notes(project, "agent:u1", ["my name is Ann", "nice to meet you, Ann"])

    result = project.execute(
        basic_task(
            replies=["Your name is Ann."],
            memory=[{"id": "notes", "key": "agent:{{.user_id}}", "mode": "read-write"}],
            messages=[
                {"role": "system", "content": "You are kind."},
                {"role": "user", "content": "{{.question}}"},
            ],
            input={"user_id": "u1", "question": "What is my name?"},
        )
    )

    assert result["output"]["prompt"] == [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "my name is Ann"},
        {"role": "assistant", "content": "nice to meet you, Ann"},
        {"role": "user", "content": "What is my name?"},
    ]
    after = stored(project, "agent:u1", "notes")
    assert [(m["role"], m["content"]) for m in after] == [
        ("user", "my name is Ann"),
        ("assistant", "nice to meet you, Ann"),
        ("user", "What is my name?"),
        ("assistant", "Your name is Ann."),
    ]


def test_agent_memory_default_mode_is_read_write(project: Project) -> None:
    project.execute(
        basic_task(
            replies=["pong"], memory=[{"id": "notes", "key": "plain"}], messages=[{"role": "user", "content": "ping"}]
        )
    )
    assert [m["content"] for m in stored(project, "plain", "notes")] == ["ping", "pong"]


def test_read_only_agent_memory_is_injected_but_never_written(project: Project) -> None:
    before = seed_notes(project, "ro", ["fact one", "fact two"])

    for turn in range(2):
        result = project.execute(
            basic_task(
                replies=[f"reply {turn}"],
                memory=[{"id": "notes", "key": "ro", "mode": "read-only"}],
                messages=[{"role": "user", "content": f"question {turn}"}],
            )
        )
        assert result["output"]["prompt"] == [
            {"role": "user", "content": "fact one"},
            {"role": "assistant", "content": "fact two"},
            {"role": "user", "content": f"question {turn}"},
        ]

    assert stored(project, "ro", "notes") == before


def test_empty_reply_is_not_written_to_memory(project: Project) -> None:
    project.execute(basic_task(replies=["   "], memory=[{"id": "notes", "key": "quiet"}]))
    assert stored(project, "quiet", "notes") == []


def test_max_context_tokens_injects_only_the_newest_that_fit(project: Project) -> None:
    history = seed_notes(project, "budget", [f"message number {i} with a few words" for i in range(6)])
    tokens = [int(m["tokens"]) for m in history]
    budget = tokens[-1] + tokens[-2] + tokens[-3] - 1  # the newest two fit, the third does not

    result = project.execute(
        basic_task(
            memory=[{"id": "notes", "key": "budget", "mode": "read-only", "max_context_tokens": budget}],
            messages=[{"role": "user", "content": "latest"}],
        )
    )

    assert result["output"]["prompt"] == [{"role": m["role"], "content": m["content"]} for m in history[-2:]] + [
        {"role": "user", "content": "latest"}
    ]


def test_max_context_tokens_smaller_than_the_newest_message_injects_nothing(project: Project) -> None:
    history = seed_notes(project, "tiny", ["a rather long message that costs several tokens"])
    budget = int(history[0]["tokens"]) - 1

    result = project.execute(
        basic_task(
            memory=[{"id": "notes", "key": "tiny", "mode": "read-only", "max_context_tokens": budget}],
            messages=[{"role": "user", "content": "latest"}],
        )
    )

    assert result["output"]["prompt"] == [{"role": "user", "content": "latest"}]


def test_two_memories_are_injected_in_listed_order(project: Project) -> None:
    seed_notes(project, "k1", ["from notes"], ref="notes")
    seed_notes(project, "k2", ["from facts"], ref="facts")

    def prompt_for(memory: list[dict[str, Any]]) -> list[str]:
        result = project.execute(
            basic_task(
                memory=memory,
                messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}],
            )
        )
        return [m["content"] for m in result["output"]["prompt"]]

    notes = {"id": "notes", "key": "k1", "mode": "read-only"}
    facts = {"id": "facts", "key": "k2", "mode": "read-only"}
    assert prompt_for([notes, facts]) == ["sys", "from notes", "from facts", "q"]
    assert prompt_for([facts, notes]) == ["sys", "from facts", "from notes", "q"]


def test_agent_memory_writes_the_last_user_message_to_every_read_write_memory(project: Project) -> None:
    project.execute(
        basic_task(
            replies=["answer"],
            memory=[
                {"id": "notes", "key": "rw1"},
                {"id": "facts", "key": "rw2"},
                {"id": "notes", "key": "ro1", "mode": "read-only"},
            ],
            messages=[
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "between"},
                {"role": "user", "content": "last"},
            ],
        )
    )
    assert [m["content"] for m in stored(project, "rw1", "notes")] == ["last", "answer"]
    assert [m["content"] for m in stored(project, "rw2", "facts")] == ["last", "answer"]
    assert stored(project, "ro1", "notes") == []


def test_agent_memory_in_a_workflow_over_turns(project: Project) -> None:
    project.add_yaml("""
name: agent
input:
  type: object
  properties: {user_id: {type: string}, text: {type: string}}
  required: [user_id, text]
tasks:
  - id: reply
    type: basic
    provider: scripted
    reply_template: "echo {{.last_user_message}}"
    memory:
      - id: notes
        key: "agent:{{.user_id}}"
    messages:
      - {role: system, content: "sys"}
      - {role: user, content: "{{.text}}"}
""")
    for text in ("one", "two"):
        run = project.run("agent", {"user_id": "u1", "text": text})
    assert [m["content"] for m in run["output"]["prompt"]] == ["sys", "one", "echo one", "two"]
    assert [m["content"] for m in stored(project, "agent:u1", "notes")] == ["one", "echo one", "two", "echo two"]


def test_agent_memory_scalar_ref_uses_the_resource_key_and_its_privacy(example: Project) -> None:
    result = example.execute(
        basic_task(
            replies=["Noted."],
            memory=["conversation_memory"],
            messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "mail me at ann@example.com"}],
            input={"user_id": "u5", "session_id": "s5"},
        )
    )

    # the model sees the message as typed; what is stored is redacted, and system messages are not stored
    assert result["output"]["prompt"][-1]["content"] == "mail me at ann@example.com"
    assert [(m["role"], m["content"]) for m in stored(example, "conv:u5:s5")] == [
        ("user", "mail me at [REDACTED]"),
        ("assistant", "Noted."),
    ]


def test_agent_memory_unknown_id_is_rejected(project: Project) -> None:
    with pytest.raises(CompozyNbError, match="no_such_memory"):
        project.execute(basic_task(memory=[{"id": "no_such_memory", "key": "k"}]))


# ------------------------------------------------------------------------------------------ hybrid summary
def summary_project(backend: Backend, summarizer: bool) -> Project:
    flushing = "  summarizer: {provider: python, model: my_summarizer}\n" if summarizer else ""
    project = Project("sum")
    project.add_yaml(
        "resource: memory\nid: chat\ntype: buffer\nmax_messages: 100\n"
        "flushing:\n  type: hybrid_summary\n  summary_tokens: 50\n" + flushing
    )
    project.use_backend(backend)
    return project


def fill(project: Project, key: str, n: int = 6) -> None:
    project.memory("chat", key=key).append(
        [{"role": "user" if i % 2 == 0 else "assistant", "content": f"line {i}"} for i in range(n)]
    )


def test_hybrid_summary_uses_the_python_summarizer(backend: Backend) -> None:
    project = summary_project(backend, summarizer=True)
    calls: list[list[dict[str, Any]]] = []

    @project.llm("my_summarizer")
    def summarize(messages: list[dict[str, Any]]) -> str:
        calls.append(messages)
        return "Bob and the assistant chatted about lines 0 and 1."

    fill(project, "s1")
    result = project.memory("chat", key="s1").flush(force=True)

    assert result["summary_generated"] is True
    assert len(calls) == 1
    conversation = "\n".join(m["content"] for m in calls[0])
    assert "user: line 0" in conversation and "assistant: line 1" in conversation
    messages = stored(project, "s1", "chat")
    assert messages[0]["role"] == "system"
    assert messages[0]["summary"] is True
    assert messages[0]["content"] == "Bob and the assistant chatted about lines 0 and 1."
    assert [m["content"] for m in messages[1:]] == [f"line {i}" for i in range(2, 6)]

    # persisted in Redis, in the wire layout Compozy reads
    raw = backend.client.lrange(KeyLayout("sum", "s1", backend.cluster).base, 0, 0)[0]
    first = json.loads(raw)
    assert first["role"] == "system" and first["summary"] is True
    assert first["content"] == "Bob and the assistant chatted about lines 0 and 1."


def test_hybrid_summary_from_a_workflow_flush_task(backend: Backend) -> None:
    project = summary_project(backend, summarizer=True)
    project.llm("my_summarizer")(lambda messages: "summary from python")
    project.add_yaml("""
name: flusher
tasks:
  - id: flush
    type: memory
    operation: flush
    memory_ref: chat
    key_template: "{{.key}}"
    flush_config: {force: true}
""")
    fill(project, "s2")

    run = project.run("flusher", {"key": "s2"})

    assert run["status"] == "completed", run.get("error")
    assert run["output"]["summary_generated"] is True
    assert stored(project, "s2", "chat")[0]["content"] == "summary from python"


def test_hybrid_summary_without_summarizer_is_rule_based(backend: Backend) -> None:
    project = summary_project(backend, summarizer=False)
    fill(project, "s3")

    result = project.memory("chat", key="s3").flush(force=True)

    assert result["summary_generated"] is True
    summary = stored(project, "s3", "chat")[0]
    assert summary["role"] == "system" and summary["summary"] is True
    assert summary["content"].startswith("Summary of 2 earlier messages:")
    assert "user: line 0" in summary["content"] and "assistant: line 1" in summary["content"]


def test_hybrid_summary_with_unregistered_summarizer_keeps_the_messages(backend: Backend) -> None:
    project = summary_project(backend, summarizer=True)
    fill(project, "s4")

    with pytest.raises(ConfigError, match="my_summarizer"):
        project.memory("chat", key="s4").flush(force=True)
    assert [m["content"] for m in stored(project, "s4", "chat")] == [f"line {i}" for i in range(6)]


AUTO_SUMMARY = """
resource: memory
id: small
type: buffer
max_messages: 4
flushing:
  type: hybrid_summary
  summary_tokens: 50
  summarizer: {provider: python, model: my_summarizer}
"""


def test_hybrid_summary_runs_the_python_summarizer_when_the_threshold_is_reached(backend: Backend) -> None:
    project = Project("auto")
    project.add_yaml(AUTO_SUMMARY)
    project.use_backend(backend)
    project.llm("my_summarizer")(lambda messages: "auto summary")
    memory = project.memory("small", key="a")

    outputs = [memory.append({"role": "user", "content": f"m{i}"}) for i in range(4)]

    assert all("summary_flush" not in out for out in outputs[:3])
    assert outputs[3]["summary_flush"]["summary_generated"] is True
    messages = memory.read()["messages"]
    assert messages[0]["content"] == "auto summary" and messages[0]["summary"] is True
    assert [m["content"] for m in messages[1:]] == ["m2", "m3"]


def test_failing_summarizer_does_not_turn_a_stored_append_into_an_error(backend: Backend) -> None:
    project = Project("auto")
    project.add_yaml(AUTO_SUMMARY)
    project.use_backend(backend)

    @project.llm("my_summarizer")
    def broken(messages: list[dict[str, Any]]) -> str:
        raise RuntimeError("LLM outage")

    memory = project.memory("small", key="b")
    for i in range(3):
        memory.append({"role": "user", "content": f"m{i}"})

    with pytest.warns(RuntimeWarning, match="stored its messages, but the summary flush failed") as warned:
        result = memory.append({"role": "user", "content": "m3"})  # stored, then the summary flush fails
    assert warned[0].filename == __file__  # points at the caller's line, not into the package

    assert result["appended"] == 1
    assert [m["content"] for m in memory.read()["messages"]] == ["m0", "m1", "m2", "m3"]


def test_unknown_summarizer_provider_is_rejected_when_loaded() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        Project("x").add_yaml(AUTO_SUMMARY.replace("provider: python", "provider: bogus"))


# ------------------------------------------------------------------------------------------ execute
def test_execute_basic_task(backend: Backend) -> None:
    project = Project("ex")
    project.use_backend(backend)

    result = project.execute(
        {
            "type": "basic",
            "provider": "scripted",
            "reply_template": "Hi {{.input.name}}, you said: {{.last_user_message}}",
            "messages": [{"role": "user", "content": "hello from {{.name}}"}],
            "input": {"name": "Ann"},
        }
    )

    assert result["status"] == "completed"
    assert result["output"]["content"] == "Hi Ann, you said: hello from Ann"
    assert result["output"]["prompt"] == [{"role": "user", "content": "hello from Ann"}]


def test_execute_basic_task_rejects_unknown_fields() -> None:
    with pytest.raises(ConfigError, match="temprature"):
        Project("ex").execute(basic_task(temprature=0.5))


# ------------------------------------------------------------------------------------------ runs.redact
PRIVATE_MEMORY = r"""
resource: memory
id: private
type: buffer
key: "p:{{.user}}"
privacy_policy:
  redact_patterns: ['[a-z]+@example\.com']
"""

PRIVATE_CHAT = """
name: private-chat
tasks:
  - id: reply
    type: basic
    provider: scripted
    reply_template: "I will write to {{.last_user_message}}"
    memory: [private]
    messages: [{role: user, content: "{{.email}}"}]
"""


@pytest.mark.parametrize("redact", [False, True])
def test_runs_redact_switch_redacts_the_current_turn_in_the_run_json(backend: Backend, redact: bool) -> None:
    from compozy_nb.results import RunResult

    project = Project("priv")
    project.add_yaml(PRIVATE_MEMORY)
    project.add_yaml(PRIVATE_CHAT)
    project.use_backend(backend)
    project.settings.runs.redact = redact

    run = project.run("private-chat", {"user": "u1", "email": "dave@example.com"})

    assert run["status"] == "completed", run.get("error")
    shown = json.dumps(run) + RunResult(run)._repr_html_()
    assert ("dave@example.com" in shown) is not redact
    if redact:
        assert run["output"]["content"] == "I will write to [REDACTED]"
        assert run["output"]["prompt"] == [{"role": "user", "content": "[REDACTED]"}]
    # what is stored is redacted either way
    stored_contents = [m["content"] for m in project.memory("private", user="u1").read()["messages"]]
    assert stored_contents == ["[REDACTED]", "I will write to [REDACTED]"]


def test_runs_redact_is_read_from_compozy_yaml(tmp_path: Path) -> None:
    (tmp_path / "compozy.yaml").write_text("name: r\nruns:\n  redact: true\n", encoding="utf-8")
    assert Project.load(tmp_path).settings.runs.redact is True
    assert ProjectSettings().runs.redact is False
