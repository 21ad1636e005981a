"""Secrets never reach what users see (issue 16 items 5-7, 9).

A Redis password (in ``user:password@`` and in ``?password=``), an API key and a ``user:token@`` in a
provider's ``base_url`` are planted, then every output channel is scanned: reprs (Backend, settings),
``%config Compozy`` and ``%compozy connect``, BACKEND_UNAVAILABLE and INVALID_CONFIG messages, CLI stdout and
stderr, HTTP bodies (health, failed runs), the run JSON and its HTML view, and every log record at DEBUG.
The Redis side runs against a real redis-server started with ``--requirepass``; the provider side against
a loopback OpenAI-compatible server that echoes the ``Authorization`` header back.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from compozy_nb import Project
from compozy_nb._secrets import mask_url, scrub
from compozy_nb.backends import connect
from compozy_nb.cli import main
from compozy_nb.errors import CompozyNbError
from compozy_nb.results import RunResult
from compozy_nb.testing import RedisServer, free_port, redis_server_binary

if TYPE_CHECKING:  # tests/ is on sys.path when pytest runs; mypy sees the module as tests.fake_openai
    from tests.fake_openai import FakeOpenAI, Reply, completion
else:
    from fake_openai import FakeOpenAI, Reply, completion

PASSWORD = f"pw-{uuid.uuid4().hex}"
API_KEY = f"sk-planted-{uuid.uuid4().hex}"
TOKEN = f"tok-{uuid.uuid4().hex}"
SECRETS = (PASSWORD, API_KEY, TOKEN)


def assert_clean(*texts: Any) -> None:
    """None of the planted secrets appears in any of ``texts`` (anything, JSON-dumped when not text)."""
    for text in texts:
        shown = text if isinstance(text, str) else json.dumps(text, default=repr)
        for secret in SECRETS:
            assert secret not in shown, f"a planted secret leaked into: {shown[:300]}"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisServer]:
    """A real redis-server that requires the planted password."""
    if redis_server_binary() is None:
        pytest.skip("redis-server not installed") if not _required() else pytest.fail("redis-server missing")
    workdir = Path(tempfile.mkdtemp(prefix="compozy-secret-"))
    server = RedisServer(free_port(), workdir)
    server.start()
    redis.Redis(port=server.port).config_set("requirepass", PASSWORD)
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def _required() -> bool:
    import os

    return os.environ.get("COMPOZY_REQUIRE_REDIS") == "1"


@pytest.fixture
def url_forms(locked_redis: RedisServer) -> list[str]:
    """The password in the userinfo and as a query parameter (both accepted by redis-py)."""
    port = locked_redis.port
    return [f"redis://:{PASSWORD}@127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/0?password={PASSWORD}"]


@pytest.fixture(autouse=True)
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every test runs with every logger at DEBUG, and its records are scanned at the end."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    assert_clean(caplog.text, *[r.getMessage() for r in caplog.records])


# ------------------------------------------------------------------------------------------ the masking itself
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("redis://user:pw@h/0", "redis://user:***@h/0"),
        ("rediss://h/0?password=pw&db=1", "rediss://h/0?password=***&db=1"),
        ("https://tok@gateway/v1", "https://***@gateway/v1"),
        ("https://h/v1?api-key=k&api-version=2024", "https://h/v1?api-key=***&api-version=2024"),
        ("redis://:p@w@h/0", "redis://:***@h/0"),
        ("redis://:pw@[::1/0", "redis://***@[::1/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_scrub_removes_keys_tokens_and_url_credentials() -> None:
    text = f"got Authorization: Bearer {API_KEY} from https://u:{TOKEN}@h/v1 and key {API_KEY}"
    assert_clean(scrub(text, [API_KEY]))
    assert "Bearer ***" in scrub("Authorization: Bearer abcdef123456")
    assert "sk-***" in scrub("key sk-abcdefghijkl was wrong")


# ------------------------------------------------------------------------------------------ Redis password
def test_backend_repr_and_messages_hide_the_password(url_forms: list[str]) -> None:
    for url in url_forms:
        backend = connect(url)
        assert backend.client.ping()  # the password is still used
        assert_clean(repr(backend), str(backend), backend.display_url)
        assert "***" in backend.display_url
        assert_clean(repr(backend.url))
        assert backend.url == url  # the value itself is unchanged
        backend.close()


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@127.0.0.1:1/0",
        f"redis://127.0.0.1:1/0?password={PASSWORD}",
        f"redis://default:{PASSWORD}@127.0.0.1:1/0",
        f"redis+cluster://:{PASSWORD}@127.0.0.1:1",
    ],
)
def test_unreachable_backend_error_hides_the_password(url: str) -> None:
    with pytest.raises(CompozyNbError) as caught:
        connect(url, options=None)
    assert caught.value.code == "BACKEND_UNAVAILABLE"
    assert_clean(str(caught.value), caught.value.to_dict(), repr(caught.value))


def test_wrong_password_error_hides_both(locked_redis: RedisServer) -> None:
    with pytest.raises(CompozyNbError) as caught:
        connect(f"redis://:{TOKEN}@127.0.0.1:{locked_redis.port}/0")
    assert caught.value.code == "BACKEND_UNAVAILABLE"
    assert_clean(str(caught.value), caught.value.to_dict())


@pytest.mark.parametrize(
    ("url", "code", "part"),
    [
        (f"redis://:{PASSWORD}@localhost:notaport/0", "INVALID_CONFIG", "port 'notaport'"),
        (f"redis://:{PASSWORD}@[::1/0", "INVALID_CONFIG", "IPv6"),
        (f"redis://localhost/0?password={PASSWORD}&socket_timeout=abc", "INVALID_CONFIG", "socket_timeout"),
        (f"redis://:{PASSWORD}@localhost:99999/0", "INVALID_CONFIG", "port '99999'"),
        (f"redis://:{PASSWORD}@localhost/zero", "INVALID_CONFIG", "database 'zero'"),
        (f"redis://:{PASSWORD}@/0", "INVALID_CONFIG", "no host"),
        (f"memcached://:{PASSWORD}@h/0", "BACKEND_UNAVAILABLE", "memcached"),
    ],
)
def test_malformed_urls_name_the_wrong_part(url: str, code: str, part: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CompozyNbError) as caught:
        connect(url)
    assert caught.value.code == code
    assert part in str(caught.value)
    assert_clean(str(caught.value), caught.value.to_dict())

    # the CLI: one error line, exit 1, no traceback
    assert main(["memory", "ls", "--project", str(Path(tempfile.gettempdir())), "--redis", url]) == 1
    out, err = capsys.readouterr()
    assert err.startswith(f"error [{code}]") and "Traceback" not in err and err.count("\n") == 1
    assert_clean(out, err)


def test_settings_repr_hides_the_password_and_tokens(tmp_path: Path, url_forms: list[str]) -> None:
    (tmp_path / "compozy.yaml").write_text(
        f"name: secretive\nredis:\n  url: {url_forms[1]}\n"
        f"providers:\n  openai: {{base_url: 'https://bot:{TOKEN}@llm.example/v1', api_key: {API_KEY}}}\n",
        encoding="utf-8",
    )
    project = Project.load(tmp_path)

    assert project.settings.redis.url == url_forms[1]  # the value is intact, only its repr is masked
    assert_clean(repr(project.settings), str(project.settings), repr(project.settings.redis))
    assert_clean(repr(project.backend), repr(project))
    assert project.backend.client.ping()


def test_cli_output_hides_the_password(url_forms: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    for url in url_forms:
        assert main(["demo", "--redis", url]) == 0
        out, err = capsys.readouterr()
        assert "***" in out
        assert_clean(out, err)
        assert main(["memory", "ls", "--project", str(Path(tempfile.gettempdir())), "--redis", url]) == 0
        assert_clean(*capsys.readouterr())


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient.")
def test_http_health_hides_the_password(url_forms: list[str]) -> None:
    from fastapi.testclient import TestClient

    from compozy_nb.server import create_app

    for url in url_forms:
        project = Project("health", redis_url=url)
        with TestClient(
            create_app(project, api_key=""), raise_server_exceptions=False, base_url="http://localhost"
        ) as client:
            response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json()["data"]["redis"]["url"].count("***") == 1
        assert_clean(response.text)
    down = Project("health", redis_url=f"redis://:{PASSWORD}@127.0.0.1:1/0")
    with TestClient(create_app(down, api_key=""), raise_server_exceptions=False, base_url="http://localhost") as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert_clean(response.text)


@pytest.fixture
def shell() -> Iterator[Any]:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "compozy_nb")
    magics = ip.magics_manager.registry["Compozy"]
    before = magics.redis_url
    magics._project = None
    yield ip
    magics.redis_url = before
    magics._project = None
    ip.config.Compozy.pop("redis_url", None)  # %config wrote it into the shell's config too: later magics read it


def test_magics_hide_the_password(shell: Any, url_forms: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    for url in url_forms:
        shell.run_line_magic("compozy", f"connect {url}")
        shell.run_line_magic("config", f"Compozy.redis_url = {url!r}")
        shell.run_line_magic("config", "Compozy")
        shown = shell.run_line_magic("config", "Compozy.redis_url")
        assert shown == url
        out, err = capsys.readouterr()
        assert "connected: redis://" in out and "***" in out
        assert_clean(out, err, repr(shown), repr(shell.magics_manager.registry["Compozy"].project.backend))


@pytest.mark.parametrize(
    "line",
    [
        f"connect redis://:{PASSWORD}@localhost:notaport/0",
        f"connect redis://localhost/0?password={PASSWORD}&socket_timeout=abc",
        f"connect redis://:{PASSWORD}@127.0.0.1:1/0",
    ],
)
def test_compozy_connect_with_a_bad_url_is_a_usage_error(shell: Any, line: str) -> None:
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("compozy", line)
    assert_clean(str(caught.value))


# ------------------------------------------------------------------------------------------ API key and tokens
@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def provider_project(directory: Path, base_url: str) -> Project:
    """A project on disk (for the CLI too) whose workflow calls the openai provider with the planted key."""
    (directory / "workflows").mkdir(exist_ok=True)
    (directory / "compozy.yaml").write_text("name: keys\n", encoding="utf-8")
    workflow = {
        "name": "ask",
        "tasks": [
            {
                "id": "call",
                "type": "basic",
                "provider": "openai",
                "model": "m",
                "base_url": base_url,
                "api_key_env": "PLANTED_KEY",
                "messages": [{"role": "user", "content": "{{.q}}"}],
            }
        ],
    }
    (directory / "workflows" / "ask.yaml").write_text(json.dumps(workflow), encoding="utf-8")
    project = Project.load(directory, redis_url=f"embedded://{uuid.uuid4().hex}")
    return project


@pytest.fixture
def planted_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANTED_KEY", API_KEY)


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient.")
def test_a_gateway_echoing_the_key_leaks_it_nowhere(
    fake_openai: FakeOpenAI, planted_key: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastapi.testclient import TestClient

    from compozy_nb.server import create_app

    project = provider_project(tmp_path, fake_openai.base_url)
    fake_openai.queue(*[Reply(400, echo_auth=True)] * 3)

    run = project.run("ask", {"q": "hi"})  # the run JSON
    assert run["error"]["code"] == "PROVIDER_ERROR" and "Bearer ***" in run["error"]["message"]
    assert_clean(run, RunResult(run)._repr_html_(), repr(run))

    assert main(["run", "ask", "--project", str(tmp_path), "--input", '{"q": "hi"}']) == 1  # the CLI
    assert_clean(*capsys.readouterr())

    with TestClient(
        create_app(project, api_key=""), raise_server_exceptions=False, base_url="http://localhost"
    ) as client:  # HTTP
        response = client.post("/workflows/ask/execute", json={"input": {"q": "hi"}})
    assert response.status_code == 502
    assert_clean(response.text)
    assert fake_openai.requests[0].headers["authorization"] == f"Bearer {API_KEY}"  # the key was sent


def test_a_reply_that_repeats_the_key_is_scrubbed(fake_openai: FakeOpenAI, planted_key: None, tmp_path: Path) -> None:
    project = provider_project(tmp_path, fake_openai.base_url)
    fake_openai.queue(Reply(200, completion(f"your key is {API_KEY}")))

    run = project.run("ask", {"q": "hi"})

    assert run["output"]["content"] == "your key is ***"
    assert_clean(run)


def test_token_in_base_url_is_sent_as_basic_auth_and_never_shown(
    fake_openai: FakeOpenAI, planted_key: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base_url = fake_openai.base_url.replace("http://", f"http://bot:{TOKEN}@") + f"?api-key={TOKEN}"
    project = provider_project(tmp_path, base_url)
    fake_openai.queue(Reply(302, raw=b"", headers={"Location": f"https://u:{TOKEN}@elsewhere/"}), Reply(500, {}))

    first = project.run("ask", {"q": "hi"})
    assert first["error"]["code"] == "PROVIDER_ERROR" and "bot:***@" not in first["error"]["message"]
    assert_clean(first, RunResult(first)._repr_html_())
    assert fake_openai.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert "api-key=" in fake_openai.requests[0].path  # the query string is kept as given

    unreachable = base_url.replace(fake_openai.base_url.split("//")[1].split("/")[0], f"127.0.0.1:{free_port()}")
    assert_clean(provider_project(tmp_path, unreachable).run("ask", {"q": "hi"}))
    assert_clean(*capsys.readouterr())


def test_basic_auth_from_base_url_reaches_the_server(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    base_url = fake_openai.base_url.replace("http://", f"http://bot:{TOKEN}@")
    project = provider_project(tmp_path, base_url)

    assert project.run("ask", {"q": "hi"})["status"] == "completed"
    sent = fake_openai.requests[0].headers["authorization"]
    assert base64.b64decode(sent.split()[1]).decode() == f"bot:{TOKEN}"


def test_a_gateway_echoing_basic_auth_leaks_nothing(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    base_url = fake_openai.base_url.replace("http://", f"http://bot:{TOKEN}@")
    fake_openai.queue(Reply(400, echo_auth=True))

    run = provider_project(tmp_path, base_url).run("ask", {"q": "hi"})

    encoded = base64.b64encode(f"bot:{TOKEN}".encode()).decode()
    assert fake_openai.requests[0].headers["authorization"] == f"Basic {encoded}"
    assert "Basic ***" in run["error"]["message"]
    assert encoded not in json.dumps(run)
    assert_clean(run)
