"""Agent transcripts: OpenAI message shapes (and Anthropic blocks) stored, read back in their shape, counted,
redacted and kept readable by Compozy's ``{Role, Content string}`` decoder, on both backends."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from compozy_nb.backends import Backend
from compozy_nb.errors import CompozyNbError, ConfigError, InvalidPayloadError
from compozy_nb.memory.instance import MemoryInstance
from compozy_nb.memory.transcript import PART_TOKENS
from compozy_nb.project import Project
from compozy_nb.testing import on_transport
from compozy_nb.tokens import get_counter
from tests.hostile_cases import TRANSCRIPT_CASES

pytestmark = pytest.mark.usefixtures("transport")  # every test on both transports (conftest.py)

EMAIL = r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"


def make_memory(backend: Backend, key: str = "agent:1", **fields: Any) -> MemoryInstance:
    project = Project("tr")
    project.use_backend(backend)
    project.add_yaml(yaml.safe_dump({"resource": "memory", "id": "mem", "type": "buffer", **fields}))
    return on_transport(project.memory("mem", key=key))


def call(call_id: str, name: str, **arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def tool_turn(n: int, *, results: int = 1) -> list[dict[str, Any]]:
    """A user question, an assistant tool call with ``results`` calls, their tool results, the answer."""
    calls = [call(f"c{n}_{i}", "lookup", q=f"q{n}{i}") for i in range(results)]
    return [
        {"role": "user", "content": f"question {n}"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *({"role": "tool", "tool_call_id": c["id"], "content": f"result {c['id']}"} for c in calls),
        {"role": "assistant", "content": f"answer {n}"},
    ]


SHAPES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "developer", "content": "Prefer metric units.", "name": "ops"},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is on this picture?"},
            {"type": "image_url", "image_url": {"url": "https://example.org/cat.png", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
        ],
    },
    {"role": "assistant", "content": None, "tool_calls": [call("call_1", "describe", detail="high")]},
    {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "part"}]},
    {"role": "assistant", "content": "A cat.", "tool_calls": [call("call_3", "save", what="cat")]},
    {"role": "assistant", "content": None, "refusal": "I cannot help with that."},
    {"role": "assistant", "content": [{"type": "text", "text": "No"}, {"type": "refusal", "refusal": "nope"}]},
    {"role": "user", "content": "plain", "metadata": {"source": "test"}},
]


def without_ours(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in ("tokens", "id", "ts")}


def go_decode(raw: bytes) -> tuple[str, str]:
    """What Compozy's ``json.Unmarshal`` into ``llm.Message{Role, Content string}`` does with one element:
    unknown keys ignored, names matched case-insensitively, the last one wins, a non-string value (other than
    null) for a matched name fails the whole read."""
    pairs = json.loads(raw, object_pairs_hook=list)
    out = {"role": "", "content": ""}
    for name, value in pairs:
        target = name.lower()
        if target in out:
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError(f"ErrInvalidMessage: {name} is {type(value).__name__}")
            out[target] = value
    return out["role"], out["content"]


# ---------------------------------------------------------------------------------------------- round trip


def test_every_shape_is_read_back_as_given(backend: Backend) -> None:
    mem = make_memory(backend)
    out = mem.append(SHAPES)
    assert out["appended"] == len(SHAPES)
    read = mem.read()["messages"]
    assert [without_ours(m) for m in read] == SHAPES
    assert all({"tokens", "id", "ts"} <= set(m) for m in read)
    # read output written back reproduces the memory (ids kept, tokens/ts recomputed)
    mem.write(read)
    assert [without_ours(m) for m in mem.read()["messages"]] == SHAPES
    assert [m["id"] for m in mem.read()["messages"]] == [m["id"] for m in read]


def test_compozy_decoder_reads_every_stored_element(backend: Backend) -> None:
    """Stored content is always a string; Compozy's own element bytes next to ours decode too."""
    mem = make_memory(backend)
    mem.append(SHAPES[:4])
    # exactly what Compozy's json.Marshal(llm.Message) writes (Go escaping)
    backend.client.rpush(mem.layout.base, b'{"role":"user","content":"a \\u003cb\\u003e \\u0026 c"}')
    mem.append(SHAPES[4:])
    decoded = [go_decode(raw) for raw in backend.client.lrange(mem.layout.base, 0, -1)]
    assert decoded[3] == ("assistant", "")  # a pure tool call
    assert decoded[2] == ("user", "What is on this picture?")  # the text projection
    assert decoded[4] == ("user", "a <b> & c")
    assert decoded[-3] == ("assistant", "")
    assert decoded[-2] == ("assistant", "No\nnope")
    assert len(decoded) == len(SHAPES) + 1
    # and the list stays ours: the Compozy element was adopted with the rest intact
    after = [without_ours(m) for m in mem.read()["messages"]]
    assert after == [*SHAPES[:4], {"role": "user", "content": "a <b> & c"}, *SHAPES[4:]]
    assert [go_decode(raw) for raw in backend.client.lrange(mem.layout.base, 0, -1)] == decoded


def test_the_go_decoder_emulation_fails_like_compozy() -> None:
    with pytest.raises(ValueError, match="ErrInvalidMessage"):
        go_decode(b'{"role":"user","content":"x","Content":[1]}')
    assert go_decode(b'{"role":"user","content":"x","CONTENT":"y"}') == ("user", "y")


@pytest.mark.parametrize("name", ["Content", "CONTENT", "cOnTeNt", "Role", "ROLE"])
def test_extras_named_role_or_content_in_another_case_are_refused(backend: Backend, name: str) -> None:
    mem = make_memory(backend)
    with pytest.raises(InvalidPayloadError) as info:
        mem.append({"role": "user", "content": "hi", name: ["not", "a", "string"]})
    assert info.value.context["field"] == f"payload.{name}"
    assert backend.client.llen(mem.layout.base) == 0


def test_anthropic_blocks_are_converted_to_openai_messages(backend: Backend) -> None:
    mem = make_memory(backend)
    mem.append(
        [
            {"role": "user", "content": "weather in Paris?"},
            {
                "role": "assistant",
                "id": "m1",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "id": "m2",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "and tomorrow?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                ],
            },
        ]
    )
    read = mem.read()["messages"]
    assert [without_ours(m) | {"id": m["id"]} for m in read[1:]] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
            ],
            "id": "m1",
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C", "id": "m2"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and tomorrow?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
            ],
            "id": "m2:1",
        },
    ]


# ---------------------------------------------------------------------------------------------- bad input

BAD = TRANSCRIPT_CASES  # the malformed messages of the hostile corpus (tests/hostile_cases.py)


@pytest.mark.parametrize(("case", "payload", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_messages_are_refused_naming_the_field(backend: Backend, case: str, payload: Any, field: str) -> None:
    mem = make_memory(backend)
    mem.append({"role": "user", "content": "before"})
    with pytest.raises(InvalidPayloadError) as info:
        mem.append(payload)
    assert info.value.context.get("field") == field, str(info.value)
    assert str(info.value).startswith(field)
    with pytest.raises(InvalidPayloadError) as indexed:
        mem.append([{"role": "user", "content": "ok"}, payload])
    assert indexed.value.context.get("field", "").startswith("payload[1]")
    assert backend.client.llen(mem.layout.base) == 1


def test_nan_never_reaches_redis_from_json_bodies(backend: Backend) -> None:
    mem = make_memory(backend)
    for body in (
        '{"role":"user","content":"x","m":NaN}',
        '{"role":"user","content":"x","m":1e999}',
        '{"role":"user","content":"x","m":[-Infinity]}',
    ):
        with pytest.raises(InvalidPayloadError):
            mem.append(json.loads(body))
    assert backend.client.llen(mem.layout.base) == 0


def test_errors_never_echo_content(backend: Backend) -> None:
    mem = make_memory(backend)
    secret = "dave@example.com data:image/png;base64,SECRETSECRET"
    payloads = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}], "note": secret},
        {"role": secret, "content": "x"},
        {"role": "user", "content": 12345678, "x": secret},
        {"role": "user", "content": "   ", "x": secret},
        {"role": "user", "content": "x", "metadata": {"v": math.nan, "s": secret}},
        {"role": "user", "content": "x", "metadata": {"dave@example.com": math.inf}},
    ]
    for payload in payloads:
        with pytest.raises(CompozyNbError) as info:
            mem.append(payload)
        text = json.dumps(info.value.to_dict())
        assert "dave" not in text and "SECRET" not in text and "12345678" not in text


# ---------------------------------------------------------------------------------------------- tokens


def test_token_rule_examples() -> None:
    """The examples of docs/features/memory-tasks.md, "Token counting"."""
    counter = get_counter()
    c = counter.count
    plain = {"role": "user", "content": "Hello there"}
    assert counter.count_message("user", "Hello there") == c("Hello there") + c("user") + 2
    tool_call = {"role": "assistant", "content": None, "tool_calls": [call("call_1", "get_weather", city="Paris")]}
    args = json.dumps({"city": "Paris"})
    image = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "https://x"}},
        ],
    }
    result = {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"}
    named = {"role": "user", "name": "alice", "content": "hi"}
    expected = [
        c("Hello there") + c("user") + 2,
        c("assistant") + 2 + c("get_weather") + c(args),
        c("What is this?") + c("user") + 2 + PART_TOKENS["image_url"],
        c("18C and sunny") + c("tool") + 2,
        c("hi") + c("user") + 2 + c("alice"),
    ]
    assert expected == [5, 11, 92, 7, 5]  # the numbers printed in the docs
    from compozy_nb.memory.transcript import count_tokens

    assert [count_tokens(counter, m) for m in (plain, tool_call, image, result, named)] == expected


def test_stored_tokens_follow_the_rule(backend: Backend) -> None:
    mem = make_memory(backend)
    out = mem.append(SHAPES)
    read = mem.read()["messages"]
    from compozy_nb.memory.transcript import count_tokens

    counter = get_counter()
    assert [m["tokens"] for m in read] == [count_tokens(counter, m) for m in SHAPES]
    assert out["token_count"] == sum(m["tokens"] for m in read)
    assert read[0]["tokens"] == counter.count_message("system", "You are terse.")  # text-only: unchanged rule


# ---------------------------------------------------------------------------------------------- privacy


def test_redaction_covers_parts_arguments_results_names_and_keys(backend: Backend) -> None:
    mem = make_memory(backend, privacy_policy={"redact_patterns": [EMAIL], "default_redaction_string": "<email>"})
    data_url = "data:image/png;base64,bob@example.com/AAAA"  # binary data is never rewritten
    mem.append(
        [
            {
                "role": "user",
                "name": "bob@example.com",
                "content": [
                    {"type": "text", "text": "I am bob@example.com"},
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "image_url", "image_url": {"url": "https://x.org/?u=bob@example.com"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    call(
                        "call_1", "send_mail", to="bob@example.com", cc=["al@example.com"], meta={"bob@example.com": 1}
                    )
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sent to bob@example.com"},
            {"role": "user", "content": "x", "metadata": {"erin@example.com": "v"}, "dave@example.com": 1},
        ]
    )
    raw = b"".join(backend.client.lrange(mem.layout.base, 0, -1)).decode()
    assert raw.count("@example.com") == 1 and data_url in raw
    user, assistant, tool, extra = mem.read()["messages"]
    assert user["name"] == "<email>"
    assert user["content"][0]["text"] == "I am <email>"
    assert user["content"][2]["image_url"]["url"] == "https://x.org/?u=<email>"
    arguments = json.loads(assistant["tool_calls"][0]["function"]["arguments"])
    assert arguments == {"to": "<email>", "cc": ["<email>"], "meta": {"<email>": 1}}
    assert assistant["tool_calls"][0]["id"] == "call_1" and tool["tool_call_id"] == "call_1"
    assert tool["content"] == "sent to <email>"
    assert extra["metadata"] == {"<email>": "v"} and extra["<email>"] == 1


def test_redacted_keys_that_collide_are_refused(backend: Backend) -> None:
    mem = make_memory(backend, privacy_policy={"redact_patterns": [EMAIL]})
    with pytest.raises(InvalidPayloadError) as info:
        mem.append({"role": "user", "content": "x", "metadata": {"a@example.com": 1, "b@example.com": 2}})
    assert "example" not in str(info.value)
    assert backend.client.llen(mem.layout.base) == 0


def test_non_persistable_developer_and_tool_messages(backend: Backend) -> None:
    mem = make_memory(backend, privacy_policy={"non_persistable_message_types": ["developer", "TOOL"]})
    out = mem.append([SHAPES[1], *tool_turn(1)])
    assert out["skipped"] == 2
    assert [m["role"] for m in mem.read()["messages"]] == ["user", "assistant", "assistant"]


# ---------------------------------------------------------------------------------------------- filters


def test_read_filters_by_role_and_time(backend: Backend) -> None:
    mem = make_memory(backend)
    mem.append(tool_turn(1))
    stamp = datetime.now(UTC)
    later = (stamp + timedelta(hours=1)).isoformat()
    assert [m["role"] for m in mem.read(roles=["tool", "user"])["messages"]] == ["user", "tool"]
    assert mem.read(roles="assistant")["count"] == 2
    assert mem.read(since=stamp - timedelta(hours=1))["count"] == 4
    assert mem.read(since=later)["count"] == 0
    assert mem.read(until=later, roles=["user"])["count"] == 1
    assert mem.read(until=(stamp - timedelta(hours=1)).replace(tzinfo=None))["count"] == 0
    page = mem.read(roles=["assistant"], limit=1, offset=1)
    assert page["messages"][0]["content"] == "answer 1" and page["total_count"] == 2 and not page["has_more"]
    with pytest.raises(InvalidPayloadError) as info:
        mem.read(since="yesterday")
    assert info.value.context["field"] == "since" and str(info.value) == "since: not an ISO-8601 date/time"


# ---------------------------------------------------------------------------------------------- DataFrames, files


def test_dataframe_both_ways(backend: Backend) -> None:
    mem = make_memory(backend)
    mem.append([*SHAPES, *tool_turn(1)])
    frame = mem.to_pandas()
    assert str(frame["ts"].dtype) == "datetime64[ns, UTC]" or str(frame["ts"].dtype).endswith(", UTC]")
    assert frame["tool_calls"].iloc[3] == SHAPES[3]["tool_calls"]
    assert frame["tool_calls"].iloc[0] is None
    before = [without_ours(m) for m in mem.read()["messages"]]
    ids = [m["id"] for m in mem.read()["messages"]]
    other = make_memory(backend, key="agent:2")
    other.write(frame)
    assert [without_ours(m) for m in other.read()["messages"]] == before
    assert [m["id"] for m in other.read()["messages"]] == ids
    assert other.append(frame)["duplicates"] == len(ids)
    built = pd.DataFrame({"role": ["user", "assistant"], "content": ["hi", "hello"]})
    assert other.append(built)["appended"] == 2


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_import_round_trip(backend: Backend, tmp_path: Path, suffix: str) -> None:
    mem = make_memory(backend)
    mem.append([*SHAPES, *tool_turn(1)])
    path = tmp_path / f"memory{suffix}"
    out = mem.export(path)
    assert out["count"] == len(SHAPES) + 4 and Path(out["path"]) == path
    other = make_memory(backend, key="agent:copy")
    assert other.import_file(path)["appended"] == len(SHAPES) + 4
    assert other.import_file(path)["appended"] == 0  # ids kept: importing twice adds nothing
    assert [without_ours(m) | {"id": m["id"]} for m in other.read()["messages"]] == [
        without_ours(m) | {"id": m["id"]} for m in mem.read()["messages"]
    ]
    assert other.import_file(path, replace=True)["count"] == len(SHAPES) + 4
    if suffix == ".parquet":
        table = pd.read_parquet(path)
        assert list(table.columns) == ["id", "role", "content", "tokens", "ts", "message"]
        assert str(table["ts"].dtype).endswith("UTC]")


def test_import_of_a_bad_file_names_file_and_line(tmp_path: Path) -> None:
    from compozy_nb.memory.frames import import_messages

    path = tmp_path / "bad.jsonl"
    path.write_text('{"role":"user","content":"x"}\n[1]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.jsonl:2"):
        import_messages(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError):
        import_messages(path)


def roles_of(messages: Sequence[dict[str, Any]]) -> list[str]:
    return [str(m["role"]) for m in messages]


def test_script_errors_name_no_sha_nor_script_line(backend: Backend) -> None:
    """A Redis error inside a script reaches the user without the script's SHA or ``user_script:NNN``."""
    mem = make_memory(backend)
    backend.client.set(mem.layout.base, "not a list")  # the script's first list command fails: WRONGTYPE
    with pytest.raises(CompozyNbError) as info:
        mem.append({"role": "user", "content": "x"})
    text = json.dumps(info.value.to_dict())
    assert "user_script" not in text
    assert not any(len(word) == 40 and all(c in "0123456789abcdef" for c in word) for word in text.split())
