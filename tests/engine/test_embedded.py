"""embedded:///path/file.json: the in-process backend kept on disk, across processes (a kernel restart)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compozy_nb import BackendError, Project
from compozy_nb.backends import connect

REPO = Path(__file__).resolve().parents[2]
RESOURCE = (
    "resource: memory\nid: chat\nkey: 'chat:{{.u}}'\ntype: buffer\nmax_messages: 1\n"
    "persistence: {type: redis, ttl: 1h}\n"
)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("COMPOZY_REDIS_URL", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_memories_survive_a_restart(tmp_path: Path) -> None:
    url = f"embedded://{tmp_path}/memories.json"
    write = f"""
import compozy_nb
p = compozy_nb.Project(redis_url={url!r}); p.add_yaml({RESOURCE!r})
m = p.memory("chat", u="ada")
m.append([{{"role": "user", "content": "hello"}}, {{"role": "assistant", "content": "hi ada"}}])
"""
    read = f"""
import json, compozy_nb
p = compozy_nb.Project(redis_url={url!r}); p.add_yaml({RESOURCE!r})
m = p.memory("chat", u="ada")
s = m.stats()
print(json.dumps({{"live": [x["content"] for x in m.read()["messages"]],
                  "archived": m.read(archive=True)["total_count"], "ttl": s["ttl_seconds"]}}))
"""
    assert _python(write).returncode == 0
    done = _python(read)
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    assert state["live"] == ["hi ada"] and state["archived"] == 1 and 0 < state["ttl"] <= 3600


def test_a_second_process_is_refused_while_the_first_holds_the_file(tmp_path: Path) -> None:
    url = f"embedded://{tmp_path}/locked.json"
    backend = connect(url)
    backend.client.set("k", "v")
    other = _python(f"import compozy_nb\ncompozy_nb.connect({url!r})")
    assert other.returncode != 0 and "used by another process" in other.stderr
    assert "BackendError" in other.stderr


def test_expired_keys_are_not_restored_and_a_bad_file_is_an_error(tmp_path: Path) -> None:
    snapshot = tmp_path / "bad.json"
    snapshot.write_text("{not json")
    with pytest.raises(BackendError, match="cannot load the embedded snapshot"):
        connect(f"embedded://{snapshot}")


def test_in_memory_embedded_urls_are_unchanged() -> None:
    project = Project(redis_url="embedded://named-in-memory")
    project.add_yaml(RESOURCE)
    project.memory("chat", u="x").append({"role": "user", "content": "x"})
    assert project.backend.client.dbsize() > 0


def test_the_embedded_notice_is_one_info_line_on_stdout_in_ipython() -> None:
    code = """
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
import compozy_nb
p = compozy_nb.Project(); p.backend
p2 = compozy_nb.Project(); p2.backend
"""
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("compozy-nb: no Redis URL configured") == 1 and done.stderr == ""
    cli = _python("import compozy_nb; compozy_nb.Project().backend")
    assert cli.stdout == "" and "no Redis URL configured" in cli.stderr  # the CLI's stdout stays clean


def test_the_cli_keeps_stdout_machine_readable_even_inside_an_ipython_process() -> None:
    code = """
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
from compozy_nb.cli import main
main(["exec", "--project", "examples/memory-workflow",
      '{"operation": "health", "memory_ref": "conversation_memory", "key_template": "monitor:probe"}'])
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("COMPOZY_REDIS_URL", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert json.loads(done.stdout)["output"]["operation"] == "health"  # the notice is not on stdout
    assert "no Redis URL configured" in done.stderr
