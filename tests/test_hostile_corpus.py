"""The hostile-input corpus (``tests/hostile_cases.py``) through every entry point: the real HTTP server, the
``compozy-nb`` command, the Python API and YAML loading.

For every case: no HTTP 500 and no traceback (in the response, on stderr, in the server's log), the expected
error code, and Redis byte-for-byte unchanged (no partial write).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from compozy_nb import Project
from compozy_nb.errors import CompozyNbError
from compozy_nb.testing import ApiServer, RedisServer
from tests.hostile_cases import CLI_CASES, HTTP_CASES, KEY, PYTHON_CASES, YAML_CASES, CliCase, HttpCase, YamlCase

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "compozy-nb"


def snapshot(url: str) -> dict[bytes, Any]:
    """Every key of the database with its serialized value."""
    client = redis.Redis.from_url(url)
    return {key: client.dump(key) for key in sorted(client.scan_iter(count=1000))}


def seed(url: str) -> None:
    """One stored message under :data:`KEY`, so that "unchanged" means something."""
    Project.load(ROOT, redis_url=url).memory("conversation_memory", key=KEY).append("the message before")


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[ApiServer]:
    proc = ApiServer(ROOT, redis_server.url).start()
    yield proc
    log = proc.stderr()
    proc.stop()
    assert "Traceback" not in log, f"the server logged an exception:\n{log}"


def _ids(cases: list[Any]) -> list[str]:
    return [case.name for case in cases]


@pytest.mark.parametrize("case", HTTP_CASES, ids=_ids(HTTP_CASES))
def test_http(case: HttpCase, server: ApiServer, redis_url: str) -> None:
    seed(redis_url)
    before = snapshot(redis_url)
    headers = {"Content-Type": "application/json", **case.headers}
    response = httpx.request(case.method, server.url + case.path, content=case.body, headers=headers, timeout=120)

    assert response.status_code < 500, response.text[:500]
    body = response.json()
    assert body["error"]["code"] in case.codes, body
    assert "Traceback" not in response.text
    assert snapshot(redis_url) == before


def _expand(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{project}", str(ROOT))


@pytest.mark.parametrize("case", CLI_CASES, ids=_ids(CLI_CASES))
def test_cli(case: CliCase, tmp_path: Path, redis_url: str) -> None:
    seed(redis_url)
    before = snapshot(redis_url)
    for name, content in case.files.items():
        path = Path(_expand(name, tmp_path))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    args = [_expand(arg, tmp_path) for arg in case.args]
    if args[0] in ("exec", "run") and "--project" not in args:
        args += ["--project", str(ROOT), "--redis", redis_url]
    env = {k: v for k, v in os.environ.items() if k != "COMPOZY_REDIS_URL"}
    proc = subprocess.run([str(CLI), *args], input=case.stdin, capture_output=True, env=env, timeout=300)

    stderr = proc.stderr.decode("utf-8", "replace")
    stdout = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 1, (stdout[:500], stderr[:500])
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert _cli_code(stdout, stderr) in case.codes, (stdout[:500], stderr[:500])
    assert snapshot(redis_url) == before


def _cli_code(stdout: str, stderr: str) -> str:
    """The code of a failure: one ``error [CODE]: ...`` line on stderr, or exec's ``{"status": "failed"}``."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if lines:
        assert len(lines) <= 2, stderr  # the error, and for validate the "N problem(s) found" summary
        assert lines[0].startswith("error ["), stderr
        return lines[0].split("[", 1)[1].split("]", 1)[0]
    return str(json.loads(stdout)["error"]["code"])


@pytest.mark.parametrize("case", [pytest.param(c, marks=c.marks, id=c.name) for c in PYTHON_CASES])
def test_python(case: Any, redis_url: str) -> None:
    seed(redis_url)
    project = Project.load(ROOT, redis_url=redis_url)
    before = snapshot(redis_url)

    with pytest.raises(CompozyNbError) as caught:
        case.call(project)

    assert caught.value.code in case.codes, caught.value
    assert snapshot(redis_url) == before


@pytest.mark.parametrize("case", YAML_CASES, ids=_ids(YAML_CASES))
def test_yaml(case: YamlCase, tmp_path: Path) -> None:
    (tmp_path / "compozy.yaml").write_text("name: hostile\nautoload:\n  include: ['memory/*.yaml']\n")
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "hostile.yaml").write_bytes(case.content)

    with pytest.raises(CompozyNbError) as caught:
        Project.load(tmp_path, redis_url="embedded://hostile-yaml")

    assert caught.value.code in case.codes, caught.value
    assert "hostile.yaml" in str(caught.value)
