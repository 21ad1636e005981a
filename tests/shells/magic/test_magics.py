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
    assert "save" in run._repr_html_()
    run2 = magic(ip, 'run remember --input \'{"user": "u9", "text": "again"}\'')
    assert run2["output"]["count"] == 2  # type: ignore[index]


def test_connect_and_load(ip: object, tmp_path: object) -> None:
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[3]
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
    assert "notes" in project.resources
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
    from compozy_nb.notebook.views import DISPLAY

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


# ---------------------------------------------------------------- the notebook experience (issue 15)
def test_magic_lines_accept_trailing_comments(ip: object) -> None:
    cell(ip, "--replace  # a comment after the option", MEMORY_CELL)
    magic(ip, "memory append notes --var user=c1 --payload '\"keep # this\"'   # a comment")
    frame = magic(ip, "memory read notes --var user=c1            # a DataFrame")
    assert frame["content"].tolist() == ["keep # this"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("--help", "memory"),
        ("memory --help", "append"),
        ("memory read --help", "--max-tokens"),
        ("memory flush --help", "--dry-run"),
        ("run --help", "--input"),
        ("memory ls -h", "--pattern"),
    ],
)
def test_every_subcommand_has_help(
    ip: object, backend: Backend, capsys: pytest.CaptureFixture[str], line: str, expected: str
) -> None:
    before = redis_snapshot(backend)
    assert magic(ip, line) is None
    assert expected in capsys.readouterr().out
    assert redis_snapshot(backend) == before


@pytest.mark.filterwarnings("ignore:`Completer.complete` is pending deprecation:PendingDeprecationWarning")
def test_tab_completion_of_subcommands_refs_and_options(ip: object) -> None:
    cell(ip, "", MEMORY_CELL + "---\n" + WORKFLOW_CELL)
    completer = ip.Completer  # type: ignore[attr-defined]

    def complete(line: str) -> list[str]:
        _, matches = completer.complete(line_buffer=line, cursor_pos=len(line))
        return list(matches)

    assert "memory" in complete("%compozy mem")
    assert {"read", "ls"} <= set(complete("%compozy memory "))
    assert complete("%compozy memory read no") == ["notes"]
    assert complete("%compozy run rem") == ["remember"]
    assert set(complete("%compozy memory read notes --ma")) == {"--max-tokens"}
    # the first line of a %%compozy cell completes the same way
    assert complete("%%compozy mem") == ["memory"]
    assert complete("%%compozy memory read no") == ["notes"]
    assert set(complete("%%compozy memory append notes --pa")) == {"--payload"}


def test_curly_variables_are_interpolated_in_keys_and_vars(ip: object, backend: Backend) -> None:
    cell(ip, "", MEMORY_CELL)
    ip.user_ns.update(who="ada", key_name="notes:direct")  # type: ignore[attr-defined]
    magic(ip, "memory append notes --var user={who} --payload '\"hi {who}\"'")
    magic(ip, "memory append notes --key {key_name} --payload '\"x\"'")
    assert backend.client.lrange("compozy:default:memory:notes:ada", 0, -1)[0].find(b"hi {who}") > 0
    assert backend.client.llen("compozy:default:memory:notes:direct") == 1
    with pytest.raises(UsageError, match="not defined"):
        magic(ip, "memory read notes --var user={nobody_here}")


def test_memory_ls_parses_key_variables_into_columns(ip: object) -> None:
    cell(ip, "", MEMORY_CELL)
    for user in ("b2", "a1"):
        magic(ip, f"memory append notes --var user={user} --payload '\"hi\"'")
    frame = magic(ip, "memory ls notes --pattern 'notes:*' -o listing")
    assert frame["key"].tolist() == ["notes:a1", "notes:b2"]  # type: ignore[index]
    assert frame["user"].tolist() == ["a1", "b2"]  # type: ignore[index]
    assert ip.user_ns["listing"] is frame  # type: ignore[attr-defined]
    html = frame._repr_html_()
    assert "2 instances matching" in html and "<th style='text-align:left'>user</th>" in html
    everything = magic(ip, "memory ls")  # no resource given: every resource's key template is tried
    assert everything["user"].tolist() == ["a1", "b2"]  # type: ignore[index]


def test_read_is_a_dataframe_shown_as_a_transcript(ip: object) -> None:
    from compozy_nb.notebook.frames import TranscriptFrame

    cell(ip, "", MEMORY_CELL)
    magic(ip, "memory append notes --key k --payload '\"my ssn is 123-45-6789\"'")
    magic(ip, 'memory append notes --key k --payload \'{"role": "assistant", "content": "noted"}\'')
    frame = magic(ip, "memory read notes --key k")
    assert isinstance(frame, TranscriptFrame) and isinstance(frame, pd.DataFrame)
    assert str(frame["ts"].dtype).startswith("datetime64") and str(frame["ts"].dt.tz) == "UTC"
    html = frame._repr_html_()
    assert html is not None
    assert "my ssn is <span class='cnb-red'>[REDACTED]</span>" in html
    assert "cnb-assistant" in html and "2 of 2 messages" in html
    assert type(frame[["role", "content"]]) is pd.DataFrame  # a selection is an ordinary DataFrame


def test_display_limit_is_honoured_by_the_magic(ip: object) -> None:
    cell(ip, "", MEMORY_CELL)
    ip.user_ns["three"] = [{"role": "user", "content": c} for c in ("one", "two", "three")]  # type: ignore[attr-defined]
    magic(ip, "memory append notes --key k --payload $three")
    ip.run_line_magic("config", "Compozy.display_limit = 2")  # type: ignore[attr-defined]
    try:
        html = magic(ip, "memory read notes --key k")._repr_html_()  # type: ignore[attr-defined]
    finally:
        ip.run_line_magic("config", "Compozy.display_limit = 50")  # type: ignore[attr-defined]
    assert "1 older messages not shown (display_limit=2)" in html
    assert "three" in html and "one" not in html


def test_operation_results_render_as_one_line(ip: object) -> None:
    cell(ip, "", MEMORY_CELL)
    ip.user_ns["two"] = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]  # type: ignore[attr-defined]
    out = magic(ip, "memory append notes --var user=ada --payload $two")
    html = out._repr_html_()  # type: ignore[attr-defined]
    assert "<summary>append · notes:ada · +2 → 2/5 messages · " in html and "&quot;ids&quot;" in html
    assert out.summary().startswith("append · notes:ada · +2 → 2/5 messages")  # type: ignore[attr-defined]
    health = magic(ip, "memory health notes --var user=ada")
    assert health.summary().startswith("health · notes:ada · healthy · 2/5 messages")  # type: ignore[attr-defined]
    stats = magic(ip, "memory stats notes --var user=ada")
    assert stats.loc[0, "user"] == "ada"  # type: ignore[attr-defined]
    assert "stats · notes:ada" in stats._repr_html_()  # type: ignore[attr-defined]


def test_failed_run_says_which_task_and_why(ip: object, capsys: pytest.CaptureFixture[str]) -> None:
    cell(ip, "", MEMORY_CELL + "---\n" + WORKFLOW_CELL)
    run = magic(ip, 'run remember --input \'{"text": "no user given"}\'')
    assert run["status"] == "failed"  # type: ignore[index]
    reason = run.failure()  # type: ignore[attr-defined]
    assert reason.startswith("task 'save' failed: [TEMPLATE_ERROR]") and "user" in reason
    assert reason in run._repr_html_().replace("&#x27;", "'")  # type: ignore[attr-defined]
    assert run.to_pandas().loc[0, "message"]  # type: ignore[attr-defined]


def test_load_without_compozy_yaml_keeps_the_current_project(ip: object, tmp_path: object) -> None:
    import pathlib

    cell(ip, "", MEMORY_CELL)
    magics = ip.magics_manager.registry["Compozy"]  # type: ignore[attr-defined]
    before = magics.project
    with pytest.raises(UsageError, match=r"has no compozy\.yaml; the current project is unchanged"):
        magic(ip, f"load {tmp_path}")
    assert magics.project is before and "notes" in before.resources
    root = pathlib.Path(__file__).resolve().parents[3]
    magic(ip, f"load {root}")
    assert {"notes", "conversation_memory"} <= set(magics.project.resources)  # inline definitions kept


def test_project_shows_its_namespace(ip: object) -> None:
    cell(ip, "", "name: analytics\n---\n" + MEMORY_CELL)
    project = magic(ip, "project")
    assert "compozy:analytics:memory:*" in repr(project)
    assert "compozy:analytics:memory:*" in project._repr_html_()  # type: ignore[attr-defined]


def test_reload_ext_keeps_the_project_and_registers_the_configurable_once(
    ip: object, backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    cell(ip, "", MEMORY_CELL + "---\n" + WORKFLOW_CELL)
    project = ip.magics_manager.registry["Compozy"].project  # type: ignore[attr-defined]
    ip.run_line_magic("reload_ext", "compozy_nb")  # type: ignore[attr-defined]
    assert "kept project 'default' (1 resources, 1 workflows" in capsys.readouterr().out
    magics = ip.magics_manager.registry["Compozy"]  # type: ignore[attr-defined]
    assert magics.project is project and magics.project.backend is backend
    assert [type(c).__name__ for c in ip.configurables].count("Compozy") == 1  # type: ignore[attr-defined]
    assert magic(ip, 'run remember --input \'{"user": "r", "text": "t"}\'')["status"] == "completed"  # type: ignore[index]


def test_connect_closes_the_backend_it_replaces(ip: object, redis_url: str) -> None:
    import redis

    admin = redis.Redis.from_url(redis_url)
    magics = ip.magics_manager.registry["Compozy"]  # type: ignore[attr-defined]
    magic(ip, f"connect {redis_url}")
    first = magics.project.backend
    first.client.ping()
    clients = len(admin.client_list())
    magic(ip, f"connect {redis_url}")
    magics.project.backend.client.ping()
    assert magics.project.backend is not first
    assert len(admin.client_list()) == clients  # the first connection was closed, not leaked


def test_python_errors_render_as_one_line_in_ipython(ip: object, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell("import compozy_nb\ncompozy_nb.Project().resource('nope')")  # type: ignore[attr-defined]
    out = capsys.readouterr().out.strip()
    assert out.startswith("MemoryNotFoundError [MEMORY_NOT_FOUND]: Memory resource not found: 'nope'")
    assert "Traceback" not in out and len(out.splitlines()) == 1


def test_inspect_magic_opens_the_inspector(ip: object) -> None:
    from compozy_nb.notebook.inspector import Inspector

    cell(ip, "", MEMORY_CELL)
    magic(ip, "memory append notes --var user=i1 --payload '\"hello\"'")
    inspector = magic(ip, "inspect --pattern 'notes:*'")
    assert isinstance(inspector, Inspector)
    assert "notes:i1" in inspector.table.value and "hello" in inspector.transcript.value
