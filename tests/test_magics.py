"""The %compozy magic, driven through a real IPython InteractiveShell, on both backends."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from compozy_nb.backends import Backend

MEMORY_CELL = """
resource: memory
id: notes
key: "notes:{{.user}}"
type: token_based
max_messages: 5
persistence: {type: redis, ttl: 1h}
privacy_policy:
  redact_patterns: ['\\b\\d{3}-\\d{2}-\\d{4}\\b']
"""

WORKFLOW_CELL = """
name: remember
tasks:
  - id: save
    type: memory
    operation: append
    memory_ref: notes
    payload: "{{.text}}"
  - id: load
    type: memory
    operation: read
    memory_ref: notes
    output: history
"""


@pytest.fixture
def ip(backend: Backend) -> Iterator[object]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "compozy_nb")
    magics = shell.magics_manager.registry["Compozy"]
    magics._project = None
    magics.project.use_backend(backend)
    yield shell
    magics._project = None
    shell.user_ns.pop("out", None)


def magic(ip: object, line: str) -> object:
    return ip.run_line_magic("compozy", line)  # type: ignore[attr-defined]


def cell(ip: object, line: str, body: str) -> object:
    return ip.run_cell_magic("compozy", line, body)  # type: ignore[attr-defined]


def redis_snapshot(backend: Backend) -> dict[bytes, object]:
    client = backend.client
    snap: dict[bytes, object] = {}
    for key in client.scan_iter(match="*"):
        kind = client.type(key)
        if kind == b"list":
            snap[key] = client.lrange(key, 0, -1)
        elif kind == b"hash":
            snap[key] = client.hgetall(key)
        elif kind == b"set":
            snap[key] = sorted(client.smembers(key))
        elif kind == b"zset":
            snap[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"stream":  # the operation log
            snap[key] = client.xrange(key)
        else:
            snap[key] = client.get(key)
    return snap


def test_cell_defines_resources_and_workflows(ip: object) -> None:
    summary = cell(ip, "", MEMORY_CELL + "---\n" + WORKFLOW_CELL)
    html = summary._repr_html_()  # type: ignore[attr-defined]
    assert "notes" in html and "notes:{{.user}}" in html and "1h" in html
    assert "remember" in html and "append notes" in html
    listed = magic(ip, "list")._repr_html_()  # type: ignore[attr-defined]
    assert "notes" in listed and "remember" in listed
    shown = magic(ip, "show notes")._repr_html_()  # type: ignore[attr-defined]
    assert "max_messages: 5" in shown


def test_templates_survive_ipython_expansion(ip: object) -> None:
    cell(ip, "", MEMORY_CELL)
    magic(ip, 'memory append notes --var user=u1 --payload \'{"content": "keep {{x}} and $y and {z}"}\'')
    frame = magic(ip, "memory read notes --key notes:u1")
    assert isinstance(frame, pd.DataFrame)
    assert frame["content"].tolist() == ["keep {{x}} and $y and {z}"]


def test_redefining_needs_replace(ip: object) -> None:
    cell(ip, "", MEMORY_CELL)
    with pytest.raises(UsageError, match="already defined"):
        cell(ip, "", MEMORY_CELL)
    cell(ip, "--replace", MEMORY_CELL.replace("max_messages: 5", "max_messages: 7"))
    magics = ip.magics_manager.registry["Compozy"]  # type: ignore[attr-defined]
    assert magics.project.resource("notes").max_messages == 7


def test_all_memory_operations(ip: object, backend: Backend) -> None:
    cell(ip, "", MEMORY_CELL)
    ip.user_ns["msgs"] = [  # type: ignore[attr-defined]
        {"role": "user", "content": "my ssn is 123-45-6789"},
        {"role": "assistant", "content": "noted", "metadata": {"source": "test"}},
    ]
    out = magic(ip, "memory write notes --key notes:u1 --payload $msgs")
    assert out["count"] == 2  # type: ignore[index]
    out = magic(ip, "memory append notes --key notes:u1 --payload '\"plain text\"' -o out")
    assert ip.user_ns["out"]["appended"] == 1  # type: ignore[attr-defined]
    frame = magic(ip, "memory read notes --key notes:u1")
    assert list(frame.columns[:4]) == ["position", "role", "content", "tokens"]  # type: ignore[attr-defined]
    assert "metadata" in frame.columns and "ts" in frame.columns  # type: ignore[attr-defined]
    assert frame["content"].tolist() == ["my ssn is [REDACTED]", "noted", "plain text"]  # type: ignore[index]
    assert magic(ip, "memory read notes --key notes:u1 --limit 1 --offset 1")["content"].tolist() == ["noted"]  # type: ignore[index]
    assert len(magic(ip, "memory read notes --key notes:u1 --last 2")) == 2  # type: ignore[arg-type]
    stats = magic(ip, "memory stats notes --key notes:u1")
    assert isinstance(stats, pd.DataFrame) and stats.loc[0, "message_count"] == 3
    health = magic(ip, "memory health notes --key notes:u1")
    assert health["healthy"] is True  # type: ignore[index]
    flushed = magic(ip, "memory flush notes --key notes:u1 --dry-run --force")
    assert flushed["dry_run"] is True  # type: ignore[index]
    cleared = magic(ip, "memory clear notes --key notes:u1 --confirm --backup")
    assert cleared["messages_cleared"] == 3 and cleared["backup_created"] is True  # type: ignore[index]
    deleted = magic(ip, "memory delete notes --key notes:u1")
    assert deleted["success"] is True  # type: ignore[index]
    assert redis_snapshot(backend) == {}


def test_stats_by_pattern_one_row_per_instance(ip: object) -> None:
    cell(ip, "", MEMORY_CELL)
    for user in ("a1", "a2", "b1"):
        magic(ip, f"memory append notes --var user={user} --payload '\"hi\"'")
    frame = magic(ip, "memory stats notes --pattern 'notes:a*'")
    assert sorted(frame["key"]) == ["notes:a1", "notes:a2"]  # type: ignore[index]


def test_run_workflow_and_store(ip: object) -> None:
    cell(ip, "", MEMORY_CELL + "---\n" + WORKFLOW_CELL)
    ip.user_ns["inp"] = {"user": "u9", "text": "hello"}  # type: ignore[attr-defined]
    run = magic(ip, "run remember --input $inp -o out")
    assert run["status"] == "completed"  # type: ignore[index]
    assert ip.user_ns["out"] is run  # type: ignore[attr-defined]
    assert "save" in run._repr_html_()  # type: ignore[attr-defined]
    run2 = magic(ip, 'run remember --input \'{"user": "u9", "text": "again"}\'')
    assert run2["output"]["count"] == 2  # type: ignore[index]


def test_connect_and_load(ip: object, tmp_path: object) -> None:
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    summary = magic(ip, f"load {root}")
    assert "conversation_memory" in summary._repr_html_()  # type: ignore[attr-defined]
    magic(ip, "connect embedded://magic-test")
    magics = ip.magics_manager.registry["Compozy"]  # type: ignore[attr-defined]
    assert magics.project.backend.url == "embedded://magic-test"


def test_project_and_use(ip: object, backend: Backend) -> None:
    from compozy_nb import Project

    cell(ip, "", "name: analytics\n---\n" + MEMORY_CELL)
    project = magic(ip, "project -o proj")
    assert ip.user_ns["proj"] is project and project.name == "analytics"  # type: ignore[attr-defined]
    assert "notes" in project.resources  # type: ignore[attr-defined]
    other = Project("other")
    other.use_backend(backend)
    other.add_yaml(MEMORY_CELL)
    ip.user_ns["other"] = other  # type: ignore[attr-defined]
    magic(ip, "use $other")
    magic(ip, "memory append notes --key k --payload '\"hi\"'")
    assert backend.client.llen("compozy:other:memory:k") == 1
    with pytest.raises(UsageError, match=r"not a compozy_nb\.Project"):
        ip.user_ns["x"] = 3  # type: ignore[attr-defined]
        magic(ip, "use $x")


def test_help_prints(ip: object, capsys: pytest.CaptureFixture[str]) -> None:
    magic(ip, "help")
    assert "%compozy memory OP REF" in capsys.readouterr().out


def test_config_traitlets(ip: object) -> None:
    ip.run_line_magic("config", "Compozy.display_limit = 3")  # type: ignore[attr-defined]
    from compozy_nb.results import DISPLAY

    assert DISPLAY["limit"] == 3
    ip.run_line_magic("config", "Compozy.display_limit = 50")  # type: ignore[attr-defined]
    ip.run_line_magic("config", "Compozy.progress = False")  # type: ignore[attr-defined]
    assert DISPLAY["progress"] is False
    ip.run_line_magic("config", "Compozy.progress = True")  # type: ignore[attr-defined]
    assert DISPLAY["progress"] is True


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import compozy_nb.notebook.magics as magics_module

    monkeypatch.setenv("COMPOZY_DISPLAY_LIMIT", "7")
    monkeypatch.setenv("COMPOZY_PROGRESS", "0")
    monkeypatch.setenv("COMPOZY_REDIS_URL", "embedded://from-env")
    fresh = importlib.reload(magics_module)
    try:
        instance = fresh.Compozy()
        assert instance.display_limit == 7 and instance.progress is False
        assert instance.project.backend.url == "embedded://from-env"
    finally:
        monkeypatch.undo()
        importlib.reload(magics_module)


BAD_LINES = [
    ("", "give a subcommand"),
    ("frobnicate", "invalid choice"),
    ("memory read", "the following arguments are required"),
    ("memory read nope --key k", "MEMORY_NOT_FOUND"),
    ("memory read notes", "give --key K or --var"),
    ("memory read notes --key 'bad key'", "INVALID_KEY"),
    ("memory read notes --key k --bogus", "unrecognized arguments"),
    ("memory append notes --key k", "--payload is required"),
    ("memory append notes --key k --payload '{not json'", "not valid JSON"),
    ("memory append notes --key k --payload $undefined_var", "not defined"),
    ('memory append notes --key k --payload \'{"role": "robot", "content": "x"}\'', "INVALID_PAYLOAD"),
    ("memory clear notes --key k", "CONFIRM_REQUIRED"),
    ("memory read notes --key k --var user=x", "not both"),
    ("memory read notes --var nouser", "NAME=VALUE"),
    ("memory read notes --key k --limit x", "invalid int value"),
    ("memory flush notes --key k --strategy nope", "INVALID_CONFIG"),
    ("run missing", "WORKFLOW_NOT_FOUND"),
    ("run remember --input '[1]'", "must be a JSON object"),
    ("show nothing", "no memory resource or workflow"),
    ("load /nonexistent/dir", "does not exist"),
    ("connect redis://127.0.0.1:1", "BACKEND_UNAVAILABLE"),
    ("memory read notes --key 'unterminated", "cannot parse"),
    ("memory stats notes --key k -o 1bad", "Python name"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_bad_lines_raise_usage_error_and_change_nothing(ip: object, backend: Backend, line: str, message: str) -> None:
    cell(ip, "", MEMORY_CELL + "---\n" + WORKFLOW_CELL)
    magic(ip, "memory append notes --key k --payload '\"existing\"'")
    before = redis_snapshot(backend)
    with pytest.raises(UsageError, match=message.replace("$", r"\$").replace("[", r"\[")):
        magic(ip, line)
    assert redis_snapshot(backend) == before


BAD_CELLS = [
    ("", "resource: memory\nid: x\n  bad: [", "<cell"),
    ("", "resource: memory\nid: x\ntype: buffer\nmax_token: 3\n", "did you mean 'max_tokens'"),
    ("", "resource: memory\nid: x\ntype: token_based\n", "at least one limit"),
    ("--bogus", MEMORY_CELL, "unknown option"),
    ("", WORKFLOW_CELL.replace("memory_ref: notes\n    payload", "memory_ref: ghost\n    payload"), "ghost"),
    ("", "name: w\ntasks:\n  - id: t\n    type: teleport\n", "teleport"),
]


@pytest.mark.parametrize(("line", "body", "message"), BAD_CELLS)
def test_bad_cells_raise_usage_error_and_register_nothing(ip: object, line: str, body: str, message: str) -> None:
    cell(ip, "", MEMORY_CELL)
    magics = ip.magics_manager.registry["Compozy"]  # type: ignore[attr-defined]
    before = (dict(magics.project.resources), dict(magics.project.workflows))
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        cell(ip, line, body)
    assert (dict(magics.project.resources), dict(magics.project.workflows)) == before


def test_cell_error_names_the_yaml_line(ip: object) -> None:
    body = "resource: memory\nid: x\ntype: buffer\n\nmax_token: 3\n"
    with pytest.raises(UsageError) as info:
        cell(ip, "", body)
    assert ":5:" in str(info.value)


def test_outputs_are_json_serialisable(ip: object) -> None:
    cell(ip, "", MEMORY_CELL)
    out = magic(ip, "memory append notes --key k --payload '\"x\"'")
    assert json.loads(json.dumps(out))["appended"] == 1
