"""Run the tutorial notebooks with nbval: a real Redis for the notebooks that use one, the sanitize file.

nbval turns every cell into a plain ``pytest.Item`` (not a ``Function``), so fixtures never reach it and the
kernel of a notebook starts in the setup of its first cell. Hooks do the work instead:

- every notebook except those in ``EMBEDDED`` runs against a ``redis-server`` of our own, started on a free
  loopback port (``--save "" --appendonly no``) when the first such notebook starts, emptied before each
  notebook, and stopped by pid when the session ends;
- its URL reaches the notebook's kernel as ``COMPOZY_REDIS_URL``, set only while that kernel starts: the rest
  of the session (``tests/``) never sees it;
- the ``EMBEDDED`` notebooks get no ``COMPOZY_REDIS_URL`` at all (what a new user has);
- without ``redis-server`` the Redis notebooks are skipped, or fail when ``COMPOZY_REQUIRE_REDIS=1`` (CI);
- ``sanitize.cfg`` (next to this file) is used when ``--nbval-sanitize-with`` is not given.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compozy_nb.testing import RedisServer

HERE = Path(__file__).resolve().parent
EMBEDDED = {"01_quickstart.ipynb"}
URL_VARIABLE = "COMPOZY_REDIS_URL"
REQUIRE_REDIS = os.environ.get("COMPOZY_REQUIRE_REDIS") == "1"
REDIS_SERVER = shutil.which("redis-server")


_server: RedisServer | None = None
_started_notebooks: set[Path] = set()


def _redis_url(first_cell: bool) -> str:
    """The URL of our redis-server (started on first use; emptied when a notebook starts)."""
    global _server
    if REDIS_SERVER is None:
        if REQUIRE_REDIS:
            pytest.fail("redis-server is not installed but COMPOZY_REQUIRE_REDIS=1")
        pytest.skip("redis-server not installed (set COMPOZY_REQUIRE_REDIS=1 to make this a failure)")
    if _server is None:
        _server = RedisServer()
        _server.start()
    elif first_cell:
        _server.flush()
    return _server.url


def pytest_configure(config: pytest.Config) -> None:
    option = config.option
    if hasattr(option, "nbval_sanitize_with") and not option.nbval_sanitize_with:
        option.nbval_sanitize_with = str(HERE / "sanitize.cfg")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[Any]:
    """Give the kernel of each notebook its environment (the kernel starts in its first cell's setup)."""
    if item.path.suffix != ".ipynb":
        return (yield)
    first_cell = item.path not in _started_notebooks
    saved = os.environ.get(URL_VARIABLE)
    if item.path.name in EMBEDDED:
        os.environ.pop(URL_VARIABLE, None)
    else:
        os.environ[URL_VARIABLE] = _redis_url(first_cell)
    _started_notebooks.add(item.path)
    try:
        return (yield)
    finally:
        if saved is None:
            os.environ.pop(URL_VARIABLE, None)
        else:
            os.environ[URL_VARIABLE] = saved


def pytest_sessionfinish(session: pytest.Session) -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None
