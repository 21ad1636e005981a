"""LlamaIndex adapters: the behaviours llama-index's RedisChatStore is tested for, ChatMemoryBuffer and
SimpleChatEngine with MockLLM, the newer Memory on CompozyDBChatStore, and message conversion; on a real
redis-server and the embedded backend, asserting what Redis holds."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, cast

import pytest
from llama_index.core.base.llms.types import AudioBlock, ImageBlock, TextBlock, ThinkingBlock, ToolCallBlock
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import ChatMessage, MessageRole, MockLLM
from llama_index.core.memory import ChatMemoryBuffer, Memory
from llama_index.core.storage.chat_store.base_db import MessageStatus

from compozy_nb.backends import Backend
from compozy_nb.errors import ConfigError, InvalidPayloadError
from compozy_nb.integrations.llama_index import CompozyChatStore, CompozyDBChatStore, from_openai, to_openai
from compozy_nb.memory.instance import MemoryInstance
from compozy_nb.project import Project
from compozy_nb.sdk import EMAIL, MemoryResource


@pytest.fixture
def project(backend: Backend) -> Project:
    project = Project("li")
    project.use_backend(backend)
    project.add(
        MemoryResource("conv").buffer().ttl("1h").redact(EMAIL),
        MemoryResource("per_user").key("llama:{{.user_id}}:{{.chat_store_key}}").buffer(),
    )
    return project


def stored(mem: MemoryInstance) -> list[dict[str, Any]]:
    """The JSON elements of the memory's Redis list, read with plain redis-py."""
    return [json.loads(raw) for raw in mem.backend.client.lrange(mem.layout.base, 0, -1)]


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def assistant(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


# ---------------------------------------------------------------------------------------------- peer behaviours
def test_add_and_get_messages_per_key(project: Project) -> None:
    store = CompozyChatStore(project, "conv")
    for key in ("user1", "user2"):
        store.add_message(key, user("hello"))
        store.add_message(key, user("world"))
    assert store.get_messages("user1") == [user("hello"), user("world")]
    assert store.get_messages("user2") == [user("hello"), user("world")]
    assert store.get_messages("nobody") == []
    assert sorted(store.get_keys()) == ["user1", "user2"]
    assert [m["content"] for m in stored(store.memory("user1"))] == ["hello", "world"]


def test_set_messages_replaces(project: Project) -> None:
    store = CompozyChatStore(project, "conv")
    store.add_message("k", user("old"))
    store.set_messages("k", [user("new"), assistant("reply")])
    assert store.get_messages("k") == [user("new"), assistant("reply")]
    store.set_messages("k", [])
    assert store.get_messages("k") == []


def test_delete_messages_removes_the_memory(project: Project) -> None:
    store = CompozyChatStore(project, "conv")
    store.add_message("k", user("hello"))
    assert store.delete_messages("k") is None
    assert store.get_messages("k") == []
    assert "k" not in store.get_keys()
    assert project.backend.client.exists(store.memory("k").layout.base) == 0


def test_delete_message_by_position_and_the_last_one(project: Project) -> None:
    store = CompozyChatStore(project, "conv")
    store.set_messages("k", [user("a"), assistant("b"), user("a"), assistant("d")])
    assert store.delete_message("k", 2) == user("a")
    assert store.get_messages("k") == [user("a"), assistant("b"), assistant("d")]  # the other "a" stays
    assert store.delete_last_message("k") == assistant("d")
    assert store.get_messages("k") == [user("a"), assistant("b")]
    assert store.delete_message("k", 10) is None
    assert store.delete_last_message("empty") is None
    mem = store.memory("k")
    assert mem.stats()["message_count"] == 2  # counters follow
    assert [m["content"] for m in mem.read(archive=True)["messages"]] == ["d", "a"]  # removed into the archive


def test_delete_message_on_a_list_written_by_compozy(project: Project) -> None:
    store = CompozyChatStore(project, "conv")
    mem = store.memory("from-compozy")
    raw = [json.dumps({"role": r, "content": c}) for r, c in (("user", "a"), ("assistant", "b"), ("user", "c"))]
    project.backend.client.rpush(mem.layout.base, *raw)  # Compozy's bytes: no tokens, no ids
    assert store.delete_message("from-compozy", 1) == assistant("b")  # adopted first, then removed
    assert store.get_messages("from-compozy") == [user("a"), user("c")]
    assert all(isinstance(m["tokens"], int) for m in stored(mem))
    assert asyncio.run(store.adelete_last_message("from-compozy")) == user("c")


def test_ttl_and_redaction_apply(project: Project) -> None:
    store = CompozyChatStore(project, "conv")
    store.add_message("k", user("mail bob@example.com"))
    mem = store.memory("k")
    assert 0 < project.backend.client.pttl(mem.layout.base) <= 3600 * 1000
    assert stored(mem)[0]["content"] == "mail [REDACTED]"


def test_key_template_with_the_chat_store_key(project: Project) -> None:
    store = CompozyChatStore(project, "per_user", user_id="u1")
    store.add_message("c1", user("x"))
    store.add_message("c2", user("y"))
    CompozyChatStore(project, "per_user", user_id="u2").add_message("c9", user("z"))
    assert store.memory("c1").key == "llama:u1:c1"
    assert store.get_keys() == ["c1", "c2"]


def test_window_options(project: Project) -> None:
    full = CompozyChatStore(project, "conv")
    full.set_messages("k", [user(f"m{i} " + "word " * 20) for i in range(10)])
    last = CompozyChatStore(project, "conv", last=2).get_messages("k")
    assert [cast(str, m.content).split()[0] for m in last] == ["m8", "m9"]
    budget = CompozyChatStore(project, "conv", max_tokens=60).get_messages("k")
    assert 0 < len(budget) < 10 and cast(str, budget[-1].content).startswith("m9")
    with pytest.raises(ConfigError):
        CompozyChatStore(project, "conv", max_tokens=1, last=1)


def test_async_twins(project: Project) -> None:
    store = CompozyChatStore(project, "conv")

    async def scenario() -> list[Any]:
        await store.aset_messages("k", [user("a"), assistant("b")])
        await store.async_add_message("k", user("c"))
        removed = [await store.adelete_message("k", 0), await store.adelete_last_message("k")]
        return [removed, await store.aget_messages("k"), await store.aget_keys()]

    removed, remaining, keys = asyncio.run(scenario())
    assert removed == [user("a"), user("c")] and remaining == [assistant("b")] and keys == ["k"]
    asyncio.run(store.adelete_messages("k"))
    assert store.get_messages("k") == []


# ---------------------------------------------------------------------------------------------- frameworks
def test_chat_memory_buffer_and_simple_chat_engine_with_mock_llm(project: Project) -> None:
    store = CompozyChatStore(project, "conv")
    memory = ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key="session-1", token_limit=3000)
    engine = SimpleChatEngine.from_defaults(llm=MockLLM(), memory=memory)
    replies = [str(engine.chat(q)) for q in ("I am Ann.", "Capital of France?", "Recap?")]
    rows = stored(store.memory("session-1"))
    assert [m["role"] for m in rows] == ["user", "assistant"] * 3
    assert [m["content"] for m in rows[::2]] == ["I am Ann.", "Capital of France?", "Recap?"]
    assert [m["content"] for m in rows[1::2]] == replies
    assert "I am Ann." in replies[2]  # MockLLM echoes its prompt: the third turn saw the first one
    assert memory.get_all() == [from_openai(m) for m in rows]


def test_memory_from_defaults_runs_on_the_db_chat_store(project: Project) -> None:
    store = CompozyDBChatStore(project, "conv")
    memory = Memory.from_defaults(
        session_id="s1", chat_store=store, token_limit=200, chat_history_token_ratio=0.5, token_flush_size=40
    )
    turns = [user(f"question {i} " + "word " * 15) if i % 2 == 0 else assistant(f"answer {i}") for i in range(12)]
    for message in turns:
        memory.put(message)
    mem = store.memory("s1")
    active, archived = stored(mem), mem.read(archive=True)["messages"]
    assert len(archived) > 0 and len(active) + len(archived) == 12  # Memory's waterfall archived the oldest
    assert active[0]["role"] == "user"
    assert memory.get_all() == turns  # status None: archive then active, in order
    assert [m.content for m in memory.get()] == [m["content"] for m in active]

    async def counts() -> tuple[int, int, int]:
        return (
            await store.count_messages("s1"),
            await store.count_messages("s1", MessageStatus.ARCHIVED),
            await store.count_messages("s1", None),
        )

    assert asyncio.run(counts()) == (len(active), len(archived), 12)
    memory.reset()
    assert stored(mem) == [] and mem.read(archive=True)["total_count"] == 0


def test_db_chat_store_operations(project: Project) -> None:
    store = CompozyDBChatStore(project, "conv")

    async def scenario() -> dict[str, Any]:
        await store.set_messages("k", [user("a"), assistant("b"), user("c"), assistant("d")])
        out: dict[str, Any] = {"page": await store.get_messages("k", limit=2, offset=1)}
        out["archived"] = await store.archive_oldest_messages("k", 1)
        out["deleted"] = await store.delete_oldest_messages("k", 1)
        out["one"] = await store.delete_message("k", 1)
        out["archive"] = await store.get_messages("k", MessageStatus.ARCHIVED)
        out["archive_page"] = await store.get_messages("k", MessageStatus.ARCHIVED, limit=1, offset=1)
        out["active"] = await store.get_messages("k")
        out["keys"] = await store.get_keys()
        await store.delete_messages("k", MessageStatus.ACTIVE)
        out["after_clear"] = await store.count_messages("k", None)
        return out

    out = asyncio.run(scenario())
    assert out["page"] == [assistant("b"), user("c")]
    assert out["archived"] == [user("a")] and out["deleted"] == [assistant("b")] and out["one"] == assistant("d")
    assert out["archive"] == [user("a"), assistant("b"), assistant("d")]
    assert out["archive_page"] == [assistant("b")]
    assert out["active"] == [user("c")] and out["keys"] == ["k"]
    assert out["after_clear"] == 3  # ACTIVE cleared, the archive kept


def test_db_chat_store_refuses_writes_to_the_archive(project: Project) -> None:
    store = CompozyDBChatStore(project, "conv")
    with pytest.raises(InvalidPayloadError, match="only ACTIVE"):
        asyncio.run(store.add_message("k", user("x"), MessageStatus.ARCHIVED))
    with pytest.raises(InvalidPayloadError, match="archive alone"):
        asyncio.run(store.delete_messages("k", MessageStatus.ARCHIVED))
    assert stored(store.memory("k")) == []


# ---------------------------------------------------------------------------------------------- conversion (pure)
def test_text_messages_convert_both_ways() -> None:
    for role in ("system", "developer", "user", "assistant"):
        message = ChatMessage(role=role, content="text")
        assert to_openai(message) == {"role": role, "content": "text"}
        assert from_openai(to_openai(message)) == message
    assert to_openai(ChatMessage(role=MessageRole.CHATBOT, content="x"))["role"] == "assistant"


def test_blocks_become_content_parts_and_back() -> None:
    message = ChatMessage(
        role="user",
        blocks=[
            TextBlock(text="what is this?"),
            ImageBlock(url="https://example.com/cat.png", detail="low"),
            TextBlock(text="and this?"),
        ],
    )
    parts = to_openai(message)["content"]
    assert parts == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "text", "text": "and this?"},
    ]
    assert from_openai({"role": "user", "content": parts}) == message
    inline = to_openai(ChatMessage(role="user", blocks=[ImageBlock(image=b"\x89PNG\r\n\x1a\n0000")]))
    assert inline["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_tool_calls_and_results_convert_to_the_openai_shape_and_back() -> None:
    call = ChatMessage(
        role="assistant",
        blocks=[ToolCallBlock(tool_call_id="call_1", tool_name="weather", tool_kwargs={"city": "Paris"})],
    )
    result = ChatMessage(role="tool", content="18 °C", additional_kwargs={"tool_call_id": "call_1", "name": "weather"})
    assert to_openai(call) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
        ],
    }
    assert to_openai(result) == {"role": "tool", "content": "18 °C", "tool_call_id": "call_1", "name": "weather"}
    assert from_openai(to_openai(call)) == call
    assert from_openai(to_openai(result)) == result
    legacy = ChatMessage(
        role="assistant",
        content="checking",
        additional_kwargs={
            "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
        },
    )
    assert to_openai(legacy)["tool_calls"] == [
        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]


def test_blocks_that_cannot_be_stored() -> None:
    thinking = ChatMessage(role="assistant", blocks=[ThinkingBlock(content="hmm"), TextBlock(text="answer")])
    assert to_openai(thinking) == {"role": "assistant", "content": "answer"}
    with pytest.raises(InvalidPayloadError, match=r"payload\[2\]\.blocks\[0\].*'audio'"):
        to_openai(ChatMessage(role="user", blocks=[AudioBlock(audio=b"RIFF0000", format="wav")]), 2)


def test_import_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "compozy_nb.integrations.llama_index")
    monkeypatch.setitem(sys.modules, "llama_index.core.storage.chat_store.base_db", None)
    with pytest.raises(ImportError, match=r"extra 'llama-index'.*compozy-nb\[llama-index\]"):
        import compozy_nb.integrations.llama_index  # noqa: F401


# ---------------------------------------------------------------------------------------------- tool calls end to end
def test_a_tool_call_turn_is_stored_in_the_openai_shape_and_read_back(project: Project) -> None:
    store = CompozyChatStore(project, "conv")
    turn = [
        user("Weather in Paris?"),
        ChatMessage(
            role="assistant",
            blocks=[ToolCallBlock(tool_call_id="call_1", tool_name="weather", tool_kwargs={"city": "Paris"})],
        ),
        ChatMessage(role="tool", content="18 °C", additional_kwargs={"tool_call_id": "call_1"}),
        assistant("It is 18 °C in Paris."),
    ]
    store.set_messages("k", turn)
    rows = stored(store.memory("k"))
    assert [m["role"] for m in rows] == ["user", "assistant", "tool", "assistant"]
    assert rows[1]["content"] == "" and rows[1]["tool_calls"][0]["function"]["name"] == "weather"
    assert rows[2]["tool_call_id"] == "call_1"
    assert store.get_messages("k") == turn


def test_image_blocks_round_trip_through_redis(project: Project) -> None:
    store = CompozyChatStore(project, "conv")
    message = ChatMessage(
        role="user", blocks=[TextBlock(text="what is this?"), ImageBlock(url="https://example.com/cat.png")]
    )
    store.add_message("k", message)
    assert isinstance(stored(store.memory("k"))[0]["content"], str)
    assert store.get_messages("k") == [message]
