"""The what-if simulator: numbers checked by hand and against the same operations run by hand, determinism,
parallel runs, cleanup of its throwaway keys, input errors, and the synthetic conversation set."""

from __future__ import annotations

import json
import re
from typing import Any, cast

import pandas as pd
import pytest
import redis

import compozy_nb
from compozy_nb import ConfigError, InvalidPayloadError, MemoryResource, Project
from compozy_nb.sdk import EMAIL, PHONE
from compozy_nb.simulation.replay import split_tool_groups
from compozy_nb.tokens import get_counter

TEXTS = [
    ("user", "Hello, my order is late."),
    ("assistant", "Sorry to hear that. What is the order number?"),
    ("user", "It is ORD-1234."),
    ("assistant", "Thanks, ORD-1234 is in transit."),
    ("user", "When will it arrive?"),
    ("assistant", "Tomorrow before noon."),
]


def small_frame() -> pd.DataFrame:
    return pd.DataFrame(
        [{"conversation_id": "c1", "turn": i, "role": r, "content": c} for i, (r, c) in enumerate(TEXTS)]
    )


def tokens(*positions: int) -> int:
    counter = get_counter(None)
    return sum(counter.count_message(*TEXTS[p]) for p in positions)


def test_hand_computed_small_case() -> None:
    # max 3 messages. Turn 1 reads [u1]; turn 2 reads [u1 a1 u2]; before turn 3 [a2 u3] arrive, u1 and a1 are
    # evicted: it reads [u2 a2 u3]; at the end a3 evicts u2: [a2 u3 a3] stay, 3 evicted in all.
    window = MemoryResource("window3").message_count_based(3)
    sim = compozy_nb.simulate(small_frame(), [window], price_per_1k_tokens=2.0, progress=False)
    turns = sim.turns
    assert turns["turn"].tolist() == [1, 2, 3]
    assert turns["messages_sent"].tolist() == [1, 3, 3]
    assert turns["tokens_sent"].tolist() == [tokens(0), tokens(0, 1, 2), tokens(2, 3, 4)]
    assert turns["first_user_kept"].tolist() == [True, True, False]
    assert turns["recall"].tolist() == [1.0, 1.0, 3 / 5]
    assert turns["evicted_so_far"].tolist() == [0, 0, 2]
    row = sim.summary.loc["window3"]
    total = tokens(0) + tokens(0, 1, 2) + tokens(2, 3, 4)
    assert row["conversations"] == 1
    assert row["agent_turns"] == 3
    assert row["messages_stored"] == 3
    assert row["tokens_stored"] == tokens(3, 4, 5)
    assert row["evicted"] == 3
    assert row["flushed"] == 0 and row["summaries"] == 0
    assert row["tokens_sent_total"] == total
    assert row["tokens_sent_p95"] == tokens(0, 1, 2) or row["tokens_sent_p95"] == tokens(2, 3, 4)
    assert row["cost"] == pytest.approx(total / 1000 * 2.0)
    assert row["lost_first_user_turns"] == 1
    assert row["split_tool_groups"] == 0


def test_read_options_limit_what_the_agent_is_sent() -> None:
    unlimited = MemoryResource("all").buffer()
    last = compozy_nb.simulate(small_frame(), [unlimited], read={"last": 2}, progress=False)
    assert last.turns["messages_sent"].tolist() == [1, 2, 2]
    budget = compozy_nb.simulate(small_frame(), [unlimited], read={"max_tokens": tokens(2, 3, 4)}, progress=False)
    # the newest messages that fit: at turn 2 the three stored ones are over budget, the newest two fit
    assert budget.turns["tokens_sent"].tolist() == [tokens(0), tokens(1, 2), tokens(2, 3, 4)]


def _by_hand(project: Project, ref: str, frame: pd.DataFrame, read: dict[str, Any]) -> tuple[list[int], Any]:
    """The operations the simulator performs, written out: append what came since the last read, then read."""
    sent: list[int] = []
    for number, (_cid, group) in enumerate(frame.groupby("conversation_id", sort=False)):
        mem = project.memory(ref, key=f"hand:{number}")
        pending: list[dict[str, Any]] = []
        for position, row in enumerate(group.sort_values("turn").to_dict(orient="records")):
            message = {k: row[k] for k in ("role", "content") if row.get(k) is not None}
            for extra in ("tool_calls", "tool_call_id"):
                if isinstance(row.get(extra), list | str):
                    message[extra] = row[extra]
            message["id"] = f"{number}-{position}"
            if row["role"] == "assistant":
                if pending:
                    mem.append(pending)
                sent.append(sum(m["tokens"] for m in mem.read(**read)["messages"]))
                pending = []
            pending.append(message)
        mem.append(pending)
    return sent, project


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_same_numbers_as_the_operations_run_by_hand(kind: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url") if kind == "redis" else "embedded://hand-check"
    frame = compozy_nb.synthetic_conversations(users=2, sessions_per_user=2, long_turns=12, seed=3)
    resource = (
        MemoryResource("summarized")
        .token_based(max_tokens=400)
        .flushing("hybrid_summary", summary_tokens=80, summarize_threshold=0.8)
        .redact(EMAIL, PHONE)
    )
    read = {"max_tokens": 250}
    sim = compozy_nb.simulate(frame, [resource], read=read, backend=url, progress=False)
    project = Project("by-hand", redis_url=url)
    project.add(resource)
    sent, project = _by_hand(project, "summarized", frame, read)
    assert sim.turns["tokens_sent"].tolist() == sent
    stored = [project.memory("summarized", key=f"hand:{n}").stats() for n in range(frame["conversation_id"].nunique())]
    row = sim.summary.loc["summarized"]
    assert row["messages_stored"] == sum(s["message_count"] for s in stored)
    assert row["tokens_stored"] == sum(s["token_count"] for s in stored)
    mems = [project.memory("summarized", key=f"hand:{n}") for n in range(len(stored))]
    archived = sum(m.read(archive=True)["total_count"] for m in mems)  # every evicted and flushed message
    assert row["evicted"] + row["flushed"] == archived
    assert row["evicted"] == sum(s["evicted_count"] for s in stored)
    assert row["summaries"] > 0


def test_redis_backend_deletes_its_namespace(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("keep-me", "1")
    frame = compozy_nb.synthetic_conversations(users=2, sessions_per_user=2, long_turns=6)
    sim = compozy_nb.simulate(frame, [MemoryResource("w").message_count_based(4)], backend=redis_url, progress=False)
    assert sim.summary.loc["w", "evicted"] > 0
    assert [k.decode() for k in cast(list[bytes], client.keys("*"))] == ["keep-me"]


def test_deterministic_and_the_same_over_processes() -> None:
    frame = compozy_nb.synthetic_conversations(users=3, long_turns=10, seed=7)
    resources = [
        MemoryResource("small").message_count_based(6).redact(EMAIL),
        MemoryResource("tokens").token_based(max_tokens=500),
    ]
    one = compozy_nb.simulate(frame, resources, read={"last": 5}, max_workers=1, progress=False)
    again = compozy_nb.simulate(frame, resources, read={"last": 5}, max_workers=1, progress=False)
    parallel = compozy_nb.simulate(frame, resources, read={"last": 5}, max_workers=2, progress=False)
    for other in (again, parallel):
        pd.testing.assert_frame_equal(one.turns, other.turns)
        pd.testing.assert_frame_equal(one.conversations, other.conversations)
        pd.testing.assert_frame_equal(one.summary, other.summary)


def test_redacted_spans_are_counted() -> None:
    frame = pd.DataFrame(
        [
            {
                "conversation_id": "c",
                "role": "user",
                "content": "mail a.b@example.com or c@example.org, +1 415 555 0134",
            },
            {"conversation_id": "c", "role": "assistant", "content": "Noted."},
        ]
    )
    private = MemoryResource("private").buffer().redact(EMAIL, PHONE)
    plain = MemoryResource("plain").buffer()
    sim = compozy_nb.simulate(frame, [private, plain], progress=False)
    assert sim.summary["redacted_spans"].to_dict() == {"private": 3, "plain": 0}


def test_non_persistable_roles_are_not_stored() -> None:
    frame = pd.DataFrame(
        [
            {"conversation_id": "c", "role": "system", "content": "You are a helpful bot."},
            {"conversation_id": "c", "role": "user", "content": "hi"},
            {"conversation_id": "c", "role": "assistant", "content": "hello"},
        ]
    )
    sim = compozy_nb.simulate(frame, [MemoryResource("nosys").buffer().non_persistable("system")], progress=False)
    assert sim.turns["messages_sent"].tolist() == [1]
    assert sim.summary.loc["nosys", "messages_stored"] == 2


def test_split_tool_groups_looks_at_what_the_agent_was_sent() -> None:
    call = {"role": "assistant", "content": "looking", "tool_calls": [{"id": "call_1", "type": "function"}]}
    result = {"role": "tool", "content": "{}", "tool_call_id": "call_1"}
    assert split_tool_groups([call, result]) == 0
    assert split_tool_groups([result]) == 1
    assert split_tool_groups([call]) == 0


def test_tool_call_conversations_are_replayed_whole_when_nothing_is_evicted() -> None:
    frame = compozy_nb.synthetic_conversations(users=2, long_turns=8, tool_calls=True)
    assert (frame["role"] == "tool").any()
    sim = compozy_nb.simulate(frame, [MemoryResource("all").buffer()], progress=False)
    assert sim.summary.loc["all", "split_tool_groups"] == 0
    assert sim.summary.loc["all", "evicted"] == 0
    assert sim.summary.loc["all", "messages_stored"] == len(frame)


def test_resources_as_yaml_and_models() -> None:
    yaml_text = "resource: memory\nid: from_yaml\ntype: message_count_based\nmax_messages: 2\n"
    model = MemoryResource("from_model").buffer().build()
    sim = compozy_nb.simulate(small_frame(), [yaml_text, model], progress=False)
    assert sim.summary.index.tolist() == ["from_yaml", "from_model"]
    assert sim.summary.loc["from_yaml", "messages_stored"] == 2


@pytest.mark.parametrize(
    ("call", "error", "field"),
    [
        (lambda f, r: compozy_nb.simulate(f.drop(columns="role"), r), InvalidPayloadError, "conversations.role"),
        (lambda f, r: compozy_nb.simulate(f, r, read={"first": 3}), ConfigError, "read.first"),
        (lambda f, r: compozy_nb.simulate(f, r, read={"last": -1}), ConfigError, "read.last"),
        (lambda f, r: compozy_nb.simulate(f, [*r, *r]), ConfigError, "resources"),
        (lambda f, r: compozy_nb.simulate(f, [42]), ConfigError, "resources[0]"),
        (lambda f, r: compozy_nb.simulate(f, r, max_workers=0), ConfigError, "max_workers"),
        (lambda f, r: compozy_nb.simulate("not a frame", r), InvalidPayloadError, "conversations"),
    ],
)
def test_bad_input_is_a_clear_error(call: Any, error: type[Exception], field: str) -> None:
    with pytest.raises(error) as info:
        call(small_frame(), [MemoryResource("m").buffer()])
    assert info.value.context["field"] == field  # type: ignore[attr-defined]


def test_unreachable_redis_is_a_backend_error() -> None:
    with pytest.raises(compozy_nb.BackendError):
        compozy_nb.simulate(small_frame(), [MemoryResource("m").buffer()], backend="redis://127.0.0.1:1/0")


def test_synthetic_conversations() -> None:
    frame = compozy_nb.synthetic_conversations()
    assert frame.equals(compozy_nb.synthetic_conversations())
    assert not frame.equals(compozy_nb.synthetic_conversations(seed=1))
    assert {"conversation_id", "user_id", "turn", "role", "content", "ts", "tool_calls", "tool_call_id"} <= set(
        frame.columns
    )
    sizes = frame.groupby("conversation_id").size()
    assert sizes.min() <= 4 and sizes.max() >= 40  # short and long sessions
    assert frame["user_id"].nunique() == 4
    assert frame["content"].str.contains(EMAIL).any() and frame["content"].str.contains(PHONE).any()
    tools = frame[frame["role"] == "tool"]
    calls = {c["id"] for calls in frame["tool_calls"].dropna() for c in calls}
    assert len(tools) > 0 and set(tools["tool_call_id"]) == calls
    assert all(json.loads(c) for c in tools["content"])
    assert str(frame["ts"].dt.tz) == "UTC"
    text_only = compozy_nb.synthetic_conversations(tool_calls=False)
    assert not (text_only["role"] == "tool").any() and text_only["tool_calls"].isna().all()
    with pytest.raises(ValueError):
        compozy_nb.synthetic_conversations(users=9)


def test_display_and_plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    frame = compozy_nb.synthetic_conversations(users=1, long_turns=5)
    sim = compozy_nb.simulate(
        frame, [MemoryResource("a").buffer(), MemoryResource("b").message_count_based(4)], progress=False
    )
    html = sim._repr_html_()
    assert "What-if simulation" in html and re.search(r"<th>a</th>", html) and re.search(r"<th>b</th>", html)
    assert "Simulation(2 resources" in repr(sim)
    per_turn, trade = sim.plot()
    assert [line.get_label() for line in per_turn.get_lines()] == ["a", "b"]
    assert len(trade.collections) == 2
