"""The operation registry (compozy_nb.memory.operations) is the only place the 8 memory operations and their
options are declared: every shell exposes exactly what it declares, and a new option shows up everywhere."""

from __future__ import annotations

import argparse
import inspect
import json
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field, ValidationError

from compozy_nb import AsyncMemory, MemoryInstance, Project
from compozy_nb.backends import Backend
from compozy_nb.config.task import MemoryTask
from compozy_nb.errors import CompozyNbError, ConfigError
from compozy_nb.memory import operations
from compozy_nb.memory.instance import run_operation
from compozy_nb.memory.operations import OPERATIONS, Operation, Options, arguments, flag
from compozy_nb.notebook import magics
from compozy_nb.testing import check_output, on_transport

EIGHT = ("read", "write", "append", "delete", "flush", "health", "clear", "stats")
RESOURCE = {"resource": "memory", "id": "mem", "type": "token_based", "max_tokens": 4000, "key": "k:{{.u}}"}


def _project(backend: Backend) -> Project:
    project = Project("registry")
    project.use_backend(backend)
    project.add_yaml(yaml.safe_dump(RESOURCE, sort_keys=False))
    return project


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _magic_parsers() -> dict[str, argparse.ArgumentParser]:
    memory = magics._subparsers(magics._parser())["memory"]
    return magics._subparsers(memory)


def test_the_registry_declares_the_eight_operations() -> None:
    assert tuple(OPERATIONS) == EIGHT == operations.NAMES
    assert [op.name for op in OPERATIONS.values() if op.payload] == ["write", "append"]
    assert {op.name for op in OPERATIONS.values() if op.writes} == {"write", "append", "delete", "flush", "clear"}
    assert all(op.summary and issubclass(op.options, Options) for op in OPERATIONS.values())


def test_the_task_model_has_one_config_block_per_operation_with_options() -> None:
    blocks = {name for name in MemoryTask.model_fields if name.endswith("_config")}
    assert blocks == {op.config_field for op in OPERATIONS.values() if op.config_field}
    for op in OPERATIONS.values():
        if op.config_field:
            assert MemoryTask.model_fields[op.config_field].annotation == op.options | None
    with pytest.raises(ValidationError, match="must be one of: read, write, append"):
        MemoryTask.model_validate({"operation": "frobnicate", "memory_ref": "m"})
    for name in ("write", "append"):
        with pytest.raises(ValidationError, match=f"{name} operation requires payload"):
            MemoryTask.model_validate({"operation": name, "memory_ref": "m"})


@pytest.mark.parametrize("name", EIGHT)
def test_both_transports_take_exactly_the_registered_options(name: str) -> None:
    op = OPERATIONS[name]
    for transport in (MemoryInstance, AsyncMemory):
        parameters = dict(inspect.signature(getattr(transport, name)).parameters)
        parameters.pop("self")
        expected = ["payload"] if op.payload else list(arguments(op))
        assert list(parameters) == expected, (transport.__name__, name)
        for option, info in arguments(op).items():
            assert parameters[option].default == info.default, (transport.__name__, name, option)


@pytest.mark.parametrize("name", EIGHT)
def test_the_magic_exposes_exactly_the_registered_options(name: str) -> None:
    op = OPERATIONS[name]
    instance = {"--key", "--var", "--output", "--help"}
    payload = {"--payload"} if op.payload else set()
    extra = {"--pattern"} if name == "stats" else set()  # stats of many instances: a magic-only view
    options = {flag(n, info) for n, info in arguments(op).items()}
    negated = {"--no-" + f[2:] for n, info in arguments(op).items() if info.default is True for f in [flag(n, info)]}
    assert _flags(_magic_parsers()[name]) == instance | payload | extra | options | negated
    for n, info in arguments(op).items():
        action = next(a for a in _magic_parsers()[name]._actions if a.dest == n)
        assert action.help == info.description and action.default is None, (name, n)


def test_the_http_server_exposes_exactly_the_registered_options() -> None:
    """Request models derive from the registry: a flush/clear body carries the options (the Compozy-only ones
    too, accepted and ignored), a read/health/stats query the options that reach the method, an execute
    request one config block per operation with options; OpenAPI shows them."""
    from compozy_nb.server import models
    from compozy_nb.server.app import create_app

    assert {n for n in models.TaskRequest.model_fields if n.endswith("_config")} == {
        op.config_field for op in OPERATIONS.values() if op.config_field
    }
    for name, body in (("flush", models.FlushRequest), ("clear", models.ClearRequest)):
        assert set(body.model_fields) == {"key", *OPERATIONS[name].options.model_fields}, name
    queries: dict[str, type[BaseModel]] = {
        "read": models.ReadQuery,
        "health": models.HealthQuery,
        "stats": models.StatsQuery,
    }
    for name, query in queries.items():
        assert set(query.model_fields) == set(arguments(OPERATIONS[name])), name
    for name in ("write", "append", "delete"):
        assert not arguments(OPERATIONS[name])  # their bodies: key (and messages)

    paths = create_app(Project("registry")).openapi()["paths"]
    for name in queries:
        parameters = {p["name"] for p in paths[f"/api/v0/memory/{{memory_ref}}/{name}"]["get"]["parameters"]}
        http_names = {"role" if n == "roles" else n for n in arguments(OPERATIONS[name])}
        assert parameters == {"memory_ref", "key", *http_names}, name


def test_every_output_is_its_declared_type_on_both_transports(backend: Backend, transport: str) -> None:
    """Each operation's output map, in every case that adds or changes keys (a page, the newest N, a budget, the
    archive, a filter; a dry run, a flush with nothing to do, a summary flush an append triggers; health with
    and without stats; stats with content; clear with a backup), is exactly its ``TypedDict`` in
    ``memory/outputs.py``: required keys present, nothing undeclared, values of the declared types."""
    resource = {
        **RESOURCE,
        "max_messages": 10,
        "flushing": {"type": "hybrid_summary", "summary_tokens": 60, "summarize_threshold": 0.8},
    }
    project = Project("outputs")
    project.use_backend(backend)
    project.add_yaml(yaml.safe_dump(resource, sort_keys=False))
    mem = on_transport(project.memory("mem", u="ada"))
    seen: dict[str, int] = dict.fromkeys(EIGHT, 0)

    def check(name: str, out: Any) -> Any:
        check_output(name, out)
        seen[name] += 1
        return out

    check("append", mem.append([{"role": "user", "content": f"m{i}"} for i in range(7)]))
    assert "summary_flush" in check("append", mem.append({"role": "user", "content": "m7"}))  # 8 of 10
    check("append", mem.append({"role": "assistant", "content": "again", "id": "same"}))
    assert check("append", mem.append({"role": "assistant", "content": "again", "id": "same"}))["duplicates"] == 1
    for options in (
        {},
        {"limit": 2, "offset": 1},
        {"last": 2},
        {"max_tokens": 10},
        {"roles": ["assistant"]},
        {"since": "2020-01-01T00:00:00Z", "last": 1},
        {"archive": True},
    ):
        check("read", operations.call(mem, "read", options=options))
    for options in ({"dry_run": True, "force": True}, {}, {"force": True, "strategy": "simple_fifo"}):
        check("flush", operations.call(mem, "flush", options=options))
    check("health", mem.health())
    check("health", mem.health(include_stats=False))
    check("stats", mem.stats())
    assert "content_preview" in check("stats", mem.stats(include_content=True))
    check("write", mem.write([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]))
    check("clear", mem.clear(confirm=True))
    mem.append("one more")
    assert check("clear", mem.clear(confirm=True, backup=True))["backup_key"]
    check("delete", mem.delete())
    check("stats", mem.stats())  # an empty memory: no utilisation, no last flush
    assert all(seen.values()), seen
    with pytest.raises(AssertionError, match="undeclared \\['colour'\\]"):
        check_output("delete", {**mem.delete(), "colour": "red"})
    with pytest.raises(AssertionError, match="deleted"):
        check_output("delete", {**mem.delete(), "deleted": "yes"})


def test_ignored_options_are_accepted_in_tasks_but_reach_no_shell_or_method() -> None:
    ignored = {
        (op.name, n) for op in OPERATIONS.values() for n, i in op.options.model_fields.items() if operations.ignored(i)
    }
    assert ignored == {("flush", "max_keys"), ("health", "check_connectivity"), ("stats", "group_by")}
    task = MemoryTask.model_validate(
        {"operation": "flush", "memory_ref": "m", "flush_config": {"max_keys": 5, "force": True}}
    )
    assert task.options() == {"dry_run": False, "force": True}
    for op_name, option in ignored:
        assert "--" + option.replace("_", "-") not in _flags(_magic_parsers()[op_name])


def test_run_operation_dispatches_through_the_registry(backend: Backend) -> None:
    project = _project(backend)
    mem = project.memory("mem", u="ada")
    assert run_operation(mem, "append", [{"role": "user", "content": "hi"}])["appended"] == 1
    assert run_operation(mem, "read", None, {"last": 1})["messages"][0]["content"] == "hi"
    assert run_operation(mem, "stats", None, {"include_content": False})["message_count"] == 1
    with pytest.raises(ConfigError, match="invalid operation 'frobnicate', must be one of: read") as info:
        run_operation(mem, "frobnicate")
    assert info.value.context["field"] == "operation"
    with pytest.raises(ConfigError, match="stats has no option 'colour' \\(options: include_content\\)") as info:
        run_operation(mem, "stats", None, {"colour": "red"})
    assert info.value.context["field"] == "colour"
    assert mem.stats()["message_count"] == 1  # nothing else happened


def test_a_new_option_is_one_field_in_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a field to an operation's options model adds the task config field and the magic flag."""

    class StatsWithColour(operations.StatsConfig):
        colour: str | None = Field(None, description="the colour of the card")

    op = OPERATIONS["stats"]
    monkeypatch.setitem(OPERATIONS, "stats", Operation(op.name, op.summary, StatsWithColour))
    assert "--colour" in _flags(_magic_parsers()["stats"])
    assert next(a for a in _magic_parsers()["stats"]._actions if a.dest == "colour").help == "the colour of the card"
    assert operations.keywords(OPERATIONS["stats"], {"colour": "red"}) == {"colour": "red"}


def test_every_operation_runs_from_a_task_on_both_transports(backend: Backend) -> None:
    """A task's config block reaches the method: one task per operation, run through the workflow runner's
    path (run_operation) and through AsyncMemory with the same options."""
    import asyncio

    project = _project(backend)
    tasks: dict[str, dict[str, Any]] = {
        "write": {"payload": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]},
        "append": {"payload": {"role": "assistant", "content": "b"}},
        "read": {"read_config": {"last": 2}},
        "stats": {"stats_config": {"include_content": True}},
        "health": {"health_config": {"include_stats": False}},
        "flush": {"flush_config": {"force": True, "dry_run": True}},
        "clear": {"clear_config": {"confirm": True}},
        "delete": {},
    }
    outputs = {}
    for kind in ("sync", "async"):
        mem = project.memory("mem", u=kind)
        for name, fields in tasks.items():
            task = MemoryTask.model_validate({"operation": name, "memory_ref": "mem", **fields})
            if kind == "sync":
                out = run_operation(mem, name, task.payload, task.options())
            else:
                out = asyncio.run(operations.call(AsyncMemory(mem), name, task.payload, task.options()))
            outputs[kind, name] = json.loads(json.dumps(out, default=str))
    for kind in ("sync", "async"):
        assert [m["content"] for m in outputs[kind, "read"]["messages"]] == ["a", "b"]
        assert len(outputs[kind, "stats"]["content_preview"]["first"]) == 3
        assert "usage" not in outputs[kind, "health"] and outputs[kind, "health"]["healthy"] is True
        assert outputs[kind, "flush"]["dry_run"] is True
        assert outputs[kind, "clear"]["messages_cleared"] == 3
    assert backend.client.keys("*k:*") == []


def test_the_engine_names_the_parameter_and_a_task_names_its_config_field(backend: Backend) -> None:
    mem = _project(backend).memory("mem", u="ada")
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        ("read", {"since": "yesterday"}, "since", "since: not an ISO-8601 date/time"),
        ("read", {"limit": -1}, "limit", "limit: must be a non-negative integer, got -1"),
        ("read", {"roles": [1]}, "roles", "roles: must be a list of role names"),
        ("flush", {"strategy": "hybrid_summary"}, "strategy", "hybrid_summary needs flushing.summary_tokens"),
        ("clear", {}, "confirm", "clear operation requires clear_config.confirm to be true"),
    ]
    for name, options, field, text in cases:
        with pytest.raises(CompozyNbError) as direct:
            getattr(mem, name)(**options)
        assert direct.value.context["field"] == field and text in str(direct.value), name
        with pytest.raises(CompozyNbError) as in_task:
            run_operation(mem, name, None, options)
        prefixed = f"{name}_config.{field}"
        assert in_task.value.context["field"] == prefixed and in_task.value.code == direct.value.code, name
        message = str(in_task.value)
        assert message.count(field) == 1 and (message.startswith(prefixed) or prefixed in message), message
    assert mem.stats()["message_count"] == 0
