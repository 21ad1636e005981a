"""``%compozy simulate``: the magic gives the same Simulation as the Python call, and clear usage errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, cast

import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import compozy_nb
from compozy_nb.backends import connect

CELL = """
resource: memory
id: short
type: message_count_based
max_messages: 6
---
resource: memory
id: long
type: token_based
max_tokens: 2000
"""


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "compozy_nb")
    magics = shell.magics_manager.registry["Compozy"]
    magics._project = None
    magics.project.use_backend(connect(f"embedded://{uuid.uuid4().hex}"))
    shell.run_line_magic("config", "Compozy.progress = False")
    cast(Any, shell).run_cell_magic("compozy", "", CELL)  # unannotated in IPython
    shell.user_ns["df"] = compozy_nb.synthetic_conversations(users=2, long_turns=8)
    yield shell
    shell.run_line_magic("config", "Compozy.progress = True")
    magics._project = None
    shell.user_ns.pop("sim", None)


def test_simulate_magic_matches_python(ip: InteractiveShell) -> None:
    result = ip.run_line_magic("compozy", "simulate df --resource short --resource long --last 4 --price 0.5 -o sim")
    assert ip.user_ns["sim"] is result
    project = ip.magics_manager.registry["Compozy"].project
    expected = compozy_nb.simulate(
        ip.user_ns["df"],
        [project.resource("short"), project.resource("long")],
        read={"last": 4},
        price_per_1k_tokens=0.5,
        progress=False,
    )
    pd.testing.assert_frame_equal(result.summary, expected.summary)
    pd.testing.assert_frame_equal(result.turns, expected.turns)
    assert result.turns["messages_sent"].max() == 4


def test_simulate_magic_with_dollar_and_budget(ip: InteractiveShell) -> None:
    result = ip.run_line_magic("compozy", "simulate $df --resource long --max-tokens 100")
    assert result.read == {"max_tokens": 100}
    assert result.turns["tokens_sent"].max() <= 100


@pytest.mark.parametrize(
    ("line", "text"),
    [
        ("simulate df", "--resource"),
        ("simulate nothing --resource short", "not defined"),
        ("simulate df --resource short --last 3 --max-tokens 10", "not allowed with"),
        ("simulate df --resource missing", "MEMORY_NOT_FOUND"),
        ("simulate df --resource short --last -1", "INVALID_CONFIG"),
    ],
)
def test_simulate_magic_usage_errors(ip: InteractiveShell, line: str, text: str) -> None:
    with pytest.raises(UsageError, match=text):
        ip.run_line_magic("compozy", line)
