"""Bad input, table-driven: each case gives its error code and leaves Redis exactly as it was.

Before each case the server holds known state (messages, metadata, an archive, LRU access data, a clear
backup, a foreign string key); every key is snapshotted (type, content, whether it has a TTL) and
compared after the failing call. Most cases go through ``Project.execute`` (the request-body path), some
through the direct methods, and a few through the ``compozy-nb exec`` command.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from compozy_nb import CompozyNbError, Project, connect
from compozy_nb.backends import Backend
from compozy_nb.memory.instance import run_operation

PROJECT = "badinput"
TARGET = "conv:target"

RESOURCES = """
resource: memory
id: conv
type: buffer
max_tokens: 200
max_messages: 50
max_message_bytes: 2000
archive_max_messages: 100
persistence:
  ttl: 1h
key: "conv:{{.user}}"
---
resource: memory
id: small
type: message_count_based
max_messages: 3
archive_max_messages: 100
---
resource: memory
id: recent
type: message_count_based
max_messages: 50
flushing:
  type: lru
"""

SEEDED = [
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "hi, how can I help?"},
    {"role": "user", "content": "remember that my name is Ada"},
]


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def req(**fields: Any) -> dict[str, Any]:
    """An execute request body on the seeded key; ``fields`` override or add to it."""
    return {"memory_ref": "conv", "key_template": TARGET, "operation": "append", **fields}


# ------------------------------------------------------------------------------------------ state
def seed(project: Project) -> None:
    """Known state: 3 messages on the target key, plus every other kind of key the layout uses."""
    target = project.memory("conv", key=TARGET)
    for message in SEEDED:
        target.append(message)
    project.memory("small", key="conv:evicting").append([{"content": f"m{i}"} for i in range(5)])
    recent = project.memory("recent", key="conv:lru")
    recent.append([{"content": "a"}, {"content": "b"}])
    recent.read()
    cleared = project.memory("conv", key="conv:cleared")
    cleared.append("to be backed up")
    cleared.clear(confirm=True, backup=True)
    project.backend.client.set("unrelated:string", "untouched")


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def snapshot(client: Any) -> dict[str, tuple[str, Any, bool]]:
    """Every key on the server: its type, its whole content and whether it has a TTL."""
    state: dict[str, tuple[str, Any, bool]] = {}
    for raw_key in client.scan_iter(match="*", count=1000):
        key = _text(raw_key)
        kind = _text(client.type(raw_key))
        if kind == "list":
            content: Any = client.lrange(raw_key, 0, -1)
        elif kind == "hash":
            content = client.hgetall(raw_key)
        elif kind == "set":
            content = sorted(client.smembers(raw_key))
        elif kind == "zset":
            content = client.zrange(raw_key, 0, -1, withscores=True)
        elif kind == "string":
            content = client.get(raw_key)
        else:  # pragma: no cover - the layout uses no other type
            content = kind
        state[key] = (kind, content, client.pttl(raw_key) > 0)
    return state


@pytest.fixture
def project(backend: Backend) -> Project:
    """A project on the test backend, with its resources registered and the known state seeded."""
    project = Project(PROJECT)
    project.use_backend(backend)
    project.add_yaml(RESOURCES)
    seed(project)
    return project


def test_seeded_state_has_every_kind_of_key(project: Project) -> None:
    state = snapshot(project.backend.client)
    kinds = {kind for kind, _, _ in state.values()}
    assert kinds == {"list", "hash", "set", "zset", "string", "stream"}  # stream: the operation log
    assert any(has_ttl for _, _, has_ttl in state.values())
    assert any(key.endswith(":archive") for key in state)
    assert any(":backup:" in key for key in state)
    assert len(state[f"compozy:{PROJECT}:memory:{TARGET}"][1]) == 3


# ------------------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    """One bad input: what to run, the error code it must give and words the message must contain."""

    id: str
    run: Callable[[Project], Any]
    code: str
    contains: tuple[str, ...] = ()


def _execute(body: dict[str, Any]) -> Callable[[Project], Any]:
    return lambda project: project.execute(body)


def _direct(method: str, *args: Any, key: str = TARGET, ref: str = "conv", **kwargs: Any) -> Callable[[Project], Any]:
    return lambda project: getattr(project.memory(ref, key=key), method)(*args, **kwargs)


def _add_yaml(text: str) -> Callable[[Project], Any]:
    return lambda project: project.add_yaml(text, source="bad.yaml")


def _elsewhere(url: str) -> Callable[[Project], Any]:
    """A second project whose backend is ``url``; its first memory access must fail."""

    def run(_: Project) -> Any:
        other = Project(PROJECT, redis_url=url)
        other.add_yaml(RESOURCES)
        return other.memory("conv", key=TARGET)

    return run


def _elsewhere_execute(url: str) -> Callable[[Project], Any]:
    def run(_: Project) -> Any:
        other = Project(PROJECT, redis_url=url)
        other.add_yaml(RESOURCES)
        return other.execute(req(operation="read"))

    return run


GOOD_RESOURCE = "resource: memory\nid: fresh\ntype: buffer\n"
UNREACHABLE = f"redis://127.0.0.1:{free_port()}/0"

CASES = [
    # ---- configuration
    Case(
        "yaml-malformed",
        _add_yaml("resource: memory\nid: [oops\n"),
        "INVALID_CONFIG",
        ("malformed YAML", "bad.yaml:"),
    ),
    Case(
        "yaml-unknown-top-level-field",
        _add_yaml(GOOD_RESOURCE + "colour: red\n"),
        "INVALID_CONFIG",
        ("colour",),
    ),
    Case(
        "yaml-unknown-nested-field",
        _add_yaml(GOOD_RESOURCE + "flushing:\n  typo: lru\n"),
        "INVALID_CONFIG",
        ("typo", "bad.yaml:5"),
    ),
    Case(
        "yaml-second-document-invalid",
        _add_yaml(GOOD_RESOURCE + "---\nresource: memory\nid: other\ntype: nonsense\n"),
        "INVALID_CONFIG",
        ("type",),
    ),
    Case(
        "yaml-catastrophic-regex",
        _add_yaml(GOOD_RESOURCE + "privacy_policy:\n  redact_patterns: ['(a+)+']\n"),
        "INVALID_CONFIG",
        ("(a+)+", "catastrophic"),
    ),
    Case(
        "yaml-hybrid-without-summary-tokens",
        _add_yaml(GOOD_RESOURCE + "flushing:\n  type: hybrid_summary\n"),
        "INVALID_CONFIG",
        ("summary_tokens",),
    ),
    Case("unknown-operation", _execute(req(operation="frobnicate")), "INVALID_CONFIG", ("frobnicate",)),
    Case(
        "unknown-operation-direct",
        lambda p: run_operation(p.memory("conv", key=TARGET), "frobnicate"),
        "INVALID_CONFIG",
        ("frobnicate",),
    ),
    Case("unknown-request-field", _execute(req(operation="read", colour="red")), "INVALID_CONFIG", ("colour",)),
    Case(
        "bad-flush-strategy",
        _execute(req(operation="flush", flush_config={"strategy": "random", "force": True})),
        "INVALID_CONFIG",
        ("strategy",),
    ),
    Case("bad-flush-strategy-direct", _direct("flush", "random", force=True), "INVALID_CONFIG", ("random",)),
    Case(
        "bad-flush-threshold",
        _execute(req(operation="flush", flush_config={"threshold": 2})),
        "INVALID_CONFIG",
        ("threshold",),
    ),
    Case("bad-flush-threshold-direct", _direct("flush", threshold=-0.5), "INVALID_CONFIG", ("threshold",)),
    Case(
        "read-negative-limit",
        _execute(req(operation="read", read_config={"limit": -1})),
        "INVALID_CONFIG",
        ("limit",),
    ),
    Case("read-negative-limit-direct", _direct("read", limit=-1), "INVALID_PAYLOAD", ("limit",)),
    Case("read-negative-offset-direct", _direct("read", offset=-3), "INVALID_PAYLOAD", ("offset",)),
    Case("append-without-payload", _execute(req()), "INVALID_CONFIG", ("requires payload",)),
    Case("write-without-payload", _execute(req(operation="write")), "INVALID_CONFIG", ("requires payload",)),
    Case("append-none-direct", _direct("append", None), "INVALID_PAYLOAD", ("requires payload",)),
    Case("write-none-direct", _direct("write", None), "INVALID_PAYLOAD", ("requires payload",)),
    # ---- payloads
    Case(
        "bad-role",
        _execute(req(payload={"role": "robot", "content": "x"})),
        "INVALID_PAYLOAD",
        ("robot", "payload.role"),
    ),
    Case("bad-role-direct", _direct("append", {"role": "USER", "content": "x"}), "INVALID_PAYLOAD", ("USER",)),
    Case(
        "empty-content",
        _execute(req(payload={"role": "user", "content": ""})),
        "INVALID_PAYLOAD",
        ("content",),
    ),
    Case(
        "empty-content-write",
        _execute(req(operation="write", payload={"role": "user", "content": ""})),
        "INVALID_PAYLOAD",
        ("content",),
    ),
    Case("empty-content-direct", _direct("write", {"content": ""}), "INVALID_PAYLOAD", ("content",)),
    Case("empty-string-payload", _execute(req(payload="")), "INVALID_PAYLOAD", ("content",)),
    Case("blank-content", _direct("append", {"content": " \n\t "}), "INVALID_PAYLOAD", ("content",)),
    Case("missing-content", _execute(req(payload={"role": "user"})), "INVALID_PAYLOAD", ("content",)),
    Case(
        "non-string-content",
        _execute(req(payload={"role": "user", "content": 42})),
        "INVALID_PAYLOAD",
        ("content",),
    ),
    Case(
        "dict-content",
        _direct("append", {"role": "user", "content": {"text": "hi"}}),
        "INVALID_PAYLOAD",
        ("content",),
    ),
    Case("payload-number", _execute(req(payload=42)), "INVALID_PAYLOAD", ("int",)),
    Case("payload-number-direct", _direct("append", 3.5), "INVALID_PAYLOAD", ("float",)),
    Case("payload-bool", _execute(req(payload=True)), "INVALID_PAYLOAD", ("bool",)),
    Case("payload-list-of-strings", _execute(req(payload=["hi", "there"])), "INVALID_PAYLOAD", ("payload[0]",)),
    Case(
        "bad-message-id",
        _direct("append", {"id": "x" * 200, "content": "hi"}),
        "INVALID_PAYLOAD",
        ("id",),
    ),
    Case(
        "third-of-three-invalid",
        _execute(req(payload=[{"content": "one"}, {"content": "two"}, {"role": "wizard", "content": "three"}])),
        "INVALID_PAYLOAD",
        ("payload[2]",),
    ),
    Case(
        "third-of-three-invalid-write",
        _execute(
            req(
                operation="write",
                payload=[{"content": "one"}, {"content": "two"}, {"role": "user", "content": ""}],
            )
        ),
        "INVALID_PAYLOAD",
        ("payload[2]",),
    ),
    Case(
        "third-of-three-non-string-write",
        _execute(
            req(
                operation="write",
                payload=[{"content": "one"}, {"content": "two"}, {"role": "user", "content": ["x"]}],
            )
        ),
        "INVALID_PAYLOAD",
        ("payload[2]",),
    ),
    Case(
        "third-of-three-oversize-direct",
        _direct("append", [{"content": "one"}, {"content": "two"}, {"content": "big " * 600}]),
        "LIMIT_EXCEEDED",
        ("message 2", "max_message_bytes"),
    ),
    Case(
        "oversize-message",
        _execute(req(payload={"role": "user", "content": "x" * 3000})),
        "LIMIT_EXCEEDED",
        ("max_message_bytes",),
    ),
    Case(
        "message-over-max-tokens",
        _direct("append", {"role": "user", "content": "word " * 250}),
        "LIMIT_EXCEEDED",
        ("token limit",),
    ),
    Case(
        "message-over-max-tokens-execute",
        _execute(req(operation="write", payload="word " * 250)),
        "LIMIT_EXCEEDED",
        ("token limit",),
    ),
    Case(
        "system-messages-cannot-fit",  # rejected inside the Lua script: nothing evicted either
        _execute(req(memory_ref="small", payload=[{"role": "system", "content": f"rule {i}"} for i in range(4)])),
        "LIMIT_EXCEEDED",
        ("system",),
    ),
    # ---- keys
    Case("key-space", _execute(req(key_template="conv target", payload="x")), "INVALID_KEY", ("' '",)),
    Case("key-newline", _execute(req(key_template="conv:target\n", payload="x")), "INVALID_KEY", ("'\\n'",)),
    Case("key-leading-underscores", _execute(req(key_template="__conv", payload="x")), "INVALID_KEY", ("__",)),
    Case("key-trailing-underscores", _execute(req(key_template="conv__", payload="x")), "INVALID_KEY", ("__",)),
    Case("key-300-chars", _execute(req(key_template="k" * 300, payload="x")), "INVALID_KEY", ("too long",)),
    Case("key-brace", _execute(req(key_template="conv:{target}", payload="x")), "INVALID_KEY", ("'{'",)),
    Case("key-unicode", _execute(req(key_template="conv:café", payload="x")), "INVALID_KEY", ("é",)),
    Case(
        "key-reserved-suffix",  # would write into the metadata hash of the target
        _execute(req(key_template=f"{TARGET}:metadata", payload="x")),
        "INVALID_KEY",
        ("metadata",),
    ),
    Case(
        "key-rendered-from-input",
        _execute(req(key_template="conv:{{.user}}", payload="x", input={"user": "ada lovelace"})),
        "INVALID_KEY",
        ("' '",),
    ),
    Case("key-space-direct", _direct("append", "x", key="conv target"), "INVALID_KEY", ("' '",)),
    Case("key-empty-direct", _direct("append", "x", key=""), "INVALID_KEY", ("empty",)),
    Case(
        "key-from-default-template-direct",
        lambda p: p.memory("conv", user="a\nb").append("x"),
        "INVALID_KEY",
        ("'\\n'",),
    ),
    Case(
        "restore-foreign-backup-direct",
        _direct("restore", f"compozy:{PROJECT}:memory:conv:evicting"),
        "INVALID_KEY",
        ("backup",),
    ),
    # ---- templates
    Case(
        "template-dunder-key",
        _execute(req(operation="read", key_template="conv:{{.a.__class__}}", input={"a": {}})),
        "TEMPLATE_ERROR",
        ("__class__",),
    ),
    Case(
        "template-call-key",
        _execute(req(operation="read", key_template="conv:{{ .x() }}", input={"x": "y"})),
        "TEMPLATE_ERROR",
        ("function calls",),
    ),
    Case(
        "template-dunder-payload",
        _execute(req(payload={"content": "{{.a.__class__}}"}, input={"a": {}})),
        "TEMPLATE_ERROR",
        ("__class__", "content"),
    ),
    Case(
        "template-call-payload",
        _execute(req(payload="{{ .x() }}", input={"x": "y"})),
        "TEMPLATE_ERROR",
        ("function calls",),
    ),
    Case(
        "template-missing-variable-key",
        _execute(req(operation="read", key_template="conv:{{.workflow.input.session_id}}")),
        "TEMPLATE_ERROR",
        ("missing variable", ".workflow.input.session_id"),
    ),
    Case(
        "template-missing-variable-payload",
        _execute(req(payload=[{"content": "ok"}, {"content": "hi {{.who}}"}])),
        "TEMPLATE_ERROR",
        ("missing variable", ".who", "payload[1].content"),
    ),
    Case(
        "template-missing-variable-direct",
        lambda p: p.memory("conv"),
        "TEMPLATE_ERROR",
        ("missing variable", ".user"),
    ),
    # ---- clear, memory_ref
    Case("clear-without-confirm", _execute(req(operation="clear")), "CONFIRM_REQUIRED", ("confirm",)),
    Case(
        "clear-confirm-false",
        _execute(req(operation="clear", clear_config={"confirm": False, "backup": True})),
        "CONFIRM_REQUIRED",
        ("confirm",),
    ),
    Case("clear-without-confirm-direct", _direct("clear", backup=True), "CONFIRM_REQUIRED", ("confirm",)),
    Case(
        "unknown-memory-ref",
        _execute(req(memory_ref="nowhere", payload="x")),
        "MEMORY_NOT_FOUND",
        ("nowhere", "conv"),
    ),
    Case("unknown-memory-ref-direct", _direct("read", ref="nowhere"), "MEMORY_NOT_FOUND", ("nowhere",)),
    # ---- backends
    Case("unreachable-url", _elsewhere(UNREACHABLE), "BACKEND_UNAVAILABLE", ("cannot reach",)),
    Case("unreachable-url-execute", _elsewhere_execute(UNREACHABLE), "BACKEND_UNAVAILABLE", ("cannot reach",)),
    Case("unreachable-url-connect", lambda _: connect(UNREACHABLE), "BACKEND_UNAVAILABLE", ("cannot reach",)),
    Case("unsupported-scheme", _elsewhere("http://127.0.0.1:6379"), "BACKEND_UNAVAILABLE", ("http://",)),
    Case("unsupported-scheme-connect", lambda _: connect("mongodb://db/0"), "BACKEND_UNAVAILABLE", ("mongodb",)),
]


def _params() -> list[Any]:
    return [pytest.param(case, id=case.id) for case in CASES]


@pytest.mark.parametrize("case", _params())
def test_bad_input_gives_its_code_and_changes_nothing(project: Project, case: Case) -> None:
    client = project.backend.client
    before = snapshot(client)
    resources_before = dict(project.resources)

    with pytest.raises(CompozyNbError) as info:
        case.run(project)

    error = info.value
    assert error.code == case.code, f"{error.code}: {error}"
    text = str(error)
    for part in case.contains:
        assert part in text, f"{part!r} not in {text!r}"
    payload = error.to_dict()
    assert payload["code"] == case.code
    json.dumps(payload)  # the CLI and the HTTP API print it
    assert snapshot(client) == before
    assert project.resources == resources_before


def test_write_of_an_empty_message_through_execute_keeps_the_memory(project: Project) -> None:
    before = snapshot(project.backend.client)

    try:
        project.execute(req(operation="write", payload={"role": "user", "content": ""}))
    except CompozyNbError:
        pass

    assert project.memory("conv", key=TARGET).read()["count"] == len(SEEDED)
    assert snapshot(project.backend.client) == before


def test_the_table_covers_every_error_code() -> None:
    codes = {case.code for case in CASES}
    assert codes >= {
        "INVALID_CONFIG",
        "INVALID_PAYLOAD",
        "LIMIT_EXCEEDED",
        "INVALID_KEY",
        "TEMPLATE_ERROR",
        "CONFIRM_REQUIRED",
        "MEMORY_NOT_FOUND",
        "BACKEND_UNAVAILABLE",
    }


# ------------------------------------------------------------------------------------------ CLI
def _cli() -> list[str]:
    script = Path(sys.executable).with_name("compozy-nb")
    if script.exists():
        return [str(script)]
    found = shutil.which("compozy-nb")
    return [found] if found else [sys.executable, "-m", "compozy_nb.cli"]


def run_cli(project_dir: Path, redis_url: str, request: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COMPOZY_REDIS_URL"}
    return subprocess.run(
        [*_cli(), "exec", "--project", str(project_dir), "--redis", redis_url, json.dumps(request)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def write_project(directory: Path, resources: str) -> Path:
    (directory / "memory").mkdir(parents=True)
    (directory / "compozy.yaml").write_text(f"name: {PROJECT}\n", encoding="utf-8")
    (directory / "memory" / "resources.yaml").write_text(resources, encoding="utf-8")
    return directory


def assert_cli_failed(result: subprocess.CompletedProcess[str], code: str) -> dict[str, Any]:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    assert out["status"] == "failed"
    assert out["error"]["code"] == code, out
    assert isinstance(out["error"]["message"], str) and out["error"]["message"]
    return out


CLI_CASES = [
    pytest.param(req(payload={"role": "robot", "content": "x"}), "INVALID_PAYLOAD", id="bad-role"),
    pytest.param(req(operation="clear"), "CONFIRM_REQUIRED", id="clear-without-confirm"),
    pytest.param(req(memory_ref="nowhere", payload="x"), "MEMORY_NOT_FOUND", id="unknown-memory-ref"),
    pytest.param(req(key_template="conv target", payload="x"), "INVALID_KEY", id="key-space"),
    pytest.param(req(payload="{{ .x() }}", input={"x": 1}), "TEMPLATE_ERROR", id="template-call"),
    pytest.param(req(operation="read", read_config={"limit": -1}), "INVALID_CONFIG", id="negative-limit"),
]


@pytest.mark.parametrize(("request_body", "code"), CLI_CASES)
def test_cli_reports_bad_input_as_json(tmp_path: Path, redis_url: str, request_body: dict[str, Any], code: str) -> None:
    project_dir = write_project(tmp_path, RESOURCES)
    seed(Project.load(project_dir, redis_url=redis_url))
    client = redis.Redis.from_url(redis_url)
    before = snapshot(client)

    result = run_cli(project_dir, redis_url, request_body)

    assert_cli_failed(result, code)
    assert snapshot(client) == before
    client.close()


def test_cli_unreachable_redis(tmp_path: Path) -> None:
    result = run_cli(write_project(tmp_path, RESOURCES), UNREACHABLE, req(operation="read"))
    out = assert_cli_failed(result, "BACKEND_UNAVAILABLE")
    assert "127.0.0.1" in out["error"]["message"]


def test_cli_malformed_resource_file(tmp_path: Path, redis_url: str) -> None:
    result = run_cli(write_project(tmp_path, "resource: memory\nid: [oops\n"), redis_url, req(operation="read"))
    out = assert_cli_failed(result, "INVALID_CONFIG")
    assert "resources.yaml:" in out["error"]["message"]
    assert redis.Redis.from_url(redis_url).dbsize() == 0


def test_cli_resource_file_with_unknown_field(tmp_path: Path, redis_url: str) -> None:
    result = run_cli(write_project(tmp_path, GOOD_RESOURCE + "colour: red\n"), redis_url, req(operation="read"))
    out = assert_cli_failed(result, "INVALID_CONFIG")
    assert "colour" in out["error"]["message"]


@pytest.mark.parametrize(
    "read_config", [{"last": 1, "max_tokens": 5}, {"last": 1, "limit": 3}], ids=["last+max_tokens", "last+limit"]
)
def test_read_config_conflict_names_its_field_once(project: Project, read_config: dict[str, Any]) -> None:
    """The message used to read ``read_config: read_config: give either ...``."""
    task = {"type": "memory", "operation": "read", "memory_ref": "conversation_memory", "key_template": "k"}
    with pytest.raises(CompozyNbError) as caught:
        project.execute({**task, "read_config": read_config})
    assert caught.value.code == "INVALID_CONFIG"
    assert str(caught.value).count("read_config") == 1, str(caught.value)


def test_depth_helper_bounds_any_value_without_recursion() -> None:
    """``limits.check_depth`` walks iteratively: 100,000 levels give INVALID_PAYLOAD, not RecursionError."""
    from compozy_nb.limits import check_depth, nesting_depth

    value: Any = "leaf"
    for _ in range(100_000):
        value = {"k": [value]}
    assert nesting_depth(value, stop_after=10) == 11
    with pytest.raises(CompozyNbError) as caught:
        check_depth(value, 64, "payload")
    assert caught.value.code == "INVALID_PAYLOAD"
    check_depth({"a": [{"b": 1}]}, 3, "payload")
