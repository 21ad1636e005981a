"""Transcripts through every shell: read filters in tasks (read_config), the magic and HTTP; the CLI's memory
export/import and ``exec`` with tool-call payloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from compozy_nb import Project
from compozy_nb.backends import Backend
from compozy_nb.errors import CompozyNbError

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("compozy-nb")
MEMORY = "/api/v0/memory/conversation_memory"
TURN: list[dict[str, Any]] = [
    {"role": "user", "content": "weather?", "id": "m1"},
    {
        "role": "assistant",
        "content": None,
        "id": "m2",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny", "id": "m3"},
    {"role": "assistant", "content": "Sunny.", "id": "m4"},
]


def plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in ("tokens", "ts")} for m in messages]


def test_read_config_filters_in_a_task(backend: Backend) -> None:
    project = Project.load(ROOT / "examples" / "memory-workflow")
    project.use_backend(backend)
    base = {"memory_ref": "conversation_memory", "key_template": "conv:u1:s1"}
    project.execute({**base, "operation": "append", "payload": TURN})
    out = project.execute({**base, "operation": "read", "read_config": {"roles": ["tool", "assistant"]}})
    assert [m["id"] for m in out["output"]["messages"]] == ["m2", "m3", "m4"]
    out = project.execute({**base, "operation": "read", "read_config": {"roles": "user", "since": "2000-01-01"}})
    assert [m["id"] for m in out["output"]["messages"]] == ["m1"]
    out = project.execute({**base, "operation": "read", "read_config": {"until": "2000-01-01T00:00:00Z"}})
    assert out["output"]["messages"] == []
    with pytest.raises(CompozyNbError) as info:
        project.execute({**base, "operation": "read", "read_config": {"since": "not a date"}})
    assert info.value.code in ("INVALID_CONFIG", "INVALID_PAYLOAD") and "since" in str(info.value)


@pytest.fixture
def ip(backend: Backend) -> Iterator[Any]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "compozy_nb")
    magics = shell.magics_manager.registry["Compozy"]
    magics._project = None
    magics.project.use_backend(backend)
    magics.project.add_yaml("resource: memory\nid: notes\ntype: buffer\n")
    yield shell
    magics._project = None
    shell.user_ns.pop("out", None)


def test_magic_read_filters(ip: Any) -> None:
    ip.user_ns["turn"] = TURN
    ip.run_line_magic("compozy", "memory append notes --key n:1 --payload $turn")
    ip.run_line_magic("compozy", "memory read notes --key n:1 --role tool --role user -o out")
    assert list(ip.user_ns["out"]["id"]) == ["m1", "m3"]
    ip.run_line_magic("compozy", "memory read notes --key n:1 --since 2000-01-01 --until 2999-01-01 -o out")
    assert len(ip.user_ns["out"]) == 4
    frame = ip.run_line_magic("compozy", "memory read notes --key n:1 --role assistant")
    assert list(frame["id"]) == ["m2", "m4"] and frame["tool_calls"].iloc[1] is None


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient.")
def test_http_read_filters_and_transcript_bodies() -> None:
    from fastapi.testclient import TestClient

    from compozy_nb.server import create_app

    project = Project.load(ROOT, redis_url=f"embedded://{uuid.uuid4().hex}")
    with TestClient(
        create_app(project, api_key=""), base_url="http://localhost", raise_server_exceptions=False
    ) as client:
        response = client.post(f"{MEMORY}/append", json={"key": "k", "messages": TURN})
        assert response.status_code == 200, response.text
        response = client.get(f"{MEMORY}/read", params=[("key", "k"), ("role", "tool"), ("role", "assistant")])
        assert response.status_code == 200, response.text
        assert plain(response.json()["data"]["messages"]) == TURN[1:]
        response = client.get(f"{MEMORY}/read", params={"key": "k", "since": "2999-01-01"})
        assert response.json()["data"]["messages"] == []
        response = client.get(f"{MEMORY}/read", params={"key": "k", "since": "soon"})
        assert response.status_code == 400 and response.json()["error"]["code"] == "INVALID_PAYLOAD"
        # NaN / Infinity in a JSON body: refused, nothing stored
        body = '{"key": "k2", "messages": [{"role": "user", "content": "x", "score": NaN}]}'
        response = client.post(f"{MEMORY}/append", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert client.get(f"{MEMORY}/read", params={"key": "k2"}).json()["data"]["messages"] == []


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COMPOZY_REDIS_URL"}
    proc = subprocess.run([str(CLI), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


def test_cli_memory_export_import(redis_url: str, tmp_path: Path) -> None:
    project = Project.load(ROOT / "examples" / "memory-workflow", redis_url=redis_url)
    mem = project.memory("conversation_memory", key="conv:u1:s1")
    mem.append(TURN)
    example = str(ROOT / "examples" / "memory-workflow")
    for suffix in ("jsonl", "parquet"):
        path = tmp_path / f"dump.{suffix}"
        proc = cli(
            "memory",
            "export",
            "conversation_memory",
            "--key",
            "conv:u1:s1",
            str(path),
            "--project",
            example,
            "--redis",
            redis_url,
            cwd=tmp_path,
        )
        assert proc.returncode == 0 and "exported 4 message(s)" in proc.stdout, proc.stderr
        proc = cli(
            "memory",
            "import",
            "conversation_memory",
            "--key",
            f"copy:{suffix}",
            str(path),
            "--project",
            example,
            "--redis",
            redis_url,
            "--json",
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["appended"] == 4
        copy = project.memory("conversation_memory", key=f"copy:{suffix}").read()["messages"]
        assert plain(copy) == TURN
        again = cli(
            "memory",
            "import",
            "conversation_memory",
            "--key",
            f"copy:{suffix}",
            str(path),
            "--project",
            example,
            "--redis",
            redis_url,
            cwd=tmp_path,
        )
        assert "imported 0 message(s)" in again.stdout and "(4 already there)" in again.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\n")
    proc = cli(
        "memory",
        "import",
        "conversation_memory",
        "--key",
        "k",
        str(bad),
        "--project",
        example,
        "--redis",
        redis_url,
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error [INVALID_CONFIG]")


def test_cli_exec_accepts_transcripts(tmp_path: Path) -> None:
    request = {
        "memory_ref": "conversation_memory",
        "key_template": "conv:u9:s9",
        "operation": "append",
        "payload": TURN,
    }
    path = tmp_path / "req.json"
    path.write_text(json.dumps(request), encoding="utf-8")
    proc = cli("exec", str(path), "--project", str(ROOT / "examples" / "memory-workflow"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"appended": 4' in proc.stdout


def _hostile_bodies() -> list[tuple[str, str]]:
    """The transcript corpus of test_transcripts as raw HTTP bodies, plus numbers only JSON text can carry."""
    from tests.hostile_cases import TRANSCRIPT_CASES as BAD

    bodies = [(case, json.dumps({"key": "h", "messages": [payload]})) for case, payload, _ in BAD if "NaN" not in case]
    bodies += [
        ("NaN in a tool call id", '{"key": "h", "messages": [{"role": "tool", "tool_call_id": NaN, "content": "x"}]}'),
        (
            "1e999 in parts",
            '{"key": "h", "messages": [{"role": "user", "content": [{"type": "text", "text": 1e999}]}]}',
        ),
        (
            "-Infinity in metadata",
            '{"key": "h", "messages": [{"role": "user", "content": "x", "m": {"a": -Infinity}}]}',
        ),
        ("Content shadowing", '{"key": "h", "messages": [{"role": "user", "content": "x", "Content": {"a": 1}}]}'),
        ("deep parts", '{"key": "h", "messages": [{"role": "user", "content": [' + "[" * 50 + "]" * 50 + "]}]}"),
    ]
    return bodies


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient.")
def test_hostile_transcripts_over_http_are_400_and_store_nothing() -> None:
    from fastapi.testclient import TestClient

    from compozy_nb.server import create_app

    project = Project.load(ROOT, redis_url=f"embedded://{uuid.uuid4().hex}")
    with TestClient(
        create_app(project, api_key=""), base_url="http://localhost", raise_server_exceptions=False
    ) as client:
        for case, body in _hostile_bodies():
            for op in ("append", "write"):
                response = client.post(f"{MEMORY}/{op}", content=body, headers={"Content-Type": "application/json"})
                assert response.status_code == 400, (case, response.text)
                error = response.json()["error"]
                assert error["code"] in ("INVALID_PAYLOAD", "INVALID_REQUEST"), (case, error)
        assert client.get(f"{MEMORY}/read", params={"key": "h"}).json()["data"]["total_count"] == 0


def test_hostile_transcripts_through_cli_exec_are_one_line_errors(tmp_path: Path) -> None:
    from tests.hostile_cases import TRANSCRIPT_CASES as BAD

    requests = [
        {"memory_ref": "conversation_memory", "key_template": "conv:h:1", "operation": "append", "payload": payload}
        for case, payload, _ in BAD[:6]
    ]
    example = str(ROOT / "examples" / "memory-workflow")
    for request in requests:
        path = tmp_path / "req.json"
        path.write_text(json.dumps(request), encoding="utf-8")
        proc = cli("exec", str(path), "--project", example, cwd=tmp_path)
        assert proc.returncode == 1, proc.stdout
        out = json.loads(proc.stdout)
        assert out["status"] == "failed" and out["error"]["code"] == "INVALID_PAYLOAD", out
        assert out["error"]["field"].startswith("payload"), out
