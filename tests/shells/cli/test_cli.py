"""The ``compozy-nb`` command, mostly as a real subprocess: demo, validate (file:line on broken projects), run,
exec, memory ls/show against a real redis-server, schema, and no traceback for bad input.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from compozy_nb import Project
from compozy_nb.cli import main

REPO_ROOT = Path(__file__).resolve().parents[3]
CLI = Path(sys.executable).with_name("compozy-nb")
WRITE_REQUEST = REPO_ROOT / "examples" / "requests" / "write.json"
READ_REQUEST = REPO_ROOT / "examples" / "requests" / "read.json"
CHAT_INPUT = {"user_id": "u1", "session_id": "s1", "user_message": "Hello there"}


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the console script; never lets a traceback through unnoticed."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("COMPOZY_REDIS_URL", "OPENAI_API_KEY")}
    full_env.update(env or {})
    proc = subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO_ROOT,
        env=full_env,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    return proc


def json_documents(text: str) -> list[Any]:
    """Every JSON value printed one after another (exec prints one per request)."""
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return docs
        value, index = decoder.raw_decode(text, index)
        docs.append(value)


def write_project(root: Path, files: dict[str, str]) -> Path:
    """A project directory: the example memory resource plus ``files`` (relative path -> text)."""
    (root / "memory").mkdir(parents=True, exist_ok=True)
    (root / "workflows").mkdir(parents=True, exist_ok=True)
    (root / "compozy.yaml").write_text("name: broken\n")
    (root / "memory" / "conversation.yaml").write_text((REPO_ROOT / "memory" / "conversation.yaml").read_text())
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def line_of(text: str, needle: str) -> int:
    """1-based line number of the first line containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


# ------------------------------------------------------------------------------------------ demo
def table_rows(stdout: str, title: str) -> list[str]:
    """The data rows of the table printed after the line starting with ``title``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 3 :]:  # title, header, dashes
        if not line.strip():
            break
        rows.append(line)
    return rows


def check_demo_output(stdout: str) -> None:
    rows = table_rows(stdout, "memory 'conv:demo-user:s1'")
    assert len(rows) == 6
    assert [row.split()[0] for row in rows] == [str(i) for i in range(6)]
    assert [row.split()[1] for row in rows] == ["user", "assistant"] * 3
    assert "[REDACTED]" in rows[0]
    assert "ann@example.com" not in stdout.split("memory 'conv:demo-user:s1'")[1]
    stats = table_rows(stdout, "stats:")
    header = stdout.splitlines()[stdout.splitlines().index("stats:") + 1]
    assert header.split()[:3] == ["message_count", "token_count", "max_tokens"]
    assert stats[0].split()[0] == "6"
    assert stats[0].split()[2] == "4000"
    for turn in (1, 2, 3):
        assert f"turn {turn}" in stdout


def test_demo_on_the_embedded_backend() -> None:
    proc = cli("demo")

    assert proc.returncode == 0, proc.stderr
    assert "embedded" in proc.stdout
    check_demo_output(proc.stdout)


def test_demo_on_a_real_redis(redis_url: str) -> None:
    proc = cli("demo", "--redis", redis_url)

    assert proc.returncode == 0, proc.stderr
    check_demo_output(proc.stdout)
    client = redis.Redis.from_url(redis_url)
    stored = [json.loads(raw) for raw in client.lrange("compozy:demo:memory:conv:demo-user:s1", 0, -1)]
    assert [m["role"] for m in stored] == ["user", "assistant"] * 3
    assert "[REDACTED]" in stored[0]["content"] and "ann@example.com" not in json.dumps(stored)
    assert client.hget("compozy:demo:memory:conv:demo-user:s1:metadata", "message_count") == b"6"


def test_demo_twice_starts_over(redis_url: str) -> None:
    assert cli("demo", "--redis", redis_url).returncode == 0
    proc = cli("demo", "--redis", redis_url)

    assert proc.returncode == 0
    check_demo_output(proc.stdout)


def test_demo_on_the_repo_root_project() -> None:
    proc = cli("demo", "--project", str(REPO_ROOT))
    assert proc.returncode == 0, proc.stderr
    check_demo_output(proc.stdout)


# ------------------------------------------------------------------------------------------ validate
def test_validate_the_example_project() -> None:
    proc = cli("validate", "--project", str(REPO_ROOT))

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok:")
    assert "1 workflow(s)" in proc.stdout


def test_validate_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--project", str(REPO_ROOT)]) == 0
    assert "ok:" in capsys.readouterr().out


UNKNOWN_REF = """\
name: w
tasks:
  - id: read
    type: memory
    operation: read
    memory_ref: no_such_memory
    key_template: "conv:{{.user_id}}"
"""

LATER_TASK = """\
name: w
tasks:
  - id: first
    type: memory
    operation: append
    memory_ref: conversation_memory
    key_template: "k:{{.tasks.second.output.count}}"
    payload: "hello"
  - id: second
    type: memory
    operation: read
    memory_ref: conversation_memory
    key_template: "k"
"""

LATER_OUTPUT = """\
name: w
tasks:
  - id: answer
    type: basic
    provider: scripted
    replies: ["ok"]
    messages:
      - role: system
        content: "be brief"
      - role: user
        content: "{{.history}}"
  - id: read
    type: memory
    operation: read
    memory_ref: conversation_memory
    key_template: "k"
    output: history
"""

MALFORMED = """\
name: w
tasks:
  - id: read
    type: memory
   operation: read
"""

TOP_LEVEL_TYPO = """\
name: w
descripton: a typo
tasks:
  - id: read
    type: memory
    operation: read
    memory_ref: conversation_memory
    key_template: "k"
"""


@pytest.mark.parametrize(
    ("text", "needle", "expected"),
    [
        (UNKNOWN_REF, "memory_ref: no_such_memory", ["no_such_memory", "task 'read'", "conversation_memory"]),
        (LATER_TASK, 'key_template: "k:{{', ["task 'first'", "'second'", "not run yet"]),
        pytest.param(
            LATER_OUTPUT,
            'content: "{{.history}}"',
            ["task 'answer'", "history", "not run yet"],
        ),
        (MALFORMED, "   operation: read", ["malformed YAML"]),
        (TOP_LEVEL_TYPO, "descripton:", ["unknown field 'descripton'", "did you mean 'description'"]),
    ],
    ids=["unknown-memory-ref", "later-task-output", "later-named-output", "malformed-yaml", "unknown-field"],
)
def test_validate_broken_workflow_points_at_the_line(
    tmp_path: Path, text: str, needle: str, expected: list[str]
) -> None:
    root = write_project(tmp_path, {"workflows/w.yaml": text})
    workflow_file = root / "workflows" / "w.yaml"

    proc = cli("validate", "--project", str(root))

    assert proc.returncode == 1
    assert proc.stdout == ""
    location = f"{workflow_file}:{line_of(text, needle)}"
    error_lines = [line for line in proc.stderr.splitlines() if location in line]
    assert error_lines, f"expected {location} in:\n{proc.stderr}"
    for fragment in expected:
        assert fragment in error_lines[0], error_lines[0]


def test_validate_reference_to_a_later_named_output(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"workflows/w.yaml": LATER_OUTPUT})

    proc = cli("validate", "--project", str(root))

    assert proc.returncode == 1
    assert f"{root / 'workflows' / 'w.yaml'}:" in proc.stderr
    assert "task 'answer'" in proc.stderr and "'history'" in proc.stderr and "not run yet" in proc.stderr
    assert "messages[1].content" in proc.stderr  # names the field


BAD_TYPE = """\
name: w
tasks:
  - id: think
    type: llm
    operation: read
"""


def test_validate_bad_task_type(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"workflows/w.yaml": BAD_TYPE})

    proc = cli("validate", "--project", str(root))

    assert proc.returncode == 1
    assert re.search(rf"{re.escape(str(root / 'workflows' / 'w.yaml'))}:\d+", proc.stderr)
    assert "'llm'" in proc.stderr
    assert "memory" in proc.stderr and "basic" in proc.stderr  # names the valid types


def test_validate_bad_task_type_points_at_the_type_line(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"workflows/w.yaml": BAD_TYPE})

    proc = cli("validate", "--project", str(root))

    assert f"{root / 'workflows' / 'w.yaml'}:{line_of(BAD_TYPE, 'type: llm')}" in proc.stderr


TASK_TYPO = """\
name: w
tasks:
  - id: read
    type: memory
    operation: read
    memory_ref: conversation_memory
    key_templte: "k"
"""

BASIC_TYPO = """\
name: w
tasks:
  - id: answer
    type: basic
    provider: scripted
    replies: ["ok"]
    messages:
      - role: user
        content: hi
    temprature: 0.2
"""


@pytest.mark.parametrize(
    ("text", "typo", "suggestion"),
    [(TASK_TYPO, "key_templte", "key_template"), (BASIC_TYPO, "temprature", "temperature")],
    ids=["memory-task", "basic-task"],
)
def test_validate_unknown_task_field_did_you_mean(tmp_path: Path, text: str, typo: str, suggestion: str) -> None:
    root = write_project(tmp_path, {"workflows/w.yaml": text})

    proc = cli("validate", "--project", str(root))

    assert proc.returncode == 1
    assert f"{root / 'workflows' / 'w.yaml'}:{line_of(text, typo)}" in proc.stderr
    assert f"did you mean '{suggestion}'" in proc.stderr
    assert ".memory." not in proc.stderr and ".basic." not in proc.stderr  # field path as written: tasks[0].x


MEMORY_TYPO = """\
resource: memory
id: notes
type: buffer
max_tokns: 100
"""


def test_validate_unknown_memory_field_did_you_mean(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"memory/notes.yaml": MEMORY_TYPO})

    proc = cli("validate", "--project", str(root))

    assert proc.returncode == 1
    assert f"{root / 'memory' / 'notes.yaml'}:4" in proc.stderr
    assert "did you mean 'max_tokens'" in proc.stderr


def test_validate_reports_every_cross_check_problem(tmp_path: Path) -> None:
    root = write_project(
        tmp_path, {"workflows/a.yaml": UNKNOWN_REF, "workflows/b.yaml": LATER_TASK.replace("name: w", "name: w2")}
    )

    proc = cli("validate", "--project", str(root))

    assert proc.returncode == 1
    assert str(root / "workflows" / "a.yaml") in proc.stderr
    assert str(root / "workflows" / "b.yaml") in proc.stderr
    assert "2 problem(s) found" in proc.stderr


def test_validate_missing_directory() -> None:
    proc = cli("validate", "--project", "/no/such/project/dir")
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr


# ------------------------------------------------------------------------------------------ run
def test_run_prints_the_run_json() -> None:
    proc = cli("run", "chatbot-workflow", "--project", str(REPO_ROOT), "--input", json.dumps(CHAT_INPUT))

    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    assert run["status"] == "completed"
    assert run["workflow_id"] == "chatbot-workflow"
    assert list(run["tasks"]) == ["read_history", "generate_response", "save_interaction"]
    assert run["output"] == {"reply": "You said: Hello there (turn 1)", "history_count": 0}


def test_run_input_from_a_file_and_memory_across_processes(tmp_path: Path, redis_url: str) -> None:
    input_file = tmp_path / "input.json"
    input_file.write_text(json.dumps(CHAT_INPUT))
    args = ("run", "chatbot-workflow", "--project", str(REPO_ROOT), "--redis", redis_url, "--input", f"@{input_file}")

    first, second = cli(*args), cli(*args)

    assert first.returncode == second.returncode == 0, second.stderr
    run = json.loads(second.stdout)
    assert run["output"]["history_count"] == 2  # the first process's turn is in Redis
    assert redis.Redis.from_url(redis_url).llen("compozy:demo:memory:conv:u1:s1") == 4


def test_run_unknown_workflow() -> None:
    proc = cli("run", "no-such-workflow", "--project", str(REPO_ROOT), "--input", "{}")

    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["status"] == "failed"
    assert result["error"]["code"] == "WORKFLOW_NOT_FOUND"
    assert "chatbot-workflow" in result["error"]["message"]


def test_run_missing_required_input() -> None:
    proc = cli("run", "chatbot-workflow", "--project", str(REPO_ROOT), "--input", '{"user_id": "u1"}')

    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["status"] == "failed"
    assert result["error"]["code"] == "INVALID_CONFIG"
    assert "session_id" in result["error"]["message"]


def test_run_failing_task_exits_1_with_the_run_json(tmp_path: Path) -> None:
    root = write_project(
        tmp_path,
        {
            "workflows/w.yaml": """\
name: w
tasks:
  - id: save
    type: memory
    operation: append
    memory_ref: conversation_memory
    key_template: "k:{{.missing}}"
    payload: "x"
"""
        },
    )
    proc = cli("run", "w", "--project", str(root), "--input", "{}")

    assert proc.returncode == 1
    run = json.loads(proc.stdout)
    assert run["status"] == "failed"
    assert run["error"]["code"] == "TEMPLATE_ERROR"
    assert run["tasks"]["save"]["status"] == "failed"


def test_run_in_process(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    code = main(
        [
            "run",
            "chatbot-workflow",
            "--project",
            str(REPO_ROOT),
            "--redis",
            redis_url,
            "--input",
            json.dumps(CHAT_INPUT),
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"


# ------------------------------------------------------------------------------------------ exec
def test_exec_seed_write_then_read_in_one_call() -> None:
    proc = cli("exec", str(WRITE_REQUEST), str(READ_REQUEST), "--project", str(REPO_ROOT))

    assert proc.returncode == 0, proc.stderr
    write, read = json_documents(proc.stdout)
    assert write["status"] == read["status"] == "completed"
    assert write["output"]["operation"] == "write"
    assert write["output"]["key"] == "conv:user123:sess456"
    assert write["output"]["count"] == 1
    assert read["output"]["operation"] == "read"
    assert [(m["role"], m["content"]) for m in read["output"]["messages"]] == [
        ("user", "Hello, my email is [REDACTED]")
    ]


def test_exec_with_at_files_on_a_real_redis(redis_url: str) -> None:
    proc = cli("exec", f"@{WRITE_REQUEST}", f"@{READ_REQUEST}", "--project", str(REPO_ROOT), "--redis", redis_url)

    assert proc.returncode == 0, proc.stderr
    assert json_documents(proc.stdout)[1]["output"]["count"] == 1
    assert redis.Redis.from_url(redis_url).llen("compozy:demo:memory:conv:user123:sess456") == 1


def test_exec_basic_task() -> None:
    body = {
        "type": "basic",
        "provider": "scripted",
        "reply_template": "echo: {{.last_user_message}}",
        "messages": [{"role": "user", "content": "hi {{.name}}"}],
        "input": {"name": "Ann"},
    }
    proc = cli("exec", json.dumps(body), "--project", str(REPO_ROOT))

    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "completed"
    assert result["output"]["content"] == "echo: hi Ann"
    assert result["output"]["prompt"] == [{"role": "user", "content": "hi Ann"}]


def test_exec_stops_at_the_first_failing_request(capsys: pytest.CaptureFixture[str]) -> None:
    bad = {"type": "memory", "operation": "read", "memory_ref": "nope", "key_template": "k"}
    code = main(
        ["exec", json.dumps(bad), str(READ_REQUEST), "--project", str(REPO_ROOT), "--redis", "embedded://cli-exec-stop"]
    )

    assert code == 1
    docs = json_documents(capsys.readouterr().out)
    assert len(docs) == 1
    assert docs[0]["status"] == "failed"
    assert docs[0]["error"]["code"] == "MEMORY_NOT_FOUND"


# ------------------------------------------------------------------------------------------ memory ls / show
@pytest.fixture
def seeded(redis_url: str) -> str:
    """Three instances written from Python into the real Redis, under the repo project's name."""
    project = Project.load(REPO_ROOT, redis_url=redis_url)
    assert project.name == "demo"
    for key, n in (("conv:u1:s1", 3), ("conv:u1:s2", 1), ("conv:u2:s1", 2)):
        project.memory("conversation_memory", key=key).append(
            [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{key} message {i}"} for i in range(n)]
        )
    project.backend.close()
    return redis_url


def test_memory_ls_lists_only_matching_keys(seeded: str) -> None:
    proc = cli("memory", "ls", "--pattern", "conv:u1:*", "--redis", seeded, "--project", str(REPO_ROOT))

    assert proc.returncode == 0, proc.stderr
    keys = [line.split()[0] for line in proc.stdout.splitlines()[2:] if line.strip()]
    assert sorted(keys) == ["conv:u1:s1", "conv:u1:s2"]
    counts = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()[2:] if line.strip()}
    assert counts == {"conv:u1:s1": "3", "conv:u1:s2": "1"}


def test_memory_ls_json(seeded: str) -> None:
    proc = cli("memory", "ls", "--pattern", "conv:u1:*", "--redis", seeded, "--project", str(REPO_ROOT), "--json")

    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert sorted((r["key"], r["message_count"]) for r in rows) == [("conv:u1:s1", 3), ("conv:u1:s2", 1)]


def test_memory_ls_all_and_none(seeded: str) -> None:
    every = cli("memory", "ls", "--redis", seeded, "--project", str(REPO_ROOT), "--json")
    assert sorted(r["key"] for r in json.loads(every.stdout)) == ["conv:u1:s1", "conv:u1:s2", "conv:u2:s1"]

    none = cli("memory", "ls", "--pattern", "nobody:*", "--redis", seeded, "--project", str(REPO_ROOT))
    assert none.returncode == 0
    assert none.stdout.strip() == "(none)"


def test_memory_ls_ignores_another_projects_keys(seeded: str, tmp_path: Path) -> None:
    other = write_project(tmp_path, {})  # project name 'broken'
    proc = cli("memory", "ls", "--redis", seeded, "--project", str(other), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_memory_show(seeded: str) -> None:
    proc = cli(
        "memory", "show", "conversation_memory", "--key", "conv:u1:s1", "--redis", seeded, "--project", str(REPO_ROOT)
    )

    assert proc.returncode == 0, proc.stderr
    for i in range(3):
        assert f"conv:u1:s1 message {i}" in proc.stdout
    assert "conv:u1:s2" not in proc.stdout


def test_memory_show_json(seeded: str) -> None:
    proc = cli(
        "memory",
        "show",
        "conversation_memory",
        "--key",
        "conv:u1:s1",
        "--redis",
        seeded,
        "--project",
        str(REPO_ROOT),
        "--json",
        "--last",
        "2",
    )

    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [m["content"] for m in data["read"]["messages"]] == ["conv:u1:s1 message 1", "conv:u1:s1 message 2"]
    assert data["stats"]["message_count"] == 3


# ------------------------------------------------------------------------------------------ schema
def test_schema_prints_all_schemas() -> None:
    proc = cli("schema")

    assert proc.returncode == 0, proc.stderr
    schemas = json.loads(proc.stdout)
    assert set(schemas) == {"memory", "workflow", "project"}
    assert "tasks" in schemas["workflow"]["properties"]
    assert "autoload" in schemas["project"]["properties"]


def test_schema_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "memory"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "max_tokens" in schema["properties"]
    assert "privacy_policy" in schema["properties"]


# ------------------------------------------------------------------------------------------ bad input
BAD_INPUT = [
    ["exec", "{not json"],
    ["exec", "@/no/such/request.json"],
    ["exec", "[1, 2]"],
    ["exec", '{"type": "basic"}'],
    ["exec", '{"type": "memory", "operation": "explode", "memory_ref": "conversation_memory"}'],
    [
        "exec",
        '{"type": "memory", "operation": "read", "memory_ref": "conversation_memory", "key_template": "{{.missing}}"}',
    ],
    ["run", "chatbot-workflow", "--input", "{not json"],
    ["run", "chatbot-workflow", "--input", "@/no/such/input.json"],
    ["run", "chatbot-workflow", "--input", "[1]"],
    ["run", "chatbot-workflow", "--input", '{"user_id": 5, "session_id": "s", "user_message": "m"}'],
    ["run", "chatbot-workflow", "--project", "/no/such/dir"],
    ["memory", "show", "conversation_memory", "--key", "__bad__"],
    ["memory", "show", "no_such_ref", "--key", "k"],
    ["memory", "show", "conversation_memory", "--key", "k", "--last", "-1"],
    ["memory", "ls", "--ref", "no_such_ref"],
    ["memory", "ls", "--redis", "redis://127.0.0.1:1/0"],
    ["memory", "ls", "--redis", "ftp://nowhere"],
    ["demo", "--project", "/no/such/dir"],
    ["validate", "--project", "/no/such/dir"],
    ["schema", "nonsense"],
    ["no-such-command"],
    ["memory"],
]


@pytest.mark.parametrize("args", BAD_INPUT, ids=lambda args: " ".join(args)[:50])
def test_bad_input_in_process_fails_cleanly(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COMPOZY_REDIS_URL", raising=False)
    monkeypatch.chdir(REPO_ROOT)
    code: str | int | None
    try:
        code = main(args)  # any exception escaping main() would be a traceback for the user
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert code not in (0, None)
    assert (out + err).strip()  # says something
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    "args",
    [
        ["exec", "{not json"],
        ["run", "chatbot-workflow", "--input", '{"user_id": 5, "session_id": "s", "user_message": "m"}'],
        ["memory", "show", "conversation_memory", "--key", "__bad__"],
        ["memory", "ls", "--redis", "redis://127.0.0.1:1/0"],
        ["schema", "nonsense"],
    ],
    ids=lambda args: " ".join(args)[:50],
)
def test_bad_input_as_a_subprocess_prints_no_traceback(args: list[str]) -> None:
    proc = cli(*args)  # cli() asserts there is no traceback
    assert proc.returncode != 0
    assert (proc.stdout + proc.stderr).strip()


def test_no_command_prints_help() -> None:
    proc = cli()
    assert proc.returncode == 2
    assert "usage" in proc.stdout.lower()
