"""Hostile configuration and peers (issue 10 items 10-11, issue 16 item 10): YAML alias bombs and recursive
aliases in every file the loader reads, and a TCP server that answers ``+PONG`` to everything but is not
Redis. Each must be one clear error (``error [CODE]: …`` from the CLI), found before any model is built.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from compozy_nb import Project
from compozy_nb.backends import connect
from compozy_nb.cli import main
from compozy_nb.config._yaml import MAX_EXPANDED_NODES, load_documents
from compozy_nb.errors import CompozyNbError, ConfigError


def alias_bomb(levels: int, fanout: int = 10, key: str = "description") -> str:
    """A "billion laughs" YAML: each level an anchored list of ``fanout`` aliases of the level below."""
    lines = ['l0: &l0 ["lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\n{key}: *l{levels}\n"


def test_a_one_kilobyte_alias_bomb_is_refused_before_expansion() -> None:
    text = alias_bomb(9)  # 10**9 nodes once expanded
    assert len(text) < 1024

    with pytest.raises(ConfigError, match="aliases expand to more than") as caught:
        load_documents(text, "bomb.yaml")
    assert caught.value.context["source"].startswith("bomb.yaml:")


def test_sharing_aliases_below_the_bound_still_loads() -> None:
    docs = load_documents(alias_bomb(3), "ok.yaml")  # 1,111 nodes: fine
    assert len(docs[0].data["description"]) == 10
    assert MAX_EXPANDED_NODES >= 10_000


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a {b: *a}\n", "x: &x\n  - y: &y [*x]\n", "--- &r [1, *r]\n"])
def test_a_recursive_alias_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="recursive YAML alias"):
        load_documents(text, "loop.yaml")


def test_deeply_nested_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nested deeper than"):
        load_documents("x: " + "[" * 20_000 + "]" * 20_000, "deep.yaml")


@pytest.mark.parametrize(
    ("filename", "text"),
    [
        ("compozy.yaml", "name: bomb\n" + alias_bomb(9, key="version").split("\nversion")[0] + "\n"),
        ("compozy.yaml", "name: loop\nproviders: &p {openai: *p}\n"),
        ("memory/bomb.yaml", "resource: memory\nid: m\ntype: buffer\n" + alias_bomb(9)),
        ("workflows/loop.yaml", "name: w\ntasks: &t [*t]\n"),
    ],
)
def test_validate_prints_one_error_line(
    tmp_path: Path, filename: str, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")

    assert main(["validate", "--project", str(tmp_path)]) == 1

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error [")]
    assert lines and lines[0].startswith("error [INVALID_CONFIG]: ") and filename in lines[0]
    assert "Traceback" not in err and "MemoryError" not in err
    with pytest.raises(ConfigError):
        Project.load(tmp_path)


# ------------------------------------------------------------------------------------------ +PONG is not Redis
@pytest.fixture
def pong_server() -> Iterator[int]:
    """A TCP server on loopback that answers ``+PONG`` to every command it receives."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(b"+PONG\r\n" * max(1, data.count(b"*")))

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def test_a_server_that_answers_pong_to_everything_is_not_redis(pong_server: int) -> None:
    with pytest.raises(CompozyNbError) as caught:
        connect(f"redis://:secret@127.0.0.1:{pong_server}/0")
    assert caught.value.code == "BACKEND_UNAVAILABLE"
    assert "does not behave like Redis" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_the_cli_reports_a_fake_redis_in_one_line(pong_server: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory", "ls", "--redis", f"redis://127.0.0.1:{pong_server}/0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error [BACKEND_UNAVAILABLE]") and "Traceback" not in err


def test_a_server_that_closes_at_once_is_unavailable() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def slam() -> None:
        for _ in range(8):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

    thread = threading.Thread(target=slam, daemon=True)
    thread.start()
    try:
        with pytest.raises(CompozyNbError) as caught:
            connect(f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
        assert caught.value.code == "BACKEND_UNAVAILABLE"
    finally:
        listener.close()
