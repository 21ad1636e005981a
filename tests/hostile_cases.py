"""The hostile-input corpus: inputs an attacker (or an unlucky user) sends, per entry point.

``tests/test_hostile_corpus.py`` runs every case and asserts: no HTTP 500, no traceback, the error code
expected, and nothing written to Redis. To add a case, append it to the list of its entry point:

* :data:`HTTP_CASES` - a request to the real app (``python -m compozy_nb.server`` serving the repository's
  project; memory resource ``conversation_memory``, key ``conv:u1:s1`` already holds one message).
* :data:`CLI_CASES` - ``compozy-nb`` arguments (``{tmp}`` is replaced by a scratch directory, ``{project}``
  by the repository), optional stdin bytes and files to create first.
* :data:`PYTHON_CASES` - a function of the loaded :class:`~compozy_nb.Project` that must raise.
* :data:`YAML_CASES` - the bytes of a memory resource file that loading the project must refuse.

``codes`` is the set of acceptable error codes (several when the order of checks may vary).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from compozy_nb import Project
from compozy_nb.backends import connect

MEMORY = "/api/v0/memory/conversation_memory"
KEY = "conv:u1:s1"
MB = 1_000_000


def nested(depth: int, leaf: str = "1") -> str:
    """JSON text of ``depth`` nested lists around ``leaf``."""
    return "[" * depth + leaf + "]" * depth


def nested_value(depth: int) -> Any:
    """A Python value of ``depth`` nested lists (built without recursion)."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def message_body(content: str, **extra: Any) -> bytes:
    """An append/write body for :data:`KEY` with one message."""
    return json.dumps({"key": KEY, "messages": [{"role": "user", "content": content, **extra}]}).encode()


def execute_body(**fields: Any) -> bytes:
    """An execute body (memory task, ad hoc) with ``fields`` over a read of ``conversation_memory``."""
    body = {"type": "memory", "operation": "read", "memory_ref": "conversation_memory", **fields}
    return json.dumps(body).encode()


@dataclass(frozen=True)
class HttpCase:
    """One request: ``body`` is sent as is with ``Content-Type: application/json`` (unless in ``headers``)."""

    name: str
    method: str
    path: str
    body: bytes | None
    codes: frozenset[str]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CliCase:
    """One ``compozy-nb`` invocation; ``files`` maps a path (``{tmp}`` expanded) to its bytes."""

    name: str
    args: tuple[str, ...]
    codes: frozenset[str]
    stdin: bytes | None = None
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class PythonCase:
    """A call on the loaded project that must raise a :class:`~compozy_nb.errors.CompozyNbError`."""

    name: str
    call: Callable[[Project], Any]
    codes: frozenset[str]
    marks: tuple[Any, ...] = ()


@dataclass(frozen=True)
class YamlCase:
    """A memory resource file (``memory/hostile.yaml``) that loading the project must refuse."""

    name: str
    content: bytes
    codes: frozenset[str] = frozenset({"INVALID_CONFIG"})


def codes(*names: str) -> frozenset[str]:
    """The acceptable codes of a case."""
    return frozenset(names)


def alias_bomb(levels: int = 9, fanout: int = 10) -> bytes:
    """A "billion laughs" YAML document (about 1 KB, ``fanout ** levels`` nodes once expanded)."""
    lines = ['l0: &l0 ["lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]" for i in range(1, levels + 1)]
    return ("\n".join(lines) + "\n").encode()


ALIAS_BOMB = alias_bomb()


HTTP_CASES: list[HttpCase] = [
    HttpCase(
        "body nested 100,000 deep", "POST", f"{MEMORY}/append", nested(100_000).encode(), codes("INVALID_PAYLOAD")
    ),
    HttpCase("body nested 900 deep", "POST", f"{MEMORY}/append", nested(900).encode(), codes("INVALID_PAYLOAD")),
    HttpCase("8 MB of '['", "POST", f"{MEMORY}/append", b"[" * 8 * MB, codes("INVALID_PAYLOAD")),
    HttpCase(
        "message metadata nested 700 deep",
        "POST",
        f"{MEMORY}/append",
        message_body("hi", metadata=nested_value(700)),
        codes("INVALID_PAYLOAD"),
    ),
    HttpCase(
        "execute input nested 5,000 deep",
        "POST",
        "/workflows/w/tasks/t/execute",
        execute_body(key_template="conv:{{.u}}", input={"u": "x", "deep": "DEEP"}).replace(
            b'"DEEP"', nested(5000).encode()
        ),
        codes("INVALID_PAYLOAD"),
    ),
    HttpCase("body not UTF-8", "POST", f"{MEMORY}/append", b'{"key": "caf\xe9"}', codes("INVALID_REQUEST")),
    HttpCase("1 M spaces", "POST", f"{MEMORY}/append", message_body(" " * MB + "x"), codes("LIMIT_EXCEEDED")),
    HttpCase("1 M NBSP", "POST", f"{MEMORY}/append", message_body("x" + "\u00a0" * MB + "x"), codes("LIMIT_EXCEEDED")),
    HttpCase("4 M newlines", "POST", f"{MEMORY}/append", message_body("\n" * 4 * MB + "x"), codes("LIMIT_EXCEEDED")),
    HttpCase("7.5 MB message", "POST", f"{MEMORY}/write", message_body("a b " * 1_875_000), codes("LIMIT_EXCEEDED")),
    HttpCase(
        "template of 30,000 blocks (180 KB)",
        "POST",
        "/workflows/w/tasks/t/execute",
        execute_body(key_template="{{.u}}" * 30_000, input={"u": "x"}),
        codes("TEMPLATE_ERROR"),
    ),
    HttpCase(
        "template of 300 blocks",
        "POST",
        "/workflows/w/tasks/t/execute",
        execute_body(key_template="c" + "{{.u}}" * 300, input={"u": "x"}),
        codes("TEMPLATE_ERROR"),
    ),
    HttpCase(
        "key variable null",
        "POST",
        "/workflows/w/tasks/t/execute",
        execute_body(key_template="conv:{{.u}}", input={"u": None}),
        codes("TEMPLATE_ERROR"),
    ),
    HttpCase(
        "key variable empty",
        "POST",
        "/workflows/w/tasks/t/execute",
        execute_body(key_template="conv:{{.u}}", input={"u": ""}),
        codes("TEMPLATE_ERROR"),
    ),
    HttpCase(
        "DNS rebinding Host",
        "GET",
        f"{MEMORY}/read?key={KEY}",
        None,
        codes("HOST_NOT_ALLOWED"),
        {"Host": "evil.example"},
    ),
    HttpCase(
        "DNS rebinding Host on delete",
        "POST",
        f"{MEMORY}/delete",
        json.dumps({"key": KEY}).encode(),
        codes("HOST_NOT_ALLOWED"),
        {"Host": "evil.example:8000"},
    ),
    HttpCase(
        "append NaN in a message",
        "POST",
        f"{MEMORY}/append",
        message_body("x").replace(b'"x"', b'"x", "m": NaN'),
        codes("INVALID_PAYLOAD"),
    ),
    HttpCase(
        "append 1e999 in a message",
        "POST",
        f"{MEMORY}/append",
        message_body("x").replace(b'"x"', b'"x", "m": [1e999]'),
        codes("INVALID_PAYLOAD"),
    ),
    HttpCase(
        "append a Content extra", "POST", f"{MEMORY}/append", message_body("x", Content=[1]), codes("INVALID_PAYLOAD")
    ),
    HttpCase(
        "write a tool call on a user message",
        "POST",
        f"{MEMORY}/write",
        message_body("x", tool_calls=[{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]),
        codes("INVALID_PAYLOAD"),
    ),
    HttpCase(
        "append an unknown content part",
        "POST",
        f"{MEMORY}/append",
        json.dumps({"key": KEY, "messages": [{"role": "user", "content": [{"type": "video"}]}]}).encode(),
        codes("INVALID_PAYLOAD"),
    ),
    HttpCase(
        "append null content without tool calls",
        "POST",
        f"{MEMORY}/append",
        json.dumps({"key": KEY, "messages": [{"role": "assistant", "content": None}]}).encode(),
        codes("INVALID_PAYLOAD"),
    ),
    HttpCase(
        "read since not a date", "GET", f"{MEMORY}/read?key={KEY}&since=yesterday", None, codes("INVALID_PAYLOAD")
    ),
]


def basic_body(**fields: Any) -> bytes:
    """An execute body for a basic task (an LLM call) with ``fields``."""
    body = {"type": "basic", "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(body).encode()


HTTP_CASES += [
    HttpCase(
        "openai base_url that is not http(s), with a token",
        "POST",
        "/workflows/w/tasks/t/execute",
        basic_body(provider="openai", model="m", base_url="ftp://bot:tok@llm.example/v1"),
        codes("INVALID_CONFIG"),
    ),
    HttpCase(
        "openai base_url with a port that is not a number",
        "POST",
        "/workflows/w/tasks/t/execute",
        basic_body(provider="openai", model="m", base_url="http://llm.example:notaport/v1"),
        codes("INVALID_CONFIG"),
    ),
    HttpCase(
        "python provider with no registered function",
        "POST",
        "/workflows/w/tasks/t/execute",
        basic_body(provider="python", function="nobody"),
        codes("INVALID_CONFIG"),
    ),
]

CLI_CASES: list[CliCase] = [
    CliCase("exec - with invalid UTF-8 on stdin", ("exec", "-"), codes("INVALID_CONFIG"), stdin=b"\xff\xfe{}"),
    CliCase(
        "exec a request file nested 100,000 deep",
        ("exec", "{tmp}/deep.json"),
        codes("INVALID_PAYLOAD"),
        files={"{tmp}/deep.json": nested(100_000).encode()},
    ),
    CliCase(
        "exec a request file that is not UTF-8",
        ("exec", "{tmp}/latin1.json"),
        codes("INVALID_CONFIG"),
        files={"{tmp}/latin1.json": '{"key_template": "caf\xe9"}'.encode("latin-1")},
    ),
    CliCase(
        "run --input nested 5,000 deep",
        ("run", "chatbot-workflow", "--input", '{"a":' * 5000 + "1" + "}" * 5000),
        codes("INVALID_PAYLOAD"),
    ),
    CliCase(
        "exec with 1 M spaces",
        ("exec", "-"),
        codes("LIMIT_EXCEEDED"),
        stdin=execute_body(operation="append", key_template=KEY, payload={"role": "user", "content": " " * MB + "x"}),
    ),
    CliCase(
        "exec with an empty key variable",
        ("exec", "-"),
        codes("TEMPLATE_ERROR"),
        stdin=execute_body(key_template="conv:{{.u}}", input={"u": ""}),
    ),
    CliCase(
        "validate a resource file that is not UTF-8",
        ("validate", "--project", "{tmp}/project"),
        codes("INVALID_CONFIG"),
        files={
            "{tmp}/project/compozy.yaml": b"name: hostile\n",
            "{tmp}/project/memory/m.yaml": "resource: memory\nid: m\ndescription: caf\xe9\n".encode("latin-1"),
        },
    ),
]


REPO_REDIS = ("--project", "{project}", "--redis")
CLI_CASES += [
    CliCase(
        "memory ls, port not a number",
        ("memory", "ls", *REPO_REDIS, "redis://:pw@localhost:notaport/0"),
        codes("INVALID_CONFIG"),
    ),
    CliCase(
        "memory ls, broken IPv6 host", ("memory", "ls", *REPO_REDIS, "redis://:pw@[::1/0"), codes("INVALID_CONFIG")
    ),
    CliCase(
        "memory ls, bad redis-py option",
        ("memory", "ls", *REPO_REDIS, "redis://localhost/0?password=pw&socket_timeout=abc"),
        codes("INVALID_CONFIG"),
    ),
    CliCase(
        "memory ls, database not a number",
        ("memory", "ls", *REPO_REDIS, "redis://localhost/zero"),
        codes("INVALID_CONFIG"),
    ),
    CliCase(
        "memory ls, unknown scheme",
        ("memory", "ls", *REPO_REDIS, "memcached://localhost/0"),
        codes("BACKEND_UNAVAILABLE"),
    ),
    CliCase(
        "exec with a port out of range",
        ("exec", "-", *REPO_REDIS, "redis://localhost:99999/0"),
        codes("INVALID_CONFIG"),
        stdin=execute_body(key_template=KEY),
    ),
    CliCase(
        "validate a recursive alias",
        ("validate", "--project", "{tmp}/project"),
        codes("INVALID_CONFIG"),
        files={"{tmp}/project/compozy.yaml": b"name: hostile\n", "{tmp}/project/workflows/w.yaml": b"a: &a [*a]\n"},
    ),
    CliCase(
        "validate a 1 KB billion-laughs compozy.yaml",
        ("validate", "--project", "{tmp}/project"),
        codes("INVALID_CONFIG"),
        files={"{tmp}/project/compozy.yaml": ALIAS_BOMB},
    ),
    CliCase(
        "exec a basic task whose openai base_url is not http(s)",
        ("exec", "-"),
        codes("INVALID_CONFIG"),
        stdin=basic_body(provider="openai", model="m", base_url="file:///etc/passwd"),
    ),
]


def _python_llm(reply: Any) -> Callable[[Project], Any]:
    """Register a Python LLM returning ``reply`` and execute a basic task that calls it."""

    def call(project: Project) -> Any:
        project.llm("hostile")(lambda messages: reply)
        return project.execute(json.loads(basic_body(provider="python", function="hostile")))

    return call


def _memory(project: Project, **variables: Any) -> Any:
    return project.memory("conversation_memory", **variables)


PYTHON_CASES: list[PythonCase] = [
    PythonCase("key variable None", lambda p: _memory(p, user_id=None, session_id="s1"), codes("TEMPLATE_ERROR")),
    PythonCase("key variable ''", lambda p: _memory(p, user_id="", session_id="s1"), codes("TEMPLATE_ERROR")),
    PythonCase(
        "key variable NaN", lambda p: _memory(p, user_id=float("nan"), session_id="s1"), codes("TEMPLATE_ERROR")
    ),
    PythonCase(
        "append 1 M spaces",
        lambda p: p.memory("conversation_memory", key=KEY).append(" " * MB + "x"),
        codes("LIMIT_EXCEEDED"),
    ),
    PythonCase(
        "append 1 M NBSP",
        lambda p: p.memory("conversation_memory", key=KEY).append("x" + "\u00a0" * MB + "x"),
        codes("LIMIT_EXCEEDED"),
    ),
    PythonCase(
        "execute with a 180 KB template",
        lambda p: p.execute(json.loads(execute_body(key_template="{{.u}}" * 30_000)), {"u": "x"}),
        codes("TEMPLATE_ERROR"),
    ),
    PythonCase(
        "append metadata nested 3,000 deep",
        lambda p: p.memory("conversation_memory", key=KEY).append(
            {"role": "user", "content": "hi", "metadata": nested_value(3000)}
        ),
        codes("INVALID_PAYLOAD"),
    ),
    PythonCase(
        "append a tool call whose arguments are a dict",
        lambda p: p.memory("conversation_memory", key=KEY).append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}],
            }
        ),
        codes("INVALID_PAYLOAD"),
    ),
    PythonCase(
        "append float('nan') in metadata",
        lambda p: p.memory("conversation_memory", key=KEY).append(
            {"role": "user", "content": "x", "metadata": {"score": float("nan")}}
        ),
        codes("INVALID_PAYLOAD"),
    ),
    PythonCase(
        "append an extra field named CONTENT",
        lambda p: p.memory("conversation_memory", key=KEY).append({"role": "user", "content": "x", "CONTENT": 1}),
        codes("INVALID_PAYLOAD"),
    ),
]

PYTHON_CASES += [
    PythonCase(
        "python LLM returns usage as a list", _python_llm({"content": "x", "usage": [1]}), codes("PROVIDER_ERROR")
    ),
    PythonCase(
        "python LLM returns a non-numeric usage",
        _python_llm({"content": "x", "usage": {"prompt_tokens": "many"}}),
        codes("PROVIDER_ERROR"),
    ),
    PythonCase("python LLM returns no content", _python_llm({"text": "x"}), codes("PROVIDER_ERROR")),
    PythonCase(
        "openai at a closed port",
        lambda p: p.execute(
            json.loads(basic_body(provider="openai", model="m", base_url="http://127.0.0.1:1/v1", timeout=3))
        ),
        codes("PROVIDER_ERROR", "PROVIDER_TIMEOUT"),
    ),
    PythonCase(
        "connect to a URL whose port is not a number",
        lambda p: connect("redis://:pw@localhost:notaport/0"),
        codes("INVALID_CONFIG"),
    ),
]

YAML_CASES: list[YamlCase] = [
    YamlCase("not UTF-8", "resource: memory\nid: m\ndescription: caf\xe9\n".encode("latin-1")),
    YamlCase("nested 5,000 deep", b"resource: memory\nid: m\nx: " + nested(5000, "").encode() + b"\n"),
    YamlCase("nested 200 deep", b"resource: memory\nid: m\nx: " + nested(200, "1").encode() + b"\n"),
    YamlCase("a recursive alias", b"resource: memory\nid: m\ndescription: &a [*a]\n"),
    YamlCase("a billion-laughs alias bomb", b"resource: memory\nid: m\n" + ALIAS_BOMB),
    YamlCase(
        "a key template of 300 blocks",
        b"resource: memory\nid: m\nkey: 'c" + b"{{.u}}" * 300 + b"'\n",
        codes("INVALID_CONFIG", "TEMPLATE_ERROR"),
    ),
]


# ---------------------------------------------------------------------------- transcripts
def _call(call_id: str, name: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


# Malformed agent messages (case, payload, the field the error names): tests/engine/test_transcripts.py sends each
# through the Python API, tests/shells/test_transcripts_shells.py through HTTP and ``compozy-nb exec``.
TRANSCRIPT_CASES: list[tuple[str, Any, str]] = [
    ("null content for a user", {"role": "user", "content": None}, "payload.content"),
    ("null content without tool calls", {"role": "assistant", "content": None}, "payload.content"),
    ("empty parts", {"role": "user", "content": []}, "payload.content"),
    ("unknown part", {"role": "user", "content": [{"type": "video", "video": {}}]}, "payload.content[0].type"),
    (
        "image in a system message",
        {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        "payload.content[0].type",
    ),
    ("text part without text", {"role": "user", "content": [{"type": "text"}]}, "payload.content[0].text"),
    (
        "image_url without url",
        {"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
        "payload.content[0].image_url.url",
    ),
    (
        "file without data",
        {"role": "user", "content": [{"type": "file", "file": {"filename": "a"}}]},
        "payload.content[0].file",
    ),
    ("tool_calls on a user", {"role": "user", "content": "x", "tool_calls": [_call("a", "f")]}, "payload.tool_calls"),
    ("empty tool_calls", {"role": "assistant", "content": "x", "tool_calls": []}, "payload.tool_calls"),
    (
        "arguments as a dict",
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": {}}}],
        },
        "payload.tool_calls[0].function.arguments",
    ),
    (
        "tool call without id",
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        "payload.tool_calls[0].id",
    ),
    (
        "wrong tool call type",
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "a", "type": "web", "function": {"name": "f", "arguments": "{}"}}],
        },
        "payload.tool_calls[0].type",
    ),
    (
        "tool_call_id on an assistant",
        {"role": "assistant", "content": "x", "tool_call_id": "a"},
        "payload.tool_call_id",
    ),
    ("empty tool_call_id", {"role": "tool", "content": "x", "tool_call_id": ""}, "payload.tool_call_id"),
    ("name not a string", {"role": "user", "content": "x", "name": 3}, "payload.name"),
    ("refusal on a user", {"role": "user", "content": "x", "refusal": "no"}, "payload.refusal"),
    ("reserved field", {"role": "user", "content": "x", "content_parts": []}, "payload.content_parts"),
    ("NaN in metadata", {"role": "user", "content": "x", "metadata": {"score": math.nan}}, "payload.metadata.score"),
    ("Infinity in a list", {"role": "user", "content": "x", "scores": [1.0, math.inf]}, "payload.scores[1]"),
    (
        "tool_use in a system message",
        {"role": "system", "content": [{"type": "tool_use", "id": "a", "name": "f"}]},
        "payload.role",
    ),
    (
        "tool_result without id",
        {"role": "user", "content": [{"type": "tool_result", "content": "x"}]},
        "payload.content[0].tool_use_id",
    ),
    (
        "image with a bad source",
        {"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]},
        "payload.content[0].source",
    ),
    (
        "tool_use input NaN",
        {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {"x": math.nan}}]},
        "payload.content[0].input.x",
    ),
]
