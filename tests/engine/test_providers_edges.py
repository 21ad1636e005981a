"""Providers at their edges (issue 16 items 1-4): hostile OpenAI-compatible servers on loopback, Python LLMs
that hang or return the wrong shape, and a summarizer that fails after an append stored its messages.

Every failure must be a ``PROVIDER_*`` error in the run JSON (``on_error`` honoured, earlier tasks' writes
kept), ``timeout`` must bound the whole call, a request the server may have processed is never sent again,
and replies are read within a size bound.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from compozy_nb import Project
from compozy_nb.backends import Backend, connect
from compozy_nb.testing import on_transport
from compozy_nb.workflow.providers import DEFAULT_MAX_REPLY_BYTES

if TYPE_CHECKING:  # tests/ is on sys.path when pytest runs; mypy sees the module as tests.fake_openai
    from tests.fake_openai import FakeOpenAI, Reply, completion
else:
    from fake_openai import FakeOpenAI, Reply, completion

pytestmark = pytest.mark.usefixtures("transport")  # every test on both transports (conftest.py)

HTML_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body>proxy error</body></html>"


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A real OpenAI-compatible HTTP server on a free loopback port."""
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A planted API key in the environment variable the tasks name."""
    secret = f"sk-edge-{uuid.uuid4().hex}"
    monkeypatch.setenv("EDGE_LLM_KEY", secret)
    return secret


def two_step_project(base_url: str, backend: Backend | None = None, *, on_error: str = "fail", **task: Any) -> Project:
    """A workflow that first appends to a memory, then calls the openai provider."""
    project = Project("edges")
    project.add_yaml("resource: memory\nid: notes\ntype: buffer\n")
    project.use_backend(backend or connect(f"embedded://{uuid.uuid4().hex}"))
    call = {
        "id": "call",
        "type": "basic",
        "provider": "openai",
        "model": "gpt-test",
        "base_url": base_url,
        "api_key_env": "EDGE_LLM_KEY",
        "on_error": on_error,
        "messages": [{"role": "user", "content": "{{.q}}"}],
        **task,
    }
    remember = {
        "id": "remember",
        "type": "memory",
        "operation": "append",
        "memory_ref": "notes",
        "key_template": "k",
        "payload": {"role": "user", "content": "{{.q}}"},
    }
    after = {**remember, "id": "after", "payload": {"role": "assistant", "content": "still running"}}
    project.add_yaml(json.dumps({"name": "edges", "tasks": [remember, call, after]}))
    return on_transport(project)


def failed_call(run: dict[str, Any]) -> dict[str, Any]:
    """The error of the provider task; the run JSON is complete and the first task's write is kept."""
    assert run["tasks"]["remember"]["status"] == "completed"
    assert run["tasks"]["call"]["status"] == "failed"
    error: dict[str, Any] = run["tasks"]["call"]["error"]
    return error


# ------------------------------------------------------------------------------------------ 1: any failure
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(200, raw=HTML_PAGE, headers={"Content-Type": "text/html"}), "not JSON"),
        (Reply(200, raw=b'{"choices": [{"message": {"content": "trunc'), "not JSON"),
        (Reply(301, raw=b"", headers={"Location": "https://login.example/sso"}), "redirects to https://login.example"),
        (Reply(302, raw=b"moved", headers={"Location": "/v2/chat"}), "redirects"),
        (Reply(200, {**completion(), "usage": [1, 2]}), "'usage' must be an object"),
        (Reply(200, {**completion(), "usage": {"prompt_tokens": "many"}}), "usage.prompt_tokens"),
        (Reply(200, {**completion(), "usage": {"completion_tokens": -3}}), "usage.completion_tokens"),
        (Reply(200, {"choices": "nope"}), "unexpected reply shape"),
        (Reply(200, {"choices": [{"message": {"content": {"not": "text"}}}]}), "not text"),
        (Reply(200, raw=b"null"), "unexpected reply shape"),
    ],
)
def test_any_bad_reply_is_a_provider_error_with_status_and_excerpt(
    fake_openai: FakeOpenAI, key: str, reply: Reply, expected: str
) -> None:
    fake_openai.queue(reply)
    project = two_step_project(fake_openai.base_url)

    run = project.run("edges", {"q": "hello"})

    error = failed_call(run)
    assert run["status"] == "failed" and run["error"] == error
    assert error["code"] == "PROVIDER_ERROR"
    assert expected in error["message"]
    assert f"HTTP {reply.status}" in error["message"]
    assert len(fake_openai.requests) == 1  # none of these is retried
    assert [m["content"] for m in project.memory("notes", key="k").read()["messages"]] == ["hello"]


def test_non_json_reply_quotes_a_short_excerpt(fake_openai: FakeOpenAI, key: str) -> None:
    fake_openai.queue(Reply(200, raw=HTML_PAGE + b"x" * 50_000))

    error = failed_call(two_step_project(fake_openai.base_url).run("edges", {"q": "hi"}))

    assert "502 Bad Gateway" in error["message"]
    assert len(error["message"]) < 400


def test_on_error_continue_goes_on_after_a_provider_failure(fake_openai: FakeOpenAI, key: str) -> None:
    fake_openai.queue(Reply(200, raw=HTML_PAGE))
    project = two_step_project(fake_openai.base_url, on_error="continue")

    run = project.run("edges", {"q": "hello"})

    assert run["status"] == "completed"
    assert failed_call(run)["code"] == "PROVIDER_ERROR"
    assert run["tasks"]["after"]["status"] == "completed"
    assert [m["content"] for m in project.memory("notes", key="k").read()["messages"]] == ["hello", "still running"]


def test_run_many_keeps_every_row_when_one_provider_call_fails(fake_openai: FakeOpenAI, key: str) -> None:
    fake_openai.queue(Reply(200, completion("first")), Reply(200, raw=HTML_PAGE), Reply(200, completion("third")))
    project = two_step_project(fake_openai.base_url)

    frame = project.workflow("edges").run_many([{"q": "a"}, {"q": "b"}, {"q": "c"}], progress=False)

    assert list(frame["status"]) == ["completed", "failed", "completed"]
    assert list(frame["error_code"])[1] == "PROVIDER_ERROR"


def test_an_unexpected_exception_inside_a_task_fails_that_task_only() -> None:
    class Hostile(str):
        """A reply that passes the shape check, then breaks when the runner looks at it."""

        def strip(self, chars: str | None = None) -> str:
            raise RuntimeError("boom from a str subclass")

    project = Project("bug")
    project.use_backend(connect(f"embedded://{uuid.uuid4().hex}"))
    project.llm("hostile")(lambda messages: Hostile("hi"))
    project.add_yaml("""
name: bug
tasks:
  - {id: call, type: basic, provider: python, function: hostile, on_error: continue,
     messages: [{role: user, content: hi}]}
  - {id: next, type: basic, provider: scripted, replies: [fine], messages: [{role: user, content: hi}]}
""")

    run = project.run("bug", {})

    assert run["status"] == "completed"
    assert run["tasks"]["call"]["error"]["code"] == "INTERNAL_ERROR"
    assert "RuntimeError" in run["tasks"]["call"]["error"]["message"]
    assert run["output"]["content"] == "fine"


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient.")
def test_http_answers_502_with_the_run_json(fake_openai: FakeOpenAI, key: str) -> None:
    from fastapi.testclient import TestClient

    from compozy_nb.server import create_app

    fake_openai.queue(Reply(200, raw=HTML_PAGE))
    project = two_step_project(fake_openai.base_url)
    with TestClient(
        create_app(project, api_key=""), raise_server_exceptions=False, base_url="http://localhost"
    ) as client:
        response = client.post("/workflows/edges/execute", json={"input": {"q": "hi"}})

    assert response.status_code == 502
    body = response.json()
    assert body["status"] == "failed" and body["error"]["code"] == "PROVIDER_ERROR"
    assert body["tasks"]["remember"]["status"] == "completed"


# ------------------------------------------------------------------------------------------ 2: deadline, no re-send
def test_timeout_bounds_a_slow_drip_reply(fake_openai: FakeOpenAI, key: str) -> None:
    body = json.dumps(completion("x" * 200)).encode()
    fake_openai.queue(Reply(200, raw=body, drip=0.05))  # the whole body would take ~20 s
    project = two_step_project(fake_openai.base_url, timeout=1)

    error = failed_call(project.run("edges", {"q": "hi"}))

    assert error["code"] == "PROVIDER_TIMEOUT"
    assert "timeout of 1 s" in error["message"]
    fake_openai.release.set()  # end the drip (the client already hung up)
    assert len(fake_openai.requests) == 1
    sent = fake_openai.wait_sent()
    assert sent and sent[0] < len(body)  # the client stopped reading early


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, completion("x" * 500), cut=40),  # a body cut short after the headers
        Reply(hang_up=True),  # the connection closes after the request went out
        Reply(500, {"error": {"message": "cut"}}, cut=5),
    ],
)
def test_a_request_the_server_may_have_processed_is_not_sent_again(
    fake_openai: FakeOpenAI, key: str, reply: Reply
) -> None:
    fake_openai.queue(reply, Reply(200, completion("second copy")))
    project = two_step_project(fake_openai.base_url)

    error = failed_call(project.run("edges", {"q": "hi"}))

    assert error["code"] == "PROVIDER_ERROR"
    assert "not sent again" in error["message"]
    assert len(fake_openai.requests) == 1  # one billable completion, not four


def test_a_cut_short_reply_marked_safe_is_retried(fake_openai: FakeOpenAI, key: str) -> None:
    fake_openai.queue(Reply(200, completion("x" * 500), cut=40, headers={"x-should-retry": "true"}))
    fake_openai.queue(Reply(200, completion("second try")))
    project = two_step_project(fake_openai.base_url)

    run = project.run("edges", {"q": "hi"})

    assert run["status"] == "completed", run.get("error")
    assert run["tasks"]["call"]["output"]["content"] == "second try"
    assert len(fake_openai.requests) == 2


def test_retry_after_beyond_the_deadline_fails_at_once(fake_openai: FakeOpenAI, key: str) -> None:
    fake_openai.queue(Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "25"}))
    project = two_step_project(fake_openai.base_url, timeout=1)

    error = failed_call(project.run("edges", {"q": "hi"}))

    assert error["code"] == "PROVIDER_TIMEOUT"
    assert "429" in error["message"] and "would pass the task's timeout" in error["message"]
    assert len(fake_openai.requests) == 1


def test_retries_and_their_waits_count_against_the_same_deadline(fake_openai: FakeOpenAI, key: str) -> None:
    fake_openai.queue(*[Reply(503, {"error": {"message": "busy"}}, {"Retry-After": "0.6"})] * 5)
    project = two_step_project(fake_openai.base_url, timeout=1)

    error = failed_call(project.run("edges", {"q": "hi"}))

    assert error["code"] == "PROVIDER_TIMEOUT"
    assert len(fake_openai.requests) <= 2  # without the deadline: 4 requests (3 retries), then PROVIDER_ERROR


def test_x_should_retry_false_forbids_a_retry(fake_openai: FakeOpenAI, key: str) -> None:
    fake_openai.queue(Reply(503, {"error": {"message": "no"}}, {"x-should-retry": "false", "Retry-After": "0"}))
    project = two_step_project(fake_openai.base_url)

    error = failed_call(project.run("edges", {"q": "hi"}))

    assert error["code"] == "PROVIDER_ERROR" and "503" in error["message"]
    assert len(fake_openai.requests) == 1


def test_unreachable_server_is_a_provider_error(key: str) -> None:
    from compozy_nb.testing import free_port

    project = two_step_project(f"http://127.0.0.1:{free_port()}/v1", timeout=5)

    error = failed_call(project.run("edges", {"q": "hi"}))

    assert error["code"] in ("PROVIDER_ERROR", "PROVIDER_TIMEOUT")
    assert "cannot connect" in error["message"] or "timeout" in error["message"]


def test_malformed_base_url_is_a_config_error(key: str) -> None:
    for base_url in ("ftp://host/v1", "http://[::1/v1", "http://host:notaport/v1"):
        error = failed_call(two_step_project(base_url).run("edges", {"q": "hi"}))
        assert error["code"] == "INVALID_CONFIG", base_url
        assert "base_url" in error["message"]


# ------------------------------------------------------------------------------------------ 3: size bound
def test_a_huge_chunked_reply_is_refused_within_the_bound(fake_openai: FakeOpenAI, key: str) -> None:
    total = 64 * 1024 * 1024
    fake_openai.queue(Reply(200, chunked=total))
    project = two_step_project(fake_openai.base_url)

    error = failed_call(project.run("edges", {"q": "hi"}))

    assert error["code"] == "PROVIDER_ERROR"
    assert f"max_reply_bytes ({DEFAULT_MAX_REPLY_BYTES:,} bytes)" in error["message"]
    assert len(fake_openai.requests) == 1
    sent = fake_openai.wait_sent()
    assert sent and sent[0] < total  # the client stopped reading, it did not take the 64 MB


def test_max_reply_bytes_comes_from_compozy_yaml(fake_openai: FakeOpenAI, key: str) -> None:
    big = completion("y" * 5000)
    fake_openai.queue(Reply(200, big), Reply(200, big))
    project = two_step_project(fake_openai.base_url)
    assert project.run("edges", {"q": "hi"})["status"] == "completed"

    project.settings.providers = {"openai": {"max_reply_bytes": 1000}}
    error = failed_call(project.run("edges", {"q": "hi"}))

    assert error["code"] == "PROVIDER_ERROR"
    assert "max_reply_bytes (1,000 bytes)" in error["message"]


def test_max_reply_bytes_must_be_a_positive_integer(fake_openai: FakeOpenAI, key: str) -> None:
    project = two_step_project(fake_openai.base_url)
    project.settings.providers = {"openai": {"max_reply_bytes": "lots"}}

    error = failed_call(project.run("edges", {"q": "hi"}))

    assert error["code"] == "INVALID_CONFIG" and "max_reply_bytes" in error["message"]
    assert fake_openai.requests == []


# ------------------------------------------------------------------------------------------ 4: python provider
def python_project(timeout: float = 60.0) -> Project:
    project = Project("py")
    project.use_backend(connect(f"embedded://{uuid.uuid4().hex}"))
    project.add_yaml(f"""
name: py
tasks:
  - {{id: call, type: basic, provider: python, function: llm, timeout: {timeout},
     messages: [{{role: user, content: "{{{{.q}}}}"}}]}}
""")
    return project


def test_a_hanging_python_llm_is_bounded_by_timeout() -> None:
    release = threading.Event()
    project = python_project(timeout=0.3)
    project.llm("llm")(lambda messages: "late" if release.wait(30) else "never")
    try:
        frame = project.workflow("py").run_many([{"q": "a"}, {"q": "b"}], progress=False)
    finally:
        release.set()

    assert list(frame["status"]) == ["failed", "failed"]
    assert list(frame["error_code"]) == ["PROVIDER_TIMEOUT", "PROVIDER_TIMEOUT"]
    assert "keeps running" in frame["error"][0]


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        ({"content": "x", "usage": [1]}, "'usage' must be an object"),
        ({"content": "x", "usage": {"prompt_tokens": "12"}}, "usage.prompt_tokens"),
        ({"content": "x", "usage": {"completion_tokens": 1.5}}, "usage.completion_tokens"),
        ({"content": "x", "usage": {"prompt_tokens": float("nan")}}, "usage.prompt_tokens"),
        ({"content": "x", "usage": {"prompt_tokens": True}}, "usage.prompt_tokens"),
        ({"content": "x", "model": 7}, "'model' must be a string"),
        ({"content": 42}, "must return a string or a dict"),
        (None, "got NoneType"),
    ],
)
def test_python_llm_reply_shape_is_checked(returned: Any, expected: str) -> None:
    project = python_project()
    project.llm("llm")(lambda messages: returned)

    run = project.run("py", {"q": "hi"})

    assert run["error"]["code"] == "PROVIDER_ERROR"
    assert expected in run["error"]["message"]


def test_python_llm_with_valid_usage_reports_it() -> None:
    project = python_project()
    project.llm("llm")(lambda messages: {"content": "ok", "usage": {"prompt_tokens": 3, "completion_tokens": 4.0}})

    run = project.run("py", {"q": "hi"})

    assert run["output"]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4}


SUMMARY_MEMORY = """
resource: memory
id: small
type: buffer
max_messages: 4
flushing:
  type: hybrid_summary
  summary_tokens: 50
  summarizer: {provider: python, model: summarize}
"""


def test_a_summarizer_with_a_bad_reply_leaves_the_append_complete(backend: Backend) -> None:
    project = Project("sum")
    project.add_yaml(SUMMARY_MEMORY)
    project.use_backend(backend)
    project.llm("summarize")(lambda messages: {"content": "s", "usage": {"prompt_tokens": "NaN"}})
    memory = project.memory("small", key=f"k-{uuid.uuid4().hex}")
    for i in range(3):
        memory.append({"role": "user", "content": f"m{i}"})

    with pytest.warns(RuntimeWarning, match="stored its messages"):
        result = memory.append({"role": "user", "content": "m3"})

    assert result["appended"] == 1
    assert result["summary_flush"]["error"]["code"] == "PROVIDER_ERROR"
    assert [m["content"] for m in memory.read()["messages"]] == ["m0", "m1", "m2", "m3"]
