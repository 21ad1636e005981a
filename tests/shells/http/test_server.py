"""The HTTP API, end to end: the real server (``python -m compozy_nb.server``, a uvicorn subprocess on a free
port) against a real redis-server, called with httpx.

The project served is the repository itself (compozy.yaml, memory/conversation.yaml, workflows/chatbot.yaml).
Every endpoint, every error status (400 of each kind with its field, 401, 404, 409, 413, 503), auth on and
off, the refusal to bind a public address without a token, and an OpenAPI fuzz (schemathesis) that must
never see a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol, cast

# fastapi, uvicorn and schemathesis come with the test extra: missing, these tests fail instead of skipping.
import fastapi  # noqa: F401
import httpx
import pytest
import redis
import uvicorn  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from compozy_nb.testing import ApiServer, RedisServer, free_port

ROOT = Path(__file__).resolve().parents[3]
MEMORY = "/api/v0/memory/conversation_memory"
TOKEN = "s3cret-token"
JSON_TYPE = {"Content-Type": "application/json"}
SEED_REQUEST: dict[str, Any] = {
    "type": "memory",
    "operation": "write",
    "memory_ref": "conversation_memory",
    "key_template": "conv:{{.user_id}}:{{.session_id}}",
    "payload": {"role": "user", "content": "Hello"},
    "input": {"user_id": "user123", "session_id": "sess456"},
}


class ServerProcess(ApiServer):
    """The repository's example project served by ``python -m compozy_nb.server`` (``compozy_nb.testing``)."""

    def __init__(self, redis_url: str, *, api_key: str | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(ROOT, redis_url, api_key=api_key, host=host)


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[ServerProcess]:
    """The API without authentication, on the session's redis-server."""
    proc = ServerProcess(redis_server.url).start()
    yield proc
    log = proc.stderr()
    proc.stop()
    assert "Traceback" not in log, f"the server logged an exception:\n{log}"


@pytest.fixture
def api(server: ServerProcess, redis_url: str) -> Iterator[httpx.Client]:
    """An httpx client on the server; the database is flushed before each test (``redis_url``)."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def auth_server(redis_server: RedisServer) -> Iterator[ServerProcess]:
    """The API with COMPOZY_API_KEY set."""
    proc = ServerProcess(redis_server.url, api_key=TOKEN).start()
    yield proc
    proc.stop()


def key() -> str:
    return f"t:{uuid.uuid4().hex[:12]}"


class _Response(Protocol):
    """An httpx response, or an httpx2 one (what Starlette's TestClient returns when httpx2 is installed)."""

    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...
    def json(self, **kwargs: Any) -> Any: ...


def assert_error(response: _Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The response is Compozy's error envelope with ``status``, ``code`` and (when given) ``field``."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["error"]["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert body["error"]["message"]
    if field is not None:
        assert body["error"].get("field") == field, body
    return body


def ok(response: httpx.Response, message: str) -> dict[str, Any]:
    """The response is a 200 envelope with ``message``; returns its data."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == 200 and body["message"] == message, body
    return body["data"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- task and workflow execution
def test_seed_request_gives_the_seed_response(api: httpx.Client) -> None:
    response = api.post("/workflows/anything/tasks/anything/execute", json=SEED_REQUEST)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"status", "output"}
    assert body["status"] == "completed"
    output = body["output"]
    assert output["success"] is True
    assert output["key"] == "conv:user123:sess456"
    assert output["operation"] == "write"
    data = ok(api.get(f"{MEMORY}/read", params={"key": "conv:user123:sess456"}), "memory read successfully")
    assert [(m["role"], m["content"]) for m in data["messages"]] == [("user", "Hello")]


def test_execute_fills_missing_fields_from_the_defined_task(api: httpx.Client) -> None:
    api.post("/workflows/w/tasks/t/execute", json=SEED_REQUEST)
    user = {"user_id": "user123", "session_id": "sess456"}
    read = api.post("/workflows/chatbot-workflow/tasks/read_history/execute", json={"input": user})
    assert read.status_code == 200, read.text
    output = read.json()["output"]
    assert (output["operation"], output["key"], output["count"]) == ("read", "conv:user123:sess456", 1)
    # A field of the body overrides the task's: same key template, another operation.
    stats = api.post(
        "/workflows/chatbot-workflow/tasks/read_history/execute", json={"operation": "stats", "input": user}
    )
    assert stats.json()["output"]["operation"] == "stats"
    assert stats.json()["output"]["message_count"] == 1
    # A basic task runs alone when the input provides what it references.
    basic = api.post(
        "/workflows/chatbot-workflow/tasks/generate_response/execute",
        json={"input": {"user_message": "hi", "conversation_history": "user: earlier"}},
    )
    assert basic.status_code == 200, basic.text
    assert basic.json()["output"]["content"].startswith("You said: hi")


def test_execute_sees_the_path_workflow_id(api: httpx.Client) -> None:
    body = {**SEED_REQUEST, "key_template": "{{.workflow.id}}:{{.user_id}}"}
    response = api.post("/workflows/support-flow/tasks/save/execute", json=body)
    assert response.json()["output"]["key"] == "support-flow:user123"


def test_execute_partial_body_needs_a_defined_task(api: httpx.Client) -> None:
    partial = {"operation": "read", "input": {"user_id": "u", "session_id": "s"}}
    assert_error(api.post("/workflows/nope/tasks/read_history/execute", json=partial), 404, "WORKFLOW_NOT_FOUND")
    assert_error(api.post("/workflows/chatbot-workflow/tasks/nope/execute", json=partial), 404, "TASK_NOT_FOUND")
    assert_error(api.post("/workflows/nope/tasks/nope/execute"), 404, "WORKFLOW_NOT_FOUND")


def test_run_workflow(api: httpx.Client) -> None:
    data = {"user_id": "u1", "session_id": "s1", "user_message": "Hi, I'm Ann"}
    response = api.post("/workflows/chatbot-workflow/execute", json={"input": data})
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "completed" and run["workflow_id"] == "chatbot-workflow"
    assert run["output"]["reply"].startswith("You said: Hi, I'm Ann")
    assert set(run["tasks"]) == {"read_history", "generate_response", "save_interaction"}
    read = ok(api.get(f"{MEMORY}/read", params={"key": "conv:u1:s1"}), "memory read successfully")
    assert [m["role"] for m in read["messages"]] == ["user", "assistant"]
    assert_error(
        api.post("/workflows/chatbot-workflow/execute", json={"input": {"user_id": "u1"}}),
        400,
        "INVALID_CONFIG",
        "input.session_id",
    )
    assert_error(api.post("/workflows/chatbot-workflow/execute", json={"inputs": {}}), 400, "INVALID_REQUEST", "inputs")
    assert_error(api.post("/workflows/nope/execute", json={"input": {}}), 404, "WORKFLOW_NOT_FOUND")
    # An input property named like a Python parameter is just data.
    odd = api.post("/workflows/chatbot-workflow/execute", json={"input": {**data, "self": "x", "input": 1}})
    assert odd.status_code == 200 and odd.json()["status"] == "completed", odd.text


def test_run_workflow_failing_task_keeps_the_run_json(api: httpx.Client) -> None:
    data = {"user_id": "bad key", "session_id": "s1", "user_message": "hi"}
    response = api.post("/workflows/chatbot-workflow/execute", json={"input": data})
    assert response.status_code == 400
    run = response.json()
    assert run["status"] == "failed" and run["error"]["code"] == "INVALID_KEY"
    assert run["tasks"]["read_history"]["status"] == "failed"


# ---------------------------------------------------------------------------- memory endpoints
def test_memory_endpoints_round_trip(api: httpx.Client) -> None:
    k = key()
    messages = [{"role": "user", "content": f"message {i}"} for i in range(5)]
    written = ok(api.post(f"{MEMORY}/write", json={"key": k, "messages": messages}), "memory written successfully")
    assert (written["success"], written["count"], written["key"]) == (True, 5, k)
    appended = ok(
        api.post(f"{MEMORY}/append", json={"key": k, "messages": [{"content": "six", "lang": "en"}]}),
        "memory appended successfully",
    )
    assert (appended["appended"], appended["total_count"], appended["key"]) == (1, 6, k)

    page = ok(api.get(f"{MEMORY}/read", params={"key": k, "limit": 2, "offset": 1}), "memory read successfully")
    assert [m["content"] for m in page["messages"]] == ["message 1", "message 2"]
    assert (page["total_count"], page["has_more"], page["limit"], page["offset"]) == (6, True, 2, 1)
    default = ok(api.get(f"{MEMORY}/read", params={"key": k, "limit": 0}), "memory read successfully")
    assert default["limit"] == 50 and default["has_more"] is False
    assert default["messages"][-1] | {"role": "user", "content": "six", "lang": "en"} == default["messages"][-1]

    stats = ok(api.get(f"{MEMORY}/stats", params={"key": k}), "memory stats retrieved successfully")
    assert stats["message_count"] == stats["context_window_used"] == 6
    assert stats["token_limit"] == stats["max_tokens"] == 4000
    assert stats["role_distribution"] == {"user": 6}
    health = ok(api.get(f"{MEMORY}/health", params={"key": k}), "memory health retrieved successfully")
    assert health["healthy"] is True and health["message_count"] == 6
    assert health["actual_strategy"] == "simple_fifo"

    listed = ok(api.get(f"{MEMORY}/instances", params={"pattern": "t:*"}), "memory instances listed successfully")
    assert [row["key"] for row in listed["instances"]] == [k]
    assert (listed["count"], listed["has_more"]) == (1, False)

    # 60 of the resource's 100 messages: over the flush threshold's target, so a flush removes some.
    many = [{"content": f"turn {i}"} for i in range(60)]
    ok(api.post(f"{MEMORY}/write", json={"key": k, "messages": many}), "memory written successfully")
    dry = ok(
        api.post(f"{MEMORY}/flush", json={"key": k, "force": True, "dry_run": True}), "memory flushed successfully"
    )
    assert (dry["dry_run"], dry["message_count"], dry["would_flush"]) == (True, 60, True)
    assert dry["would_remove"] > 0
    not_due = ok(api.post(f"{MEMORY}/flush", json={"key": k}), "memory flushed successfully")
    assert (not_due["flushed_count"], not_due["would_flush"]) == (0, False)
    flushed = ok(
        api.post(f"{MEMORY}/flush", json={"key": k, "force": True, "strategy": "simple_fifo"}),
        "memory flushed successfully",
    )
    assert flushed["success"] is True and flushed["flushed_count"] == dry["would_remove"]
    assert flushed["message_count"] == 60 - flushed["flushed_count"]

    cleared = ok(
        api.post(f"{MEMORY}/clear", json={"key": k, "confirm": True, "backup": True}), "memory cleared successfully"
    )
    assert cleared["success"] is True and cleared["backup_created"] is True
    assert cleared["messages_cleared"] == flushed["message_count"]
    deleted = ok(api.post(f"{MEMORY}/delete", json={"key": k}), "memory deleted successfully")
    assert (deleted["success"], deleted["key"]) == (True, k)
    empty = ok(api.get(f"{MEMORY}/read", params={"key": k}), "memory read successfully")
    assert (empty["messages"], empty["total_count"]) == ([], 0)


def test_read_takes_every_read_option_of_the_engine(api: httpx.Client) -> None:
    """Besides Compozy's page (limit/offset), HTTP reads the newest N, the newest within a token budget, the
    archive and filtered messages; a bad value is the engine's error, naming the parameter."""
    k = key()
    messages = [{"role": "user" if i % 2 else "assistant", "content": f"message {i}"} for i in range(8)]
    ok(api.post(f"{MEMORY}/write", json={"key": k, "messages": messages}), "memory written successfully")

    last = ok(api.get(f"{MEMORY}/read", params={"key": k, "last": 3}), "memory read successfully")
    assert [m["content"] for m in last["messages"]] == ["message 5", "message 6", "message 7"]
    assert "limit" not in last and last["total_count"] == 8
    budget = ok(api.get(f"{MEMORY}/read", params={"key": k, "max_tokens": 6}), "memory read successfully")
    assert 0 < len(budget["messages"]) < 8 and budget["messages"][-1]["content"] == "message 7"
    users = ok(api.get(f"{MEMORY}/read", params={"key": k, "role": "user", "last": 2}), "memory read successfully")
    assert [m["content"] for m in users["messages"]] == ["message 5", "message 7"]
    page = ok(api.get(f"{MEMORY}/read", params={"key": k, "limit": 2, "role": "assistant"}), "memory read successfully")
    assert [m["content"] for m in page["messages"]] == ["message 0", "message 2"] and page["limit"] == 2

    many = [{"content": f"turn {i}"} for i in range(60)]  # over the flush target of the resource's 100 messages
    ok(api.post(f"{MEMORY}/write", json={"key": k, "messages": many}), "memory written successfully")
    flushed = ok(api.post(f"{MEMORY}/flush", json={"key": k, "force": True}), "memory flushed successfully")
    archive = ok(api.get(f"{MEMORY}/read", params={"key": k, "archive": True}), "memory read successfully")
    archived = {m["content"] for m in archive["messages"]}
    assert archived == {f"turn {i}" for i in range(flushed["flushed_count"])} and archived

    assert_error(api.get(f"{MEMORY}/read", params={"key": k, "last": -1}), 400, "INVALID_PAYLOAD", "last")
    assert_error(api.get(f"{MEMORY}/read", params={"key": k, "since": "yesterday"}), 400, "INVALID_PAYLOAD", "since")


def test_memory_privacy_applies_over_http(api: httpx.Client) -> None:
    k = key()
    body = {
        "key": k,
        "messages": [
            {"role": "system", "content": "secret rules"},
            {"role": "user", "content": "mail me at ann@example.com"},
        ],
    }
    out = ok(api.post(f"{MEMORY}/append", json=body), "memory appended successfully")
    assert (out["appended"], out["skipped"]) == (1, 1)
    read = ok(api.get(f"{MEMORY}/read", params={"key": k}), "memory read successfully")
    assert "ann@example.com" not in read["messages"][0]["content"]


def test_concurrent_requests_lose_nothing(api: httpx.Client, server: ServerProcess, redis_url: str) -> None:
    k = key()

    async def hammer() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            calls = [
                client.post(f"{MEMORY}/append", json={"key": k, "messages": [{"content": f"m{i}"}]}) for i in range(60)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    assert asyncio.run(hammer()) == [200] * 60
    stored = redis.Redis.from_url(redis_url).lrange(f"compozy:demo:memory:{k}", 0, -1)
    assert len(stored) == 60
    assert len(set(stored)) == 60


# ---------------------------------------------------------------------------- error statuses
def test_400_invalid_key(api: httpx.Client) -> None:
    body = assert_error(api.get(f"{MEMORY}/read", params={"key": "bad key"}), 400, "INVALID_KEY", "key")
    assert "not allowed" in body["error"]["message"]
    assert_error(
        api.post(f"{MEMORY}/append", json={"key": "__x", "messages": [{"content": "a"}]}), 400, "INVALID_KEY", "key"
    )
    adhoc = {**SEED_REQUEST, "input": {"user_id": "a b", "session_id": "s"}}
    assert_error(api.post("/workflows/w/tasks/t/execute", json=adhoc), 400, "INVALID_KEY", "key_template")


def test_400_invalid_payload(api: httpx.Client) -> None:
    body = assert_error(
        api.post(f"{MEMORY}/write", json={"key": key(), "messages": [{"role": "bot", "content": "x"}]}),
        400,
        "INVALID_PAYLOAD",
        "messages[0].role",
    )
    assert body["error"]["message"].startswith("messages[0].role: invalid message role 'bot'")
    assert_error(
        api.post(f"{MEMORY}/append", json={"key": key(), "messages": [{"content": "ok"}, {"content": " "}]}),
        400,
        "INVALID_PAYLOAD",
        "messages[1].content",
    )
    adhoc = {**SEED_REQUEST, "payload": 42}
    assert_error(api.post("/workflows/w/tasks/t/execute", json=adhoc), 400, "INVALID_PAYLOAD", "payload")


def test_400_template_error(api: httpx.Client) -> None:
    adhoc = {**SEED_REQUEST, "key_template": "conv:{{.missing}}"}
    body = assert_error(api.post("/workflows/w/tasks/t/execute", json=adhoc), 400, "TEMPLATE_ERROR", "key_template")
    assert "missing" in body["error"]["message"]
    payload = {**SEED_REQUEST, "payload": {"role": "user", "content": "{{.nothing}}"}}
    error = assert_error(api.post("/workflows/w/tasks/t/execute", json=payload), 400, "TEMPLATE_ERROR")
    assert error["error"]["field"].startswith("payload") and error["error"]["field"].endswith(".content")
    syntax = {**SEED_REQUEST, "key_template": "conv:{{.a"}
    assert_error(api.post("/workflows/w/tasks/t/execute", json=syntax), 400, "TEMPLATE_ERROR", "key_template")


def test_400_invalid_config(api: httpx.Client) -> None:
    assert_error(
        api.post(f"{MEMORY}/flush", json={"key": key(), "strategy": "newest_first"}), 400, "INVALID_CONFIG", "strategy"
    )
    assert_error(api.post(f"{MEMORY}/flush", json={"key": key(), "threshold": 2}), 400, "INVALID_CONFIG", "threshold")
    assert_error(
        api.post("/workflows/w/tasks/t/execute", json={**SEED_REQUEST, "operation": "upsert"}),
        400,
        "INVALID_CONFIG",
        "operation",
    )
    assert_error(
        api.post("/workflows/w/tasks/t/execute", json={**SEED_REQUEST, "colour": "red"}),
        400,
        "INVALID_CONFIG",
        "colour",
    )
    no_payload = {k: v for k, v in SEED_REQUEST.items() if k != "payload"}
    assert_error(api.post("/workflows/w/tasks/t/execute", json=no_payload), 400, "INVALID_CONFIG", "payload")


def test_413_limit_exceeded(api: httpx.Client) -> None:
    huge = {"key": key(), "messages": [{"content": "word " * 14_000}]}
    body = assert_error(api.post(f"{MEMORY}/append", json=huge), 413, "LIMIT_EXCEEDED", "messages")
    assert "max_message_bytes" in body["error"]["message"]
    adhoc = {**SEED_REQUEST, "payload": {"content": "word " * 14_000}}
    assert_error(api.post("/workflows/w/tasks/t/execute", json=adhoc), 413, "LIMIT_EXCEEDED", "payload")
    # A body over the server's 8 MiB cap is refused before it is parsed, declared or streamed.
    big = b"x" * (9 * 1024 * 1024)
    json_type = {"content-type": "application/json"}
    assert_error(api.post(f"{MEMORY}/append", content=big, headers=json_type), 413, "REQUEST_TOO_LARGE")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while the body streams in
        for _ in range(9):
            yield b"x" * (1024 * 1024)

    assert_error(api.post(f"{MEMORY}/append", content=chunks(), headers=json_type), 413, "REQUEST_TOO_LARGE")


def test_400_request_validation_not_422(api: httpx.Client) -> None:
    assert_error(api.get(f"{MEMORY}/read"), 400, "INVALID_REQUEST", "key")
    assert_error(api.get(f"{MEMORY}/read", params={"key": "k", "limit": 1001}), 400, "INVALID_REQUEST", "limit")
    assert_error(api.get(f"{MEMORY}/read", params={"key": "k", "offset": -1}), 400, "INVALID_REQUEST", "offset")
    assert_error(api.get(f"{MEMORY}/read", params={"key": "k", "limit": "ten"}), 400, "INVALID_REQUEST", "limit")
    assert_error(api.post(f"{MEMORY}/write", json={"key": "k"}), 400, "INVALID_REQUEST", "messages")
    assert_error(api.post(f"{MEMORY}/write", json={"key": "k", "messages": []}), 400, "INVALID_REQUEST", "messages")
    assert_error(
        api.post(f"{MEMORY}/write", json={"key": "k", "messages": [{"role": "user"}]}),
        400,
        "INVALID_REQUEST",
        "messages[0].content",
    )
    assert_error(api.post(f"{MEMORY}/delete", json={}), 400, "INVALID_REQUEST", "key")
    assert_error(
        api.post(f"{MEMORY}/delete", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "INVALID_REQUEST",
        "body",
    )
    body = assert_error(api.post(f"{MEMORY}/delete", content=b'{"key": "k"}'), 400, "INVALID_REQUEST", "body")
    assert "application/json" in body["error"]["message"]
    assert_error(
        api.post("/workflows/w/tasks/t/execute", json={**SEED_REQUEST, "input": [1]}), 400, "INVALID_REQUEST", "input"
    )


def test_404_unknown_memory_and_route(api: httpx.Client) -> None:
    for method, path, extra in (
        ("GET", "/api/v0/memory/nope/read", {"params": {"key": "k"}}),
        ("GET", "/api/v0/memory/nope/stats", {"params": {"key": "k"}}),
        ("GET", "/api/v0/memory/nope/instances", {}),
        ("POST", "/api/v0/memory/nope/append", {"json": {"key": "k", "messages": [{"content": "x"}]}}),
    ):
        assert_error(api.request(method, path, **extra), 404, "MEMORY_NOT_FOUND")
    assert_error(
        api.post("/workflows/w/tasks/t/execute", json={**SEED_REQUEST, "memory_ref": "nope"}),
        404,
        "MEMORY_NOT_FOUND",
        "memory_ref",
    )
    assert_error(api.get("/api/v0/nothing"), 404, "NOT_FOUND")
    assert_error(api.get(f"{MEMORY}/write"), 405, "METHOD_NOT_ALLOWED")


def test_409_clear_without_confirm(api: httpx.Client) -> None:
    k = key()
    api.post(f"{MEMORY}/append", json={"key": k, "messages": [{"content": "keep me"}]})
    for body in ({"key": k}, {"key": k, "confirm": False}):
        error = assert_error(api.post(f"{MEMORY}/clear", json=body), 409, "CONFIRM_REQUIRED", "confirm")
        assert "confirm" in error["error"]["message"]
    adhoc = {"type": "memory", "operation": "clear", "memory_ref": "conversation_memory", "key_template": k}
    assert_error(api.post("/workflows/w/tasks/t/execute", json=adhoc), 409, "CONFIRM_REQUIRED", "clear_config.confirm")
    assert (
        ok(api.get(f"{MEMORY}/stats", params={"key": k}), "memory stats retrieved successfully")["message_count"] == 1
    )


# ---------------------------------------------------------------------------- health, docs
def test_healthz_and_openapi(api: httpx.Client) -> None:
    data = ok(api.get("/healthz"), "healthy")
    assert data["process"] == "ok" and data["redis"]["ok"] is True and data["project"] == "demo"
    spec = api.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {
        "/healthz",
        "/workflows/{workflow_id}/execute",
        "/workflows/{workflow_id}/tasks/{task_id}/execute",
        *(
            f"/api/v0/memory/{{memory_ref}}/{op}"
            for op in ("read", "write", "append", "delete", "flush", "clear", "health", "stats", "instances")
        ),
    } <= paths
    statuses = {s for item in spec["paths"].values() for op in item.values() for s in op["responses"]}
    assert "422" not in statuses and "400" in statuses
    assert "securitySchemes" not in spec.get("components", {})
    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# ---------------------------------------------------------------------------- auth
def test_auth_on(auth_server: ServerProcess, redis_url: str) -> None:
    with httpx.Client(base_url=auth_server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        missing = assert_error(client.get(f"{MEMORY}/read", params={"key": "k"}), 401, "UNAUTHORIZED")
        assert "missing" in missing["message"]
        response = client.get(f"{MEMORY}/read", params={"key": "k"})
        assert response.headers["www-authenticate"].startswith("Bearer")
        for header in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer", f"Bearer {TOKEN[:-1]}"):
            assert_error(
                client.get(f"{MEMORY}/read", params={"key": "k"}, headers={"Authorization": header}),
                401,
                "UNAUTHORIZED",
            )
        assert_error(client.post("/workflows/w/tasks/t/execute", json=SEED_REQUEST), 401, "UNAUTHORIZED")
        assert_error(client.get("/openapi.json"), 401, "UNAUTHORIZED")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        done = client.post("/workflows/w/tasks/t/execute", json=SEED_REQUEST, headers=auth)
        assert done.status_code == 200 and done.json()["output"]["success"] is True
        assert (
            client.get(f"{MEMORY}/read", params={"key": "k"}, headers={"authorization": f"bearer {TOKEN}"}).status_code
            == 200
        )
        spec = client.get("/openapi.json", headers=auth).json()
        assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_auth_off_needs_no_header(api: httpx.Client) -> None:
    assert (
        api.get(f"{MEMORY}/read", params={"key": "k"}, headers={"Authorization": "Bearer whatever"}).status_code == 200
    )


def test_public_bind_without_token_refuses_to_start(redis_server: RedisServer) -> None:
    proc = ServerProcess(redis_server.url, host="0.0.0.0")
    result = subprocess.run(proc.command(), cwd=ROOT, env=proc.env(), capture_output=True, text=True, timeout=60)
    shutil.rmtree(proc.logdir, ignore_errors=True)
    assert result.returncode == 1
    assert "refusing to serve on '0.0.0.0'" in result.stderr and "COMPOZY_API_KEY" in result.stderr


def test_bind_rules() -> None:
    from compozy_nb.server import check_bind, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    assert is_loopback("127.3.2.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.1.2.3")
    assert not is_loopback("no-such-host.invalid")
    assert check_bind("0.0.0.0", None) is not None and check_bind("0.0.0.0", "") is not None
    assert check_bind("0.0.0.0", "token") is None and check_bind("127.0.0.1", None) is None


def test_unreachable_redis_at_start_fails_fast() -> None:
    proc = ServerProcess(f"redis://127.0.0.1:{free_port()}/0")
    result = subprocess.run(proc.command(), cwd=ROOT, env=proc.env(), capture_output=True, text=True, timeout=60)
    shutil.rmtree(proc.logdir, ignore_errors=True)
    assert result.returncode == 1 and "BACKEND_UNAVAILABLE" in result.stderr


def test_serve_without_fastapi_says_which_extra() -> None:
    """compozy_nb.server imports without FastAPI/uvicorn; serving then says which extra to install."""
    code = (
        "import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None\n"
        "import compozy_nb.server as s\n"
        "assert 'fastapi' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "sys.exit(s.serve_main('.', '127.0.0.1', 8000, None))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "the HTTP API needs the server extra: pip install 'compozy-nb[server]'" in result.stderr


# ---------------------------------------------------------------------------- Redis down
def test_503_when_redis_is_down(tmp_path: Path) -> None:
    own = RedisServer(free_port(), tmp_path)
    own.start()
    proc = ServerProcess(own.url)
    try:
        proc.start()
        with httpx.Client(base_url=proc.url, timeout=30) as client:
            k = key()
            ok(
                client.post(f"{MEMORY}/append", json={"key": k, "messages": [{"content": "before"}]}),
                "memory appended successfully",
            )
            own.stop()
            calls = [
                ("GET", f"{MEMORY}/read", {"params": {"key": k}}),
                ("GET", f"{MEMORY}/stats", {"params": {"key": k}}),
                ("GET", f"{MEMORY}/instances", {}),
                ("POST", f"{MEMORY}/append", {"json": {"key": k, "messages": [{"content": "x"}]}}),
                ("POST", f"{MEMORY}/write", {"json": {"key": k, "messages": [{"content": "x"}]}}),
                ("POST", f"{MEMORY}/delete", {"json": {"key": k}}),
                ("POST", f"{MEMORY}/flush", {"json": {"key": k, "force": True}}),
                ("POST", f"{MEMORY}/clear", {"json": {"key": k, "confirm": True}}),
                ("POST", "/workflows/w/tasks/t/execute", {"json": SEED_REQUEST}),
            ]
            # In parallel: each call spends ~1 s in redis-py's retries before giving up.
            with ThreadPoolExecutor(len(calls)) as pool:
                responses = list(pool.map(lambda call: client.request(call[0], call[1], **call[2]), calls))
            for response in responses:
                assert_error(response, 503, "BACKEND_UNAVAILABLE")
                assert response.headers.get("retry-after") == "1"
            health = assert_error(client.get(f"{MEMORY}/health", params={"key": k}), 503, "BACKEND_UNAVAILABLE")
            assert health["data"]["healthy"] is False
            healthz = assert_error(client.get("/healthz"), 503, "BACKEND_UNAVAILABLE")
            assert healthz["data"]["redis"]["ok"] is False
            run = client.post(
                "/workflows/chatbot-workflow/execute",
                json={"input": {"user_id": "u", "session_id": "s", "user_message": "hi"}},
            )
            assert run.status_code == 503 and run.json()["error"]["code"] == "BACKEND_UNAVAILABLE"
            # Bad input is still a 400 while Redis is down.
            assert_error(client.get(f"{MEMORY}/read", params={"key": "bad key"}), 400, "INVALID_KEY", "key")
            # Redis comes back: so does the API, without a restart.
            own.start()
            data = ok(client.get(f"{MEMORY}/read", params={"key": k}), "memory read successfully")
            assert data["total_count"] == 0  # a fresh redis-server without persistence
            assert ok(client.get("/healthz"), "healthy")["redis"]["ok"] is True
        assert "Traceback" not in proc.stderr()
    finally:
        proc.stop()
        own.stop()


# ---------------------------------------------------------------------------- OpenAPI fuzz
FUZZ_EXAMPLES = int(os.environ.get("COMPOZY_FUZZ_EXAMPLES", "12"))
DERANDOMIZE = "COMPOZY_FUZZ_EXAMPLES" not in os.environ  # a longer exploratory run is random


def test_openapi_fuzz_finds_no_server_error(api: httpx.Client, server: ServerProcess) -> None:
    """schemathesis generates valid (positive) and invalid (negative) requests for every operation of
    /openapi.json, with random path parameters and with the real memory/workflow/task ids."""
    import schemathesis
    from schemathesis.core.result import Ok
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    real_ids = {"memory_ref": "conversation_memory", "workflow_id": "chatbot-workflow", "task_id": "read_history"}
    seen: dict[str, int] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok)
        operation = result.ok()
        names = {p.name for p in operation.path_parameters}
        fixed = {name: real_ids[name] for name in names if name in real_ids}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in [None, fixed] if fixed else [None]:
                strategy = operation.as_strategy(mode, path_parameters=path_parameters)
                try:
                    fuzz(strategy, server.url, operation.label, seen)
                except Unsatisfiable:  # nothing invalid to send (e.g. /healthz has no parameters)
                    assert mode is GenerationMode.NEGATIVE, operation.label
    assert len(seen) == 13, seen  # 12 + the operation log


def fuzz(strategy: Any, base_url: str, label: str, seen: dict[str, int]) -> None:
    """Send FUZZ_EXAMPLES generated requests; none may get a 5xx."""

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def no_server_error(case: Any) -> None:
        response = case.call(base_url=base_url, timeout=30)
        seen[label] = seen.get(label, 0) + 1
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} query={case.query} body={case.body!r}: "
            f"{response.status_code} {response.text[:500]}"
        )

    no_server_error()


# ---------------------------------------------------------------------------- slow LLMs do not block
class SlowLLM:
    """An OpenAI-compatible endpoint on loopback that answers after ``delay`` seconds (or with ``status``)."""

    def __init__(self, delay: float, status: int = 200) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                time.sleep(outer.delay)
                reply = {
                    "choices": [{"message": {"role": "assistant", "content": "slow hello"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2},
                    "model": "slow",
                }
                data = json.dumps(reply if outer.status == 200 else {"error": {"message": "boom"}}).encode()
                try:
                    self.send_response(outer.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.delay = delay
        self.status = status
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def basic_task(base_url: str, timeout: float = 30) -> dict[str, Any]:
    return {
        "type": "basic",
        "provider": "openai",
        "model": "slow",
        "base_url": base_url,
        "timeout": timeout,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_a_slow_request_does_not_block_the_others(api: httpx.Client, server: ServerProcess) -> None:
    llm = SlowLLM(delay=2.0)
    try:
        k = key()

        async def scenario() -> tuple[httpx.Response, list[float], float]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                slow = asyncio.create_task(client.post("/workflows/w/tasks/t/execute", json=basic_task(llm.base_url)))
                await asyncio.sleep(0.3)  # the slow call now holds a worker thread, waiting on the LLM
                started = time.perf_counter()
                fast: list[float] = []
                for i in range(20):
                    t0 = time.perf_counter()
                    response = await client.post(f"{MEMORY}/append", json={"key": k, "messages": [{"content": f"{i}"}]})
                    assert response.status_code == 200
                    fast.append(time.perf_counter() - t0)
                fast_total = time.perf_counter() - started
                return await slow, fast, fast_total

        slow, _, fast_total = asyncio.run(scenario())
        assert slow.status_code == 200 and slow.json()["output"]["content"] == "slow hello"
        assert fast_total < 1.5, f"20 appends took {fast_total:.2f} s while a 2 s LLM call was in flight"
    finally:
        llm.close()


def test_llm_failures_are_gateway_errors(api: httpx.Client) -> None:
    failing = SlowLLM(delay=0, status=500)
    hanging = SlowLLM(delay=1.5)
    try:
        assert_error(api.post("/workflows/w/tasks/t/execute", json=basic_task(failing.base_url)), 502, "PROVIDER_ERROR")
        assert_error(
            api.post("/workflows/w/tasks/t/execute", json=basic_task(hanging.base_url, timeout=0.3)),
            504,
            "PROVIDER_TIMEOUT",
        )
    finally:
        failing.close()
        hanging.close()


def test_execute_rejects_integers_beyond_ijson(api: httpx.Client) -> None:
    body = {
        "type": "memory",
        "operation": "read",
        "memory_ref": "conversation_memory",
        "key_template": "k",
        "read_config": {"offset": 2**63},
    }
    assert_error(api.post("/workflows/w/tasks/t/execute", json=body), 400, "INVALID_REQUEST", "read_config")
    assert_error(api.get(f"{MEMORY}/read", params={"key": "k", "offset": 2**63}), 400, "INVALID_REQUEST", "offset")


# ---------------------------------------------------------------------------- in-process: a real bug is a 500
@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient.")
def test_a_bug_is_a_500_internal_error(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    from compozy_nb import Project
    from compozy_nb.memory.instance import MemoryInstance
    from compozy_nb.server import create_app

    project = Project.load(ROOT, redis_url=f"embedded://{uuid.uuid4().hex}")

    def broken(self: MemoryInstance, include_content: bool = False) -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(MemoryInstance, "_stats_steps", broken)  # the stats operation of both transports
    with TestClient(
        create_app(project, api_key=""), base_url="http://localhost", raise_server_exceptions=False
    ) as client:
        body = assert_error(client.get(f"{MEMORY}/stats", params={"key": "k"}), 500, "INTERNAL_ERROR")
        assert body["error"]["details"] == {"type": "RuntimeError"} and "a bug" not in body["message"]
        assert client.get(f"{MEMORY}/read", params={"key": "k"}).status_code == 200
    assert "a bug" in caplog.text


def test_merge_task_completes_a_partial_request_from_the_workflow() -> None:
    """``Project.merge_task`` (what the execute endpoint calls): the body over the defined task, a complete body
    as it is, an incomplete one for an undefined or differently typed task refused."""
    from compozy_nb import Project
    from compozy_nb.errors import ConfigError

    project = Project.load(ROOT, redis_url=f"embedded://{uuid.uuid4().hex}")
    merged = project.merge_task("chatbot-workflow", "read_history", {"operation": "stats"})
    assert (merged["operation"], merged["memory_ref"], merged["id"]) == ("stats", "conversation_memory", "read_history")
    complete = {"operation": "read", "memory_ref": "conversation_memory", "key_template": "k"}
    assert project.merge_task("nope", "nope", complete) == complete
    refused = {
        ("nope", "read_history", "memory"): "WORKFLOW_NOT_FOUND",
        ("chatbot-workflow", "nope", "memory"): "TASK_NOT_FOUND",
        ("chatbot-workflow", "read_history", "basic"): "INVALID_CONFIG",
    }
    for (workflow_id, task_id, kind), code in refused.items():
        with pytest.raises(ConfigError) as caught:
            project.merge_task(workflow_id, task_id, {"type": kind, "operation": "read"})
        assert caught.value.code == code


def test_threads_racing_for_the_first_backend_use_connect_once(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Project.backend`` connects under a lock: the server's worker threads (or ``run_many``'s) share one
    connection, never open several."""
    import compozy_nb.project as project_module
    from compozy_nb import Project

    calls: list[str | None] = []
    real_connect = cast(Any, project_module).connect  # the name compozy_nb.project imported (not re-exported)

    def slow_connect(url: str | None, **options: Any) -> Any:
        calls.append(url)
        time.sleep(0.05)  # widen the window in which an unlocked check lets other threads in
        return real_connect(url, **options)

    monkeypatch.setattr(project_module, "connect", slow_connect)
    project = Project.load(ROOT, redis_url=redis_url)
    start = threading.Barrier(16)

    def first_use(_: int) -> int:
        start.wait()
        return id(project.backend)

    with ThreadPoolExecutor(16) as pool:
        backends = set(pool.map(first_use, range(16)))
    assert len(calls) == 1 and len(backends) == 1


# ---------------------------------------------------------------------------- hand-written fuzz of task bodies
_OPERATIONS = ("read", "write", "append", "delete", "flush", "health", "clear", "stats")
_CONFIG_KEYS = {
    "read": ("limit", "offset", "last", "max_tokens", "archive"),
    "flush": ("strategy", "dry_run", "force", "threshold", "max_keys"),
    "health": ("include_stats", "check_connectivity"),
    "clear": ("confirm", "backup"),
    "stats": ("include_content", "group_by"),
}
_SMALL_INTS = st.integers(min_value=-2, max_value=50)
_CONFIG_VALUES = st.one_of(
    _SMALL_INTS,
    _SMALL_INTS,
    st.integers(min_value=2**31, max_value=2**70),
    st.booleans(),
    st.booleans(),
    st.floats(min_value=-1, max_value=2, allow_nan=False),
    st.sampled_from(["simple_fifo", "lru", "token_aware_lru", "hybrid_summary", "fifo", "role", "nope"]),
    st.none(),
)
_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)  # annotated: mypy infers a bare tuple literal as tuple[str]
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=_SURROGATES), max_size=30)
_KEY_PART = st.from_regex(r"[A-Za-z0-9_@.-]{1,12}", fullmatch=True)
_MESSAGE = st.fixed_dictionaries(
    {"content": st.one_of(_TEXT.filter(str.strip), _TEXT.filter(str.strip), _TEXT, st.integers(), st.none())},
    optional={
        "role": st.sampled_from(["user", "assistant", "tool", "user", "system", "bot"]),
        "id": st.one_of(_KEY_PART, st.integers(), st.booleans()),
        "meta": st.dictionaries(_TEXT, _TEXT, max_size=2),
    },
)


@st.composite
def task_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Memory task bodies, mostly valid (so most operations really run), with every kind of mistake mixed in:
    unknown operations/refs/fields, broken templates, bad payloads, config values out of range or huge."""
    valid = draw(st.integers(0, 9)) > 0
    operation = draw(st.sampled_from(_OPERATIONS)) if valid else draw(_TEXT)
    body: dict[str, Any] = {"operation": operation}
    if draw(st.integers(0, 9)):
        body["memory_ref"] = draw(st.sampled_from(["conversation_memory"] * 6 + ["CONVERSATION_MEMORY", "nope", ""]))
    if draw(st.booleans()):
        body["key_template"] = draw(
            st.one_of(
                st.builds(lambda a, b: f"{a}:{b}", _KEY_PART, _KEY_PART),
                st.sampled_from(["conv:{{.user_id}}", "{{.workflow.id}}:k", "{{ .x", "{{.missing}}", "__k", "k:ids"]),
                _TEXT,
            )
        )
    if operation in ("write", "append") or not draw(st.integers(0, 4)):
        body["payload"] = draw(st.one_of(_TEXT, _MESSAGE, st.lists(_MESSAGE, max_size=3), st.integers(), st.none()))
    keys = _CONFIG_KEYS.get(operation)
    if keys and draw(st.booleans()):
        names = st.sampled_from((*keys, "bogus") if not draw(st.integers(0, 5)) else keys)
        body[f"{operation}_config"] = draw(st.dictionaries(names, _CONFIG_VALUES, max_size=2))
    if operation == "clear" and draw(st.booleans()):
        body["clear_config"] = {"confirm": True}
    body["input"] = {"user_id": draw(_KEY_PART), "session_id": draw(st.one_of(_KEY_PART, _TEXT))}
    if not draw(st.integers(0, 9)):
        body["type"] = draw(st.sampled_from(["memory", "basic", None]))
    return body


def test_task_bodies_fuzz_finds_no_server_error(api: httpx.Client) -> None:
    """Structured random task bodies (real and unknown refs, templates, payloads, config blocks with huge
    integers) for a defined and an undefined task: never a 5xx; a 200 is the seed's shape."""

    @settings(
        max_examples=FUZZ_EXAMPLES * 6,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        body=task_bodies(),
        path=st.sampled_from(
            ["/workflows/w/tasks/t/execute", "/workflows/chatbot-workflow/tasks/read_history/execute"]
        ),
    )
    def no_server_error(body: dict[str, Any], path: str) -> None:
        response = api.post(path, json=body)
        assert response.status_code < 500, f"{path} {body!r}: {response.status_code} {response.text[:500]}"
        if response.status_code == 200:
            result = response.json()
            assert result["status"] == "completed" and {"key", "operation"} <= set(result["output"])
        else:
            assert response.json()["error"]["code"]

    no_server_error()


# ---------------------------------------------------------------------------- hardening (issue 10)
class TimeoutServer(ServerProcess):
    """The server with a short request-body timeout."""

    def __init__(self, redis_url: str, body_timeout: float) -> None:
        super().__init__(redis_url)
        self.body_timeout = body_timeout

    def command(self) -> list[str]:
        return [*super().command(), "--body-timeout", str(self.body_timeout)]


def _healthz_latencies_during_big_appends(server: ServerProcess, body: bytes, count: int = 3) -> list[float]:
    """Latencies of /healthz requests that started and ended while ``count`` appends of ``body`` were being
    sent one after the other (each must be refused with 413)."""
    in_flight = threading.Event()
    done = threading.Event()
    statuses: list[int] = []

    def send_big() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            in_flight.set()
            for _ in range(count):
                statuses.append(client.post(f"{MEMORY}/append", content=body, headers=JSON_TYPE).status_code)
        done.set()

    latencies: list[float] = []
    with httpx.Client(base_url=server.url, timeout=30) as health:
        health.get("/healthz")  # connection open before the measurement
        sender = threading.Thread(target=send_big)
        sender.start()
        in_flight.wait(30)
        while not done.is_set():
            started = time.perf_counter()
            response = health.get("/healthz")
            if not done.is_set():  # only samples taken entirely while a big request was in flight
                latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
        sender.join()
    assert statuses == [413] * count
    return latencies


def test_healthz_answers_while_an_oversize_append_is_refused(server: ServerProcess, redis_url: str) -> None:
    """Issue 10 item 4: sizes are checked before tokenizing and CPU work leaves the event loop, so /healthz
    answers within 200 ms while 7.5 MB messages are being refused. Before the fix every such request froze
    the event loop for seconds (tokenizing 7.5 MB); on a shared, noisy machine a round may still see one slow
    sample, so up to three rounds are measured and one must stay under 200 ms throughout."""
    big = json.dumps({"key": key(), "messages": [{"role": "user", "content": "a b " * 1_875_000}]}).encode()
    rounds: list[list[float]] = []
    for _ in range(3):
        latencies = _healthz_latencies_during_big_appends(server, big)
        assert len(latencies) >= 3, latencies  # /healthz was really measured during the flight
        rounds.append(latencies)
        if max(latencies) < 0.2:
            break
    assert min(max(r) for r in rounds) < 0.2, rounds


def test_dns_rebinding_foreign_host_is_refused_without_a_token(api: httpx.Client, redis_url: str) -> None:
    """Issue 10 item 14: with auth off, a Host that is not a local name gets 403 and nothing is read or
    deleted; loopback names and addresses (with or without port) are served."""
    k = key()
    api.post(f"{MEMORY}/append", json={"key": k, "messages": [{"content": "secret"}]})
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "10.0.0.8"):
        read = api.get(f"{MEMORY}/read", params={"key": k}, headers={"Host": host})
        assert_error(read, 403, "HOST_NOT_ALLOWED")
        assert "secret" not in read.text
        assert_error(api.post(f"{MEMORY}/delete", json={"key": k}, headers={"Host": host}), 403, "HOST_NOT_ALLOWED")
    for host in ("localhost", "localhost:8000", "127.0.0.1", "[::1]:80", "app.localhost"):
        read = api.get(f"{MEMORY}/read", params={"key": k}, headers={"Host": host})
        assert read.status_code == 200, (host, read.text)
        assert read.json()["data"]["total_count"] == 1


def test_any_host_is_served_with_a_token(auth_server: ServerProcess, redis_url: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Host": "memory.example.com"}
    response = httpx.get(f"{auth_server.url}{MEMORY}/read", params={"key": key()}, headers=headers, timeout=30)
    assert response.status_code == 200, response.text


def test_allowed_hosts_list(redis_url: str) -> None:
    """COMPOZY_ALLOWED_HOSTS (or ``allowed_hosts=``) adds names; ``*`` turns the check off."""
    from fastapi.testclient import TestClient

    from compozy_nb import Project
    from compozy_nb.server import create_app

    project = Project.load(ROOT, redis_url=redis_url)
    with TestClient(create_app(project, api_key="", allowed_hosts=["api.internal"])) as client:
        assert client.get("/healthz", headers={"Host": "api.internal:8000"}).status_code == 200
        assert_error(client.get("/healthz", headers={"Host": "other.internal"}), 403, "HOST_NOT_ALLOWED")
    with TestClient(create_app(project, api_key="", allowed_hosts=["*"])) as client:
        assert client.get("/healthz", headers={"Host": "anything.example"}).status_code == 200


def _stalled_socket(port: int) -> socket.socket:
    """A connection that sends headers announcing 100 body bytes, sends 10, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST {MEMORY}/append HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"key": "k')
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_stalled_bodies_get_408_and_their_connections_are_closed(redis_server: RedisServer) -> None:
    """Issue 10 item 14: 50 connections that never finish their body are answered 408 and closed after the
    body timeout; the server keeps answering meanwhile."""
    proc = TimeoutServer(redis_server.url, body_timeout=1.0).start()
    try:
        sockets = [_stalled_socket(proc.port) for _ in range(50)]
        assert httpx.get(f"{proc.url}/healthz", timeout=30).status_code == 200
        for sock in sockets:
            with sock:
                reply = _read_until_closed(sock)  # recv returns b"" once the server closed the connection
            assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
            assert b"REQUEST_TIMEOUT" in reply
        assert "Traceback" not in proc.stderr()
    finally:
        proc.stop()


def test_connections_without_complete_headers_are_closed(redis_server: RedisServer) -> None:
    """Issue 10 item 14: connections that send nothing, or half a request line, are closed after the timeout
    (uvicorn alone keeps them open forever); a complete request on another connection is answered meanwhile."""
    proc = TimeoutServer(redis_server.url, body_timeout=1.0).start()
    try:
        silent = [socket.create_connection(("127.0.0.1", proc.port), timeout=30) for _ in range(20)]
        partial = [socket.create_connection(("127.0.0.1", proc.port), timeout=30) for _ in range(20)]
        for sock in partial:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert httpx.get(f"{proc.url}/healthz", timeout=30).status_code == 200
        for sock in silent + partial:
            with sock:
                assert _read_until_closed(sock) == b""  # closed without an answer
    finally:
        proc.stop()


GATED_WORKFLOW = """
name: gated
tasks:
  - id: reply
    type: basic
    provider: python
    function: gated
    memory:
      - {id: chat, key: "chat:{{.user}}"}
    messages:
      - {role: user, content: "{{.text}}"}
"""


def test_task_and_workflow_runs_wait_for_their_model_on_the_event_loop(redis_url: str) -> None:
    """With a single worker thread for synchronous endpoints, 6 workflow runs and 6 task executions whose
    model awaits one gate are all waiting at once: a run holds no thread while its model works. When the gate
    opens every one completes and stores its exchange."""
    from compozy_nb import Project
    from compozy_nb.server import create_app

    project = Project("gated", redis_url=redis_url)
    project.add_yaml('resource: memory\nid: chat\ntype: buffer\nkey: "chat:{{.user}}"\n')
    project.add_yaml(GATED_WORKFLOW)
    waiting: list[str] = []

    async def main() -> list[httpx.Response]:
        gate = asyncio.Event()

        @project.llm("gated")
        async def gated(messages: list[dict[str, Any]]) -> str:
            waiting.append(messages[-1]["content"])
            await gate.wait()
            content: str = messages[-1]["content"]
            return "ok: " + content

        app = create_app(project, api_key="", threads=1)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                runs = [
                    client.post("/workflows/gated/execute", json={"input": {"user": f"w{i}", "text": f"run {i}"}})
                    for i in range(6)
                ] + [
                    client.post(
                        "/workflows/gated/tasks/reply/execute", json={"input": {"user": f"t{i}", "text": f"task {i}"}}
                    )
                    for i in range(6)
                ]
                pending = asyncio.gather(*runs)

                async def all_waiting() -> None:
                    while len(waiting) < 12:
                        await asyncio.sleep(0.01)

                await asyncio.wait_for(all_waiting(), timeout=60)  # a guard against a hang, not a time limit
                gate.set()
                return await pending

    responses = asyncio.run(main())
    assert sorted(waiting) == sorted([f"run {i}" for i in range(6)] + [f"task {i}" for i in range(6)])
    assert [r.status_code for r in responses] == [200] * 12
    assert responses[0].json()["output"]["content"] == "ok: run 0"
    assert responses[6].json()["output"]["content"] == "ok: task 0"
    for user, text in [("w3", "run 3"), ("t5", "task 5")]:
        messages = project.memory("chat", user=user).read()["messages"]
        assert [m["content"] for m in messages] == [text, "ok: " + text]
