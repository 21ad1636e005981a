"""The operation log: one event per change, written by the script that makes it; ``mem.log()``, ``mem.why()``,
``mem.plot_log()``; sources from every shell; the stream's cap, TTL and layout. Real Redis and embedded."""

from __future__ import annotations

import json
import threading
from typing import Any, cast

import pytest
import yaml

from compozy_nb import MemoryOperationError, Project
from compozy_nb.backends import Backend
from compozy_nb.memory.instance import MemoryInstance
from compozy_nb.memory.keys import KeyLayout
from compozy_nb.memory.log import log_source
from compozy_nb.sdk import EMAIL
from compozy_nb.testing import on_transport

pytestmark = pytest.mark.usefixtures("transport")  # every test on both transports (conftest.py)

PROJECT = "oplog"


def make_memory(backend: Backend, key: str = "chat:1", **fields: Any) -> MemoryInstance:
    project = Project(PROJECT)
    project.use_backend(backend)
    project.add_yaml(yaml.safe_dump({"resource": "memory", "id": "mem", **fields}, sort_keys=False))
    return on_transport(project.memory("mem", key=key))


def msg(content: str, mid: str, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": content, "id": mid}


def ops(mem: MemoryInstance) -> list[str]:
    return [e["operation"] for e in mem.log()]


def raw_log(mem: MemoryInstance) -> bytes:
    entries = mem.backend.client.xrange(mem.layout.log)
    return json.dumps([[eid.decode(), {k.decode(): v.decode() for k, v in f.items()}] for eid, f in entries]).encode()


def test_append_logs_ids_and_totals(backend: Backend) -> None:
    mem = make_memory(backend, type="buffer")
    mem.append([msg("hello", "m1"), msg("hi there", "m2", "assistant")])
    (event,) = mem.log()
    assert event["operation"] == "append" and event["source"] == "python"
    assert event["appended"] == 2 and event["ids"] == ["m1", "m2"] and event["evicted"] == 0
    stats = mem.stats()
    assert (event["messages"], event["tokens"]) == (stats["message_count"], stats["token_count"])
    assert event["ts"].tzinfo is not None


def test_eviction_on_write_is_in_the_append_event(backend: Backend) -> None:
    mem = make_memory(backend, type="message_count_based", max_messages=3)
    for i in range(5):
        mem.append(msg(f"message {i}", f"m{i}"))
    events = mem.log()
    assert [e["evicted"] for e in events] == [0, 0, 0, 1, 1]
    assert [e["evicted_ids"] for e in events[3:]] == [["m0"], ["m1"]]
    assert [e["messages"] for e in events] == [1, 2, 3, 3, 3]
    fate = mem.why("m0")
    assert fate["fate"] == "evicted" and fate["by"] == "limit" and fate["at"] == events[3]["ts"]
    assert mem.why("m4")["fate"] == "kept"


def test_write_and_restore_replace(backend: Backend) -> None:
    mem = make_memory(backend, type="buffer")
    mem.append([msg("old one", "old1"), msg("old two", "old2")])
    mem.write([msg("new", "new1")])
    assert ops(mem) == ["append", "write"]
    assert mem.log()[-1]["ids"] == ["new1"]
    assert mem.why("old1")["fate"] == "replaced" and mem.why("new1")["fate"] == "kept"
    cleared = mem.clear(confirm=True, backup=True)
    assert mem.why("new1")["fate"] == "cleared" and mem.why("new1")["backup_key"] == cleared["backup_key"]
    assert cleared["backup_key"] is not None
    mem.restore(cleared["backup_key"])
    assert ops(mem) == ["append", "write", "clear", "restore"]
    assert mem.log()[-1]["ids"] == ["new1"] and mem.why("new1")["fate"] == "kept"


def test_flush_logs_flushed_ids_and_strategy(backend: Backend) -> None:
    mem = make_memory(backend, type="buffer", max_messages=10)
    mem.append([msg(f"message {i}", f"m{i}") for i in range(8)])
    out = mem.flush("simple_fifo", force=True)
    event = mem.log()[-1]
    assert event["operation"] == "flush" and event["strategy"] == "simple_fifo"
    assert event["flushed"] == out["flushed_count"] > 0
    assert event["flushed_ids"] == [f"m{i}" for i in range(out["flushed_count"])]
    assert (event["messages"], event["tokens"]) == (out["message_count"], out["token_count"])
    fate = mem.why("m0")
    assert fate["fate"] == "flushed" and fate["strategy"] == "simple_fifo"


def test_summary_is_logged_with_its_id(backend: Backend) -> None:
    mem = make_memory(
        backend, type="token_based", max_tokens=2000, flushing={"type": "hybrid_summary", "summary_tokens": 60}
    )
    mem.append([msg(f"fact number {i}: the sky is blue", f"m{i}") for i in range(10)])
    mem.flush(force=True)
    event = mem.log()[-1]
    summary = next(m for m in mem.read()["messages"] if m.get("summary"))
    assert event["summary_id"] == summary["id"] and event["strategy"] == "hybrid_summary"
    fate = mem.why(event["flushed_ids"][0])
    assert fate["fate"] == "summarized" and fate["summary_id"] == summary["id"]
    assert mem.why(summary["id"])["fate"] == "kept" and mem.why(summary["id"])["added_at"] == event["ts"]
    mem.append([msg(f"later fact {i}", f"n{i}") for i in range(10)])
    mem.flush(force=True)  # the first summary is folded into the next one
    refolded = mem.why(summary["id"])
    assert refolded["fate"] == "summarized" and refolded["summary_id"] == mem.log()[-1]["summary_id"]


def test_clear_keeps_the_log_and_delete_removes_it(backend: Backend) -> None:
    mem = make_memory(backend, type="buffer")
    mem.append(msg("hello", "m1"))
    mem.clear(confirm=True)
    assert ops(mem) == ["append", "clear"] and mem.log()[-1]["cleared"] == 1
    assert mem.why("m1")["fate"] == "cleared" and mem.why("m1")["backup_key"] is None
    mem.append(msg("again", "m2"))
    assert mem.why("never-stored")["fate"] == "unknown"
    mem.delete()  # removes the log with the memory: nothing of a deleted memory stays
    assert mem.log() == [] and not mem.backend.client.exists(mem.layout.log)
    assert mem.why("m2")["fate"] == "unknown"


def test_adoption_of_a_compozy_list_is_logged(backend: Backend) -> None:
    mem = make_memory(backend, type="buffer")
    client = backend.client
    client.rpush(mem.layout.base, json.dumps({"role": "user", "content": "from Compozy"}))
    mem.append(msg("from us", "ours"))
    adopt, append = mem.log()
    assert adopt["operation"] == "adopt" and len(adopt["ids"]) == 1 and adopt["messages"] == 1
    assert append["operation"] == "append" and append["messages"] == 2
    assert mem.why(adopt["ids"][0])["fate"] == "kept"


def test_redacted_spans_are_counted_never_shown(backend: Backend) -> None:
    mem = make_memory(backend, type="buffer", privacy_policy={"redact_patterns": [EMAIL]})
    mem.append(msg("write to ann@example.com or bob@example.org", "m1"))
    assert mem.log()[-1]["redacted"] == 2
    assert b"example.com" not in raw_log(mem) and b"ann" not in raw_log(mem)
    mem.append(msg("nothing private", "m2"))
    assert "redacted" not in mem.log()[-1]


def test_log_config_enabled_cap_ttl_and_reads(backend: Backend) -> None:
    off = make_memory(backend, key="off", type="buffer", log={"enabled": False})
    off.append(msg("hello", "m1"))
    assert off.log() == [] and not backend.client.exists(off.layout.log)
    capped = make_memory(backend, key="capped", type="buffer", log={"max_events": 3}, persistence={"ttl": "1h"})
    for i in range(5):
        capped.append(msg(f"m {i}", f"m{i}"))
    assert [e["ids"] for e in capped.log()] == [["m2"], ["m3"], ["m4"]]
    assert 0 < backend.client.pttl(capped.layout.log) <= 3_600_000
    reads = make_memory(backend, key="reads", type="buffer", log={"reads": True})
    reads.append(msg("hello", "m1"))
    reads.read()
    reads.read(last=1)
    assert ops(reads) == ["append", "read", "read"] and reads.log()[-1]["count"] == 1
    quiet = make_memory(backend, key="quiet", type="buffer")
    quiet.append(msg("hello", "m1"))
    quiet.read()
    assert ops(quiet) == ["append"]


def test_since_limit_and_dataframe(backend: Backend) -> None:
    mem = make_memory(backend, type="buffer")
    for i in range(4):
        mem.append(msg(f"m {i}", f"m{i}"))
    events = mem.log()
    assert [e["ids"] for e in mem.log(limit=2)] == [["m0"], ["m1"]]
    assert [e["ids"] for e in mem.log(since=events[2]["id"])] == [["m2"], ["m3"]]
    assert len(mem.log(since=events[0]["ts"])) == 4
    frame = mem.log().to_pandas()
    assert str(frame["ts"].dt.tz) == "UTC" and frame["operation"].tolist() == ["append"] * 4
    assert "operation log" in mem.log()._repr_html_()
    with pytest.raises(ValueError):
        mem.log(since="yesterday")


def test_source_follows_the_shell(backend: Backend) -> None:
    mem = make_memory(backend, type="buffer")
    with log_source("workflow"):
        mem.append(msg("from a workflow", "m1"))
    mem.append(msg("from python", "m2"))
    assert [e["source"] for e in mem.log()] == ["workflow", "python"]


def test_flush_racing_appends_every_removed_message_in_exactly_one_event(backend: Backend) -> None:
    mem = make_memory(backend, type="message_count_based", max_messages=30, archive_max_messages=100000)
    appended: list[str] = []

    def appender(worker: int) -> None:
        for i in range(60):
            mid = f"w{worker}-{i}"
            mem.append(msg(f"worker {worker} message {i}", mid))
            appended.append(mid)

    def flusher() -> None:
        for _ in range(15):
            try:
                mem.flush("simple_fifo", force=True)
            except MemoryOperationError:  # adoption racing the appends (engine): this flush removed nothing
                pass

    threads = [threading.Thread(target=appender, args=(w,)) for w in range(3)] + [threading.Thread(target=flusher)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    removed: list[str] = []
    for event in mem.log(limit=None):
        removed += event.get("evicted_ids", []) + event.get("flushed_ids", [])
    assert len(removed) == len(set(removed))  # no message is removed twice
    kept = {m["id"] for m in mem.read()["messages"]}
    assert set(removed) | kept == set(appended) and not set(removed) & kept
    archived = {m["id"] for m in mem.read(archive=True)["messages"]}
    assert archived == set(removed)


def test_log_key_layout() -> None:
    standalone = KeyLayout("demo", "conv:u1:s1")
    cluster = KeyLayout("demo", "conv:u1:s1", cluster=True)
    assert standalone.log == "compozy:demo:memory:conv:u1:s1:log"
    assert cluster.log == "compozy:demo:memory:{conv:u1:s1}:log"  # same hash tag as the messages
    assert KeyLayout.is_auxiliary(standalone.log)


def test_plot_log(backend: Backend) -> None:
    import matplotlib

    matplotlib.use("Agg")
    mem = make_memory(backend, type="message_count_based", max_messages=2)
    for i in range(4):
        mem.append(msg(f"m {i}", f"m{i}"))
    ax = mem.plot_log()
    assert "operation log" in ax.get_title()
    assert "evicted" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_why_output_is_a_why(backend: Backend) -> None:
    mem = make_memory(backend, type="buffer")
    mem.append(msg("hello", "m1"))
    out = mem.why("m1")
    assert out["operation"] == "why" and out["fate"] == "kept" and out["stored"] is True
    assert out["added_at"] == mem.log()[0]["ts"]


# ---------------------------------------------------------------------------------------------- shells
SHELL_MEMORY = {"resource": "memory", "id": "mem", "type": "buffer", "max_messages": 10}


def test_source_magic_and_memory_log_subcommand(backend: Backend) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "compozy_nb")
    magics = shell.magics_manager.registry["Compozy"]
    magics._project = None
    try:
        magics.project.use_backend(backend)
        cast(Any, shell).run_cell_magic("compozy", "", yaml.safe_dump(SHELL_MEMORY))  # unannotated in IPython
        shell.run_line_magic("compozy", "memory append mem --key k --payload '\"hello\"'")
        frame = shell.run_line_magic("compozy", "memory log mem --key k")
        assert frame["operation"].tolist() == ["append"] and frame["source"].tolist() == ["magic"]
        assert len(shell.run_line_magic("compozy", "memory log mem --key k --limit 0")) == 0
    finally:
        magics._project = None


def test_source_cli(tmp_path: Any, redis_url: str) -> None:
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "compozy.yaml").write_text("name: clilog\n")
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "mem.yaml").write_text(yaml.safe_dump(SHELL_MEMORY))
    request = {"type": "memory", "operation": "append", "memory_ref": "mem", "key_template": "k", "payload": "hi"}
    cli = Path(sys.executable).with_name("compozy-nb")  # a process of its own, as a user runs it
    proc = subprocess.run(
        [str(cli), "exec", json.dumps(request), "--project", str(tmp_path), "--redis", redis_url],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    project = Project.load(tmp_path, redis_url=redis_url)
    assert [e["source"] for e in project.memory("mem", key="k").log()] == ["cli"]


def test_source_http_and_log_endpoint(tmp_path: Any) -> None:
    import uuid

    from fastapi.testclient import TestClient

    from compozy_nb.server import create_app

    project = Project("httplog", redis_url=f"embedded://{uuid.uuid4().hex}")
    project.add_yaml(yaml.safe_dump(SHELL_MEMORY))
    base = "/api/v0/memory/mem"
    app = create_app(project, api_key="", allowed_hosts=["testserver"])
    with TestClient(app, raise_server_exceptions=False) as client:
        messages = [{"role": "user", "content": f"message {i}"} for i in range(6)]
        assert client.post(f"{base}/append", json={"key": "k", "messages": messages}).status_code == 200
        assert client.post(f"{base}/flush", json={"key": "k", "force": True}).status_code == 200
        response = client.get(f"{base}/log", params={"key": "k"})
        assert response.status_code == 200, response.text
        events = response.json()["data"]["events"]
        assert [(e["operation"], e["source"]) for e in events] == [("append", "http"), ("flush", "http")]
        assert events[0]["ts"].endswith("+00:00")
        assert client.get(f"{base}/log", params={"key": "k", "since": "soon"}).status_code == 400
        assert client.get(f"{base}/log", params={"key": "bad key"}).status_code == 400


def test_source_workflow(backend: Backend) -> None:
    project = Project(PROJECT)
    project.use_backend(backend)
    project.add_yaml(yaml.safe_dump(SHELL_MEMORY))
    project.add_yaml(
        yaml.safe_dump(
            {
                "id": "save",
                "tasks": [
                    {
                        "id": "s",
                        "type": "memory",
                        "operation": "append",
                        "memory_ref": "mem",
                        "key_template": "w",
                        "payload": "{{.text}}",
                    }
                ],
            }
        )
    )
    project.run("save", {"text": "hello"})
    assert [e["source"] for e in project.memory("mem", key="w").log()] == ["workflow"]
