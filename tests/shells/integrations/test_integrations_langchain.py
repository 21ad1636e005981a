"""LangChain adapter: the behaviours langchain-community's RedisChatMessageHistory is tested for, plus ours
(limits, redaction, ids, windows, async), RunnableWithMessageHistory with a fake model and a LangGraph node,
all on a real redis-server and the embedded backend, asserting what Redis holds."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
import warnings
from collections.abc import Callable
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import ConfigurableFieldSpec, RunnableConfig, RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory

from compozy_nb.backends import Backend
from compozy_nb.errors import ConfigError, InvalidPayloadError, LimitExceededError
from compozy_nb.integrations.langchain import CompozyChatMessageHistory, from_openai, to_openai
from compozy_nb.memory.instance import MemoryInstance
from compozy_nb.project import Project
from compozy_nb.sdk import EMAIL, MemoryResource


@pytest.fixture
def project(backend: Backend) -> Project:
    project = Project("lc")
    project.use_backend(backend)
    project.add(
        MemoryResource("conv").key("conv:{{.session_id}}").buffer().ttl("1h"),
        MemoryResource("small").message_count_based(max_messages=4).redact(EMAIL).option("max_message_bytes", 600),
        MemoryResource("per_user").key("chat:{{.user_id}}:{{.conversation_id}}").buffer(),
    )
    return project


def stored(mem: MemoryInstance) -> list[dict[str, Any]]:
    """The JSON elements of the memory's Redis list, read with plain redis-py."""
    return [json.loads(raw) for raw in mem.backend.client.lrange(mem.layout.base, 0, -1)]


def history(project: Project, session: str = "s1", **window: Any) -> CompozyChatMessageHistory:
    return CompozyChatMessageHistory(project.memory("conv", session_id=session), **window)


# ---------------------------------------------------------------------------------------------- peer behaviours
def test_messages_come_back_in_order_and_clear_empties(project: Project) -> None:
    h = history(project)
    h.add_ai_message("This is me, the AI")
    h.add_user_message("This is me, the human")
    assert [(m.type, m.content) for m in h.messages] == [
        ("ai", "This is me, the AI"),
        ("human", "This is me, the human"),
    ]
    assert [(m["role"], m["content"]) for m in stored(h.memory)] == [
        ("assistant", "This is me, the AI"),
        ("user", "This is me, the human"),
    ]
    assert "Human: This is me, the human" in str(h)
    h.clear()
    assert h.messages == []
    assert stored(h.memory) == []


def test_sessions_are_isolated_and_a_new_session_is_empty(project: Project) -> None:
    history(project, "a").add_user_message("for a")
    history(project, "b").add_user_message("for b")
    assert [m.content for m in history(project, "a").messages] == ["for a"]
    assert [m.content for m in history(project, "b").messages] == ["for b"]
    assert history(project, "never").messages == []


def test_ttl_of_the_resource_is_set_on_the_redis_key(project: Project) -> None:
    h = history(project)
    h.add_user_message("expires")
    ttl_ms = h.memory.backend.client.pttl(h.memory.layout.base)
    assert 0 < ttl_ms <= 3600 * 1000


# ---------------------------------------------------------------------------------------------- engine guarantees
def test_add_messages_is_one_atomic_append(project: Project) -> None:
    h = CompozyChatMessageHistory(project.memory("small", "k"))
    too_big = "x " * 400
    with pytest.raises(LimitExceededError):
        h.add_messages([HumanMessage("fits"), AIMessage(too_big)])
    assert stored(h.memory) == []  # nothing of the batch was written


def test_ids_are_kept_and_a_resent_batch_is_stored_once(project: Project) -> None:
    h = history(project)
    batch = [HumanMessage("hi", id="m-1"), AIMessage("hello", id="m-2")]
    h.add_messages(batch)
    h.add_messages(batch)
    assert [m["id"] for m in stored(h.memory)] == ["m-1", "m-2"]
    assert [m.id for m in h.messages] == ["m-1", "m-2"]


def test_redaction_and_limits_apply(project: Project) -> None:
    h = CompozyChatMessageHistory(project.memory("small", "k"))
    h.add_messages([HumanMessage(f"turn {i}: write to ann@example.com") for i in range(6)])
    raw = b"".join(h.memory.backend.client.lrange(h.memory.layout.base, 0, -1))
    assert b"ann@example.com" not in raw and b"[REDACTED]" in raw
    assert [m.content for m in h.messages] == [f"turn {i}: write to [REDACTED]" for i in range(2, 6)]
    assert h.memory.read(archive=True)["total_count"] == 2  # evicted into the archive


def test_windows_return_the_newest_messages(project: Project) -> None:
    history(project).add_messages([HumanMessage(f"message {i} " + "word " * 20) for i in range(10)])
    assert [cast(str, m.content).split()[1] for m in history(project, last=3).messages] == ["7", "8", "9"]
    budget = history(project, max_tokens=60).messages
    assert 0 < len(budget) < 10 and cast(str, budget[-1].content).startswith("message 9")
    with pytest.raises(ConfigError):
        history(project, last=1, max_tokens=10)


def test_async_twins_store_read_and_clear(project: Project) -> None:
    h = history(project)

    async def turn(text: str) -> list[BaseMessage]:
        await h.aadd_messages([HumanMessage(text)])
        return await h.aget_messages()

    # two event loops in turn: the async connection must follow the running loop
    assert [m.content for m in asyncio.run(turn("one"))] == ["one"]
    assert [m.content for m in asyncio.run(turn("two"))] == ["one", "two"]
    asyncio.run(h.aclear())
    assert stored(h.memory) == []


# ---------------------------------------------------------------------------------------------- frameworks
def chain_with_history(project: Project, seen: list[int], replies: list[str], **factory: Any) -> Any:
    model = GenericFakeChatModel(messages=iter([AIMessage(r) for r in replies]))
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are terse."), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    # casts: mypy cannot pick RunnableLambda's overload for a bare lambda, and append() returns None
    record = RunnableLambda(
        cast(Callable[[Any], Any], lambda value: cast(object, seen.append(len(value.to_messages()))) or value)
    )
    extra = {"history_factory_config": factory.pop("config")} if "config" in factory else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # RunnableWithMessageHistory is deprecated upstream
        return RunnableWithMessageHistory(
            prompt | record | model,
            CompozyChatMessageHistory.factory(project, factory.pop("ref", "conv"), **factory),
            input_messages_key="question",
            history_messages_key="history",
            **extra,
        )


def test_runnable_with_message_history_over_three_turns(project: Project) -> None:
    seen: list[int] = []
    chain = chain_with_history(project, seen, ["Hi Ann.", "Paris.", "You asked about Paris."])
    config = {"configurable": {"session_id": "s3"}}
    answers = [chain.invoke({"question": q}, config).content for q in ("I am Ann.", "Capital of France?", "Recap?")]
    assert answers == ["Hi Ann.", "Paris.", "You asked about Paris."]
    assert seen == [2, 4, 6]  # system + history + question: the model saw the growing history
    rows = stored(project.memory("conv", session_id="s3"))
    assert [(m["role"], m["content"]) for m in rows] == [
        ("user", "I am Ann."),
        ("assistant", "Hi Ann."),
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "Recap?"),
        ("assistant", "You asked about Paris."),
    ]
    assert all(isinstance(m["tokens"], int) and m["id"] for m in rows)


def test_factory_with_several_key_variables(project: Project) -> None:
    specs = [
        ConfigurableFieldSpec(id=name, annotation=str, name=name, default="", is_shared=True)
        for name in ("user_id", "conversation_id")
    ]
    seen: list[int] = []
    chain = chain_with_history(
        project, seen, ["one", "two"], ref="per_user", keys=("user_id", "conversation_id"), config=specs
    )
    chain.invoke({"question": "q1"}, {"configurable": {"user_id": "u1", "conversation_id": "c1"}})
    chain.invoke({"question": "q2"}, {"configurable": {"user_id": "u1", "conversation_id": "c2"}})
    assert [m["content"] for m in stored(project.memory("per_user", "chat:u1:c1"))] == ["q1", "one"]
    assert [m["content"] for m in stored(project.memory("per_user", "chat:u1:c2"))] == ["q2", "two"]


def test_factory_refuses_keys_the_template_does_not_use(project: Project) -> None:
    with pytest.raises(ConfigError, match="share one memory"):
        CompozyChatMessageHistory.factory(project, "conv", keys=("user_id",))
    with pytest.raises(ConfigError):
        CompozyChatMessageHistory.factory(project, "small", keys=("a", "b"))
    get = CompozyChatMessageHistory.factory(project, "small")  # no template: the session id is the key
    assert get("raw-key").memory.key == "raw-key"


def test_langgraph_node_reads_and_appends_through_the_history(project: Project) -> None:
    from langgraph.graph import END, START, MessagesState, StateGraph

    model = GenericFakeChatModel(messages=iter([AIMessage("first answer"), AIMessage("second answer")]))

    def agent(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        h = history(project, config["configurable"]["thread_id"], max_tokens=500)
        reply = model.invoke([*h.messages, *state["messages"]])
        h.add_messages([*state["messages"], reply])
        return {"messages": [reply]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_edge(START, "agent")
    graph.add_edge("agent", END)
    app = graph.compile()
    for text in ("question one", "question two"):
        app.invoke({"messages": [HumanMessage(text)]}, {"configurable": {"thread_id": "g1"}})
    rows = stored(project.memory("conv", session_id="g1"))
    assert [m["content"] for m in rows] == ["question one", "first answer", "question two", "second answer"]


# ---------------------------------------------------------------------------------------------- conversion (pure)
def test_text_messages_convert_both_ways() -> None:
    messages: list[BaseMessage] = [
        SystemMessage("be brief", id="s"),
        HumanMessage("hi", name="ann", id="u"),
        AIMessage("hello", id="a"),
        ChatMessage(role="assistant", content="from a ChatMessage", id="c"),
    ]
    dicts = [to_openai(m) for m in messages]
    assert dicts == [
        {"role": "system", "content": "be brief", "id": "s"},
        {"role": "user", "content": "hi", "name": "ann", "id": "u"},
        {"role": "assistant", "content": "hello", "id": "a"},
        {"role": "assistant", "content": "from a ChatMessage", "id": "c"},
    ]
    back = [from_openai(d) for d in dicts]
    assert back[:3] == messages[:3]
    assert isinstance(back[3], AIMessage) and back[3].content == "from a ChatMessage"


def test_tool_calls_and_tool_results_convert_to_the_openai_shape_and_back() -> None:
    call = AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Paris"}, "id": "call_1"}], id="a1")
    result = ToolMessage("18 °C", tool_call_id="call_1", id="t1")
    assert to_openai(call) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
        ],
        "id": "a1",
    }
    assert to_openai(result) == {"role": "tool", "content": "18 °C", "tool_call_id": "call_1", "id": "t1"}
    back = from_openai(to_openai(call))
    assert isinstance(back, AIMessage)
    assert back.tool_calls == [{"name": "weather", "args": {"city": "Paris"}, "id": "call_1", "type": "tool_call"}]
    assert from_openai(to_openai(result)) == result


def test_unparsable_tool_arguments_round_trip_as_invalid_tool_calls() -> None:
    stored_call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}],
    }
    message = from_openai(stored_call)
    assert isinstance(message, AIMessage) and message.tool_calls == []
    assert message.invalid_tool_calls[0]["args"] == "{not json"
    assert to_openai(message)["tool_calls"][0]["function"]["arguments"] == "{not json"


def test_content_blocks_become_openai_content_parts() -> None:
    message = HumanMessage(
        content=[
            {"type": "text", "text": "what is this?"},
            {"type": "image", "url": "https://example.com/cat.png"},
            {"type": "image", "base64": "AAAA", "mime_type": "image/jpeg"},
            {"type": "image_url", "image_url": "https://example.com/dog.png"},
        ]
    )
    parts = to_openai(message)["content"]
    assert parts == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/dog.png"}},
    ]
    assert from_openai({"role": "user", "content": parts}).content == parts


def test_anthropic_style_assistant_content_keeps_text_and_tool_calls_once() -> None:
    message = AIMessage(
        content=[
            {"type": "thinking", "thinking": "let me look"},
            {"type": "text", "text": "Checking the weather."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        ],
        tool_calls=[{"name": "weather", "args": {"city": "Paris"}, "id": "toolu_1"}],
    )
    out = to_openai(message)
    assert out["content"] == "Checking the weather."
    assert [c["id"] for c in out["tool_calls"]] == ["toolu_1"]


def test_developer_role_and_unknown_message_types() -> None:
    developer = from_openai({"role": "developer", "content": "rules"})
    assert isinstance(developer, SystemMessage)
    assert to_openai(developer)["role"] == "developer"
    with pytest.raises(InvalidPayloadError, match=r"payload\[3\]"):
        to_openai(FunctionMessage(content="x", name="f"), 3)


def test_import_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "compozy_nb.integrations.langchain")
    monkeypatch.setitem(sys.modules, "langchain_core.chat_history", None)
    with pytest.raises(ImportError, match=r"extra 'langchain'.*compozy-nb\[langchain\]"):
        import compozy_nb.integrations.langchain  # noqa: F401


texts = st.text(min_size=1, max_size=40).filter(lambda t: t.strip() != "")
ids = st.one_of(st.none(), st.text(alphabet="abcdef0123456789-_", min_size=1, max_size=20))
arguments = st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8), st.booleans()))
langchain_messages = st.one_of(
    st.builds(lambda c, i: HumanMessage(c, id=i), texts, ids),
    st.builds(lambda c, i: SystemMessage(c, id=i), texts, ids),
    st.builds(lambda c, i: AIMessage(c, id=i), texts, ids),
    st.builds(
        lambda c, i, name, args, call: AIMessage(c, id=i, tool_calls=[{"name": name, "args": args, "id": call}]),
        st.one_of(st.just(""), texts),
        ids,
        texts,
        arguments,
        texts,
    ),
    st.builds(lambda c, i, call: ToolMessage(c, id=i, tool_call_id=call), texts, ids, texts),
)


@given(langchain_messages)
def test_conversion_round_trips_every_message(message: BaseMessage) -> None:
    assert from_openai(json.loads(json.dumps(to_openai(message)))) == message


@given(st.lists(st.tuples(st.sampled_from(["user", "assistant"]), texts), max_size=8))
def test_text_histories_round_trip_through_the_engine(pairs: list[tuple[str, str]]) -> None:
    classes = {"user": HumanMessage, "assistant": AIMessage}
    project = Project("prop", redis_url=f"embedded://{uuid.uuid4().hex}")
    project.add(MemoryResource("conv").buffer())
    h = CompozyChatMessageHistory(project.memory("conv", "k"))
    sent = [classes[role](text, id=f"m{i}") for i, (role, text) in enumerate(pairs)]
    h.add_messages(sent)
    assert h.messages == sent


# ---------------------------------------------------------------------------------------------- tool calls end to end
def tool_turn() -> list[BaseMessage]:
    return [
        HumanMessage("Weather in Paris?", id="u1"),
        AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Paris"}, "id": "call_1"}], id="a1"),
        ToolMessage("18 °C", tool_call_id="call_1", id="t1"),
        AIMessage("It is 18 °C in Paris.", id="a2"),
    ]


def test_a_tool_call_turn_is_stored_in_the_openai_shape_and_read_back(project: Project) -> None:
    h = history(project)
    h.add_messages(tool_turn())
    rows = stored(h.memory)
    assert [m["role"] for m in rows] == ["user", "assistant", "tool", "assistant"]
    assert rows[1]["content"] == ""  # Compozy reads a string
    assert rows[1]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    ]
    assert rows[2]["tool_call_id"] == "call_1"
    assert h.messages == tool_turn()
    assert asyncio.run(h.aget_messages()) == tool_turn()


def test_a_budget_window_never_starts_inside_a_tool_call_group(project: Project) -> None:
    h = history(project)
    h.add_messages([HumanMessage("hello " * 30, id="u0"), *tool_turn()])
    for budget in range(10, 120, 5):
        window = history(project, max_tokens=budget).messages
        assert not window or not isinstance(window[0], ToolMessage)


def test_content_parts_and_developer_messages_round_trip_through_redis(project: Project) -> None:
    h = history(project)
    parts: list[str | dict[Any, Any]] = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    sent = [
        SystemMessage("rules", additional_kwargs={"__openai_role__": "developer"}, id="d1"),
        HumanMessage(content=parts, id="u1"),
    ]
    h.add_messages(sent)
    rows = stored(h.memory)
    assert rows[0]["role"] == "developer"
    assert isinstance(rows[1]["content"], str) and "what is this?" in rows[1]["content"]
    assert h.messages == sent
